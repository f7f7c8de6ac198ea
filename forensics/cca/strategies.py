"""Scoring of intervention sets and the three search strategies (greedy, beam, random).

    scorer = Scorer(evaluate, m_incident=-2.1, m_source=1.7, budget=20000, batch_size=32)
    best = greedy(scorer, candidates, max_size=5, threshold=0.8)

A strategy only proposes sets; ``Scorer`` evaluates them in batches (one forward pass per batch),
turns metrics into recovery and keeps count.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from forensics.cca.refusals import evaluate_halving
from forensics.errors import ReplayError
from forensics.models.arch import component_of
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.replayer import Outcome

__all__ = ["Scored", "Scorer", "beam", "closeness", "greedy", "random_search"]


@dataclass(frozen=True)
class Scored:
    interventions: InterventionSet
    metric: float
    recovery: float | None  # None when no baseline produces the target
    fixed: bool
    argmax_token: str
    gain: float = 0.0  # what the search ranks by: recovery, or progress toward the mirror of the incident

    def to_dict(self) -> dict[str, Any]:
        return {
            "interventions": [iv.to_dict() for iv in self.interventions],
            "metric": self.metric,
            "recovery": self.recovery,
            "fixed": self.fixed,
            "argmax_token": self.argmax_token,
        }


class Scorer:
    """Evaluates sets through an executor's evaluator; recovery = (m - m_inc) / (m_base - m_inc).

    Without a baseline that produces the target (``m_source=None``) recovery is unavailable and the
    search ranks by progress toward the mirror of the incident's margin (``gain``), which is never
    reported as recovery. ``deadline`` (``time.monotonic()``) and ``budget`` bound the work."""

    def __init__(
        self,
        evaluate: Callable[[Sequence[InterventionSet]], list[Outcome]],
        *,
        m_incident: float,
        m_source: float | None,
        budget: int,
        batch_size: int,
        prior: dict[Intervention, float] | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        saturate: float = 1.0,
        deadline: float | None = None,
    ) -> None:
        self.evaluate, self.m_incident, self.m_source = evaluate, m_incident, m_source
        self.m_reference = m_source if m_source is not None else max(-m_incident, 1e-3)
        self.saturate, self.deadline = saturate, deadline
        self.budget, self.batch_size, self.prior = budget, batch_size, prior or {}
        self.progress = progress
        self.evaluated = 0
        self.timed_out = False
        self.fixed_seen: list[Scored] = []
        self.refused: dict[InterventionSet, str] = {}  # sets the replay cannot do, with its reason

    @property
    def remaining(self) -> int:
        if self.timed_out:
            return 0
        return max(0, self.budget - self.evaluated)

    def recovery(self, metric: float) -> float | None:
        return None if self.m_source is None else self.gain(metric)

    def gain(self, metric: float) -> float:
        return (metric - self.m_incident) / (self.m_reference - self.m_incident)

    def score(
        self, sets: Sequence[InterventionSet], *, stop_at: float | None = None, force: bool = False
    ) -> list[Scored]:
        """Score ``sets`` batch by batch within the budget and the deadline (``force``: regardless of
        them, for the few sets of pruning); with ``stop_at``, stop after a batch holding a fixed set whose
        gain reaches it (early stop)."""
        out: list[Scored] = []
        sets = list(sets) if force else list(sets)[: self.remaining]
        if self.progress and sets:
            self.progress(0, len(sets))
        for start in range(0, len(sets), self.batch_size):
            if not force and self._past_deadline():
                break
            outcomes = self._evaluate(sets[start : start + self.batch_size])
            self.evaluated += len(outcomes)
            if self.progress:
                self.progress(len(outcomes), None)
            batch = [
                Scored(o.interventions, o.metric, self.recovery(o.metric), o.fixed, o.argmax_token, self.gain(o.metric))
                for o in outcomes
            ]
            out.extend(batch)
            self.fixed_seen.extend(s for s in batch if s.fixed)
            if stop_at is not None and any(s.fixed and s.gain >= stop_at for s in batch):
                break
        return out

    def _evaluate(self, sets: Sequence[InterventionSet]) -> list[Outcome]:
        """Outcomes of the ``sets`` the replay can do: a batch it refuses (``ReplayError``: a set whose
        positions no population bundle or source reaches, say) is halved until each refused set stands
        alone (``refusals.evaluate_halving``), so one such set costs a few more passes, never the search;
        refused sets go to ``refused``."""
        outcomes = evaluate_halving(self.evaluate, sets, self._refuse)
        return [outcome for _, outcome in outcomes]

    def _refuse(self, ivs: InterventionSet, exc: ReplayError) -> None:
        self.refused[tuple(ivs)] = str(exc)

    def _past_deadline(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
        return self.timed_out

    def key(self, s: Scored) -> tuple[bool, float, int, int, int, float, float]:
        """Rank: fixed first, then gain (to 0.01, saturating at the early-stop threshold: beyond it a
        fix is good enough), then fewer members, then fewer positions, then narrower components (a head
        before its attention, ``Component.breadth``), then the CF prior, then raw gain."""
        cost = sum(0 if iv.positions == "last" else 1 for iv in s.interventions)
        prior = sum(self.prior.get(iv, 0.0) for iv in s.interventions)
        return (
            s.fixed,
            closeness(s.gain, self.m_source is not None, self.saturate, digits=2),
            -len(s.interventions),
            -cost,
            -sum(component_of(iv.module, iv.head).breadth for iv in s.interventions),
            prior,
            s.gain,
        )

    def best(self, scored: Sequence[Scored]) -> Scored | None:
        return max(scored, key=self.key, default=None)


def closeness(gain: float, measured: bool, saturate: float = 0.8, *, digits: int = 1) -> float:
    """``gain`` saturating at ``saturate`` (beyond it a fix is good enough); with a measured recovery, an
    overshoot past the correct run counts against it (recovery 1.4 is as far from 1 as 0.6): restoring
    the run that answers correctly is the evidence, pushing past it is not."""
    value = min(gain, 2.0 - gain) if measured else gain
    return round(min(value, saturate), digits)


def _extend(base: InterventionSet, candidates: Sequence[Intervention]) -> list[InterventionSet]:
    """``base`` plus each candidate acting on a place (module, head, positions) it does not touch yet."""
    taken = {(iv.module, iv.head, iv.positions) for iv in base}
    return [
        tuple(sorted((*base, c), key=Intervention.sort_key))
        for c in candidates
        if (c.module, c.head, c.positions) not in taken
    ]


def greedy(
    scorer: Scorer, candidates: Sequence[Intervention], singles: list[Scored], *, max_size: int, threshold: float
) -> tuple[Scored | None, list[dict[str, Any]]]:
    best = scorer.best(singles)
    steps = [
        {
            "size": 1,
            "evaluated": len(singles),
            "best_recovery": best.recovery if best else None,
            "best_metric": best.metric if best else None,
        }
    ]
    while best is not None and not best.fixed and len(best.interventions) < max_size and scorer.remaining:
        scored = scorer.score(_extend(best.interventions, candidates), stop_at=threshold)
        nxt = scorer.best(scored)
        steps.append(
            {
                "size": len(best.interventions) + 1,
                "evaluated": len(scored),
                "best_recovery": nxt.recovery if nxt else None,
                "best_metric": nxt.metric if nxt else None,
            }
        )
        if nxt is None or scorer.key(nxt) <= scorer.key(best):
            break
        best = nxt
    return best, steps


def beam(
    scorer: Scorer,
    candidates: Sequence[Intervention],
    singles: list[Scored],
    *,
    max_size: int,
    threshold: float,
    width: int,
) -> tuple[Scored | None, list[dict[str, Any]]]:
    """Keeps the ``width`` best sets; stops at a fix, at ``max_size``, or when a step improves nothing."""
    beams = sorted(singles, key=scorer.key, reverse=True)[:width]
    steps = [
        {
            "size": 1,
            "evaluated": len(singles),
            "best_recovery": beams[0].recovery if beams else None,
            "best_metric": beams[0].metric if beams else None,
        }
    ]
    size = 1
    while beams and not beams[0].fixed and size < max_size and scorer.remaining:
        proposals = list(dict.fromkeys(s for b in beams for s in _extend(b.interventions, candidates)))
        scored = scorer.score(proposals, stop_at=threshold)
        size += 1
        before = scorer.key(beams[0])
        beams = sorted([*beams, *scored], key=scorer.key, reverse=True)[:width]
        steps.append(
            {"size": size, "evaluated": len(scored), "best_recovery": beams[0].recovery, "best_metric": beams[0].metric}
        )
        if scorer.key(beams[0]) <= before:
            break
    return (beams[0] if beams else None), steps


def random_search(
    scorer: Scorer, candidates: Sequence[Intervention], singles: list[Scored], *, max_size: int, samples: int, seed: int
) -> tuple[Scored | None, list[dict[str, Any]]]:
    """Seeded random sets (sizes 2..max), candidates weighted by the CF prior; best of all seen."""
    rng = _random.Random(seed)
    weights = [1.0 + max(0.0, scorer.prior.get(c, 0.0)) for c in candidates]
    proposals: dict[InterventionSet, None] = {}
    for _ in range(samples * 4):
        if len(proposals) >= samples or len(candidates) < 2:
            break
        size = rng.randint(2, max(2, min(max_size, len(candidates))))
        picked = {c for c in rng.choices(candidates, weights=weights, k=size)}
        proposals[tuple(sorted(picked, key=Intervention.sort_key))] = None
    scored = scorer.score(list(proposals))
    fixed = [s for s in [*singles, *scored] if s.fixed]
    pool = fixed and [s for s in fixed if len(s.interventions) == min(len(f.interventions) for f in fixed)]
    best = scorer.best(pool or [*singles, *scored])
    return best, [
        {
            "size": "random",
            "evaluated": len(scored),
            "best_recovery": best.recovery if best else None,
            "best_metric": best.metric if best else None,
        }
    ]
