"""Per-head outputs: the input of every attention out-projection, captured from a live forward pass.

    heads = capture_heads(model, input_ids)             # {"model.layers.3.self_attn": [T, heads*head_dim]}
    heads["model.layers.3.self_attn"][:, h * head_dim:(h + 1) * head_dim]   # head h at every position
    contributions(model, heads)["model.layers.3.self_attn"][:, h]          # [T, hidden]: what head h adds

Bundles record module outputs; a head's output is inside the attention block, before the projection
mixes the heads. ``patch`` and ``mean`` of a head take their values from here: one plain forward pass
over the source's own tokens on the model that produced it.

A head's *contribution* is its output through its own columns of the out-projection, ``W_O[:, h] z_h``
(bias excluded): what the head adds to the residual stream. On one model, replacing a head's output
and replacing its contribution are the same intervention; across two versions of a model whose
out-projections differ (a regression planted or trained into ``W_O``), only the contribution carries
the difference, so a patch from a reference model replaces the contribution (``SourceBank.set_heads``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from forensics.errors import ModelError
from forensics.hooks import HookSet
from forensics.models.arch import arch_for, get_module
from forensics.models.placement import input_device, module_tensor

__all__ = ["attention_modules", "capture_heads", "contributions", "head_weights"]


def attention_modules(model: nn.Module) -> list[str]:
    """Every decoder layer's attention module, in order ([] for a family without one)."""
    spec = arch_for(model)
    return [] if spec.attn is None else [f"{layer}.{spec.attn}" for layer in spec.layer_names(model)]


@torch.inference_mode()
def capture_heads(model: nn.Module, input_ids: torch.Tensor | list[int]) -> dict[str, np.ndarray]:
    """{attention module: [T, num_heads * head_dim] float32}: what each out-projection read, one pass."""
    spec = arch_for(model)
    device = input_device(model)
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


def head_weights(model: nn.Module, attn: str) -> torch.Tensor:
    """[heads, head_dim, hidden]: head h's block of ``attn``'s out-projection, so that its contribution
    at a position is ``z_h @ head_weights(...)[h]`` (Linear stores [out, in], GPT-2's Conv1D [in, out])."""
    spec = arch_for(model)
    proj = get_module(model, spec.head_proj(attn))
    heads, head_dim = spec.head_slices(model, attn)
    try:
        weight = module_tensor(proj, "weight")  # an offloaded projection holds only a meta placeholder
    except ModelError:
        raise ModelError(f"{spec.head_proj(attn)}: no weight tensor to split into heads") from None
    weight = weight.detach()
    weight = weight if type(proj).__name__ == "Conv1D" else weight.T  # [in, out]
    return weight.reshape(heads, head_dim, weight.shape[-1])


@torch.inference_mode()
def contributions(model: nn.Module, heads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{attention module: [T, num_heads, hidden] float32}: each head's contribution at each position, from
    ``capture_heads`` values and ``model``'s out-projections (the weights that produced them)."""
    out = {}
    for attn, z in heads.items():
        w = head_weights(model, attn).to("cpu", torch.float32)  # [H, D, hidden]
        zt = torch.from_numpy(np.ascontiguousarray(z)).reshape(z.shape[0], w.shape[0], w.shape[1])  # [T, H, D]
        out[attn] = torch.einsum("thd,hdo->tho", zt, w).numpy()
    return out


def _store(out: dict[str, np.ndarray], name: str) -> Any:
    def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
        out[name] = args[0][0].detach().to("cpu", torch.float32).numpy()

    return hook
