"""Compression Forensics (CF): which modules behave unlike benign runs, by how well they compress.

    stats = build_baseline(benign_bundles, CFConfig())          # per-module ratio distributions
    metrics = analyze_cf(incident, stats, CFConfig())            # one CompressionMetric per module
    [m.module for m in metrics if m.is_anomalous]

Each module's activation [positions, d] is quantised with a FIXED per-module step (taken from the
benign population, std / 16), so a change of magnitude or noise shows as more distinct symbols and a
lower compression ratio. Ratios (symbol bytes / compressed bytes) are averaged over windows of
``entropy_window`` values and compared with the benign distribution as z-scores; the module score is
the largest |z| over methods, anomalous above ``anomaly_threshold``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from forensics.errors import ConfigError, ForensicsError
from forensics.rca.coding import METHODS, code_lengths

__all__ = [
    "BASELINE_SCHEMA",
    "BaselineStats",
    "CFConfig",
    "CompressionMetric",
    "ModuleBaseline",
    "analyze_cf",
    "build_baseline",
    "compression_ratios",
]

BASELINE_SCHEMA = "model-forensics/cf-baseline@1"
STEP_DIVISOR = 16.0  # quantisation step = pooled benign std / 16: +-8 std fits in int8


class BundleLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def modules(self) -> list[str]: ...
    def iter_activations(self, modules: Sequence[str] | None = None) -> Iterator[tuple[str, Any]]: ...


@dataclass(frozen=True)
class CFConfig:
    anomaly_threshold: float = 2.0
    compression_methods: tuple[str, ...] = ("zlib", "gzip", "arithmetic")
    entropy_window: int = 256
    baseline_samples: int = 50

    def __post_init__(self) -> None:
        bad = [m for m in self.compression_methods if m not in METHODS]
        if bad or not self.compression_methods:
            raise ConfigError(f"config key 'modules.cf.compression_methods': {list(self.compression_methods)} "
                              f"not allowed; expected a non-empty list of {', '.join(METHODS)}")
        if not self.anomaly_threshold > 0:
            raise ConfigError(f"config key 'modules.cf.anomaly_threshold': {self.anomaly_threshold} not allowed; "
                              "expected a number > 0")
        if self.entropy_window < 8:
            raise ConfigError(f"config key 'modules.cf.entropy_window': {self.entropy_window} not allowed; "
                              "expected an integer >= 8")
        if self.baseline_samples < 2:
            raise ConfigError(f"config key 'modules.cf.baseline_samples': {self.baseline_samples} not allowed; "
                              "expected an integer >= 2")


def _windows(values: np.ndarray, step: float, window: int) -> np.ndarray:
    """Quantised int8 symbols (as uint8) in rows of ``window`` values; a short tail is dropped
    unless it is all there is."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    q = np.clip(np.rint(flat / step), -127, 127).astype(np.int8).view(np.uint8)
    n = max(1, q.size // window)
    rows: np.ndarray = q[None, :] if q.size < window else q[: n * window].reshape(n, window)
    return rows


def compression_ratios(values: np.ndarray, step: float, methods: Sequence[str], window: int) -> dict[str, float]:
    """Mean over windows of (symbol bytes / compressed bytes), per method."""
    rows = _windows(values, step, window)
    raw = float(rows.shape[1])
    return {m: float(np.mean(raw / code_lengths(rows, m))) for m in methods}


@dataclass(frozen=True)
class ModuleBaseline:
    module: str
    step: float
    mean: dict[str, float]
    std: dict[str, float]
    n: int


@dataclass(frozen=True)
class BaselineStats:
    modules: dict[str, ModuleBaseline]
    n_bundles: int
    bundle_ids: list[str]
    methods: tuple[str, ...]
    entropy_window: int

    def to_json(self, path: str | Path) -> None:
        from forensics.rca.result import write_json_atomic

        data = {"schema": BASELINE_SCHEMA, "n_bundles": self.n_bundles, "bundle_ids": self.bundle_ids,
                "methods": list(self.methods), "entropy_window": self.entropy_window,
                "modules": {k: asdict(v) for k, v in self.modules.items()}}
        write_json_atomic(path, data)

    @classmethod
    def from_json(cls, path: str | Path) -> BaselineStats:
        try:
            data = json.loads(Path(path).read_text())
            if data.get("schema") != BASELINE_SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {BASELINE_SCHEMA!r}")
            modules = {k: ModuleBaseline(**v) for k, v in data["modules"].items()}
            return cls(modules, int(data["n_bundles"]), list(data["bundle_ids"]), tuple(data["methods"]),
                       int(data["entropy_window"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"CF baseline file {path}: unreadable ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class CompressionMetric:
    module: str
    ratios: dict[str, float]
    baseline_mean: dict[str, float]
    baseline_std: dict[str, float]
    z_scores: dict[str, float]
    score: float
    is_anomalous: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "ratios": self.ratios, "baseline_mean": self.baseline_mean,
                "baseline_std": self.baseline_std, "z_scores": self.z_scores, "score": self.score,
                "is_anomalous": self.is_anomalous}


def _pooled_std(bundles: Sequence[BundleLike]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for bundle in bundles:
        for module, act in bundle.iter_activations():
            a = np.asarray(act, dtype=np.float64)
            acc = sums.setdefault(module, [0.0, 0.0, 0.0])
            acc[0] += a.size
            acc[1] += float(a.sum())
            acc[2] += float(np.square(a).sum())
    out = {}
    for module, (n, s, ss) in sums.items():
        var = max(ss / max(n, 1.0) - (s / max(n, 1.0)) ** 2, 0.0)
        out[module] = math.sqrt(var) if var > 0 else 1.0
    return out


def build_baseline(bundles: Iterable[BundleLike], config: CFConfig, *, progress: bool = False) -> BaselineStats:
    """Per-module ratio statistics of benign bundles (two streaming passes, module by module)."""
    chosen = list(bundles)[: config.baseline_samples]
    if len(chosen) < 2:
        raise ForensicsError(f"CF baseline needs ≥ 2 benign bundles, got {len(chosen)}")
    steps = {m: s / STEP_DIVISOR for m, s in _pooled_std(chosen).items()}
    samples: dict[str, dict[str, list[float]]] = {}
    for bundle in chosen:
        for module, act in bundle.iter_activations():
            ratios = compression_ratios(act, steps[module], config.compression_methods, config.entropy_window)
            for method, r in ratios.items():
                samples.setdefault(module, {}).setdefault(method, []).append(r)
    modules = {m: _module_baseline(m, steps[m], per) for m, per in samples.items()}
    return BaselineStats(modules, len(chosen), [b.id for b in chosen], tuple(config.compression_methods),
                         config.entropy_window)


def _module_baseline(module: str, step: float, per_method: dict[str, list[float]]) -> ModuleBaseline:
    mean = {k: float(np.mean(v)) for k, v in per_method.items()}
    std = {k: max(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 1e-3 * abs(mean[k]), 1e-6)
           for k, v in per_method.items()}
    return ModuleBaseline(module, step, mean, std, len(next(iter(per_method.values()))))


def analyze_cf(bundle: BundleLike, baseline: BaselineStats, config: CFConfig) -> list[CompressionMetric]:
    """One metric per module the bundle and the baseline share, in the bundle's module order."""
    methods = [m for m in config.compression_methods if m in baseline.methods] or list(baseline.methods)
    shared = [m for m in bundle.modules if m in baseline.modules]
    out = []
    for module, act in bundle.iter_activations(shared):
        base = baseline.modules[module]
        ratios = compression_ratios(act, base.step, methods, baseline.entropy_window)
        z = {k: (ratios[k] - base.mean[k]) / base.std[k] for k in methods}
        score = max(abs(v) for v in z.values())
        out.append(CompressionMetric(module, ratios, {k: base.mean[k] for k in methods},
                                     {k: base.std[k] for k in methods}, z, score, score > config.anomaly_threshold))
    return out
