"""Diagnosis you can trust, on a tiny model: causes not input substitutions, honest recovery, side
effects, regenerated answers, relative fidelity, and a report that says what it did not do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forensics.cca.fixset import is_input_substitution
from forensics.cca.judge import is_empty_answer, judge_answer
from forensics.failure import FailureSpec
from forensics.models import LoadedModel, resolve_model
from forensics.rca import RCAPipeline
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer, ReplayOptions

BENIGN = ["The capital of France is", "One plus one is", "The answer is", "Berlin is the capital of"]
PROMPT = "The capital of Australia is"


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An incident whose expected answer one benign run really gives (so recovery has a baseline), and
    one whose expected answer no run gives."""
    root = tmp_path_factory.mktemp("diagnosis")
    benign = [
        record_greedy(tiny_llama, p, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2).bundle
        for i, p in enumerate(BENIGN)
    ]
    own = record_greedy(tiny_llama, PROMPT, root / "probe", "as-generated", max_new_tokens=1).bundle
    answer = next(
        b.outputs["generated_ids"][0]
        for b in benign
        if b.outputs["generated_ids"][0] != own.outputs["generated_ids"][0]
    )
    sourced = record_greedy(
        tiny_llama, PROMPT, root / "sourced", FailureSpec("expected", "", (answer,)), kind="incident", max_new_tokens=3
    ).bundle
    given = {b.outputs["generated_ids"][0] for b in benign} | {own.outputs["generated_ids"][0]}
    nobody = next(i for i in own.outputs["top_k"][0]["ids"] if i not in given)  # likely, but no run says it
    orphan = record_greedy(
        tiny_llama, PROMPT, root / "orphan", FailureSpec("expected", "", (nobody,)), kind="incident", max_new_tokens=3
    ).bundle
    return {"root": root, "benign_dir": root / "benign", "benign": benign, "sourced": sourced, "orphan": orphan}


def _analyze(lab: dict[str, Any], tiny: LoadedModel, name: str, **kw: Any) -> dict[str, Any]:
    return RCAPipeline().analyze_incident(lab[name], baseline=str(lab["benign_dir"]), model=tiny, **kw).to_dict()


def test_input_substitution_is_reported_apart_and_never_a_fix(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    report = _analyze(lab, tiny_llama, "sourced")
    assert report["schema"] == "model-forensics/rca@2"
    assert report["input_level"], "each counterfactual gets an input-level row"
    for row in report["input_level"]:
        assert row["interventions"][0]["positions"] == "all" and "replaced by bundle" in row["statement"]
    for fix in report["fix_sets"]:
        assert not any(is_input_substitution(Intervention.from_dict(iv)) for iv in fix["interventions"])
    assert all(
        not is_input_substitution(Intervention.from_dict(iv))
        for s in report["single_effects"]
        for iv in s["interventions"]
    )


def test_recovery_is_measured_against_a_run_that_gives_the_target(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    report = _analyze(lab, tiny_llama, "sourced")
    d = report["decision"]
    assert d["recovery_available"] is True and d["m_baseline"] > 0 > d["m_incident"]
    assert report["baselines"]["patch_sources"], "the benign run that answers the target is a patch source"
    rp = Replayer(lab["sourced"], loaded=tiny_llama, population=lab["benign"])
    for source in report["baselines"]["patch_sources"]:
        bundle = next(b for b in lab["benign"] if b.id == source)
        assert bundle.outputs["generated_ids"][0] == rp.target_id
    if report["fix_set"]:
        assert report["fix_set"]["recovery"] is not None


def test_recovery_is_unavailable_not_invented_when_no_run_gives_the_target(
    lab: dict[str, Any], tiny_llama: LoadedModel
) -> None:
    report = _analyze(lab, tiny_llama, "orphan")
    d = report["decision"]
    assert d["recovery_available"] is False and d["m_baseline"] is None
    assert "recovery unavailable" in d["recovery_note"] and any("recovery unavailable" in n for n in report["notes"])
    assert report["baselines"]["patch_sources"] == []  # sources that never give the target patch nothing
    assert not [iv for s in report["single_effects"] for iv in s["interventions"] if iv["kind"] == "patch"]
    for fix in report["fix_sets"]:
        assert fix["recovery"] is None
    if report["fix_set"]:
        assert report["confidence_terms"]["recovery"] is None
        assert "recovery unavailable" in report["confidence_explanation"]


def test_every_fix_is_checked_on_the_benign_bundles(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    report = _analyze(lab, tiny_llama, "sourced")
    assert report["fix_set"] is not None, report["notes"]
    for fix in report["fix_sets"]:
        side = fix["side_effects"]
        relative = all(not isinstance(iv["positions"], list) for iv in fix["interventions"])
        # explicit positions are aligned from the end; a benign prompt too short for them is not checked
        assert side["checked"] == len(BENIGN) if relative else 1 <= side["checked"] <= len(BENIGN)
        assert 0 <= side["changed"] <= side["checked"]
        assert len(side["changed_bundles"]) == side["changed"]
        assert fix["regenerated"]["text"] and fix["verdict"] in ("correction", "partial", "suppression")
    # ranked: a set that changes fewer benign answers never comes after one that changes more
    changed = [(f["verdict"] == "suppression", f["side_effects"]["changed"]) for f in report["fix_sets"]]
    assert changed == sorted(changed)
    assert report["decision"]["near_tie"]["evaluated_singles"] == len(report["single_effects"])
    assert report["commands"]["reproduce"].startswith("model-forensics analyze ")
    assert report["commands"]["validate"].startswith("model-forensics validate-fix ")


def test_side_effects_count_what_a_fix_really_changes(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    """Zeroing the last residual at the last position makes every logit 0 (RMSNorm(0) = 0): the argmax of
    every benign prompt becomes token 0, so the check must count each one whose answer was not token 0."""
    from forensics.cca.fixset import FixSet
    from forensics.cca.judge import check_side_effects

    wreck = FixSet((Intervention("model.layers.1", "zero", "last"),), True, None, 0.0, True, "x")
    benign = [Replayer(b, loaded=tiny_llama) for b in lab["benign"]]
    [checked] = check_side_effects([wreck], benign)
    expect = sum(b.outputs["generated_ids"][0] != 0 for b in lab["benign"])
    assert checked.side_effects == {
        "checked": len(BENIGN),
        "changed": expect,
        "changed_bundles": [b.id for b in lab["benign"] if b.outputs["generated_ids"][0] != 0],
        "skipped": 0,
    }


def test_analysis_without_a_population_says_what_it_rests_on(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    report = RCAPipeline().analyze_incident(lab["orphan"], model=tiny_llama).to_dict()
    assert any("analysis without a population" in n for n in report["notes"])
    assert any(row["what"].startswith("CF") for row in report["not_evaluated"])


def test_forbidden_fix_is_judged_on_the_regenerated_answer(
    lab: dict[str, Any], tiny_llama: LoadedModel, tmp_path: Path
) -> None:
    tok = tiny_llama.tokenizer
    first = lab["orphan"].outputs["generated_ids"][0]
    spec = FailureSpec.forbidden(tok.decode([first]))
    bundle = record_greedy(tiny_llama, PROMPT, tmp_path / "forbidden", spec, max_new_tokens=3).bundle
    rp = Replayer(bundle, loaded=tiny_llama)
    from forensics.cca.fixset import FixSet

    noop = Intervention("model.layers.0.mlp", "scale", "last", factor=1.0)  # changes nothing: the text stays
    judged = judge_answer(rp, FixSet((noop,), True, None, 0.0, True, "x"))
    assert judged.regenerated["contains_forbidden"] is True and not judged.validated and not judged.fixed
    assert judged.regenerated["text"].startswith(tok.decode([first]))


def test_regeneration_keeps_the_fix_at_the_decision_position_only(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    rp = Replayer(lab["orphan"], loaded=tiny_llama)
    assert rp.generate((), 3) == list(lab["orphan"].outputs["generated_ids"][:3])  # no fix: the recording
    iv = Intervention("model.layers.1", "zero", "last")
    new = rp.generate((iv,), 3)
    assert new[0] == 0  # zeroed final residual at the decision position: all logits 0, argmax token 0
    assert len(new) == 3 or new[-1] == tiny_llama.tokenizer.eos_token_id  # generation stops at an end token


@pytest.mark.parametrize(
    ("text", "token", "empty"),
    [(".", 5, True), ("  ", 5, True), (" Paris", 5, False), ("\n", 5, True), (" 1945", 5, False)],
)
def test_empty_answers_are_suppressions(text: str, token: int, empty: bool) -> None:
    from types import SimpleNamespace

    tok = SimpleNamespace(all_special_ids=[0])
    assert is_empty_answer(text, token, tok) is empty
    assert is_empty_answer(" Paris", 0, tok) is True  # a special token says nothing either


def test_fidelity_is_relative_to_each_modules_scale(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    rp = Replayer(lab["orphan"], loaded=tiny_llama)
    fid = rp.fidelity()
    assert fid.faithful and fid.advice() is None
    for name, m in fid.modules.items():
        recorded = np.asarray(lab["orphan"].activation(name))[: rp.length]  # the positions the replay covers
        assert m.scale == pytest.approx(float(np.abs(recorded).max()), rel=1e-6)
        assert m.tolerance == pytest.approx(fid.atol + fid.rtol * m.scale)
    data = fid.to_dict()
    assert set(data["modules"]) == set(lab["orphan"].modules) and data["rtol"] == ReplayOptions().fidelity_rtol
    strict = Replayer(
        lab["orphan"], loaded=tiny_llama, options=ReplayOptions(fidelity_tolerance=1e-12, fidelity_rtol=0.0)
    ).fidelity()
    assert strict.atol == 1e-12 and strict.rtol == 0.0  # the same replay judged by an absolute 1e-12


def test_a_genuinely_unfaithful_replay_is_caught_with_advice(lab: dict[str, Any], tiny_dirs: dict[str, Path]) -> None:
    other = resolve_model(str(tiny_dirs["llama"]), device="cpu")
    other.model.model.layers[0].mlp.down_proj.weight.data.mul_(1.3)
    fid = Replayer(lab["orphan"], loaded=other, options=ReplayOptions(allow_model_mismatch=True)).fidelity()
    assert not fid.faithful and fid.first_divergent == "model.layers.0.mlp"
    assert fid.modules["model.layers.0.mlp"].rel > 1e-2
    assert "weights" in (fid.advice() or "")


def test_side_effects_align_explicit_positions_from_the_end(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    from forensics.cca.fixset import FixSet
    from forensics.cca.judge import check_side_effects
    from forensics.population import load_population

    benign = [Replayer(b, loaded=tiny_llama) for b in load_population(lab["benign_dir"])]
    incident = Replayer(lab["sourced"], loaded=tiny_llama)
    short = min(rp.length for rp in benign)
    tail = tuple(range(incident.length - 2, incident.length))  # the incident's last two positions
    early = (incident.length - short - 1,) if incident.length > short else None
    fixes = [FixSet((Intervention("model.layers.0.mlp", "zero", tail),), True, None, 0.0, True, "")]
    if early is not None:
        fixes.append(FixSet((Intervention("model.layers.0.mlp", "zero", early),), True, None, 0.0, True, ""))
    judged = check_side_effects(fixes, benign, length=incident.length)
    assert judged[0].side_effects is not None and judged[0].side_effects["checked"] == len(benign)
    if early is not None:
        assert judged[1].side_effects is not None and judged[1].side_effects["checked"] < len(benign)
    # the same zero on a benign prompt's last two positions, by hand
    rp = benign[0]
    mine = rp.run((Intervention("model.layers.0.mlp", "zero", (rp.length - 2, rp.length - 1)),)).argmax_id
    plain = rp.run(()).argmax_id
    assert (rp.bundle.id in judged[0].side_effects["changed_bundles"]) == (mine != plain)
