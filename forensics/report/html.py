"""The HTML report: one self-contained page (inline CSS and SVG, no scripts, no network) per analysis.

    path = write_html(result, "reports/australia.html")     # an RCAResult or its to_dict() report
    page = render_html(json.load(open("reports/australia.json")))

Built from the JSON report alone (``model-forensics/rca@1`` or ``rca@2``, docs/report-schema.md), so a
stored report can be re-rendered later; a field an older report lacks is shown as "not in this
report". Every value from the report is escaped: prompts and tokens are user data and may hold
markup; a Content-Security-Policy forbids scripts as a second fence. Plots: report_svg (matplotlib);
ISC and DBC sections: report_advanced; provenance: report_provenance.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from forensics.durable import write_atomic
from forensics.report.advanced import dbc_section, isc_section
from forensics.report.blocks import code, empty, facts, flag, is_number, section, small, table, yes
from forensics.report.components import components_section
from forensics.report.plot import FIXED_COLOUR, NOT_EVALUATED_COLOUR, esc, fmt
from forensics.report.provenance import provenance_section
from forensics.report.ship import ship_section
from forensics.report.story import (
    commands_section,
    confidence_section,
    explanation,
    fix_sets,
    fixes_section,
    incident_section,
    input_level_section,
    not_evaluated_section,
)
from forensics.report.svg import cf_bar_chart, effect_scale, recovery_heatmap, top_effects_chart

__all__ = ["DEFAULT_THRESHOLD", "page", "render_html", "threshold_of", "verdict", "write_html"]

DEFAULT_THRESHOLD = 2.0
LOCALISATION_ROWS = 10
FIDELITY_ROWS = 12
_HATCH = f"repeating-linear-gradient(45deg,{NOT_EVALUATED_COLOUR} 0 3px,#a9aeb8 3px 4px)"
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f4f5f7}
main{max-width:1100px;margin:0 auto;padding:24px}
section,header{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:16px 20px;margin-bottom:16px}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:0 0 10px}h3{font-size:14px;margin:4px 0 8px}
nav{font-size:13px;margin-top:8px}nav a{margin-right:12px;color:#2b5ea7;text-decoration:none}
.verdict{font-size:17px;font-weight:600;padding:8px 12px;border-radius:4px;margin:8px 0 12px}
.verdict.ok{background:#e3f4e8;color:#145a2b}.verdict.warn{background:#fff3d6;color:#7a4b00}
.verdict.none{background:#f8e1e1;color:#7d1b1b}
.confidence b{font-size:22px;margin-right:8px}.explain{color:#3b4352}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:6px 16px;margin:8px 0 0}
dt{color:#5b6474}dd{margin:0;min-width:0}code,.tok,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.tok{background:#eef1f5;border-radius:3px;padding:0 4px;white-space:pre}
pre{margin:0;white-space:pre-wrap;word-break:break-word;background:#f6f7f9;border:1px solid #e3e6eb;border-radius:4px;padding:6px 8px}
pre.cmd{background:#1d2330;color:#f1f3f6;border:0;white-space:pre;overflow-x:auto}
mark{background:#ffd166;outline:2px solid #d98e04;border-radius:2px;padding:0 1px}
.card{border:1px solid #e3e6eb;border-radius:6px;padding:10px 14px;margin:10px 0}
.badge{display:inline-block;font-weight:600;border-radius:10px;padding:0 8px}
.badge.ok{background:#e3f4e8;color:#145a2b}.badge.warn{background:#fff3d6;color:#7a4b00}
section.input-level{border-left:4px solid #c99a2e}
.advice{background:#fff3d6;color:#5a3a00;border-radius:4px;padding:8px 12px;margin:8px 0}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e6e9ee;vertical-align:top}
th{color:#5b6474;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td table{width:auto}.scroll{overflow-x:auto}.muted{color:#7a8291}
.yes{color:#145a2b;font-weight:600}.no{color:#9a2323;font-weight:600}
svg.plot{display:block;max-width:100%;height:auto;margin:8px 0}
ul.legend{list-style:none;padding:0;margin:6px 0}ul.legend li{margin:3px 0}
.swatch{display:inline-block;width:14px;height:12px;border:1px solid #8a909c;vertical-align:middle;margin-right:6px}
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_NAV = (
    ("incident", "incident"),
    ("fix", "fix"),
    ("components", "components"),
    ("provenance", "provenance"),
    ("confidence", "confidence"),
    ("input-level", "input level"),
    ("singles", "single interventions"),
    ("cf", "CF"),
    ("fidelity", "fidelity"),
    ("not-evaluated", "not evaluated"),
    ("notes", "notes"),
    ("commands", "reproduce"),
)


class _HasToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def write_html(
    result_or_dict: _HasToDict | Mapping[str, Any], path: str | os.PathLike[str], *, threshold: float | None = None
) -> str:
    """Render and write atomically (tmp file in the same directory, fsync, rename); returns the path."""
    report = result_or_dict if isinstance(result_or_dict, Mapping) else result_or_dict.to_dict()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(report, threshold=threshold)
    write_atomic(target, page.encode("utf-8"), mode=0o644)  # a report is meant to be opened and shared
    return str(target)


def render_html(report: Mapping[str, Any], *, threshold: float | None = None) -> str:
    """The whole page as one string (deterministic: the same report renders byte-identical)."""
    thr = threshold if threshold is not None else threshold_of(report)
    body = "".join(
        [
            _header(report),
            incident_section(report),
            fixes_section(report),
            ship_section(report),
            components_section(report),
            isc_section(report),
            dbc_section(report),
            provenance_section(report),
            confidence_section(report),
            input_level_section(report),
            _singles_section(report),
            _cf_section(report, thr),
            _localisation_section(report),
            _fidelity_section(report),
            not_evaluated_section(report),
            _notes_section(report),
            commands_section(report),
        ]
    )
    return page(f"RCA {report.get('bundle_id', '?')}", body)


def page(title: str, body: str) -> str:
    """A self-contained page: the report's style, no script, nothing fetched (the CSP says so)."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body><main>\n{body}</main></body></html>\n"
    )


def threshold_of(report: Mapping[str, Any]) -> float:
    """CF anomaly threshold: ``search.cf_threshold``, else ``cf.anomaly_threshold``, else 2.0."""
    for part, key in (("search", "cf_threshold"), ("cf", "anomaly_threshold")):
        value = (report.get(part) or {}).get(key)
        if is_number(value):
            return float(value)
    return DEFAULT_THRESHOLD


def verdict(report: Mapping[str, Any]) -> tuple[str, str]:
    """(one-line verdict, css class ok | warn | none)."""
    sets = fix_sets(report)
    if sets:
        fix = sets[0]
        n = int(fix.get("size", len(fix.get("interventions") or [])))
        found = f"minimal fix set of {n} {'intervention' if n == 1 else 'interventions'}"
        if not fix.get("validated"):
            return (
                f"Fix set of {n} {'intervention' if n == 1 else 'interventions'} found but NOT validated by a "
                "fresh replay",
                "warn",
            )
        if fix.get("verdict") == "suppression":
            return (
                f"Validated {found}, but only a suppression: the new answer {fix.get('argmax_token', '?')!r} "
                "is punctuation, whitespace or an end token",
                "warn",
            )
        tail = (
            f": a correction, the model now says {fix.get('argmax_token', '?')!r}"
            if fix.get("verdict") == "correction"
            else ""
        )
        return f"Validated {found}{tail}", "ok"
    fidelity = report.get("fidelity") or {}
    if fidelity.get("faithful") is False:
        return "No fix set found: replay not faithful, interventions not interpreted", "none"
    if any(it.get("fixed") for it in report.get("input_level") or []):
        return "No fix set inside the model: the failure disappears only when the input is replaced", "none"
    return "No fix set found", "none"


# -- header ---------------------------------------------------------------------------------------
def _header(report: Mapping[str, Any]) -> str:
    text, css = verdict(report)
    model = report.get("model") or {}
    sha = str(model.get("sha256") or "")
    pairs = [
        ("bundle", code(report.get("bundle_id", "?"))),
        ("model", code(model.get("ref", "?")) + (f" · sha256 {code(sha[:12] + '…')}" if sha else "")),
        ("confidence", f"<b>{esc(fmt(report.get('confidence'), 2))}</b> — {esc(_without_number(explanation(report)))}"),
        ("execution time", _timing(report)),
    ]
    schema = f"{report.get('schema', '?')} · model-forensics {report.get('version', '?')}"
    nav = "<nav>" + "".join(f'<a href="#{css_id}">{esc(label)}</a>' for css_id, label in _NAV) + "</nav>"
    return (
        f"<header><h1>Root-cause analysis — {esc(report.get('bundle_id', '?'))}</h1>"
        f'<p class="verdict {css}">{esc(text)}</p>{facts(pairs)}'
        f'<p class="muted">{esc(schema)}</p>{nav}</header>\n'
    )


def _without_number(sentence: str) -> str:
    """ "confidence 0.80: validated on …" -> "validated on …" (the number stands next to it already)."""
    return re.sub(r"^(confidence\s+)?[0-9.]+\s*:\s*", "", sentence)


def _timing(report: Mapping[str, Any]) -> str:
    out = f"{esc(fmt(report.get('execution_time'), 2))} s"
    timings = report.get("timings") or {}
    if timings:
        out += ' <span class="muted">(' + ", ".join(f"{esc(k)} {esc(fmt(v, 2))} s" for k, v in timings.items())
        out += ")</span>"
    return out


# -- plots ----------------------------------------------------------------------------------------
def _layers_why(report: Mapping[str, Any]) -> str:
    """Why heatmap cells are empty, from ``not_evaluated`` (rca@2) or a generic reason."""
    items = report.get("not_evaluated") or []
    reasons = [f"{it.get('what', '?')}: {it.get('why', '?')}" for it in items if isinstance(it, Mapping)]
    return "; ".join(reasons) if reasons else "not a candidate of this search (no reason recorded in this report)"


def _singles_legend(report: Mapping[str, Any], scale_name: str, formula: str) -> str:
    why = _layers_why(report)
    return (
        '<ul class="legend">'
        f'<li><span class="swatch" style="background:{FIXED_COLOUR}"></span>✓ green: this single intervention '
        "fixes the failure on its own (the only cells drawn green)</li>"
        '<li><span class="swatch" style="background:linear-gradient(90deg,#d6604d,#f7f7f7,#67a9cf)"></span>'
        f"{esc(scale_name)} = {esc(formula)}; colour clipped to [−1, 1], exact values in the tooltips</li>"
        f'<li><span class="swatch" style="background:{_HATCH}"></span>hatched grey: not evaluated — {esc(why)}</li>'
        "</ul>"
    )


def _singles_section(report: Mapping[str, Any]) -> str:
    effects = report.get("single_effects") or []
    scale = effect_scale(report)
    layers = (report.get("model") or {}).get("num_layers")
    heat = recovery_heatmap(
        effects, scale, num_layers=layers if isinstance(layers, int) else None, why_missing=_layers_why(report)
    )
    if not heat:
        return section("Single interventions", empty("No single-intervention effects in this report."), "singles")
    fixed = sum(1 for e in effects if e.get("fixed"))
    caption = (
        f"{len(effects)} single interventions evaluated, {fixed} fix the failure on their own. "
        "Rows: layers; columns: site/kind/positions. Hover a cell for exact values."
    )
    top = top_effects_chart(effects, scale)
    inner = f'<p>{esc(caption)}</p>{_singles_legend(report, scale.name, scale.formula)}<div class="scroll">{heat}</div>'
    if top:
        inner += f'<h3>Top single effects</h3><div class="scroll">{top}</div>'
    return section("Single interventions", inner, "singles")


def _cf_section(report: Mapping[str, Any], threshold: float) -> str:
    metrics = report.get("compression_metrics") or []
    svg = cf_bar_chart(metrics, threshold)
    if not svg:
        return section("Where: compression forensics", empty("No CF metrics in this report."), "cf")
    hot = sum(1 for m in metrics if m.get("is_anomalous"))
    caption = (
        f"{hot} of {len(metrics)} modules above the anomaly threshold {fmt(threshold, 2)} "
        "(score = max |z| of compression ratios against benign baselines). CF orders the search; it is "
        "not evidence of a cause by itself."
    )
    return section("Where: compression forensics", f'<p>{esc(caption)}</p><div class="scroll">{svg}</div>', "cf")


# -- fidelity, localisation, notes ----------------------------------------------------------------
def _module_rows(modules: Mapping[str, Any]) -> str:
    def rel(m: Mapping[str, Any]) -> float:  # a shape mismatch (rel null) sorts first
        return float(m["rel"]) if is_number(m.get("rel")) else float("inf")

    worst = sorted(modules.items(), key=lambda kv: -rel(kv[1]))[:FIDELITY_ROWS]
    rows = [
        [code(name), small(m.get("abs")), small(m.get("rel")), small(m.get("scale")), yes(m.get("ok"))]
        for name, m in worst
    ]
    return (
        f"<details><summary>per module ({min(len(modules), FIDELITY_ROWS)} of {len(modules)}, largest relative "
        "error first)</summary>"
        + table(["module", "abs", "rel", "scale", "ok"], rows, numeric=(1, 2, 3))
        + "</details>"
    )


def _fidelity_section(report: Mapping[str, Any]) -> str:
    fid = report.get("fidelity") or {}
    rep = report.get("replays") or {}
    search = report.get("search") or {}
    first = fid.get("first_divergent")
    tol = (
        f"atol {small(fid.get('atol'))} + rtol {small(fid.get('rtol'))} · max|recorded|"
        if "rtol" in fid
        else small(fid.get("tolerance"))
    )
    pairs = [
        ("faithful", yes(fid.get("faithful"))),
        (
            "max logit diff",
            small(fid.get("max_logit_diff"))
            + (f" (tolerance {small(fid.get('logit_tolerance'))})" if "logit_tolerance" in fid else ""),
        ),
        ("max activation diff", small(fid.get("max_activation_diff"))),
        ("module tolerance", tol),
        ("first divergent module", code(first) if first else '<span class="muted">none</span>'),
        ("forward passes", esc(rep.get("forward_passes", "—"))),
        ("candidates / evaluated", f"{esc(rep.get('candidates', '—'))} / {esc(rep.get('evaluated', '—'))}"),
        ("budget exhausted", flag(rep.get("budget_exhausted"))),
        ("search", esc(f"{search.get('strategy', '—')}, {len(search.get('steps') or [])} steps")),
    ]
    if "timed_out" in rep:
        pairs.insert(8, ("timed out", flag(rep.get("timed_out"))))
    advice = f'<p class="advice">{esc(fid["advice"])}</p>' if fid.get("advice") else ""
    modules = fid.get("modules")
    detail = _module_rows(modules) if isinstance(modules, Mapping) and modules else ""
    return section("Replay fidelity and cost", advice + facts(pairs) + detail, "fidelity")


def _localisation_section(report: Mapping[str, Any]) -> str:
    rows = list(report.get("localisation") or [])[:LOCALISATION_ROWS]
    if not rows:
        return section("Localisation", empty("No layer ranking (no CF metrics)."), "localisation")
    cells = [
        [
            esc(r.get("rank", "—")),
            esc(r.get("layer", "—")),
            esc(fmt(r.get("score"), 3)),
            esc(fmt(r.get("onset"), 3)),
            yes(r.get("anomalous")),
            ", ".join(code(m) for m in (r.get("modules") or [])[:3]),
        ]
        for r in rows
    ]
    note = empty("Layers by onset: how much a layer adds to the strongest anomaly seen before it.")
    return section(
        "Localisation",
        note + table(["rank", "layer", "score", "onset", "anomalous", "top modules"], cells, numeric=(0, 1, 2, 3)),
        "localisation",
    )


def _notes_section(report: Mapping[str, Any]) -> str:
    notes = report.get("notes") or []
    inner = "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else empty("No notes.")
    return section("Notes", inner, "notes")
