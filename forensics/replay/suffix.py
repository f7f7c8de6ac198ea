"""Suffix reuse: in a causal model, positions before the first one an intervention set changes are the
incident's own in every layer, so are their keys and values. One plain pass caches them; a set whose
first changed position is p then runs only positions p..T-1, attending to that cache.

    reuse = SuffixReuse(model, input_ids)
    p = reuse.position(ivs)                        # T-1 for a "last"-position set
    model(input_ids[:, p:], **reuse.kwargs(p, rows))   # a fresh cache of positions < p, `rows` per layer

Works where the model takes and returns a ``DynamicCache`` whose layers keep every position (checked
on the first use); otherwise it says why and every pass covers all positions.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from forensics.replay.interventions import InterventionSet
from forensics.replay.plan import resolve_positions

__all__ = ["SuffixReuse"]

log = logging.getLogger(__name__)


class SuffixReuse:
    def __init__(self, model: nn.Module, input_ids: torch.Tensor, *, enabled: bool = True) -> None:
        self.model, self.input_ids = model, input_ids  # [1, T]
        self.length = int(input_ids.shape[1])
        params = inspect.signature(model.forward).parameters
        self.arg = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
        self.reason: str | None = None if enabled else "disabled by configuration"
        if self.arg is None and not self.reason:
            self.reason = f"{type(model).__name__}.forward takes no cache"
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer [1, heads, T, head_dim]
        self.forward_passes = 0

    def position(self, ivs: InterventionSet) -> int:
        """First position ``ivs`` may change (T-1 for the empty set: only the last logits are read)."""
        if self.reason:
            return 0
        return min((min(resolve_positions(iv, self.length)) for iv in ivs), default=self.length - 1)

    def kwargs(self, position: int, rows: int | Sequence[int]) -> dict[str, Any]:
        """Forward kwargs for a pass over positions ``position``..T-1 with ``rows`` batch rows (or
        ``rows[l]`` at decoder layer l): a fresh cache of the incident's keys and values before
        ``position``. Empty when there is nothing to reuse: then the pass covers every position."""
        kv = self._cached() if position > 0 else None
        if kv is None:
            return {}
        from transformers import DynamicCache

        per_layer = [rows] * len(kv) if isinstance(rows, int) else list(rows)
        if len(per_layer) != len(kv):
            per_layer = [max(per_layer)] * len(kv)
        cache = DynamicCache(config=getattr(self.model, "config", None))
        for layer, ((keys, values), n) in enumerate(zip(kv, per_layer, strict=True)):
            cache.update(
                keys[:, :, :position].expand(n, -1, -1, -1), values[:, :, :position].expand(n, -1, -1, -1), layer
            )
        return {self.arg or "past_key_values": cache, "use_cache": True}

    def _cached(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if self._kv is None and not self.reason:
            self._kv = self._learn()
        return self._kv

    @torch.inference_mode()
    def _learn(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """One plain pass over the incident, keeping every layer's keys and values."""
        from transformers import DynamicCache

        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.model.forward).parameters else {}
        out = self.model(input_ids=self.input_ids, use_cache=True, **keep)
        self.forward_passes += 1
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        kv = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers or []]
        if (
            not kv
            or type(cache) is not DynamicCache
            or not all(
                isinstance(k, torch.Tensor)
                and isinstance(v, torch.Tensor)
                and k.shape[-2] == v.shape[-2] == self.length
                for k, v in kv
            )
        ):
            self.reason = f"{type(cache).__name__} does not keep every position's keys and values"
            log.info("suffix reuse off: %s", self.reason)
            return None
        return [(k, v) for k, v in kv if k is not None and v is not None]
