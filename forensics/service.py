"""What the HTTP service does, as plain library functions: confine names, take uploads, analyse, store results.

    path = resolve_bundle("bundles/", "incidents/incident_7")       # BundleError for ../, /abs, symlinks out
    record = run_analysis(pipeline, bundle_dir="bundles/", output_dir="results/", bundle="incidents/incident_7")
    read_result("results/", record["id"])                            # the full JSON report, stored atomically

The Serve app (``serve_app/``) is a thin shell over this module; nothing here imports Ray or FastAPI.
Errors keep the one tree of ``forensics.errors``; ``http_status`` maps them to status codes and
``error_data`` turns them into plain data that can cross a Ray or HTTP boundary.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from forensics.durable import storage_errors
from forensics.errors import (
    AnalysisTimeoutError,
    AuthError,
    BundleError,
    BundleNotFoundError,
    ConfigError,
    ModelError,
    ReplayError,
    ResultNotFoundError,
    StorageError,
    TraceError,
    UploadTooLargeError,
)
from forensics.ops.logs import log_analysis
from forensics.ops.stats import INDEX_NAME, index_result, indexed_paths

if TYPE_CHECKING:
    from forensics.config import Config
    from forensics.rca.pipeline import RCAPipeline

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "RESULT_ID_PATTERN",
    "UPLOADS_DIR",
    "AnalysisTimeoutError",
    "BundleNotFoundError",
    "ResultNotFoundError",
    "TraceError",
    "UploadTooLargeError",
    "check_model_allowed",
    "check_result_id",
    "error_data",
    "http_status",
    "new_result_id",
    "read_result",
    "repair_index",
    "resolve_baseline",
    "resolve_bundle",
    "run_analysis",
    "run_trace_analysis",
    "run_triage",
    "save_trace",
    "save_upload",
    "summarize",
    "trace_limit",
]

log = logging.getLogger(__name__)

RESULT_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
UPLOADS_DIR = "uploads"  # uploaded archives land in <bundle_dir>/uploads/<fresh id>.tar[.zst]
UPLOAD_SUFFIXES = (".tar.zst", ".tar")
TRACE_SUFFIX = ".otlp.json"  # a posted trace: <bundle_dir>/uploads/<fresh id>.otlp.json, its bundle <same id>/
DEFAULT_MAX_UPLOAD_BYTES = 1024**3
EXTRACT_FACTOR = 4  # an upload may expand to at most this many times its size when extracted
MAX_NAME_CHARS = 1024
_CHUNK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_SUMMARY_MODULES = 5


# -- names under bundle_dir ----------------------------------------------------------------------
def resolve_bundle(bundle_dir: str | os.PathLike[str], name: str, *, allow_root: bool = False) -> Path:
    """The real path of ``name`` inside ``bundle_dir``; refuses anything that could leave it.

    Refused (``BundleError``): absolute paths, ``..`` parts, backslashes and control characters,
    and names whose real path (after following every symlink) is not inside ``bundle_dir``.
    A safe name that names nothing raises ``BundleNotFoundError``.

    >>> import tempfile; root = tempfile.mkdtemp()
    >>> resolve_bundle(root, "../etc")
    Traceback (most recent call last):
    forensics.errors.BundleError: bundle name '../etc': '..' is not allowed; name a bundle under bundle_dir
    """
    root = _root(bundle_dir)
    _check_name(name, allow_root)
    candidate = root / name
    try:
        real = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loop
        raise BundleError(f"bundle name {name!r}: cannot be resolved ({exc.__class__.__name__})") from None
    if real != root and not real.is_relative_to(root):
        raise BundleError(f"bundle name {name!r}: resolves outside bundle_dir (symlink?); refused")
    if real == root and not allow_root:
        raise BundleError(f"bundle name {name!r}: names bundle_dir itself, expected a bundle inside it")
    if not real.exists():
        raise BundleNotFoundError(f"bundle name {name!r}: no such bundle under bundle_dir")
    return real


def resolve_baseline(bundle_dir: str | os.PathLike[str], baseline: str | None) -> Path | None:
    """A baseline named by a caller: a benign bundle directory or a build-baseline ``.json`` under ``bundle_dir``."""
    if baseline is None:
        return None
    path = resolve_bundle(bundle_dir, baseline)
    if not (path.is_dir() or (path.is_file() and path.name.endswith(".json"))):
        raise BundleError(f"baseline {baseline!r}: expected a directory of benign bundles or a .json file")
    if path.is_dir():
        _check_entries(_root(bundle_dir), path, f"baseline {baseline!r}")
    return path


def _check_entries(root: Path, folder: Path, what: str) -> None:
    """Refuse a directory whose entries lead out of ``bundle_dir`` (symlinks): its bundles get loaded in bulk."""
    for entry in sorted(folder.iterdir()):
        try:
            real = entry.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # symlink loop
            raise BundleError(f"{what}: entry {entry.name!r} cannot be resolved ({exc.__class__.__name__})") from None
        if not real.is_relative_to(root):
            raise BundleError(f"{what}: entry {entry.name!r} resolves outside bundle_dir (symlink?); refused")


def _root(bundle_dir: str | os.PathLike[str]) -> Path:
    root = Path(bundle_dir).resolve()
    if not root.is_dir():
        raise ConfigError(f"config key 'bundle_dir': {os.fspath(bundle_dir)!r} is not a directory")
    return root


def _check_name(name: Any, allow_root: bool) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise BundleError(f"bundle name {name!r}: expected a relative path of 1 to {MAX_NAME_CHARS} characters")
    if _CONTROL.search(name):
        raise BundleError(f"bundle name {name!r}: control characters and backslashes are not allowed")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"bundle name {name!r}: absolute paths are not allowed; name a bundle under bundle_dir")
    parts = name.split("/")
    if ".." in parts:
        raise BundleError(f"bundle name {name!r}: '..' is not allowed; name a bundle under bundle_dir")
    if not allow_root and all(p in ("", ".") for p in parts):
        raise BundleError(f"bundle name {name!r}: names bundle_dir itself, expected a bundle inside it")


# -- uploads -------------------------------------------------------------------------------------
def save_upload(
    bundle_dir: str | os.PathLike[str],
    source: IO[bytes],
    filename: str | None,
    *,
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
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
    folder = _root(bundle_dir) / UPLOADS_DIR
    folder.mkdir(mode=0o750, exist_ok=True)
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


# -- analyses and results ------------------------------------------------------------------------
def new_result_id() -> str:
    return uuid.uuid4().hex


def check_result_id(result_id: str) -> str:
    """``result_id`` if it is 32 lowercase hex digits; ``ResultNotFoundError`` otherwise (nothing else can exist)."""
    if not isinstance(result_id, str) or not RESULT_ID_PATTERN.fullmatch(result_id):
        raise ResultNotFoundError(f"result id {str(result_id)[:80]!r}: expected 32 lowercase hex digits")
    return result_id


def run_analysis(
    pipeline: RCAPipeline,
    *,
    bundle_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    bundle: str,
    baseline: str | os.PathLike[str] | None = None,
    result_id: str | None = None,
    encryption_key: bytes | None = None,
    allowed_models: Collection[str] | None = None,
    timeout_s: float | None = None,
    reference_model: str | None = None,
) -> dict[str, Any]:
    """Analyse bundle ``bundle`` (a name under ``bundle_dir``); store the report as ``output_dir/<id>.json``.

    ``baseline`` is a path the caller already confined (see ``resolve_baseline``) or configured.
    ``allowed_models``: the model references a bundle may name (a bundle's manifest chooses which
    model gets loaded; None allows any). ``timeout_s`` (config ``timeout_minutes``) stops the search
    between candidate batches once exceeded (``AnalysisTimeoutError``, 504). The report is indexed for
    ``stats`` in ``output_dir``. ``reference_model``: a known-good version of the model (one of
    ``allowed_models``, ``check_model_allowed``), the patch source (``forensics.rca.reference``).
    Returns ``{"id", "bundle", "report"}``.
    """
    from forensics.bundle import load_bundle

    result_id = check_result_id(result_id or new_result_id())
    if reference_model is not None:
        check_model_allowed(reference_model, allowed_models)
    path = resolve_bundle(bundle_dir, bundle)
    incident = load_bundle(path, encryption_key=encryption_key)
    ref = str(incident.model.get("ref"))
    if allowed_models is not None and ref not in allowed_models:
        raise BundleError(
            f"bundle {bundle}: manifest.json names model {ref!r}, which this service does not allow "
            f"(allowed: {', '.join(sorted(allowed_models)) or 'none'})"
        )
    with _deadline(pipeline, timeout_s, bundle):
        result = pipeline.analyze_incident(
            incident, baseline=None if baseline is None else str(baseline), reference_model=reference_model
        )
    return {"id": result_id, "bundle": bundle, "report": _store(result, output_dir, result_id)}


def _store(result: Any, output_dir: str | os.PathLike[str], result_id: str) -> dict[str, Any]:
    """Write ``result`` as ``output_dir/<result_id>.json``, index it, log it; returns the report."""
    root = _results_root(output_dir)
    target = root / f"{result_id}.json"
    try:
        result.export(target)
        report: dict[str, Any] = result.to_dict()
        with storage_errors(root / INDEX_NAME):
            index_result(root, report, target)
    except BaseException:  # the caller gets an error, not this id: no report may stand for it
        target.unlink(missing_ok=True)
        raise
    log_analysis(report)  # the guide's execution_time / memory_usage lines, as the CLI writes them
    return report


def repair_index(output_dir: str | os.PathLike[str]) -> int:
    """Index the stored results (``<id>.json``) the index of ``output_dir`` lacks (a process killed
    between writing a report and indexing it); returns how many. The Serve app runs it on start."""
    import json

    root = _results_root(output_dir)
    with storage_errors(root / INDEX_NAME):
        indexed = indexed_paths(root)
        missing = [
            p
            for p in sorted(root.glob("*.json"))
            if RESULT_ID_PATTERN.fullmatch(p.stem) and str(p.resolve()) not in indexed
        ]
        for path in missing:
            try:
                index_result(root, json.loads(path.read_text()), path)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # not a report of ours: leave it alone
                log.warning("result %s is not a readable report (%s); not indexed", path, exc)
    return len(missing)


@contextmanager
def _deadline(pipeline: RCAPipeline, timeout_s: float | None, bundle: str) -> Iterator[None]:
    """Make the pipeline's progress callback raise once ``timeout_s`` has passed (restored after)."""
    if timeout_s is None:
        yield
        return
    end, before = time.monotonic() + timeout_s, pipeline.progress

    def check(phase: str, n: int, total: int | None) -> None:
        if before is not None:
            before(phase, n, total)
        if time.monotonic() > end:
            raise AnalysisTimeoutError(
                f"analysis of {bundle!r} exceeded the time limit of {timeout_s:g} s (config timeout_minutes)"
            )

    pipeline.progress = check
    try:
        yield
    finally:
        pipeline.progress = before


def read_result(output_dir: str | os.PathLike[str], result_id: str) -> dict[str, Any]:
    """The stored report of ``result_id``; ``ResultNotFoundError`` when there is none."""
    import json

    path = _results_root(output_dir) / f"{check_result_id(result_id)}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultNotFoundError(f"result {result_id}: not found") from None
    return data


def _results_root(output_dir: str | os.PathLike[str]) -> Path:
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_triage(
    bundle_dir: str | os.PathLike[str], directory: str, *, baseline: str | os.PathLike[str] | None, config: Config
) -> list[dict[str, Any]]:
    """CF triage of the bundles in ``directory`` (a name under ``bundle_dir``), most anomalous first.

    Each row's ``path`` is rewritten relative to ``bundle_dir`` so it can be sent back to ``/v1/analyze``.
    A directory with an entry leading out of ``bundle_dir`` (a symlink) is refused: triage would load it.
    """
    from forensics.rca.triage import sort_rows, triage

    root = _root(bundle_dir)
    folder = resolve_bundle(root, directory, allow_root=True)
    if not folder.is_dir():
        raise BundleError(f"triage directory {directory!r}: not a directory")
    _check_entries(root, folder, f"triage directory {directory!r}")
    rows = triage(folder, baseline=None if baseline is None else str(baseline), config=config)
    for row in rows:
        if "path" in row:
            row["path"] = Path(row["path"]).resolve().relative_to(root).as_posix()
    return sort_rows(rows)


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The short answer of ``POST /v1/analyze``; the full report stays in ``GET /v1/results/{id}``."""
    metrics: Sequence[dict[str, Any]] = report.get("compression_metrics") or []
    anomalous = sorted((m for m in metrics if m.get("is_anomalous")), key=lambda m: -float(m.get("score", 0.0)))
    fix = report.get("fix_set")
    return {
        "bundle_id": report.get("bundle_id"),
        "confidence": report.get("confidence"),
        "execution_time": report.get("execution_time"),
        "fix_set": None if fix is None else {k: fix.get(k) for k in ("validated", "interventions", "recovery", "size")},
        "anomalous_modules": [m.get("module") for m in anomalous[:_SUMMARY_MODULES]],
        "faithful": (report.get("fidelity") or {}).get("faithful"),
        "notes": report.get("notes") or [],
        **({"reference": report["reference"]} if report.get("reference") else {}),  # with a reference model
    }


# -- traces --------------------------------------------------------------------------------------
def check_model_allowed(model: str, allowed_models: Collection[str] | None) -> str:
    """``model`` when this service may load it (``allowed_models`` None allows any); ``ModelError`` otherwise."""
    if allowed_models is not None and model not in allowed_models:
        raise ModelError(
            f"model {model[:200]!r}: this service does not allow it "
            f"(allowed: {', '.join(sorted(allowed_models)) or 'none'})"
        )
    return model


def trace_limit(max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> int:
    """The most bytes a posted trace may have: the upload limit, capped by the importer's ``MAX_TRACE_BYTES``."""
    from forensics.record.otel import MAX_TRACE_BYTES

    return min(max_bytes, MAX_TRACE_BYTES)


def save_trace(
    bundle_dir: str | os.PathLike[str],
    data: bytes,
    *,
    span_id: str | None = None,
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
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
    folder = _root(bundle_dir) / UPLOADS_DIR
    folder.mkdir(mode=0o750, exist_ok=True)
    name = f"{UPLOADS_DIR}/{uuid.uuid4().hex}{TRACE_SUFFIX}"
    target = folder / name.removeprefix(f"{UPLOADS_DIR}/")
    _copy_bounded(io.BytesIO(data), folder, target, limit, "trace")
    try:
        _read_trace(target, name, span_id)
    except TraceError:
        target.unlink(missing_ok=True)
        raise
    return name


def _read_trace(path: Path, name: str, span_id: str | None) -> Any:
    """``read_call`` with the server's path in its messages replaced by the name the caller knows."""
    from forensics.record.otel import read_call

    try:
        return read_call(path, span_id)
    except TraceError as exc:
        raise TraceError(str(exc).replace(os.fspath(path), name)) from None


def run_trace_analysis(
    pipeline: RCAPipeline,
    *,
    bundle_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    trace: str,
    model: str,
    expected: str | None = None,
    forbidden: str | None = None,
    span_id: str | None = None,
    baseline: str | os.PathLike[str] | None = None,
    result_id: str | None = None,
    encryption_key: bytes | None = None,
    allowed_models: Collection[str] | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Re-record the posted trace ``trace`` (a name from ``save_trace``) on ``model`` into a fresh bundle
    ``uploads/<id>`` and analyse it as ``run_analysis`` does, with ``modules.provenance`` on.

    The failure spec is ``expected`` or ``forbidden`` (plain text: no regex from the network). A call
    the local model does not get wrong leaves no bundle and raises ``ReplayError`` with the trace's
    verdict. Returns ``{"id", "bundle", "report", "trace": {span_id, reproduces, verdict, text}}``.
    """
    from forensics.models.registry import resolve_model
    from forensics.record.otel import import_call

    result_id = check_result_id(result_id or new_result_id())
    check_model_allowed(model, allowed_models)
    call = _read_trace(resolve_bundle(bundle_dir, trace), trace, span_id)
    config = pipeline.config
    loaded = resolve_model(model, device=config.device, cache_dir=config.cache_dir)
    spec = _trace_spec(expected, forbidden, loaded.tokenizer)
    name = f"{UPLOADS_DIR}/{uuid.uuid4().hex}"
    out = _root(bundle_dir) / name
    run = import_call(loaded, call, out, spec, encryption_key=encryption_key, streaming=config.streaming_enabled)
    verdict = {"span_id": call.span_id, "reproduces": run.reproduces, "verdict": run.verdict, "text": run.text}
    if not run.failed:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        raise ReplayError(
            f"trace {trace} span {call.span_id}: the local model's output {run.text[:200]!r} satisfies the "
            f"failure spec, so there is no incident to analyse ({run.verdict})"
        )
    with _provenance_on(pipeline), _deadline(pipeline, timeout_s, name):
        result = pipeline.analyze_incident(
            run.bundle, baseline=None if baseline is None else str(baseline), model=loaded
        )
    return {"id": result_id, "bundle": name, "report": _store(result, output_dir, result_id), "trace": verdict}


def _trace_spec(expected: str | None, forbidden: str | None, tokenizer: Any) -> Any:
    from forensics.failure import FailureSpec

    if (expected is None) == (forbidden is None):
        raise ConfigError("trace analysis: expected exactly one of 'expected' or 'forbidden' (the failure spec)")
    if expected is not None:
        return FailureSpec.expected(expected, tokenizer, warn=False)
    return FailureSpec.forbidden(str(forbidden), warn=False)


@contextmanager
def _provenance_on(pipeline: RCAPipeline) -> Iterator[None]:
    """``modules.provenance`` enabled on ``pipeline`` for one analysis (its config restored after); safe
    because analyses on one pipeline run one at a time (the Analyzer's lock), as ``_deadline`` assumes too."""
    from dataclasses import replace

    before = pipeline.config
    modules = before.modules
    provenance = replace(modules.provenance, enabled=True)
    pipeline.config = replace(before, modules=replace(modules, provenance=provenance))
    try:
        yield
    finally:
        pipeline.config = before


# -- errors as plain data ------------------------------------------------------------------------
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (BundleNotFoundError, 404),
    (ResultNotFoundError, 404),
    (UploadTooLargeError, 413),
    (AnalysisTimeoutError, 504),
    (BundleError, 400),
    (TraceError, 400),
    (ConfigError, 422),
    (ModelError, 422),
    (ReplayError, 422),
    (AuthError, 403),
    (StorageError, 507),
)


def http_status(exc: BaseException) -> int:
    """The HTTP status of an error: 4xx for our errors (``AuthError.status`` wins when set), 500 for the rest."""
    status = getattr(exc, "status", None)
    if isinstance(exc, AuthError) and isinstance(status, int):
        return status
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)


def error_data(exc: BaseException, request_id: str) -> dict[str, Any]:
    """``{"type", "message", "status", "request_id"}``; unexpected errors get a generic message (log has the rest)."""
    status = http_status(exc)
    if isinstance(exc, StorageError):  # the server's disk, not the caller's input: path in the log only
        log.error("request %s: %s", request_id, exc)
        return {
            "type": "InsufficientStorage",
            "message": "the server cannot store the result (disk full or I/O "
            f"error); retry later, quote request id {request_id}",
            "status": status,
            "request_id": request_id,
        }
    if status >= 500:
        log.error("request %s failed", request_id, exc_info=exc)
        return {
            "type": "InternalError",
            "message": f"internal error; quote request id {request_id}",
            "status": status,
            "request_id": request_id,
        }
    return {"type": type(exc).__name__, "message": str(exc), "status": status, "request_id": request_id}
