"""CCA search on a tiny model: strategies, budget, pruning to a minimal set, validation."""

from __future__ import annotations

from typing import Any

import pytest

from forensics.cca.candidates import build_candidates
from forensics.cca.search import find_fix_set, prune
from forensics.cca.strategies import Scorer
from forensics.config import CCAConfig
from forensics.models import LoadedModel
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer

PROMPT = "The capital of Australia is"


@pytest.fixture(scope="module")
def case(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cca")
    incident = record_greedy(tiny_llama, PROMPT, root / "incident", kind="incident", max_new_tokens=3).bundle
    benign = [
        record_greedy(tiny_llama, p, root / f"b{i}", "as-generated", kind="benign", max_new_tokens=2).bundle
        for i, p in enumerate(["The capital of France is", "One plus one is", "The answer is"])
    ]
    rp = Replayer(incident, loaded=tiny_llama, population=benign)
    return {"incident": incident, "benign": benign, "rp": rp}


def _run(case: dict[str, Any], **cfg: Any) -> Any:
    rp: Replayer = case["rp"]
    m_inc = rp.run(()).metric
    config = CCAConfig(intervention_types=("zero", "mean", "scale"), **cfg)
    return find_fix_set(rp.evaluate, case["incident"].modules, config, m_incident=m_inc, m_source=None)


def test_candidates_are_modules_x_types_x_positions() -> None:
    cands = build_candidates(
        ["a.0", "a.1"], CCAConfig(intervention_types=("zero", "patch")), ["s1", "s2"], prior={"a.1": 5.0}
    )
    # zero at last/all, patch from each source at the last position only: a patch of every position
    # from another prompt replaces the input and is never a candidate (input-level evidence instead)
    assert len(cands) == 2 * (2 + 2)
    assert cands[0].module == "a.1"  # CF prior orders the search
    assert {c.source for c in cands if c.kind == "patch"} == {"s1", "s2"}
    assert not [c for c in cands if c.kind == "patch" and c.positions == "all"]


@pytest.mark.parametrize("strategy", ["greedy", "beam", "random"])
def test_each_strategy_finds_a_validated_minimal_fix(case: dict[str, Any], strategy: str) -> None:
    result = _run(case, search_strategy=strategy, max_fix_set_size=3, seed=1)
    fix = result.fix_set
    assert fix is not None and fix.validated and fix.fixed
    rp: Replayer = case["rp"]
    assert rp.run(fix.interventions).fixed  # reproduces on a fresh replay
    for drop in fix.interventions:  # minimal: every member is necessary
        rest = tuple(iv for iv in fix.interventions if iv != drop)
        assert not rest or not rp.run(rest).fixed
    assert result.evaluated >= len(result.singles) > 0


def test_budget_is_respected(case: dict[str, Any]) -> None:
    result = _run(case, max_replays=7, batch_size=4)
    assert result.evaluated <= 7 + 1  # + the one validation replay is not a search candidate
    assert result.budget_exhausted


def test_one_forward_pass_per_batch(case: dict[str, Any]) -> None:
    rp: Replayer = case["rp"]
    before = rp.forward_passes
    scorer = Scorer(rp.evaluate, m_incident=-1.0, m_source=1.0, budget=100, batch_size=8)
    sets = [(c,) for c in build_candidates(case["incident"].modules, CCAConfig(intervention_types=("zero",)), [], {})]
    scorer.score(sets)
    # one forward pass per scorer batch: sets of different first layers share a chunk (it resumes at
    # the earliest of them) instead of splitting into one small pass per layer
    assert len(sets) == 12 and rp.forward_passes - before == 2


def test_prune_removes_unnecessary_members(case: dict[str, Any]) -> None:
    rp: Replayer = case["rp"]
    fix = _run(case).fix_set
    assert fix is not None
    m_inc = rp.run(()).metric
    scorer = Scorer(rp.evaluate, m_incident=m_inc, m_source=-m_inc, budget=1000, batch_size=32)
    noop = Intervention("model.layers.0.self_attn", "scale", "last", factor=1.0)  # changes nothing
    padded = scorer.score([(noop, *fix.interventions)])[0]
    assert padded.fixed
    assert prune(scorer, padded).interventions == fix.interventions


def test_side_effects_survive_a_fix_that_reaches_no_benign_position(case: dict[str, Any]) -> None:
    """A fix at the incident's first positions has no counterpart on a shorter benign prompt (explicit
    positions align from the end): it is not checked there — counted as skipped — and a benign bundle
    on which no fix applies at all must not end the check (it once died in ``position_groups``)."""
    from forensics.cca.fixset import FixSet
    from forensics.cca.judge import check_side_effects

    rp: Replayer = case["rp"]
    benign = [Replayer(b, loaded=rp.loaded) for b in case["benign"]]
    shorter = [b for b in benign if b.length < rp.length]
    assert shorter, "the lab needs a benign prompt shorter than the incident"
    early = FixSet((Intervention("model.layers.0.mlp", "zero", (0, 1)),), True, None, 0.0, True, "")
    last = FixSet((Intervention("model.layers.0.mlp", "zero", "last"),), True, None, 0.0, True, "")
    for fixes in ([early], [early, last]):  # alone: nothing to replay on a shorter prompt; beside one that applies
        judged = check_side_effects(fixes, shorter, length=rp.length)
        side = judged[0].side_effects
        assert side is not None and side["checked"] == 0 and side["changed"] == 0
        assert side["skipped"] == len(shorter) and side["changed_bundles"] == []
    assert judged[1].side_effects is not None and judged[1].side_effects["checked"] == len(shorter)
    assert judged[1].side_effects["skipped"] == 0
    # on every benign prompt: checked where it reaches, skipped where it does not, never both
    [mixed] = check_side_effects([early], benign, length=rp.length)
    assert mixed.side_effects is not None
    assert mixed.side_effects["checked"] + mixed.side_effects["skipped"] == len(benign)
    assert mixed.side_effects["skipped"] >= len(shorter)


def test_a_set_the_replay_refuses_costs_only_itself(case: dict[str, Any], tiny_llama: LoadedModel) -> None:
    """'mean' at a position no population bundle reaches (they are shorter than the incident, aligned from
    the end) cannot be replayed: the scorer sets it aside with the replay's reason and scores the rest of
    its batch, instead of ending the search (and the analysis) with a ReplayError."""
    rp: Replayer = case["rp"]
    short = [b for b in case["benign"] if len(b.inputs["input_ids"]) + 1 < rp.length]
    assert short, "the lab needs a population shorter than the incident"
    shorter = Replayer(case["incident"], loaded=tiny_llama, population=short)
    unreachable = (Intervention("model.layers.0.mlp", "mean", (0,)),)
    fine = [
        (Intervention("model.layers.0.mlp", "zero", "last"),),
        (Intervention("model.layers.1.mlp", "mean", "last"),),
    ]
    scorer = Scorer(shorter.evaluate, m_incident=-1.0, m_source=None, budget=100, batch_size=8)
    scored = scorer.score([fine[0], unreachable, fine[1]])
    assert [s.interventions for s in scored] == fine
    assert list(scorer.refused) == [unreachable] and "no benign baseline reaches" in scorer.refused[unreachable]
    assert scorer.evaluated == 2
