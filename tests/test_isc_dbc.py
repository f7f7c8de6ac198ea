"""ISC and DBC on a tiny model: the interpolating intervention (alpha), every subset of a fix set in one
batched call with exact Shapley values and predictable interactions, the decision-boundary curves, and
both in the report (JSON schema, HTML)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.cca.dbc import POINTS, boundary, flip_point
from forensics.cca.isc import interactions, shapley, subsets
from forensics.config import Config, ToggleConfig
from forensics.errors import ConfigError
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.rca import RCAPipeline
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer
from forensics.replay.interventions import InterventionSet
from forensics.replay.plan import compile_plan
from forensics.replay.replayer import Outcome
from forensics.report.html import render_html

BENIGN = ["The capital of France is", "One plus one is", "The answer is", "Berlin is the capital of"]
PROMPT = "The capital of Australia is"
LAST = "model.layers.1"  # the last decoder layer's residual


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An incident whose expected answer a benign run gives (so there is a patch source and recovery)."""
    root = tmp_path_factory.mktemp("isc-dbc")
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
    incident = record_greedy(
        tiny_llama, PROMPT, root / "incident", FailureSpec("expected", "", (answer,)), kind="incident", max_new_tokens=3
    ).bundle
    return {"root": root, "benign_dir": root / "benign", "benign": benign, "incident": incident}


@pytest.fixture(scope="module")
def report(lab: dict[str, Any], tiny_llama: LoadedModel) -> dict[str, Any]:
    on = ToggleConfig(enabled=True)
    config = replace(Config(), modules=replace(Config().modules, isc=on, dbc=on))
    result = RCAPipeline(config).analyze_incident(
        lab["incident"], baseline=str(lab["benign_dir"]), model=tiny_llama, output=lab["root"] / "report.json"
    )
    return result.to_dict()


@pytest.fixture
def rp(lab: dict[str, Any], tiny_llama: LoadedModel) -> Replayer:
    return Replayer(lab["incident"], loaded=tiny_llama, population=lab["benign"], sources=lab["benign"])


class Counting:
    """An evaluator that counts its calls (ISC and DBC each make exactly one)."""

    def __init__(self, rp: Replayer) -> None:
        self.rp, self.calls, self.sets = rp, 0, 0

    def __call__(self, sets: Sequence[InterventionSet]) -> list[Outcome]:
        self.calls, self.sets = self.calls + 1, self.sets + len(sets)
        return self.rp.evaluate(sets)


def _members(lab: dict[str, Any]) -> list[Intervention]:
    source = lab["benign"][0].id
    return [
        Intervention("model.layers.0.mlp", "zero", "last"),
        Intervention("model.layers.0", "mean", "last"),
        Intervention("model.layers.1.self_attn", "patch", "last", source),
        Intervention("model.layers.0.mlp", "scale", "all", factor=3.0),
    ]


# -- alpha -----------------------------------------------------------------------------------------
def test_alpha_validates_and_round_trips() -> None:
    iv = Intervention(LAST, "patch", "last", "b0", alpha=0.25)
    assert Intervention.from_dict(json.loads(json.dumps(iv.to_dict()))) == iv and iv.to_dict()["alpha"] == 0.25
    assert "alpha" not in Intervention(LAST, "zero").to_dict()
    assert Intervention(LAST, "zero", alpha=1).alpha == 1.0
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match="alpha must be a number in"):
            Intervention(LAST, "zero", alpha=bad)  # type: ignore[arg-type]


def _plan(rp: Replayer, sets: Sequence[InterventionSet]) -> Any:
    return compile_plan(sets, length=rp.length, width=rp._width, bank=rp.bank, step=rp.step, device=rp.device)


def test_alpha_one_is_todays_plan_and_logits_bit_for_bit(rp: Replayer, lab: dict[str, Any]) -> None:
    members = _members(lab)
    for iv in members:
        today, one = _plan(rp, [(iv,)]), _plan(rp, [(replace(iv, alpha=1.0),)])
        for name, mp in today.modules.items():
            assert torch.equal(mp.scale, one.modules[name].scale) and torch.equal(mp.add, one.modules[name].add)
    sets = [(iv,) for iv in members] + [tuple(members)]
    assert torch.equal(rp.logits(sets), rp.logits([tuple(replace(iv, alpha=1.0) for iv in s) for s in sets]))


def test_alpha_zero_changes_nothing(rp: Replayer, lab: dict[str, Any]) -> None:
    members = _members(lab)
    zero = tuple(replace(iv, alpha=0.0) for iv in members)
    for mp in _plan(rp, [zero]).modules.values():  # the plan is the identity: out * 1 + 0
        assert torch.equal(mp.scale, torch.ones_like(mp.scale)) and torch.equal(mp.add, torch.zeros_like(mp.add))
    logits = rp.logits([zero, ()])
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)
    assert rp.run(zero).hook_fires and all(f > 0 for f in rp.run(zero).hook_fires)  # every hook still fired


def test_alpha_blends_replacements_and_interpolates_scale_factors(rp: Replayer) -> None:
    """zero at α scales by 1 − α; scale(f) at α scales by 1 + α(f − 1): both are scale(0.7) here."""
    module = "model.layers.0.mlp"
    sets = [
        (Intervention(module, "zero", "last", alpha=0.3),),
        (Intervention(module, "scale", "last", factor=0.0, alpha=0.3),),
        (Intervention(module, "scale", "last", factor=0.7),),
    ]
    logits = rp.logits(sets)
    torch.testing.assert_close(logits[0], logits[2], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[1], logits[2], rtol=0, atol=1e-5)


# -- ISC -------------------------------------------------------------------------------------------
def test_shapley_is_exact_on_a_game_with_a_known_answer() -> None:
    """v = 1 for any coalition holding both 0 and 1 (player 2 is a dummy): 1/2, 1/2, 0."""
    values = [1.0 if mask & 0b011 == 0b011 else 0.0 for mask in range(8)]
    assert shapley(values, 3) == pytest.approx([0.5, 0.5, 0.0])
    assert [len(s) for s in subsets(["a", "b"])] == [0, 1, 1, 2]  # type: ignore[list-item]


def test_isc_table_every_subset_in_one_call_and_shapley_efficiency(rp: Replayer, lab: dict[str, Any]) -> None:
    members = _members(lab)[:3]
    m_inc = rp.run(()).metric
    evaluate = Counting(rp)
    isc = interactions(evaluate, members, m_incident=m_inc, m_source=m_inc + 2.0)
    assert evaluate.calls == 1 and evaluate.sets == 8 and len(isc["subsets"]) == 2**3
    alone = rp.evaluate([tuple(iv for i, iv in enumerate(members) if mask >> i & 1) for mask in range(8)])
    for row, out in zip(isc["subsets"], alone, strict=True):
        assert row["metric"] == pytest.approx(out.metric, abs=1e-5)
        assert row["recovery"] == pytest.approx((out.metric - m_inc) / 2.0, abs=1e-5)
    v = [row["metric"] for row in isc["subsets"]]
    assert sum(s["metric"] for s in isc["shapley"]) == pytest.approx(v[-1] - v[0], abs=1e-6)
    assert sum(s["recovery"] for s in isc["shapley"]) == pytest.approx(isc["overall"]["whole_recovery"], abs=1e-6)
    assert [p["members"] for p in isc["pairs"]] == [[0, 1], [0, 2], [1, 2]]


def test_two_equivalent_members_are_redundant(rp: Replayer) -> None:
    """Zeroing the last residual at 'last' and at [-1] is one change twice: v(a) = v(b) = v(ab) = 0 (every
    logit 0), so the interaction is v(none) − v(a) < 0 and each member gets half the effect."""
    a, b = Intervention(LAST, "zero", "last"), Intervention(LAST, "zero", (-1,))
    isc = interactions(rp.evaluate, [a, b], m_incident=None, m_source=None)
    v = [row["metric"] for row in isc["subsets"]]
    assert v[1] == v[2] == v[3] == 0.0 and v[0] < 0
    assert isc["overall"]["interaction"] == pytest.approx(v[0] - v[1]) == pytest.approx(isc["pairs"][0]["interaction"])
    assert isc["overall"]["verdict"] == isc["pairs"][0]["verdict"] == "redundancy"
    assert [s["metric"] for s in isc["shapley"]] == pytest.approx([-v[0] / 2, -v[0] / 2])
    assert isc["recovery_available"] is False and all(row["recovery"] is None for row in isc["subsets"])


def test_two_negations_that_cancel_are_synergy(rp: Replayer) -> None:
    """Negating the last residual negates every logit (RMSNorm is odd, the head linear); twice is the
    identity: v(ab) = v(none), so the interaction is 2·(v(none) − v(a)), > 0 as negation hurts here."""
    a, b = (Intervention(LAST, "scale", pos, factor=-1.0) for pos in ("last", (-1,)))
    isc = interactions(rp.evaluate, [a, b], m_incident=None, m_source=None)
    v = [row["metric"] for row in isc["subsets"]]
    assert v[3] == pytest.approx(v[0], abs=1e-5) and v[1] == pytest.approx(v[2], abs=1e-5) and v[1] < v[0]
    assert isc["overall"]["interaction"] == pytest.approx(2 * (v[0] - v[1]), abs=1e-5)
    assert isc["overall"]["verdict"] == "synergy"


def test_positive_scalings_of_the_last_residual_add_up_to_nothing(rp: Replayer) -> None:
    """Scaling the last residual by a positive factor changes nothing (RMSNorm): every interaction is ~0."""
    a, b = Intervention(LAST, "scale", "last", factor=2.0), Intervention(LAST, "scale", "all", factor=0.5)
    isc = interactions(rp.evaluate, [a, b], m_incident=None, m_source=None)
    assert isc["overall"]["verdict"] == "additive" and abs(isc["overall"]["interaction"]) <= isc["tolerance"]


# -- DBC -------------------------------------------------------------------------------------------
def test_flip_point_interpolates_on_the_metric() -> None:
    grid = [0.0, 0.5, 1.0]
    assert flip_point(grid, [-2.0, -1.0, 3.0], [False, False, True]) == (pytest.approx(0.625), 2)
    assert flip_point(grid, [-2.0, -1.0, -0.5], [False] * 3) == (None, None)


def test_dbc_curves_in_one_call(rp: Replayer, lab: dict[str, Any]) -> None:
    members = _members(lab)[:2]
    evaluate = Counting(rp)
    dbc = boundary(evaluate, members)
    assert evaluate.calls == 1 and evaluate.sets == 3 * POINTS and dbc["alphas"][0] == 0.0 == 1.0 - dbc["alphas"][-1]
    assert [c["members"] for c in dbc["curves"]] == [[0, 1], [0], [1]]
    assert [len(c["metric"]) for c in dbc["curves"]] == [POINTS] * 3 and POINTS >= 21
    incident, whole = rp.run(()).metric, rp.run(tuple(members)).metric
    assert dbc["curves"][0]["metric"][0] == pytest.approx(incident, abs=1e-5)
    assert dbc["curves"][0]["metric"][-1] == pytest.approx(whole, abs=1e-5)
    assert dbc["curves"][1]["metric"][-1] == pytest.approx(rp.run((members[0],)).metric, abs=1e-5)


# -- in the pipeline and the report ------------------------------------------------------------------
def test_pipeline_reports_isc_for_the_fix_set(report: dict[str, Any]) -> None:
    fix, isc = report["fix_set"], report["isc"]
    assert fix is not None and isc is not None, report["notes"]
    assert not any("not implemented" in n and ("isc" in n or "dbc" in n) for n in report["notes"])
    k = len(fix["interventions"])
    assert isc["k"] == k and isc["members"] == fix["interventions"] and len(isc["subsets"]) == 2**k
    assert isc["subsets"][-1]["metric"] == pytest.approx(fix["metric"], abs=1e-5)
    assert isc["subsets"][-1]["recovery"] == pytest.approx(fix["recovery"], abs=1e-5)
    assert isc["subsets"][0]["metric"] == pytest.approx(report["decision"]["m_incident"], abs=1e-5)
    v = [row["metric"] for row in isc["subsets"]]
    assert sum(s["metric"] for s in isc["shapley"]) == pytest.approx(v[-1] - v[0], abs=1e-6)
    assert isc["forward_passes"] >= 1


def test_pipeline_reports_dbc_for_the_fix_set(report: dict[str, Any]) -> None:
    fix, dbc = report["fix_set"], report["dbc"]
    assert dbc is not None and dbc["points"] >= 21
    whole = dbc["curves"][0]
    assert whole["members"] == list(range(len(fix["interventions"])))
    assert whole["metric"][0] == pytest.approx(report["decision"]["m_incident"], abs=1e-5)
    assert whole["metric"][-1] == pytest.approx(fix["metric"], abs=1e-5) and whole["fixed"][-1]
    j, flip = whole["flip_index"], whole["flip_alpha"]
    assert j is not None and not any(whole["fixed"][:j]) and whole["fixed"][j]
    if j > 0:  # the straight line through the two grid points around the flip crosses 0 at flip_alpha
        a0, a1, m0, m1 = dbc["alphas"][j - 1], dbc["alphas"][j], whole["metric"][j - 1], whole["metric"][j]
        assert a0 <= flip <= a1 and m0 <= 0 <= m1
        assert m0 + (m1 - m0) * (flip - a0) / (a1 - a0) == pytest.approx(0.0, abs=1e-6)


def test_report_with_isc_and_dbc_validates_against_the_schema(report: dict[str, Any], lab: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "report.schema.json").read_text())
    stored = json.loads((lab["root"] / "report.json").read_text())
    assert stored["isc"] == json.loads(json.dumps(report["isc"]))
    jsonschema.Draft202012Validator(schema).validate(stored)
    assert not jsonschema.Draft202012Validator(schema).is_valid({**stored, "isc": {**stored["isc"], "k": 9}})


def test_html_shows_the_isc_table_and_the_dbc_curves(report: dict[str, Any]) -> None:
    page = render_html(report)
    assert 'id="isc"' in page and "Every subset" in page and "Shapley values" in page
    isc_part = page[page.index('id="isc"') : page.index('id="dbc"')]
    assert isc_part.count("<tr>") >= 2 ** report["isc"]["k"]
    dbc_part = page[page.index('id="dbc"') : page.index("</section>", page.index('id="dbc"'))]
    assert "<svg" in dbc_part and 'aria-label="decision boundary crossing' in dbc_part
    assert 'class="flip"' in dbc_part  # the flip point is marked
    assert render_html(report) == page  # deterministic
    off = render_html({**report, "isc": None, "dbc": None})
    assert 'id="isc"' not in off and 'id="dbc"' not in off
