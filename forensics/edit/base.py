"""What every edit is: new values for some parameters of a model, applied in place or to a copy.

    edit = weight_form(model, fix_set)             # or rank_one_edit(...), rollback_edit(...)
    edited = edited_copy(model, edit)              # the original stays as it was
    [c.to_dict() for c in edit.changes(model)]     # which tensors changed, by how much, of what rank

A Linear without a bias that an edit must give one (a mean carried by a bias) gets it through the
Hugging Face config flag that gives the whole family of such modules a bias (``attention_bias``,
``mlp_bias``): every module the flag covers gets a zero bias, so the saved directory loads with plain
``transformers`` and computes what the edited model computes. A family without such a flag has no
exact weight form for that edit (``NoWeightForm``): the fix ships as a hook spec instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from forensics.errors import ConfigError
from forensics.models.arch import arch_for, get_module

__all__ = [
    "BIAS_FLAGS",
    "EditMethod",
    "EditRefused",
    "NoWeightForm",
    "TensorChange",
    "WeightEdit",
    "apply_edit",
    "edited_copy",
]

EditMethod = Literal["weights", "rank-one", "rollback", "hooks"]


class NoWeightForm(ConfigError):
    """A fix has no exact weight form (position-dependent, a residual stream, a bias the family cannot carry)."""


class EditRefused(ConfigError):
    """An edit breaks more of the population than allowed (``max_broken``); the message names the prompts."""


@dataclass(frozen=True)
class BiasFlag:
    """A config flag that gives a family of Linear modules a bias: ``flag`` on ``config`` adds one to
    ``modules`` (paths under the block's ``part``) in every decoder layer."""

    flag: str
    part: Literal["attn", "mlp"]
    modules: tuple[str, ...]


# Families whose Hugging Face code reads these flags (transformers' modeling_<family>.py).
BIAS_FLAGS: dict[str, tuple[BiasFlag, ...]] = {
    "llama": (
        BiasFlag("attention_bias", "attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
        BiasFlag("mlp_bias", "mlp", ("gate_proj", "up_proj", "down_proj")),
    ),
    "gpt_neox": (BiasFlag("attention_bias", "attn", ("query_key_value", "dense")),),
}


@dataclass(frozen=True)
class TensorChange:
    """One changed parameter: ``||new - old||`` (Frobenius), relative to ``||old||`` (None for a new
    bias), and the rank of the difference (a matrix; None for a vector)."""

    name: str
    shape: tuple[int, ...]
    norm: float
    relative: float | None
    rank: int | None
    added: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "delta_norm": self.norm,
            "relative": self.relative,
            "rank": self.rank,
            "added": self.added,
        }


@dataclass(frozen=True)
class WeightEdit:
    """New values for some parameters (full tensors, by parameter name), the config flags that must be
    set for new biases to exist (``flags``), and method-specific ``details`` (JSON-ready)."""

    method: EditMethod
    tensors: Mapping[str, torch.Tensor]
    flags: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def changes(self, model: nn.Module) -> list[TensorChange]:
        """What the edit changes in ``model`` (the unedited one), tensor by tensor, sorted by name."""
        params = dict(model.named_parameters())
        out = []
        for name in sorted(self.tensors):
            new = self.tensors[name].detach().to("cpu", torch.float64)
            old = params.get(name)
            base = torch.zeros_like(new) if old is None else old.detach().to("cpu", torch.float64)
            delta = new - base
            norm = float(delta.norm())
            ref = float(base.norm())
            rank = _rank(delta, base, new, self.tensors[name].dtype) if delta.dim() == 2 else None
            relative = norm / ref if old is not None and ref > 0 else None
            out.append(TensorChange(name, tuple(new.shape), norm, relative, rank, old is None))
        return out


def _rank(delta: torch.Tensor, old: torch.Tensor, new: torch.Tensor, dtype: torch.dtype) -> int:
    """Rank of ``delta`` at the precision the weights are stored in: singular values below the rounding
    of ``old`` and ``new`` to ``dtype`` do not count."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    scale = max(float(torch.linalg.matrix_norm(old, ord=2)), float(torch.linalg.matrix_norm(new, ord=2)))
    return int(torch.linalg.matrix_rank(delta, atol=4 * eps * max(delta.shape) * scale).item())


def apply_edit(model: nn.Module, edit: WeightEdit) -> nn.Module:
    """Write ``edit`` into ``model`` in place (setting its bias flags first) and return it."""
    for flag in edit.flags:
        set_bias_flag(model, flag)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in edit.tensors.items():
            if name not in params:
                raise ConfigError(f"edit names parameter {name!r}, which {type(model).__name__} does not have")
            target = params[name]
            if tuple(target.shape) != tuple(value.shape):
                raise ConfigError(f"edit of {name}: shape {tuple(value.shape)}, the model's is {tuple(target.shape)}")
            target.copy_(value.to(target.device, target.dtype))
    return model


def edited_copy(model: nn.Module, edit: WeightEdit) -> nn.Module:
    """A deep copy of ``model`` with ``edit`` applied; ``model`` is left unchanged."""
    return apply_edit(copy.deepcopy(model), edit)


def bias_flag_for(model: nn.Module, module: str) -> BiasFlag | None:
    """The config flag that would give Linear ``module`` a bias, if its family has one."""
    spec = arch_for(model)
    layer = spec.layer_of(module)
    for flag in BIAS_FLAGS.get(spec.family, ()):
        part = spec.attn if flag.part == "attn" else spec.mlp
        if layer is not None and any(module == f"{spec.layers}.{layer}.{part}.{m}" for m in flag.modules):
            return flag
    return None


def set_bias_flag(model: nn.Module, name: str) -> None:
    """Set config flag ``name`` and give every module it covers, in every layer, a zero bias (idempotent)."""
    spec = arch_for(model)
    flag = next((f for f in BIAS_FLAGS.get(spec.family, ()) if f.flag == name), None)
    if flag is None:
        raise NoWeightForm(f"{spec.family}: no config flag {name!r} gives its Linear modules a bias")
    setattr(model.config, name, True)
    part = spec.attn if flag.part == "attn" else spec.mlp
    for layer in spec.layer_names(model):
        for sub in flag.modules:
            linear = get_module(model, f"{layer}.{part}.{sub}")
            if not isinstance(linear, nn.Linear):
                raise NoWeightForm(f"{layer}.{part}.{sub} is {type(linear).__name__}, not a Linear")
            if linear.bias is None:
                w = linear.weight
                linear.bias = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))
