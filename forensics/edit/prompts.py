"""The prompts an edit is fitted and judged on: family prompts (must be fixed) and population prompts
(must keep their answers), as token ids, plus where a family prompt names its subject.

    fam = family_prompt("The capital of Australia is", FailureSpec.expected(" Canberra", tok), tok)
    pop = population_prompts(model, tok, ["The capital of France is"])     # + the model's greedy tokens
    subject = subject_span([p.text for p in fam_list], template=[p.text for p in pop])   # "Australia"
    subject_positions(tok, fam_list, subject)                                # its last token, per prompt

*Fixed* means the spec's token is the argmax at the decision position (the first token after the
prompt), or the forbidden token no longer is. The subject heuristic: of the word runs every family
prompt contains, the one with the fewest *template* words (words in at least half of the population
prompts: "capital", "of", "is"; the neighbourhood prompts that name the subject are fewer), then one
written as a name (capitalised in every prompt: "New Zealand", not "of New Zealand is" when the
population is phrased another way), then the longest in characters; its position in a prompt is the
token holding the last character of its last occurrence.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forensics.errors import BundleError, ConfigError
from forensics.failure import FailureSpec
from forensics.models.placement import input_device

__all__ = [
    "FamilyPrompt",
    "PopulationPrompt",
    "encode",
    "family_prompt",
    "greedy_continuation",
    "incident_prompt",
    "population_prompts",
    "read_prompts",
    "subject_positions",
    "subject_span",
]


@dataclass(frozen=True)
class FamilyPrompt:
    """A prompt the fix must fix: ids up to the decision position, and the token wanted or refused there."""

    text: str
    input_ids: tuple[int, ...]
    target_id: int | None = None  # must be the argmax (expected / label specs)
    forbidden_id: int | None = None  # must not be the argmax (forbidden specs)

    def __post_init__(self) -> None:
        if (self.target_id is None) == (self.forbidden_id is None) or not self.input_ids:
            raise ConfigError(f"family prompt {self.text!r}: needs ids and exactly one of target_id, forbidden_id")

    def fixed(self, logits: torch.Tensor) -> bool:
        """Whether ``logits`` [vocab] at the decision position satisfy the spec (argmax criterion)."""
        top = int(logits.argmax())
        return top == self.target_id if self.target_id is not None else top != self.forbidden_id

    def margin(self, logits: torch.Tensor) -> float:
        """Logit margin, > 0 exactly when fixed: the wanted token over the best other (or the best other
        over the forbidden token)."""
        keep = self.target_id if self.target_id is not None else self.forbidden_id
        assert keep is not None
        others = logits.clone()
        others[..., keep] = float("-inf")
        gap = float(logits[..., keep] - others.max(dim=-1).values)
        return gap if self.target_id is not None else -gap


@dataclass(frozen=True)
class PopulationPrompt:
    """A prompt whose answer must stay: its ids and the unedited model's greedy continuation."""

    text: str
    input_ids: tuple[int, ...]
    continuation: tuple[int, ...]


def encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    """``text`` as the recorder encodes a plain prompt (with the tokenizer's special tokens)."""
    return tuple(int(i) for i in tokenizer(text).input_ids)


def family_prompt(text: str, spec: FailureSpec, tokenizer: Any) -> FamilyPrompt:
    """A family prompt from text and its spec; a ``forbidden`` spec refuses the first token of its text."""
    if spec.kind == "forbidden":
        if spec.regex:
            raise ConfigError(f"prompt {text!r}: a regex forbidden spec names no single token to refuse")
        ids = tokenizer(spec.text, add_special_tokens=False).input_ids
        return FamilyPrompt(text, encode(tokenizer, text), forbidden_id=int(ids[0]))
    return FamilyPrompt(text, encode(tokenizer, text), target_id=spec.target_id(0))


def incident_prompt(bundle: Any) -> FamilyPrompt:
    """The incident of ``bundle`` as a family prompt: its prompt and generated tokens up to the decision
    step, the spec's token at that step (or the observed token, for a ``forbidden`` spec)."""
    if not bundle.failure:
        raise BundleError(f"bundle {bundle.id}: no failure spec, so nothing for an edit to fix")
    spec = FailureSpec.from_dict(bundle.failure)
    step = int(bundle.outputs.get("decision_step") or 0)
    generated = [int(i) for i in bundle.outputs["generated_ids"]]
    ids = tuple(int(i) for i in bundle.inputs["input_ids"]) + tuple(generated[:step])
    text = str(bundle.inputs.get("prompt") or "")
    if spec.kind == "forbidden":
        return FamilyPrompt(text, ids, forbidden_id=generated[step])
    return FamilyPrompt(text, ids, target_id=spec.target_id(step))


def read_prompts(path: str | Path, tokenizer: Any) -> tuple[list[FamilyPrompt], list[str]]:
    """JSON lines ``{"prompt", "expected"}`` / ``{"prompt", "forbidden"}`` (family prompts) and
    ``{"prompt"}`` alone (neighbourhood prompts, whose answers must stay)."""
    family: list[FamilyPrompt] = []
    neighbours: list[str] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"prompts {path}: cannot be read ({exc.strerror or exc})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"prompts {path}:{number}: not JSON ({exc})") from exc
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or len(item) > 2:
            raise ConfigError(f"prompts {path}:{number}: expected {{'prompt', 'expected'|'forbidden'}}, got {item!r}")
        if "expected" in item:
            family.append(
                family_prompt(item["prompt"], FailureSpec.expected(str(item["expected"]), tokenizer), tokenizer)
            )
        elif "forbidden" in item:
            spec = FailureSpec.forbidden(str(item["forbidden"]))
            family.append(family_prompt(item["prompt"], spec, tokenizer))
        elif len(item) == 1:
            neighbours.append(item["prompt"])
        else:
            raise ConfigError(f"prompts {path}:{number}: unknown key in {sorted(item)}; use expected or forbidden")
    return family, neighbours


@torch.inference_mode()
def greedy_continuation(model: nn.Module, ids: Sequence[int], n: int, eos: int | None = None) -> tuple[int, ...]:
    """``n`` greedy tokens after ``ids`` (stopping after ``eos``), one prompt pass then one cached pass
    per token, as ``generate`` runs them: a hook spec acts on the prompt pass only."""
    device = input_device(model)
    x = torch.tensor([list(ids)], device=device)
    out: list[int] = []
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = None
    for _ in range(n):
        result = model(input_ids=x, use_cache=True, **{name: cache})
        cache = getattr(result, name, None)
        token = int(result.logits[0, -1].argmax())
        out.append(token)
        if token == eos:
            break
        x = torch.tensor([[token]], device=device)
    return tuple(out)


def population_prompts(
    model: nn.Module, tokenizer: Any, prompts: Iterable[str | Sequence[int]], *, new_tokens: int = 8
) -> list[PopulationPrompt]:
    """Population prompts (texts, or token ids such as a bundle's) with ``model``'s greedy continuation:
    call it on the *unedited* model."""
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    for prompt in prompts:
        ids = encode(tokenizer, prompt) if isinstance(prompt, str) else tuple(int(i) for i in prompt)
        text = prompt if isinstance(prompt, str) else str(tokenizer.decode(list(ids)))
        out.append(PopulationPrompt(text, ids, greedy_continuation(model, ids, new_tokens, eos)))
    return out


def _words(text: str) -> list[str]:
    return [w.casefold() for w in re.findall(r"\w+", text)]


def _runs(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def subject_span(texts: Sequence[str], *, template: Sequence[str] = ()) -> str:
    """The family's subject: the longest word run every text holds, without template words if possible
    (see module docstring). ``ConfigError`` when the texts share no word."""
    if not texts:
        raise ConfigError("subject_span needs at least one prompt text")
    shared = set.intersection(*(_runs(_words(t)) for t in texts))
    if not shared:
        raise ConfigError(f"prompts {list(texts)!r} share no word to take as their subject; name the subject")
    counts = Counter(w for t in template for w in set(_words(t)))
    common = {w for w, n in counts.items() if 2 * n >= len(template)}
    best = max(
        shared,
        key=lambda run: (-len(common.intersection(run)), _named(run, texts), sum(len(w) for w in run), len(run), run),
    )
    return " ".join(best)


def _named(run: tuple[str, ...], texts: Sequence[str]) -> bool:
    """Whether ``run`` is written as a name in every text (each word capitalised), and somewhere other
    than as the text's first words (where any word is capitalised): "New Zealand" in "The capital of New
    Zealand is", not "of new zealand is", when the population's phrasing is another one."""
    mid = False
    for text in texts:
        words = re.findall(r"\w+", text)
        folded = [w.casefold() for w in words]
        starts = [i for i in range(len(words) - len(run) + 1) if tuple(folded[i : i + len(run)]) == run]
        named = [i for i in starts if all(w[:1].isupper() for w in words[i : i + len(run)])]
        if not named:
            return False
        mid = mid or any(i > 0 for i in named)
    return mid


def subject_positions(tokenizer: Any, prompts: Sequence[FamilyPrompt], subject: str) -> list[int]:
    """Per prompt, the position of the token holding the last character of ``subject``'s last occurrence
    (words matched case-insensitively, any non-word characters between them)."""
    words = [re.escape(w) for w in re.findall(r"\w+", subject)]
    if not words:
        raise ConfigError(f"subject {subject!r} has no word")
    pattern = re.compile(r"\b" + r"\W+".join(words) + r"\b", re.IGNORECASE)
    out = []
    for prompt in prompts:
        ids = list(prompt.input_ids)
        text = str(tokenizer.decode(ids))
        matches = list(pattern.finditer(text))
        if not matches:
            raise ConfigError(f"subject {subject!r} does not occur in prompt {text!r}")
        end = matches[-1].end()
        out.append(next(i for i in range(len(ids)) if len(str(tokenizer.decode(ids[: i + 1]))) >= end))
    return out
