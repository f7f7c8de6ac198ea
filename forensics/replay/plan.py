"""Compile K intervention sets into one ``out * scale + add`` pair per hooked module.

    plan = compile_plan(sets, length=T, d_of=..., bank=bank, step=step, device=dev)
    plan.modules["model.layers.3"].scale     # [K, T, 1]  — multiplied into the module output
    plan.modules["model.layers.3"].add       # [K, T, d]  — added after scaling

Positions are resolved here, once, so a hook does one fused op for the whole batch. Head interventions
share one plan per attention module (key ``<attn>[heads]``), a forward pre-hook on its out-projection
(``hook``) whose scale and add are as wide as that input: head h owns its columns. A head patched from
a source on other weights (a reference model) has its columns cleared and its contribution from the
source added to the projection's output instead (``post``, a forward hook on the same projection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from forensics.errors import ReplayError
from forensics.replay.interventions import Intervention, InterventionSet
from forensics.replay.sources import SourceBank

__all__ = ["HeadSite", "ModulePlan", "Plan", "compile_plan", "plan_key", "resolve_positions"]

HeadSite = tuple[str, int, int]  # (out-projection path, num_heads, head_dim) of an attention module


@dataclass
class ModulePlan:
    scale: torch.Tensor  # [K, T, 1]; [K, T, heads * head_dim] for a head plan
    add: torch.Tensor  # [K, T, d]
    fires: int = 0
    hook: str | None = None  # None: forward hook on the plan's module; else forward pre-hook on this path
    post: torch.Tensor | None = None  # [K, T, hidden]: added to the out-projection's output (head plans)


def plan_key(iv: Intervention) -> str:
    """The plan entry (and fire-ledger line) of ``iv``: its module, or ``<module>[heads]`` for a head."""
    return iv.module if iv.head is None else f"{iv.module}[heads]"


@dataclass
class Plan:
    modules: dict[str, ModulePlan] = field(default_factory=dict)


def resolve_positions(iv: Intervention, length: int) -> list[int]:
    """Absolute positions in a pass of ``length`` tokens; negative ints count from the end."""
    if iv.positions == "last":
        return [length - 1]
    if iv.positions == "all":
        return list(range(length))
    out = []
    for p in iv.positions:
        q = p + length if p < 0 else p
        if not 0 <= q < length:
            raise ReplayError(f"intervention on {iv.module}: position {p} outside the {length}-token replay")
        out.append(q)
    return out


def compile_plan(
    sets: Sequence[InterventionSet],
    *,
    length: int,
    width: Callable[[str], int | None],
    bank: SourceBank,
    step: int,
    device: torch.device,
    heads: Callable[[str], HeadSite] | None = None,
) -> Plan:
    plan = Plan()
    for row, ivs in enumerate(sets):
        for iv in ivs:
            if iv.head is not None:
                _apply_head(plan, len(sets), row, iv, length, heads, bank, step)
                continue
            mp = plan.modules.get(iv.module)
            if mp is None:
                d = width(iv.module) or _source_width(iv, bank, step)
                mp = ModulePlan(torch.ones(len(sets), length, 1), torch.zeros(len(sets), length, d))
                plan.modules[iv.module] = mp
            _apply(mp, row, iv, length, bank, step)
    for mp in plan.modules.values():
        mp.scale, mp.add = mp.scale.to(device), mp.add.to(device)
        mp.post = None if mp.post is None else mp.post.to(device)
    return plan


def _apply_head(
    plan: Plan,
    rows: int,
    row: int,
    iv: Intervention,
    length: int,
    heads: Callable[[str], HeadSite] | None,
    bank: SourceBank,
    step: int,
) -> None:
    """Head ``iv.head`` of ``iv.module``: its columns of the out-projection input, at its positions."""
    if heads is None:
        raise ReplayError(f"intervention on {iv.module} head {iv.head}: this replay has no head table")
    proj, num_heads, head_dim = heads(iv.module)
    head = int(iv.head or 0)
    if head >= num_heads:
        raise ReplayError(
            f"intervention on {iv.module}: head {head} out of range; it has {num_heads} heads (0..{num_heads - 1})"
        )
    key = plan_key(iv)
    mp = plan.modules.get(key)
    if mp is None:
        width = num_heads * head_dim
        mp = ModulePlan(torch.ones(rows, length, width), torch.zeros(rows, length, width), hook=proj)
        plan.modules[key] = mp
    positions, cols = resolve_positions(iv, length), slice(head * head_dim, (head + 1) * head_dim)
    whole = iv.alpha is None or iv.alpha == 1.0
    if iv.kind == "scale":
        factor = float(iv.factor if iv.factor is not None else 1.0)
        factor = factor if whole else 1.0 + float(iv.alpha or 0.0) * (factor - 1.0)
        mp.scale[row, positions, cols] *= factor
        mp.add[row, positions, cols] *= factor
        return
    alpha = 1.0 if whole else float(iv.alpha or 0.0)  # (1 - a) * (x * s + b) + a * value, on head's columns
    contrib = bank.contribution(iv.module, iv.source, step=step) if iv.kind == "patch" else None
    if contrib is not None:  # other weights: (1 - a) * this head's contribution + a * the source's
        src = torch.from_numpy(contrib[:, head].copy())  # [n, hidden]
        keep = _aligned(iv, positions, length, src.shape[0])
        if mp.post is None:
            mp.post = torch.zeros(rows, length, src.shape[-1])
        mp.scale[row, keep, cols] *= 1.0 - alpha
        mp.add[row, keep, cols] *= 1.0 - alpha
        mp.post[row, keep] += alpha * src[[p - length + src.shape[0] for p in keep]]
        return
    keep, value = _replacement(iv, positions, length, bank, step, heads=True)
    if isinstance(value, torch.Tensor):
        value = value[..., cols]
    index = (row, keep, cols)
    mp.scale[index] *= 1.0 - alpha
    mp.add[index] = mp.add[index] * (1.0 - alpha) + alpha * value


def _source_width(iv: Intervention, bank: SourceBank, step: int) -> int:
    """Width of an unrecorded module: from its source, or 1 (broadcast) for zero / scale."""
    if iv.kind == "mean":
        return int(bank.mean(iv.module, length=1).shape[-1])
    if iv.kind == "patch":
        return int(bank.patch(iv.module, iv.source, step=step).shape[-1])
    return 1


def _apply(mp: ModulePlan, row: int, iv: Intervention, length: int, bank: SourceBank, step: int) -> None:
    positions = resolve_positions(iv, length)
    whole = iv.alpha is None or iv.alpha == 1.0  # all the way: today's arithmetic, bit for bit
    if iv.kind == "scale":
        factor = float(iv.factor if iv.factor is not None else 1.0)
        factor = factor if whole else 1.0 + float(iv.alpha or 0.0) * (factor - 1.0)
        mp.scale[row, positions] *= factor
        mp.add[row, positions] *= factor
        return
    keep, value = _replacement(iv, positions, length, bank, step)
    if whole:
        mp.scale[row, positions] = 0.0
        mp.add[row, keep] = value
        mp.scale[row, [p for p in positions if p not in keep]] = 1.0
        return
    alpha = float(iv.alpha or 0.0)  # blend into what the row computes so far: (1 - a) * (out * s + b) + a * value
    mp.scale[row, keep] *= 1.0 - alpha
    mp.add[row, keep] = mp.add[row, keep] * (1.0 - alpha) + alpha * value


def _replacement(
    iv: Intervention, positions: list[int], length: int, bank: SourceBank, step: int, *, heads: bool = False
) -> tuple[list[int], torch.Tensor | float]:
    """(the positions a replacing kind overwrites, the values there: [n, d], [d] or a scalar)."""
    if iv.kind == "zero":
        return positions, 0.0
    if iv.kind == "mean":  # the population's mean at each aligned position
        mean = bank.mean(iv.module, length=length, heads=heads)
        keep = [p for p in positions if np.isfinite(mean[p]).all()]
        if not keep or (iv.positions != "all" and len(keep) < len(positions)):
            missing = [p for p in positions if p not in keep]
            raise ReplayError(
                f"mean of {iv.module}: no benign baseline reaches position(s) {missing[:8]} "
                f"(baselines are aligned from the end; the longest is shorter than this prompt)"
            )
        return keep, torch.from_numpy(mean[keep])
    src = torch.from_numpy(bank.patch(iv.module, iv.source, step=step, heads=heads).copy())  # aligned from the end
    keep = _aligned(iv, positions, length, src.shape[0])
    return keep, src[[p - length + src.shape[0] for p in keep]]


def _aligned(iv: Intervention, positions: list[int], length: int, n: int) -> list[int]:
    """The positions a patch from a source of ``n`` positions (aligned from the end) can write."""
    keep = [p for p in positions if p - length + n >= 0]
    if not keep:
        raise ReplayError(f"patch of {iv.module}: source too short for positions {iv.positions!r}")
    if iv.positions not in ("all",) and len(keep) < len(positions):
        raise ReplayError(f"patch of {iv.module}: source has no counterpart for some of {iv.positions!r}")
    return keep
