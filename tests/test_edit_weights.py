"""Exact weight forms (issue 23, item 1): a position-free fix written into the weights computes what the
hook-based intervention computes, on every tiny architecture family, to 1e-6 on random inputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from forensics.edit import NoWeightForm, edited_copy, install_hooks, position_free_mean, weight_form
from forensics.edit.hookspec import HookMember
from forensics.models import LoadedModel, resolve_model
from forensics.models.arch import arch_for
from forensics.models.registry import ModelInfo
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer, ReplayOptions
from tests.conftest import LIVE_MODELS

FAMILIES = ("llama", "gpt2", "gpt_neox", "qwen2", "mistral", "phi")


@pytest.fixture(scope="module", params=FAMILIES)
def lab(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]) -> LoadedModel:
    """A tiny model of one family, in float64 so that two exact forms agree far below 1e-6."""
    loaded = resolve_model(str(tiny_dirs[request.param]), device="cpu")
    LIVE_MODELS.append(loaded.model)  # the autouse fixture checks it for leftover hooks
    return LoadedModel(loaded.model.double(), loaded.tokenizer, loaded.info)


def fixes(loaded: LoadedModel) -> list[tuple[Intervention, ...]]:
    spec = arch_for(loaded.model)
    l0, l1 = spec.layer_names(loaded.model)
    attn, mlp = f"{l1}.{spec.attn}", f"{l1}.{spec.mlp}"
    return [
        (Intervention(attn, "zero", "all"),),
        (Intervention(mlp, "zero", "all"),),
        (Intervention(mlp, "scale", "all", factor=0.5),),
        (Intervention(attn, "zero", "all", head=2),),
        (Intervention(attn, "scale", "all", factor=1.7, head=1),),
        (Intervention(attn, "zero", "all", alpha=0.4),),
        (Intervention(f"{l0}.{spec.mlp}", "zero", "all"), Intervention(attn, "scale", "all", factor=-0.3)),
        (Intervention(attn, "scale", "all", factor=2.0, head=0), Intervention(attn, "scale", "all", factor=0.5)),
    ]


def random_ids(seed: int, batch: int = 3, length: int = 11) -> torch.Tensor:
    return torch.randint(1, 384, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def test_weight_forms_equal_the_hooks_on_random_inputs(lab: LoadedModel) -> None:
    ids = random_ids(0)
    for fix in fixes(lab):
        edited = edited_copy(lab.model, weight_form(lab.model, fix))
        with install_hooks(lab.model, [HookMember(iv) for iv in fix]):
            hooked = logits(lab.model, ids)
        ours = logits(edited, ids)
        assert (ours - hooked).abs().max() < 1e-6, fix
        assert (ours - logits(lab.model, ids)).abs().max() > 1e-3, f"{fix} changed nothing"


def test_weight_forms_equal_the_replay(lab: LoadedModel, tmp_path: Path) -> None:
    """The replay's own intervention (``Replayer.logits``) at the decision step of a random-text incident."""
    text = lab.tokenizer.decode(random_ids(1, 1, 12)[0].tolist())
    f32 = LoadedModel(copy.deepcopy(lab.model).float(), lab.tokenizer, lab.info)
    bundle = record_greedy(f32, text, tmp_path / "incident", "runner-up", max_new_tokens=2).bundle
    options = ReplayOptions(allow_model_mismatch=True, prefix_reuse=False, suffix_reuse=False)  # all in float64
    rp = Replayer(bundle, loaded=lab, options=options)
    sets = fixes(lab)
    replayed = rp.logits(sets)
    for fix, row in zip(sets, replayed, strict=True):
        edited = edited_copy(lab.model, weight_form(lab.model, fix))
        ours = logits(edited, rp.input_ids)[0, -1].float()
        assert (ours - row).abs().max() < 1e-6, fix


def test_a_mean_carried_by_a_bias_equals_writing_the_mean(lab: LoadedModel) -> None:
    """A position-free mean: W = 0 and b = m (a head: b += W_h m_h); a Linear without a bias gets one through
    the family's config flag, or the form is refused where the family has none."""
    spec = arch_for(lab.model)
    attn, mlp = f"{spec.layer_names(lab.model)[1]}.{spec.attn}", f"{spec.layer_names(lab.model)[1]}.{spec.mlp}"
    hidden = int(lab.model.config.hidden_size if hasattr(lab.model.config, "hidden_size") else 64)
    heads, head_dim = spec.head_slices(lab.model, attn)
    gen = torch.Generator().manual_seed(3)
    m, mh = torch.randn(hidden, generator=gen, dtype=torch.float64), torch.randn(head_dim, generator=gen).double()
    cases = [
        ((Intervention(mlp, "mean", "all"),), {(mlp, None): m}, m),
        ((Intervention(attn, "mean", "all", head=1),), {(attn, 1): mh}, torch.cat([mh] * heads)),
    ]
    ids = random_ids(2)
    for fix, means, row in cases:
        try:
            edit = weight_form(lab.model, fix, means=means)
        except NoWeightForm as exc:
            assert spec.family in ("qwen2", "mistral") and "no config flag" in str(exc)
            continue
        rows = row.reshape(1, -1).expand(ids.shape[1], -1)
        with install_hooks(lab.model, [HookMember(fix[0], rows)]):
            hooked = logits(lab.model, ids)
        assert (logits(edited_copy(lab.model, edit), ids) - hooked).abs().max() < 1e-6


def test_position_dependent_fixes_have_no_weight_form(tiny_llama: LoadedModel) -> None:
    mlp = "model.layers.1.mlp"
    cases = {
        Intervention(mlp, "zero", "last"): "position-dependent",
        Intervention(mlp, "zero", (0, 2)): "position-dependent",
        Intervention(mlp, "patch", "all", source="x"): "differ by position",
        Intervention(mlp, "mean", "all"): "differs by position",
        Intervention("model.layers.1", "zero", "all"): "residual stream",
    }
    for iv, why in cases.items():
        with pytest.raises(NoWeightForm, match=why) as info:
            weight_form(tiny_llama.model, (iv,))
        assert "\n" not in str(info.value)


def test_the_replays_mean_differs_by_position_so_it_is_refused(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    """The population's mean is taken at each position aligned from the end: it is not one vector."""
    prompts = ["The capital of France is", "One plus one is two. The answer is"]
    population = [
        record_greedy(tiny_llama, p, tmp_path / f"b{i}", "as-generated", max_new_tokens=2).bundle
        for i, p in enumerate(prompts)
    ]
    incident = record_greedy(tiny_llama, "The capital of Italy is", tmp_path / "i", "runner-up", max_new_tokens=2)
    rp = Replayer(incident.bundle, loaded=tiny_llama, population=population)
    rows = rp.bank.mean("model.layers.1.mlp", length=rp.length)
    with pytest.raises(NoWeightForm, match="differs by position"):
        position_free_mean(rows, "model.layers.1.mlp")
    constant = np.tile(rows[-1], (rows.shape[0], 1))
    assert torch.equal(position_free_mean(constant, "x"), torch.from_numpy(rows[-1].astype(np.float64)))


def test_info_is_left_alone(lab: LoadedModel) -> None:
    """The edit works on a copy: the original's weights (and hence its digest) do not move."""
    before = {k: v.clone() for k, v in lab.model.state_dict().items()}
    edited_copy(lab.model, weight_form(lab.model, fixes(lab)[0]))
    assert all(torch.equal(before[k], v) for k, v in lab.model.state_dict().items())
    assert isinstance(lab.info, ModelInfo)
