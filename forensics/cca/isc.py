"""Interaction of fix-set members (ISC): every subset replayed in one batched call, exact Shapley
values, and whether the members act in synergy, redundantly or additively.

    isc = interactions(rp.evaluate, fix.interventions, m_incident=-2.0, m_source=1.5)
    isc["shapley"][0]["metric"], isc["overall"]["verdict"]       # "synergy" | "redundancy" | "additive"

v(S) is the metric of the replay with the subset S of the members in place (and its recovery when a
baseline gives the target). Shapley values split v(all) − v(none) between the members exactly; the
interaction of a pair is v(ij) − v(i) − v(j) + v(none) and the overall one v(all) − v(none) − Σ
(v(i) − v(none)): above the tolerance the whole does more than its parts (synergy), below −tolerance
less (redundancy), in between they add up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import factorial
from typing import Any

from forensics.cca.fixset import FixSet
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.replayer import Outcome, Replayer

__all__ = [
    "ABS_TOLERANCE",
    "ADDITIVE_TOLERANCE",
    "MAX_MEMBERS",
    "interactions",
    "isc_for",
    "label",
    "shapley",
    "subsets",
    "verdict",
]

MAX_MEMBERS = 5  # 2^5 = 32 subsets: one batch; beyond that the table stops being readable
ADDITIVE_TOLERANCE = 0.05  # |interaction| within 5 % of the whole set's effect on the metric reads as additive
ABS_TOLERANCE = 1e-4  # logits: the floor of that tolerance (float noise of a batched replay)

Evaluate = Callable[[Sequence[InterventionSet]], list[Outcome]]


def label(iv: Intervention) -> str:
    """One member in words: ``patch model.layers.1.mlp @last from france``."""
    source = f" from {iv.source}" if iv.source else ""
    factor = f" ×{iv.factor}" if iv.factor is not None else ""
    return f"{iv.kind} {iv.module} @{iv.positions}{source}{factor}"


def subsets(members: Sequence[Intervention]) -> list[InterventionSet]:
    """All 2^k subsets; row ``mask`` holds member i exactly when bit i of ``mask`` is set."""
    return [tuple(iv for i, iv in enumerate(members) if mask >> i & 1) for mask in range(2 ** len(members))]


def shapley(values: Sequence[float], k: int) -> list[float]:
    """Exact Shapley value of each of ``k`` players from ``values[mask]`` = v(subset ``mask``).

    >>> shapley([0.0, 1.0, 1.0, 1.0], 2)  # either alone does all of it: redundant, half each
    [0.5, 0.5]
    """
    out = []
    for i in range(k):
        total = 0.0
        for mask in range(2**k):
            if mask >> i & 1:
                continue
            s = bin(mask).count("1")
            total += factorial(s) * factorial(k - s - 1) / factorial(k) * (values[mask | 1 << i] - values[mask])
        out.append(total)
    return out


def verdict(interaction: float, tolerance: float) -> str:
    if interaction > tolerance:
        return "synergy"
    return "redundancy" if interaction < -tolerance else "additive"


def _pair(v: Sequence[float], i: int, j: int) -> float:
    """v(ij) − v(i) − v(j) + v(none)."""
    return v[1 << i | 1 << j] - v[1 << i] - v[1 << j] + v[0]


def _pairs(metric: Sequence[float], recovery: Sequence[float] | None, k: int, tol: float) -> list[dict[str, Any]]:
    return [
        {
            "members": [i, j],
            "interaction": _pair(metric, i, j),
            "interaction_recovery": _pair(recovery, i, j) if recovery is not None else None,
            "verdict": verdict(_pair(metric, i, j), tol),
        }
        for i in range(k)
        for j in range(i + 1, k)
    ]


def _overall(v: Sequence[float], k: int) -> tuple[float, float]:
    """(the whole set's effect, the sum of the members' effects alone)."""
    return v[-1] - v[0], sum(v[1 << i] - v[0] for i in range(k))


def interactions(
    evaluate: Evaluate, members: Sequence[Intervention], *, m_incident: float | None, m_source: float | None
) -> dict[str, Any]:
    """The ISC table of ``members`` (k ≤ MAX_MEMBERS): ONE ``evaluate`` call over the 2^k subsets.

    Recovery uses ``m_incident`` (None: the empty subset's metric) and ``m_source`` (None: unavailable)."""
    k = len(members)
    outcomes = evaluate(subsets(members))
    metric = [o.metric for o in outcomes]
    m_inc = metric[0] if m_incident is None else m_incident
    recovery = None if m_source is None else [(m - m_inc) / (m_source - m_inc) for m in metric]
    whole, parts = _overall(metric, k)
    tol = max(ABS_TOLERANCE, ADDITIVE_TOLERANCE * abs(whole))
    rows = [
        {
            "members": [i for i in range(k) if mask >> i & 1],
            "metric": o.metric,
            "recovery": recovery[mask] if recovery is not None else None,
            "fixed": o.fixed,
            "argmax_token": o.argmax_token,
        }
        for mask, o in enumerate(outcomes)
    ]
    phi = shapley(metric, k)
    phi_rec = shapley(recovery, k) if recovery is not None else None
    overall: dict[str, Any] = {
        "whole": whole,
        "sum_of_parts": parts,
        "interaction": whole - parts,
        "verdict": verdict(whole - parts, tol) if k > 1 else None,
    }
    if recovery is not None:
        w, p = _overall(recovery, k)
        overall.update(whole_recovery=w, sum_of_parts_recovery=p, interaction_recovery=w - p)
    result = {
        "members": [iv.to_dict() for iv in members],
        "labels": [label(iv) for iv in members],
        "k": k,
        "recovery_available": recovery is not None,
        "tolerance": tol,
        "subsets": rows,
        "shapley": [
            {"member": i, "metric": phi[i], "recovery": phi_rec[i] if phi_rec is not None else None} for i in range(k)
        ],
        "pairs": _pairs(metric, recovery, k, tol),
        "overall": overall,
    }
    result["summary"] = _summary(result)
    return result


def _summary(isc: dict[str, Any]) -> str:
    k, overall, tol = isc["k"], isc["overall"], isc["tolerance"]
    shares = ", ".join(f"#{s['member']} {s['metric']:+.3f}" for s in isc["shapley"])
    if k == 1:
        return f"one member: nothing interacts; it moves the metric by {overall['whole']:+.3f}"
    return (
        f"{k} members act {'additively' if overall['verdict'] == 'additive' else 'in ' + overall['verdict']}: "
        f"together they move the metric by {overall['whole']:+.3f}, alone by {overall['sum_of_parts']:+.3f} in "
        f"sum (interaction {overall['interaction']:+.3f}, tolerance ±{tol:.3f}); Shapley {shares}"
    )


def isc_for(
    rp: Replayer, fix: FixSet | None, *, m_incident: float, m_source: float | None, notes: list[str]
) -> dict[str, Any] | None:
    """ISC of the reported fix set on the local replayer, or None with a line in ``notes`` saying why not."""
    if fix is None:
        notes.append("isc: no fix set to analyse; skipped")
        return None
    if len(fix.interventions) > MAX_MEMBERS:
        notes.append(
            f"isc: the fix set has {len(fix.interventions)} members, more than {MAX_MEMBERS} (2^k subsets); skipped"
        )
        return None
    before = rp.forward_passes
    out = interactions(rp.evaluate, fix.interventions, m_incident=m_incident, m_source=m_source)
    out["forward_passes"] = rp.forward_passes - before
    return out
