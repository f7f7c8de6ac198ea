"""CF internals: the adaptive arithmetic code length, ratios, baselines, z-scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from forensics.bundle import write_bundle
from forensics.cf.coding import ALPHABET, adaptive_code_bits, code_lengths
from forensics.cf.scores import CFConfig, CFStats, analyze_cf, build_cf_stats, compression_ratios
from forensics.errors import ConfigError, ForensicsError


def _slow_bits(row: np.ndarray) -> float:
    counts = [0] * ALPHABET
    bits = 0.0
    for i, s in enumerate(row.tolist()):
        bits += -math.log2((counts[s] + 1) / (i + ALPHABET))
        counts[s] += 1
    return bits


def test_adaptive_code_length_matches_reference_and_entropy_bound() -> None:
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 8, size=(5, 300)).astype(np.uint8)
    fast = adaptive_code_bits(windows)
    for row, bits in zip(windows, fast, strict=True):
        assert abs(bits - _slow_bits(row)) < 1e-6
        # i.i.d. uniform over 8 symbols: 3 bits/symbol + the model's learning cost (a few bits per symbol seen)
        assert 3 * row.size <= bits <= 3 * row.size + 8 * math.log2(row.size + ALPHABET) * 8
    constant = np.zeros((1, 1000), dtype=np.uint8)
    assert adaptive_code_bits(constant)[0] < 0.15 * 8 * 1000  # vs 8000 bits raw: only the model's warm-up
    assert code_lengths(constant, "arithmetic")[0] < code_lengths(windows[:1], "arithmetic")[0]


def test_bigger_or_noisier_activations_compress_worse() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(12, 64)).astype(np.float32)
    methods = ("zlib", "gzip", "lzma", "arithmetic")
    r0 = compression_ratios(base, step=1 / 16, methods=methods, window=256)
    r1 = compression_ratios(base * 3, step=1 / 16, methods=methods, window=256)  # (x10 would saturate int8)
    for m in methods:
        assert r1[m] < r0[m]


class _Fake:
    def __init__(self, ident: str, acts: dict[str, np.ndarray]) -> None:
        self.id, self._acts = ident, acts

    @property
    def modules(self) -> list[str]:
        return list(self._acts)

    def iter_activations(self, modules=None):  # type: ignore[no-untyped-def]
        for m in modules or self._acts:
            yield m, self._acts[m]


def _population(n: int, seed: int = 0) -> list[_Fake]:
    rng = np.random.default_rng(seed)
    scales = {f"layers.{k}": 1.0 + k for k in range(6)}
    return [
        _Fake(f"b{i}", {m: (rng.normal(size=(12, 64)) * s).astype(np.float32) for m, s in scales.items()})
        for i in range(n)
    ]


def test_only_the_corrupted_module_is_anomalous_and_ranked_first() -> None:
    config = CFConfig(compression_methods=("zlib", "arithmetic"))
    stats = build_cf_stats(_population(20), config)
    fresh = [analyze_cf(f, stats, config) for f in _population(10, seed=99)]
    flagged = sum(m.is_anomalous for ms in fresh for m in ms)
    assert flagged <= 0.15 * 60  # benign samples: few false alarms at threshold 2 (6 modules x 10 samples)
    broken = _population(1, seed=98)[0]
    broken._acts["layers.3"] = broken._acts["layers.3"] * 3
    metrics = analyze_cf(broken, stats, config)
    ranked = sorted(metrics, key=lambda m: -m.score)
    assert ranked[0].module == "layers.3" and ranked[0].is_anomalous
    assert ranked[0].score > 3 * ranked[1].score


def test_baseline_json_round_trip_with_real_bundles(tmp_path: Path) -> None:
    manifest = {
        "kind": "benign",
        "model": {"ref": "x", "sha256": "0"},
        "inputs": {"input_ids": [1, 2]},
        "outputs": {},
        "failure": None,
        "recorded": {"modules": []},
    }
    bundles = [
        write_bundle(tmp_path / f"b{i}", manifest, fake.iter_activations()) for i, fake in enumerate(_population(3))
    ]
    stats = build_cf_stats(bundles, CFConfig())
    stats.to_json(tmp_path / "s.json")
    again = CFStats.from_json(tmp_path / "s.json")
    assert again == stats and again.bundle_ids == ["b0", "b1", "b2"]
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    with pytest.raises(ConfigError, match=r"bad\.json"):
        CFStats.from_json(tmp_path / "bad.json")
    with pytest.raises(ForensicsError, match="≥ 2 benign"):
        build_cf_stats(bundles[:1], CFConfig())


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"compression_methods": ("zip",)}, "compression_methods"),
        ({"anomaly_threshold": -1.0}, "anomaly_threshold"),
        ({"entropy_window": 4}, "entropy_window"),
        ({"population_samples": 1}, "population_samples"),
    ],
)
def test_cf_config_validation(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        CFConfig(**kwargs)  # type: ignore[arg-type]


def test_every_compression_method_of_the_vocabulary_has_a_coder() -> None:
    from forensics.cf.coding import _COMPRESSORS
    from forensics.vocab import COMPRESSION_METHODS

    assert set(COMPRESSION_METHODS) == {*_COMPRESSORS, "arithmetic"}
