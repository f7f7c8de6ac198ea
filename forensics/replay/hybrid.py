"""Hybrid replay: regenerate the whole answer with every external call served from the recording.

    rp = Replayer(load_bundle("bundles/france"))
    run = hybrid_generate(rp, replacements={"retriever": "The capital of France is Paris."})
    run.text, run.input_changed                       # the new answer, and whether the input was rewritten

No tool is ever called: a recorded result is already part of ``inputs.prompt``; a counterfactual result
replaces the characters of that call's span (``inputs.spans``, kind ``external``) and the input is
tokenised again. Interventions apply at every step, as ``Replayer.generate`` applies them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from forensics.bundle import Bundle
from forensics.errors import ReplayError
from forensics.replay.interventions import InterventionSet
from forensics.replay.replayer import Replayer

__all__ = ["HybridRun", "hybrid_generate", "regenerate", "rewrite_input"]


@dataclass(frozen=True)
class HybridRun:
    """One regenerated answer: its ids and text (from the first generated token), and the input it came from."""

    ids: list[int]
    text: str
    input_ids: list[int]
    input_changed: bool
    replaced: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "text": self.text,
            "input_changed": self.input_changed,
            "replaced": list(self.replaced),
            "input_length": len(self.input_ids),
        }


def rewrite_input(bundle: Bundle, tokenizer: Any, replacements: Mapping[str, str]) -> list[int]:
    """``inputs.input_ids`` with each named call's recorded result replaced by the given text.

    A call's result is the character range its spans cover (all documents of a retriever that returned a
    list); every recorded call of that name is replaced. ``message:INDEX`` names a chat message's content
    (a tool message of a ``--messages`` incident). Without replacements: the recorded ids."""
    inputs = bundle.inputs
    ids = list(inputs["input_ids"])
    if not replacements:
        return ids
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str):
        raise ReplayError(f"bundle {bundle.id}: no inputs.prompt recorded, so its tool results cannot be replaced")
    special = _special_tokens(tokenizer, prompt, ids, bundle.id)
    edits = sorted((rng, replacements[name]) for name, rng in _call_ranges(bundle, set(replacements)))
    out, pos = [], 0
    for (start, end), text in edits:
        if start < pos:
            raise ReplayError(f"bundle {bundle.id}: the spans of the replaced calls overlap at character {start}")
        out += [prompt[pos:start], text]
        pos = end
    new: list[int] = tokenizer("".join([*out, prompt[pos:]]), add_special_tokens=special)["input_ids"]
    return list(new)


def regenerate(
    rp: Replayer, input_ids: Sequence[int], interventions: InterventionSet = (), max_new_tokens: int = 4
) -> list[int]:
    """Greedy continuation of ``input_ids`` on the replayer's model, ``interventions`` at every step
    (their positions index ``input_ids``; ``last`` is its last position)."""
    if not input_ids:
        raise ReplayError(f"bundle {rp.bundle.id}: cannot regenerate from an empty input")
    view = copy.copy(rp)  # same model, sources and hooks; only the ids it continues differ
    view.input_ids = torch.tensor([list(input_ids)], device=rp.device)
    return view.generate(tuple(interventions), max_new_tokens)


def hybrid_generate(
    rp: Replayer,
    interventions: InterventionSet = (),
    replacements: Mapping[str, str] | None = None,
    max_new_tokens: int | None = None,
) -> HybridRun:
    """The whole answer again. With the recorded input the generated prefix before the decision step is
    kept and the rest regenerated (what validating a fix regenerates); with a replaced tool result the
    answer is regenerated from the rewritten input, since the recorded prefix came from the old one.

    ``max_new_tokens`` defaults to the recording's length from the point regeneration starts."""
    generated = list(rp.bundle.outputs["generated_ids"])
    new_input = rewrite_input(rp.bundle, rp.tokenizer, replacements or {})
    changed = new_input != list(rp.bundle.inputs["input_ids"])
    prefix = [] if changed else generated[: rp.step]
    budget = max_new_tokens if max_new_tokens is not None else max(1, len(generated) - len(prefix))
    new = regenerate(rp, new_input, interventions, budget) if changed else rp.generate(tuple(interventions), budget)
    ids = prefix + new
    return HybridRun(ids, rp.tokenizer.decode(ids), new_input, changed, tuple(sorted(replacements or {})))


def _special_tokens(tokenizer: Any, prompt: str, ids: list[int], bundle_id: str) -> bool:
    """Whether the recorded ids came from ``prompt`` with the tokenizer's special tokens (a plain prompt)
    or without (a rendered chat carries its own)."""
    for special in (True, False):
        if list(tokenizer(prompt, add_special_tokens=special)["input_ids"]) == ids:
            return special
    raise ReplayError(
        f"bundle {bundle_id}: inputs.input_ids are not the tokenisation of inputs.prompt under this tokenizer, "
        "so the input cannot be rewritten faithfully"
    )


def _call_ranges(bundle: Bundle, names: set[str]) -> list[tuple[str, tuple[int, int]]]:
    """(name, character range) of each recorded call named in ``names`` (the hull of its spans), and of
    each message named ``message:INDEX`` (a chat's tool message, say)."""
    all_spans = [s for s in bundle.inputs.get("spans", ()) if "chars" in s]
    spans = [s for s in all_spans if s.get("kind") == "external"]
    messages = {f"message:{s['index']}": s for s in all_spans if s.get("kind") == "message"}
    known = sorted({str(s.get("name")) for s in spans})
    missing = sorted(names - set(known) - set(messages))
    if missing:
        have = ", ".join(known + sorted(messages)) or "none"
        raise ReplayError(
            f"bundle {bundle.id}: no recorded call result named {', '.join(map(repr, missing))} in the model input "
            f"(found in the input: {have})"
        )
    hulls: dict[tuple[str, Any], tuple[int, int]] = {}
    for s in spans:
        if s["name"] in names:
            key = (s["name"], s.get("call"))
            lo, hi = s["chars"]
            old = hulls.get(key, (lo, hi))
            hulls[key] = (min(old[0], lo), max(old[1], hi))
    out = [(name, rng) for (name, _), rng in hulls.items()]
    return out + [(name, tuple(messages[name]["chars"])) for name in sorted(names & set(messages))]
