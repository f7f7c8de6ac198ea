"""An edit judged as model-editing work judges edits: efficacy, generalisation, specificity, fluency.

    ev = evaluate_edit(edited, tok, fitting=fam[:3], held_out=fam[3:], population=pop)
    ev.efficacy.share, ev.generalisation.failed, ev.broken()

- **efficacy**: share of the fitting prompts (those the fix was found or fitted on) now fixed;
- **generalisation**: share of held-out family prompts fixed; a prompt that is also a fitting one is
  refused, so the number never counts what the edit was fitted on;
- **specificity**: share of population / neighbourhood prompts whose greedy next token is unchanged;
- **fluency**: share of population prompts whose whole greedy continuation (up to 8 tokens, as the
  unedited model wrote it) is unchanged.

``edited`` may be an edited copy, or the original with a hook spec installed (``apply_fix``): the
continuations run as ``generate`` runs them (a prompt pass, then one cached pass per token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from forensics.edit.prompts import FamilyPrompt, PopulationPrompt, greedy_continuation
from forensics.errors import ConfigError
from forensics.models.placement import input_device

__all__ = ["EditEvaluation", "Score", "decision_logits", "evaluate_edit"]


@dataclass(frozen=True)
class Score:
    """``passed`` of ``total`` prompts; ``failed`` names the others (their text, and for population
    prompts what changed)."""

    passed: int
    total: int
    failed: tuple[str, ...] = ()

    @property
    def share(self) -> float | None:
        return self.passed / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        share = self.share
        return {
            "share": None if share is None else round(share, 4),
            "passed": self.passed,
            "total": self.total,
            "failed": list(self.failed),
        }


@dataclass(frozen=True)
class EditEvaluation:
    efficacy: Score
    generalisation: Score
    specificity: Score
    fluency: Score
    seconds: float = 0.0

    def broken_share(self) -> float:
        """Share of the population whose next token the edit changed (0 with no population)."""
        share = self.specificity.share
        return 0.0 if share is None else 1.0 - share

    def to_dict(self) -> dict[str, Any]:
        return {
            "efficacy": self.efficacy.to_dict(),
            "generalisation": self.generalisation.to_dict(),
            "specificity": self.specificity.to_dict(),
            "fluency": self.fluency.to_dict(),
            "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        """The four numbers in one line: ``efficacy 3/3, generalisation 4/5, specificity 11/12, fluency 10/12``."""
        parts = [(n, getattr(self, n)) for n in ("efficacy", "generalisation", "specificity", "fluency")]
        return ", ".join(f"{name} {s.passed}/{s.total}" + ("" if s.total else " (none)") for name, s in parts)


@torch.inference_mode()
def decision_logits(model: nn.Module, prompts: Sequence[FamilyPrompt], *, batch: int = 16) -> list[torch.Tensor]:
    """Per prompt, the logits [vocab] at its decision position (right-padded batches; causal attention
    keeps pads from changing earlier positions)."""
    device = input_device(model)
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        width = max(len(p.input_ids) for p in chunk)
        ids = torch.tensor([list(p.input_ids) + [0] * (width - len(p.input_ids)) for p in chunk], device=device)
        logits = model(input_ids=ids, use_cache=False).logits
        out += [logits[i, len(p.input_ids) - 1].float().cpu() for i, p in enumerate(chunk)]
    return out


def _family_score(model: nn.Module, prompts: Sequence[FamilyPrompt]) -> Score:
    if not prompts:
        return Score(0, 0)
    logits = decision_logits(model, prompts)
    failed = tuple(p.text for p, row in zip(prompts, logits, strict=True) if not p.fixed(row))
    return Score(len(prompts) - len(failed), len(prompts), failed)


def _population_scores(model: nn.Module, tokenizer: Any, population: Sequence[PopulationPrompt]) -> tuple[Score, Score]:
    eos = getattr(tokenizer, "eos_token_id", None)
    changed_first: list[str] = []
    changed_text: list[str] = []
    for p in population:
        now = greedy_continuation(model, p.input_ids, len(p.continuation), eos)
        if now[:1] != p.continuation[:1]:
            was, new = tokenizer.decode(list(p.continuation[:1])), tokenizer.decode(list(now[:1]))
            changed_first.append(f"{p.text!r}: {was!r} -> {new!r}")
        if now != p.continuation:
            was, new = tokenizer.decode(list(p.continuation)), tokenizer.decode(list(now))
            changed_text.append(f"{p.text!r}: {was!r} -> {new!r}")
    n = len(population)
    return Score(n - len(changed_first), n, tuple(changed_first)), Score(n - len(changed_text), n, tuple(changed_text))


def evaluate_edit(
    model: nn.Module,
    tokenizer: Any,
    *,
    fitting: Sequence[FamilyPrompt],
    held_out: Sequence[FamilyPrompt] = (),
    population: Sequence[PopulationPrompt] = (),
) -> EditEvaluation:
    """The four numbers of the edited ``model`` (see module docstring); ``population`` carries the
    unedited model's continuations (``population_prompts`` on the original)."""
    import time

    fitted = {p.input_ids for p in fitting}
    overlap = [p.text for p in held_out if p.input_ids in fitted]
    if overlap:
        raise ConfigError(f"held-out prompts {overlap[:3]!r} are also fitting prompts; generalisation counts others")
    start = time.perf_counter()
    specificity, fluency = _population_scores(model, tokenizer, population)
    return EditEvaluation(
        _family_score(model, fitting),
        _family_score(model, held_out),
        specificity,
        fluency,
        time.perf_counter() - start,
    )
