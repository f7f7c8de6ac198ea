"""Results cache: a repeated analysis is answered without a single forward pass; LRU; invalidation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.config import Config, load_config
from forensics.models import LoadedModel
from forensics.ops.cache import ResultCache, cached_analyze, config_hash, default_results_dir
from forensics.ops.env import config_from_env
from forensics.rca import RCAPipeline
from forensics.rca.request import AnalysisRequest
from forensics.record import record_greedy

BENIGN = ["The capital of France is", "One plus one is", "The answer is", "Berlin is the capital of"]


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache-lab")
    record_greedy(tiny_llama, "The capital of Australia is", root / "incident", kind="incident", max_new_tokens=3)
    for i, prompt in enumerate(BENIGN):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    record_greedy(tiny_llama, BENIGN[0], root / "benign2" / "b0", "as-generated", kind="benign", max_new_tokens=2)
    record_greedy(tiny_llama, BENIGN[1], root / "benign2" / "b1", "as-generated", kind="benign", max_new_tokens=2)
    return {"incident": root / "incident", "benign": root / "benign", "benign2": root / "benign2"}


@contextmanager
def forward_counter(model: torch.nn.Module) -> Iterator[list[int]]:
    """Counts the model's real forward calls (a hook owned by this block)."""
    calls = [0]

    def count(_m: torch.nn.Module, _args: Any) -> None:
        calls[0] += 1

    handle = model.register_forward_pre_hook(count)
    try:
        yield calls
    finally:
        handle.remove()


def _request(lab: dict[str, Path], population: str, model: LoadedModel, **kw: Any) -> AnalysisRequest:
    return AnalysisRequest.of(str(lab["incident"]), population=str(lab[population]), model=model, **kw)


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("export_path", "bundle_path")}


def test_repeat_is_a_hit_with_zero_forward_passes(
    lab: dict[str, Path], tiny_llama: LoadedModel, tmp_path: Path
) -> None:
    cache = ResultCache(tmp_path / "cache", 10**8)
    pipeline = RCAPipeline()
    with forward_counter(tiny_llama.model) as calls:
        first = cached_analyze(pipeline, _request(lab, "benign", tiny_llama, output=tmp_path / "a.json"), cache)
        after_first = calls[0]
        second = cached_analyze(pipeline, _request(lab, "benign", tiny_llama, output=tmp_path / "b.json"), cache)
        assert calls[0] == after_first  # the hit ran no forward pass
    assert after_first >= first["replays"]["forward_passes"] > 0
    assert (cache.misses, cache.hits, cache.last_hit) == (1, 1, True)
    assert _comparable(second) == _comparable(first)
    assert json.loads((tmp_path / "b.json").read_text())["export_path"] == str(tmp_path / "b.json")
    assert first["fix_set"]["validated"]


def test_result_changing_inputs_miss_ops_settings_hit(
    lab: dict[str, Path], tiny_llama: LoadedModel, tmp_path: Path
) -> None:
    cache = ResultCache(tmp_path / "cache", 10**8)
    base = Config()
    request = _request(lab, "benign", tiny_llama)
    cached_analyze(RCAPipeline(base), request, cache)
    cached_analyze(RCAPipeline(replace(base, output_dir="/elsewhere", log_level="DEBUG")), request, cache)
    assert cache.last_hit is True
    changed = load_config(overrides={"modules.cca.max_fix_set_size": 2})
    with forward_counter(tiny_llama.model) as calls:
        cached_analyze(RCAPipeline(changed), request, cache)
        assert cache.last_hit is False and calls[0] > 0
    cached_analyze(RCAPipeline(base), _request(lab, "benign2", tiny_llama), cache)
    assert cache.last_hit is False  # another population
    cached_analyze(RCAPipeline(base), replace(request, modules=(("provenance", True),)), cache)
    assert cache.last_hit is False  # a module turned on by the request changes the result
    assert (cache.hits, cache.misses) == (1, 4)
    assert config_hash(base) != config_hash(changed)
    assert config_hash(base) == config_hash(replace(base, bundle_dir="/x", cache=replace(base.cache, enabled=True)))


def _report(n: int) -> dict[str, Any]:
    return {"bundle_id": f"b{n}", "pad": "x" * 1000}


def test_lru_eviction_by_last_use(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path, max_bytes=3500)
    for key in ("a", "b", "c"):
        assert cache.put(key, _report(0)) == []
    assert cache.get("a") is not None  # a is now the most recently used
    assert cache.put("d", _report(1)) == ["b"]  # over 3500 bytes: the least recently used goes
    assert cache.get("b") is None and cache.last_hit is False
    assert [key for _, _, key in cache.entries()] == ["c", "a", "d"]
    assert cache.size() <= 3500
    assert cache.put("e", _report(2)) == ["c"]


def test_an_oversized_entry_is_kept_alone(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path, max_bytes=500)
    cache.put("a", _report(0))
    assert cache.put("b", _report(1)) == ["a"]
    assert cache.get("b") is not None


def test_damaged_entry_is_a_miss_and_removed(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path, max_bytes=10**6)
    cache.path("k").write_text("{not json")
    assert cache.get("k") is None and not cache.path("k").exists()


def test_default_results_dir_is_under_the_one_cache_root() -> None:
    assert default_results_dir(Config(cache_dir="/var/cache/mf")) == Path("/var/cache/mf/results")
    assert default_results_dir(Config()) == Path.home() / ".cache" / "model-forensics" / "results"
    env_config = config_from_env(None, {"MODEL_FORENSICS_CACHE_DIR": "/var/cache/env"})
    assert default_results_dir(env_config) == Path("/var/cache/env/results")


def test_a_sibling_recorded_after_a_cached_analysis_makes_a_miss(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    """The report replays its fixes on the incident's siblings, so a new sibling changes the answer."""
    incidents = tmp_path / "incidents"
    label = {"kind": "incident", "max_new_tokens": 3, "failure_family": "australia"}
    record_greedy(tiny_llama, "The capital of Australia is", incidents / "a1", **label)
    for i, prompt in enumerate(BENIGN[:2]):
        record_greedy(tiny_llama, prompt, tmp_path / "benign" / f"b{i}", "as-generated", kind="benign")
    cache, pipeline = ResultCache(tmp_path / "cache", 10**8), RCAPipeline()

    def analyse() -> dict[str, Any]:
        request = AnalysisRequest.of(str(incidents / "a1"), population=str(tmp_path / "benign"), model=tiny_llama)
        return cached_analyze(pipeline, request, cache)

    assert analyse()["siblings"]["found"] == 0
    analyse()
    assert (cache.misses, cache.hits) == (1, 1)
    record_greedy(tiny_llama, "Fact: the capital of Australia is", incidents / "a2", **label)
    report = analyse()  # a2 shares a1's label: a sibling, so the cached report is stale
    assert (cache.misses, cache.hits) == (2, 1) and report["siblings"]["found"] == 1
    analyse()
    assert (cache.misses, cache.hits) == (2, 2)
