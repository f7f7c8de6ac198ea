"""The report's component section: the answer in words, the components ranked by exact effect next to
their AtP estimates, and layer x position heatmaps of both (from the JSON report alone).

    html = components_section(report)       # "" when the report has no components
    svg = effect_heatmap(grid, "AtP estimate")

Values come from ``forensics.cca.components`` and ``forensics.cca.atp`` (docs/report-schema.md,
"Components", "Attribution"). A cell is the largest gain any candidate at that layer and single
position reaches (blue: towards the expected answer, red: away); blank cells were not estimated or not
replayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from forensics.report.blocks import code, section, table, yes
from forensics.report.plot import Plot, esc, fmt

__all__ = [
    "ATP_LEGEND",
    "EXACT_LEGEND",
    "column_tokens",
    "components_section",
    "effect_heatmap",
    "exact_grid",
    "token_label",
]

ROWS = 15
_POS, _NEG, _MID = (43, 94, 167), (178, 24, 43), (247, 247, 247)


def _colour(value: float, scale: float) -> str:
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    end, t = (_POS, t) if t >= 0 else (_NEG, -t)
    r, g, b = (round(m + (e - m) * t) for m, e in zip(_MID, end, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def exact_grid(report: Mapping[str, Any], layers: int, length: int) -> list[list[float | None]]:
    """Layer x single position: the largest exact effect of an evaluated single intervention there."""
    grid: list[list[float | None]] = [[None] * length for _ in range(layers)]
    for row in report.get("components") or []:
        layer, pos = (row.get("component") or {}).get("layer"), (row.get("intervention") or {}).get("positions")
        at = length - 1 if pos == "last" else pos[0] if isinstance(pos, list) and len(pos) == 1 else None
        if isinstance(layer, int) and 0 <= layer < layers and isinstance(at, int) and 0 <= at < length:
            old, new = grid[layer][at], float(row.get("effect") or 0.0)
            grid[layer][at] = new if old is None else max(old, new)
    return grid


def _merged(
    sites: Mapping[str, Sequence[Sequence[float | None]]], layers: int, length: int
) -> list[list[float | None]]:
    grid: list[list[float | None]] = [[None] * length for _ in range(layers)]
    for rows in sites.values():
        for layer, row in enumerate(rows[:layers]):
            for p, value in enumerate(row[:length]):
                if value is not None and (grid[layer][p] is None or value > (grid[layer][p] or 0.0)):
                    grid[layer][p] = float(value)
    return grid


ATP_LEGEND = "estimated change of the decision margin, logits"
EXACT_LEGEND = "exact change of the decision margin, logits"
_TICK = 12  # longest token label, in characters; a longer one is cut with "…"


def token_label(token: str, position: int) -> str:
    """A column's label: its token, escapes visible (``\\n``), leading/trailing spaces dropped (a space
    alone shows as ``␣``), cut at ``_TICK`` characters; its position number when it has no token.

        >>> token_label(" Australia", 3), token_label(" ", 0), token_label("", 7)
        ('Australia', '␣', '7')
    """
    if not token:
        return str(position)
    text = repr(token)[1:-1].strip() or "␣"
    return text if len(text) <= _TICK else text[: _TICK - 1] + "…"


def effect_heatmap(
    grid: Sequence[Sequence[float | None]], title: str, tokens: Sequence[str] = (), *, legend: str = EXACT_LEGEND
) -> str:
    """One heatmap: layers down, positions across (each column labelled with its token, rotated when long
    or many), each cell's value in its tooltip, and a colour key in ``legend``'s units beside it."""
    layers, length = len(grid), len(grid[0]) if grid else 0
    values = [abs(v) for row in grid for v in row if v is not None and math.isfinite(v)]
    if not values:
        return ""
    from matplotlib.patches import Rectangle

    scale = max(values)
    labels = [token_label(t, p) for p, t in enumerate([*tokens, *[""] * length][:length])]
    rotate = length > 12 or max(len(x) for x in labels) > 3
    height = 0.6 + 0.14 * layers
    with Plot(title, title, max(3.2, 1.6 + 0.45 * length), height + 1.3 + (0.5 if rotate else 0.0)) as plot:
        plot.fig.set_layout_engine("constrained")
        ax, key = plot.fig.subplots(2, 1, gridspec_kw={"height_ratios": [height, 0.14]})
        for layer, row in enumerate(grid):
            for p, value in enumerate(row):
                if value is None:
                    continue
                tip = f"layer {layer}, position {p}" + (f" {tokens[p]!r}" if p < len(tokens) else "")
                ax.add_patch(
                    Rectangle(
                        (p, layer),
                        1,
                        1,
                        facecolor=_colour(value, scale),
                        edgecolor="white",
                        linewidth=0.5,
                        gid=plot.mark(f"{layer}-{p}", css="cell", tip=f"{tip}: {fmt(value, 3)} logits"),
                    )
                )
        ax.set_xlim(0, length)
        ax.set_ylim(layers, 0)
        ax.set_xticks([p + 0.5 for p in range(length)])
        ax.set_xticklabels(labels, rotation=90 if rotate else 0, fontsize=7)
        ax.set_xlabel("position (token)")
        ax.set_yticks([layer + 0.5 for layer in range(layers)])
        ax.set_yticklabels([str(layer) for layer in range(layers)], fontsize=7)
        ax.set_ylabel("layer")
        ax.set_title(f"{title} (max |value| {scale:.2f} logits)", fontsize=9)
        _colour_key(key, scale, legend, plot)
        return plot.svg()


def _colour_key(ax: Any, scale: float, legend: str, plot: Plot) -> None:
    """A colour key under the map from -``scale`` (red: away from the expected answer) to +``scale``
    (blue: towards it), titled with ``legend``; drawn as rectangles, so the SVG carries no raster image."""
    from matplotlib.patches import Rectangle

    steps = 21
    for i in range(steps):
        value = scale * (2 * i / (steps - 1) - 1)
        ax.add_patch(Rectangle((i, 0), 1, 1, facecolor=_colour(value, scale), edgecolor="none"))
    ax.set_xlim(0, steps)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([0.5, steps / 2, steps - 0.5])
    ax.set_xticklabels([f"{-scale:+.2f} (away)", "0", f"{scale:+.2f} (towards)"], fontsize=7)
    ax.spines[["left", "bottom"]].set_visible(False)
    ax.tick_params(length=0)
    ax.set_xlabel(legend, fontsize=7)
    ax.set_gid(plot.mark("legend", css="legend", tip=f"colour: {legend}; blue towards the expected answer, red away"))


def column_tokens(report: Mapping[str, Any], length: int) -> list[str]:
    """The incident's token at each of the grid's ``length`` positions: the attribution grid's ``tokens``,
    else the incident section's, else none (older reports: the columns keep their numbers)."""
    grid = (report.get("attribution") or {}).get("grid") or {}
    for tokens in (grid.get("tokens"), (report.get("incident") or {}).get("tokens")):
        if isinstance(tokens, list) and len(tokens) == length and all(isinstance(t, str) for t in tokens):
            return list(tokens)
    return []


def components_section(report: Mapping[str, Any]) -> str:
    rows = report.get("components") or []
    attribution = report.get("attribution") or {}
    if not rows and not attribution:
        return ""
    parts = []
    if report.get("summary"):
        parts.append(f"<p>{esc(report['summary'])}</p>")
    if attribution:
        parts.append(
            '<p class="muted">Attribution patching estimated '
            f"{esc(attribution.get('candidates'))} component × position candidates from one forward and one "
            f"backward pass ({esc(fmt(attribution.get('seconds'), 2))} s); the exact replay evaluated the top "
            f"{esc(attribution.get('kept'))}. Each row shows both.</p>"
        )
    table_rows = [
        [
            esc((r.get("component") or {}).get("label", "?")),
            esc(r.get("where", "")),
            esc((r.get("intervention") or {}).get("kind", "")),
            esc(fmt(r.get("atp"), 3)),
            esc(fmt(r.get("effect"), 3)),
            yes(r.get("fixed")),
            code(r.get("argmax_token")),
        ]
        for r in rows[:ROWS]
    ]
    if table_rows:
        parts.append(
            table(
                ["component", "where", "intervention", "AtP estimate", "exact effect", "fixes it", "answers"],
                table_rows,
                numeric=(3, 4),
            )
        )
    grid = attribution.get("grid") or {}
    layers, length = int(grid.get("layers") or 0), int(grid.get("positions") or 0)
    tokens = column_tokens(report, length)
    if layers and length:
        merged = _merged(grid.get("sites") or {}, layers, length)
        parts.append(effect_heatmap(merged, "AtP estimate", tokens, legend=ATP_LEGEND))
        parts.append(effect_heatmap(exact_grid(report, layers, length), "exact effect", tokens, legend=EXACT_LEGEND))
    return section("Components: what pushes the answer", "".join(parts), "components")
