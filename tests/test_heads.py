"""Attention-head interventions: a head's slice of the out-projection's input, at token positions.

Expected values come from the tiny models' own weights: a plain hook on the same columns, or the
out-projection's weight with those columns zeroed."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.errors import ConfigError, ReplayError
from forensics.models import resolve_model
from forensics.models.arch import arch_for
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer
from forensics.replay.sources import prefix_length

FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2", "mistral", "phi"]
PROMPT = "The capital of Australia is"


@pytest.fixture(scope="module", params=FAMILIES)
def case(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    loaded = resolve_model(str(tiny_dirs[request.param]), device="cpu")
    bundle = record_greedy(loaded, PROMPT, tmp_path_factory.mktemp("heads") / "b", kind="incident", max_new_tokens=3)
    return loaded, bundle.bundle


@pytest.fixture
def rp(case: Any) -> Iterator[Replayer]:
    loaded, bundle = case
    yield Replayer(bundle, loaded=loaded)


def _attn(rp: Replayer, layer: int) -> str:
    spec = arch_for(rp.model)
    return f"{spec.layers}.{layer}.{spec.attn}"


def _manual(rp: Replayer, layer: int, cols: slice, positions: list[int]) -> torch.Tensor:
    """Decision-step logits with a plain pre-hook zeroing ``cols`` of the out-projection input."""
    return _replaced(rp, layer, cols, dict.fromkeys(positions, torch.tensor(0.0)))


def test_head_slices_for_every_family(rp: Replayer) -> None:
    spec = arch_for(rp.model)
    heads, head_dim = spec.head_slices(rp.model)
    assert heads == getattr(rp.model.config, "num_attention_heads", getattr(rp.model.config, "n_head", None))
    assert heads * head_dim == int(rp.model.config.hidden_size)
    assert spec.head_proj(_attn(rp, 1)).endswith(str(spec.attn_out_proj))


def test_zero_head_at_last_position_matches_a_manual_hook(rp: Replayer) -> None:
    heads, head_dim = arch_for(rp.model).head_slices(rp.model)
    base = rp.logits([()])[0]
    for h in (0, heads - 1):
        got = rp.logits([(Intervention(_attn(rp, 0), "zero", "last", head=h),)])[0]
        want = _manual(rp, 0, slice(h * head_dim, (h + 1) * head_dim), [rp.length - 1])
        assert not torch.allclose(got, base, atol=1e-4), "zeroing a head changed nothing"
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_zero_head_in_last_layer_equals_zeroed_weight_columns(rp: Replayer) -> None:
    """In the last layer only the decision position reaches the logits we read: zeroing head h there is
    the model with those columns of the out-projection's weight set to zero."""
    spec = arch_for(rp.model)
    _, head_dim = spec.head_slices(rp.model)
    last = len(spec.layer_names(rp.model)) - 1
    h, cols = 1, slice(head_dim, 2 * head_dim)
    got = rp.logits([(Intervention(_attn(rp, last), "zero", "last", head=h),)])[0]
    model = copy.deepcopy(rp.model)
    proj = model.get_submodule(spec.head_proj(_attn(rp, last)))
    with torch.no_grad():
        if isinstance(proj, torch.nn.Linear):
            proj.weight[:, cols] = 0.0  # [out, in]
        else:
            proj.weight[cols, :] = 0.0  # GPT-2 Conv1D: [in, out]
        want = model(input_ids=rp.input_ids, use_cache=False).logits[0, -1].float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_zeroing_every_head_leaves_only_the_bias(rp: Replayer) -> None:
    spec = arch_for(rp.model)
    heads, _ = spec.head_slices(rp.model)
    module = _attn(rp, 0)
    proj = rp.model.get_submodule(spec.head_proj(module))
    got = rp.logits([tuple(Intervention(module, "zero", "all", head=h) for h in range(heads))])[0]

    def bias_only(m: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        bias = getattr(m, "bias", None)
        return torch.zeros_like(output) + (bias if bias is not None else 0.0)

    handle = proj.register_forward_hook(bias_only)
    try:
        with torch.inference_mode():
            want = rp.model(input_ids=rp.input_ids, use_cache=False).logits[0, -1].float()
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if getattr(proj, "bias", None) is None:  # no bias: the same as zeroing the attention output
        whole = rp.logits([(Intervention(module, "zero", "all"),)])[0]
        torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)


def test_batched_equals_one_by_one(rp: Replayer) -> None:
    a0, a1 = _attn(rp, 0), _attn(rp, 1)
    spec = arch_for(rp.model)
    sets = [
        (Intervention(a1, "zero", "last", head=0),),
        (Intervention(a0, "zero", "all", head=1), Intervention(a0, "scale", "last", factor=3.0, head=2)),
        (),
        (Intervention(a1, "scale", (-2, -1), factor=0.5, head=3), Intervention(f"{spec.layers}.1.{spec.mlp}", "zero")),
        (Intervention(a0, "zero", "last", head=1, alpha=0.5), Intervention(a0, "zero", "last")),
        (Intervention(a1, "zero", "last", head=0),),
    ]
    batched = rp.logits(sets)
    single = torch.stack([rp.logits([s])[0] for s in sets])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[0], batched[5], atol=1e-5, rtol=1e-5)


def test_fire_ledger_counts_head_hooks(rp: Replayer) -> None:
    a1 = _attn(rp, 1)
    iv0, iv2 = Intervention(a1, "zero", "last", head=0), Intervention(a1, "zero", "last", head=2)
    out = rp.evaluate([(iv0, iv2), (Intervention(a1, "zero", "last"),)])
    assert out[0].hook_fires == (1, 1)  # one pass, one pre-hook on the out-projection for both heads
    assert out[1].hook_fires == (1,)
    assert rp.prefix.start((iv0,)) == (1 if rp.prefix.start(()) > 0 else 0)  # joins at the attention's layer


def test_alpha_and_scale_on_a_head(rp: Replayer) -> None:
    a0 = _attn(rp, 0)
    _, head_dim = arch_for(rp.model).head_slices(rp.model)
    zero = rp.logits([(Intervention(a0, "zero", "last", head=1),)])[0]
    scaled = rp.logits([(Intervention(a0, "scale", "last", factor=0.0, head=1),)])[0]
    none = rp.logits([(Intervention(a0, "zero", "last", head=1, alpha=0.0),)])[0]
    torch.testing.assert_close(zero, scaled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(none, rp.logits([()])[0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(zero, _manual(rp, 0, slice(head_dim, 2 * head_dim), [rp.length - 1]), atol=1e-5)


def test_json_round_trip() -> None:
    iv = Intervention("model.layers.3.self_attn", "zero", (4, 5), head=2, alpha=0.25)
    assert iv.to_dict()["head"] == 2
    assert Intervention.from_dict(iv.to_dict()) == iv
    assert Intervention.parse_sets(f"[{__import__('json').dumps(iv.to_dict())}]") == (iv,)
    assert "head" not in Intervention("model.layers.3", "zero").to_dict()
    assert iv != Intervention("model.layers.3.self_attn", "zero", (4, 5), head=3, alpha=0.25)


@pytest.mark.parametrize("head", [-1, True, 1.5, "2"])
def test_bad_head_values_are_config_errors(head: Any) -> None:
    with pytest.raises(ConfigError, match="head"):
        Intervention("model.layers.0.self_attn", "zero", head=head)


def test_head_out_of_range_and_unsupported_kinds_are_clear(rp: Replayer) -> None:
    heads, _ = arch_for(rp.model).head_slices(rp.model)
    proj = arch_for(rp.model).head_proj(_attn(rp, 0))
    with pytest.raises(ReplayError, match=f"head {heads} out of range; it has {heads} heads"):
        rp.run((Intervention(_attn(rp, 0), "zero", head=heads),))
    assert proj.startswith(_attn(rp, 0))
    with pytest.raises(ReplayError, match="'mean' intervention needs benign baseline bundles"):
        rp.run((Intervention(_attn(rp, 0), "mean", head=0),))
    with pytest.raises(ReplayError, match="patch source 'b' is not among the baselines"):
        rp.run((Intervention(_attn(rp, 0), "patch", source="b", head=0),))
    with pytest.raises(ReplayError, match="target an attention module"):
        rp.run((Intervention(arch_for(rp.model).layers + ".0", "zero", head=0),))


@pytest.fixture(scope="module")
def sourced(case: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The incident replayed with two other prompts of the same model as baselines."""
    loaded, bundle = case
    root = tmp_path_factory.mktemp("head_sources")
    others = [
        record_greedy(loaded, text, root / name, kind="benign", max_new_tokens=2).bundle
        for name, text in (
            ("canberra", "Canberra is the capital of Australia. The capital of Australia is"),
            ("france", "The capital of France is"),
        )
    ]
    return loaded, bundle, others


def _captured(rp: Replayer, bundle: Any, layer: int) -> torch.Tensor:
    """What the out-projection of ``layer`` reads on ``bundle``'s own tokens: a plain hook, not ours."""
    proj = rp.model.get_submodule(arch_for(rp.model).head_proj(_attn(rp, layer)))
    seen: list[torch.Tensor] = []
    handle = proj.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].detach().clone()))
    generated = list(bundle.outputs["generated_ids"])
    ids = torch.tensor([list(bundle.inputs["input_ids"]) + generated[: len(generated) - 1]])
    try:
        with torch.inference_mode():
            rp.model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return seen[0]


def _replaced(rp: Replayer, layer: int, cols: slice, values: dict[int, torch.Tensor]) -> torch.Tensor:
    """Decision-step logits with a plain pre-hook writing ``values[p]`` into ``cols`` at position p."""
    proj = rp.model.get_submodule(arch_for(rp.model).head_proj(_attn(rp, layer)))

    def hook(module: torch.nn.Module, args: Any) -> Any:
        x = args[0].clone()
        for p, v in values.items():
            x[:, p, cols] = v
        return (x, *args[1:])

    handle = proj.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            return rp.model(input_ids=rp.input_ids, use_cache=False).logits[0, -1].float()
    finally:
        handle.remove()


def test_head_patch_takes_the_source_heads_at_aligned_positions(sourced: Any) -> None:
    loaded, bundle, others = sourced
    rp = Replayer(bundle, loaded=loaded, sources=others)
    heads, head_dim = arch_for(rp.model).head_slices(rp.model)
    head, layer = heads - 1, 1
    cols = slice(head * head_dim, (head + 1) * head_dim)
    src = _captured(rp, others[0], layer)[: prefix_length(others[0], rp.step), cols]  # aligned from the end
    cases = {"last": [rp.length - 1], (1, 2): [1, 2]}
    for positions, absolute in cases.items():
        got = rp.logits([(Intervention(_attn(rp, layer), "patch", positions, "canberra", head=head),)])[0]
        want = _replaced(rp, layer, cols, {p: src[p - rp.length] for p in absolute})
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    outcome = rp.run((Intervention(_attn(rp, layer), "patch", "last", "canberra", head=head),))
    assert outcome.hook_fires == (1,)


def test_head_mean_is_the_population_mean_at_the_aligned_position_and_blends_with_alpha(sourced: Any) -> None:
    loaded, bundle, others = sourced
    rp = Replayer(bundle, loaded=loaded, population=others)
    _, head_dim = arch_for(rp.model).head_slices(rp.model)
    cols = slice(0, head_dim)

    def aligned(p: int) -> torch.Tensor:  # each baseline's prompt aligned from the end, those that reach p
        rows = [
            _captured(rp, b, 0)[n - rp.length + p, cols]
            for b in others
            if (n := len(b.inputs["input_ids"])) - rp.length + p >= 0
        ]
        return torch.stack(rows).mean(dim=0)

    mean = aligned(rp.length - 1)
    got = rp.logits([(Intervention(_attn(rp, 0), "mean", "last", head=0),)])[0]
    torch.testing.assert_close(got, _replaced(rp, 0, cols, {rp.length - 1: mean}), atol=1e-4, rtol=1e-4)
    got = rp.logits([(Intervention(_attn(rp, 0), "mean", (0, 1), head=0),)])[0]
    torch.testing.assert_close(got, _replaced(rp, 0, cols, {0: aligned(0), 1: aligned(1)}), atol=1e-4, rtol=1e-4)
    half = rp.logits([(Intervention(_attn(rp, 0), "mean", "last", head=0, alpha=0.5),)])[0]
    mine = _captured(rp, bundle, 0)[rp.length - 1, cols]
    want = _replaced(rp, 0, cols, {rp.length - 1: 0.5 * mean + 0.5 * mine})
    torch.testing.assert_close(half, want, atol=1e-4, rtol=1e-4)


def test_head_values_of_a_source_from_other_weights_are_refused(sourced: Any, tmp_path: Path) -> None:
    loaded, bundle, _ = sourced
    other = copy.deepcopy(loaded.model)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    foreign = record_greedy(
        resolve_model(_saved(other, loaded, tmp_path), device="cpu"),
        PROMPT,
        tmp_path / "ref",
        kind="benign",
        max_new_tokens=2,
    ).bundle
    rp = Replayer(bundle, loaded=loaded, sources=[foreign], options=_lenient())
    with pytest.raises(ReplayError, match="recorded on other weights"):
        rp.run((Intervention(_attn(rp, 0), "patch", "last", foreign.id, head=0),))
    rp.run((Intervention(_attn(rp, 0), "patch", "last", foreign.id),))  # module outputs are recorded: fine


def _saved(model: Any, loaded: Any, root: Path) -> str:
    out = root / "other_model"
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return str(out)


def _lenient() -> Any:
    from forensics.replay.options import ReplayOptions

    return ReplayOptions(allow_source_mismatch=True)
