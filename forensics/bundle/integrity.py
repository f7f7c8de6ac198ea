"""Integrity of a bundle's files: byte sizes and sha256 digests against the manifest's table.

Sizes are checked for every file on every load (one metadata call each); digests when
``verify=True``, streaming each file in chunks so nothing has to fit in memory.

    >>> import hashlib
    >>> sha256_chunks([b"ab", b"c"]) == hashlib.sha256(b"abc").hexdigest()
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from forensics.bundle._guard import Site, short_hex

__all__ = ["CHUNK", "check_files", "sha256_chunks", "sha256_file", "sha256_stream"]

CHUNK = 8 * 1024 * 1024

#: ``size_of(name)`` -> byte size, or None when the file is missing.
SizeOf = Callable[[str], "int | None"]
#: ``open_stream(name)`` -> a readable stream (``read(n) -> bytes``), a context manager.
OpenStream = Callable[[str], Any]


def sha256_chunks(chunks: Iterable[bytes]) -> str:
    """Hex sha256 of the concatenation of ``chunks``."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_stream(stream: Any) -> tuple[int, str]:
    """(bytes read, hex sha256) of everything left in a readable stream."""
    digest = hashlib.sha256()
    total = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        total += len(chunk)
    return total, digest.hexdigest()


def sha256_file(path: str) -> tuple[int, str]:
    """(size, hex sha256) of a local file."""
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def check_files(
    site: Site,
    files: Mapping[str, Mapping[str, Any]],
    size_of: SizeOf,
    open_stream: OpenStream,
    verify: bool,
) -> None:
    """Every file in the table exists with its recorded size; with ``verify``, its sha256 too."""
    for name, entry in files.items():
        with site.guard(name, "cannot stat"):
            size = size_of(name)
        if size is None:
            raise site.error(name, "missing (listed in manifest.json files table)")
        if size != entry["bytes"]:
            raise site.error(name, f"size mismatch (manifest {entry['bytes']} bytes, file {size} bytes)")
    if not verify:
        return
    for name, entry in files.items():
        with site.guard(name, "cannot read for checksum"), open_stream(name) as stream:
            read, digest = sha256_stream(stream)
        if read != entry["bytes"] or digest != entry["sha256"]:
            raise site.error(
                name,
                f"sha256 mismatch (manifest {short_hex(entry['sha256'])}, file {short_hex(digest)})",
            )
