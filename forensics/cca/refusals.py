"""One way to replay a batch of intervention sets when the replay may refuse some of them.

    outcomes = evaluate_halving(rp.evaluate, sets, lambda ivs, exc: refused.setdefault(ivs, str(exc)))
    [(i, outcome) for i, outcome in outcomes]      # index into ``sets``, refused ones left out

A replay refuses a whole batch (``ReplayError``) when one set in it cannot be done: a ``mean`` at positions
no population bundle reaches, a patch from a source too short. The batch is halved until each refused set
stands alone, so one such set costs about ``2 log2(batch)`` more passes, never the others' outcomes. Both
the single-incident search (``strategies.Scorer``) and the family search (``family``) go through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from forensics.errors import ReplayError
from forensics.replay.interventions import InterventionSet
from forensics.replay.replayer import Outcome

__all__ = ["Evaluate", "OnRefused", "evaluate_halving"]

Evaluate = Callable[[Sequence[InterventionSet]], list[Outcome]]  # K sets -> K outcomes, in order, or raises
OnRefused = Callable[[InterventionSet, ReplayError], None]  # told of each set refused on its own


def evaluate_halving(
    evaluate: Evaluate, sets: Sequence[InterventionSet], refused: OnRefused
) -> list[tuple[int, Outcome]]:
    """(index into ``sets``, outcome) of every set ``evaluate`` can replay, in order; a refused batch is
    halved until each refused set stands alone and is reported to ``refused``. No sets, no call."""
    return _halving(evaluate, [tuple(s) for s in sets], 0, refused)


def _halving(
    evaluate: Evaluate, sets: list[InterventionSet], offset: int, refused: OnRefused
) -> list[tuple[int, Outcome]]:
    if not sets:
        return []
    try:
        return list(enumerate(evaluate(sets), offset))
    except ReplayError as exc:
        if len(sets) == 1:
            refused(sets[0], exc)
            return []
    half = len(sets) // 2
    return _halving(evaluate, sets[:half], offset, refused) + _halving(evaluate, sets[half:], offset + half, refused)
