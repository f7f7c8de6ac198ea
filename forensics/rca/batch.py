"""Batch analysis of a directory of bundles: one result file per bundle, atomic, resumable.

    summary = run_batch(list_bundle_paths("incidents/"), baseline="benign/", output_dir="results/")
    summary.failed   # [(name, error message)] — a bad bundle never stops the others

``OUTDIR/<name>.json`` is the report of bundle ``name``; ``OUTDIR/<name>.error.json`` records a
failure; a re-run skips names whose report exists. ``OUTDIR/summary.json`` ends the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.errors import ForensicsError
from forensics.rca.result import write_json_atomic

__all__ = ["BatchSummary", "bundle_name", "run_batch"]


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    fixed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        total = len(self.done)
        return {"done": self.done, "skipped": self.skipped, "failed": [{"bundle": n, "error": e} for n, e in self.failed],
                "fixed": self.fixed, "fix_rate": self.fixed / total if total else None, "seconds": self.seconds}


def bundle_name(path: str | Path) -> str:
    name = Path(str(path).rstrip("/")).name
    for suffix in (".tar.zst", ".tar"):
        name = name.removesuffix(suffix)
    return name


def run_batch(paths: Sequence[str | Path], *, analyze: Callable[[str, Path], dict[str, Any]], output_dir: str | Path,
              progress: Callable[[int], None] | None = None) -> BatchSummary:
    """``analyze(bundle_path, report_path)`` must write the report (atomically) and return it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, t0 = BatchSummary(), time.perf_counter()
    for path in paths:
        name = bundle_name(path)
        report_path = out / f"{name}.json"
        if report_path.exists():
            summary.skipped.append(name)
        else:
            _one(str(path), name, report_path, analyze, summary)
        if progress:
            progress(1)
    summary.seconds = time.perf_counter() - t0
    write_json_atomic(out / "summary.json", summary.to_dict())
    return summary


def _one(path: str, name: str, report_path: Path, analyze: Callable[[str, Path], dict[str, Any]],
         summary: BatchSummary) -> None:
    error_path = report_path.with_name(f"{name}.error.json")
    try:
        report = analyze(path, report_path)
    except (ForensicsError, OSError, RuntimeError, ValueError) as exc:
        summary.failed.append((name, f"{type(exc).__name__}: {exc}"))
        write_json_atomic(error_path, {"bundle": name, "path": path, "error": type(exc).__name__, "message": str(exc)})
        return
    error_path.unlink(missing_ok=True)
    summary.done.append(name)
    summary.fixed += bool(report.get("fix_set") and report["fix_set"].get("validated"))
