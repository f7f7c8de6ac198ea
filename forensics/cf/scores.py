"""Compression Forensics (CF): which modules behave unlike benign runs, by how well they compress.

    stats = build_cf_stats(benign_bundles, CFConfig())          # per-module ratio distributions
    metrics = analyze_cf(incident, stats, CFConfig())            # one CompressionMetric per module
    [m.module for m in metrics if m.is_anomalous]

Each module's activation [positions, d] is quantised with the module's FIXED step from the benign
population (``baseline``), so a change of magnitude or noise shows as more distinct symbols and a
lower compression ratio (``coding``). Ratios (raw bytes / compressed bytes) are averaged over windows
of ``entropy_window`` values and compared with the benign distribution as z-scores.

**Score.** A module's score is the largest |z| over methods; anomalous above ``anomaly_threshold``.
The methods see the same symbols and move together, so a sum or mean would count one signal several
times (or dilute it when one coder is blind to a change); the max keeps the score on the z scale
the threshold is written in. |z| because both directions matter: noise and blow-ups compress worse,
dead or saturated modules compress better.

This module is the public face of CF: config and baselines live in ``forensics.cf.stats``,
symbols and coders in ``forensics.cf.coding``; the names below are re-exported from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from forensics.cf.coding import compression_ratios
from forensics.cf.stats import (
    CF_STATS_SCHEMA,
    BundleLike,
    CFConfig,
    CFStats,
    ModuleStats,
    build_cf_stats,
)
from forensics.errors import BundleError, ConfigError
from forensics.vocab import CompressionMethod

__all__ = [
    "CF_STATS_SCHEMA",
    "BundleLike",
    "CFConfig",
    "CFStats",
    "CompressionMetric",
    "ModuleStats",
    "analyze_cf",
    "build_cf_stats",
    "compression_ratios",
]


@dataclass(frozen=True)
class CompressionMetric:
    """CF result for one module of one bundle."""

    module: str
    ratios: dict[str, float]
    baseline_mean: dict[str, float]
    baseline_std: dict[str, float]
    z_scores: dict[str, float]
    score: float  # max |z| over methods
    is_anomalous: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "ratios": dict(self.ratios),
            "baseline_mean": dict(self.baseline_mean),
            "baseline_std": dict(self.baseline_std),
            "z_scores": dict(self.z_scores),
            "score": self.score,
            "is_anomalous": self.is_anomalous,
        }


def _methods(baseline: CFStats, config: CFConfig) -> list[CompressionMethod]:
    """The config's methods the baseline has statistics for, in config order."""
    methods = [m for m in config.compression_methods if m in baseline.methods]
    if not methods:
        raise ConfigError(
            f"config key 'modules.cf.compression_methods': {list(config.compression_methods)} "
            f"share no method with the CF baseline ({list(baseline.methods)}); rebuild it"
        )
    return methods


def _metric(
    module: str, act: Any, base: ModuleStats, methods: Sequence[CompressionMethod], window: int, threshold: float
) -> CompressionMetric:
    ratios = compression_ratios(act, base.step, methods, window)
    z: dict[str, float] = {k: (ratios[k] - base.mean[k]) / base.std[k] for k in methods}
    score = max(abs(v) for v in z.values())
    return CompressionMetric(
        module,
        ratios,
        {k: base.mean[k] for k in methods},
        {k: base.std[k] for k in methods},
        z,
        score,
        score > threshold,
    )


def analyze_cf(bundle: BundleLike, baseline: CFStats, config: CFConfig) -> list[CompressionMetric]:
    """One metric per module the bundle and the baseline share, in the bundle's module order.

    Ratios use the baseline's ``entropy_window`` (ratios of other window sizes are not comparable);
    the methods are the config's that the baseline has; the threshold is the config's."""
    methods = _methods(baseline, config)
    shared = [m for m in bundle.modules if m in baseline.modules]
    out = []
    for module, act in bundle.iter_activations(shared):
        try:
            out.append(
                _metric(
                    module, act, baseline.modules[module], methods, baseline.entropy_window, config.anomaly_threshold
                )
            )
        except BundleError as exc:
            raise BundleError(f"bundle {bundle.id}: module {module}: {exc}") from exc
    return out
