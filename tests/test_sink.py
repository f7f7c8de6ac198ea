"""The first position (the attention sink): AtP's exact pass over it, the fix sets that act through it,
and the aligned benign mean that no longer writes a content position's average into it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from forensics.cca import sink
from forensics.cca.atp import _head_columns, _nodes, _values
from forensics.cca.components import summarize
from forensics.cca.fixset import FixSet, touches_sink, without_sink
from forensics.cca.judge import rank
from forensics.cca.search import find_fix_set
from forensics.cca.sink import first_position_moves
from forensics.config import CCAConfig
from forensics.errors import ReplayError
from forensics.models.arch import arch_for
from forensics.replay import Intervention, Replayer


@pytest.fixture
def lab(atp_lab: Any) -> Any:
    return atp_lab


def test_the_sink_pass_joining_rows_at_their_layer_equals_the_full_pass(
    lab: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rp, _ = lab
    spec = arch_for(rp.model)
    columns = _head_columns(rp, spec)
    rows, sets = [], []
    for node in _nodes(rp, spec, ("attn", "mlp", "head")):
        for kind, source in (("zero", None), ("mean", None), ("patch", "long")):
            value = _values(rp, node, kind, source, columns, rp.length)[0]
            rows.append((node.module, node.head, value))
            sets.append((Intervention(node.module, kind, (0,), source, head=node.head),))
    starts = [rp.prefix.start(ivs) for ivs in sets]
    assert rp.prefix.can_grow(sets) and len(set(starts)) > 1  # rows really join at different layers
    full = first_position_moves(rp, rows, columns)
    grown = first_position_moves(rp, rows, columns, starts)
    monkeypatch.setattr(sink, "SINK_ROWS", 7)  # several passes, rows by first layer
    split = first_position_moves(rp, rows, columns, starts)
    np.testing.assert_allclose(split, full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grown, full, rtol=1e-4, atol=1e-5)
    assert (full > 0).sum() > len(rows) // 2  # zero and mean move the first position's stream


def test_a_fix_set_is_marked_sink_when_it_no_longer_fixes_without_the_first_position(lab: Any) -> None:
    _, rp, _ = lab
    spec = arch_for(rp.model)
    modules = [m for layer in spec.layer_names(rp.model) for m in (f"{layer}.{spec.attn}", f"{layer}.{spec.mlp}")]
    candidates = [
        Intervention(m, kind, positions, "long" if kind == "patch" else None, factor=4.0 if kind == "scale" else None)
        for m in modules
        for kind in ("zero", "mean", "patch", "scale")
        for positions in ((0,), (0, 1), (0, rp.length - 1), (0, 1, rp.length - 1))
    ]  # every candidate reaches the first position
    m_incident = rp.run(()).metric
    result = find_fix_set(
        rp.evaluate,
        modules,
        CCAConfig(max_fix_set_size=2),
        m_incident=m_incident,
        m_source=None,
        candidates=candidates,
        length=rp.length,
    )
    assert result.fix_sets, "nothing fixes: the check below would be empty"
    for fix in result.fix_sets:
        assert touches_sink(fix.interventions)
        rest = without_sink(fix.interventions, rp.length)
        assert fix.sink == (not rp.run(rest).fixed), fix
    order = [f.sink for f in result.fix_sets if len(f.interventions) == len(result.fix_sets[0].interventions)]
    assert order == sorted(order)  # among sets of one size, those that fix without the sink first


def test_without_sink_drops_the_first_position_but_not_reference_patches() -> None:
    zero = Intervention("model.layers.0.mlp", "zero", (0, 1))
    only = Intervention("model.layers.0.mlp", "mean", (0,))
    ref = Intervention("model.layers.0.mlp", "patch", "all", "ref")
    assert without_sink((zero, only), 4) == (Intervention("model.layers.0.mlp", "zero", (1,)),)
    assert without_sink((Intervention("model.layers.0.mlp", "zero", "all"),), 3)[0].positions == (1, 2)
    assert without_sink((ref,), 3, reference_runs={"ref"}) == (ref,)
    assert touches_sink((ref,)) and not touches_sink((ref,), reference_runs={"ref"})
    assert not touches_sink((Intervention("model.layers.0.mlp", "zero", "last"),))


def test_the_mean_is_taken_at_the_aligned_position(lab: Any) -> None:
    """Each baseline's prompt aligned from the end: the incident's first position gets the mean of what
    the baselines hold there, and a position no baseline reaches is refused."""
    loaded, rp, others = lab
    module = arch_for(rp.model).layer_names(rp.model)[0] + ".mlp"
    if module not in rp.bundle.modules:
        module = next(m for m in rp.bundle.modules if m.endswith(("mlp", "self_attn", "attn")))
    mean = rp.bank.mean(module, length=rp.length)
    want = np.mean([np.asarray(b.activation(module))[len(b.inputs["input_ids"]) - rp.length] for b in others], axis=0)
    np.testing.assert_allclose(mean[0], want, rtol=1e-5, atol=1e-6)
    short = Replayer(others[1], loaded=loaded, population=[others[0]])  # a 13-token prompt, a 5-token baseline
    assert np.isnan(short.bank.mean(module, length=short.length)[0]).all()
    with pytest.raises(ReplayError, match="no benign baseline reaches position"):
        short.run((Intervention(module, "mean", (0,)),))
    assert short.run((Intervention(module, "mean", "all"),)).hook_fires == (1,)  # the positions it reaches
    assert short.run((Intervention(module, "mean", "last"),)).hook_fires == (1,)


def test_replayers_with_the_same_baselines_share_captured_heads(lab: Any) -> None:
    loaded, rp, others = lab
    first = Replayer(others[0], loaded=loaded, population=others, sources=others)
    second = Replayer(others[1], loaded=loaded, population=others, sources=others)
    second.bank.share(first.bank)
    attn = f"{arch_for(rp.model).layer_names(rp.model)[0]}.{arch_for(rp.model).attn}"
    first.run((Intervention(attn, "mean", "last", head=0),))  # captures every baseline's heads

    def refuse(bundle: Any) -> dict[str, np.ndarray]:
        raise AssertionError(f"captured {bundle.id} again")

    second.bank.capture = refuse
    assert second.run((Intervention(attn, "mean", "last", head=0),)).hook_fires == (1,)
    with pytest.raises(ReplayError, match="different baselines"):
        Replayer(others[0], loaded=loaded, population=others[:1]).bank.share(first.bank)


def test_fixes_that_patch_nothing_from_a_longer_prompt_rank_first() -> None:
    """A patch from a source that holds more than the incident's tokens (the question with its answer
    stated first) carries that context in; an ablation that fixes names a part of the incident's run."""
    patch = Intervention("model.layers.0.self_attn", "patch", (1,), "long", head=6)
    zero = Intervention("model.layers.0.self_attn", "zero", (1,), head=6)
    sunk = Intervention("model.layers.0.self_attn", "zero", (0,), head=4)

    def fix(iv: Intervention, recovery: float, sink: bool = False) -> FixSet:
        return FixSet((iv,), True, recovery, recovery, True, " Canberra", sink=sink, gain=recovery)

    fixes = [fix(sunk, 1.0, sink=True), fix(patch, 1.0), fix(zero, 0.7)]
    assert [f.interventions[0] for f in rank(fixes)] == [patch, zero, sunk]  # closest to restoring, sink last
    assert [f.interventions[0] for f in rank(fixes, contexts={"long"})] == [zero, patch, sunk]
    assert fixes[0].to_dict()["sink"] is True


def test_the_summary_names_components_off_the_sink_and_says_what_the_sink_does() -> None:
    def row(label: str, site: str, positions: Any, effect: float, fixed: bool) -> dict[str, Any]:
        return {
            "component": {"label": label, "site": site},
            "intervention": {"kind": "zero", "positions": positions},
            "where": "position 0 ('The')" if positions == [0] else "positions 1-2",
            "effect": effect,
            "fixed": fixed,
            "argmax_token": " Canberra",
        }

    rows = [row("L0.H4", "head", [0], 2.4, True), row("L9 MLP", "mlp", [1, 2], 1.8, True)]
    decision = {"observed": " Sydney", "target": " Canberra"}
    fix = {
        "interventions": [{"module": "model.layers.0.self_attn", "head": 4, "kind": "zero"}],
        "argmax_token": " Canberra",
        "sink": True,
    }
    text = summarize(rows, fix, decision)
    assert "Pushing ' Sydney' over ' Canberra'" in text and "L9 MLP at positions 1-2" in text
    assert "L0.H4 at" not in text  # the sink's effect is told apart, not listed as a push
    assert "1 more move it at the first position alone (up to +2.40 logits, L0.H4)" in text
    assert "It acts through the first position" in text
    only = summarize(rows[:1], {**fix, "sink": False}, decision)
    assert "L0.H4 at position 0" in only and "first position alone" not in only  # nothing else to name
