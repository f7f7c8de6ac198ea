"""From per-module CF scores to a ranking of decoder layers: where the failure shows.

rank_layers(metrics)   # [{"layer": 7, "score": 9.3, "modules": [...], "anomalous": True}, ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forensics.models.arch import layer_of

__all__ = ["layer_of", "rank_layers"]


def rank_layers(metrics: Sequence[Any]) -> list[dict[str, Any]]:
    """Layers by onset: a fault shows first where it is planted and is carried forward by the
    residual stream, so each layer is scored by how much it *adds* to the strongest anomaly seen
    before it (its own max score minus the running max of earlier layers, floored at 0), ties broken
    by its own score."""
    per_layer: dict[int, list[Any]] = {}
    for m in metrics:
        layer = layer_of(m.module)
        if layer is not None:
            per_layer.setdefault(layer, []).append(m)
    rows: list[dict[str, Any]] = []
    running = 0.0
    for layer in sorted(per_layer):
        score = max(float(m.score) for m in per_layer[layer])
        rows.append(
            {
                "layer": layer,
                "score": score,
                "onset": max(0.0, score - running),
                "anomalous": any(m.is_anomalous for m in per_layer[layer]),
                "modules": [m.module for m in sorted(per_layer[layer], key=lambda m: -float(m.score))],
            }
        )
        running = max(running, score)
    rows.sort(key=lambda r: (-float(r["onset"]), -float(r["score"])))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows
