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

from forensics.errors import UnknownModuleError

__all__ = ["HookSet", "find_module", "primary", "with_primary"]

ForwardHook = Callable[[nn.Module, Any, Any], Any]


def primary(output: Any) -> torch.Tensor:
    """The activation tensor a module produced (first element of a tuple output)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"module output of type {type(output).__name__} carries no activation tensor")


def with_primary(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its activation tensor replaced by ``new`` (same structure)."""
    if isinstance(output, torch.Tensor):
        return new
    return (new, *output[1:])


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name``; an ``UnknownModuleError`` naming close matches otherwise."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = [n for n in names if n.split(".")[-1] == name.split(".")[-1]][:5] or names[:5]
        raise UnknownModuleError(f"module {name!r} not in {type(model).__name__}; e.g. {', '.join(close)}") from None


class HookSet:
    """Owns a list of hook handles; removes them newest first, idempotently."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._handles: list[RemovableHandle] = []

    def forward(self, name: str, fn: ForwardHook) -> None:
        self._handles.append(find_module(self.model, name).register_forward_hook(fn))

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
