"""Causal minimal fix sets (CCA): the smallest set of interventions that makes the failure go away.

    result = find_fix_set(evaluate, modules, config, m_incident=-2.0, m_baseline=1.5, prior=cf_scores)
    result.fix_set.interventions, result.fix_set.validated

Candidates are recorded modules x intervention types x positions (patch once per counterfactual
source), ordered by the CF prior. A found set is pruned until every member is necessary, then
validated by a fresh replay before it is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forensics.config import CCAConfig
from forensics.rca.search import Scored, Scorer, beam, greedy, random_search
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.replayer import Outcome

__all__ = ["CCAResult", "FixSet", "build_candidates", "find_fix_set", "prune"]


@dataclass(frozen=True)
class FixSet:
    interventions: tuple[Intervention, ...]
    validated: bool
    recovery: float
    metric: float
    fixed: bool
    argmax_token: str

    def to_dict(self) -> dict[str, Any]:
        return {"interventions": [iv.to_dict() for iv in self.interventions], "validated": self.validated,
                "recovery": self.recovery, "metric": self.metric, "fixed": self.fixed,
                "argmax_token": self.argmax_token, "size": len(self.interventions)}


@dataclass
class CCAResult:
    fix_set: FixSet | None
    best_partial: Scored | None
    singles: list[Scored]
    strategy: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    candidates: int = 0
    evaluated: int = 0
    budget_exhausted: bool = False


def build_candidates(modules: Sequence[str], config: CCAConfig, patch_sources: Sequence[str],
                     prior: dict[str, float]) -> list[Intervention]:
    """Every single intervention, the most CF-anomalous modules first."""
    out: list[Intervention] = []
    for module in sorted(modules, key=lambda m: -prior.get(m, 0.0)):
        for kind in config.intervention_types:
            sources: Sequence[str | None] = patch_sources if kind == "patch" else [None]
            for source in sources:
                for pos in config.positions:
                    factor = 0.0 if kind == "scale" else None
                    out.append(Intervention(module, kind, pos, source, factor))
    return out


def find_fix_set(evaluate: Callable[[Sequence[InterventionSet]], list[Outcome]], modules: Sequence[str],
                 config: CCAConfig, *, m_incident: float, m_baseline: float, patch_sources: Sequence[str] = (),
                 prior: dict[str, float] | None = None, progress: Callable[[int], None] | None = None) -> CCAResult:
    prior = prior or {}
    candidates = build_candidates(modules, config, patch_sources, prior)
    scorer = Scorer(evaluate, m_incident=m_incident, m_baseline=m_baseline, budget=config.max_replays,
                    batch_size=config.batch_size, prior={c: prior.get(c.module, 0.0) for c in candidates},
                    progress=progress, saturate=config.early_stop_threshold)
    singles = scorer.score([(c,) for c in candidates], stop_at=config.early_stop_threshold)
    best, steps = _search(scorer, candidates, singles, config)
    result = CCAResult(None, best, singles, config.search_strategy, steps, len(candidates))
    if best is not None and best.fixed:
        minimal = prune(scorer, best)
        result.fix_set = validate(evaluate, scorer, minimal)
    result.evaluated = scorer.evaluated
    result.budget_exhausted = scorer.remaining == 0
    return result


def _search(scorer: Scorer, candidates: list[Intervention], singles: list[Scored],
            config: CCAConfig) -> tuple[Scored | None, list[dict[str, Any]]]:
    size, thr = config.max_fix_set_size, config.early_stop_threshold
    if config.search_strategy == "beam":
        return beam(scorer, candidates, singles, max_size=size, threshold=thr, width=config.beam_width)
    if config.search_strategy == "random":
        return random_search(scorer, candidates, singles, max_size=size, samples=config.random_samples,
                             seed=config.seed)
    return greedy(scorer, candidates, singles, max_size=size, threshold=thr)


def prune(scorer: Scorer, found: Scored) -> Scored:
    """Drop members while the rest still fixes the failure; stops when every member is necessary."""
    current = found
    while len(current.interventions) > 1:
        subsets = [tuple(iv for iv in current.interventions if iv != drop) for drop in current.interventions]
        still = [s for s in scorer.score(subsets) if s.fixed]
        if not still:
            return current
        current = max(still, key=scorer.key)
    return current


def validate(evaluate: Callable[[Sequence[InterventionSet]], list[Outcome]], scorer: Scorer,
             found: Scored) -> FixSet:
    """A fresh replay of the set alone: the fix counts only if it holds again."""
    outcome = evaluate([found.interventions])[0]
    fires_ok = all(f > 0 for f in outcome.hook_fires)
    return FixSet(found.interventions, outcome.fixed and fires_ok, scorer.recovery(outcome.metric),
                  outcome.metric, outcome.fixed, outcome.argmax_token)
