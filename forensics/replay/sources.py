"""Where ``mean`` and ``patch`` interventions get their values: benign / counterfactual bundles.

bank = SourceBank([benign_a, benign_b])
bank.mean("model.layers.3", length=12)              # [12, d] mean over baselines, aligned from the end
bank.patch("model.layers.3", "turkey_ok", length=12, step=0)   # [n, d] aligned from the end
bank.patch("model.layers.3.self_attn", "turkey_ok", step=0, heads=True)   # [n, heads * head_dim]

Head values (the input of an attention out-projection) are not in bundles: ``capture`` (set by the
replayer) computes them from a source's own tokens on the model, once per source; a source from another
model (a known-good reference) gets them from ``set_heads``, captured on that model, together with
each head's contribution through that model's out-projection (``heads.contributions``): a head patch
from such a source replaces the contribution (``contribution``), since the two versions' out-projections
may differ exactly there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        self._means: dict[tuple[str, bool, int], np.ndarray] = {}
        self._sums: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = {}  # (module, heads) -> aligned sums
        self._patches: dict[tuple[str, str, int, bool], np.ndarray] = {}
        self._heads: dict[str, dict[str, np.ndarray]] = {}  # bundle id -> {attention module: [T, width]}
        self._contributions: dict[str, dict[str, np.ndarray]] = {}  # ... -> {attention: [T, heads, hidden]}
        self.capture: Callable[[Any], dict[str, np.ndarray]] | None = None

    def set_heads(
        self, source: str, heads: dict[str, np.ndarray], contributions: dict[str, np.ndarray] | None = None
    ) -> None:
        """Head values of ``source``, captured elsewhere (on the model that produced it), and for a source
        from other weights than the replay's, each head's contribution through those weights."""
        self._heads[source] = heads
        if contributions is not None:
            self._contributions[source] = contributions

    def share(self, other: SourceBank) -> None:
        """Use ``other``'s caches (means, patch rows, captured heads): a replayer of another bundle with
        the same baselines (the side-effect check's benign replayers) then captures nothing twice.
        Refused unless both banks hold the same bundles."""
        if self.population.keys() != other.population.keys() or self.bundles.keys() != other.bundles.keys():
            raise ReplayError("source banks with different baselines cannot share their caches")
        self._means, self._sums, self._patches = other._means, other._sums, other._patches
        self._heads, self._contributions = other._heads, other._contributions

    def contribution(self, module: str, source: str | None, *, step: int) -> np.ndarray | None:
        """[n, heads, hidden]: what each head of ``module`` added in ``source`` (aligned from the end, as
        ``patch``), when the source comes from other weights; None for a source of the replay's own
        weights, whose head values say it all."""
        bundle = self._bundle(source)
        self._values(bundle, module, True)  # the first use captures them (a reference sets contributions)
        contribs = self._contributions.get(bundle.id)
        if contribs is None:
            return None
        if module not in contribs:
            raise ReplayError(f"baseline {bundle.id}: no head contributions for {module!r}")
        return contribs[module][: prefix_length(bundle, step)]

    def mean(self, module: str, *, length: int, heads: bool = False) -> np.ndarray:
        """[length, d] float32: at each position, the benign population's mean at the aligned position
        (every baseline's prompt aligned from the end, as patch sources are: its last prompt position with
        the last of ``length``), over the baselines long enough to reach it; NaN rows where none does.
        ``heads``: the module's out-projection input, every head side by side."""
        key = (module, heads, length)
        if key not in self._means:
            total, count = self._aligned_sums(module, heads)
            if length > len(count):  # positions no baseline reaches come first: NaN rows there
                pad = length - len(count)
                total = np.concatenate([np.zeros((pad, total.shape[-1])), total])
                count = np.concatenate([np.zeros(pad), count])
            with np.errstate(invalid="ignore", divide="ignore"):
                self._means[key] = (total[len(count) - length :] / count[len(count) - length :, None]).astype(
                    np.float32
                )
        return self._means[key]

    def _aligned_sums(self, module: str, heads: bool) -> tuple[np.ndarray, np.ndarray]:
        """The population's values summed position by position, aligned from the end, over as many
        positions as the longest baseline has, and how many baselines reach each: every length's mean is
        a tail of these (a family's members have many lengths; the activations are read once)."""
        if (module, heads) not in self._sums:
            if not self.population:
                raise ReplayError("a 'mean' intervention needs benign baseline bundles; none were given")
            values = [self._values(b, module, heads)[: prefix_length(b, 0)] for b in self.population.values()]
            longest = max(v.shape[0] for v in values)
            total, count = np.zeros((longest, values[0].shape[-1])), np.zeros(longest)
            for rows in values:
                total[longest - rows.shape[0] :] += rows
                count[longest - rows.shape[0] :] += 1
            self._sums[(module, heads)] = (total, count)
        return self._sums[(module, heads)]

    def patch(self, module: str, source: str | None, *, step: int, heads: bool = False) -> np.ndarray:
        """The source's activation up to its own decision position ``step`` (aligned from the end)."""
        bundle = self._bundle(source)
        key = (bundle.id, module, step, heads)
        if key not in self._patches:  # sweeps ask for the same source row once per candidate set
            self._patches[key] = self._values(bundle, module, heads)[: prefix_length(bundle, step)]
        return self._patches[key]

    def _values(self, bundle: Any, module: str, heads: bool) -> np.ndarray:
        if not heads:
            return self._activation(bundle, module)
        if bundle.id not in self._heads:
            if self.capture is None:
                raise ReplayError(f"head values of {bundle.id}: this replay cannot capture them")
            self._heads[bundle.id] = self.capture(bundle)
        captured = self._heads[bundle.id]
        if module not in captured:
            raise ReplayError(f"baseline {bundle.id}: no head values for {module!r}")
        return captured[module]

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
