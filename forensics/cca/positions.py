"""Position sets: the positions a candidate intervention acts on, and their labels.

    sets, labels = position_sets(6, tokens, spans, include=("last", "each", "ranges", "spans"))
    membership(sets, 6)     # [S, T] bool: which positions each set holds

``last``, ``all``, ``each`` other single position, contiguous ``ranges`` of 2 to ``MAX_RANGE`` positions
short of all of them, and the bundle's named ``spans`` (chat messages, tool results, sentences).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from forensics.replay.interventions import Positions
from forensics.vocab import CANDIDATE_POSITIONS

__all__ = ["MAX_RANGE", "membership", "position_sets"]

MAX_RANGE = 8  # longest contiguous range of positions proposed (longer stretches come as named spans)


def position_sets(
    length: int,
    tokens: Sequence[str] = (),
    spans: Sequence[Mapping[str, Any]] = (),
    include: Sequence[str] = CANDIDATE_POSITIONS,
) -> tuple[list[Positions], list[str]]:
    """(position sets, their labels), of the kinds in ``include``: ``last``, ``all``, ``each`` other
    single position, contiguous ``ranges`` of 2 to ``MAX_RANGE`` positions short of all of them, and the
    named ``spans`` inside the pass; a set is proposed once, under its first kind."""
    out: list[Positions] = []
    labels: list[str] = []
    seen: set[tuple[int, ...]] = set()

    def add(pos: Positions, key: tuple[int, ...], label: str) -> None:
        if key and key not in seen:
            seen.add(key)
            out.append(pos)
            labels.append(label)

    def tok(p: int) -> str:
        return f"{p} {tokens[p]!r}" if p < len(tokens) else str(p)

    if "last" in include:
        add("last", (length - 1,), f"last ({tok(length - 1)})")
    if "all" in include:
        add("all", tuple(range(length)), "all")
    if "each" in include:
        for p in range(length - 1):
            add((p,), (p,), tok(p))
    if "ranges" in include:
        for width in range(2, min(MAX_RANGE, length - 1) + 1):
            for start in range(0, length - width + 1):
                add(
                    tuple(range(start, start + width)),
                    tuple(range(start, start + width)),
                    f"{start}-{start + width - 1}",
                )
    if "spans" in include:
        for span in spans:
            lo, hi = (int(x) for x in span.get("tokens", (0, 0)))
            hi = min(hi, length)
            name = span.get("name") or span.get("role") or ""
            label = f"{span.get('kind', 'span')} {span.get('index', '')} ({name})"
            if hi - lo == length:
                continue  # the whole pass is 'all'
            add(tuple(range(lo, hi)), tuple(range(lo, hi)), label)
    return out, labels


def membership(positions: Sequence[Positions], length: int) -> np.ndarray:
    mask = np.zeros((len(positions), length), dtype=bool)
    for s, pos in enumerate(positions):
        if pos == "last":
            mask[s, length - 1] = True
        elif pos == "all":
            mask[s, :] = True
        else:
            mask[s, list(pos)] = True
    return mask
