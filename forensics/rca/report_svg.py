"""Inline SVG plots for the HTML report: CF score per module, recovery heatmap of single interventions.

    svg = cf_bar_chart(report["compression_metrics"], threshold=2.0)
    svg = recovery_heatmap(report["single_effects"])

Plain strings, no scripts, no external references, every piece of user text escaped: the page must
open offline, years later, from an incident ticket. Returns "" when there is nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from forensics.rca.localise import layer_of

__all__ = ["RECOVERY_RANGE", "cf_bar_chart", "column_label", "esc", "fmt", "recovery_colour", "recovery_heatmap", "site_of"]

RECOVERY_RANGE = (-1.0, 1.5)  # colour scale is clipped here; exact values stay in the tooltips
_NEG, _MID, _POS = (178, 24, 43), (247, 247, 247), (33, 102, 172)  # red - white - blue (ColorBrewer RdBu)
_BAR, _BAR_HOT = "#7a8ba6", "#d7301f"
_Row = tuple[int, int | str]  # sort key of a heatmap row: (0, layer) before (1, module path)


def esc(value: Any) -> str:
    """HTML/SVG-escape anything (quotes too: values also land in attributes)."""
    return escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for people: fixed digits, '—' for missing or non-finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else "—"


def site_of(module: str) -> str:
    """The part of a module path after its layer index: ``model.layers.7.mlp`` -> ``mlp``,
    ``model.layers.7`` -> ``block``; a path without a layer is its own site."""
    parts = module.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.isdigit():
            return ".".join(parts[i + 1 :]) or "block"
    return module


def _positions(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "p" + ",".join(str(v) for v in value)
    return str(value)


def column_label(iv: Mapping[str, Any], with_source: bool = False) -> str:
    """Heatmap column of an intervention: site/kind/positions (``mlp/zero/last``)."""
    kind = str(iv.get("kind", "?"))
    if with_source and iv.get("source") is not None:
        kind = f"{kind}[{iv['source']}]"
    return f"{site_of(str(iv.get('module', '?')))}/{kind}/{_positions(iv.get('positions', 'last'))}"


def recovery_colour(value: float) -> str:
    """Diverging colour around 0: red for harm (down to -1), blue for recovery (up to 1.5)."""
    lo, hi = RECOVERY_RANGE
    v = min(hi, max(lo, value)) if math.isfinite(value) else 0.0
    end, t = (_NEG, v / lo) if v < 0 else (_POS, v / hi)
    r, g, b = (round(m + (e - m) * t) for m, e in zip(_MID, end, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    return [i * step for i in range(int(top / step) + 1)]


# -- CF bar chart ---------------------------------------------------------------------------------
def _groups(metrics: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Metrics grouped by layer (in layer order), modules without a layer last."""
    by: dict[_Row, list[Mapping[str, Any]]] = {}
    for m in metrics:
        layer = layer_of(str(m.get("module", "")))
        key: _Row = (0, layer) if layer is not None else (1, "other")
        by.setdefault(key, []).append(m)
    return [(f"L{k[1]}" if k[0] == 0 else str(k[1]), by[k]) for k in sorted(by)]


def _bar(x: float, y0: float, h: float, w: float, m: Mapping[str, Any]) -> str:
    hot = bool(m.get("is_anomalous"))
    z = m.get("z_scores") or {}
    tip = f"{m.get('module')}: score {fmt(m.get('score'), 4)}" + (" (anomalous)" if hot else "")
    tip += "".join(f"\n{k}: z {fmt(v, 3)}" for k, v in z.items())
    cls = "bar anomalous" if hot else "bar"
    return (f'<rect class="{cls}" x="{x:.1f}" y="{y0 - h:.1f}" width="{w:.1f}" height="{max(h, 0.5):.1f}" '
            f'fill="{_BAR_HOT if hot else _BAR}"><title>{esc(tip)}</title></rect>'
            f'<text class="tick" x="{x + w / 2:.1f}" y="{y0 + 8:.1f}" transform="rotate(60 {x + w / 2:.1f} '
            f'{y0 + 8:.1f})">{esc(site_of(str(m.get("module", ""))))}</text>')


def _y_axis(left: float, right: float, y0: float, scale: float, top: float) -> list[str]:
    out = [f'<line class="axis" x1="{left}" y1="{y0}" x2="{right}" y2="{y0}"/>']
    for t in _nice_ticks(top):
        y = y0 - t * scale
        out.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{fmt(t, 1)}</text>')
    return out


def cf_bar_chart(metrics: Sequence[Mapping[str, Any]], threshold: float) -> str:
    """One bar per module (grouped by layer), anomalous bars highlighted, threshold as a dashed line."""
    if not metrics:
        return ""
    groups = _groups(metrics)
    gap, left, right, y0, plot_h = 12.0, 44.0, 84.0, 190.0, 170.0
    bar = min(36.0, max(14.0, (560.0 - gap * len(groups)) / len(metrics)))  # few modules: wider bars
    width = left + sum(len(ms) * bar + gap for _, ms in groups) + right
    top = max([float(m.get("score") or 0.0) for m in metrics] + [threshold]) * 1.1 or 1.0
    scale = plot_h / top
    parts = _y_axis(left, width - right, y0, scale, top)
    x = left + gap / 2
    for label, ms in groups:
        start = x
        for m in ms:
            parts.append(_bar(x, y0, float(m.get("score") or 0.0) * scale, bar - 2, m))
            x += bar
        parts.append(f'<text class="layer" x="{(start + x - 2) / 2:.1f}" y="{y0 + 78}" '
                     f'text-anchor="middle">{esc(label)}</text>')
        x += gap
    ty = y0 - threshold * scale
    parts.append(f'<line class="threshold" x1="{left}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}">'
                 f'<title>anomaly threshold {fmt(threshold, 2)}</title></line>'
                 f'<text class="thr-label" x="{width - right + 4}" y="{ty + 3:.1f}">threshold {fmt(threshold, 2)}</text>')
    return _svg(width, y0 + 90, "CF anomaly score per module", parts)


def _svg(width: float, height: float, label: str, parts: Sequence[str]) -> str:
    return (f'<svg class="plot" role="img" aria-label="{esc(label)}" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}">' + "".join(parts) + "</svg>")


# -- recovery heatmap -----------------------------------------------------------------------------
def _row_key(module: str) -> _Row:
    layer = layer_of(module)
    return (0, layer) if layer is not None else (1, module)


def _cells(effects: Sequence[Mapping[str, Any]]) -> tuple[list[_Row], list[str], dict[tuple[_Row, str], Any]]:
    """(rows, columns, {(row, column): effect}) for single-intervention effects."""
    ivs = [(e, (e.get("interventions") or [{}])[0]) for e in effects if e.get("interventions")]
    with_source = len({iv.get("source") for _, iv in ivs if iv.get("source") is not None}) > 1
    cells: dict[tuple[_Row, str], Any] = {}
    for e, iv in ivs:
        cells[(_row_key(str(iv.get("module", ""))), column_label(iv, with_source))] = e
    rows = sorted({r for r, _ in cells})
    cols = sorted({c for _, c in cells}, key=lambda c: (c.split("/")[0], c))
    return rows, cols, cells


def _cell(x: float, y: float, w: float, h: float, e: Mapping[str, Any]) -> str:
    iv = e["interventions"][0]
    rec = float(e.get("recovery") or 0.0)
    fixed = bool(e.get("fixed"))
    tip = (f"{iv.get('module')} {iv.get('kind')} {_positions(iv.get('positions'))}"
           + (f" from {iv['source']}" if iv.get("source") is not None else "")
           + f"\nrecovery {fmt(e.get('recovery'), 4)}, metric {fmt(e.get('metric'), 4)}"
           + f"\nargmax {e.get('argmax_token')!r}" + ("\nFIXED the failure alone" if fixed else ""))
    ink = "#fff" if abs(rec) > 0.75 else "#222"
    return (f'<g class="cell{" fixed" if fixed else ""}"><rect class="cell-bg" x="{x}" y="{y}" width="{w}" '
            f'height="{h}" fill="{recovery_colour(rec)}"/><title>{esc(tip)}</title>'
            f'<text x="{x + w / 2}" y="{y + h / 2 + 3}" text-anchor="middle" fill="{ink}">'
            f'{"✓" if fixed else ""}{fmt(rec, 2)}</text></g>')


def _legend(x: float, y: float) -> list[str]:
    lo, hi = RECOVERY_RANGE
    steps = 25
    out = [f'<rect x="{x + i * 6}" y="{y}" width="6" height="10" fill="{recovery_colour(lo + (hi - lo) * i / steps)}"/>'
           for i in range(steps + 1)]
    for v in (lo, 0.0, 1.0, hi):
        tx = x + (v - lo) / (hi - lo) * steps * 6 + 3
        out.append(f'<text class="tick" x="{tx:.1f}" y="{y + 22}" text-anchor="middle">{fmt(v, 1)}</text>')
    out.append(f'<text class="tick" x="{x + steps * 6 + 16}" y="{y + 9}">recovery (clipped); '
               '✓ and outline: fixes the failure alone</text>')
    return out


def recovery_heatmap(effects: Sequence[Mapping[str, Any]]) -> str:
    """Rows = layers, columns = site/kind/positions, colour = recovery of that single intervention."""
    rows, cols, cells = _cells(effects)
    if not cells:
        return ""
    cw, ch, left, top = 52, 24, 8 + 7 * max(len(_row_name(r)) for r in rows), 8 + 6 * max(map(len, cols))
    parts = [f'<text class="tick" x="{left + i * cw + cw / 2}" y="{top - 6}" transform="rotate(-60 '
             f'{left + i * cw + cw / 2} {top - 6})">{esc(c)}</text>' for i, c in enumerate(cols)]
    for j, r in enumerate(rows):
        y = top + j * ch
        parts.append(f'<text class="layer" x="{left - 6}" y="{y + ch / 2 + 4}" text-anchor="end">'
                     f'{esc(_row_name(r))}</text>')
        parts.extend(_cell(left + i * cw, y, cw - 2, ch - 2, cells[(r, c)])
                     for i, c in enumerate(cols) if (r, c) in cells)
    height = top + len(rows) * ch + 40
    parts.extend(_legend(left, height - 30))
    width = max(left + len(cols) * cw + 10, left + 520)  # room for the legend's caption
    return _svg(width, height, "recovery of single interventions", parts)


def _row_name(row: _Row) -> str:
    return f"L{row[1]}" if row[0] == 0 else str(row[1])
