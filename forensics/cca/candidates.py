"""Candidates of the exhaustive search: every single intervention that can name a cause.

    candidates = build_candidates(modules, config, sources, prior, length=rp.length, heads={"model.layers.3.self_attn": 9})

With ``prefilter: atp`` the candidates come ranked from ``forensics.cca.atp.attribute`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from forensics.cca.fixset import is_input_substitution
from forensics.cca.positions import position_sets
from forensics.config import CCAConfig
from forensics.models.arch import component_of
from forensics.replay.interventions import Intervention, Positions

__all__ = ["build_candidates"]


def build_candidates(
    modules: Sequence[str],
    config: CCAConfig,
    sources: Sequence[str],
    prior: dict[str, float],
    *,
    output_module: str | None = None,
    reference_runs: frozenset[str] = frozenset(),
    length: int | None = None,
    heads: Mapping[str, int] | None = None,
    spans: Sequence[Mapping[str, Any]] = (),
) -> list[Intervention]:
    """Every single intervention that can name a cause, the most CF-anomalous modules first (the
    exhaustive search, ``prefilter: none``; with ``atp`` the candidates come ranked from ``atp.attribute``).

    Position sets beyond ``last``/``all`` (``each``, ``ranges``, ``spans``) need the pass ``length``; head
    candidates need ``heads`` ({attention module: number of heads}). ``output_module`` (the last decoder
    layer's residual) is never patched: its state at a position IS the source's prediction there, so
    patching it substitutes the output the way patching every position substitutes the input."""
    if length is None:
        positions: list[Positions] = [p for p in config.positions if p in ("last", "all")]
    else:
        positions = position_sets(length, spans=spans, include=config.positions)[0]
    places: list[tuple[str, int | None]] = []
    for module in sorted(modules, key=lambda m: -prior.get(m, 0.0)):
        site = component_of(module).site
        if site in config.components:
            places.append((module, None))
        if site == "attn" and "head" in config.components:
            places += [(module, h) for h in range((heads or {}).get(module, 0))]
    out: list[Intervention] = []
    for module, head in places:
        for kind in config.intervention_types:
            for source in sources if kind == "patch" else [None]:
                for pos in positions:
                    iv = Intervention(module, kind, pos, source, 0.0 if kind == "scale" else None, head=head)
                    if not is_input_substitution(iv, reference_runs) and not (
                        kind == "patch" and module == output_module
                    ):
                        out.append(iv)
    return out
