"""Batch scheduling and the cost model of a replay: which intervention sets share a forward pass.

    >>> chunk_indices([(0, 2), (0, 0), (0, 1)], 2, layers=4, pass_cost=float("inf"))
    [[1], [2, 0]]
    >>> chunk_indices([], 2, layers=4, pass_cost=float("inf"))
    []

Sets are keyed by (first position they change, first decoder layer they need). Keys sharing a first
position form a group unless a pass of their own saves less than a pass costs (``pass_cost``); each
group is cut into full chunks of ``size``, latest layers first, so the one partial chunk starts earliest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "PASS_DISPATCH_MACS",
    "PASS_WEIGHT_POSITIONS",
    "budget_batch_size",
    "chunk_indices",
    "pass_cost",
    "position_groups",
]

Key = tuple[int, int]  # (first changed position, first decoder layer)


def chunk_indices(keys: Sequence[Key], size: int, *, layers: int, pass_cost: float) -> list[list[int]]:
    """Indices grouped by first changed position, ordered by first layer and cut into full chunks;
    rows within a chunk ascend by first layer. No keys, no chunks."""
    out: list[list[int]] = []
    for order in position_groups(keys, layers=layers, pass_cost=pass_cost).values():
        order.sort(key=lambda i: (-keys[i][1], i))
        chunks = [order[begin : begin + size] for begin in range(0, len(order), size)]
        out += [sorted(chunk, key=lambda i: (keys[i][1], i)) for chunk in reversed(chunks)]
    return out


def position_groups(keys: Sequence[Key], *, layers: int, pass_cost: float) -> dict[int, list[int]]:
    """Indices by first changed position; a group joins the next earlier one unless its own pass
    saves more row x layer x position work than a pass costs."""
    groups: dict[int, list[int]] = {}
    for i, (position, _) in enumerate(keys):
        groups.setdefault(position, []).append(i)
    merged: dict[int, list[int]] = {}
    positions = sorted(groups, reverse=True)
    below_each: list[int | None] = [*positions[1:], None] if positions else []  # no keys: no groups
    carry: list[int] = []
    for here, below in zip(positions, below_each, strict=True):
        rows = carry + groups[here]
        saved = 0 if below is None else sum(layers - keys[i][1] for i in rows) * (here - below)
        if below is not None and saved < pass_cost:
            carry = rows
        else:
            merged[here], carry = rows, []
    return merged


# What one more forward pass costs beyond its rows' work, per decoder layer: it streams every weight
# from memory once, about as long as pushing ~32 more positions through (measured on smollm2-135m, fp32,
# 2 CPU cores: a 1-token pass takes ~75 ms, a layer x position of work ~0.07 ms), plus Python dispatch
# per module (~0.1 ms per layer, i.e. ~2.5M multiply-adds at ~50 GFLOP/s).
PASS_WEIGHT_POSITIONS = 32
PASS_DISPATCH_MACS = 2.5e6


def pass_cost(model: torch.nn.Module, layers: Sequence[str]) -> float:
    """A pass's overhead in rows x layers x positions of work: splitting a pass in two pays off only
    above this. ~1000 for a 30-layer 135M model; for tiny test models dispatch dominates (never split)."""
    if not layers:
        return float("inf")
    macs = sum(p.numel() for p in model.get_submodule(layers[0]).parameters())  # per position
    return len(layers) * (PASS_WEIGHT_POSITIONS + PASS_DISPATCH_MACS / max(1, macs))


def budget_batch_size(max_memory: int | None, batch_size: int, length: int, model: torch.nn.Module) -> int:
    """Rows per forward pass: ``batch_size``, lowered so one pass stays within half of ``max_memory``
    bytes (per row: ~12 d_model-wide float32 tensors per position, the attention scores, and the keys
    and values of every layer that a suffix-reuse pass copies per row)."""
    if not max_memory:
        return batch_size
    config: Any = getattr(model, "config", None)
    d = int(getattr(config, "hidden_size", getattr(config, "n_embd", 1024)))
    heads = int(getattr(config, "num_attention_heads", getattr(config, "n_head", 16)))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    layers = int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 24)))
    kv = 2 * layers * kv_heads * (d // max(1, heads))
    per_row = 4 * length * (12 * d + length * heads + kv)
    return max(1, min(batch_size, (max_memory // 2) // max(1, per_row)))
