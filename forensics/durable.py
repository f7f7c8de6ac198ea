"""Durability on disk: atomic replacement of a file, fsync by path, and storage failures as one error.

write_atomic("results/a.json", data, mode=0o644)   # readers see the old file or the new, never half
with storage_errors("results/index.sqlite"):       # disk full / SQLite I/O -> StorageError naming it
    index_result("results/", report, "results/a.json")
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from forensics.errors import StorageError

__all__ = ["fsync_path", "storage_errors", "write_atomic", "write_json_atomic"]


def fsync_path(path: str | os.PathLike[str]) -> None:
    """``fsync`` the file or directory at ``path`` (a directory makes renames and new entries stick)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, chmod (``None`` keeps mkstemp's 0600), then
    ``os.replace`` it into place; the temp file is removed on any failure. A failed write (disk full,
    read-only, I/O error) is a ``StorageError`` naming ``path``."""
    target = os.fspath(path)
    with storage_errors(target):
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


@contextmanager
def storage_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an ``OSError`` or an SQLite error raised in the block into one ``StorageError`` naming ``path``.

    >>> with storage_errors("/results/index.sqlite"):
    ...     raise sqlite3.OperationalError("database or disk is full")
    Traceback (most recent call last):
    forensics.errors.StorageError: cannot write /results/index.sqlite: database or disk is full (SQLite)
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise _storage_error(os.fspath(path), exc.strerror or str(exc), exc.errno) from exc
    except sqlite3.Error as exc:  # "database or disk is full", "disk I/O error", "database is locked", ...
        full = "full" in str(exc)
        raise _storage_error(os.fspath(path), f"{exc} (SQLite)", errno.ENOSPC if full else errno.EIO) from exc


def _storage_error(path: str, reason: str, code: int | None) -> StorageError:
    name = (
        f" ({errno.errorcode[code]})" if code is not None and code in errno.errorcode and "SQLite" not in reason else ""
    )
    error = StorageError(f"cannot write {path}: {reason}{name}")
    error.errno, error.filename = code, path
    return error


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """tmp file in the same directory + fsync + rename: readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, allow_nan=False, default=str)
    write_atomic(target, text.encode("utf-8"), mode=0o644)  # results are meant to be read by others
