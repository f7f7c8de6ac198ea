"""Prefix and suffix reuse: resuming from the recorded residual, and from the incident's own keys and
values before the first changed position, equals the full replay, for every family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from forensics.models import LoadedModel, resolve_model
from forensics.models.arch import arch_for
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer, ReplayOptions

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
    bundle = record_greedy(
        loaded, "The capital of Australia is", tmp_path / "b", kind="incident", max_new_tokens=3
    ).bundle
    fast = Replayer(
        bundle, loaded=loaded, options=ReplayOptions(batch_size=4)
    )  # small chunks: sets of late layers share none
    full = Replayer(bundle, loaded=loaded, options=ReplayOptions(prefix_reuse=False, suffix_reuse=False, batch_size=4))
    assert fast.fidelity().faithful
    sets = _sets(fast)
    a, b = fast.logits(sets), full.logits(sets)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert fast.layers_run < full.layers_run  # work was really skipped
    assert [o.hook_fires for o in fast.evaluate(sets)] == [o.hook_fires for o in full.evaluate(sets)]
    for name in fast.prefix.layers:  # no stub left behind
        assert "forward" not in fast.model.get_submodule(name).__dict__


def test_empty_set_skips_every_layer(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    bundle = record_greedy(tiny_llama, "One plus one is", tmp_path / "b", kind="incident", max_new_tokens=2).bundle
    rp = Replayer(bundle, loaded=tiny_llama)
    rp.fidelity()
    before = rp.layers_run
    out = rp.run(())
    assert rp.layers_run == before and out.argmax_id == rp.observed_id


def test_stubs_removed_when_the_forward_raises(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    bundle = record_greedy(tiny_llama, "One plus one is", tmp_path / "b", kind="incident", max_new_tokens=2).bundle
    rp = Replayer(bundle, loaded=tiny_llama)
    rp.fidelity()
    with pytest.raises(Exception, match="position 99 outside"):
        rp.run((Intervention("model.layers.1", "zero", (99,)),))
    with rp.prefix.skipping(1, 1, rp.device, torch.float32), pytest.raises(RuntimeError):
        assert "forward" in rp.model.model.layers[0].__dict__
        raise RuntimeError("boom")
    assert "forward" not in rp.model.model.layers[0].__dict__


def _suffix_sets(rp: Replayer) -> list[tuple[Intervention, ...]]:
    layers = rp.prefix.layers
    embed = arch_for(rp.model).embed  # outside the decoder layers: the pass cannot grow its batch
    out: list[tuple[Intervention, ...]] = [(), (Intervention(embed, "zero", (-1,)),)]
    for module in rp.bundle.modules:
        out.append((Intervention(module, "zero", "last"),))
        out.append((Intervention(module, "scale", (-2,), factor=0.5),))
    out.append((Intervention(layers[1], "scale", "all", factor=0.5),))
    out.append((Intervention(layers[-1], "zero", "last"), Intervention(layers[0], "scale", (1, -2), factor=2.0)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_suffix_reuse_equals_full_replay(tiny_dirs: dict[str, Path], family: str, tmp_path: Path) -> None:
    loaded = resolve_model(str(tiny_dirs[family]), device="cpu")
    bundle = record_greedy(
        loaded, "The capital of Australia is", tmp_path / "b", kind="incident", max_new_tokens=3
    ).bundle
    fast = Replayer(bundle, loaded=loaded, options=ReplayOptions(batch_size=3))
    full = Replayer(bundle, loaded=loaded, options=ReplayOptions(prefix_reuse=False, suffix_reuse=False, batch_size=3))
    fast.pass_cost = 0.0  # a tiny model never pays for an extra pass; force the split to test it
    sets = _suffix_sets(fast)
    a, b = fast.logits(sets), full.logits(sets)
    assert fast.suffix.reason is None, fast.suffix.reason
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert fast.positions_run < full.positions_run / 2  # most sets ran only their last one or two positions
    assert [o.hook_fires for o in fast.evaluate(sets)] == [o.hook_fires for o in full.evaluate(sets)]


def test_small_savings_keep_one_pass(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    """Splitting sets by first changed position costs passes: on a tiny model it never pays off."""
    bundle = record_greedy(tiny_llama, "One plus one is", tmp_path / "b", kind="incident", max_new_tokens=2).bundle
    rp = Replayer(bundle, loaded=tiny_llama)
    rp.fidelity()
    before = rp.forward_passes
    rp.evaluate([(Intervention("model.layers.1", "zero", "last"),), (Intervention("model.layers.0", "zero", "all"),)])
    assert rp.forward_passes == before + 1
    rp.pass_cost = 0.0
    rp.evaluate([(Intervention("model.layers.1", "zero", "last"),), (Intervention("model.layers.0", "zero", "all"),)])
    assert rp.forward_passes == before + 1 + 3  # learning the keys and values once, then one pass per group


@pytest.mark.slow
def test_suffix_reuse_on_smollm_splits_and_equals_full_replay(smol: LoadedModel, tmp_path: Path) -> None:
    """On a 135M model a group of last-position sets saves more than a pass costs: it gets its own pass."""
    bundle = record_greedy(
        smol, "The capital of Australia is", tmp_path / "a", kind="incident", max_new_tokens=2
    ).bundle
    fast = Replayer(bundle, loaded=smol, options=ReplayOptions(batch_size=64))
    full = Replayer(bundle, loaded=smol, options=ReplayOptions(prefix_reuse=False, suffix_reuse=False, batch_size=64))
    sets = [(Intervention(f"model.layers.{i}", "zero", pos),) for i in range(30) for pos in ("last", "all")]
    # fp32 BLAS results depend on the matrix shapes: a one-position pass (gemv) and a batched one both
    # differ from the plain pass by ~3e-5 relative (up to ~5e-4 on logits of ~20), as batching does
    for s in sets[:6]:
        assert torch.allclose(fast.logits([s]), full.logits([s]), atol=1e-3, rtol=1e-4)
    fast.forward_passes = full.forward_passes = 0
    assert torch.allclose(fast.logits(sets), full.logits(sets), atol=1e-3, rtol=1e-4)
    assert (fast.forward_passes, full.forward_passes) == (2, 1)  # "last" sets and "all" sets apart
    assert fast.positions_run < full.positions_run / 2
