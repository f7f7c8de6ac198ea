"""Safe extraction of ``.tar`` / ``.tar.zst`` bundles into a private temporary directory.

Only regular files and directories are accepted (by their tar type flag: ``tarfile`` counts GNU sparse
and contiguous files as regular too); absolute names, ``..`` components, symlinks, hard links, devices,
fifos, sparse files and any other member type are refused, and the total size is bounded: by default
to ``extract_limit(archive size)``, a small multiple of what the archive occupies, so a few KB of zstd
cannot fill the disk. Every header is checked: after the last member only zero padding may follow
(``tarfile`` alone silently stops at a malformed header), and the decompressed stream as a whole is
bounded too (pax headers are read into memory).

    >>> archive_stem("incident_7.tar.zst"), is_archive("incident_7/"), extract_limit(34_500) // 2**20
    ('incident_7', False, 4)
"""

from __future__ import annotations

import os
import re
import tarfile
from typing import Any, cast

import pyarrow as pa

from forensics.bundle._guard import Site
from forensics.bundle.manifest import MANIFEST

__all__ = [
    "ARCHIVE_SUFFIXES",
    "EXPANSION",
    "MAX_ARCHIVE_BYTES",
    "MAX_MEMBERS",
    "MIN_EXTRACT_BYTES",
    "archive_stem",
    "extract_archive",
    "extract_limit",
    "find_root",
    "is_archive",
]

ARCHIVE_SUFFIXES = (".tar.zst", ".tar")
MAX_ARCHIVE_BYTES = 64 * 1024**3  # the most any archive may extract to, whatever its size
EXPANSION = 16  # default cap: this many times the archive's size (recorded float tensors barely compress)
MIN_EXTRACT_BYTES = 4 * 1024**2  # ... but never below this, so small bundles always fit
MAX_MEMBERS = 10_000
MAX_PADDING = 1024 * 1024  # zero bytes allowed after the end-of-archive marker
_HEADER_SLACK = 16 * 1024**2  # headers, pax records and padding on top of the members' data
_TAIL = 64 * 1024  # > tarfile's read-ahead (20 blocks), so the end of the archive is still at hand
_COPY_CHUNK = 8 * 1024 * 1024
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]|^[A-Za-z]:")
_ALLOWED_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)  # regular files (old and new flag), directories
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.GNUTYPE_SPARSE: "GNU sparse file",
    tarfile.CONTTYPE: "contiguous file",
}


def is_archive(path: str) -> bool:
    """Whether ``path`` names a bundle archive (by suffix)."""
    return path.endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: str) -> str:
    """The bundle name of an archive: its file name without ``.tar`` / ``.tar.zst``."""
    name = os.path.basename(path.rstrip("/"))
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def extract_limit(archive_bytes: int) -> int:
    """The default extraction cap for an archive of ``archive_bytes``: ``EXPANSION`` times it, within bounds."""
    return min(MAX_ARCHIVE_BYTES, max(MIN_EXTRACT_BYTES, EXPANSION * max(0, archive_bytes)))


def extract_archive(site: Site, raw: Any, archive: str, dest: str, max_bytes: int) -> None:
    """Extract the tar read from stream ``raw`` (zstd-compressed if ``archive`` says so) into ``dest``."""
    file = os.path.basename(archive)
    with site.guard(file, "cannot extract archive"):
        inner = pa.CompressedInputStream(raw, "zstd") if archive.endswith(".zst") else raw
        stream = _Watched(site, file, inner, max_bytes + _HEADER_SLACK)
        with tarfile.open(fileobj=cast(Any, stream), mode="r|") as tar:
            total = 0
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise site.error(file, f"more than {MAX_MEMBERS} members")
                if total + max(0, int(member.size)) > max_bytes:  # from the header, before a byte is written
                    raise site.error(
                        file,
                        f"members exceed the size limit of {max_bytes} bytes"
                        f" (member {member.name!r} declares {member.size} bytes;"
                        " raise it with load_bundle(..., max_archive_bytes=...))",
                    )
                total += _extract_member(site, file, tar, member, dest)
            stream.check_end(tar.offset)


class _Watched:
    """The decompressed tar stream, counted (bounded) and with its last ``_TAIL`` bytes kept.

    ``tarfile`` ends its iteration at the first header it cannot parse once one member was read;
    ``check_end`` then insists that everything from there on is zero padding.
    """

    def __init__(self, site: Site, file: str, raw: Any, limit: int) -> None:
        self._site, self._file, self._raw, self._limit = site, file, raw, limit
        self._read = 0
        self._tail = b""

    def read(self, count: int = -1) -> bytes:
        data: bytes = self._raw.read(count if count is not None and count >= 0 else _COPY_CHUNK)
        self._read += len(data)
        if self._read > self._limit:
            raise self._site.error(self._file, f"decompresses to more than {self._limit} bytes (headers included)")
        self._tail = (self._tail + data)[-_TAIL:]
        return data

    def check_end(self, offset: int) -> None:
        """Bytes from ``offset`` (where tarfile stopped) to the end of the stream must all be zero."""
        start = len(self._tail) - (self._read - offset)
        if start < 0:
            raise self._site.error(self._file, f"cannot check the end of the archive at offset {offset}")
        rest, padding = self._tail[start:], 0
        while rest:
            if rest.strip(b"\0"):
                at = offset + padding + len(rest) - len(rest.lstrip(b"\0"))
                raise self._site.error(
                    self._file,
                    f"malformed tar header or trailing data at offset {at}: expected only zero"
                    " padding after the last member",
                )
            padding += len(rest)
            if padding > MAX_PADDING:
                raise self._site.error(self._file, f"more than {MAX_PADDING} bytes of padding after the last member")
            rest = self.read(_COPY_CHUNK)


def _extract_member(site: Site, file: str, tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> int:
    relative = _safe_relative(site, file, member.name)
    if member.type not in _ALLOWED_TYPES:  # not isreg(): tarfile counts sparse and contiguous files as regular
        raise site.error(
            file, f"member {member.name!r} is a {_kind(member)}; only regular files and directories are allowed"
        )
    if relative is None:
        return 0
    target = os.path.join(dest, relative)
    if member.type == tarfile.DIRTYPE:
        os.makedirs(target, mode=0o700, exist_ok=True)
        return 0
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:
        raise site.error(file, f"member {member.name!r} has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with source, os.fdopen(os.open(target, flags, 0o600), "wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            out.write(chunk)
    return int(member.size)


def _safe_relative(site: Site, file: str, name: str) -> str | None:
    """The member's path inside ``dest``, None for the archive root, error if it could escape."""
    if name.startswith(("/", "\\")) or _BAD_NAME.search(name):
        raise site.error(file, f"member {name!r} has an absolute or malformed path")
    if "\\" in name:
        raise site.error(file, f"member {name!r} contains a backslash")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise site.error(file, f"member {name!r} has a '..' component (path escapes the bundle)")
    return os.path.join(*parts) if parts else None


def _kind(member: tarfile.TarInfo) -> str:
    """What a refused member is, in words, with its tar type flag."""
    word = _TYPE_NAMES.get(member.type, "member of an unsupported type")
    return f"{word} (tar type {member.type.decode('latin-1')!r})"


def find_root(site: Site, archive: str, dest: str) -> str:
    """The bundle directory inside an extracted archive: top level or one top-level directory."""
    if os.path.isfile(os.path.join(dest, MANIFEST)):
        return dest
    entries = os.listdir(dest)
    if len(entries) == 1:
        inner = os.path.join(dest, entries[0])
        if os.path.isdir(inner) and os.path.isfile(os.path.join(inner, MANIFEST)):
            return inner
    raise site.error(
        MANIFEST,
        f"missing: archive {os.path.basename(archive)} has no {MANIFEST} at its top level"
        " or in a single top-level directory",
    )
