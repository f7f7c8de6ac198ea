"""Failure specs: what "wrong" means for an incident, at token level.

    spec = FailureSpec.expected(" Canberra", tokenizer)
    step = spec.decision_step(generated_ids, tokenizer)    # first token that departs, or None
    spec.metric(logits, observed_id=...)                   # > 0 once the failure is fixed

Kinds: ``expected`` (the correct continuation; fixed when its token at the decision step becomes the
argmax), ``forbidden`` (text or regex that must not be produced; fixed when the token that starts it is
no longer the argmax), ``label`` (an expected class / token id at the first step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from forensics.errors import ConfigError

__all__ = ["FailureKind", "FailureSpec"]

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
    def expected(cls, text: str, tokenizer: Any) -> FailureSpec:
        return cls("expected", text, tuple(tokenizer(text, add_special_tokens=False).input_ids))

    @classmethod
    def forbidden(cls, text: str, *, regex: bool = False) -> FailureSpec:
        return cls("forbidden", text, (), regex)

    @classmethod
    def label(cls, label_id: int, text: str = "") -> FailureSpec:
        return cls("label", text, (int(label_id),))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "text": self.text, "token_ids": list(self.token_ids), "regex": self.regex}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailureSpec:
        try:
            return cls(data["type"], str(data.get("text", "")), tuple(int(t) for t in data.get("token_ids", ())),
                       bool(data.get("regex", False)))
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
        """Logit difference per row of ``logits`` [K, vocab]: target - observed; > 0 means fixed.

        For forbidden specs: best other token - forbidden (observed) token.
        """
        observed = logits[:, observed_id]
        if target_id is not None:
            return logits[:, target_id] - observed
        others = logits.clone()
        others[:, observed_id] = float("-inf")
        return others.max(dim=-1).values - observed

    def fixed(self, logits: torch.Tensor, *, observed_id: int, target_id: int | None) -> torch.Tensor:
        """Per row: is the failure gone at the decision step (argmax criterion)?"""
        top = logits.argmax(dim=-1)
        return top == target_id if target_id is not None else top != observed_id
