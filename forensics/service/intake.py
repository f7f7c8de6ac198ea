"""What callers hand the service, stored under ``bundle_dir/uploads/``: bundle archives and OTLP traces.

    name = save_upload("bundles/", archive, "incident.tar.zst", max_bytes=MAX_UPLOAD_BYTES)  # "uploads/<id>.tar.zst"
    name = save_trace("bundles/", data, max_bytes=MAX_UPLOAD_BYTES)                          # "uploads/<id>.otlp.json"

Every copy is bounded as it is made (``UploadTooLargeError``) and checked once before anything else
reads it (an archive's checksums, a trace's shape), so a refused upload leaves nothing behind.
``MAX_UPLOAD_BYTES`` is the one definition of the upload limit; the Serve app's ``max_upload_bytes``
argument defaults to it and passes its value down.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

from forensics.durable import storage_errors
from forensics.errors import BundleError, TraceError, UploadTooLargeError
from forensics.service.paths import bundle_root

__all__ = [
    "EXTRACT_FACTOR",
    "MAX_UPLOAD_BYTES",
    "TRACE_SUFFIX",
    "UPLOADS_DIR",
    "read_trace",
    "save_trace",
    "save_upload",
    "trace_limit",
    "uploads_folder",
]

UPLOADS_DIR = "uploads"  # uploaded archives land in <bundle_dir>/uploads/<fresh id>.tar[.zst]
UPLOAD_SUFFIXES = (".tar.zst", ".tar")
TRACE_SUFFIX = ".otlp.json"  # a posted trace: <bundle_dir>/uploads/<fresh id>.otlp.json, its bundle <same id>/
MAX_UPLOAD_BYTES = 1024**3  # the upload limit unless the Serve app's max_upload_bytes says otherwise
EXTRACT_FACTOR = 4  # an upload may expand to at most this many times its size when extracted
_CHUNK = 1 << 20


def uploads_folder(bundle_dir: str | os.PathLike[str]) -> Path:
    """``bundle_dir/uploads``, created (0750) when missing."""
    folder = bundle_root(bundle_dir) / UPLOADS_DIR
    folder.mkdir(mode=0o750, exist_ok=True)
    return folder


def save_upload(
    bundle_dir: str | os.PathLike[str],
    source: IO[bytes],
    filename: str | None,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    encryption_key: bytes | None = None,
) -> str:
    """Store an uploaded ``.tar``/``.tar.zst`` bundle under a fresh name; returns that name (relative).

    The client's file name only chooses the suffix. The copy is bounded by ``max_bytes``
    (``UploadTooLargeError``), its tar headers must declare at most ``EXTRACT_FACTOR * max_bytes``
    (a zstd bomb is refused before anything is extracted), then it is opened with ``load_bundle``
    (safe extraction, every checksum); a bad archive is deleted and its ``BundleError`` raised.
    """
    from forensics.bundle import load_bundle

    suffix = next((s for s in UPLOAD_SUFFIXES if (filename or "").lower().endswith(s)), None)
    if suffix is None:
        raise BundleError(f"upload {filename!r}: expected a bundle archive ending in .tar or .tar.zst")
    folder = uploads_folder(bundle_dir)
    name = f"{uuid.uuid4().hex}{suffix}"
    target = folder / name
    _copy_bounded(source, folder, target, max_bytes, filename)
    try:
        _check_declared_size(target, EXTRACT_FACTOR * max_bytes)
        load_bundle(target, max_archive_bytes=EXTRACT_FACTOR * max_bytes, encryption_key=encryption_key)
    except BundleError as exc:
        target.unlink(missing_ok=True)
        raise BundleError(f"upload {filename!r}: {exc}") from None
    return f"{UPLOADS_DIR}/{name}"


def _check_declared_size(archive: Path, limit: int) -> None:
    """Refuse an archive whose members declare more than ``limit`` bytes, reading tar headers only.

    Extraction checks its running total after writing each member, so one member declaring 1 TB
    (a few KB of zstd) would reach the disk first; here it is refused at its header, having
    decompressed at most ``limit`` bytes of the members before it.
    """
    import tarfile

    import pyarrow as pa

    total = 0
    with open(archive, "rb") as raw:
        stream = pa.CompressedInputStream(raw, "zstd") if archive.name.endswith(".zst") else raw
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    total += max(member.size, 0)
                    if total > limit:
                        break
        except (tarfile.TarError, EOFError, OSError, ValueError):
            return  # not a readable tar: load_bundle reports it with the file and the problem
    if total > limit:
        raise BundleError(
            f"archive members declare more than {limit} bytes once extracted ({EXTRACT_FACTOR} x the upload limit)"
        )


def _copy_bounded(source: IO[bytes], folder: Path, target: Path, max_bytes: int, filename: str | None) -> None:
    """Copy ``source`` to ``target`` through a temporary file in ``folder``; nothing stays on any error."""
    with storage_errors(target):
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                total = 0
                while chunk := source.read(_CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise UploadTooLargeError(f"upload {filename!r}: larger than the limit of {max_bytes} bytes")
                    out.write(chunk)
                if total == 0:
                    raise BundleError(f"upload {filename!r}: empty file")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def trace_limit(max_bytes: int = MAX_UPLOAD_BYTES) -> int:
    """The most bytes a posted trace may have: the upload limit, capped by the importer's ``MAX_TRACE_BYTES``."""
    from forensics.record.otel import MAX_TRACE_BYTES

    return min(max_bytes, MAX_TRACE_BYTES)


def save_trace(
    bundle_dir: str | os.PathLike[str],
    data: bytes,
    *,
    span_id: str | None = None,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> str:
    """Store a posted OTLP JSON trace as ``uploads/<fresh id>.otlp.json``; returns that name (relative).

    Bounded by ``max_bytes`` and the importer's own ``MAX_TRACE_BYTES`` (``UploadTooLargeError``), then
    read once (``read_call``: the chat span ``span_id``, default the last), so a trace it refuses is
    deleted and its ``TraceError`` raised before an analyzer or a model is involved.
    """
    import io

    limit = trace_limit(max_bytes)
    if len(data) > limit:
        raise UploadTooLargeError(f"trace: {len(data)} bytes, larger than the limit of {limit} bytes")
    if not data.strip():
        raise TraceError("trace: empty; expected OTLP JSON ({'resourceSpans': [...]})")
    folder = uploads_folder(bundle_dir)
    file_name = f"{uuid.uuid4().hex}{TRACE_SUFFIX}"
    target = folder / file_name
    _copy_bounded(io.BytesIO(data), folder, target, limit, "trace")
    name = f"{UPLOADS_DIR}/{file_name}"
    try:
        read_trace(target, name, span_id)
    except TraceError:
        target.unlink(missing_ok=True)
        raise
    return name


def read_trace(path: Path, name: str, span_id: str | None) -> Any:
    """``read_call`` with the server's path in its messages replaced by the name the caller knows."""
    from forensics.record.otel import read_call

    try:
        return read_call(path, span_id)
    except TraceError as exc:
        raise TraceError(str(exc).replace(os.fspath(path), name)) from None
