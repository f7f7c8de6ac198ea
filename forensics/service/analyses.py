"""What the service analyses: a bundle under ``bundle_dir``, a posted trace, a directory (triage).

    record = run_analysis(pipeline, bundle_dir="bundles/", output_dir="results/", bundle="incidents/incident_7")
    record["id"], summarize(record["report"])        # the stored report's id and the short answer

Each analysis is one ``AnalysisRequest`` (its deadline and module overrides included) handed to
``RCAPipeline.run``; the pipeline itself is never changed, so one warm pipeline serves every call.
A bundle's manifest chooses which model gets loaded, so every model reference is checked against
the service's ``allowed_models`` first (``check_model_allowed``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forensics.errors import BundleError, ConfigError, ModelError, ReplayError
from forensics.service.intake import UPLOADS_DIR, read_trace
from forensics.service.paths import bundle_root, check_entries, resolve_bundle
from forensics.service.results import check_result_id, new_result_id, store_result

if TYPE_CHECKING:
    from forensics.config import Config
    from forensics.models.registry import LoadedModel
    from forensics.rca.pipeline import RCAPipeline
    from forensics.rca.request import AnalysisRequest

__all__ = [
    "check_model_allowed",
    "load_allowed",
    "request_for",
    "run_analysis",
    "run_trace_analysis",
    "run_triage",
    "summarize",
]

_SUMMARY_MODULES = 5


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
    model gets loaded; None allows any). ``timeout_s`` (default: config ``timeout_minutes``) is the
    analysis's deadline; past it ``AnalysisTimeoutError`` (504). The report is indexed for ``stats`` in
    ``output_dir``. ``reference_model``: a known-good version of the model (one of ``allowed_models``,
    ``check_model_allowed``), the patch source (``forensics.rca.reference``).
    Returns ``{"id", "bundle", "report"}``.
    """
    result_id = check_result_id(result_id or new_result_id())
    if reference_model is not None:
        check_model_allowed(reference_model, allowed_models)
    incident = load_allowed(bundle_dir, bundle, encryption_key, allowed_models)
    result = pipeline.run(request_for(incident, baseline, timeout_s, reference_model=reference_model))
    return {"id": result_id, "bundle": bundle, "report": store_result(result, output_dir, result_id)}


def load_allowed(
    bundle_dir: str | os.PathLike[str],
    bundle: str,
    encryption_key: bytes | None,
    allowed_models: Collection[str] | None,
) -> Any:
    """Bundle ``bundle`` (a name confined to ``bundle_dir``) loaded and checked; ``BundleError`` when its
    manifest names a model outside ``allowed_models`` (a bundle chooses which model gets loaded)."""
    from forensics.bundle import load_bundle

    incident = load_bundle(resolve_bundle(bundle_dir, bundle), encryption_key=encryption_key)
    ref = str(incident.model.get("ref"))
    if allowed_models is not None and ref not in allowed_models:
        raise BundleError(
            f"bundle {bundle}: manifest.json names model {ref!r}, which this service does not allow "
            f"(allowed: {', '.join(sorted(allowed_models)) or 'none'})"
        )
    return incident


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

    result_id = check_result_id(result_id or new_result_id())
    check_model_allowed(model, allowed_models)
    call = read_trace(resolve_bundle(bundle_dir, trace), trace, span_id)
    loaded = resolve_model(model, device=pipeline.config.device, cache_dir=pipeline.config.cache_dir)
    spec = _trace_spec(expected, forbidden, loaded.tokenizer)
    name, run = _rerecord(pipeline.config, bundle_dir, trace, call, loaded, spec, encryption_key)
    request = request_for(run.bundle, baseline, timeout_s, model=loaded, modules={"provenance": True})
    report = store_result(pipeline.run(request), output_dir, result_id)
    verdict = {"span_id": call.span_id, "reproduces": run.reproduces, "verdict": run.verdict, "text": run.text}
    return {"id": result_id, "bundle": name, "report": report, "trace": verdict}


def _rerecord(
    config: Config,
    bundle_dir: str | os.PathLike[str],
    trace: str,
    call: Any,
    loaded: LoadedModel,
    spec: Any,
    encryption_key: bytes | None,
) -> tuple[str, Any]:
    """The trace's chat ``call`` recorded on ``loaded`` as bundle ``uploads/<fresh id>``: (its name, the run).
    ``ReplayError`` (and no bundle) when the local model's output satisfies ``spec``."""
    from forensics.record.otel import import_call

    name = f"{UPLOADS_DIR}/{uuid.uuid4().hex}"
    out = bundle_root(bundle_dir) / name
    run = import_call(loaded, call, out, spec, encryption_key=encryption_key, streaming=config.streaming_enabled)
    if not run.failed:
        shutil.rmtree(out, ignore_errors=True)
        raise ReplayError(
            f"trace {trace} span {call.span_id}: the local model's output {run.text[:200]!r} satisfies the "
            f"failure spec, so there is no incident to analyse ({run.verdict})"
        )
    return name, run


def request_for(
    incident: Any, baseline: str | os.PathLike[str] | None, timeout_s: float | None, **more: Any
) -> AnalysisRequest:
    """One served analysis (``incident``: a bundle, or a family's list): past its deadline it is an error
    (504), never a partial report."""
    from forensics.rca.request import AnalysisRequest

    return AnalysisRequest.of(incident, population=baseline, timeout_s=timeout_s, on_timeout="error", **more)


def _trace_spec(expected: str | None, forbidden: str | None, tokenizer: Any) -> Any:
    from forensics.failure import FailureSpec

    if (expected is None) == (forbidden is None):
        raise ConfigError("trace analysis: expected exactly one of 'expected' or 'forbidden' (the failure spec)")
    if expected is not None:
        return FailureSpec.expected(expected, tokenizer, warn=False)
    return FailureSpec.forbidden(str(forbidden), warn=False)


def run_triage(
    bundle_dir: str | os.PathLike[str], directory: str, *, baseline: str | os.PathLike[str] | None, config: Config
) -> list[dict[str, Any]]:
    """CF triage of the bundles in ``directory`` (a name under ``bundle_dir``), most anomalous first.

    Each row's ``path`` is rewritten relative to ``bundle_dir`` so it can be sent back to ``/v1/analyze``.
    A directory with an entry leading out of ``bundle_dir`` (a symlink) is refused: triage would load it.
    """
    from forensics.cf.triage import sort_rows, triage

    root = bundle_root(bundle_dir)
    folder = resolve_bundle(root, directory, allow_root=True)
    if not folder.is_dir():
        raise BundleError(f"triage directory {directory!r}: not a directory")
    check_entries(root, folder, f"triage directory {directory!r}")
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


def check_model_allowed(model: str, allowed_models: Collection[str] | None) -> str:
    """``model`` when this service may load it (``allowed_models`` None allows any); ``ModelError`` otherwise."""
    if allowed_models is not None and model not in allowed_models:
        raise ModelError(
            f"model {model[:200]!r}: this service does not allow it "
            f"(allowed: {', '.join(sorted(allowed_models)) or 'none'})"
        )
    return model
