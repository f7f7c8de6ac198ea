"""Fidelity: how closely a replay reproduces the recording, judged relative to each module's scale.

    fid = replayer.fidelity()
    fid.faithful, fid.max_logit_diff, fid.first_divergent, fid.modules["model.layers.2.mlp"].rel

A module is faithful when ``max|replayed - recorded| <= atol + rtol * max|recorded|``: real models carry
massive activations (SmolLM2's early MLPs reach the thousands), where fp32 rounding between cached
incremental generation (recording) and one teacher-forced pass (replay), or another thread count,
moves values by 1e-4 absolute but 1e-7 relative. The decision-step logits are judged on their own,
with the same formula over the recorded top-k logits.

A replay in another dtype than the recording's (``replay --dtype``) is judged against that pair's row of
``forensics.replay.precision`` where it is looser than ``rtol``, and its advice names the dtypes rather
than suspecting the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from forensics.replay.precision import DtypePair, cross_dtype, rounding_rtol
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
    recorded_dtype: str = "float32"
    replayed_dtype: str = "float32"

    @property
    def dtype_pair(self) -> DtypePair | None:
        """The cross-dtype tolerance row this replay was judged against (None: same dtype)."""
        return cross_dtype(self.recorded_dtype, self.replayed_dtype)

    @property
    def dtype_note(self) -> str | None:
        """One line on the dtypes when the replay's is not the recording's (None when they agree)."""
        if self.recorded_dtype == self.replayed_dtype:
            return None
        pair, rec, rep = self.dtype_pair, self.recorded_dtype, self.replayed_dtype
        judged = (
            f"judged against the {rec}/{rep} tolerance (rtol {pair.module_rtol:g} per module, "
            f"{pair.logit_rtol:g} for logits; docs/fidelity.md)"
            if pair is not None
            else f"no tolerance is known for this pair; judged against rtol {self.rtol:g}"
        )
        return f"replayed in {rep}, recorded in {rec}: {judged}"

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
        if self.recorded_dtype != self.replayed_dtype:
            return self._dtype_advice(name, worst)
        if worst is not None and worst < max(100 * self.rtol, rounding_rtol(self.recorded_dtype)):
            return (
                f"the departure is small ({worst:.1e} relative): likely numerical (dtype, device, kernels); "
                f"if you trust the model, raise fidelity_rtol (now {self.rtol:g}) and re-run"
            )
        return (
            "the replay departs from the recording by more than rounding: check that the model's weights are "
            "the recording's (weights sha256 in the bundle's manifest), its dtype and the bundle's integrity; "
            "interventions on this replay would not explain the incident"
        )

    def _dtype_advice(self, name: str | None, worst: float | None) -> str:
        rec, rep = self.recorded_dtype, self.replayed_dtype
        where = f"{worst:.1e} relative at {name}" if name is not None else "at the decision-step logits"
        return (
            f"replayed in {rep} as requested, recorded in {rec}: the replay departs ({where}) by more than the "
            f"{rec}/{rep} tolerance allows, most likely from {rep}'s rounding. Replay in {rec} (the recording's "
            f"dtype): faithful there, the weights are the recording's and the departure is the cost of {rep} "
            "(raise fidelity_rtol if you accept it)"
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
            "recorded_dtype": self.recorded_dtype,
            "replayed_dtype": self.replayed_dtype,
            "dtype_note": self.dtype_note,
        }


def measure_fidelity(
    bundle: Any,
    step: int,
    logits: torch.Tensor,
    captured: dict[str, np.ndarray],
    *,
    atol: float,
    rtol: float,
    replayed_dtype: str | None = None,
) -> Fidelity:
    """Compare replayed logits ([vocab]) and activations with what the bundle recorded; a replay in
    ``replayed_dtype`` (None: the recording's) other than the recording's gets its pair's tolerance."""
    recorded_dtype = str(bundle.model.get("dtype") or "float32")
    replayed_dtype = replayed_dtype or recorded_dtype
    pair = cross_dtype(recorded_dtype, replayed_dtype)
    module_rtol = max(rtol, pair.module_rtol) if pair is not None else rtol
    logit_rtol = max(rtol, pair.logit_rtol) if pair is not None else rtol
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
        modules[name] = ModuleFidelity(diff, scale, atol + module_rtol * scale)
    return Fidelity(max_logit, atol + logit_rtol * logit_scale, modules, atol, rtol, recorded_dtype, replayed_dtype)
