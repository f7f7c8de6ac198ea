"""Batch analysis of a directory of bundles: one result file per bundle, atomic, resumable.

    tasks = plan_batch(list_bundle_paths("incidents/"), output_dir="results/", baseline="benign/")
    summary = run_batch(tasks, executor=LocalExecutor(), output_dir="results/")
    summary.failed   # [(name, error message)] — a bad bundle never stops the others

``OUTDIR/<name>.json`` is the report of bundle ``name``; ``OUTDIR/<name>.error.json`` records a
failure (any exception while analysing that bundle: the run goes on); a re-run skips names whose
report (and HTML, with ``--html``) exists. After the incidents, ``families`` (``plan_families``: incidents
grouped by ``failure_family`` label, else by identical failure spec) are analysed as failure families on
the same executor, each into ``OUTDIR/family-<name>.json`` (``forensics.batch.families``).
``OUTDIR/summary.json`` ends the run. The same tasks run in process (``LocalExecutor``) or on a Ray
actor pool (``RayExecutor``).

Crash consistency: a bundle's report, its error marker and its row in ``index.sqlite`` are written
one after the other (``STEPS``); a run killed between any two is repaired by the next run, which
indexes every finished report the index lacks and deletes the error marker of a bundle that has a
report (the report wins). A full disk stops the run with one ``StorageError`` naming the file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.batch.families import FamilyTask, plan_families, run_families, worker_pipeline
from forensics.config import Config, to_dict
from forensics.durable import storage_errors, write_json_atomic
from forensics.errors import StorageError
from forensics.exec.base import Executor, TaskError
from forensics.ops.stats import INDEX_NAME, index_result, indexed_paths
from forensics.population import bundle_name
from forensics.rca.request import AnalysisRequest

log = logging.getLogger(__name__)

__all__ = [
    "STEPS",
    "BatchSummary",
    "BatchTask",
    "Checkpoint",
    "FamilyTask",
    "analyze_task",
    "plan_batch",
    "plan_families",
    "run_batch",
]

# What run_batch has just done when it calls ``checkpoint(step, bundle_name)``: the crash windows.
STEPS = ("report-written", "indexed", "marker-removed", "error-written")
Checkpoint = Callable[[str, str], None]


@dataclass(frozen=True)
class BatchTask:
    """Plain data: everything a worker needs to analyse one bundle: the analysis request (paths and
    model references only) and the config it runs under."""

    request: AnalysisRequest
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    html: bool = False
    model_key: str = ""
    encryption_key: bytes | None = field(default=None, repr=False)  # ``config`` holds no secrets

    @property
    def bundle(self) -> str:
        return str(self.request.incident)

    @property
    def report(self) -> str:
        return str(self.request.output)

    @property
    def name(self) -> str:
        return bundle_name(self.bundle)

    @property
    def html_path(self) -> Path | None:
        return Path(self.report).with_suffix(".html") if self.html else None

    def finished(self) -> bool:
        """Its report exists (and its HTML page, when asked for): a re-run skips it."""
        html = self.html_path
        return Path(self.report).is_file() and (html is None or html.is_file())


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    fixed: int = 0
    seconds: float = 0.0
    families: list[dict[str, Any]] = field(default_factory=list)  # one row per family (forensics.batch.families)

    @property
    def families_failed(self) -> list[dict[str, Any]]:
        return [row for row in self.families if row["status"] == "failed"]

    def to_dict(self) -> dict[str, Any]:
        total = len(self.done)
        return {
            "done": sorted(self.done),
            "skipped": sorted(self.skipped),
            "failed": [{"bundle": n, "error": e} for n, e in sorted(self.failed)],
            "fixed": self.fixed,
            "fix_rate": self.fixed / total if total else None,
            "seconds": self.seconds,
            "families": self.families,
        }


def _model_key(path: str) -> str:
    """The bundle's model reference (for sharding by model); unreadable manifests shard anywhere."""
    try:
        return str(json.loads((Path(path) / "manifest.json").read_text())["model"]["ref"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def plan_batch(
    paths: Sequence[str | Path],
    *,
    output_dir: str | Path,
    baseline: str | None = None,
    model: str | None = None,
    config: Config | None = None,
    html: bool = False,
    reference_model: str | None = None,
) -> list[BatchTask]:
    """One task per bundle; ``reference_model`` (a known-good version of the model) applies to each."""
    out = Path(output_dir)
    cfg = to_dict(config or Config())
    key = config.encryption_key if config is not None else None
    return [
        BatchTask(
            AnalysisRequest.of(
                str(p),
                population=baseline,
                model=model,
                output=out / f"{bundle_name(p)}.json",
                reference_model=reference_model,
            ),
            cfg,
            html,
            model or _model_key(str(p)),
            key,
        )
        for p in paths
    ]


def analyze_task(task: BatchTask, state: dict[Any, Any]) -> dict[str, Any]:
    """Worker side: analyse one bundle with the worker's warm pipeline; write its report atomically.

    On any failure the task's own outputs are removed, so no report stands without its HTML page."""
    from forensics.report.html import write_html

    pipeline = worker_pipeline(state, task.config, task.encryption_key)
    report, html = Path(task.report), task.html_path
    try:
        result = pipeline.run(task.request)
        if html is not None:
            write_html(result, html)
    except BaseException:
        for path in (report, html):
            if path is not None:
                path.unlink(missing_ok=True)
        raise
    fix = result.fix_set
    return {"bundle": task.name, "fixed": bool(fix and fix.validated), "seconds": result.execution_time}


def run_batch(
    tasks: Sequence[BatchTask],
    *,
    executor: Executor,
    output_dir: str | Path,
    progress: Callable[[int], None] | None = None,
    metrics: Any = None,
    checkpoint: Checkpoint | None = None,
    families: Sequence[FamilyTask] = (),
) -> BatchSummary:
    """Run ``tasks``, then ``families`` (``plan_families``) on the same executor; with ``metrics``
    (forensics.ops.metrics.Metrics) every finished incident report is observed. ``progress(n)`` counts
    incidents and families alike.

    ``checkpoint(step, name)`` is called after each step of ``STEPS`` (tests kill the process there)."""
    out = Path(output_dir)
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    summary, t0 = BatchSummary(), time.perf_counter()
    finished = [t for t in tasks if t.finished()]
    summary.skipped = [t.name for t in finished]
    todo = [t for t in tasks if not t.finished()]
    _repair(out, finished)
    if progress and summary.skipped:
        progress(len(summary.skipped))
    for task, result, error in executor.map(analyze_task, todo, key=lambda t: t.model_key, progress=progress):
        if error is None and result is not None:
            error = _record_report(out, task, metrics, checkpoint)
        if error is None and result is not None:
            summary.done.append(task.name)
            summary.fixed += bool(result.get("fixed"))
            continue
        kind, message = (error.type, error.message) if error else ("NoResult", "the worker returned nothing")
        if kind == "StorageError":  # a full disk fails every later bundle too: stop with the one line
            raise StorageError(message)
        summary.failed.append((task.name, f"{kind}: {message}"))
        write_json_atomic(
            out / f"{task.name}.error.json",
            {"bundle": task.name, "path": task.bundle, "error": kind, "message": message},
        )
        _check(checkpoint, "error-written", task.name)
        if metrics is not None:
            metrics.observe_error(kind)
    summary.families = run_families(families, executor=executor, progress=progress)
    summary.seconds = time.perf_counter() - t0
    write_json_atomic(out / "summary.json", summary.to_dict())
    return summary


def _record_report(out: Path, task: BatchTask, metrics: Any, checkpoint: Checkpoint | None) -> TaskError | None:
    """Index a report the worker wrote and drop the bundle's error marker; an unreadable report is its error."""
    _check(checkpoint, "report-written", task.name)
    try:
        report = json.loads(Path(task.report).read_text())
    except (OSError, ValueError) as exc:
        return TaskError(type(exc).__name__, f"report {task.report}: cannot be read back ({exc})")
    if metrics is not None:
        metrics.observe_report(report)
    with storage_errors(out / INDEX_NAME):
        index_result(out, report, task.report)  # `stats` reads this SQLite index
    _check(checkpoint, "indexed", task.name)
    (out / f"{task.name}.error.json").unlink(missing_ok=True)
    _check(checkpoint, "marker-removed", task.name)
    return None


def _repair(out: Path, finished: Sequence[BatchTask]) -> None:
    """Make what a killed run left consistent: index finished reports the index lacks; a bundle with
    both a report and an error marker keeps the report (the marker is stale)."""
    with storage_errors(out / INDEX_NAME):
        indexed = indexed_paths(out)
        for task in finished:
            if str(Path(task.report).resolve()) not in indexed:
                try:
                    report = json.loads(Path(task.report).read_text())
                except (OSError, ValueError) as exc:
                    log.warning("batch: report %s is unreadable (%s); left as it is", task.report, exc)
                    continue
                index_result(out, report, task.report)
            (out / f"{task.name}.error.json").unlink(missing_ok=True)


def _check(checkpoint: Checkpoint | None, step: str, name: str) -> None:
    if checkpoint is not None:
        checkpoint(step, name)
