"""Plant known faults in a copy of a model, so localisation and fix sets can be scored against truth.

    fault = Fault(layer=3, site="head", head=2, kind="scale", magnitude=8.0)
    broken = plant_fault(model, fault)          # a deep copy; the original is untouched
    fault.component()                           # Component(3, "head", 2): what a perfect tool names

Sites: ``mlp`` (the MLP output projection), ``attn`` (the attention output projection: every head),
``head`` (the slice of the attention output projection that reads one head). Kinds:

- ``noise``: add seeded Gaussian noise of ``magnitude`` x the weight's own std (input-dependent, as
  real bugs are);
- ``scale``: multiply the weight (or the head's slice) by ``magnitude`` — 0 silences the component,
  a large factor makes it shout; a factor of 1 changes nothing and is refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from forensics.errors import ConfigError
from forensics.models.arch import ArchSpec, Component, arch_for, get_module

__all__ = ["Fault", "FaultKind", "FaultSite", "plant_fault"]

FaultSite = Literal["mlp", "attn", "head"]
FaultKind = Literal["noise", "scale"]


@dataclass(frozen=True)
class Fault:
    layer: int
    site: FaultSite = "mlp"
    magnitude: float = 3.0
    head: int = 0
    seed: int = 0
    kind: FaultKind = "noise"

    def __post_init__(self) -> None:
        if self.site not in ("mlp", "attn", "head"):
            raise ConfigError(f"fault site {self.site!r} not allowed; use mlp, attn or head")
        if self.kind not in ("noise", "scale"):
            raise ConfigError(f"fault kind {self.kind!r} not allowed; use noise or scale")
        if self.kind == "noise" and self.magnitude <= 0:
            raise ConfigError(f"noise fault magnitude must be > 0 (units of the weight's std), got {self.magnitude}")
        if self.kind == "scale" and (self.magnitude < 0 or self.magnitude == 1):
            raise ConfigError(f"scale fault magnitude must be >= 0 and != 1 (a factor), got {self.magnitude}")

    def component(self) -> Component:
        """The ground truth: (layer, mlp), (layer, attn) or (layer, head h)."""
        return Component(self.layer, self.site, self.head if self.site == "head" else None)

    def modules(self, model: nn.Module) -> list[str]:
        """The recorded module names (block part and residual) of the faulty layer."""
        spec = arch_for(model)
        layer = spec.layer_names(model)[self.layer]
        part = spec.mlp if self.site == "mlp" else spec.attn
        return [f"{layer}.{part}", layer]

    def label(self) -> str:
        """``L14.H3 scale x8``, ``L2 MLP noise 3 std``."""
        how = f"x{self.magnitude:g}" if self.kind == "scale" else f"{self.magnitude:g} std"
        return f"{self.component().label()} {self.kind} {how}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _projection(model: nn.Module, spec: ArchSpec, fault: Fault) -> nn.Module:
    layer = spec.layer_names(model)[fault.layer]
    part, proj = (spec.mlp, spec.mlp_out_proj) if fault.site == "mlp" else (spec.attn, spec.attn_out_proj)
    if part is None or proj is None:
        raise ConfigError(f"{spec.family}: no {fault.site} output projection in the family table")
    return get_module(model, f"{layer}.{part}.{proj}")


def plant_fault(model: nn.Module, fault: Fault) -> nn.Module:
    """A deep copy of ``model`` with ``fault`` planted; only the named projection's weight changes."""
    spec = arch_for(model)
    if not 0 <= fault.layer < len(spec.layer_names(model)):
        raise ConfigError(f"fault layer {fault.layer} outside 0..{len(spec.layer_names(model)) - 1}")
    broken = copy.deepcopy(model)
    weight = _projection(broken, spec, fault).weight
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{spec.family}: {fault.site} projection has no weight tensor")
    mask = _head_mask(broken, weight, fault) if fault.site == "head" else torch.ones_like(weight)
    with torch.no_grad():
        if fault.kind == "scale":
            weight.mul_(1.0 + mask * (fault.magnitude - 1.0))
        else:
            gen = torch.Generator().manual_seed(fault.seed)
            noise = torch.randn(weight.shape, generator=gen) * weight.detach().float().std() * fault.magnitude
            weight.add_(mask * noise.to(weight.dtype))
    return broken


def _head_mask(model: nn.Module, weight: torch.Tensor, fault: Fault) -> torch.Tensor:
    """1 where the projection reads head ``fault.head``, by the family table's head slices (the same
    columns the replayer's head interventions act on); Conv1D stores [in, out], Linear [out, in]."""
    spec = arch_for(model)
    heads, width = spec.head_slices(model, f"{spec.layer_names(model)[fault.layer]}.{spec.attn}")
    if not 0 <= fault.head < heads:
        raise ConfigError(f"fault head {fault.head} outside 0..{heads - 1}")
    mask = torch.zeros_like(weight)
    sl = slice(fault.head * width, (fault.head + 1) * width)
    if type(_projection(model, spec, fault)).__name__ == "Conv1D":
        mask[sl, :] = 1.0
    else:
        mask[:, sl] = 1.0
    return mask
