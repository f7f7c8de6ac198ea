"""Fix sets: what the CCA search reports, and the predicates every part of the search agrees on.

A *fix set* is a set of interventions that, replayed together on the incident, makes the failure go
away; it counts only once a fresh replay validates it (``FixSet.validated``). The predicates say what a
member is: a patch from a *reference run* (the incident's own tokens on a known-good model), an
*input substitution* (another prompt's activations at every position: input-level evidence, never a
fix), or a member acting on the first position (the attention sink).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from forensics.cca.strategies import Scored, closeness
from forensics.models.arch import component_of
from forensics.replay.interventions import Intervention, InterventionSet

__all__ = [
    "CCAResult",
    "FixSet",
    "Verdict",
    "breadth",
    "is_input_substitution",
    "is_reference_patch",
    "judged",
    "overwrites_state",
    "strength",
    "touches_sink",
    "without_sink",
]

Verdict = Literal["correction", "partial", "suppression"]


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
    refused: dict[InterventionSet, str] = field(default_factory=dict)  # sets the replay could not do: why

    @property
    def fix_set(self) -> FixSet | None:
        return self.fix_sets[0] if self.fix_sets else None


def is_reference_patch(iv: Intervention, reference_runs: Collection[str]) -> bool:
    """Whether ``iv`` patches from a run of the incident's own input (a known-good reference model's)."""
    return iv.kind == "patch" and iv.source in reference_runs


def is_input_substitution(iv: Intervention, reference_runs: frozenset[str] = frozenset()) -> bool:
    """Whether ``iv`` replaces the input with another prompt's (or the population's) activations: at
    every position, or, in the residual stream (the whole state), at more than one position; that
    carries the other prompt's tokens forward and names no component.

    ``reference_runs``: sources that ran the incident's own tokens (a known-good reference model); patching
    from one of them compares two models on one input, which is a cause, not a substitution."""
    if iv.kind not in ("patch", "mean") or is_reference_patch(iv, reference_runs):
        return False
    if iv.positions == "all":
        return True
    return overwrites_state(iv) and isinstance(iv.positions, tuple) and len(iv.positions) > 1


def touches_sink(ivs: Sequence[Intervention], reference_runs: Collection[str] = ()) -> bool:
    """Whether a member acts on the first position: the attention sink, which every later position reads.
    A patch from a reference run (``reference_runs``) restores that model's value there, so it does not count."""
    return any(_at_first(iv) and not is_reference_patch(iv, reference_runs) for iv in ivs)


def without_sink(
    ivs: Sequence[Intervention], length: int, reference_runs: Collection[str] = ()
) -> tuple[Intervention, ...]:
    """``ivs`` with the first position taken out of every member but reference patches (a member left
    with no position is dropped)."""
    out: list[Intervention] = []
    for iv in ivs:
        positions = tuple(range(length)) if iv.positions == "all" else iv.positions
        if _at_first(iv) and not is_reference_patch(iv, reference_runs) and isinstance(positions, tuple):
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


def overwrites_state(iv: Intervention) -> bool:
    return iv.head is None and component_of(iv.module).site == "resid"


def strength(fix: FixSet) -> float:
    """How closely a fix restores the correct run, to 0.1 (``closeness`` without saturation): among sets of
    one size, a fix that restores the run beats one that falls short or overshoots, whatever its positions."""
    return closeness(fix.gain, fix.recovery is not None, saturate=1.0)


def judged(fix: FixSet, **changes: Any) -> FixSet:
    """``fix`` with the pipeline's verdict, regenerated answer and side effects filled in."""
    return replace(fix, **changes)
