"""Batch analysis of a directory of bundles: one result file per bundle, atomic, resumable.

    tasks = plan_batch(list_bundle_paths("incidents/"), output_dir="results/", baseline="benign/")
    summary = run_batch(tasks, executor=LocalExecutor(), output_dir="results/")
    summary.failed   # [(name, error message)] — a bad bundle never stops the others

``OUTDIR/<name>.json`` is the report of bundle ``name``; ``OUTDIR/<name>.error.json`` records a
failure; a re-run skips names whose report exists. ``OUTDIR/summary.json`` ends the run. The same
tasks run in process (``LocalExecutor``) or on a Ray actor pool (``RayExecutor``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from forensics.config import Config, from_dict, to_dict
from forensics.exec.base import Executor
from forensics.ops.stats import index_result
from forensics.rca.population import bundle_name
from forensics.rca.result import write_json_atomic

__all__ = ["BatchSummary", "BatchTask", "analyze_task", "plan_batch", "run_batch"]


@dataclass(frozen=True)
class BatchTask:
    """Plain data: everything a worker needs to analyse one bundle."""

    bundle: str
    report: str
    baseline: str | None = None
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    html: bool = False
    model_key: str = ""
    encryption_key: bytes | None = field(default=None, repr=False)  # ``config`` holds no secrets

    @property
    def name(self) -> str:
        return bundle_name(self.bundle)


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    fixed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        total = len(self.done)
        return {"done": sorted(self.done), "skipped": sorted(self.skipped),
                "failed": [{"bundle": n, "error": e} for n, e in sorted(self.failed)],
                "fixed": self.fixed, "fix_rate": self.fixed / total if total else None, "seconds": self.seconds}


def _model_key(path: str) -> str:
    """The bundle's model reference (for sharding by model); unreadable manifests shard anywhere."""
    try:
        return str(json.loads((Path(path) / "manifest.json").read_text())["model"]["ref"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def plan_batch(paths: Sequence[str | Path], *, output_dir: str | Path, baseline: str | None = None,
               model: str | None = None, config: Config | None = None, html: bool = False) -> list[BatchTask]:
    out = Path(output_dir)
    cfg = to_dict(config or Config())
    key = config.encryption_key if config is not None else None
    return [BatchTask(str(p), str(out / f"{bundle_name(p)}.json"), baseline, model, cfg, html,
                      model or _model_key(str(p)), key) for p in paths]


def analyze_task(task: BatchTask, state: dict[Any, Any]) -> dict[str, Any]:
    """Worker side: analyse one bundle with the worker's warm pipeline; write its report atomically."""
    from forensics.rca.pipeline import RCAPipeline

    key = ("pipeline", json.dumps(task.config, sort_keys=True), task.encryption_key)
    if key not in state:
        state[key] = RCAPipeline(replace(from_dict(Config, task.config), encryption_key=task.encryption_key))
    report = Path(task.report)
    html = report.with_suffix(".html") if task.html else None
    result = state[key].analyze_incident(task.bundle, baseline=task.baseline, model=task.model, output=report,
                                         html=html)
    fix = result.fix_set
    return {"bundle": task.name, "fixed": bool(fix and fix.validated), "seconds": result.execution_time}


def run_batch(tasks: Sequence[BatchTask], *, executor: Executor, output_dir: str | Path,
              progress: Callable[[int], None] | None = None, metrics: Any = None) -> BatchSummary:
    """Run ``tasks``; with ``metrics`` (forensics.ops.metrics.Metrics) every finished report is observed."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, t0 = BatchSummary(), time.perf_counter()
    todo = [t for t in tasks if not Path(t.report).exists()]
    summary.skipped = [t.name for t in tasks if Path(t.report).exists()]
    if progress and summary.skipped:
        progress(len(summary.skipped))
    for task, result, error in executor.map(analyze_task, todo, key=lambda t: t.model_key, progress=progress):
        error_path = out / f"{task.name}.error.json"
        if error is not None or result is None:
            kind, message = (error.type, error.message) if error else ("NoResult", "the worker returned nothing")
            summary.failed.append((task.name, f"{kind}: {message}"))
            write_json_atomic(error_path, {"bundle": task.name, "path": task.bundle, "error": kind,
                                           "message": message})
            if metrics is not None:
                metrics.observe_error(kind)
            continue
        report = json.loads(Path(task.report).read_text())
        if metrics is not None:
            metrics.observe_report(report)
        index_result(out, report, task.report)  # `stats` reads this SQLite index
        error_path.unlink(missing_ok=True)
        summary.done.append(task.name)
        summary.fixed += bool(result.get("fixed"))
    summary.seconds = time.perf_counter() - t0
    write_json_atomic(out / "summary.json", summary.to_dict())
    return summary
