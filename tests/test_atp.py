"""Attribution patching and the component x position search, on tiny models and the real one.

The AtP estimate is a first derivative: blending an intervention in by a small alpha changes the exact
metric by alpha times the estimate, to first order. That pins the gradients and the values of every
node type (residual, attention, MLP, head) and kind (zero, mean, patch) against our own exact replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forensics.cca.atp import attribute
from forensics.cca.candidates import build_candidates
from forensics.cca.fixset import is_input_substitution
from forensics.cca.positions import MAX_RANGE, position_sets
from forensics.config import CCAConfig, Config, ModulesConfig
from forensics.errors import ConfigError
from forensics.failure import FailureSpec
from forensics.models.arch import arch_for
from forensics.rca.pipeline import RCAPipeline
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer

PROMPT = "The capital of Australia is"
OTHERS = {
    "france": "The capital of France is",
    "long": "Canberra is the capital of Australia. The capital of Australia is",
}


@pytest.fixture
def lab(atp_lab: Any) -> Any:
    return atp_lab


def test_estimates_are_the_first_derivative_of_the_exact_effect(lab: Any) -> None:
    _, rp, _ = lab
    atp = attribute(rp, kinds=("zero", "mean", "patch"), sources=["france"], sink_exact=0.0)  # first order only
    spec = arch_for(rp.model)
    m0 = rp.run(()).metric
    eps = 1e-3
    probes = [
        Intervention(f"{spec.layers}.0.{spec.attn}", "zero", "last", head=1),
        Intervention(f"{spec.layers}.1.{spec.attn}", "mean", (1,), head=0),
        Intervention(f"{spec.layers}.0.{spec.attn}", "patch", (2, 3), "france", head=2),
        Intervention(f"{spec.layers}.0.{spec.mlp}", "zero", (0, 1)),
        Intervention(f"{spec.layers}.1.{spec.attn}", "mean", "last"),
        Intervention(f"{spec.layers}.0", "patch", "last", "france"),
    ]
    for iv in probes:
        estimate = atp.estimate(iv)
        assert estimate is not None, iv
        blended = Intervention(iv.module, iv.kind, iv.positions, iv.source, head=iv.head, alpha=eps)
        exact = (rp.run((blended,)).metric - m0) / eps
        assert exact == pytest.approx(estimate, rel=0.05, abs=1e-3), iv


def test_first_position_candidates_that_move_its_stream_most_are_replayed_exactly(lab: Any) -> None:
    """The sink correction: with every first-position candidate picked, each estimate at position 0 is its
    exact effect, a set reaching position 0 moves by the same correction, and other sets keep first order."""
    _, rp, _ = lab
    spec = arch_for(rp.model)
    plain = attribute(rp, kinds=("zero", "patch"), sources=["france"], sink_exact=0.0)
    fixed = attribute(rp, kinds=("zero", "patch"), sources=["france"], sink_exact=1.0)
    s0 = plain.positions.index((0,))
    assert fixed.sink_exact == int(np.isfinite(plain.values[:, :, s0]).sum()) > 0
    m0 = rp.run(()).metric
    attn, mlp = f"{spec.layers}.0.{spec.attn}", f"{spec.layers}.0.{spec.mlp}"
    for iv in (Intervention(attn, "zero", (0,), head=1), Intervention(mlp, "patch", (0,), "france")):
        exact = rp.run((iv,)).metric - m0
        assert fixed.estimate(iv) == pytest.approx(exact, abs=1e-4), iv
        wider = Intervention(iv.module, iv.kind, (0, 1), iv.source, head=iv.head)
        moved = fixed.estimate(iv) - plain.estimate(iv)  # type: ignore[operator]
        assert fixed.estimate(wider) == pytest.approx(plain.estimate(wider) + moved, abs=1e-6), wider  # type: ignore[operator]
        later = Intervention(iv.module, iv.kind, "last", iv.source, head=iv.head)
        assert fixed.estimate(later) == pytest.approx(plain.estimate(later), abs=1e-9), later
    some = attribute(rp, kinds=("zero", "patch"), sources=["france"])  # the default share
    assert 0 < some.sink_exact < fixed.sink_exact and some.to_dict()["sink_exact"] == some.sink_exact
    capped = attribute(rp, kinds=("zero", "patch"), sources=["france"], sink_exact=1.0, sink_exact_max=3)
    assert capped.sink_exact == 3  # the share, at most sink_exact_max (the count no longer grows with the model)
    moved = ~np.isclose(capped.values[:, :, s0], plain.values[:, :, s0], atol=1e-9, equal_nan=True)
    assert 1 <= int(moved.sum()) <= 3  # at most three carry their exact effect, the rest keep first order
    np.testing.assert_allclose(capped.values[:, :, s0][moved], fixed.values[:, :, s0][moved], atol=1e-5)
    with pytest.raises(ConfigError, match="prefilter_sink_exact_max"):
        CCAConfig(prefilter_sink_exact_max=0)


def test_candidates_leave_out_input_and_output_substitutions(lab: Any) -> None:
    _, rp, _ = lab
    spec = arch_for(rp.model)
    last = f"{spec.layers}.{len(spec.layer_names(rp.model)) - 1}"
    atp = attribute(rp, kinds=("zero", "mean", "patch"), sources=["france"], output_module=last)
    top = [iv for iv, _ in atp.top(10_000)]
    assert top and len(top) == atp.candidates
    assert not any(is_input_substitution(iv) for iv in top)
    assert not any(iv.module == last and iv.kind == "patch" and iv.head is None for iv in top)
    resid = [iv for iv in top if iv.module.count(".") == spec.layers.count(".") + 1]
    assert resid and all(iv.kind == "patch" for iv in resid)  # no zeroing of the whole state
    assert all(iv.positions == "last" or len(iv.positions) == 1 for iv in resid)
    heads = {iv.head for iv in top if iv.head is not None}
    assert heads == set(range(spec.head_slices(rp.model)[0]))
    values = [v for _, v in atp.top(50)]
    assert values == sorted(values, reverse=True)
    assert atp.estimate(Intervention(f"{spec.layers}.0", "zero", "last")) is None  # not a candidate


def test_a_reference_source_may_patch_every_position(lab: Any) -> None:
    _, rp, _ = lab
    spec = arch_for(rp.model)
    atp = attribute(rp, kinds=("patch",), sources=["france"], reference_runs=frozenset({"france"}))
    assert atp.estimate(Intervention(f"{spec.layers}.0", "patch", "all", "france")) is not None
    assert atp.estimate(Intervention(f"{spec.layers}.0", "patch", (0, 1), "france")) is not None


def test_position_sets_name_tokens_ranges_and_spans() -> None:
    sets, labels = position_sets(
        12, [f"t{i}" for i in range(12)], [{"kind": "message", "index": 1, "role": "user", "tokens": [3, 7]}]
    )
    assert sets[:3] == ["last", "all", (0,)]
    assert labels[0] == "last (11 't11')" and labels[2] == "0 't0'"
    assert (11,) not in sets and tuple(range(12)) not in sets  # those are "last" and "all"
    assert max(len(s) for s in sets if isinstance(s, tuple)) == MAX_RANGE
    assert sets.count((3, 4, 5, 6)) == 1  # the span is also a range: proposed once
    sets, _ = position_sets(12, spans=[{"kind": "message", "index": 0, "role": "system", "tokens": [0, 10]}])
    assert tuple(range(10)) in sets
    assert position_sets(5, include=("last",))[0] == ["last"]


def test_exhaustive_candidates_cover_heads_and_positions(lab: Any) -> None:
    _, rp, _ = lab
    spec = arch_for(rp.model)
    attn = f"{spec.layers}.0.{spec.attn}"
    config = CCAConfig(intervention_types=("zero",), positions=("last", "each"), components=("head", "mlp"))
    cands = build_candidates(rp.bundle.modules, config, [], {}, length=rp.length, heads={attn: 2})
    assert {(iv.head, iv.positions) for iv in cands if iv.module == attn} == {
        (h, p) for h in (0, 1) for p in ["last", *((i,) for i in range(rp.length - 1))]
    }
    assert all(iv.module.endswith(spec.mlp) or iv.head is not None for iv in cands)
    outcomes = rp.evaluate([(iv,) for iv in cands])
    assert all(o.hook_fires and min(o.hook_fires) > 0 for o in outcomes)


def _analyze(lab: Any, tmp_path: Path, **cca: Any) -> dict[str, Any]:
    loaded, rp, others = lab
    config = Config(modules=ModulesConfig(cca=CCAConfig(**cca)))
    return RCAPipeline(config).analyze_incident(rp.bundle, baseline=others, model=loaded).to_dict()


def test_report_keeps_the_estimate_next_to_the_exact_effect(lab: Any, tmp_path: Path) -> None:
    report = _analyze(lab, tmp_path, prefilter_top_k=16)
    attribution = report["attribution"]
    assert attribution["method"] == "atp" and attribution["backward_passes"] == 1
    assert attribution["candidates"] > 16 and attribution["kept"] == 16
    assert len(attribution["top"]) == 20
    singles = [s for s in report["single_effects"] if len(s["interventions"]) == 1]
    assert singles and all(s["atp"] is not None for s in singles)
    rows = report["components"]
    assert rows and {"component", "where", "effect", "atp", "fixed"} <= set(rows[0])
    assert rows[0]["component"]["site"] in ("resid", "attn", "mlp", "head")
    for fixed in (True, False):
        for resid in (True, False):
            effects = [
                r["effect"] for r in rows if r["fixed"] == fixed and (r["component"]["site"] == "resid") == resid
            ]
            assert effects == sorted(effects, reverse=True)
    order = [(not r["fixed"], r["component"]["site"] == "resid") for r in rows]
    assert order == sorted(order)  # fixing first, components before residual overwrites
    grid = attribution["grid"]
    assert grid["layers"] == 2 and set(grid["sites"]) <= {"resid", "attn", "mlp", "head"}
    assert any("pre-filter" in n["why"] for n in report["not_evaluated"])
    if report["fix_set"]:
        assert report["fix_set"]["validated"]
    assert attribution["sink_exact"] > 0  # on by default (modules.cca.prefilter_sink_exact)


def test_the_analysis_can_turn_the_first_position_correction_off(lab: Any, tmp_path: Path) -> None:
    report = _analyze(lab, tmp_path, prefilter_top_k=16, prefilter_sink_exact=0.0)
    assert report["attribution"]["sink_exact"] == 0
    with pytest.raises(ConfigError, match="prefilter_sink_exact"):
        CCAConfig(prefilter_sink_exact=1.5)


def test_without_prefilter_the_search_replays_every_candidate(lab: Any, tmp_path: Path) -> None:
    report = _analyze(lab, tmp_path, prefilter="none", positions=("last", "each"), intervention_types=("zero",))
    assert report["attribution"] is None
    assert any(iv.get("head") is not None for s in report["single_effects"] for iv in s["interventions"])
    assert all(s["atp"] is None for s in report["single_effects"])


def test_estimates_agree_with_exact_head_patching_on_the_real_model(smol: Any, tmp_path: Path) -> None:
    """The demo incident: AtP's top heads x positions are the exact sweep's top ones (the bench measures
    recall and rank correlation over all 30 x 9 x T; here a smaller, fixed check)."""
    spec_ok = FailureSpec.expected(" Canberra", smol.tokenizer)
    incident = record_greedy(smol, PROMPT, tmp_path / "inc", spec_ok, kind="incident", max_new_tokens=1).bundle
    source = record_greedy(smol, OTHERS["france"], tmp_path / "fr", "as-generated", kind="benign", max_new_tokens=1)
    rp = Replayer(incident, loaded=smol, sources=[source.bundle])
    atp = attribute(rp, kinds=("patch",), sources=["fr"], sites=("head",))
    sets = [
        (Intervention(f"model.layers.{layer}.self_attn", "patch", (p,) if p < rp.length - 1 else "last", "fr", head=h),)
        for layer in range(0, 30, 3)
        for h in range(9)
        for p in range(rp.length)
    ]
    m0 = rp.run(()).metric
    exact = np.array([o.metric - m0 for o in rp.evaluate(sets)])
    estimate = np.array([atp.estimate(s[0]) for s in sets], dtype=float)
    top_exact, top_atp = set(np.argsort(-exact)[:10]), set(np.argsort(-estimate)[:10])
    assert len(top_exact & top_atp) >= 7
    assert np.corrcoef(exact, estimate)[0, 1] > 0.8
