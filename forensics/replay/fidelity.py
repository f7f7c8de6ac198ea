"""Fidelity: how closely a replay reproduces the recording, and where it first departs.

    fid = replayer.fidelity()
    fid.faithful, fid.max_logit_diff, fid.first_divergent
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from forensics.replay.sources import prefix_length

__all__ = ["Fidelity", "measure_fidelity"]


@dataclass(frozen=True)
class Fidelity:
    max_logit_diff: float
    module_diffs: dict[str, float | None]  # None: shape differs from the recording
    first_divergent: str | None
    tolerance: float

    @property
    def max_activation_diff(self) -> float:
        diffs = [d for d in self.module_diffs.values() if d is not None]
        return float("nan") if len(diffs) < len(self.module_diffs) else max(diffs, default=0.0)

    @property
    def faithful(self) -> bool:
        return self.first_divergent is None and self.max_logit_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "faithful": self.faithful,
            "tolerance": self.tolerance,
            "max_logit_diff": self.max_logit_diff,
            "max_activation_diff": None if self.max_activation_diff != self.max_activation_diff
            else self.max_activation_diff,
            "first_divergent": self.first_divergent,
            "module_diffs": self.module_diffs,
        }


def measure_fidelity(
    bundle: Any, step: int, logits: torch.Tensor, captured: dict[str, np.ndarray], tolerance: float
) -> Fidelity:
    """Compare replayed logits ([vocab]) and activations with what the bundle recorded."""
    top = bundle.outputs["top_k"][step]
    recorded = torch.tensor(top["logits"], dtype=torch.float32)
    replayed = logits.detach().cpu()[torch.tensor(top["ids"])]
    max_logit = float((recorded - replayed).abs().max()) if len(top["ids"]) else 0.0
    length = prefix_length(bundle, step)
    diffs: dict[str, float | None] = {}
    first = None
    for name in bundle.modules:  # forward order, so the first departure is the earliest one
        want = np.asarray(bundle.activation(name))[:length]
        got = captured[name][:length]
        diff = float(np.abs(want - got).max()) if want.shape == got.shape else None
        diffs[name] = diff
        if first is None and (diff is None or diff > tolerance):
            first = name
    return Fidelity(max_logit, diffs, first, tolerance)
