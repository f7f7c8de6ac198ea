"""The first position (the attention sink) in one pass: how far each candidate moves its own stream.

    moved = first_position_moves(rp, [("model.layers.3.mlp", None, np.zeros(1))], columns)   # [R]

Position 0 reads only itself, so a pass over the first token alone, one batch row per candidate
written at position 0, measures how far each moves that position's state (the largest relative change
of any decoder layer's output there) without running the rest of the prompt or the LM head. AtP uses
it to pick the first-position candidates it replays exactly (``atp._correct_sink``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from forensics.hooks import HookSet, primary, with_primary
from forensics.models.arch import arch_for, get_module
from forensics.replay.replayer import Replayer

__all__ = ["SINK_BATCH", "SINK_EXACT", "SINK_EXACT_MAX", "SINK_ROWS", "Row", "first_position_moves"]

SINK_EXACT = 0.1  # share of first-position candidates whose estimate is replaced by an exact replay
SINK_EXACT_MAX = 64  # ... and at most this many: their count grows with layers x heads, each replay with tokens x
# parameters, so an uncapped share makes the correction grow faster than the model (bench/scale.py)
SINK_BATCH = 16  # sets per exact replay of first-position candidates: each touches its own module at every
# position (no suffix to skip), so a full replay batch holds ~30 modules' plans; 16 keeps the peak at the search's
SINK_ROWS = 256  # rows per pass over the first token (memory: ~10 MB of activations per pass on smollm2)

Row = tuple[str, int | None, np.ndarray]  # (module, head or None, the value written at position 0)


class _Stop(Exception):
    """Raised by the last decoder layer's hook: the sink pass needs no logits."""


def first_position_moves(
    rp: Replayer,
    rows: Sequence[Row],
    columns: Mapping[int, slice],
    starts: Sequence[int] | None = None,
) -> np.ndarray:
    """[R]: for each row, the largest relative change of a decoder layer's output at position 0 when the
    module's output there (a head's columns of its out-projection's input) is replaced by the value; one
    pass over the first token, R + 1 rows (the first unchanged), stopped before the LM head. ``starts``:
    each row's first layer that must run; the row then joins the batch there, from the recording
    (``PrefixReuse.growing``). Rows go in passes of up to ``SINK_ROWS`` (by first layer), which bounds
    the memory a pass takes."""
    order = sorted(range(len(rows)), key=lambda r: starts[r]) if starts is not None else list(range(len(rows)))
    if len(rows) <= SINK_ROWS:
        return _one_pass(rp, rows, columns, order, starts)
    out = np.empty(len(rows))
    for i in range(0, len(order), SINK_ROWS):
        part = order[i : i + SINK_ROWS]
        joins = None if starts is None else [starts[r] for r in part]
        out[part] = first_position_moves(rp, [rows[r] for r in part], columns, joins)
    return out


@torch.inference_mode()
def _one_pass(
    rp: Replayer,
    rows: Sequence[Row],
    columns: Mapping[int, slice],
    order: Sequence[int],
    starts: Sequence[int] | None,
) -> np.ndarray:
    spec = arch_for(rp.model)
    layers = spec.layer_names(rp.model)
    param = _where(rp)
    slot = np.empty(len(rows), dtype=np.int64)  # batch row of each row (the unchanged row is 0)
    slot[order] = np.arange(1, len(rows) + 1)
    outputs, inputs = _writes(rp, rows, columns, slot, spec)
    moved = torch.zeros(len(rows) + 1, device=param.device)
    grow = starts is not None
    first = rp.input_ids[:, :1].to(param.device)
    with HookSet(rp.model) as hooks:
        for name, (idx, values) in outputs.items():
            hooks.forward(name, _write_output(idx, values))
        for proj, entries in inputs.items():
            hooks.forward_pre(get_module(rp.model, proj), _write_input(entries))
        for i, layer in enumerate(layers):
            hooks.forward(layer, _track(moved, last=i == len(layers) - 1))
        joined = [0] + [starts[r] for r in order] if starts is not None else []
        with (
            contextlib.suppress(_Stop),
            rp.prefix.growing(joined, param.device, param.dtype, end=1) if grow else contextlib.nullcontext(),
        ):
            rp.model(input_ids=first if grow else first.expand(len(rows) + 1, 1), use_cache=False)
    rp.forward_passes += 1
    result: np.ndarray = moved[torch.as_tensor(slot, device=param.device)].cpu().numpy()
    return result


def _where(rp: Replayer) -> torch.Tensor:
    """An empty tensor on the replay's input device in the weights' dtype (weights may be offloaded)."""
    return torch.empty(0, device=rp.device, dtype=next(rp.model.parameters()).dtype)


Write = tuple[torch.Tensor, torch.Tensor]  # (batch rows, values written there)


def _writes(
    rp: Replayer, rows: Sequence[Row], columns: Mapping[int, slice], slot: np.ndarray, spec: Any
) -> tuple[dict[str, Write], dict[str, list[tuple[slice, torch.Tensor, torch.Tensor]]]]:
    """The rows grouped by where they write: a module's output, or a head's columns of the input of its
    attention's out-projection (by projection)."""
    param = _where(rp)
    by_output: dict[str, list[int]] = {}
    by_head: dict[tuple[str, int], list[int]] = {}
    for r, (module, head, _) in enumerate(rows):
        if head is None:
            by_output.setdefault(module, []).append(r)
        else:
            by_head.setdefault((spec.head_proj(module), head), []).append(r)

    def stacked(members: list[int]) -> Write:
        width = max(rows[r][2].shape[-1] for r in members)  # zero writes one column, broadcast
        values = np.stack([np.broadcast_to(rows[r][2], (width,)) for r in members])
        return (
            torch.as_tensor(slot[members], device=param.device),
            torch.as_tensor(values, dtype=param.dtype, device=param.device),
        )

    inputs: dict[str, list[tuple[slice, torch.Tensor, torch.Tensor]]] = {}
    for (proj, head), members in by_head.items():
        inputs.setdefault(proj, []).append((columns[head], *stacked(members)))
    return {name: stacked(members) for name, members in by_output.items()}, inputs


def _write_output(idx: torch.Tensor, values: torch.Tensor) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        out = primary(output).clone()
        out[idx.to(out.device), 0] = values.to(out.device)
        return with_primary(output, out)

    return hook


def _write_input(entries: list[tuple[slice, torch.Tensor, torch.Tensor]]) -> Any:
    def hook(module: torch.nn.Module, args: Any, kwargs: Any) -> Any:
        x = args[0].clone()
        for cols, idx, values in entries:
            x[idx.to(x.device), 0, cols] = values.to(x.device)
        return (x, *args[1:]), kwargs

    return hook


def _track(moved: torch.Tensor, *, last: bool) -> Any:
    """A decoder layer's hook: each row's largest relative change of position 0's state so far."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        state = primary(output)[:, 0].float()  # the rows that have joined so far
        base = state[:1]
        change = (state - base).norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-6)
        moved[: state.shape[0]] = torch.maximum(moved[: state.shape[0]], change.to(moved.device))
        if last:
            raise _Stop

    return hook
