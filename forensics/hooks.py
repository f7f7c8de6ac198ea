"""Hooks that live and die inside one ``with`` block.

    with HookSet(model) as hooks:
        hooks.forward("model.layers.3", fn)       # fn(module, inputs, output) -> output | None
        model(input_ids)
    # every hook is gone here, also when the body raised

Module outputs differ by architecture: a tensor, or a tuple whose first element is the tensor
(attention blocks). ``primary`` and ``with_primary`` hide that difference.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from forensics.models.arch import get_module

__all__ = ["HookSet", "primary", "with_primary"]

ForwardHook = Callable[[nn.Module, Any, Any], Any]


def primary(output: Any) -> torch.Tensor:
    """The activation tensor a module produced (first element of a tuple or list output)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"module output of type {type(output).__name__} carries no activation tensor")


def with_primary(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its activation tensor replaced by ``new`` (same structure: a tuple or a list)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, list):
        return [new, *output[1:]]
    return (new, *output[1:])


class HookSet:
    """Owns a list of hook handles; removes them newest first, idempotently."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list[RemovableHandle] = []

    def forward(self, name: str, fn: ForwardHook) -> None:
        self._handles.append(get_module(self.model, name).register_forward_hook(fn))

    def forward_on(self, module: nn.Module, fn: ForwardHook) -> None:
        self._handles.append(module.register_forward_hook(fn))

    def forward_pre(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
