"""The neighbourhood an edit must leave alone, built from what the family and its population already say.

    texts = neighbourhood(model, tok, ["The capital of Australia is", ...], population, subject="Australia")

Model-editing work judges specificity on *neighbourhood* prompts: the edited phrasings with other subjects,
and other questions about the edited subject. Both are built here without a dataset:

- **the family's phrasings with other subjects the model answers right**: a population prompt that is a
  member's phrasing with another subject in the subject's place ("The capital of France is" against
  "The capital of Australia is") names that subject; every member's phrasing is rewritten with it
  ("The capital city of France is", "Fact: the capital of France is"), and kept when the model's first
  answer token there is its answer on the population prompt (the phrasing is one it answers right);
- **other questions about the subject** (``SUBJECT_PROBES``: "Australia is a", "Australia is known for", ...),
  whose answers must stay.

None of these is protected by a rank-one edit (only the population is), so specificity on them is evidence
the edit did not see.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from forensics.edit.prompts import PopulationPrompt, encode, greedy_continuation

__all__ = ["MAX_SUBJECTS", "SUBJECT_PROBES", "aligned_subject", "neighbourhood"]

SUBJECT_PROBES = ("{X} is a", "{X} is known for", "The history of {X}", "In {X}, people")
MAX_SUBJECTS = 8  # other subjects taken from the population


def neighbourhood(
    model: nn.Module,
    tokenizer: Any,
    members: Sequence[str],
    population: Sequence[PopulationPrompt],
    *,
    subject: str | None,
) -> list[str]:
    """Neighbourhood texts (see module docstring), without the population's own and the members' texts."""
    subject = subject or aligned_subject(tokenizer, members, population)
    if not subject:
        return []
    words = [re.escape(w) for w in re.findall(r"\w+", subject)]
    pattern = re.compile(r"\b" + r"\W+".join(words) + r"\b", re.IGNORECASE)
    spelled = next((m.group(0) for t in members if (m := pattern.search(t))), None)
    if spelled is None:
        return []
    others = _other_subjects(tokenizer, pattern, members, population)
    eos = getattr(tokenizer, "eos_token_id", None)
    seen = {p.text for p in population} | set(members)
    out: list[str] = []
    for other, answer in others.items():
        for text in members:
            match = pattern.search(text)
            swapped = text if match is None else text[: match.start()] + other + text[match.end() :]
            if swapped in seen or swapped == text:
                continue
            seen.add(swapped)
            if greedy_continuation(model, encode(tokenizer, swapped), 1, eos)[:1] == answer:
                out.append(swapped)
    out += [p for t in SUBJECT_PROBES if (p := t.format(X=spelled)) not in seen]
    return out


def _other_subjects(
    tokenizer: Any, pattern: re.Pattern[str], members: Sequence[str], population: Sequence[PopulationPrompt]
) -> dict[str, tuple[int, ...]]:
    """Other subject -> the model's first answer token on the population prompt that names it."""
    found: dict[str, tuple[int, ...]] = {}
    texts = [str(tokenizer.decode(list(p.input_ids), skip_special_tokens=True)) for p in population]
    for text in members:
        match = pattern.search(text)
        if match is None:
            continue
        head, tail = text[: match.start()], text[match.end() :]
        for p, said in zip(population, texts, strict=True):
            middle = said[len(head) : len(said) - len(tail)] if len(said) > len(head) + len(tail) else ""
            if said.startswith(head) and said.endswith(tail) and middle.strip() and p.continuation:
                found.setdefault(middle, tuple(p.continuation[:1]))
        if len(found) >= MAX_SUBJECTS:
            break
    return dict(list(found.items())[:MAX_SUBJECTS])


def aligned_subject(tokenizer: Any, members: Sequence[str], population: Sequence[PopulationPrompt]) -> str | None:
    """The subject a member and a population prompt differ in, where they are the same phrasing otherwise
    ("The capital of Australia is" / "The capital of France is" -> "Australia"): the words between their
    longest shared first and last words (at most three, fewer than the words they share), in the member;
    the one most pairs give; None when no pair aligns."""
    found: list[str] = []
    for text in members:
        mine = text.split(" ")
        for p in population:
            theirs = str(tokenizer.decode(list(p.input_ids), skip_special_tokens=True)).split(" ")
            head = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), None)
            if head is None:
                continue
            tail = next(i for i in range(len(mine) + 1) if i == len(mine) - head or mine[-1 - i] != theirs[-1 - i])
            middle = mine[head : len(mine) - tail]
            if 0 < len(middle) <= 3 and 0 < len(theirs) - head - tail <= 3 and head + tail > len(middle):
                found.append(" ".join(middle).strip(".,;:!?'\""))
    found = [f for f in found if f]
    return max(set(found), key=lambda f: (found.count(f), f)) if found else None
