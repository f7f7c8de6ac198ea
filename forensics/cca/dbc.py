"""Decision boundary crossing (DBC): walk each fix from the incident (α = 0) to the fix (α = 1) and
find where the decision flips, for the fix set and for each member alone, in one batched call.

    dbc = boundary(rp.evaluate, fix.interventions, points=21)
    dbc["curves"][0]["flip_alpha"], dbc["curves"][0]["metric"]      # the set; then one curve per member

At α every member replaces its activation with α·replacement + (1 − α)·activation (``scale``: the
factor 1 + α·(factor − 1); see ``Intervention.alpha``). The curve is the metric (the target's margin
over the best other token, > 0 once fixed) at each α; the flip is the first α whose argmax is the target
(or no longer the forbidden token), placed between that grid point and the one before where the
straight line through their metrics crosses 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

from forensics.cca.fixset import FixSet
from forensics.cca.isc import label
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.replayer import Outcome, Replayer

__all__ = ["POINTS", "alphas", "boundary", "dbc_for", "flip_point"]

POINTS = 21  # α = 0, 0.05, …, 1

Evaluate = Callable[[Sequence[InterventionSet]], list[Outcome]]


def alphas(points: int = POINTS) -> list[float]:
    return [i / (points - 1) for i in range(points)]


def flip_point(
    grid: Sequence[float], metric: Sequence[float], fixed: Sequence[bool]
) -> tuple[float | None, int | None]:
    """(the α where the decision flips, the first grid index that is fixed); (None, None) if it never does.

    >>> flip_point([0.0, 0.5, 1.0], [-2.0, -1.0, 3.0], [False, False, True])  # -1 -> 3 crosses 0 a quarter in
    (0.625, 2)
    """
    j = next((i for i, f in enumerate(fixed) if f), None)
    if j is None or j == 0:
        return (None, None) if j is None else (grid[0], 0)
    m0, m1 = metric[j - 1], metric[j]
    t = -m0 / (m1 - m0) if m1 != m0 else 1.0
    return grid[j - 1] + min(1.0, max(0.0, t)) * (grid[j] - grid[j - 1]), j


def _curve(name: str, members: list[int], grid: Sequence[float], rows: Sequence[Outcome]) -> dict[str, Any]:
    metric, fixed = [o.metric for o in rows], [o.fixed for o in rows]
    flip, index = flip_point(grid, metric, fixed)
    return {
        "label": name,
        "members": members,
        "metric": metric,
        "fixed": fixed,
        "argmax_token": [o.argmax_token for o in rows],
        "flip_alpha": flip,
        "flip_index": index,
        "stays_fixed": index is not None and all(fixed[index:]),
        "monotone": all(b >= a for a, b in pairwise(metric)),
    }


def boundary(evaluate: Evaluate, members: Sequence[Intervention], *, points: int = POINTS) -> dict[str, Any]:
    """Curves for the whole set and (when it has more than one member) each member alone: ONE ``evaluate``
    call over (curves × points) sets."""
    if points < 2:
        raise ValueError(f"dbc needs at least 2 grid points, got {points}")
    k, grid = len(members), alphas(points)
    curves = [("fix set", list(range(k)))] + ([(label(iv), [i]) for i, iv in enumerate(members)] if k > 1 else [])
    sets = [tuple(replace(members[i], alpha=a) for i in idx) for _, idx in curves for a in grid]
    outcomes = evaluate(sets)
    out = [_curve(name, idx, grid, outcomes[c * points : (c + 1) * points]) for c, (name, idx) in enumerate(curves)]
    result = {
        "members": [iv.to_dict() for iv in members],
        "labels": [label(iv) for iv in members],
        "alphas": grid,
        "points": points,
        "curves": out,
    }
    result["summary"] = _summary(out)
    return result


def _summary(curves: Sequence[dict[str, Any]]) -> str:
    def said(c: dict[str, Any]) -> str:
        if c["flip_alpha"] is None:
            return "never flips"
        back = "" if c["stays_fixed"] else ", then flips back before α = 1"
        return f"flips at α = {c['flip_alpha']:.3f}{back}"

    whole = curves[0]
    text = f"the fix set {said(whole)} (metric {whole['metric'][0]:+.3f} at α = 0, {whole['metric'][-1]:+.3f} at α = 1)"
    alone = [f"#{c['members'][0]} alone {said(c)}" for c in curves[1:]]
    return text + ("; " + "; ".join(alone) if alone else "")


def dbc_for(
    rp: Replayer, fix: FixSet | None, *, m_incident: float, notes: list[str], points: int = POINTS
) -> dict[str, Any] | None:
    """DBC of the reported fix set on the local replayer, or None with a line in ``notes`` saying why not."""
    if fix is None:
        notes.append("dbc: no fix set to analyse; skipped")
        return None
    before = rp.forward_passes
    out = boundary(rp.evaluate, fix.interventions, points=points)
    out.update(m_incident=m_incident, m_fix=fix.metric, forward_passes=rp.forward_passes - before)
    return out
