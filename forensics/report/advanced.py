"""The report's advanced-module sections: the ISC table (every subset of the fix set, Shapley values,
interactions) and the DBC curves (metric against α, the flip marked), from the JSON report alone.

    html = isc_section(report) + dbc_section(report)      # "" when the report has no isc / dbc
    svg = dbc_chart(report["dbc"])

Values come from ``forensics.cca.isc`` and ``forensics.cca.dbc`` (docs/report-schema.md, "ISC", "DBC").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from forensics.report.blocks import code, empty, interventions_table, section, table, yes
from forensics.report.plot import FIXED_COLOUR, Plot, esc, fmt

__all__ = ["dbc_chart", "dbc_section", "isc_section"]

_COLOURS = ("#1d2330", "#2b5ea7", "#c99a2e", "#7b3294", "#d7301f", "#4d9221")  # the set first, then members
_VERDICT_CSS = {"synergy": "yes", "redundancy": "no", "additive": "muted"}


def _verdict(value: Any) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    return f'<span class="{_VERDICT_CSS.get(str(value), "muted")}">{esc(value)}</span>'


def _subset_rows(isc: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for row in isc.get("subsets") or []:
        members = row.get("members") or []
        name = " + ".join(f"#{i}" for i in members) if members else "none (the incident)"
        rows.append(
            [
                esc(name),
                esc(len(members)),
                esc(fmt(row.get("metric"), 3)),
                esc(fmt(row.get("recovery"), 3)),
                yes(row.get("fixed")),
                code(row.get("argmax_token")),
            ]
        )
    return rows


def _interaction_rows(isc: Mapping[str, Any]) -> list[list[str]]:
    rows = [
        [
            esc(" × ".join(f"#{i}" for i in p.get("members") or [])),
            esc(fmt(p.get("interaction"), 3)),
            esc(fmt(p.get("interaction_recovery"), 3)),
            _verdict(p.get("verdict")),
        ]
        for p in isc.get("pairs") or []
    ]
    overall = isc.get("overall") or {}
    rows.append(
        [
            esc("all members (whole − sum of parts)"),
            esc(fmt(overall.get("interaction"), 3)),
            esc(fmt(overall.get("interaction_recovery"), 3)),
            _verdict(overall.get("verdict")),
        ]
    )
    return rows


def isc_section(report: Mapping[str, Any]) -> str:
    isc = report.get("isc")
    if not isinstance(isc, Mapping):
        return ""
    members = [{**iv, "module": f"#{i} {iv.get('module', '?')}"} for i, iv in enumerate(isc.get("members") or [])]
    shapley = [
        [esc(f"#{s.get('member')}"), esc(fmt(s.get("metric"), 3)), esc(fmt(s.get("recovery"), 3))]
        for s in isc.get("shapley") or []
    ]
    inner = (
        f"<p>{esc(isc.get('summary', ''))}</p>"
        + interventions_table(members)
        + "<h3>Every subset</h3>"
        + table(
            ["members in place", "size", "metric", "recovery", "fixed", "argmax"], _subset_rows(isc), numeric=(1, 2, 3)
        )
        + "<h3>Shapley values</h3>"
        + table(["member", "metric", "recovery"], shapley, numeric=(1, 2))
        + "<h3>Interactions</h3>"
        + empty(
            f"v(ij) − v(i) − v(j) + v(none); synergy above +{fmt(isc.get('tolerance'), 3)}, redundancy "
            f"below −{fmt(isc.get('tolerance'), 3)} (5 % of the whole set's effect), additive in between."
        )
        + table(
            ["members", "interaction (metric)", "interaction (recovery)", "verdict"],
            _interaction_rows(isc),
            numeric=(1, 2),
        )
    )
    return section("ISC: how the fix set's members interact", inner, "isc")


def dbc_chart(dbc: Mapping[str, Any]) -> str:
    """Metric against α, one line per curve (the set in black), each flip marked with a diamond."""
    grid, curves = dbc.get("alphas") or [], dbc.get("curves") or []
    if not grid or not curves:
        return ""
    with Plot("dbc", "decision boundary crossing: metric against alpha", 6.5, 3.2) as plot:
        ax = plot.fig.subplots()
        for c, curve in enumerate(curves):
            colour = _COLOURS[c % len(_COLOURS)]
            metric = curve.get("metric") or []
            name = str(curve.get("label", "?")) if c == 0 else f"#{(curve.get('members') or ['?'])[0]} alone"
            ax.plot(
                grid[: len(metric)],
                metric,
                color=colour,
                linewidth=2.0 if c == 0 else 1.2,
                marker=".",
                markersize=4,
                label=name,
                gid=plot.mark(
                    f"curve{c}",
                    css="curve",
                    tip=f"{curve.get('label', '?')}: "
                    + (
                        f"flips at α = {fmt(curve.get('flip_alpha'), 3)}"
                        if curve.get("flip_alpha") is not None
                        else "never flips"
                    ),
                ),
            )
            flip = curve.get("flip_alpha")
            if flip is not None:
                ax.plot(
                    [flip],
                    [0.0],
                    "D",
                    markersize=7,
                    color=FIXED_COLOUR,
                    markeredgecolor=colour,
                    gid=plot.mark(f"flip{c}", css="flip", tip=f"{name}: the decision flips at α = {fmt(flip, 3)}"),
                )
        ax.axhline(0.0, color="#5b6474", linewidth=0.8, linestyle=(0, (4, 3)))
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("α (0 = the incident, 1 = the fix in place)")
        ax.set_ylabel("metric (> 0: fixed)")
        ax.legend(fontsize=7, frameon=False, loc="best")
        return plot.svg()


def _curve_rows(curves: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for curve in curves:
        metric = curve.get("metric") or [None]
        rows.append(
            [
                esc(curve.get("label", "?")),
                esc(fmt(curve.get("flip_alpha"), 3)),
                esc(fmt(metric[0], 3)),
                esc(fmt(metric[-1], 3)),
                yes(curve.get("stays_fixed")),
                yes(curve.get("monotone")),
            ]
        )
    return rows


def dbc_section(report: Mapping[str, Any]) -> str:
    dbc = report.get("dbc")
    if not isinstance(dbc, Mapping):
        return ""
    svg = dbc_chart(dbc)
    intro = empty(
        "Each activation a member replaces is set to α·replacement + (1 − α)·activation; the flip is the "
        "first α whose argmax is the target (or no longer the forbidden token), placed where the metric "
        "crosses 0 between two grid points. Diamond: the flip."
    )
    inner = (
        f"<p>{esc(dbc.get('summary', ''))}</p>"
        + intro
        + (f'<div class="scroll">{svg}</div>' if svg else "")
        + table(
            ["curve", "flip α", "metric at α = 0", "metric at α = 1", "stays fixed", "monotone"],
            _curve_rows(dbc.get("curves") or []),
            numeric=(1, 2, 3),
        )
    )
    return section("DBC: where the decision flips", inner, "dbc")
