"""The embedded real model: the Australia incident is a real failure, replayed faithfully."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer, ReplayOptions

pytestmark = pytest.mark.slow


def test_australia_incident_records_replays_and_responds(smol: LoadedModel, tmp_path: Path) -> None:
    spec = FailureSpec.expected(" Canberra", smol.tokenizer)
    run = record_greedy(smol, "The capital of Australia is", tmp_path / "australia", spec, max_new_tokens=4, seed=0)
    bundle, text, failed = run.bundle, run.text, run.failed
    assert failed and text.startswith(" Sydney")
    assert bundle.kind == "incident" and bundle.outputs["decision_step"] == 0
    assert len(bundle.modules) == 90 and bundle.model["sha256"] == smol.info.sha256

    rp = Replayer(bundle, loaded=smol)
    fid = rp.fidelity()
    assert fid.faithful and fid.max_logit_diff <= 1e-4 and fid.max_activation_diff <= 1e-4
    base = rp.run(())
    assert smol.tokenizer.decode([base.argmax_id]) == " Sydney" and base.metric < 0
    hit = rp.run((Intervention("model.layers.10", "zero", "last"),))
    assert hit.hook_fires == (1,) and abs(hit.metric - base.metric) > 0.05


def test_prefix_reuse_on_smollm_equals_full_replay(smol: LoadedModel, tmp_path: Path) -> None:
    spec = FailureSpec.expected(" Canberra", smol.tokenizer)
    bundle = record_greedy(smol, "The capital of Australia is", tmp_path / "a", spec, max_new_tokens=2).bundle
    fast = Replayer(
        bundle, loaded=smol, options=ReplayOptions(suffix_reuse=False, batch_size=2)
    )  # prefix reuse alone; chunks of 2
    full = Replayer(bundle, loaded=smol, options=ReplayOptions(prefix_reuse=False, suffix_reuse=False, batch_size=2))
    fast.fidelity()
    sets = [
        (),
        *[(Intervention(f"model.layers.{i}", "zero", "last"),) for i in (0, 10, 20, 29)],
        (Intervention("model.layers.25.mlp", "scale", "all", factor=0.0),),
    ]
    for s in sets:  # same batch shape: prefix reuse is exact to 1e-4
        assert torch.allclose(fast.logits([s]), full.logits([s]), atol=1e-4)
    full.layers_run = fast.layers_run = 0
    # batched: rows are grouped differently, and fp32 BLAS results depend on the batch shape (~3e-5 relative)
    assert torch.allclose(fast.logits(sets), full.logits(sets), atol=1e-3, rtol=1e-4)
    assert fast.layers_run < full.layers_run / 2


@pytest.fixture(scope="module")
def arithmetic(smol: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real multi-token incident decided at step 2: "7 + 8 =" -> " 11", expected " 15" (" ", "1", then "1"
    where "5" was due): the replay runs over the prompt plus two generated tokens."""
    out = tmp_path_factory.mktemp("arith") / "add_7_8"
    spec = FailureSpec.expected(" 15", smol.tokenizer)
    run = record_greedy(smol, "7 + 8 =", out, spec, max_new_tokens=4)
    assert run.failed and run.text.startswith(" 11")
    return out


def test_an_incident_decided_after_the_first_token_replays_faithfully(smol: LoadedModel, arithmetic: Path) -> None:
    from forensics.bundle import load_bundle

    bundle = load_bundle(arithmetic)
    assert bundle.outputs["decision_step"] > 0
    fid = Replayer(bundle, loaded=smol).fidelity()
    assert fid.faithful, fid.to_dict()["advice"]
    worst = max(fid.modules.values(), key=lambda m: m.abs or 0.0)
    assert worst.scale > 100  # SmolLM2's massive activations: an absolute 1e-4 would be the wrong yardstick


@pytest.mark.parametrize("threads", [1, 2])
def test_the_same_bundle_replays_faithfully_with_other_thread_counts(
    smol: LoadedModel, arithmetic: Path, threads: int
) -> None:
    from forensics.bundle import load_bundle

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fid = Replayer(load_bundle(arithmetic), loaded=smol).fidelity()
    finally:
        torch.set_num_threads(before)
    assert fid.faithful, fid.to_dict()["advice"]


def test_other_weights_are_still_caught_on_the_real_model(smol: LoadedModel, arithmetic: Path) -> None:
    from forensics.bundle import load_bundle

    down = smol.model.model.layers[5].mlp.down_proj.weight
    saved = down.data.clone()
    down.data.mul_(1.05)  # a 5 % change of one layer: a different model, not rounding
    try:
        fid = Replayer(
            load_bundle(arithmetic), loaded=smol, options=ReplayOptions(allow_model_mismatch=True)
        ).fidelity()
    finally:
        down.data.copy_(saved)
    assert not fid.faithful and fid.first_divergent == "model.layers.5.mlp"
    assert "weights" in (fid.advice() or "")


def test_zeroing_the_first_mlp_against_lagos_is_a_suppression_not_a_fix(smol: LoadedModel, tmp_path: Path) -> None:
    """The issue's example: "The capital of Nigeria is" --forbidden " Lagos" was "fixed" by zeroing
    model.layers.0.mlp at the last position, which makes the model say "." — a suppression."""
    from forensics.cca.fixset import FixSet
    from forensics.cca.judge import judge_answer

    spec = FailureSpec.forbidden(" Lagos")
    bundle = record_greedy(smol, "The capital of Nigeria is", tmp_path / "nigeria", spec, max_new_tokens=4).bundle
    rp = Replayer(bundle, loaded=smol)
    iv = Intervention("model.layers.0.mlp", "zero", "last")
    out = rp.run((iv,))
    assert out.fixed  # by the decision token alone it looks fixed ...
    judged = judge_answer(rp, FixSet((iv,), True, None, out.metric, True, out.argmax_token))
    assert judged.verdict == "suppression", judged.regenerated  # ... but the new answer says nothing
    assert judged.regenerated is not None and judged.regenerated["contains_forbidden"] is False
