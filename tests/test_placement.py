"""Weights larger than memory: a tiny model dispatched by accelerate (CPU budget too small, so to disk)
replays, intervenes and is analysed exactly as the same model in memory."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forensics.cca.atp import attribute
from forensics.config import load_config
from forensics.errors import ConfigError, ModelError
from forensics.models import LoadedModel, build_tiny_model, resolve_model
from forensics.models.placement import budget_map, input_device, is_dispatched, placement_kwargs, weights_bytes
from forensics.rca.pipeline import RCAPipeline
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer
from tests.conftest import LIVE_MODELS

OTHERS = {
    "france": "The capital of France is",
    "long": "Canberra is the capital of Australia. The capital of Australia is",
}
BUDGET = {"cpu": "100KiB"}  # the tiny model's weights are ~0.8 MB: all of them go to disk


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("placement")
    path = build_tiny_model("llama", root / "model", seed=0, layers=2)
    in_memory = resolve_model(str(path), device="cpu")
    offloaded = resolve_model(str(path), device="cpu", max_memory=BUDGET, offload_dir=root / "offload")
    LIVE_MODELS.append(offloaded.model)  # the autouse fixture checks it for leftover hooks (accelerate's stay)
    others = [
        record_greedy(in_memory, text, root / name, "as-generated", kind="benign", max_new_tokens=2).bundle
        for name, text in OTHERS.items()
    ]
    incident = record_greedy(
        in_memory, "The capital of Australia is", root / "incident", "runner-up", kind="incident", max_new_tokens=2
    ).bundle
    return {"root": root, "path": path, "mem": in_memory, "off": offloaded, "others": others, "incident": incident}


def _replayer(lab: dict[str, Any], loaded: LoadedModel) -> Replayer:
    return Replayer(lab["incident"], loaded=loaded, population=lab["others"], sources=lab["others"])


def test_the_budget_sends_the_weights_to_disk_and_keeps_their_identity(lab: dict[str, Any]) -> None:
    off, mem = lab["off"], lab["mem"]
    assert is_dispatched(off.model) and not is_dispatched(mem.model)
    assert set(off.model.hf_device_map.values()) == {"disk"}
    assert next(off.model.parameters()).device.type == "meta"  # the weights are not in memory
    assert input_device(off.model) == torch.device("cpu") and off.info.device == "cpu"
    assert off.info.sha256 == mem.info.sha256  # a bundle recorded in memory replays on the offloaded model


def test_offloaded_replay_is_faithful_and_equals_the_in_memory_replay(lab: dict[str, Any]) -> None:
    rp_mem, rp_off = _replayer(lab, lab["mem"]), _replayer(lab, lab["off"])
    fidelity = rp_off.fidelity()
    assert fidelity.faithful and fidelity.max_activation_diff == 0.0
    layer = "model.layers.1.self_attn"
    sets = [
        (),
        (Intervention(layer, "zero", "last", head=1),),  # a head zero: a pre-hook on the offloaded o_proj
        (Intervention("model.layers.1.mlp", "mean", "all"),),  # prefix reuse stubs layer 0 (accelerate's wrapper)
        (Intervention(layer, "patch", "last", "france", head=0),),
    ]
    torch.testing.assert_close(rp_off.logits(sets), rp_mem.logits(sets), rtol=0, atol=1e-5)
    assert [o.hook_fires for o in rp_off.evaluate(sets)] == [o.hook_fires for o in rp_mem.evaluate(sets)]
    assert "new_forward" in repr(lab["off"].model.model.layers[0].forward)  # accelerate's hook is back in place


def test_attribution_gradients_flow_through_offloaded_weights(lab: dict[str, Any]) -> None:
    kinds = ("zero", "mean", "patch")
    mem = attribute(_replayer(lab, lab["mem"]), kinds=kinds, sources=["france"])
    off = attribute(_replayer(lab, lab["off"]), kinds=kinds, sources=["france"])
    np.testing.assert_allclose(off.values, mem.values, rtol=1e-4, atol=1e-5)
    assert [iv for iv, _ in off.top(5)] == [iv for iv, _ in mem.top(5)]


def test_a_full_analysis_runs_on_the_offloaded_model(lab: dict[str, Any]) -> None:
    def analyse(loaded: LoadedModel) -> dict[str, Any]:
        result = RCAPipeline().analyze_incident(lab["incident"], baseline=lab["others"], model=loaded)
        return dict(result.to_dict())

    off, mem = analyse(lab["off"]), analyse(lab["mem"])
    assert off["fix_set"]["interventions"] == mem["fix_set"]["interventions"]
    assert off["fix_set"]["interventions"], "the tiny incident has a fix"
    assert off["confidence"] == pytest.approx(mem["confidence"], abs=1e-6)


def test_weights_that_fit_load_whole(lab: dict[str, Any]) -> None:
    path = lab["path"]
    size = weights_bytes("hf_dir", path, torch.float32)
    assert size == sum(p.numel() * 4 for p in lab["mem"].model.parameters())
    cpu = torch.device("cpu")
    assert placement_kwargs("hf_dir", path, torch.float32, cpu, size, lab["root"] / "o") == {}
    assert placement_kwargs("hf_dir", path, torch.float32, cpu, None, lab["root"] / "o") == {}
    kwargs = placement_kwargs("hf_dir", path, torch.float32, cpu, size - 1, lab["root"] / "o")
    assert kwargs["device_map"] == "auto" and kwargs["max_memory"] == {"cpu": size - 1}
    assert Path(kwargs["offload_folder"]).parent == lab["root"] / "o"


def test_budgets_name_devices_as_accelerate_does() -> None:
    cpu = torch.device("cpu")
    assert budget_map("1MiB", cpu) == {"cpu": 1 << 20}
    assert budget_map({"cuda:1": "2GB", "cpu": 5, "disk": "1GiB"}, cpu) == {1: 2 * 10**9, "cpu": 5, "disk": 1 << 30}
    with pytest.raises(ModelError, match="device 'gpu' not allowed"):
        budget_map({"gpu": "1GB"}, cpu)
    with pytest.raises(ModelError, match="size 'lots' not allowed"):
        budget_map("lots", cpu)


def test_the_offload_directory_goes_with_the_model(lab: dict[str, Any]) -> None:
    loaded = resolve_model(str(lab["path"]), device="cpu", max_memory="1KiB", offload_dir=lab["root"] / "gone")
    folder = Path(loaded.model._forensics_offload_dir)
    assert folder.is_dir()
    del loaded
    gc.collect()
    assert not folder.exists()


def test_config_carries_the_weights_budget() -> None:
    config = load_config(overrides={"model.max_memory": {"cpu": "200MiB", "disk": 10**9}, "model.offload_dir": "/o"})
    assert config.model.max_memory == {"cpu": "200MiB", "disk": 10**9} and config.model.offload_dir == "/o"
    assert load_config(overrides={"model.max_memory": "8GB"}).model.max_memory == "8GB"
    assert load_config().model.max_memory is None
    with pytest.raises(ConfigError, match="model.max_memory.cpu"):
        load_config(overrides={"model.max_memory": {"cpu": "200"}})
    with pytest.raises(ConfigError, match="cpu, disk, mps, cuda or cuda:N"):
        load_config(overrides={"model.max_memory": {"gpu0": "1GB"}})
