"""Failure families: position-free fix sets scored on every member, generalisation measured only held out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forensics.cca.family import FAMILY_POSITIONS, FamilySearch, family_candidates
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.rca import AnalysisRequest, RCAPipeline
from forensics.rca.family import family_confidence
from forensics.record import record_greedy
from forensics.replay import Intervention

PHRASINGS = [
    "The capital of Australia is",
    "Australia's capital is",
    "The capital city of Australia is",
    "Fact: the capital of Australia is",
]
BENIGN = ["The capital of France is", "One plus one is", "The answer is"]


def _search(fixed: list[list[bool]], sets: list[tuple[Intervention, ...]]) -> FamilySearch:
    matrix = np.array(fixed, bool)
    return FamilySearch(sets, matrix, matrix.astype(float) * 2 - 1, np.full(matrix.shape[1], -1.0))


def test_a_set_fitted_on_one_member_is_never_held_out_evidence() -> None:
    a = (Intervention("model.layers.0.mlp", "zero", "all"),)
    b = (Intervention("model.layers.1.mlp", "zero", "all"),)
    search = _search([[True, True, True, False], [False, False, False, True]], [a, b])
    assert search.ranked() == [0, 1]
    assert search.held_out(0) == 3  # found on the others each time, and fixes the one left out, but for #3
    assert search.held_out(1) == 0  # it fixes member 3 only: without 3 it fixes nobody, so it is never found
    assert search.procedure_held_out() == 3


def test_a_set_that_changes_population_answers_ranks_below_one_that_does_not() -> None:
    a = (Intervention("model.layers.0.mlp", "zero", "all"),)
    b = (Intervention("model.layers.1.self_attn", "zero", "all", head=0),)
    search = _search([[True, True], [True, True]], [a, b])
    search.broken = {0: 2, 1: 0}
    assert search.ranked() == [1, 0]


def test_family_confidence_uses_the_held_out_share() -> None:
    fix = {"fixed_members": 4, "size": 1, "held_out": 2, "side_effects": {"checked": 4, "changed": 0}}
    assert family_confidence(fix, 4) == pytest.approx(0.5 * 0.5 + 0.3 + 0.2)
    assert family_confidence({**fix, "held_out": 4}, 4) == 1.0
    one = {"fixed_members": 1, "size": 1, "held_out": None, "side_effects": {"checked": 4, "changed": 0}}
    assert family_confidence(one, 1) == 0.5  # a family of one has no held-out evidence: at most half


def test_candidates_are_position_free(tiny_llama: LoadedModel) -> None:
    cands = family_candidates(tiny_llama.model, population=True)
    assert cands and {iv.positions for iv in cands} == set(FAMILY_POSITIONS)
    assert {iv.kind for iv in cands} == {"zero", "mean"} and any(iv.head is not None for iv in cands)
    assert not any(iv.kind == "mean" and iv.head is not None for iv in cands)


@pytest.fixture(scope="module")
def family(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _record_family(tiny_llama, tmp_path_factory.mktemp("family"))


def _record_family(tiny_llama: LoadedModel, root: Path) -> dict[str, Any]:
    """The four phrasings, each failing toward the answer the first population prompt gets."""
    benign = [
        record_greedy(tiny_llama, p, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2).bundle
        for i, p in enumerate(BENIGN)
    ]
    answer = benign[0].outputs["generated_ids"][0]
    members = []
    for i, prompt in enumerate(PHRASINGS):
        run = record_greedy(
            tiny_llama,
            prompt,
            root / "members" / f"m{i}",
            FailureSpec("expected", "", (answer,)),
            kind="incident",
            max_new_tokens=2,
        )
        members.append(run.bundle)
    return {"root": root, "population": str(root / "benign"), "members": members}


def test_a_family_report_says_per_member_and_held_out(
    family: dict[str, Any], tiny_llama: LoadedModel, tmp_path: Path
) -> None:
    _check_family_report(family, tiny_llama, tmp_path)


def test_a_family_of_another_architecture(tiny_gpt2: LoadedModel, tmp_path: Path) -> None:
    """GPT-2: fused attention projection, Conv1D weights, absolute positions; the same report contract."""
    report = _check_family_report(_record_family(tiny_gpt2, tmp_path / "gpt2"), tiny_gpt2, tmp_path)
    assert all(r["module"].startswith("transformer.h.") for r in report["components"])
    assert any(iv.head is not None for iv in family_candidates(tiny_gpt2.model, population=True))


def _check_family_report(family: dict[str, Any], tiny_llama: LoadedModel, tmp_path: Path) -> dict[str, Any]:
    request = AnalysisRequest.of(
        [b.path for b in family["members"]],
        population=family["population"],
        model=tiny_llama,
        output=tmp_path / "f.json",
    )
    report = RCAPipeline().run_family(request).to_dict()
    assert report["schema"] == "model-forensics/family@1"
    assert json.loads((tmp_path / "f.json").read_text())["schema"] == "model-forensics/family@1"
    analysed = [m for m in report["members"] if m["analysed"]]
    assert len(report["members"]) == len(PHRASINGS)
    for fix in report["fix_sets"]:
        assert all(iv["positions"] in FAMILY_POSITIONS for iv in fix["interventions"])
        assert fix["fixed_members"] == sum(row["fixed"] for row in fix["per_member"])
        assert fix["held_out"] is None or fix["held_out"] <= fix["fixed_members"]
        assert fix["side_effects"]["checked"] + fix["side_effects"]["skipped"] == len(BENIGN)
    if len(analysed) > 1:
        assert report["held_out"]["of"] == len(analysed) and 0 <= report["held_out"]["fixed"] <= len(analysed)
    assert report["components"] and all(
        set(r["gains"]) == {m["bundle_id"] for m in analysed} for r in report["components"]
    )
    assert report["summary"].startswith(f"family of {len(PHRASINGS)} incidents")
    return report


def test_cli_analyzes_several_bundles_as_a_family(
    family: dict[str, Any], tiny_llama: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forensics.cli import main

    out = tmp_path / "family.json"
    html = tmp_path / "family.html"
    args = [
        "analyze",
        *(b.path for b in family["members"][:3]),
        "--baseline",
        family["population"],
        "--model",
        str(tiny_llama.info.path),
        "--output",
        str(out),
        "--html",
        str(html),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "family of 3 incidents" in printed and f"report: {out}" in printed
    page = html.read_text()
    assert "Components across the family" in page and "https://" not in page
    assert (
        main(
            [
                "analyze",
                "--family",
                str(family["root"] / "members"),
                "--baseline",
                family["population"],
                "--model",
                str(tiny_llama.info.path),
                "--output",
                str(tmp_path / "f2.json"),
            ]
        )
        == 0
    )
    assert len(json.loads((tmp_path / "f2.json").read_text())["members"]) == len(PHRASINGS)


def test_export_fix_takes_a_family_report_fitted_on_every_member(
    family: dict[str, Any], tiny_llama: LoadedModel, tmp_path: Path
) -> None:
    from forensics.cli import main

    report_path = tmp_path / "family.json"
    model = str(tiny_llama.info.path)
    members = [b.path for b in family["members"]]
    assert (
        main(["analyze", *members, "--baseline", family["population"], "--model", model, "--output", str(report_path)])
        == 0
    )
    report = json.loads(report_path.read_text())
    out = tmp_path / "fixed"
    code = main(
        ["export-fix", str(report_path), "--out", str(out), "--model", model, "--max-broken", "1", "--device", "cpu"]
    )
    assert code == 0  # no fix set, or one that does not transfer: auto ships a rank-one edit instead
    fix = json.loads((out / "fix.json").read_text())
    analysed = sum(m["analysed"] for m in report["members"])
    best = report["fix_sets"][0] if report["fix_sets"] else None
    if fix["method"] == "rank-one" and analysed >= 2:
        tried = fix["edit"]["details"]["layer_choice"]["tried"]
        assert tried and all(row["held_out"][1] == analysed for row in tried)  # leave-one-out over the members
        assert (
            best is None or best["held_out"] < 0.8 * best["held_out_of"] or "weight form" in fix["provenance"]["note"]
        )
    else:
        assert fix["method"] == "weights" and best is not None and best["held_out"] >= 0.8 * best["held_out_of"]
    assert fix["evaluation"]["efficacy"]["total"] == analysed  # fitted on every member, judged on them as efficacy
    assert fix["evaluation"]["generalisation"]["total"] == 0  # no held-out prompt was given: none is claimed


def _replayers(family: dict[str, Any], tiny_llama: LoadedModel) -> tuple[list[Any], list[Any]]:
    from forensics.bundle import load_bundle
    from forensics.replay import Replayer

    population = [load_bundle(p) for p in sorted(Path(family["population"]).iterdir())]
    members = [Replayer(b, loaded=tiny_llama, population=population) for b in family["members"]]
    benign = [Replayer(b, loaded=tiny_llama, population=population) for b in population]
    return members, benign


def test_a_refused_batch_is_halved_and_the_others_keep_their_outcomes(
    family: dict[str, Any], tiny_llama: LoadedModel
) -> None:
    """``_outcomes`` (the family search) and ``Scorer`` (one incident) share one retry: halving."""
    from forensics.cca.family import _outcomes
    from forensics.cca.strategies import Scorer
    from forensics.errors import ReplayError

    members, _ = _replayers(family, tiny_llama)
    rp = max(members, key=lambda r: r.length)
    cands = family_candidates(tiny_llama.model, population=True, heads=False)
    far = (Intervention(cands[0].module, "mean", (0,)),)  # no population prompt is as long: refused
    with pytest.raises(ReplayError):
        rp.run(far)
    sets = [(iv,) for iv in cands[:5]] + [far] + [(iv,) for iv in cands[5:9]]
    refused: dict[Any, str] = {}
    got = _outcomes(rp, sets, refused)
    assert [i for i, _ in got] == [i for i in range(len(sets)) if sets[i] != far]
    assert list(refused) == [far] and refused[far].startswith(f"{rp.bundle.id}: ")
    for i, outcome in got:  # the same outcomes as one set at a time
        alone = rp.run(sets[i])
        assert outcome.fixed == alone.fixed and outcome.metric == pytest.approx(alone.metric, abs=1e-4)
    scorer = Scorer(rp.evaluate, m_incident=-1.0, m_source=None, budget=100, batch_size=32)
    scored = scorer.score(sets)
    assert [s.interventions for s in scored] == [sets[i] for i, _ in got] and list(scorer.refused) == [far]


def test_side_effects_read_from_the_population_check_equal_a_fresh_replay(
    family: dict[str, Any], tiny_llama: LoadedModel
) -> None:
    """The report's side effects come from ``check_population``'s replays; replaying them again agrees."""
    from forensics.cca.family import search_family
    from forensics.cca.fixset import FixSet
    from forensics.cca.judge import check_side_effects
    from forensics.rca.family import _side_effects

    members, benign = _replayers(family, tiny_llama)
    m_incident = [rp.run(()).metric for rp in members]
    cands = family_candidates(tiny_llama.model, population=True)
    search = search_family(members, cands, m_incident, max_size=2, population=benign)
    assert search.answers and set(search.answers) == set(search.broken)
    for s in search.answers:
        stub = FixSet(search.sets[s], True, None, 0.0, False, "")
        assert _side_effects(search, s, benign) == check_side_effects([stub], benign)[0].side_effects
        assert search.broken[s] == _side_effects(search, s, benign)["changed"]  # type: ignore[index]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_members_regenerated_in_one_padded_pass_equal_one_at_a_time(
    arch: str, family: dict[str, Any], tiny_llama: LoadedModel, tiny_gpt2: LoadedModel, tmp_path: Path
) -> None:
    """Right-padded rows of different lengths and decision steps: each member's tokens as its own replay."""
    from forensics.cca.regenerate import regenerate_members

    loaded = tiny_llama if arch == "llama" else tiny_gpt2
    fam = family if arch == "llama" else _record_family(tiny_gpt2, tmp_path)
    members, _ = _replayers(fam, loaded)
    assert len({rp.length for rp in members}) > 1  # the rows really are padded
    cands = family_candidates(loaded.model, population=True)
    head = next(iv for iv in cands if iv.head is not None and iv.positions == "all")
    mean = next(iv for iv in cands if iv.kind == "mean" and iv.positions == "last")
    for ivs in [(), (head,), (mean,), (head, mean)]:
        assert regenerate_members(members, ivs, 4) == [rp.generate(ivs, 4) for rp in members]
