"""Which MLP a rank-one edit should change: the layer whose edit transfers, judged without the member.

    choice = choose_layer(model, tok, fitting, population, diagnosed=[22])
    choice.layer, choice.edit          # the edit fitted on every member at the chosen layer
    choice.table()                     # every layer tried: leave-one-out fixed, population changed, norm

A rank-one edit fitted on a few phrasings of a failure is evidence about *those* phrasings. Which layer
generalises is measured the only honest way available before shipping: leave-one-out over the fitting
members (fit on all but member i, judge member i), at the layers the diagnosis names and at a spread of
layers it does not (``SPREAD``, as shares of the depth), so the choice can disagree with the diagnosis and
the table says by how much. The key: most members fixed held out, then fewest population answers changed
by the edit fitted on every member, then a layer the diagnosis named, then the smaller update.
With one fitting member there is nothing to hold out: the first diagnosed layer (else the middle) is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from forensics.edit.base import WeightEdit, edited_copy
from forensics.edit.evaluate import decision_logits
from forensics.edit.prompts import FamilyPrompt, PopulationPrompt
from forensics.edit.rank_one import RankOneOptions, rank_one_edit
from forensics.errors import ConfigError
from forensics.models.arch import arch_for

__all__ = ["SPREAD", "LayerChoice", "LayerTrial", "candidate_layers", "choose_layer"]

SPREAD = (0.15, 0.3, 0.45, 0.6)  # layers tried besides the diagnosed ones, as shares of the depth


@dataclass(frozen=True)
class LayerTrial:
    """One layer tried: ``held_out`` of ``members`` fixed by edits fitted without them, ``broken``
    population answers (next token) changed by the edit fitted on every member."""

    layer: int
    diagnosed: bool
    held_out: int
    members: int
    broken: int
    relative_norm: float
    error: str | None = None

    def key(self) -> tuple[int, int, int, float]:
        return (-self.held_out, self.broken, int(not self.diagnosed), self.relative_norm)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "diagnosed": self.diagnosed,
            "held_out": [self.held_out, self.members],
            "population_changed": self.broken,
            "relative_norm": round(self.relative_norm, 4),
            **({"error": self.error} if self.error else {}),
        }


@dataclass(frozen=True)
class LayerChoice:
    layer: int
    edit: WeightEdit
    trials: tuple[LayerTrial, ...]
    note: str = ""

    def table(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.trials]


def candidate_layers(n_layers: int, diagnosed: Sequence[int] = ()) -> list[int]:
    """The diagnosed layers (in range) first, then ``SPREAD`` of the depth, each once."""
    spread = [min(n_layers - 1, max(0, round(f * n_layers))) for f in SPREAD]
    return list(dict.fromkeys([d for d in diagnosed if 0 <= d < n_layers] + spread))


def choose_layer(
    model: nn.Module,
    tokenizer: Any,
    fitting: Sequence[FamilyPrompt],
    population: Sequence[PopulationPrompt],
    *,
    diagnosed: Sequence[int] = (),
    candidates: Sequence[int] | None = None,
    subject_positions: Sequence[int] | None = None,
    subject: str | None = None,
    options: RankOneOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> LayerChoice:
    """The layer to edit (see module docstring) and the edit fitted there on every ``fitting`` prompt."""
    n_layers = len(arch_for(model).layer_names(model))
    layers = list(candidates) if candidates is not None else candidate_layers(n_layers, diagnosed)
    if not layers:
        raise ConfigError("rank-one layer choice: no candidate layer")
    fit = _Fitter(model, tokenizer, fitting, population, subject_positions, subject, options or RankOneOptions())
    if len(fitting) < 2:
        layer = layers[0] if diagnosed else n_layers // 2
        note = "one fitting prompt: nothing to hold out, so the diagnosed layer (else the middle) is edited"
        return LayerChoice(layer, fit.edit(layer, range(len(fitting))), (), note)
    trials: list[LayerTrial] = []
    edits: dict[int, WeightEdit] = {}
    for i, layer in enumerate(layers):
        if progress is not None:
            progress(f"rank-one layer {layer} ({i + 1} of {len(layers)}): leave-one-out over {len(fitting)} members")
        trial, edit = fit.trial(layer, layer in diagnosed)
        trials.append(trial)
        if edit is not None:
            edits[layer] = edit
    usable = [t for t in trials if t.error is None]
    if not usable:
        raise ConfigError(f"rank-one edit: no layer could be fitted ({trials[0].error})")
    best = min(usable, key=LayerTrial.key)
    note = f"layer {best.layer} chosen by leave-one-out ({best.held_out} of {best.members} members fixed held out)" + (
        "" if best.diagnosed or not diagnosed else f"; the diagnosed layer(s) {list(diagnosed)} transferred less"
    )
    return LayerChoice(best.layer, edits[best.layer], tuple(trials), note)


class _Fitter:
    """Rank-one edits of one family at any layer, on any subset of its members."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        fitting: Sequence[FamilyPrompt],
        population: Sequence[PopulationPrompt],
        positions: Sequence[int] | None,
        subject: str | None,
        options: RankOneOptions,
    ) -> None:
        self.model, self.tokenizer, self.fitting, self.population = model, tokenizer, list(fitting), list(population)
        self.positions, self.subject, self.options = positions, subject, options

    def edit(self, layer: int, members: Sequence[int]) -> WeightEdit:
        return rank_one_edit(
            self.model,
            self.tokenizer,
            [self.fitting[i] for i in members],
            self.population,
            layer=layer,
            subject_positions=None if self.positions is None else [self.positions[i] for i in members],
            subject=self.subject,
            options=self.options,
        )

    def trial(self, layer: int, diagnosed: bool) -> tuple[LayerTrial, WeightEdit | None]:
        n = len(self.fitting)
        try:
            full = self.edit(layer, range(n))
            held = 0
            for i in range(n):
                edited = edited_copy(self.model, self.edit(layer, [j for j in range(n) if j != i]))
                held += self.fitting[i].fixed(decision_logits(edited, [self.fitting[i]])[0])
        except ConfigError as exc:
            return LayerTrial(layer, diagnosed, 0, n, 0, 0.0, str(exc)), None
        broken = _changed(self.model, edited_copy(self.model, full), self.population)
        return LayerTrial(layer, diagnosed, held, n, broken, float(full.details["relative_norm"])), full


def _changed(model: nn.Module, edited: nn.Module, population: Sequence[PopulationPrompt]) -> int:
    """Population prompts whose next token the edit changes."""
    if not population:
        return 0
    probes = [FamilyPrompt(p.text, p.input_ids, target_id=0) for p in population]
    before = decision_logits(model, probes)
    after = decision_logits(edited, probes)
    return sum(int(a.argmax()) != int(b.argmax()) for a, b in zip(before, after, strict=True))
