"""Head patches from a reference model replace the head's contribution, not its output.

A regression planted in one head's columns of the attention out-projection leaves that head's output
(the projection's input) the same on both versions; only its contribution ``W_O[:, h] z_h`` differs.
Expected values come from the two models' own weights: the clean model itself, the faulty one with a
plain hook, or a third copy with the head's columns scaled halfway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forensics.cca.atp import attribute
from forensics.failure import FailureSpec
from forensics.faults.plant import Fault, plant_fault
from forensics.models import LoadedModel, resolve_model
from forensics.models.arch import arch_for, get_module
from forensics.rca.reference import reference_heads, reference_run
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer
from forensics.replay.options import ReplayOptions
from tests.conftest import LIVE_MODELS

FAMILIES = ["llama", "gpt2", "gpt_neox", "qwen2", "mistral", "phi"]
PROMPT = "The capital of Australia is"
LAYER, FACTOR = 0, 5.0


def _saved(model: Any, tokenizer: Any, out: Path) -> LoadedModel:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    loaded = resolve_model(str(out), device="cpu")
    LIVE_MODELS.append(loaded.model)
    return loaded


@pytest.fixture(scope="module", params=FAMILIES)
def case(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp(f"contrib-{request.param}")
    clean = resolve_model(str(tiny_dirs[request.param]), device="cpu")
    heads = arch_for(clean.model).head_slices(clean.model)[0]
    head = heads - 1
    faulty = _saved(
        plant_fault(clean.model, Fault(LAYER, "head", FACTOR, head=head, kind="scale")), clean.tokenizer, root / "f"
    )
    ids = clean.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        want = int(clean.model(ids).logits[0, -1].argmax())
    spec = FailureSpec("expected", "", (want,))
    incident = record_greedy(faulty, PROMPT, root / "inc", spec, kind="incident", max_new_tokens=2).bundle
    ref = reference_run(incident, clean, root / "ref", model=faulty)
    rp = Replayer(incident, loaded=faulty, sources=[ref], options=ReplayOptions(reference_sha256=clean.info.sha256))
    rp.bank.set_heads(ref.id, *reference_heads(clean, ref))
    spec_ = arch_for(clean.model)
    attn = f"{spec_.layers}.{LAYER}.{spec_.attn}"
    return {
        "clean": clean,
        "faulty": faulty,
        "rp": rp,
        "ref": ref,
        "attn": attn,
        "head": head,
        "heads": heads,
        "root": root,
    }


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits[0, -1].float()


def test_patching_the_faulty_heads_contribution_from_ref_restores_refs_logits(case: Any) -> None:
    rp, attn, head = case["rp"], case["attn"], case["head"]
    iv = Intervention(attn, "patch", "all", case["ref"].id, head=head)
    outcome = rp.run((iv,))
    assert outcome.hook_fires == (1,)
    clean = _logits(case["clean"].model, rp.input_ids)
    torch.testing.assert_close(rp.logits([(iv,)])[0], clean, atol=1e-4, rtol=1e-4)
    other = Intervention(attn, "patch", "all", case["ref"].id, head=(head + 1) % case["heads"])
    torch.testing.assert_close(rp.logits([(other,)])[0], rp.logits([()])[0], atol=1e-4, rtol=1e-4)  # same weights


def test_a_contribution_patch_at_the_last_position_matches_a_plain_hook(case: Any) -> None:
    """At layer 0 both versions' heads read the same input, so REF's contribution at a position is the
    head's output through REF's columns: a plain forward hook adds the difference there."""
    rp, attn, head = case["rp"], case["attn"], case["head"]
    spec = arch_for(rp.model)
    _, dim = spec.head_slices(rp.model, attn)
    cols = slice(head * dim, (head + 1) * dim)

    def block(model: Any) -> torch.Tensor:  # [head_dim, hidden]
        proj = get_module(model, spec.head_proj(attn))
        w = proj.weight.detach()
        return (w if type(proj).__name__ == "Conv1D" else w.T)[cols]

    diff = block(case["clean"].model) - block(rp.model)
    proj = get_module(rp.model, spec.head_proj(attn))
    last = rp.length - 1

    def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, last] += args[0][:, last, cols] @ diff
        return out

    handle = proj.register_forward_hook(hook)
    try:
        want = _logits(rp.model, rp.input_ids)
    finally:
        handle.remove()
    got = rp.logits([(Intervention(attn, "patch", "last", case["ref"].id, head=head),)])[0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_alpha_blends_the_two_contributions(case: Any) -> None:
    """Half way between x5 and x1 is the head scaled x3: a third model with that weight says so."""
    rp, attn, head = case["rp"], case["attn"], case["head"]
    halfway = plant_fault(case["clean"].model, Fault(LAYER, "head", (FACTOR + 1) / 2, head=head, kind="scale"))
    iv = Intervention(attn, "patch", "all", case["ref"].id, head=head, alpha=0.5)
    torch.testing.assert_close(rp.logits([(iv,)])[0], _logits(halfway, rp.input_ids), atol=1e-4, rtol=1e-4)


def test_batched_rows_and_regeneration_keep_the_contribution(case: Any) -> None:
    rp, attn, head, ref = case["rp"], case["attn"], case["head"], case["ref"].id
    sets = [
        (Intervention(attn, "patch", "all", ref, head=head),),
        (),
        (Intervention(attn, "zero", "last", head=head),),
        (Intervention(attn, "patch", "last", ref, head=head),),
    ]
    batched = rp.logits(sets)
    for row, ivs in enumerate(sets):
        torch.testing.assert_close(batched[row], rp.logits([ivs])[0], atol=1e-4, rtol=1e-4)
    ids = rp.input_ids
    fixed = rp.generate(sets[0], max_new_tokens=3)
    assert fixed[0] == int(_logits(case["clean"].model, ids).argmax())


def test_atp_estimates_a_heads_contribution_difference(case: Any) -> None:
    """The faulty head's estimate is the whole attention's (the other heads are the same on both), the
    other heads' are zero: the first-order ranking points at the head, not only its layer."""
    rp, attn, head, ref = case["rp"], case["attn"], case["head"], case["ref"].id
    atp = attribute(
        rp, kinds=("patch",), sources=[ref], reference_runs=frozenset({ref}), sites=("attn", "head"), sink_exact=0.0
    )
    whole = atp.estimate(Intervention(attn, "patch", "all", ref))
    mine = atp.estimate(Intervention(attn, "patch", "all", ref, head=head))
    assert whole is not None and mine is not None and abs(whole) > 1e-6
    np.testing.assert_allclose(mine, whole, rtol=1e-5, atol=1e-6)
    others = [atp.estimate(Intervention(attn, "patch", "all", ref, head=h)) for h in range(case["heads"]) if h != head]
    np.testing.assert_allclose(others, 0.0, atol=1e-6)


@pytest.fixture(scope="module")
def regression(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny llama whose last head of layer 1 was scaled up, analysed against the clean model as REF."""
    from forensics.config import Config
    from forensics.faults.evaluate import PROMPTS
    from forensics.rca.pipeline import RCAPipeline

    root = tmp_path_factory.mktemp("head-regression")
    clean = resolve_model(str(tiny_dirs["llama"]), device="cpu")
    head = arch_for(clean.model).head_slices(clean.model)[0] - 1
    fault = Fault(1, "head", 10.0, head=head, kind="scale")
    faulty = _saved(plant_fault(clean.model, fault), clean.tokenizer, root / "faulty")

    def first(loaded: LoadedModel, prompt: str) -> int:
        return int(_logits(loaded.model, loaded.tokenizer(prompt, return_tensors="pt").input_ids).argmax())

    prompt = next(p for p in PROMPTS if first(faulty, p) != first(clean, p))
    spec = FailureSpec("expected", "", (first(clean, prompt),))
    incident = record_greedy(faulty, prompt, root / "inc", spec, kind="incident", max_new_tokens=2).bundle
    config = Config(cache_dir=str(root / "cache"))
    result = RCAPipeline(config).analyze_incident(incident, model=faulty, reference_model=clean)
    return fault, result


def test_a_regression_in_one_heads_projection_is_named_as_that_head(regression: Any) -> None:
    fault, result = regression
    first = result.components[0]
    assert (first["component"]["layer"], first["component"]["site"], first["component"]["head"]) == (
        fault.layer,
        "head",
        fault.head,
    )
    assert first["intervention"]["kind"] == "patch" and first["intervention"]["source"] == result.reference["bundle_id"]
    assert first["fixed"] and first["recovery"] == pytest.approx(1.0, abs=1e-3)  # the reference's run, restored
    fix = result.fix_set
    assert fix is not None and fix.validated
    assert any((iv.module, iv.head) == ("model.layers.1.self_attn", fault.head) for iv in fix.interventions)
    assert result.summary.startswith(f"The versions diverge at L1.H{fault.head}:")
    rows = [
        (r["component"]["label"], r["where"], r["intervention"]["kind"], round(r["metric"], 4))
        for r in result.components
    ]
    assert len(rows) == len(set(rows))  # the same change from two interchangeable sources is one row
