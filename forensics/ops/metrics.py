"""Prometheus metrics of model-forensics (names from the deployment guide), on a registry you own.

m = Metrics()                         # a fresh CollectorRegistry: no global state
m.observe_report(report_dict)         # after each analysis
m.write_textfile("/var/lib/node_exporter/model_forensics.prom")   # CLI batch runs
m.exposition()                        # bytes for GET /metrics
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["METRIC_NAMES", "Metrics", "bundle_size"]

METRIC_NAMES = (
    "model_forensics_analysis_duration_seconds",
    "model_forensics_anomaly_score",
    "model_forensics_fix_rate",
    "model_forensics_bundle_size_bytes",
    "model_forensics_analyses_total",
    "model_forensics_replay_forward_passes_total",
    "model_forensics_candidates_evaluated_total",
    "model_forensics_errors_total",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.duration = Histogram(
            "model_forensics_analysis_duration_seconds",
            "Wall time of one analysis",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.anomaly = Gauge(
            "model_forensics_anomaly_score",
            "Anomaly of the last analysed incident: share of CF modules flagged anomalous (0-1)",
            registry=r,
        )
        self.fix_rate = Gauge("model_forensics_fix_rate", "Share of analyses with a validated fix set", registry=r)
        self.bundle_size = Gauge("model_forensics_bundle_size_bytes", "Size of the last analysed bundle", registry=r)
        self.analyses = Counter("model_forensics_analyses", "Analyses finished", ["outcome"], registry=r)
        self.forward_passes = Counter("model_forensics_replay_forward_passes", "Replay forward passes", registry=r)
        self.candidates = Counter("model_forensics_candidates_evaluated", "Intervention sets evaluated", registry=r)
        self.errors = Counter("model_forensics_errors", "Failed analyses by error type", ["type"], registry=r)
        self._done = self._fixed = 0

    def observe_report(self, report: dict[str, Any], bundle_bytes: int | None = None) -> None:
        self.duration.observe(float(report.get("execution_time", 0.0)))
        metrics = report.get("compression_metrics") or []
        if metrics:
            self.anomaly.set(sum(bool(m.get("is_anomalous")) for m in metrics) / len(metrics))
        fix = report.get("fix_set")
        fixed = bool(fix and fix.get("validated"))
        self._done += 1
        self._fixed += fixed
        self.fix_rate.set(self._fixed / self._done)
        self.analyses.labels(outcome="fixed" if fixed else "unfixed").inc()
        replays = report.get("replays") or {}
        self.forward_passes.inc(int(replays.get("forward_passes", 0)))
        self.candidates.inc(int(replays.get("evaluated", 0)))
        if bundle_bytes is None:
            bundle_bytes = bundle_size(report.get("bundle_path"))
        if bundle_bytes is not None:
            self.bundle_size.set(bundle_bytes)

    def observe_error(self, kind: str) -> None:
        self.errors.labels(type=kind).inc()
        self.analyses.labels(outcome="error").inc()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def write_textfile(self, path: str | Path) -> None:
        """Atomically write the node-exporter textfile-collector format (what `batch` runs leave)."""
        from forensics.durable import write_atomic

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, self.exposition(), mode=0o644)  # StorageError naming the file when the disk is full


def bundle_size(path: Any) -> int | None:
    """Bytes of a local bundle (a directory's files, or an archive), None when it is not a local path."""
    if not isinstance(path, str) or "://" in path:
        return None
    target = Path(path)
    try:
        if target.is_file():
            return target.stat().st_size
        if target.is_dir():
            return sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    except OSError:  # gone or unreadable since the analysis: no figure rather than a wrong one
        return None
    return None
