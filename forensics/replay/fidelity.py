"""Fidelity: how closely a replay reproduces the recording, judged relative to each module's scale.

    fid = replayer.fidelity()
    fid.faithful, fid.max_logit_diff, fid.first_divergent, fid.modules["model.layers.2.mlp"].rel

A module is faithful when ``max|replayed - recorded| <= atol + rtol * max|recorded|``: real models carry
massive activations (SmolLM2's early MLPs reach the thousands), where fp32 rounding between cached
incremental generation (recording) and one teacher-forced pass (replay), or another thread count,
moves values by 1e-4 absolute but 1e-7 relative. The decision-step logits are judged on their own,
with the same formula over the recorded top-k logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from forensics.replay.sources import prefix_length

__all__ = ["Fidelity", "ModuleFidelity", "measure_fidelity"]

_TINY = 1e-30


@dataclass(frozen=True)
class ModuleFidelity:
    abs: float | None  # None: the replayed shape differs from the recording
    scale: float  # max |recorded|
    tolerance: float  # atol + rtol * scale

    @property
    def rel(self) -> float | None:
        return None if self.abs is None else self.abs / max(self.scale, _TINY)

    @property
    def ok(self) -> bool:
        return self.abs is not None and self.abs <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"abs": self.abs, "rel": self.rel, "scale": self.scale, "ok": self.ok}


@dataclass(frozen=True)
class Fidelity:
    max_logit_diff: float
    logit_tolerance: float
    modules: dict[str, ModuleFidelity]
    atol: float
    rtol: float

    @property
    def tolerance(self) -> float:
        """The absolute part of the tolerance (rca@1's ``fidelity.tolerance``)."""
        return self.atol

    @property
    def module_diffs(self) -> dict[str, float | None]:
        return {name: m.abs for name, m in self.modules.items()}

    @property
    def first_divergent(self) -> str | None:
        """The first module (forward order) beyond its tolerance."""
        return next((name for name, m in self.modules.items() if not m.ok), None)

    @property
    def logits_ok(self) -> bool:
        return self.max_logit_diff <= self.logit_tolerance

    @property
    def max_activation_diff(self) -> float:
        diffs = [m.abs for m in self.modules.values() if m.abs is not None]
        return float("nan") if len(diffs) < len(self.modules) else max(diffs, default=0.0)

    @property
    def faithful(self) -> bool:
        return self.first_divergent is None and self.logits_ok

    def advice(self) -> str | None:
        """What to do next when the replay is not faithful (None when it is)."""
        if self.faithful:
            return None
        name = self.first_divergent
        if name is not None and self.modules[name].abs is None:
            return (
                f"{name} replays with another shape than recorded: the model is not the one that recorded "
                "the bundle (another architecture or config); replay on the recording model"
            )
        worst = self.modules[name].rel if name is not None else self.max_logit_diff / max(self.logit_tolerance, _TINY)
        if worst is not None and worst < 100 * self.rtol:
            return (
                f"the departure is small ({worst:.1e} relative): likely numerical (dtype, device, kernels); "
                f"if you trust the model, raise fidelity_rtol (now {self.rtol:g}) and re-run"
            )
        return (
            "the replay departs from the recording by more than rounding: check that the model's weights are "
            "the recording's (weights sha256 in the bundle's manifest), its dtype and the bundle's integrity; "
            "interventions on this replay would not explain the incident"
        )

    def to_dict(self) -> dict[str, Any]:
        worst = self.max_activation_diff
        return {
            "faithful": self.faithful,
            "atol": self.atol,
            "rtol": self.rtol,
            "tolerance": self.atol,
            "max_logit_diff": self.max_logit_diff,
            "logit_tolerance": self.logit_tolerance,
            "max_activation_diff": None if worst != worst else worst,
            "first_divergent": self.first_divergent,
            "module_diffs": self.module_diffs,
            "modules": {name: m.to_dict() for name, m in self.modules.items()},
            "advice": self.advice(),
        }


def measure_fidelity(
    bundle: Any, step: int, logits: torch.Tensor, captured: dict[str, np.ndarray], *, atol: float, rtol: float
) -> Fidelity:
    """Compare replayed logits ([vocab]) and activations with what the bundle recorded."""
    top = bundle.outputs["top_k"][step]
    recorded = torch.tensor(top["logits"], dtype=torch.float32)
    replayed = logits.detach().cpu()[torch.tensor(top["ids"], dtype=torch.long)]
    max_logit = float((recorded - replayed).abs().max()) if len(top["ids"]) else 0.0
    logit_scale = float(recorded.abs().max()) if len(top["ids"]) else 0.0
    length = prefix_length(bundle, step)
    modules: dict[str, ModuleFidelity] = {}
    for name in bundle.modules:  # forward order, so the first departure is the earliest one
        want = np.asarray(bundle.activation(name))[:length]
        got = captured[name][:length]
        scale = float(np.abs(want).max()) if want.size else 0.0
        diff = (
            float(np.abs(want - got).max())
            if want.shape == got.shape and want.size
            else (0.0 if want.shape == got.shape else None)
        )
        modules[name] = ModuleFidelity(diff, scale, atol + rtol * scale)
    return Fidelity(max_logit, atol + rtol * logit_scale, modules, atol, rtol)
