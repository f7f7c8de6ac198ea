"""Interventions: small frozen, JSON-serialisable values; one batched driver applies them.

    iv = Intervention("model.layers.10", "zero", "last")
    Intervention.parse_sets('[{"module": "model.layers.10", "kind": "zero", "positions": "last"}]')

Every intervention becomes ``new = out * scale + add`` on its rows and positions, so a batch of K
candidate sets is one fused tensor op per hooked module — no Python loop over batch rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from forensics.errors import ConfigError
from forensics.vocab import INTERVENTION_KINDS, InterventionKind, PositionName

__all__ = ["Intervention", "InterventionSet", "Positions"]

Positions = PositionName | tuple[int, ...]


@dataclass(frozen=True, order=True)
class Intervention:
    """Replace (or scale) ``module``'s output at ``positions``.

    kind: ``zero`` | ``mean`` (the benign baselines' mean at the aligned position,
    aligned from the end as patches are) | ``patch`` (from baseline bundle
    ``source``, positions aligned from the end) | ``scale`` (multiply by ``factor``).
    alpha: how far to go, in [0, 1] (None: all the way, 1): a replacing kind blends
    ``alpha * replacement + (1 - alpha) * activation``; ``scale`` multiplies by ``1 + alpha * (factor - 1)``.
    0 changes nothing; the decision-boundary scan (``forensics.cca.dbc``) walks it.
    head: with an attention ``module`` (``model.layers.3.self_attn``), change only that head's output —
    its slice of the input of the attention output projection — and leave the other heads alone.
    """

    module: str
    kind: InterventionKind
    positions: Positions = "last"
    source: str | None = None
    factor: float | None = None
    alpha: float | None = None
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in INTERVENTION_KINDS:
            raise ConfigError(
                f"intervention kind {self.kind!r} not allowed; use one of {', '.join(INTERVENTION_KINDS)}"
            )
        if not isinstance(self.module, str) or not self.module:
            raise ConfigError(f"intervention module must be a non-empty string, got {self.module!r}")
        if isinstance(self.positions, list):
            object.__setattr__(self, "positions", tuple(self.positions))
        if not (self.positions in ("last", "all") or _int_tuple(self.positions)):
            raise ConfigError(f"intervention positions {self.positions!r}: use 'last', 'all' or a list of ints")
        if self.kind == "scale" and self.factor is None:
            raise ConfigError("intervention kind 'scale' needs a 'factor'")
        if self.alpha is not None:
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not 0.0 <= self.alpha <= 1.0:
                raise ConfigError(f"intervention alpha must be a number in [0, 1] (or absent), got {self.alpha!r}")
            object.__setattr__(self, "alpha", float(self.alpha))
        if self.head is not None and (isinstance(self.head, bool) or not isinstance(self.head, int) or self.head < 0):
            raise ConfigError(f"intervention head must be an int >= 0 (or absent), got {self.head!r}")

    def sort_key(self) -> tuple[Any, ...]:
        """A total order over interventions (the dataclass order fails on "last" vs a tuple, None vs 1)."""
        positions = (0, ()) if self.positions == "last" else (1, ()) if self.positions == "all" else (2, self.positions)
        return (
            self.module,
            -1 if self.head is None else self.head,
            self.kind,
            positions,
            self.source or "",
            -1.0 if self.factor is None else self.factor,
            -1.0 if self.alpha is None else self.alpha,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"module": self.module, "kind": self.kind, "positions": self.positions}
        if isinstance(self.positions, tuple):
            out["positions"] = list(self.positions)
        if self.source is not None:
            out["source"] = self.source
        if self.factor is not None:
            out["factor"] = self.factor
        if self.alpha is not None:
            out["alpha"] = self.alpha
        if self.head is not None:
            out["head"] = self.head
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Intervention:
        if not isinstance(data, dict):
            raise ConfigError(f"an intervention is a JSON object, got {type(data).__name__}: {data!r}")
        unknown = set(data) - {"module", "kind", "positions", "source", "factor", "alpha", "head"}
        if unknown or "module" not in data or "kind" not in data:
            raise ConfigError(
                f"intervention {data!r}: needs 'module' and 'kind'; optional 'positions', 'source', 'factor', 'alpha', 'head'"
                + (f"; unknown keys {sorted(unknown)}" if unknown else "")
            )
        factor = data.get("factor")
        return cls(
            data["module"],
            data["kind"],
            data.get("positions", "last"),
            data.get("source"),
            float(factor) if factor is not None else None,
            alpha=data.get("alpha"),
            head=data.get("head"),
        )

    @staticmethod
    def parse_sets(text: str) -> InterventionSet:
        """One intervention set from JSON text: a list of objects (or a single object)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"interventions are not valid JSON: {exc}") from exc
        items = data if isinstance(data, list) else [data]
        return tuple(Intervention.from_dict(item) for item in items)


InterventionSet = tuple[Intervention, ...]


def _int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, int) for v in value)
