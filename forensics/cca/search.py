"""The CCA search: the smallest set of interventions that makes the failure go away.

    result = find_fix_set(evaluate, modules, config, m_incident=-2.0, m_source=1.5, prior=cf_scores)
    result.fix_sets[0].interventions, result.fix_sets[0].validated

Candidates are recorded modules x intervention types x positions (patch once per source), ordered by
the CF prior. An intervention that overwrites every position with another prompt's activations
(``patch`` or ``mean`` at ``all``) replaces the input and names no cause: it is never a candidate (see
``input_level``). The best few fixed sets the search saw are each pruned until every member is
necessary, then validated by a fresh replay; the pipeline then judges them further (regenerated
answer, side effects on the population) before one is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

from forensics.cca.candidates import build_candidates
from forensics.cca.fixset import (
    CCAResult,
    FixSet,
    is_reference_patch,
    overwrites_state,
    strength,
    touches_sink,
    without_sink,
)
from forensics.cca.strategies import Scored, Scorer, beam, closeness, greedy, random_search
from forensics.config import CCAConfig
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.replayer import Outcome

__all__ = ["find_fix_set", "prune", "validate"]

ALTERNATIVES = 5  # fixed sets pruned and validated besides the search's best
SINK_CHECKED = 12  # fixed sets touching the first position re-tested without it before choosing alternatives
COMPONENT_ALTERNATIVES = 3  # ... and the best that act on components only (no residual-stream overwrite),
# those of them that fix without the first position, those that patch nothing from another prompt,
# and those patched from a reference run only that come closest to restoring it


def find_fix_set(
    evaluate: Callable[[Sequence[InterventionSet]], list[Outcome]],
    modules: Sequence[str],
    config: CCAConfig,
    *,
    m_incident: float,
    m_source: float | None,
    sources: Sequence[str] = (),
    prior: dict[str, float] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    deadline: float | None = None,
    output_module: str | None = None,
    reference_runs: frozenset[str] = frozenset(),
    candidates: Sequence[Intervention] | None = None,
    length: int | None = None,
) -> CCAResult:
    """``m_source`` None: no baseline produces the target, so recovery is reported as unavailable
    (the search still ranks by the metric). ``deadline`` (``time.monotonic()``) stops the search.
    ``candidates``: the single interventions to search, in order (the pre-filter's top N); by default
    every one ``build_candidates`` proposes for ``modules``. ``length``: the incident's positions; with it,
    fixed sets that act on the first position are replayed without it, and those that then no longer fix
    act through the attention sink (``FixSet.sink``): the first position is what every later position
    attends to when it has nothing to read, so a patch there moves the answer by disturbing all of them,
    not where the answer is computed. The alternatives validated include the best that fix without it."""
    prior = prior or {}
    given = candidates is not None  # a pre-filter's short list: every one is replayed, for the component table
    if candidates is None:
        candidates = build_candidates(
            modules, config, sources, prior, output_module=output_module, reference_runs=reference_runs
        )
    candidates = list(candidates)
    scorer = Scorer(
        evaluate,
        m_incident=m_incident,
        m_source=m_source,
        budget=config.max_replays,
        batch_size=config.batch_size,
        prior={c: prior.get(c.module, 0.0) for c in candidates},
        progress=progress,
        saturate=config.early_stop_threshold,
        deadline=deadline,
    )
    singles = scorer.score([(c,) for c in candidates], stop_at=None if given else config.early_stop_threshold)
    best, steps = _search(scorer, candidates, singles, config)
    result = CCAResult([], best, singles, config.search_strategy, steps, len(candidates))
    alternatives, through = _alternatives(scorer, length, reference_runs, measured=m_source is not None)
    minimal: dict[frozenset[Intervention], Scored] = {}
    for found in alternatives:
        pruned = prune(scorer, found)
        minimal.setdefault(frozenset(pruned.interventions), pruned)
    result.fix_sets = [fix for fix in (validate(evaluate, scorer, s) for s in minimal.values()) if fix.validated]
    through |= _sink_driven(
        scorer, [s for s in result.fix_sets if s.interventions not in through], length, reference_runs
    )
    result.fix_sets = [replace(f, sink=through.get(f.interventions, False)) for f in result.fix_sets]
    result.fix_sets.sort(key=lambda f: (len(f.interventions), f.sink, -strength(f), f.positions, f.breadth, -f.metric))
    result.evaluated = scorer.evaluated
    result.budget_exhausted = scorer.remaining == 0
    result.timed_out = scorer.timed_out
    result.refused = scorer.refused
    return result


def _alternatives(
    scorer: Scorer, length: int | None, reference_runs: frozenset[str], *, measured: bool
) -> tuple[list[Scored], dict[InterventionSet, bool]]:
    """The fixed sets worth pruning and validating, best first, without repeats: the search's best few,
    and the best that act on components only (no residual-stream overwrite), those of them that fix
    without the first position, those that patch nothing from another prompt, and those patched from a
    reference run only that come closest to restoring it; with which of them act through the sink."""
    pool = sorted({s.interventions: s for s in scorer.fixed_seen}.values(), key=scorer.key, reverse=True)
    named = [s for s in pool if not any(overwrites_state(iv) for iv in s.interventions)]
    through = _sink_driven(scorer, named[:SINK_CHECKED], length, reference_runs)  # set -> needs the sink
    content = [s for s in named if not through.get(s.interventions, False)]
    ablating = [s for s in content if all(iv.kind != "patch" for iv in s.interventions)]  # no other prompt's values
    restoring = sorted(  # from a reference run only, closest to restoring its run: where two versions differ
        (s for s in named if all(is_reference_patch(iv, reference_runs) for iv in s.interventions)),
        key=lambda s: -closeness(s.gain, measured, 1.0, digits=2),
    )
    chosen = [
        *pool[: ALTERNATIVES + 1],
        *named[:COMPONENT_ALTERNATIVES],
        *content[:COMPONENT_ALTERNATIVES],
        *ablating[:COMPONENT_ALTERNATIVES],
        *restoring[:COMPONENT_ALTERNATIVES],
    ]
    return list(dict.fromkeys(chosen)), through


def _sink_driven(
    scorer: Scorer, sets: Sequence[Scored | FixSet], length: int | None, reference_runs: Collection[str]
) -> dict[InterventionSet, bool]:
    """For each of ``sets`` that acts on the first position: whether it no longer fixes without it (one
    batched pass; the caller skips sets it has already asked about)."""
    if not length or length < 2:
        return {}
    touching = {
        s.interventions: without_sink(s.interventions, length, reference_runs)
        for s in sets
        if touches_sink(s.interventions, reference_runs)
    }
    reduced = {r.interventions: r.fixed for r in scorer.score(list(touching.values()), force=True)}
    return {ivs: not reduced[rest] for ivs, rest in touching.items() if rest in reduced}  # refused: unknown


def _search(
    scorer: Scorer, candidates: list[Intervention], singles: list[Scored], config: CCAConfig
) -> tuple[Scored | None, list[dict[str, Any]]]:
    size, thr = config.max_fix_set_size, config.early_stop_threshold
    if config.search_strategy == "beam":
        return beam(scorer, candidates, singles, max_size=size, threshold=thr, width=config.beam_width)
    if config.search_strategy == "random":
        return random_search(
            scorer, candidates, singles, max_size=size, samples=config.random_samples, seed=config.seed
        )
    return greedy(scorer, candidates, singles, max_size=size, threshold=thr)


def prune(scorer: Scorer, found: Scored) -> Scored:
    """Drop members while the rest still fixes the failure; stops when every member is necessary."""
    current = found
    while len(current.interventions) > 1:
        subsets = [tuple(iv for iv in current.interventions if iv != drop) for drop in current.interventions]
        still = [s for s in scorer.score(subsets, force=True) if s.fixed]
        if not still:
            return current
        current = max(still, key=scorer.key)
    return current


def validate(evaluate: Callable[[Sequence[InterventionSet]], list[Outcome]], scorer: Scorer, found: Scored) -> FixSet:
    """A fresh replay of the set alone: the fix counts only if it holds again and every hook fired."""
    outcome = evaluate([found.interventions])[0]
    fires_ok = all(f > 0 for f in outcome.hook_fires)
    return FixSet(
        found.interventions,
        outcome.fixed and fires_ok,
        scorer.recovery(outcome.metric),
        outcome.metric,
        outcome.fixed,
        outcome.argmax_token,
        gain=scorer.gain(outcome.metric),
    )
