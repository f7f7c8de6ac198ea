from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.errors import ConfigError, ReplayError, UnknownModuleError
from forensics.models import LoadedModel, resolve_model
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer, ReplayOptions

PROMPT = "The capital of Australia is"


@pytest.fixture(scope="module")
def llama_case(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("llama-case")
    return {
        "incident": record_greedy(tiny_llama, PROMPT, root / "incident", kind="incident", max_new_tokens=4).bundle,
        "benign": [
            record_greedy(tiny_llama, p, root / f"benign{i}", "as-generated", kind="benign", max_new_tokens=3).bundle
            for i, p in enumerate(["The capital of France is", "Ankara is the capital of Turkey."])
        ],
    }


@pytest.fixture
def rp(llama_case: dict[str, Any], tiny_llama: LoadedModel) -> Replayer:
    return Replayer(llama_case["incident"], loaded=tiny_llama, population=llama_case["benign"])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2", "mistral", "phi"])
def test_fidelity_within_1e4_for_every_family(tiny_dirs: dict[str, Path], family: str, tmp_path: Path) -> None:
    loaded = resolve_model(str(tiny_dirs[family]), device="cpu")
    bundle = record_greedy(loaded, PROMPT, tmp_path / "b", kind="incident", max_new_tokens=3).bundle
    fid = Replayer(bundle).fidelity()  # loads the model through the registry from the bundle's reference
    assert fid.faithful, fid.to_dict()
    assert fid.max_logit_diff <= 1e-4 and fid.max_activation_diff <= 1e-4
    assert set(fid.module_diffs) == set(bundle.modules)


def test_replay_reproduces_the_failure(rp: Replayer) -> None:
    out = rp.run(())
    assert out.argmax_id == rp.observed_id and not out.fixed and out.metric < 0
    assert rp.target_id is not None and rp.step == 0


def test_zeroing_the_last_residual_makes_all_logits_equal(rp: Replayer) -> None:
    """Golden from the model itself: RMSNorm(0) = 0, so the LM head sees zeros -> every logit is 0."""
    logits = rp.logits([(Intervention("model.layers.1", "zero", "last"),)])
    assert torch.count_nonzero(logits) == 0
    out = rp.run((Intervention("model.layers.1", "zero", "last"),))
    assert out.metric == 0.0 and out.hook_fires == (1,)


def test_scale_one_is_identity_and_scale_changes_metric(rp: Replayer) -> None:
    base = rp.run(())
    same = rp.run((Intervention("model.layers.0.mlp", "scale", "all", factor=1.0),))
    assert abs(same.metric - base.metric) < 1e-6
    other = rp.run((Intervention("model.layers.0.mlp", "scale", "all", factor=5.0),))
    assert abs(other.metric - base.metric) > 1e-3


def test_batched_evaluate_equals_sequential_runs(rp: Replayer, llama_case: dict[str, Any]) -> None:
    src = llama_case["benign"][1].id
    sets = [
        (),
        (Intervention("model.layers.0", "zero", "last"),),
        (Intervention("model.layers.1.self_attn", "mean", "all"),),
        (Intervention("model.layers.0.mlp", "patch", "all", source=src),),
        (
            Intervention("model.layers.1", "patch", "last", source=src),
            Intervention("model.layers.0.mlp", "scale", (0, -1), factor=0.5),
        ),
        (Intervention("model.layers.0", "zero", "all"), Intervention("model.layers.0", "scale", "last", factor=2.0)),
    ]
    before = rp.forward_passes
    batched = rp.evaluate(sets)
    assert rp.forward_passes == before + 1  # K sets, ONE forward pass
    for s, b in zip(sets, batched, strict=True):
        single = rp.run(s)
        assert abs(single.metric - b.metric) <= 1e-4 and single.argmax_id == b.argmax_id
        assert all(f == 1 for f in b.hook_fires)
    assert len({round(b.metric, 4) for b in batched}) >= 4  # the interventions really differ


def test_patch_from_counterfactual_aligned_from_the_end(rp: Replayer, llama_case: dict[str, Any]) -> None:
    """Patching the last residual from a baseline gives that baseline's own next-token logits."""
    benign = llama_case["benign"][0]
    out = rp.logits([(Intervention("model.layers.1", "patch", "last", source=benign.id),)])[0]
    top = benign.outputs["top_k"][0]
    assert torch.allclose(out[torch.tensor(top["ids"])], torch.tensor(top["logits"]), atol=1e-4)


def test_intervention_errors_are_clear(rp: Replayer) -> None:
    with pytest.raises(UnknownModuleError, match="not in"):
        rp.run((Intervention("model.layers.9", "zero"),))
    with pytest.raises(ReplayError, match="not among the baselines"):
        rp.run((Intervention("model.layers.0", "patch", source="nope"),))
    with pytest.raises(ReplayError, match="outside"):
        rp.run((Intervention("model.layers.0", "zero", (99,)),))


def test_an_intervention_that_never_fires_is_an_error(tiny_dirs: dict[str, Path], llama_case: dict[str, Any]) -> None:
    """A module that exists but does not run in the forward pass: its hook never fires."""
    loaded = resolve_model(str(tiny_dirs["llama"]), device="cpu")
    loaded.model.model.add_module("unused", torch.nn.Identity())
    rp = Replayer(llama_case["incident"], loaded=loaded)
    with pytest.raises(ReplayError, match="never fired"):
        rp.run((Intervention("model.unused", "zero"),))


def test_mean_needs_baselines(llama_case: dict[str, Any], tiny_llama: LoadedModel) -> None:
    bare = Replayer(llama_case["incident"], loaded=tiny_llama)
    with pytest.raises(ReplayError, match="baseline"):
        bare.run((Intervention("model.layers.0", "mean"),))


def test_population_mean_at_any_length_is_the_mean_of_the_baselines_reaching_each_position(
    llama_case: dict[str, Any],
) -> None:
    """Baselines of different lengths, aligned from the end; every length (shorter than, equal to and
    longer than the longest baseline) is a tail of one sum, and positions no baseline reaches are NaN."""
    import numpy as np

    from forensics.replay.sources import SourceBank, prefix_length

    bank = SourceBank(llama_case["benign"])
    module = "model.layers.0.mlp"
    rows = [np.asarray(b.activation(module), np.float64)[: prefix_length(b, 0)] for b in llama_case["benign"]]
    longest = max(r.shape[0] for r in rows)
    assert len({r.shape[0] for r in rows}) == 2  # the two baselines differ in length
    for length in (2, min(r.shape[0] for r in rows), longest, longest + 3):
        expected = np.full((length, rows[0].shape[1]), np.nan)
        for t in range(length):
            back = length - t  # 1 = the last position
            reaching = [r[r.shape[0] - back] for r in rows if r.shape[0] >= back]
            if reaching:
                expected[t] = np.mean(reaching, axis=0)
        np.testing.assert_allclose(bank.mean(module, length=length), expected, rtol=1e-5, atol=1e-6)


def test_model_mismatch_is_refused_unless_allowed(llama_case: dict[str, Any], tiny_dirs: dict[str, Path]) -> None:
    other = resolve_model(str(tiny_dirs["mistral"]), device="cpu")
    other.model.model.layers[0].mlp.down_proj.weight.data.mul_(2.0)
    other = other._replace(info=other.info.__class__(**{**other.info.to_dict(), "sha256": "f" * 64}))
    with pytest.raises(ReplayError, match="allow_model_mismatch"):
        Replayer(llama_case["incident"], loaded=other)
    assert (
        Replayer(llama_case["incident"], loaded=other, options=ReplayOptions(allow_model_mismatch=True))
        .run(())
        .argmax_id
        >= 0
    )


def test_intervention_json_round_trip_and_validation() -> None:
    ivs = Intervention.parse_sets('[{"module": "a.b", "kind": "patch", "positions": [0, -1], "source": "x"}]')
    assert ivs[0].positions == (0, -1)
    assert Intervention.from_dict(ivs[0].to_dict()) == ivs[0]
    for bad in [
        '{"module": "a", "kind": "explode"}',
        '[{"kind": "zero"}]',
        "not json",
        '{"module": "a", "kind": "zero", "positions": "first"}',
        '{"module": "a", "kind": "scale"}',
        '{"module": "a", "kind": "zero", "wat": 1}',
    ]:
        with pytest.raises(ConfigError):
            Intervention.parse_sets(bad)


def test_no_sets_is_no_pass(rp: Replayer) -> None:
    """Evaluating nothing returns nothing, without a forward pass (a caller whose every set was filtered
    out, such as a side-effect check on a short benign prompt, must not have to special-case it)."""
    from forensics.replay.schedule import chunk_indices

    assert chunk_indices([], 4, layers=2, pass_cost=float("inf")) == []
    before = rp.forward_passes
    assert rp.evaluate([]) == [] and tuple(rp.logits([]).shape) == (0, rp.model.config.vocab_size)
    assert rp.forward_passes == before
