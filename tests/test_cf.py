"""Compression Forensics: code lengths, ratios, baselines (real bundles), z-scores and ranking."""

from __future__ import annotations

import doctest
import json
import math
import re
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import forensics.cf.coding as coding
from forensics.bundle import Bundle, write_bundle
from forensics.cf.coding import ALPHABET, adaptive_code_bits, code_lengths, quantise_planes
from forensics.cf.scores import CFConfig, CFStats, analyze_cf, build_cf_stats, compression_ratios
from forensics.errors import BundleError, ConfigError

MANIFEST: dict[str, Any] = {
    "kind": "benign",
    "model": {"ref": "x", "sha256": "0"},
    "inputs": {"input_ids": [1, 2]},
    "outputs": {},
    "failure": None,
    "recorded": {"modules": []},
}
MODULES = [f"model.layers.{k}{site}" for k in range(3) for site in ("", ".self_attn", ".mlp")]
D = 64


def _structure() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-module structure: each module its own per-dimension means and (log-normal) scales."""
    rng = np.random.default_rng(123)
    return {
        m: (rng.normal(size=D) * (1 + i), np.exp(0.5 * rng.normal(size=D)) * (1 + i)) for i, m in enumerate(MODULES)
    }


STRUCTURE = _structure()


def _sample(rng: np.random.Generator, positions: int = 12) -> dict[str, np.ndarray]:
    return {m: (mu + sd * rng.normal(size=(positions, D))).astype(np.float32) for m, (mu, sd) in STRUCTURE.items()}


def _write(dest: Path, acts: dict[str, np.ndarray], kind: str = "benign") -> Bundle:
    return write_bundle(dest, {**MANIFEST, "kind": kind}, acts.items())


@pytest.fixture(scope="module")
def benign(tmp_path_factory: pytest.TempPathFactory) -> list[Bundle]:
    root, rng = tmp_path_factory.mktemp("benign"), np.random.default_rng(0)
    return [_write(root / f"b{i:02d}", _sample(rng)) for i in range(20)]


@pytest.fixture(scope="module")
def stats(benign: list[Bundle]) -> CFStats:
    return build_cf_stats(benign, CFConfig())


# --- arithmetic code length -------------------------------------------------------------------


def _slow_bits(row: np.ndarray) -> float:
    """Reference: the adaptive Laplace model, one symbol at a time."""
    counts, bits = [0] * ALPHABET, 0.0
    for i, s in enumerate(row.tolist()):
        bits -= math.log2((counts[s] + 1) / (i + ALPHABET))
        counts[s] += 1
    return bits


def test_adaptive_code_bits_match_the_sequential_model() -> None:
    rows = np.random.default_rng(0).integers(0, 12, size=(4, 300)).astype(np.uint8)
    rows[1] = 7  # constant row
    assert np.allclose(adaptive_code_bits(rows), [_slow_bits(r) for r in rows], rtol=0, atol=1e-6)
    two_planes = code_lengths(rows[:2].reshape(1, -1), "arithmetic", planes=2)[0]
    assert two_planes == math.ceil((_slow_bits(rows[0]) + _slow_bits(rows[1]) + 2) / 8)


def test_adaptive_code_length_is_near_the_empirical_entropy_of_an_iid_source() -> None:
    n, rng = 20000, np.random.default_rng(1)
    row = rng.choice(8, size=n, p=[0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]).astype(np.uint8)
    p = np.bincount(row) / n
    n_h = -n * float(np.sum(p * np.log2(p)))  # n x empirical entropy
    bits = float(adaptive_code_bits(row[None])[0])
    learning = math.log2(math.comb(n + ALPHABET - 1, ALPHABET - 1))  # Laplace's worst-case regret
    assert n_h - 1e-6 <= bits <= n_h + learning and bits < 1.05 * n_h
    assert code_lengths(row[None], "arithmetic")[0] <= (bits + 2) / 8 + 1  # a coder's 2 bits, whole bytes


def test_constant_input_codes_to_almost_nothing() -> None:
    zeros = np.zeros((1, 10000), dtype=np.uint8)
    assert adaptive_code_bits(zeros)[0] < 0.03 * 8 * zeros.size
    assert compression_ratios(np.zeros((12, 64)), 0.1, ["zlib", "arithmetic"], 256)["zlib"] > 20


def test_coding_docstring_example_runs() -> None:
    assert doctest.testmod(coding).failed == 0


# --- ratios ----------------------------------------------------------------------------------


def test_ratios_are_deterministic_and_fall_with_magnitude_and_noise() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 64)).astype(np.float32)
    methods = ("zlib", "gzip", "lzma", "arithmetic")
    r0 = compression_ratios(x, 1 / 16, methods, 256)
    assert r0 == compression_ratios(x.copy(), 1 / 16, methods, 256)
    for changed, factor in ((10 * x, 0.85), (x + rng.normal(size=x.shape), 0.99)):  # (noise: ~+0.5 bit/value)
        r1 = compression_ratios(changed, 1 / 16, methods, 256)
        assert all(r1[m] < factor * r0[m] for m in methods), (r0, r1)


def test_quantisation_keeps_x10_out_of_saturation_and_survives_nan() -> None:
    x = np.random.default_rng(3).normal(size=(4, 64))
    planes = quantise_planes(10 * x, 1 / 16, 256)  # ~±500 steps: int16, not clipped to ±127
    assert planes.shape == (1, 2, 256) and planes[:, 0].max() > 0
    broken = np.full((4, 64), np.nan)
    broken[0, 0] = np.inf
    assert all(math.isfinite(v) for v in compression_ratios(broken, 0.1, ["zlib", "arithmetic"], 64).values())
    with pytest.raises(BundleError, match="no values"):
        compression_ratios(np.zeros((0, 64)), 0.1, ["zlib"], 64)


# --- baselines and detection on real bundles -------------------------------------------------


@pytest.mark.parametrize("corrupt", ["x10", "noise"])
@pytest.mark.parametrize("k", [1, 7])
def test_only_the_corrupted_module_is_flagged_and_ranked_first(
    tmp_path: Path, stats: CFStats, corrupt: str, k: int
) -> None:
    rng = np.random.default_rng(10 + k)
    acts, module = _sample(rng), MODULES[k]
    noise = STRUCTURE[module][1] * rng.normal(size=(12, D))  # of the benign per-dimension std
    acts[module] = (10 * acts[module] if corrupt == "x10" else acts[module] + noise).astype(np.float32)
    metrics = analyze_cf(_write(tmp_path / "incident", acts, "incident"), stats, CFConfig())
    ranked = sorted(metrics, key=lambda m: -m.score)
    assert ranked[0].module == module and ranked[0].is_anomalous and ranked[0].score > 2 * ranked[1].score
    assert all(z < 0 for z in ranked[0].z_scores.values())  # compresses worse than benign
    assert [m.module for m in metrics if m.is_anomalous] == [module]


def test_fresh_benign_samples_stay_below_threshold(tmp_path: Path, stats: CFStats) -> None:
    rng = np.random.default_rng(99)
    fresh = [_write(tmp_path / f"f{i}", _sample(rng, positions=8 + 2 * i)) for i in range(10)]  # 8..26 positions
    scores = np.array([[m.score for m in analyze_cf(b, stats, CFConfig())] for b in fresh])
    assert scores.shape == (10, len(MODULES))
    assert np.median(scores) < 1.0 and np.mean(scores > CFConfig().anomaly_threshold) <= 0.05


def test_dead_module_compresses_better_and_is_flagged(tmp_path: Path, stats: CFStats) -> None:
    acts = _sample(np.random.default_rng(5))
    acts[MODULES[4]] = np.zeros_like(acts[MODULES[4]])
    metrics = {m.module: m for m in analyze_cf(_write(tmp_path / "dead", acts), stats, CFConfig())}
    assert metrics[MODULES[4]].is_anomalous and min(metrics[MODULES[4]].z_scores.values()) > 0


def test_metrics_follow_the_bundles_module_order_and_shared_modules(tmp_path: Path, stats: CFStats) -> None:
    acts = _sample(np.random.default_rng(6))
    order = [MODULES[5], "lm_head", MODULES[0], MODULES[2]]
    bundle = _write(tmp_path / "partial", {m: acts.get(m, acts[MODULES[0]]) for m in order})
    metrics = analyze_cf(bundle, stats, CFConfig(compression_methods=("gzip", "zlib")))
    assert [m.module for m in metrics] == [MODULES[5], MODULES[0], MODULES[2]]
    d = json.loads(json.dumps(metrics[0].to_dict()))
    assert set(d) == {"module", "ratios", "baseline_mean", "baseline_std", "z_scores", "score", "is_anomalous"}
    assert list(d["z_scores"]) == ["gzip", "zlib"] and d["score"] == max(abs(z) for z in d["z_scores"].values())
    with pytest.raises(ConfigError, match="share no method"):
        analyze_cf(bundle, stats, CFConfig(compression_methods=("lzma",)))


def test_baseline_statistics(benign: list[Bundle], stats: CFStats) -> None:
    assert stats.n_bundles == 20 and stats.bundle_ids == [b.id for b in benign] and set(stats.modules) == set(MODULES)
    for i, m in enumerate(MODULES):  # step = robust sigma / 16; module i has scales ~ (1 + i)
        base = stats.modules[m]
        assert base.n == 20 and 0.5 * (1 + i) / 16 < base.step < 4 * (1 + i) / 16
        assert all(base.std[k] >= 0.01 * abs(base.mean[k]) for k in base.mean)
    capped = build_cf_stats(iter(benign), CFConfig(population_samples=3))
    assert capped.n_bundles == 3 and capped.bundle_ids == [b.id for b in benign[:3]]


def test_identical_baselines_give_finite_z(tmp_path: Path) -> None:
    acts = _sample(np.random.default_rng(7))
    twins = [_write(tmp_path / f"t{i}", acts) for i in range(2)]
    stats = build_cf_stats(twins, CFConfig())
    assert all(all(s > 0 for s in b.std.values()) for b in stats.modules.values())
    assert all(math.isfinite(m.score) and not m.is_anomalous for m in analyze_cf(twins[0], stats, CFConfig()))


def test_fewer_than_two_bundles_is_a_clear_error(benign: list[Bundle]) -> None:
    for few in ([], benign[:1]):
        with pytest.raises(ConfigError, match=rf"needs ≥ 2 benign bundles .*got {len(few)}"):
            build_cf_stats(few, CFConfig())


class _Streaming:
    """Bundle-like yielding fresh arrays; records how many earlier ones were still alive at each yield."""

    def __init__(self, ident: str) -> None:
        self.id, self.modules = ident, list(MODULES)
        self.alive_at_yield: list[int] = []
        self._refs: list[weakref.ref[np.ndarray]] = []

    def iter_activations(self, modules: Any = None) -> Iterator[tuple[str, np.ndarray]]:
        rng = np.random.default_rng(len(self.id))
        for m in modules or self.modules:
            self.alive_at_yield.append(sum(r() is not None for r in self._refs))
            act = rng.normal(size=(12, D)).astype(np.float32)
            self._refs.append(weakref.ref(act))
            yield m, act
            del act


def test_build_baseline_holds_one_activation_at_a_time() -> None:
    bundles = [_Streaming(f"s{i}") for i in range(3)]
    build_cf_stats(bundles, CFConfig())
    assert all(max(b.alive_at_yield) <= 1 for b in bundles)


# --- persistence and config ------------------------------------------------------------------


def test_baseline_json_round_trip(tmp_path: Path, stats: CFStats) -> None:
    stats.to_json(tmp_path / "cf.json")
    data = json.loads((tmp_path / "cf.json").read_text())
    assert data["schema"] == "model-forensics/cf-baseline@1"
    assert CFStats.from_json(tmp_path / "cf.json") == stats


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: {**d, "schema": "other@1"},
        lambda d: {**d, "symbols": "int8"},
        lambda d: {k: v for k, v in d.items() if k != "modules"},
        lambda d: {**d, "methods": ["zip"]},
        lambda d: {**d, "modules": {m: {**v, "step": -1.0} for m, v in d["modules"].items()}},
        lambda d: {**d, "modules": {m: {**v, "std": {}} for m, v in d["modules"].items()}},
        lambda d: [d],
    ],
)
def test_corrupt_baseline_file_names_the_file(tmp_path: Path, stats: CFStats, mutate: Any) -> None:
    stats.to_json(tmp_path / "good.json")
    (tmp_path / "bad.json").write_text(json.dumps(mutate(json.loads((tmp_path / "good.json").read_text()))))
    with pytest.raises(ConfigError, match=r"CF baseline file .*bad\.json"):
        CFStats.from_json(tmp_path / "bad.json")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_load_or_fail_with_config_error(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("blob") / "cf.json"
    path.write_bytes(blob)
    with pytest.raises(ConfigError, match="cf.json"):
        CFStats.from_json(path)


def test_missing_baseline_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere.json"):
        CFStats.from_json(tmp_path / "nowhere.json")


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"compression_methods": ("zip",)}, "compression_methods"),
        ({"compression_methods": ()}, "compression_methods"),
        ({"compression_methods": "zlib"}, "compression_methods"),
        ({"compression_methods": ("zlib", "zlib")}, "compression_methods"),
        ({"anomaly_threshold": -1.0}, "anomaly_threshold"),
        ({"anomaly_threshold": 0}, "anomaly_threshold"),
        ({"entropy_window": 4}, "entropy_window"),
        ({"entropy_window": 256.0}, "entropy_window"),
        ({"population_samples": 1}, "population_samples"),
    ],
)
def test_cf_config_validation_names_the_key_and_value(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"modules\.cf\.{key}.*{re.escape(repr(kwargs[key]))}.*expected"):
        CFConfig(**kwargs)


def test_cf_config_accepts_every_method() -> None:
    assert CFConfig(compression_methods=("zlib", "gzip", "lzma", "arithmetic")).entropy_window == 256
