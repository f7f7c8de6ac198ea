"""Plant known faults in a copy of a model, so localisation and fix sets can be scored against truth.

    fault = Fault(layer=3, site="mlp", magnitude=3.0, seed=1)
    broken = plant_fault(model, fault)          # a deep copy; the original is untouched
    fault.modules(model)                        # the recorded modules the fault lives in

Sites: ``mlp`` (MLP output projection), ``attn`` (attention output projection), ``head`` (the
slice of the attention output projection that reads one head). The corruption adds seeded noise
of ``magnitude`` x the weight's own std, so it is input-dependent, as real bugs are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from forensics.errors import ConfigError
from forensics.models.arch import ArchSpec, arch_for, get_module

__all__ = ["Fault", "plant_fault"]

FaultSite = Literal["mlp", "attn", "head"]


@dataclass(frozen=True)
class Fault:
    layer: int
    site: FaultSite = "mlp"
    magnitude: float = 3.0
    head: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.site not in ("mlp", "attn", "head"):
            raise ConfigError(f"fault site {self.site!r} not allowed; use mlp, attn or head")
        if self.magnitude <= 0:
            raise ConfigError(f"fault magnitude must be > 0, got {self.magnitude}")

    def modules(self, model: nn.Module) -> list[str]:
        """The recorded module names (block part and residual) of the faulty layer."""
        spec = arch_for(model)
        layer = spec.layer_names(model)[self.layer]
        part = spec.mlp if self.site == "mlp" else spec.attn
        return [f"{layer}.{part}", layer]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _projection(model: nn.Module, spec: ArchSpec, fault: Fault) -> nn.Module:
    layer = spec.layer_names(model)[fault.layer]
    part, proj = (spec.mlp, spec.mlp_out_proj) if fault.site == "mlp" else (spec.attn, spec.attn_out_proj)
    if part is None or proj is None:
        raise ConfigError(f"{spec.family}: no {fault.site} output projection in the family table")
    return get_module(model, f"{layer}.{part}.{proj}")


def plant_fault(model: nn.Module, fault: Fault) -> nn.Module:
    """A deep copy of ``model`` with ``fault`` planted."""
    spec = arch_for(model)
    if not 0 <= fault.layer < len(spec.layer_names(model)):
        raise ConfigError(f"fault layer {fault.layer} outside 0..{len(spec.layer_names(model)) - 1}")
    broken = copy.deepcopy(model)
    weight = _projection(broken, spec, fault).weight
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{spec.family}: {fault.site} projection has no weight tensor")
    gen = torch.Generator().manual_seed(fault.seed)
    noise = torch.randn(weight.shape, generator=gen) * weight.detach().std() * fault.magnitude
    with torch.no_grad():
        if fault.site == "head":
            weight.add_(_head_mask(broken, weight, fault) * noise.to(weight.dtype))
        else:
            weight.add_(noise.to(weight.dtype))
    return broken


def _head_mask(model: nn.Module, weight: torch.Tensor, fault: Fault) -> torch.Tensor:
    """1 where the projection reads head ``fault.head`` (Conv1D stores [in, out], Linear [out, in])."""
    config: Any = getattr(model, "config", None)
    heads = int(getattr(config, "num_attention_heads", getattr(config, "n_head", 1)))
    is_conv1d = type(_projection(model, arch_for(model), Fault(fault.layer, "attn"))).__name__ == "Conv1D"
    dim_in = weight.shape[0] if is_conv1d else weight.shape[1]
    width = dim_in // heads
    if not 0 <= fault.head < heads:
        raise ConfigError(f"fault head {fault.head} outside 0..{heads - 1}")
    mask = torch.zeros_like(weight)
    sl = slice(fault.head * width, (fault.head + 1) * width)
    if is_conv1d:
        mask[sl, :] = 1.0
    else:
        mask[:, sl] = 1.0
    return mask
