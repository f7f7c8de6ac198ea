"""Prefix reuse: an intervention set whose earliest module is in decoder layer l does not need layers
0..l-1 — the recording already holds the residual stream entering layer l.

    reuse = PrefixReuse(model, bundle, length=T)
    with reuse.skipping(layer=l, rows=K, device=dev, dtype=torch.float32):
        model(input_ids)      # layers < l return the recorded residual at once; l..L run for real

Layers below l get a stub ``forward`` (an instance attribute, removed in ``finally``) that returns the
recorded output of layer l-1, expanded to the batch. Everything else — embeddings, masks, rotary
tables — is computed by the model itself, so this works for any family whose decoder layers form a
``ModuleList`` called in order. Where that is not known, it falls back to a full forward and says why.

``growing`` goes further for a batch whose rows start at different layers: the model is fed ONE row
(so masks and rotary tables have batch 1 and broadcast), and each row joins the batch at its own first
layer, appended after the output of the layer before. Every row then runs exactly the layers it needs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from forensics.errors import ModelError, ReplayError
from forensics.hooks import HookSet, primary, with_primary
from forensics.models.arch import ArchSpec, arch_for
from forensics.replay.interventions import InterventionSet

__all__ = ["PrefixReuse"]

log = logging.getLogger(__name__)


class PrefixReuse:
    def __init__(self, model: nn.Module, bundle: Any, *, length: int, enabled: bool = True) -> None:
        self.model, self.bundle, self.length = model, bundle, length
        self.reason: str | None = None if enabled else "disabled by configuration"
        self.layers: list[str] = []
        self.spec: ArchSpec | None = None
        try:
            self.spec = arch_for(model)
            self.layers = self.spec.layer_names(model)
        except ModelError as exc:
            self.reason = f"no family table ({exc}); full forward passes"
        self.tuple_output: bool | None = None
        self.list_output = False
        self.grow_refused: str | None = None  # why rows may not join at their own layer (``refuse_growing``)
        self._resid: dict[int, torch.Tensor] = {}
        if self.reason:
            log.info("prefix reuse off for %s: %s", getattr(bundle, "id", "?"), self.reason)

    def layer_of(self, module: str) -> int:
        """Decoder layer that computes ``module`` (0 for anything outside the decoder layers)."""
        layer = self.spec.layer_of(module) if self.spec is not None else None
        return layer if layer is not None and layer < len(self.layers) else 0

    def inside(self, module: str) -> bool:
        """Whether ``module`` is a decoder layer or part of one."""
        layer = self.spec.layer_of(module) if self.spec is not None else None
        return layer is not None and layer < len(self.layers)

    def can_grow(self, sets: Sequence[InterventionSet]) -> bool:
        """Whether ``growing`` applies: reuse is on and every module is inside a decoder layer (a hook on
        the embeddings or the final norm would see a batch of a different size than its plan)."""
        return (
            not self.reason
            and not self.grow_refused
            and self.tuple_output is not None
            and all(self.inside(iv.module) for ivs in sets for iv in ivs)
        )

    def refuse_growing(self, exc: Exception) -> None:
        """A growing pass failed (a model that reshapes its output to the batch of its input ids, which
        ``growing`` keeps at one row): from now on every row of a pass starts at its earliest layer."""
        if self.grow_refused:
            raise exc
        self.grow_refused = f"{type(exc).__name__}: {exc}"
        log.info("rows joining at their own layer are off for %s: %s", getattr(self.bundle, "id", "?"), exc)

    def start(self, ivs: InterventionSet) -> int:
        """First layer that must run for ``ivs`` (the last layer + 1 for the empty set)."""
        if self.reason or self.tuple_output is None:
            return 0
        start = min((self.layer_of(iv.module) for iv in ivs), default=len(self.layers))
        while start > 0 and self.layers[start - 1] not in self.bundle.modules:
            start -= 1  # the residual entering `start` was not recorded: begin earlier
        return start

    @contextmanager
    def skipping(
        self, layer: int, rows: int, device: torch.device, dtype: torch.dtype, offset: int = 0, end: int | None = None
    ) -> Iterator[None]:
        """Layers below ``layer`` return the recorded residual (positions ``offset``..``end``, ``rows`` rows)."""
        if self.tuple_output is None and self.layers and not self.reason:
            with HookSet(self.model) as hooks:
                hooks.forward(self.layers[0], self._detect)
                yield
            return
        if layer <= 0 or self.reason:
            yield
            return
        # contiguous: a block may view its input (openai-gpt's Conv1D runs before any norm copies it)
        value = self._recorded(layer - 1, device, dtype)[:, offset:end].expand(rows, -1, -1).contiguous()
        out: Any = ([value] if self.list_output else (value,)) if self.tuple_output else value
        stubbed = [self.model.get_submodule(name) for name in self.layers[:layer]]
        own = [module.__dict__.get("forward") for module in stubbed]  # accelerate's wrapper, when dispatched
        try:
            for module in stubbed:
                module.forward = _stub(out)
            yield
        finally:
            for module, forward in zip(stubbed, own, strict=True):
                module.__dict__.pop("forward", None)
                if forward is not None:
                    module.forward = forward

    @contextmanager
    def growing(
        self,
        starts: Sequence[int],
        device: torch.device,
        dtype: torch.dtype,
        offset: int = 0,
        end: int | None = None,
    ) -> Iterator[None]:
        """Row k joins the batch at layer ``starts[k]`` (ascending; feed the model one row). Rows starting
        at the first start come from the stubs (or the embeddings, expanded before layer 0); later rows
        are appended to the output of the layer before theirs, with that layer's recorded output."""
        if list(starts) != sorted(starts) or not starts:
            raise ReplayError(f"growing needs rows sorted by start layer, got {list(starts)}")
        joins = Counter(starts)
        first = starts[0]
        with HookSet(self.model) as hooks, self.skipping(first, joins[first], device, dtype, offset, end):
            if first == 0:
                hooks.forward_pre(self.model.get_submodule(self.layers[0]), _expander(joins[0]))
            for layer, rows in sorted(joins.items()):
                if layer > first:
                    value = self._recorded(layer - 1, device, dtype)[:, offset:end].expand(rows, -1, -1)
                    hooks.forward(self.layers[layer - 1], _appender(value))
            yield

    def detect(self, input_ids: torch.Tensor) -> None:
        """Learn whether decoder layers return a tuple: run the embeddings and layer 0 on one token and
        stop there, so ``start`` can plan prefix reuse before the first real forward pass."""
        if self.tuple_output is not None or self.reason or not self.layers:
            return
        with HookSet(self.model) as hooks:
            hooks.forward(self.layers[0], self._detect_and_stop)
            try:
                with torch.inference_mode():
                    self.model(input_ids=input_ids[:, :1], use_cache=False)
            except _Detected:
                pass
            except Exception as exc:
                log.debug("layer output detection failed (%s); learning it on the first replay", exc)

    def _detect(self, module: nn.Module, args: Any, output: Any) -> None:
        self.tuple_output = isinstance(output, (tuple, list))  # a list (openai-gpt's blocks) is held the same way
        self.list_output = isinstance(output, list)

    def _detect_and_stop(self, module: nn.Module, args: Any, output: Any) -> None:
        self._detect(module, args, output)
        raise _Detected

    def _recorded(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if layer not in self._resid:
            act = np.asarray(self.bundle.activation(self.layers[layer]))[: self.length]
            self._resid[layer] = torch.from_numpy(act.copy())[None]
        return self._resid[layer].to(device=device, dtype=dtype)


def _stub(value: Any) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return value

    return forward


def _expander(rows: int) -> Any:
    """Pre-hook on layer 0: the one-row embeddings, expanded to the rows that start there."""

    def hook(module: nn.Module, args: Any, kwargs: Any) -> Any:
        if args:
            return (args[0].expand(rows, -1, -1).contiguous(), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].expand(rows, -1, -1).contiguous()}

    return hook


def _appender(value: torch.Tensor) -> Any:
    """Forward hook on layer l-1: the rows that start at layer l join, with their recorded input."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        return with_primary(output, torch.cat([primary(output), value]))

    return hook


class _Detected(Exception):
    """Raised from the layer-0 hook once the output type is known, to skip the rest of the model."""
