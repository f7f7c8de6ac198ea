"""The report's plots, drawn with matplotlib as inline SVG: CF score per module, the layer x site/kind
heatmap of single interventions, the top single effects.

    svg = cf_bar_chart(report["compression_metrics"], threshold=2.0)
    scale = effect_scale(report)
    svg = recovery_heatmap(report["single_effects"], scale, num_layers=30, why_missing="scan stopped early")

Every plot returns "" when there is nothing to draw. Colours follow the verdicts: FIXED_COLOUR only
for an intervention that fixed the failure on its own; values on a diverging scale clipped to
[-1, 1] (the legend says so); cells never evaluated hatched grey, with the reason in their tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from forensics.cf.localise import layer_of
from forensics.report.plot import (
    FIXED_COLOUR,
    NOT_EVALUATED_COLOUR,
    RECOVERY_RANGE,
    Plot,
    esc,
    fmt,
    recovery_colour,
)

__all__ = [
    "FIXED_COLOUR",
    "RECOVERY_RANGE",
    "EffectScale",
    "cf_bar_chart",
    "column_label",
    "effect_scale",
    "esc",
    "fmt",
    "recovery_colour",
    "recovery_heatmap",
    "site_of",
    "top_effects_chart",
]

TOP_EFFECTS = 12
CELL_TEXT_LIMIT = 240  # more cells than this: values only in the tooltips
_BAR, _BAR_HOT, _INK = "#7a8ba6", "#d7301f", "#1d2330"
_Row = tuple[int, int | str]  # sort key of a heatmap row: (0, layer) before (1, module path)


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
    """Heatmap column of an intervention: site[/head]/kind/positions (``mlp/zero/last``, ``self_attn.h3/...``)."""
    kind = str(iv.get("kind", "?"))
    if with_source and iv.get("source") is not None:
        kind = f"{kind}[{iv['source']}]"
    site = site_of(str(iv.get("module", "?")))
    if iv.get("head") is not None:
        site = f"{site}.h{iv['head']}"
    return f"{site}/{kind}/{_positions(iv.get('positions', 'last'))}"


def describe(iv: Mapping[str, Any]) -> str:
    """One intervention in words, for tooltips and axis labels."""
    out = f"{iv.get('module', '?')}" + (f" head {iv['head']}" if iv.get("head") is not None else "")
    out += f" {iv.get('kind', '?')} {_positions(iv.get('positions', 'last'))}"
    if iv.get("source") is not None:
        out += f" from {iv['source']}"
    if iv.get("factor") is not None:
        out += f" ×{iv['factor']}"
    return out


@dataclass(frozen=True)
class EffectScale:
    """What a single intervention's colour measures: recovery when the report has it, else the share
    of the incident's margin the intervention closes (1 = a tie), never an invented recovery."""

    use_recovery: bool
    m_incident: float | None

    @property
    def name(self) -> str:
        return "recovery" if self.use_recovery else "share of the incident's margin closed"

    @property
    def formula(self) -> str:
        if self.use_recovery:
            return "(m − m_incident) / (m_baseline − m_incident)"
        return "(m − m_incident) / |m_incident|, recovery unavailable"

    @property
    def one(self) -> str:
        return "as good as the baseline" if self.use_recovery else "tie"

    def value(self, effect: Mapping[str, Any]) -> float | None:
        raw = effect.get("recovery") if self.use_recovery else self._share(effect.get("metric"))
        return float(raw) if isinstance(raw, int | float) and math.isfinite(raw) else None

    def _share(self, metric: Any) -> float | None:
        if not isinstance(metric, int | float) or self.m_incident is None or self.m_incident >= 0:
            return None
        return (float(metric) - self.m_incident) / -self.m_incident


def effect_scale(report: Mapping[str, Any]) -> EffectScale:
    decision = report.get("decision") or {}
    m_inc = decision.get("m_incident")
    m_inc = float(m_inc) if isinstance(m_inc, int | float) else None
    have = any(isinstance(e.get("recovery"), int | float) for e in report.get("single_effects") or [])
    return EffectScale(have and decision.get("recovery_available") is not False, m_inc)


# -- CF bar chart ---------------------------------------------------------------------------------
def _groups(metrics: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Metrics grouped by layer (in layer order), modules without a layer last."""
    by: dict[_Row, list[Mapping[str, Any]]] = {}
    for m in metrics:
        by.setdefault(_row_key(str(m.get("module", ""))), []).append(m)
    return [(_row_name(k), by[k]) for k in sorted(by, key=_sortable)]


def cf_bar_chart(metrics: Sequence[Mapping[str, Any]], threshold: float) -> str:
    """One bar per module (grouped by layer), anomalous bars highlighted, threshold as a dashed line."""
    if not metrics:
        return ""
    groups = _groups(metrics)
    width = min(16.0, max(5.0, 0.16 * len(metrics) + 0.12 * len(groups) + 1.5))
    with Plot("cf", "CF anomaly score per module", width, 2.8) as plot:
        ax = plot.fig.subplots()
        x, ticks, labels = 0.0, list[float](), list[str]()
        for label, ms in groups:
            start = x
            for m in ms:
                hot, score = bool(m.get("is_anomalous")), float(m.get("score") or 0.0)
                tip = f"{m.get('module')}: score {fmt(m.get('score'), 4)}" + (" (anomalous)" if hot else "")
                tip += "".join(f"\n{k}: z {fmt(v, 3)}" for k, v in (m.get("z_scores") or {}).items())
                ax.bar(
                    x,
                    score,
                    width=0.8,
                    color=_BAR_HOT if hot else _BAR,
                    gid=plot.mark(len(ticks), css="bar anomalous" if hot else "bar", tip=tip),
                )
                ticks.append(x)
                labels.append(site_of(str(m.get("module", ""))))
                x += 1.0
            ax.text(
                (start + x - 1) / 2,
                -0.42,
                label,
                transform=ax.get_xaxis_transform(),
                ha="center",
                fontweight="bold",
                color=_INK,
            )
            x += 0.6
        ax.axhline(threshold, color=_BAR_HOT, linestyle=(0, (6, 4)), linewidth=1.2)
        ax.text(
            1.0,
            threshold,
            f" threshold {fmt(threshold, 2)}",
            transform=ax.get_yaxis_transform(),
            va="center",
            color=_BAR_HOT,
            fontsize=8,
        )
        ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.8, x - 0.8)
        ax.set_ylabel("CF score (max |z|)")
        return plot.svg()


# -- heatmap --------------------------------------------------------------------------------------
def _row_key(module: str) -> _Row:
    layer = layer_of(module)
    return (0, layer) if layer is not None else (1, module)


def _sortable(row: _Row) -> tuple[int, int, str]:
    return (row[0], row[1] if isinstance(row[1], int) else 0, str(row[1]))


def _row_name(row: _Row) -> str:
    return f"L{row[1]}" if row[0] == 0 else str(row[1])


def _single_iv(effect: Mapping[str, Any]) -> Mapping[str, Any] | None:
    ivs = effect.get("interventions") or []
    return ivs[0] if ivs and isinstance(ivs[0], Mapping) else None


def _cells(
    effects: Sequence[Mapping[str, Any]],
    num_layers: int | None,
) -> tuple[list[_Row], list[str], dict[tuple[_Row, str], Mapping[str, Any]]]:
    """(rows, columns, {(row, column): effect}); rows cover every decoder layer when the count is known."""
    ivs = [(e, iv) for e in effects if (iv := _single_iv(e)) is not None]
    with_source = len({iv.get("source") for _, iv in ivs if iv.get("source") is not None}) > 1
    cells = {(_row_key(str(iv.get("module", ""))), column_label(iv, with_source)): e for e, iv in ivs}
    rows = {r for r, _ in cells} | ({(0, i) for i in range(num_layers)} if num_layers else set())
    cols = sorted({c for _, c in cells}, key=lambda c: (c.split("/")[0], c))
    return sorted(rows, key=_sortable), cols, cells


def _tip(effect: Mapping[str, Any], scale: EffectScale) -> str:
    iv = _single_iv(effect) or {}
    out = (
        f"{describe(iv)}\n{scale.name} {fmt(scale.value(effect), 4)}, metric {fmt(effect.get('metric'), 4)}"
        f"\nargmax {effect.get('argmax_token')!r}"
    )
    return out + ("\nFIXES the failure on its own" if effect.get("fixed") else "\ndoes not fix the failure")


def _draw_cell(
    ax: Any, plot: Plot, i: int, j: int, effect: Mapping[str, Any] | None, scale: EffectScale, missing: str, text: bool
) -> None:
    from matplotlib.patches import Rectangle

    key = f"{j}-{i}"
    if effect is None:
        ax.add_patch(
            Rectangle(
                (i, j),
                1,
                1,
                facecolor=NOT_EVALUATED_COLOUR,
                edgecolor="#a9aeb8",
                hatch="////",
                linewidth=0.0,
                gid=plot.mark(key, css="cell not-evaluated", tip=missing),
            )
        )
        return
    fixed, value = bool(effect.get("fixed")), scale.value(effect)
    colour = FIXED_COLOUR if fixed else recovery_colour(value) if value is not None else "#ffffff"
    ax.add_patch(
        Rectangle(
            (i, j),
            1,
            1,
            facecolor=colour,
            edgecolor="#ffffff",
            linewidth=1.0,
            gid=plot.mark(key, css="cell fixed" if fixed else "cell", tip=_tip(effect, scale)),
        )
    )
    label = "✓" if fixed else (fmt(value, 2) if value is not None else "n/a") if text else ""
    if label:
        ax.text(i + 0.5, j + 0.55, label, ha="center", va="center", fontsize=7, color="#ffffff" if fixed else _INK)


def recovery_heatmap(
    effects: Sequence[Mapping[str, Any]],
    scale: EffectScale | None = None,
    *,
    num_layers: int | None = None,
    why_missing: str = "not a candidate of this search",
) -> str:
    """Rows = layers, columns = site/kind/positions, colour = the scale's value of that single intervention."""
    scale = scale or EffectScale(True, None)
    rows, cols, cells = _cells(effects, num_layers)
    if not cells:
        return ""
    text = len(rows) * len(cols) <= CELL_TEXT_LIMIT
    with Plot("heat", f"{scale.name} of single interventions", 1.6 + 0.55 * len(cols), 1.9 + 0.26 * len(rows)) as plot:
        ax = plot.fig.subplots()
        for j, r in enumerate(rows):
            for i, c in enumerate(cols):
                missing = f"{_row_name(r)} {c}: not evaluated — {why_missing}"
                _draw_cell(ax, plot, i, j, cells.get((r, c)), scale, missing, text)
        ax.set_xlim(0, len(cols))
        ax.set_ylim(len(rows), 0)
        ax.set_xticks([i + 0.5 for i in range(len(cols))], cols, rotation=60, ha="right", fontsize=7)
        ax.set_yticks([j + 0.5 for j in range(len(rows))], [_row_name(r) for r in rows], fontsize=7)
        ax.tick_params(length=0)
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)
        _colourbar(plot, ax, scale)
        return plot.svg()


def _colourbar(plot: Plot, ax: Any, scale: EffectScale) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize

    lo, hi = RECOVERY_RANGE
    # 21 steps: below matplotlib's rasterising threshold, so the bar stays vector (no embedded image)
    cmap = LinearSegmentedColormap.from_list(
        "effect", [recovery_colour(lo), recovery_colour(0.0), recovery_colour(hi)], N=21
    )
    rows = max(1.0, abs(ax.get_ylim()[0] - ax.get_ylim()[1]))
    bar = plot.fig.colorbar(
        ScalarMappable(norm=Normalize(lo, hi), cmap=cmap),
        ax=ax,
        orientation="vertical",
        fraction=0.08,
        pad=0.03,
        aspect=20,
        shrink=min(1.0, 12.0 / rows),
    )
    bar.set_ticks([lo, 0.0, hi], labels=[f"≤ {fmt(lo, 0)}", "0", f"≥ {fmt(hi, 0)}"])
    bar.set_label(f"{scale.name} (1 = {scale.one}), colour clipped to [{fmt(lo, 0)}, {fmt(hi, 0)}]", fontsize=7)
    bar.ax.tick_params(labelsize=7)


# -- top single effects ---------------------------------------------------------------------------
def top_effects_chart(
    effects: Sequence[Mapping[str, Any]], scale: EffectScale | None = None, top: int = TOP_EFFECTS
) -> str:
    """A lollipop of the strongest single interventions (exact values, not clipped), fixes in FIXED_COLOUR."""
    scale = scale or EffectScale(True, None)
    scored = [(v, e) for e in effects if _single_iv(e) is not None and (v := scale.value(e)) is not None]
    best = sorted(scored, key=lambda ve: (not ve[1].get("fixed"), -ve[0]))[:top]
    if not best:
        return ""
    with Plot("top", f"top single effects by {scale.name}", 7.0, 0.9 + 0.27 * len(best)) as plot:
        ax = plot.fig.subplots()
        for y, (value, e) in enumerate(best):
            fixed = bool(e.get("fixed"))
            colour = FIXED_COLOUR if fixed else recovery_colour(value)
            ax.plot([0, value], [y, y], color="#9aa3b2", linewidth=1.2)
            ax.plot(
                [value],
                [y],
                "o",
                markersize=7,
                color=colour,
                markeredgecolor="#4a5160",
                markeredgewidth=0.6,
                gid=plot.mark(y, css="effect fixed" if fixed else "effect", tip=_tip(e, scale)),
            )
            note = ("✓ fixes → " if fixed else "→ ") + repr(str(e.get("argmax_token", "?")))
            ax.annotate(
                note,
                (value, y),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color=FIXED_COLOUR if fixed else "#5b6474",
            )
        ax.axvline(0.0, color="#5b6474", linewidth=0.8)
        ax.axvline(1.0, color="#5b6474", linewidth=0.8, linestyle=(0, (3, 3)))
        ax.text(
            1.0, 1.0, f" 1 = {scale.one}", transform=ax.get_xaxis_transform(), fontsize=7, color="#5b6474", va="bottom"
        )
        ax.set_yticks(range(len(best)), [describe(_single_iv(e) or {}) for _, e in best], fontsize=7)
        ax.set_ylim(len(best) - 0.5, -0.7)
        ax.set_xlabel(f"{scale.name}: {scale.formula} (exact, not clipped)", fontsize=8)
        lo = min(0.0, *(v for v, _ in best))
        hi = max(1.0, *(v for v, _ in best))
        ax.set_xlim(lo - 0.05 * (hi - lo), hi + 0.3 * (hi - lo))  # room for the argmax labels
        return plot.svg()
