"""Hook specs: a position-dependent fix, shipped as data that installs forward hooks on a loaded model.

    with apply_fix(model, "fix_dir/fix.json"):          # or: handle = apply_fix(...); handle.remove()
        model.generate(**inputs, max_new_tokens=8)

A fix at ``last`` or at named positions has no weight form (a weight acts at every position), so
``export_fix`` writes it as ``fix.json`` (method ``hooks``) plus ``fix_values.safetensors`` holding
the rows a ``mean`` or ``patch`` member writes, aligned from the end as the replay aligns them. The
hooks act on the *prompt pass* (the first forward pass, no cache yet) exactly as the replay acts on
the decision step: ``last`` is the prompt's last position, named positions count from its start
(negative from its end); later passes of generation (one new token over a cache) run free, as new
positions run free in ``Replayer.generate``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn

from forensics.errors import ConfigError
from forensics.hooks import HookSet, primary, with_primary
from forensics.models.arch import arch_for, get_module
from forensics.replay.interventions import Intervention
from forensics.replay.sources import SourceBank

__all__ = [
    "VALUES_FILE",
    "FixHandle",
    "HookEdit",
    "HookMember",
    "apply_fix",
    "cached_length",
    "hook_members",
    "install_hooks",
]

VALUES_FILE = "fix_values.safetensors"


@dataclass(frozen=True)
class HookMember:
    """One member of a hook spec: the intervention and, for ``mean``/``patch``, its rows [n, d] aligned
    from the end of the prompt pass (NaN rows: positions no baseline reaches, left unchanged)."""

    intervention: Intervention
    values: torch.Tensor | None = None


@dataclass(frozen=True)
class HookEdit:
    """A fix shipped as hooks: its members, and the length of the decision pass it was validated on."""

    members: tuple[HookMember, ...]
    length: int
    refused: str = ""  # why it has no weight form (one line)
    method: str = "hooks"

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        return tuple(m.intervention for m in self.members)

    def spec(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(the ``hooks`` section of fix.json, the tensors of ``VALUES_FILE`` by name)."""
        values: dict[str, torch.Tensor] = {}
        items = []
        for i, member in enumerate(self.members):
            name = None if member.values is None else f"member{i}"
            if member.values is not None:
                values[f"member{i}"] = member.values.contiguous()
            items.append({"intervention": member.intervention.to_dict(), "values": name})
        return {"members": items, "values_file": VALUES_FILE, "length": self.length}, values


def hook_members(fix: Sequence[Intervention], bank: SourceBank, *, length: int, step: int) -> list[HookMember]:
    """The members of ``fix`` with the rows the replay of a ``length``-token decision pass writes: the
    bank's mean at each aligned position, or the patch source's rows (both aligned from the end)."""
    out = []
    for iv in fix:
        heads = iv.head is not None
        rows: np.ndarray | None = None
        if iv.kind == "mean":
            rows = bank.mean(iv.module, length=length, heads=heads)
        elif iv.kind == "patch":
            if heads and bank.contribution(iv.module, iv.source, step=step) is not None:
                raise ConfigError(
                    f"{iv.module} head {iv.head}: patched from a run on other weights, whose contribution (not its "
                    "head values) the replay writes; no hook spec for it here, export a rollback instead"
                )
            rows = bank.patch(iv.module, iv.source, step=step, heads=heads)
        out.append(HookMember(iv, None if rows is None else torch.from_numpy(np.array(rows, dtype=np.float32))))
    return out


class FixHandle:
    """Installed hooks of a fix: remove them with ``remove()`` or by leaving the ``with`` block."""

    def __init__(self, hooks: HookSet) -> None:
        self._hooks = hooks

    def remove(self) -> None:
        self._hooks.remove()

    def __enter__(self) -> FixHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


def install_hooks(model: nn.Module, members: Sequence[HookMember]) -> FixHandle:
    """Install ``members`` on ``model``; every hook is removed again if one cannot be installed."""
    hooks, state = HookSet(model), _PassState()
    try:
        hooks.forward_pre(model, state.hook)
        for member in members:
            iv = member.intervention
            if iv.head is None:
                hooks.forward(iv.module, _output_hook(state, member))
            else:
                spec = arch_for(model)
                heads, head_dim = spec.head_slices(model, iv.module)
                if int(iv.head) >= heads:
                    raise ConfigError(f"fix member on {iv.module}: head {iv.head} out of range (0..{heads - 1})")
                cols = slice(int(iv.head) * head_dim, (int(iv.head) + 1) * head_dim)
                hooks.forward_pre(get_module(model, spec.head_proj(iv.module)), _input_hook(state, member, cols))
    except BaseException:
        hooks.remove()
        raise
    return FixHandle(hooks)


def apply_fix(model: nn.Module, path: str | Path) -> FixHandle:
    """Install the hook spec ``path`` (a ``fix.json`` of method ``hooks``) on ``model``; see module docstring."""
    from safetensors.torch import load_file

    data = _read_spec(Path(path))
    members_data = data["hooks"]["members"]
    values_path = Path(path).parent / str(data["hooks"].get("values_file", VALUES_FILE))
    values = load_file(str(values_path)) if values_path.is_file() else {}
    members = []
    for item in members_data:
        name = item.get("values")
        if name is not None and name not in values:
            raise ConfigError(f"fix {path}: member values {name!r} missing from {values_path}")
        members.append(HookMember(Intervention.from_dict(item["intervention"]), values.get(name) if name else None))
    return install_hooks(model, members)


def _read_spec(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"fix {path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != "model-forensics/fix@1":
        found = data.get("schema") if isinstance(data, dict) else None
        raise ConfigError(f"fix {path}: schema {found!r}, expected 'model-forensics/fix@1'")
    if data.get("method") != "hooks" or not isinstance(data.get("hooks"), dict):
        raise ConfigError(
            f"fix {path}: method {data.get('method')!r} is in the model's weights, not hooks; "
            "load the exported directory itself (AutoModelForCausalLM.from_pretrained(DIR))"
        )
    return data


class _PassState:
    """Whether the current forward pass is the prompt pass (nothing cached before it)."""

    def __init__(self) -> None:
        self.prompt_pass = True

    def hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.prompt_pass = cached_length(kwargs) == 0


def cached_length(kwargs: Mapping[str, Any]) -> int:
    """Positions already in the cache a forward pass is given (``cache``, or the older ``past_key_values``
    and ``cache_position``); 0 for a prompt pass."""
    position = kwargs.get("cache_position")
    if isinstance(position, torch.Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return 0


def _positions(iv: Intervention, length: int) -> list[int]:
    if iv.positions == "last":
        return [length - 1]
    if iv.positions == "all":
        return list(range(length))
    found = [p + length if p < 0 else p for p in iv.positions]
    return [p for p in found if 0 <= p < length]


def _rewrite(x: torch.Tensor, member: HookMember, cols: slice) -> torch.Tensor:
    """``x`` [B, T, d] with ``member`` applied at its positions on columns ``cols`` (new tensor)."""
    iv, length = member.intervention, x.shape[1]
    alpha = 1.0 if iv.alpha is None else float(iv.alpha)
    out = x.clone()
    positions = _positions(iv, length)
    if iv.kind == "scale":
        factor = 1.0 + alpha * (float(iv.factor if iv.factor is not None else 1.0) - 1.0)
        out[:, positions, cols] = x[:, positions, cols] * factor
        return out
    if iv.kind == "zero":
        out[:, positions, cols] = x[:, positions, cols] * (1.0 - alpha)
        return out
    rows = member.values
    if rows is None:
        raise ConfigError(f"fix member {iv.kind} on {iv.module} carries no values")
    n = rows.shape[0]
    for p in positions:
        row = rows[p - length + n] if p - length + n >= 0 else None
        if row is None or not bool(torch.isfinite(row).all()):
            continue  # no counterpart (aligned from the end): the replay leaves it too
        out[:, p, cols] = (1.0 - alpha) * x[:, p, cols] + alpha * row[cols].to(x.device, x.dtype)
    return out


def _output_hook(state: _PassState, member: HookMember) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if not state.prompt_pass:
            return None
        return with_primary(output, _rewrite(primary(output), member, slice(None)))

    return hook


def _input_hook(state: _PassState, member: HookMember, cols: slice) -> Any:
    def hook(module: nn.Module, args: Any, kwargs: Any) -> Any:
        if not state.prompt_pass:
            return None
        return (_rewrite(args[0], member, cols), *args[1:]), kwargs

    return hook
