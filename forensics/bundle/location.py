"""Where a bundle lives: a local directory, an archive, or a directory on any ``pyarrow.fs``.

``resolve`` turns what the user passed into a ``Location`` that can stat, stream and
random-access the bundle's files; local files are memory-mapped.

    >>> import tempfile
    >>> loc = resolve(tempfile.mkdtemp(suffix="incident_7"))
    >>> loc.name.endswith("incident_7"), loc.local, loc.tmpdir
    (True, True, None)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from forensics.bundle._guard import Site
from forensics.bundle.archive import archive_stem, extract_archive, find_root, is_archive

__all__ = ["Location", "resolve"]


@dataclass(frozen=True)
class Location:
    """A bundle directory on a filesystem. ``tmpdir`` is set when we extracted an archive."""

    fs: Any
    root: str
    name: str
    display: str
    local: bool
    tmpdir: str | None = None

    def path(self, file: str) -> str:
        return f"{self.root.rstrip('/')}/{file}"

    def size_of(self, file: str) -> int | None:
        """Byte size of a regular file, None if it is missing or not a file."""
        info = self.fs.get_file_info(self.path(file))
        return int(info.size) if info.type == pafs.FileType.File else None

    def open_stream(self, file: str) -> Any:
        return self.fs.open_input_stream(self.path(file), compression=None)

    def open_random(self, file: str) -> Any:
        """Random-access handle: a read-only memory map for local files (zero-copy reads)."""
        if self.local:
            return pa.memory_map(self.path(file), "r")
        return self.fs.open_input_file(self.path(file))

    def cleanup(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def resolve(
    target: str | os.PathLike[str],
    filesystem: Any = None,
    max_archive_bytes: int = 64 * 1024**3,
) -> Location:
    """Resolve a path, ``pyarrow.fs`` URI, or path on ``filesystem`` to a ``Location``."""
    text = os.fspath(target)
    plain = filesystem is None and "://" not in text
    name = archive_stem(os.path.abspath(text) if plain else text) or text
    site = Site(name)
    with site.guard(text, "cannot resolve bundle location"):
        if filesystem is not None:
            fs, path = filesystem, text
        elif "://" in text:
            fs, path = pafs.FileSystem.from_uri(text)
        else:
            fs, path = pafs.LocalFileSystem(), os.path.abspath(text)
        kind = fs.get_file_info(path).type
    local = isinstance(fs, pafs.LocalFileSystem)
    if is_archive(path) and kind == pafs.FileType.File:
        return _extract(site, fs, path, path if plain else text, max_archive_bytes)
    if kind != pafs.FileType.Directory:
        raise site.error(text, "no such bundle directory or archive")
    return Location(fs, path, name, path if plain else text, local)


def _extract(site: Site, fs: Any, path: str, display: str, max_bytes: int) -> Location:
    tmpdir = tempfile.mkdtemp(prefix="forensics-bundle-")
    try:
        with (
            site.guard(os.path.basename(path), "cannot open archive"),
            fs.open_input_stream(path, compression=None) as raw,
        ):
            extract_archive(site, raw, path, tmpdir, max_bytes)
        root = find_root(site, path, tmpdir)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return Location(pafs.LocalFileSystem(), root, site.bundle, display, True, tmpdir)
