"""Causal minimal fix sets (CCA): the smallest set of interventions that makes the failure go away.

    result = find_fix_set(evaluate, modules, config, m_incident=-2.0, m_baseline=1.5, prior=cf_scores)
    result.fix_sets[0].interventions, result.fix_sets[0].validated

Candidates are recorded modules x intervention types x positions (patch once per counterfactual
source), ordered by the CF prior. An intervention that overwrites every position with another
prompt's activations (``patch`` or ``mean`` at ``all``) replaces the input and names no cause: it is
never a candidate (see ``input_level``). The best few fixed sets the search saw are each pruned until
every member is necessary, then validated by a fresh replay; the pipeline then judges them further
(regenerated answer, side effects on benign prompts) before one is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from forensics.config import CCAConfig
from forensics.models.arch import component_of
from forensics.rca.search import Scored, Scorer, beam, closeness, greedy, random_search
from forensics.replay.interventions import Intervention, InterventionSet, Positions
from forensics.replay.replayer import Outcome

__all__ = [
    "CCAResult",
    "FixSet",
    "breadth",
    "build_candidates",
    "find_fix_set",
    "is_input_substitution",
    "is_reference_patch",
    "prune",
    "strength",
    "touches_sink",
    "validate",
    "without_sink",
]

Verdict = Literal["correction", "partial", "suppression"]
ALTERNATIVES = 5  # fixed sets pruned and validated besides the search's best
SINK_CHECKED = 12  # fixed sets touching the first position re-tested without it before choosing alternatives
COMPONENT_ALTERNATIVES = 3  # ... and the best that act on components only (no residual-stream overwrite),
# those of them that fix without the first position, those that patch nothing from another prompt,
# and those patched from a reference run only that come closest to restoring it


@dataclass(frozen=True)
class FixSet:
    interventions: tuple[Intervention, ...]
    validated: bool
    recovery: float | None  # None: no baseline produces the target (see decision.recovery_note)
    metric: float
    fixed: bool
    argmax_token: str
    verdict: Verdict = "correction"
    regenerated: dict[str, Any] | None = None
    side_effects: dict[str, Any] | None = None
    gain: float = 0.0  # the search's ranking value (recovery, or progress toward the mirror of the margin)
    sink: bool = False  # it no longer fixes without the first position (the attention sink; see find_fix_set)

    @property
    def breadth(self) -> int:
        """The members' summed ``Component.breadth``: heads before attention / MLP outputs before residuals."""
        return breadth(self.interventions)

    @property
    def positions(self) -> int:
        """Positions the members touch (``last`` counts 1, ``all`` counts as many as it can)."""
        return sum(
            1 if iv.positions == "last" else 1_000 if iv.positions == "all" else len(iv.positions)
            for iv in self.interventions
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "interventions": [iv.to_dict() for iv in self.interventions],
            "validated": self.validated,
            "recovery": self.recovery,
            "metric": self.metric,
            "fixed": self.fixed,
            "argmax_token": self.argmax_token,
            "size": len(self.interventions),
            "positions": self.positions,
            "verdict": self.verdict,
            "regenerated": self.regenerated,
            "side_effects": self.side_effects,
            "sink": self.sink,
        }


@dataclass
class CCAResult:
    fix_sets: list[FixSet]  # validated-by-replay minimal sets, best first by the search's ranking
    best_partial: Scored | None
    singles: list[Scored]
    strategy: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    candidates: int = 0
    evaluated: int = 0
    budget_exhausted: bool = False
    timed_out: bool = False

    @property
    def fix_set(self) -> FixSet | None:
        return self.fix_sets[0] if self.fix_sets else None


def is_reference_patch(iv: Intervention, references: Collection[str]) -> bool:
    """Whether ``iv`` patches from a run of the incident's own input (a known-good reference model's)."""
    return iv.kind == "patch" and iv.source in references


def is_input_substitution(iv: Intervention, same_input: frozenset[str] = frozenset()) -> bool:
    """Whether ``iv`` replaces the input with another prompt's (or the population's) activations: at
    every position, or, in the residual stream (the whole state), at more than one position; that
    carries the other prompt's tokens forward and names no component.

    ``same_input``: sources that ran the incident's own tokens (a known-good reference model); patching
    from one of them compares two models on one input, which is a cause, not a substitution."""
    if iv.kind not in ("patch", "mean") or is_reference_patch(iv, same_input):
        return False
    if iv.positions == "all":
        return True
    return _overwrites_state(iv) and isinstance(iv.positions, tuple) and len(iv.positions) > 1


def touches_sink(ivs: Sequence[Intervention], references: Collection[str] = ()) -> bool:
    """Whether a member acts on the first position: the attention sink, which every later position reads.
    A patch from a reference run (``references``) restores that model's value there, so it does not count."""
    return any(_at_first(iv) and not is_reference_patch(iv, references) for iv in ivs)


def without_sink(
    ivs: Sequence[Intervention], length: int, references: Collection[str] = ()
) -> tuple[Intervention, ...]:
    """``ivs`` with the first position taken out of every member but reference patches (a member left
    with no position is dropped)."""
    out: list[Intervention] = []
    for iv in ivs:
        positions = tuple(range(length)) if iv.positions == "all" else iv.positions
        if _at_first(iv) and not is_reference_patch(iv, references) and isinstance(positions, tuple):
            if len(positions) > 1:
                out.append(replace(iv, positions=tuple(p for p in positions if p != 0)))
        else:
            out.append(iv)
    return tuple(out)


def _at_first(iv: Intervention) -> bool:
    return iv.positions == "all" or (isinstance(iv.positions, tuple) and 0 in iv.positions)


def breadth(ivs: Sequence[Intervention]) -> int:
    """Summed ``Component.breadth`` of the components ``ivs`` act on."""
    return sum(component_of(iv.module, iv.head).breadth for iv in ivs)


def _overwrites_state(iv: Intervention) -> bool:
    return iv.head is None and component_of(iv.module).site == "resid"


def build_candidates(
    modules: Sequence[str],
    config: CCAConfig,
    patch_sources: Sequence[str],
    prior: dict[str, float],
    *,
    output_module: str | None = None,
    same_input: frozenset[str] = frozenset(),
    length: int | None = None,
    heads: Mapping[str, int] | None = None,
    spans: Sequence[Mapping[str, Any]] = (),
) -> list[Intervention]:
    """Every single intervention that can name a cause, the most CF-anomalous modules first (the
    exhaustive search, ``prefilter: none``; with ``atp`` the candidates come ranked from ``atp.attribute``).

    Position sets beyond ``last``/``all`` (``each``, ``ranges``, ``spans``) need the pass ``length``; head
    candidates need ``heads`` ({attention module: number of heads}). ``output_module`` (the last decoder
    layer's residual) is never patched: its state at a position IS the source's prediction there, so
    patching it substitutes the output the way patching every position substitutes the input."""
    from forensics.rca.atp import position_sets

    if length is None:
        positions: list[Positions] = [p for p in config.positions if p in ("last", "all")]
    else:
        positions = position_sets(length, spans=spans, include=config.positions)[0]
    places: list[tuple[str, int | None]] = []
    for module in sorted(modules, key=lambda m: -prior.get(m, 0.0)):
        site = component_of(module).site
        if site in config.components:
            places.append((module, None))
        if site == "attn" and "head" in config.components:
            places += [(module, h) for h in range((heads or {}).get(module, 0))]
    out: list[Intervention] = []
    for module, head in places:
        for kind in config.intervention_types:
            sources: Sequence[str | None] = patch_sources if kind == "patch" else [None]
            for source in sources:
                for pos in positions:
                    iv = Intervention(module, kind, pos, source, 0.0 if kind == "scale" else None, head=head)
                    if not is_input_substitution(iv, same_input) and not (kind == "patch" and module == output_module):
                        out.append(iv)
    return out


def find_fix_set(
    evaluate: Callable[[Sequence[InterventionSet]], list[Outcome]],
    modules: Sequence[str],
    config: CCAConfig,
    *,
    m_incident: float,
    m_baseline: float | None,
    patch_sources: Sequence[str] = (),
    prior: dict[str, float] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    deadline: float | None = None,
    output_module: str | None = None,
    same_input: frozenset[str] = frozenset(),
    candidates: Sequence[Intervention] | None = None,
    length: int | None = None,
) -> CCAResult:
    """``m_baseline`` None: no baseline produces the target, so recovery is reported as unavailable
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
            modules, config, patch_sources, prior, output_module=output_module, same_input=same_input
        )
    candidates = list(candidates)
    scorer = Scorer(
        evaluate,
        m_incident=m_incident,
        m_baseline=m_baseline,
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
    pool = sorted({s.interventions: s for s in scorer.fixed_seen}.values(), key=scorer.key, reverse=True)
    named = [s for s in pool if not any(_overwrites_state(iv) for iv in s.interventions)]
    through = _sink_driven(scorer, named[:SINK_CHECKED], length, same_input)  # set -> needs the sink
    content = [s for s in named if not through.get(s.interventions, False)]
    ablating = [s for s in content if all(iv.kind != "patch" for iv in s.interventions)]  # no other prompt's values
    measured = m_baseline is not None
    restoring = sorted(  # from a reference run only, closest to restoring its run: where two versions differ
        (s for s in named if all(is_reference_patch(iv, same_input) for iv in s.interventions)),
        key=lambda s: -closeness(s.gain, measured, 1.0, digits=2),
    )
    minimal: dict[frozenset[Intervention], Scored] = {}
    alternatives = [
        *pool[: ALTERNATIVES + 1],
        *named[:COMPONENT_ALTERNATIVES],
        *content[:COMPONENT_ALTERNATIVES],
        *ablating[:COMPONENT_ALTERNATIVES],
        *restoring[:COMPONENT_ALTERNATIVES],
    ]
    for found in dict.fromkeys(alternatives):
        pruned = prune(scorer, found)
        minimal.setdefault(frozenset(pruned.interventions), pruned)
    result.fix_sets = [fix for fix in (validate(evaluate, scorer, s) for s in minimal.values()) if fix.validated]
    through |= _sink_driven(scorer, [s for s in result.fix_sets if s.interventions not in through], length, same_input)
    result.fix_sets = [replace(f, sink=through.get(f.interventions, False)) for f in result.fix_sets]
    result.fix_sets.sort(key=lambda f: (len(f.interventions), f.sink, -strength(f), f.positions, f.breadth, -f.metric))
    result.evaluated = scorer.evaluated
    result.budget_exhausted = scorer.remaining == 0
    result.timed_out = scorer.timed_out
    return result


def _sink_driven(
    scorer: Scorer, sets: Sequence[Scored | FixSet], length: int | None, references: Collection[str]
) -> dict[InterventionSet, bool]:
    """For each of ``sets`` that acts on the first position: whether it no longer fixes without it (one
    batched pass; the caller skips sets it has already asked about)."""
    if not length or length < 2:
        return {}
    touching = [s.interventions for s in sets if touches_sink(s.interventions, references)]
    reduced = scorer.score([without_sink(ivs, length, references) for ivs in touching], force=True)
    return {ivs: not r.fixed for ivs, r in zip(touching, reduced, strict=True)}


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


def strength(fix: FixSet) -> float:
    """How closely a fix restores the correct run, to 0.1 (``closeness`` without saturation): among sets of
    one size, a fix that restores the run beats one that falls short or overshoots, whatever its positions."""
    return closeness(fix.gain, fix.recovery is not None, saturate=1.0)


def judged(fix: FixSet, **changes: Any) -> FixSet:
    """``fix`` with the pipeline's verdict, regenerated answer and side effects filled in."""
    return replace(fix, **changes)
