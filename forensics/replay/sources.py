"""Where ``mean`` and ``patch`` interventions get their values: benign / counterfactual bundles.

bank = SourceBank([benign_a, benign_b])
bank.mean("model.layers.3")                         # [d] mean over baselines and positions
bank.patch("model.layers.3", "turkey_ok", length=12, step=0)   # [n, d] aligned from the end
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from forensics.errors import ReplayError

__all__ = ["SourceBank", "prefix_length"]


def prefix_length(bundle: Any, step: int) -> int:
    """Positions of the teacher-forced pass at generation ``step``: prompt + generated[:step]."""
    generated = len(bundle.outputs.get("generated_ids") or [])
    return len(bundle.inputs["input_ids"]) + max(0, min(step, generated - 1))


class SourceBank:
    """Baseline bundles by id: the benign population (means) and counterfactuals (patch sources)."""

    def __init__(self, baselines: Sequence[Any] = (), counterfactuals: Sequence[Any] = ()) -> None:
        self.population = {b.id: b for b in baselines}
        self.bundles = {**{b.id: b for b in counterfactuals}, **self.population}
        self._means: dict[str, np.ndarray] = {}
        self._patches: dict[tuple[str, str, int], np.ndarray] = {}

    def mean(self, module: str) -> np.ndarray:
        """Mean activation over the benign population's bundles and positions."""
        if module not in self._means:
            if not self.population:
                raise ReplayError("a 'mean' intervention needs benign baseline bundles; none were given")
            rows = [self._activation(b, module).mean(axis=0) for b in self.population.values()]
            self._means[module] = np.mean(rows, axis=0).astype(np.float32)
        return self._means[module]

    def patch(self, module: str, source: str | None, *, step: int) -> np.ndarray:
        """The source's activation up to its own decision position ``step`` (aligned from the end)."""
        bundle = self._bundle(source)
        key = (bundle.id, module, step)
        if key not in self._patches:  # sweeps ask for the same source row once per candidate set
            self._patches[key] = self._activation(bundle, module)[: prefix_length(bundle, step)]
        return self._patches[key]

    def _bundle(self, source: str | None) -> Any:
        if source is None:
            if not self.bundles:
                raise ReplayError("a 'patch' intervention needs a baseline bundle as source; none were given")
            return next(iter(self.bundles.values()))  # the first counterfactual given, else the first baseline
        if source not in self.bundles:
            raise ReplayError(
                f"patch source {source!r} is not among the baselines ({', '.join(self.bundles) or 'none'})"
            )
        return self.bundles[source]

    @staticmethod
    def _activation(bundle: Any, module: str) -> np.ndarray:
        if module not in bundle.modules:
            raise ReplayError(f"baseline {bundle.id}: module {module!r} was not recorded")
        return np.asarray(bundle.activation(module), dtype=np.float32)
