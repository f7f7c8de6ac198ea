"""Prefix reuse: resuming from the recorded residual equals the full replay, for every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from forensics.models import LoadedModel, resolve_model
from forensics.replay import Intervention, Replayer
from tests.helpers import record_tiny

FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2", "mistral", "phi"]


def _sets(rp: Replayer) -> list[tuple[Intervention, ...]]:
    layers = rp.prefix.layers
    sites = rp.bundle.manifest["recorded"]["sites"]
    out: list[tuple[Intervention, ...]] = [()]
    for module in rp.bundle.modules:
        out.append((Intervention(module, "zero", "last"),))
        out.append((Intervention(module, "scale", "all", factor=0.5),))
    out.append((Intervention(layers[-1], "zero", "all"), Intervention(layers[0], "scale", "last", factor=2.0)))
    assert set(sites.values()) == {"resid", "attn_out", "mlp_out"}
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_reuse_equals_full_replay(tiny_dirs: dict[str, Path], family: str, tmp_path: Path) -> None:
    loaded = resolve_model(str(tiny_dirs[family]), device="cpu")
    bundle = record_tiny(loaded, "The capital of Australia is", tmp_path / "b", n=3)
    fast = Replayer(bundle, loaded=loaded, batch_size=4)  # small chunks: sets of late layers share none
    full = Replayer(bundle, loaded=loaded, prefix_reuse=False, batch_size=4)
    assert fast.fidelity().faithful
    sets = _sets(fast)
    a, b = fast.logits(sets), full.logits(sets)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert fast.layers_run < full.layers_run  # work was really skipped
    assert [o.hook_fires for o in fast.evaluate(sets)] == [o.hook_fires for o in full.evaluate(sets)]
    for name in fast.prefix.layers:  # no stub left behind
        assert "forward" not in fast.model.get_submodule(name).__dict__


def test_empty_set_skips_every_layer(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    bundle = record_tiny(tiny_llama, "One plus one is", tmp_path / "b", n=2)
    rp = Replayer(bundle, loaded=tiny_llama)
    rp.fidelity()
    before = rp.layers_run
    out = rp.run(())
    assert rp.layers_run == before and out.argmax_id == rp.observed_id


def test_stubs_removed_when_the_forward_raises(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    bundle = record_tiny(tiny_llama, "One plus one is", tmp_path / "b", n=2)
    rp = Replayer(bundle, loaded=tiny_llama)
    rp.fidelity()
    with pytest.raises(Exception, match="position 99 outside"):
        rp.run((Intervention("model.layers.1", "zero", (99,)),))
    with rp.prefix.skipping(1, 1, rp.device, torch.float32), pytest.raises(RuntimeError):
        assert "forward" in rp.model.model.layers[0].__dict__
        raise RuntimeError("boom")
    assert "forward" not in rp.model.model.layers[0].__dict__
