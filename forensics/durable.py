"""Durability on disk: atomic replacement of a file, and fsync of a file or directory by path.

    write_atomic("results/a.json", data, mode=0o644)   # readers see the old file or the new, never half
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["fsync_path", "write_atomic"]


def fsync_path(path: str | os.PathLike[str]) -> None:
    """``fsync`` the file or directory at ``path`` (a directory makes renames and new entries stick)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, chmod (``None`` keeps mkstemp's 0600), then
    ``os.replace`` it into place; the temp file is removed on any failure."""
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
