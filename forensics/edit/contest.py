"""``auto`` on a family report: the ablation's weight form against a rank-one edit, on the same evidence.

    choice, edit = contest(loaded, choice, weights_edit, held_out_share, fitting, population, progress)

A position-free ablation that transfers across a family's members can still be a blunt instrument: zeroing
a module at every position keeps the population's next tokens yet rewrites most of their continuations.
So when a family report's best weight form passes ``choose``'s transfer bar, ``auto`` still fits the
rank-one edit (layer by leave-one-out, ``choose_layer``) and ships whichever is better: first the one that
is *safe* (keeps ``SAFE_SPECIFICITY`` of the population and neighbourhood answers and ``SAFE_FLUENCY`` of
the population continuations), then the share of members fixed held out, then answers kept, then
continuations kept; ties go to the weight form. The note gives both rows. Measured on SmolLM2 (three
Australia phrasings): the family ablation fixed every member held out, yet kept 2 of 10 population
continuations (6 of 20 with the neighbourhood) and fixed 1 of 5 new phrasings; the rank-one edit kept 18
of 20 and fixed 3 of 5. A three-member leave-one-out is too small to outvote that damage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from forensics.edit.base import WeightEdit, edited_copy
from forensics.edit.choose import FixChoice
from forensics.edit.evaluate import EditEvaluation, evaluate_edit
from forensics.edit.layer_choice import choose_layer
from forensics.edit.prompts import FamilyPrompt, PopulationPrompt
from forensics.errors import ConfigError
from forensics.models.registry import LoadedModel

__all__ = ["SAFE_FLUENCY", "SAFE_SPECIFICITY", "contest"]

SAFE_SPECIFICITY = 0.95  # population and neighbourhood answers an edit must keep to count as safe
SAFE_FLUENCY = 0.8  # population continuations (8 tokens) it must keep


def contest(
    loaded: LoadedModel,
    choice: FixChoice,
    weights: WeightEdit,
    held_out_share: float,
    fitting: Sequence[FamilyPrompt],
    population: Sequence[PopulationPrompt],
    judged: Sequence[PopulationPrompt],
    *,
    diagnosed: int | None,
    subject: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[FixChoice, WeightEdit]:
    """The better of ``weights`` and a rank-one edit (see module docstring), as (choice, edit): the rank-one
    edit protects ``population``; both are judged on ``judged`` (the population and the neighbourhood)."""
    model, tok = loaded.model, loaded.tokenizer
    try:
        ranked = choose_layer(
            model,
            tok,
            fitting,
            population,
            diagnosed=[] if diagnosed is None else [diagnosed],
            subject=subject,
            progress=progress,
        )
    except ConfigError as exc:
        return replace(choice, note=_join(choice.note, f"no rank-one edit to compare ({exc})")), weights
    trial = next(t for t in ranked.trials if t.layer == ranked.layer)
    rows = {
        "weights": (held_out_share, _judge(loaded, weights, judged)),
        "rank-one": (trial.held_out / trial.members, _judge(loaded, ranked.edit, judged)),
    }
    best = max(rows, key=lambda m: (*_key(*rows[m]), m == "weights"))
    note = _join(choice.note, "; ".join(_row(m, *rows[m], ranked.layer) for m in rows) + f": ships {best}")
    if best == "weights":
        return replace(choice, note=note), weights
    details = {
        **ranked.edit.details,
        "layer_choice": {"diagnosed": diagnosed, "note": ranked.note, "tried": ranked.table()},
    }
    return replace(choice, method="rank-one", layer=ranked.layer, note=note), replace(ranked.edit, details=details)


def _judge(loaded: LoadedModel, edit: WeightEdit, population: Sequence[PopulationPrompt]) -> EditEvaluation:
    return evaluate_edit(edited_copy(loaded.model, edit), loaded.tokenizer, fitting=(), population=population)


def _key(share: float, ev: EditEvaluation) -> tuple[bool, float, float, float]:
    specificity, fluency = ev.specificity.share or 1.0, ev.fluency.share or 1.0
    safe = specificity >= SAFE_SPECIFICITY and fluency >= SAFE_FLUENCY
    return (safe, round(share, 6), specificity, fluency)


def _row(method: str, share: float, ev: EditEvaluation, layer: int) -> str:
    name = f"rank-one at layer {layer}" if method == "rank-one" else "the weight form"
    return (
        f"{name}: {share:.0%} of members fixed held out, population answers kept {ev.specificity.passed}/"
        f"{ev.specificity.total}, continuations kept {ev.fluency.passed}/{ev.fluency.total}"
    )


def _join(*parts: Any) -> str:
    return "; ".join(str(p) for p in parts if p)
