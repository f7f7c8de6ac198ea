"""Failure specs: what "wrong" means for an incident, at token level.

    spec = FailureSpec.expected(" Canberra", tokenizer)
    step = spec.decision_step(generated_ids, tokenizer)    # first token that departs, or None
    spec.metric(logits, observed_id=...)                   # > 0 once the failure is fixed

Kinds: ``expected`` (the correct continuation; fixed when its token at the decision step becomes the
argmax), ``forbidden`` (text or regex that must not be produced; fixed when the token that starts it is
no longer the argmax), ``label`` (an expected class / token id at the first step).

Tokenisation traps are named, not fixed: ``expected("Canberra")`` (no leading space) targets the token
"Can" of a glued-on word where the model would say " Canberra", and a text that tokenises into byte
pieces pins the fix to one byte of a character. ``tokenization_warnings`` says which tokens will be used
and the likely intended form; ``expected``/``forbidden`` log them (logger ``forensics.failure``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from forensics.errors import ConfigError, ReplayError

__all__ = ["FailureKind", "FailureSpec", "tokenization_warnings"]

log = logging.getLogger(__name__)

FailureKind = Literal["expected", "forbidden", "label"]


@dataclass(frozen=True)
class FailureSpec:
    kind: FailureKind
    text: str = ""
    token_ids: tuple[int, ...] = field(default=())
    regex: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("expected", "forbidden", "label"):
            raise ConfigError(f"failure kind {self.kind!r} not allowed; use expected, forbidden or label")
        if self.kind == "expected" and not self.token_ids:
            raise ConfigError("failure spec 'expected' needs a non-empty text that tokenizes to ≥ 1 token")
        if self.kind == "forbidden" and not self.text:
            raise ConfigError("failure spec 'forbidden' needs the text or regex that must not appear")
        if self.kind == "label" and len(self.token_ids) != 1:
            raise ConfigError(f"failure spec 'label' needs exactly one label id, got {list(self.token_ids)}")

    @classmethod
    def expected(cls, text: str, tokenizer: Any, *, warn: bool = True) -> FailureSpec:
        """The spec for ``text`` as ``tokenizer`` splits it; ``warn`` logs its tokenisation traps."""
        spec = cls("expected", text, tuple(tokenizer(text, add_special_tokens=False).input_ids))
        if warn:
            _log_warnings(spec, tokenizer)
        return spec

    @classmethod
    def forbidden(cls, text: str, *, regex: bool = False, tokenizer: Any = None, warn: bool = True) -> FailureSpec:
        """With a ``tokenizer`` (and ``warn``), a plain text that tokenises into byte pieces is logged."""
        spec = cls("forbidden", text, (), regex)
        if warn and tokenizer is not None:
            _log_warnings(spec, tokenizer)
        return spec

    @classmethod
    def label(cls, label_id: int, text: str = "") -> FailureSpec:
        return cls("label", text, (int(label_id),))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "text": self.text, "token_ids": list(self.token_ids), "regex": self.regex}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailureSpec:
        try:
            return cls(
                data["type"],
                str(data.get("text", "")),
                tuple(int(t) for t in data.get("token_ids", ())),
                bool(data.get("regex", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"failure spec {data!r} is malformed: {exc}") from exc

    def decision_step(self, generated: list[int], tokenizer: Any) -> int | None:
        """Index of the first generated token that violates the spec; ``None`` when none does."""
        if self.kind in ("expected", "label"):
            for i, want in enumerate(self.token_ids):
                if i >= len(generated) or generated[i] != want:
                    return i if i < len(generated) else None
            return None
        return self._forbidden_step(generated, tokenizer)

    def _forbidden_step(self, generated: list[int], tokenizer: Any) -> int | None:
        pattern = re.compile(self.text if self.regex else re.escape(self.text))
        for i in range(len(generated)):
            match = pattern.search(tokenizer.decode(generated[: i + 1]))
            if match is not None:  # complete once token i is out; it began in the token covering its start
                return next(j for j in range(i + 1) if len(tokenizer.decode(generated[: j + 1])) > match.start())
        return None

    def target_id(self, step: int) -> int | None:
        """The token that should be the argmax at ``step`` (None for forbidden specs)."""
        if self.kind == "forbidden":
            return None
        return self.token_ids[step] if step < len(self.token_ids) else None

    def metric(self, logits: torch.Tensor, *, observed_id: int, target_id: int | None) -> torch.Tensor:
        """The decision margin per row of ``logits`` [K, vocab]; > 0 exactly when the failure is fixed.

        ``expected``/``label``: logit(target) - the best other logit (the observed token on the incident,
        but whichever token leads once an intervention moves the argmax elsewhere). ``forbidden``: the
        best other logit - logit(forbidden).
        """
        keep = target_id if target_id is not None else observed_id
        if not 0 <= keep < logits.shape[-1]:  # a bundle whose spec names a token this model does not have
            which = "target" if target_id is not None else "observed"
            raise ReplayError(
                f"failure spec: {which} token id {keep} is outside the model's vocabulary "
                f"(expected 0 to {logits.shape[-1] - 1}); was the bundle recorded on another model?"
            )
        others = logits.clone()
        others[:, keep] = float("-inf")
        best_other = others.max(dim=-1).values
        return logits[:, keep] - best_other if target_id is not None else best_other - logits[:, keep]

    def fixed(self, logits: torch.Tensor, *, observed_id: int, target_id: int | None) -> torch.Tensor:
        """Per row: is the failure gone at the decision step (argmax criterion)?"""
        top = logits.argmax(dim=-1)
        return top == target_id if target_id is not None else top != observed_id


def tokenization_warnings(spec: FailureSpec, tokenizer: Any, *, prompt: str | None = None) -> list[str]:
    """The tokenisation traps of ``spec`` under ``tokenizer``, each a sentence naming the tokens used.

    ``prompt`` (when known) tells whether a missing leading space is intended: after a prompt that ends
    in whitespace the continuation starts without one.
    """
    if spec.kind == "label" or (spec.kind == "forbidden" and spec.regex) or not spec.text:
        return []
    ids = list(spec.token_ids) or _ids(tokenizer, spec.text)
    out = []
    glued = _glued_word(spec.text, ids, tokenizer, prompt)
    if glued is not None and spec.kind == "expected":
        out.append(
            f"expected text {spec.text!r} has no leading space: it tokenises to {_names(ids, tokenizer)}, so "
            f"the target is {_piece(ids[0], tokenizer)!r}, a word glued to the text before it; after a space "
            f"the model would say {' ' + spec.text!r} = {_names(glued, tokenizer)}. "
            f"Likely intended: {' ' + spec.text!r}"
        )
    if prompt is not None and prompt[-1:].isspace() and spec.text[:1].isspace() and spec.kind == "expected":
        out.append(
            f"the prompt ends with whitespace and expected text {spec.text!r} starts with more: the target "
            f"is {_piece(ids[0], tokenizer)!r}. Likely intended: {spec.text.lstrip()!r}"
        )
    if any(_is_byte_piece(i, tokenizer) for i in ids) and "\ufffd" not in spec.text:
        out.append(_byte_piece_warning(spec, ids, tokenizer))
    return out


def _log_warnings(spec: FailureSpec, tokenizer: Any) -> None:
    for message in tokenization_warnings(spec, tokenizer):
        log.warning("%s", message)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _piece(token_id: int, tokenizer: Any) -> str:
    return str(tokenizer.decode([token_id]))


def _is_byte_piece(token_id: int, tokenizer: Any) -> bool:
    """A token that is part of a character: it decodes to the replacement character on its own."""
    return "\ufffd" in _piece(token_id, tokenizer)


def _names(ids: list[int], tokenizer: Any) -> str:
    """``[322 'Can', 342 'ber']``; a byte piece shows as its raw vocabulary entry (``<0xC3>``, ``Ã``)."""

    def name(i: int) -> str:
        if _is_byte_piece(i, tokenizer):
            return f"{i} {tokenizer.convert_ids_to_tokens(i)!r} (byte piece)"
        return f"{i} {_piece(i, tokenizer)!r}"

    return "[" + ", ".join(name(i) for i in ids) + "]"


def _glued_word(text: str, ids: list[int], tokenizer: Any, prompt: str | None) -> list[int] | None:
    """The ids of ``" " + text`` when the leading space would change the first token into a word-start
    token (the "Canberra" trap); None when the text starts with whitespace or the space is intended."""
    if not text[:1].isalnum() or (prompt is not None and (prompt[-1:].isspace() or not prompt)):
        return None
    spaced = _ids(tokenizer, " " + text)
    if not spaced or spaced[0] == ids[0] or _is_byte_piece(ids[0], tokenizer):
        return None
    head = _piece(spaced[0], tokenizer)
    if not head.startswith(" ") or not head.strip() or _is_byte_piece(spaced[0], tokenizer):
        return None  # the tokenizer adds its own prefix space, " " is a token of its own, or no word starts
    return spaced


def _byte_piece_warning(spec: FailureSpec, ids: list[int], tokenizer: Any) -> str:
    """Names the first character that has no token of its own and the byte piece a step would target."""
    first = next(k for k, i in enumerate(ids) if _is_byte_piece(i, tokenizer))
    known = str(tokenizer.decode(ids[: first + 1])).split("\ufffd")[0]  # whole characters before the split one
    text = f"{spec.kind} text {spec.text!r} tokenises into byte pieces: {_names(ids, tokenizer)} will be used"
    spaced = [] if spec.text[:1].isspace() else _ids(tokenizer, " " + spec.text)
    if first == 0 and spaced and not _is_byte_piece(spaced[0], tokenizer) and _piece(spaced[0], tokenizer).strip():
        return text + f". Likely intended: {' ' + spec.text!r} = {_names(spaced, tokenizer)}"
    piece = f"{ids[first]} {tokenizer.convert_ids_to_tokens(ids[first])!r}"
    if not spec.text.startswith(known) or len(known) >= len(spec.text):
        return text + f"; a decision step there targets the single byte piece {piece}, not a character"
    char = spec.text[len(known)]
    return text + (
        f". Likely intended: the character {char!r} (UTF-8 {char.encode('utf-8').hex(' ').upper()}), "
        f"which this vocabulary spells only in byte pieces, so a decision step inside it targets the "
        f"single byte piece {piece}, not the character"
    )
