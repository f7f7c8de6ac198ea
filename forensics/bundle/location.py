"""Where a bundle lives: a local directory, an archive, or a directory on any ``pyarrow.fs``.

``resolve`` turns what the user passed into a ``Location`` that can stat, stream and
random-access the bundle's files; local files are memory-mapped.

    >>> import tempfile
    >>> loc = resolve(tempfile.mkdtemp(suffix="incident_7"))
    >>> loc.name.endswith("incident_7"), loc.local, loc.tmpdir
    (True, True, None)
"""

from __future__ import annotations

import mmap
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from forensics.bundle._guard import Site
from forensics.bundle.archive import archive_stem, extract_archive, extract_limit, find_root, is_archive

__all__ = ["BoundedReader", "Location", "open_regular", "regular_size", "resolve"]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a fifo"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


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
        """Byte size of a regular file, None if it is missing; a symlink or special file is an error.

        Local files are ``lstat``-ed, never followed: a bundle's files are regular files inside it.
        """
        if self.local:
            try:
                return regular_size(Site(self.name), file, os.lstat(self.path(file)))
            except FileNotFoundError:
                return None
        info = self.fs.get_file_info(self.path(file))
        return int(info.size) if info.type == pafs.FileType.File else None

    def open_stream(self, file: str) -> Any:
        """A readable stream; local files are opened with ``O_NOFOLLOW`` and read up to their opened size."""
        if self.local:
            fd, size = open_regular(Site(self.name), file, self.path(file))
            return BoundedReader(os.fdopen(fd, "rb", buffering=0), size)
        return self.fs.open_input_stream(self.path(file), compression=None)

    def open_random(self, file: str) -> Any:
        """Random-access handle: a read-only memory map for local files (zero-copy reads)."""
        if self.local:
            fd, size = open_regular(Site(self.name), file, self.path(file))
            try:
                if size == 0:
                    return pa.BufferReader(b"")
                return pa.BufferReader(pa.py_buffer(mmap.mmap(fd, size, access=mmap.ACCESS_READ)))
            finally:
                os.close(fd)
        return self.fs.open_input_file(self.path(file))

    def cleanup(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def resolve(
    target: str | os.PathLike[str],
    filesystem: Any = None,
    max_archive_bytes: int | None = None,
) -> Location:
    """Resolve a path, ``pyarrow.fs`` URI, or path on ``filesystem`` to a ``Location``.

    ``max_archive_bytes`` caps what an archive may extract to; None: ``extract_limit`` of its size.
    """
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
    fs, path = _unwrap_local(fs, path)
    local = isinstance(fs, pafs.LocalFileSystem)
    if is_archive(path) and kind == pafs.FileType.File:
        return _extract(site, fs, path, path if plain else text, max_archive_bytes)
    if kind != pafs.FileType.Directory:
        raise site.error(text, "no such bundle directory or archive")
    return Location(fs, path, name, path if plain else text, local)


def _extract(site: Site, fs: Any, path: str, display: str, max_bytes: int | None) -> Location:
    file = os.path.basename(path)
    with site.guard(file, "cannot stat archive"):
        size = (
            regular_size(site, file, os.stat(path))
            if isinstance(fs, pafs.LocalFileSystem)
            else int(fs.get_file_info(path).size)
        )
    limit = extract_limit(size) if max_bytes is None else max_bytes
    tmpdir = tempfile.mkdtemp(prefix="forensics-bundle-")
    try:
        with (
            site.guard(file, "cannot open archive"),
            fs.open_input_stream(path, compression=None) as raw,
        ):
            extract_archive(site, raw, path, tmpdir, limit)
        root = find_root(site, path, tmpdir)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return Location(pafs.LocalFileSystem(), root, site.bundle, display, True, tmpdir)


def regular_size(site: Site, file: str, info: os.stat_result) -> int:
    """``info``'s size if it describes a regular file, else a ``BundleError`` saying what it is."""
    if not stat.S_ISREG(info.st_mode):
        kind = next((word for test, word in _KINDS if test(info.st_mode)), "a special file")
        raise site.error(
            file, f"expected a regular file, got {kind} (bundle files are never followed or read unless regular)"
        )
    return int(info.st_size)


def open_regular(site: Site, file: str, path: str) -> tuple[int, int]:
    """Open a local bundle file without following a symlink or blocking on a fifo: (fd, size).

    The type is checked on the opened descriptor, so a file swapped after ``lstat`` is caught too.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if os.path.islink(path):
            raise site.error(file, "expected a regular file, got a symlink (bundle files are never followed)") from None
        raise site.error(file, f"cannot open: {type(exc).__name__}: {exc.strerror}") from None
    try:
        return fd, regular_size(site, file, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise


class BoundedReader:
    """A binary stream that yields at most ``limit`` bytes (the size the file had when it was opened)."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw, self._left = raw, limit

    def read(self, count: int = -1) -> bytes:
        want = self._left if count is None or count < 0 else min(count, self._left)
        data: bytes = self._raw.read(want) if want else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> BoundedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unwrap_local(fs: Any, path: str) -> tuple[Any, str]:
    """A ``SubTreeFileSystem`` over the local disk becomes the local path, so the local checks apply."""
    if isinstance(fs, pafs.SubTreeFileSystem) and isinstance(fs.base_fs, pafs.LocalFileSystem):
        base = os.path.abspath(fs.base_path)
        inner = os.path.normpath(os.path.join(base, path.lstrip("/")))
        if inner == base or inner.startswith(base.rstrip("/") + "/"):
            return pafs.LocalFileSystem(), inner
    return fs, path
