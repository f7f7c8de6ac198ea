"""CF configuration and benign baselines: per-module quantisation step and compression-ratio statistics.

    stats = build_cf_stats(load_population("bundles/benign/"), CFConfig())   # streams module by module
    stats.to_json("cf-baseline.json")
    CFStats.from_json("cf-baseline.json").modules["model.layers.3"].mean["zlib"]

**Step.** Each module gets one fixed quantisation step, the median over benign bundles of a robust
scale of its activation (1.4826 x median absolute deviation, i.e. sigma for Gaussian values) / 16.
Robust because LLM residual streams carry a few "massive" dimensions hundreds of sigmas out: a pooled
std would be dominated by them and quantise every ordinary dimension to a handful of levels. With
int16 symbols those outliers still fit (±2048 sigma). Fixed, so a change of magnitude in an incident
shows as more distinct symbols instead of being normalised away.

**Spread.** The std of each method's ratio over benign bundles (ddof=1) is floored at
max(std, 0.01 x |mean|, 1e-6): identical baselines give std 0 and a handful of bundles can
understate the spread; a ratio within 1% of the benign mean is never an anomaly.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from forensics.cf.coding import compression_ratios
from forensics.config import CFConfig
from forensics.errors import BundleError, ConfigError

__all__ = [
    "CF_STATS_SCHEMA",
    "SYMBOLS",
    "BundleLike",
    "CFConfig",
    "CFStats",
    "ModuleStats",
    "build_cf_stats",
]

log = logging.getLogger(__name__)

CF_STATS_SCHEMA = "model-forensics/cf-baseline@1"
SYMBOLS = "int16-zigzag-byteplanes"  # how ratios were measured; a file measured otherwise is refused
STEP_DIVISOR = 16.0  # step = robust sigma / 16: ~6 bits of resolution per sigma
MAD_TO_SIGMA = 1.4826
REL_STD_FLOOR = 0.01
ABS_STD_FLOOR = 1e-6


class BundleLike(Protocol):
    """What CF needs of a bundle (``forensics.bundle.Bundle`` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def modules(self) -> list[str]: ...
    def iter_activations(self, modules: Sequence[str] | None = None) -> Iterator[tuple[str, Any]]: ...


@dataclass(frozen=True)
class ModuleStats:
    """Benign statistics of one module: its quantisation step and per-method ratio mean/std."""

    module: str
    step: float
    mean: dict[str, float]
    std: dict[str, float]
    n: int  # benign bundles that recorded this module


@dataclass(frozen=True)
class CFStats:
    """CF statistics of a benign population; JSON-serialisable, no activations kept."""

    modules: dict[str, ModuleStats]
    n_bundles: int
    bundle_ids: list[str]
    methods: tuple[str, ...]
    entropy_window: int
    symbols: str = SYMBOLS

    def to_json(self, path: str | Path) -> None:
        from forensics.durable import write_json_atomic

        write_json_atomic(path, {"schema": CF_STATS_SCHEMA, **asdict(self), "methods": list(self.methods)})

    @classmethod
    def from_json(cls, path: str | Path) -> CFStats:
        """Load a file written by ``to_json``; anything else is a ``ConfigError`` naming the file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return _stats_from_dict(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"CF baseline file {path}: unreadable ({type(exc).__name__}: {exc})") from exc


def _stats_from_dict(data: Any) -> CFStats:
    if not isinstance(data, dict) or data.get("schema") != CF_STATS_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"schema {found!r}, expected {CF_STATS_SCHEMA!r}")
    if data.get("symbols") != SYMBOLS:
        raise ValueError(
            f"ratios measured as {data.get('symbols')!r}, this version measures {SYMBOLS!r}; "
            "rebuild it (model-forensics build-baseline)"
        )
    modules = {k: _module_from_dict(v) for k, v in data["modules"].items()}
    methods = tuple(data["methods"])
    CFConfig(compression_methods=methods, entropy_window=data["entropy_window"])  # same checks as config
    return CFStats(
        modules, int(data["n_bundles"]), [str(b) for b in data["bundle_ids"]], methods, int(data["entropy_window"])
    )


def _module_from_dict(v: dict[str, Any]) -> ModuleStats:
    mean = {str(k): float(x) for k, x in v["mean"].items()}
    std = {str(k): float(x) for k, x in v["std"].items()}
    step = float(v["step"])
    if not (np.isfinite(step) and step > 0) or set(mean) != set(std) or not all(s > 0 for s in std.values()):
        raise ValueError(f"module {v.get('module')!r}: step must be > 0, std > 0 for every method in mean")
    return ModuleStats(str(v["module"]), step, mean, std, int(v["n"]))


def robust_scale(values: npt.ArrayLike) -> float:
    """1.4826 x median absolute deviation of the finite values (sigma for a Gaussian); the std if that
    is 0 (mostly-constant activations), 1.0 if both are."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 1.0
    mad = MAD_TO_SIGMA * float(np.median(np.abs(a - np.median(a))))
    return mad if mad > 0 else (float(a.std()) or 1.0)


def _steps(bundles: Sequence[BundleLike]) -> dict[str, float]:
    """Pass 1: per-module step, one activation in memory at a time."""
    scales: dict[str, list[float]] = {}
    for bundle in bundles:
        for module, act in bundle.iter_activations():
            scales.setdefault(module, []).append(robust_scale(act))
    return {m: float(np.median(s)) / STEP_DIVISOR for m, s in scales.items()}


@dataclass
class _Samples:
    per_method: dict[str, list[float]] = field(default_factory=dict)

    def add(self, ratios: dict[str, float]) -> None:
        for method, r in ratios.items():
            self.per_method.setdefault(method, []).append(r)


def build_cf_stats(bundles: Iterable[BundleLike], config: CFConfig, *, progress: bool = False) -> CFStats:
    """Per-module step and ratio statistics of (at most ``config.population_samples``) benign bundles.

    Two streaming passes (steps, then ratios), module by module: never more than one activation in
    memory. Modules recorded by fewer than 2 of the bundles are left out (no spread to compare with)."""
    chosen = list(itertools.islice(bundles, config.population_samples))
    if len(chosen) < 2:
        raise ConfigError(
            f"CF baseline needs ≥ 2 benign bundles (modules.cf.population_samples="
            f"{config.population_samples}), got {len(chosen)}"
        )
    steps = _steps(chosen)
    samples: dict[str, _Samples] = {}
    for i, bundle in enumerate(chosen, 1):
        _add_ratios(bundle, steps, config, samples)
        if progress:
            log.info("CF baseline: bundle %d/%d (%s)", i, len(chosen), bundle.id)
    modules = {
        m: _module_baseline(m, steps[m], s.per_method)
        for m, s in samples.items()
        if len(next(iter(s.per_method.values()))) >= 2
    }
    if len(modules) < len(samples):
        log.warning("CF baseline: %d module(s) recorded by fewer than 2 bundles left out", len(samples) - len(modules))
    return CFStats(
        modules, len(chosen), [b.id for b in chosen], tuple(config.compression_methods), config.entropy_window
    )


def _add_ratios(bundle: BundleLike, steps: dict[str, float], config: CFConfig, samples: dict[str, _Samples]) -> None:
    """Pass 2 for one bundle: its ratios per module, appended to ``samples``."""
    for module, act in bundle.iter_activations():
        try:
            ratios = compression_ratios(act, steps[module], config.compression_methods, config.entropy_window)
        except BundleError as exc:
            raise BundleError(f"bundle {bundle.id}: module {module}: {exc}") from exc
        samples.setdefault(module, _Samples()).add(ratios)


def _module_baseline(module: str, step: float, per_method: dict[str, list[float]]) -> ModuleStats:
    mean = {k: float(np.mean(v)) for k, v in per_method.items()}
    std = {k: max(float(np.std(v, ddof=1)), REL_STD_FLOOR * abs(mean[k]), ABS_STD_FLOOR) for k, v in per_method.items()}
    return ModuleStats(module, step, mean, std, len(next(iter(per_method.values()))))
