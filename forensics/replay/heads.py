"""Per-head outputs: the input of every attention out-projection, captured from a live forward pass.

    heads = capture_heads(model, input_ids)             # {"model.layers.3.self_attn": [T, heads*head_dim]}
    heads["model.layers.3.self_attn"][:, h * head_dim:(h + 1) * head_dim]   # head h at every position

Bundles record module outputs; a head's output is inside the attention block, before the projection
mixes the heads. ``patch`` and ``mean`` of a head take their values from here: one plain forward pass
over the source's own tokens on the model that produced it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from forensics.errors import ModelError
from forensics.hooks import HookSet
from forensics.models.arch import arch_for, get_module

__all__ = ["attention_modules", "capture_heads"]


def attention_modules(model: nn.Module) -> list[str]:
    """Every decoder layer's attention module, in order ([] for a family without one)."""
    spec = arch_for(model)
    return [] if spec.attn is None else [f"{layer}.{spec.attn}" for layer in spec.layer_names(model)]


@torch.inference_mode()
def capture_heads(model: nn.Module, input_ids: torch.Tensor | list[int]) -> dict[str, np.ndarray]:
    """{attention module: [T, num_heads * head_dim] float32}: what each out-projection read, one pass."""
    spec = arch_for(model)
    device = next(model.parameters()).device
    ids = torch.as_tensor(input_ids, device=device).reshape(1, -1)
    out: dict[str, np.ndarray] = {}
    with HookSet(model) as hooks:
        for attn in attention_modules(model):
            try:
                proj = get_module(model, spec.head_proj(attn))
            except ModelError:
                continue
            hooks.forward_pre(proj, _store(out, attn))
        model(input_ids=ids, use_cache=False)
    return out


def _store(out: dict[str, np.ndarray], name: str) -> Any:
    def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
        out[name] = args[0][0].detach().to("cpu", torch.float32).numpy()

    return hook
