"""Prefix reuse: an intervention set whose earliest module is in decoder layer l does not need layers
0..l-1 — the recording already holds the residual stream entering layer l.

    reuse = PrefixReuse(model, bundle, length=T)
    with reuse.skipping(layer=l, rows=K, device=dev, dtype=torch.float32):
        model(input_ids)      # layers < l return the recorded residual at once; l..L run for real

Layers below l get a stub ``forward`` (an instance attribute, removed in ``finally``) that returns the
recorded output of layer l-1, expanded to the batch. Everything else — embeddings, masks, rotary
tables — is computed by the model itself, so this works for any family whose decoder layers form a
``ModuleList`` called in order. Where that is not known, it falls back to a full forward and says why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from forensics.errors import ModelError
from forensics.hooks import HookSet
from forensics.models.arch import arch_for
from forensics.replay.interventions import InterventionSet

__all__ = ["PrefixReuse"]

log = logging.getLogger(__name__)


class PrefixReuse:
    def __init__(self, model: nn.Module, bundle: Any, *, length: int, enabled: bool = True) -> None:
        self.model, self.bundle, self.length = model, bundle, length
        self.reason: str | None = None if enabled else "disabled by configuration"
        self.layers: list[str] = []
        try:
            self.layers = arch_for(model).layer_names(model)
        except ModelError as exc:
            self.reason = f"no family table ({exc}); full forward passes"
        self.index = {name: i for i, name in enumerate(self.layers)}
        self.tuple_output: bool | None = None
        self._resid: dict[int, torch.Tensor] = {}
        if self.reason:
            log.info("prefix reuse off for %s: %s", getattr(bundle, "id", "?"), self.reason)

    def layer_of(self, module: str) -> int:
        """Decoder layer that computes ``module`` (0 for anything outside the decoder layers)."""
        parts = module.split(".")
        for cut in range(len(parts), 0, -1):
            idx = self.index.get(".".join(parts[:cut]))
            if idx is not None:
                return idx
        return 0

    def start(self, ivs: InterventionSet) -> int:
        """First layer that must run for ``ivs`` (the last layer + 1 for the empty set)."""
        if self.reason or self.tuple_output is None:
            return 0
        start = min((self.layer_of(iv.module) for iv in ivs), default=len(self.layers))
        while start > 0 and self.layers[start - 1] not in self.bundle.modules:
            start -= 1  # the residual entering `start` was not recorded: begin earlier
        return start

    @contextmanager
    def skipping(self, layer: int, rows: int, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
        if self.tuple_output is None and self.layers and not self.reason:
            with HookSet(self.model) as hooks:
                hooks.forward(self.layers[0], self._detect)
                yield
            return
        if layer <= 0 or self.reason:
            yield
            return
        value = self._recorded(layer - 1, device, dtype).expand(rows, -1, -1)
        out: Any = (value,) if self.tuple_output else value
        stubbed = [self.model.get_submodule(name) for name in self.layers[:layer]]
        try:
            for module in stubbed:
                module.forward = _stub(out)
            yield
        finally:
            for module in stubbed:
                module.__dict__.pop("forward", None)

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
        self.tuple_output = isinstance(output, tuple)

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


class _Detected(Exception):
    """Raised from the layer-0 hook once the output type is known, to skip the rest of the model."""
