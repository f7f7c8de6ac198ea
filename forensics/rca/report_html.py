"""The HTML report: one self-contained page (inline CSS and SVG, no scripts, no network) per analysis.

    path = write_html(result, "reports/australia.html")     # an RCAResult or its to_dict() report
    page = render_html(json.load(open("reports/australia.json")))

Built from the JSON report alone (schema ``model-forensics/rca@1``, docs/report-schema.md), so a
stored report can be re-rendered later. Every value from the report is escaped: prompts and tokens
are user data and may hold markup; a Content-Security-Policy forbids scripts as a second fence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from forensics.durable import write_atomic
from forensics.rca.report_svg import cf_bar_chart, esc, fmt, recovery_heatmap

__all__ = ["DEFAULT_THRESHOLD", "render_html", "threshold_of", "verdict", "write_html"]

DEFAULT_THRESHOLD = 2.0
LOCALISATION_ROWS = 10

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f4f5f7}
main{max-width:1100px;margin:0 auto;padding:24px}
section,header{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:16px 20px;margin-bottom:16px}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:0 0 10px}
.verdict{font-size:17px;font-weight:600;padding:8px 12px;border-radius:4px;margin:8px 0 12px}
.verdict.ok{background:#e3f4e8;color:#145a2b}.verdict.warn{background:#fff3d6;color:#7a4b00}
.verdict.none{background:#f8e1e1;color:#7d1b1b}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:#5b6474}dd{margin:0}code,.tok{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.tok{background:#eef1f5;border-radius:3px;padding:0 4px;white-space:pre}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e6e9ee}
th{color:#5b6474;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}.muted{color:#7a8291}.yes{color:#145a2b;font-weight:600}.no{color:#9a2323;font-weight:600}
svg.plot{font:11px system-ui,sans-serif;display:block}
svg .axis{stroke:#556;stroke-width:1}svg .grid{stroke:#e4e7ec;stroke-width:1}
svg .tick{fill:#556;font-size:10px}svg .layer{fill:#1d2330;font-weight:600}
svg .threshold{stroke:#d7301f;stroke-width:1.5;stroke-dasharray:6 4}svg .thr-label{fill:#d7301f;font-size:10px}
svg .cell text{font-size:10px}svg .cell.fixed rect{stroke:#111;stroke-width:2.5}
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'"


class _HasToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def write_html(result_or_dict: _HasToDict | Mapping[str, Any], path: str | os.PathLike[str], *,
               threshold: float | None = None) -> str:
    """Render and write atomically (tmp file in the same directory, fsync, rename); returns the path."""
    report = result_or_dict if isinstance(result_or_dict, Mapping) else result_or_dict.to_dict()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page = render_html(report, threshold=threshold)
    write_atomic(target, page.encode("utf-8"), mode=0o644)  # a report is meant to be opened and shared
    return str(target)


def render_html(report: Mapping[str, Any], *, threshold: float | None = None) -> str:
    """The whole page as one string."""
    thr = threshold if threshold is not None else threshold_of(report)
    body = "".join([_header(report), _cf_section(report, thr), _heatmap_section(report), _fix_section(report),
                    _fidelity_section(report), _localisation_section(report), _notes_section(report)])
    title = f"RCA {report.get('bundle_id', '?')}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body><main>\n{body}</main></body></html>\n")


def threshold_of(report: Mapping[str, Any]) -> float:
    """CF anomaly threshold: ``search.cf_threshold``, else ``cf.anomaly_threshold``, else 2.0."""
    for section, key in (("search", "cf_threshold"), ("cf", "anomaly_threshold")):
        value = (report.get(section) or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return DEFAULT_THRESHOLD


def verdict(report: Mapping[str, Any]) -> tuple[str, str]:
    """(one-line verdict, css class ok | warn | none)."""
    fix = report.get("fix_set")
    if fix:
        n = int(fix.get("size", len(fix.get("interventions") or [])))
        noun = "intervention" if n == 1 else "interventions"
        if fix.get("validated"):
            return f"Validated minimal fix set of {n} {noun}", "ok"
        return f"Fix set of {n} {noun} found but NOT validated by a fresh replay", "warn"
    fidelity = report.get("fidelity") or {}
    if fidelity.get("faithful") is False:
        return "No fix set found: replay not faithful, interventions not interpreted", "none"
    return "No fix set found", "none"


# -- small builders -------------------------------------------------------------------------------
def _tok(text: Any) -> str:
    """A token or text as a visible literal (quotes, \\n, leading spaces), escaped."""
    if text is None:
        return '<span class="muted">—</span>'
    return f'<span class="tok">{esc(json.dumps(str(text), ensure_ascii=False))}</span>'


def _small(value: Any) -> str:
    """Tiny differences and tolerances: 3 significant digits (2e-06), not fixed decimals."""
    return f"{value:.3g}" if isinstance(value, int | float) and not isinstance(value, bool) else fmt(value)


def _yes(flag: Any) -> str:
    if flag is None:
        return '<span class="muted">—</span>'
    return '<span class="yes">yes</span>' if flag else '<span class="no">no</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """Cells are HTML already (callers escape); ``numeric`` column indexes are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _facts(pairs: Sequence[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def _section(title: str, inner: str, css_id: str) -> str:
    return f'<section id="{css_id}"><h2>{esc(title)}</h2>{inner}</section>\n'


def _empty(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


# -- sections -------------------------------------------------------------------------------------
def _header(report: Mapping[str, Any]) -> str:
    text, css = verdict(report)
    model = report.get("model") or {}
    sha = str(model.get("sha256") or "")
    pairs = [("bundle", f"<code>{esc(report.get('bundle_id', '?'))}</code>"),
             ("model", f"<code>{esc(model.get('ref', '?'))}</code>" + (f" · sha256 <code>{esc(sha[:12])}…</code>"
                                                                       if sha else "")),
             ("decision", _decision(report.get("decision") or {})),
             ("confidence", esc(fmt(report.get("confidence"), 2))),
             ("execution time", _timing(report))]
    schema = f"{report.get('schema', '?')} · model-forensics {report.get('version', '?')}"
    return (f'<header><h1>Root-cause analysis — {esc(report.get("bundle_id", "?"))}</h1>'
            f'<p class="verdict {css}">{esc(text)}</p>{_facts(pairs)}'
            f'<p class="muted">{esc(schema)}</p></header>\n')


def _decision(decision: Mapping[str, Any]) -> str:
    if not decision:
        return '<span class="muted">—</span>'
    out = f"step {esc(decision.get('step', '?'))}: observed {_tok(decision.get('observed'))}"
    if decision.get("target") is not None:
        out += f" · target {_tok(decision.get('target'))}"
    failure = decision.get("failure") or {}
    if failure:
        out += f' <span class="muted">(failure spec: {esc(failure.get("type", "?"))}</span> {_tok(failure.get("text"))}'
        out += '<span class="muted">)</span>'
    return out


def _timing(report: Mapping[str, Any]) -> str:
    out = f"{esc(fmt(report.get('execution_time'), 2))} s"
    timings = report.get("timings") or {}
    if timings:
        out += ' <span class="muted">(' + ", ".join(f"{esc(k)} {esc(fmt(v, 2))} s" for k, v in timings.items())
        out += ")</span>"
    return out


def _cf_section(report: Mapping[str, Any], threshold: float) -> str:
    metrics = report.get("compression_metrics") or []
    svg = cf_bar_chart(metrics, threshold)
    if not svg:
        return _section("Where: compression forensics", _empty("No CF metrics in this report."), "cf")
    hot = sum(1 for m in metrics if m.get("is_anomalous"))
    caption = (f"{hot} of {len(metrics)} modules above the anomaly threshold {fmt(threshold, 2)} "
               "(score = max |z| of compression ratios against benign baselines).")
    return _section("Where: compression forensics", f'<p>{esc(caption)}</p><div class="scroll">{svg}</div>', "cf")


def _heatmap_section(report: Mapping[str, Any]) -> str:
    effects = report.get("single_effects") or []
    svg = recovery_heatmap(effects)
    if not svg:
        return _section("Single interventions", _empty("No single-intervention effects in this report."), "singles")
    fixed = sum(1 for e in effects if e.get("fixed"))
    caption = (f"Recovery of each single intervention, (m − m_incident)/(m_baseline − m_incident): "
               f"{len(effects)} evaluated, {fixed} fix the failure alone. Hover a cell for exact values.")
    return _section("Single interventions", f'<p>{esc(caption)}</p><div class="scroll">{svg}</div>', "singles")


def _interventions_table(interventions: Sequence[Mapping[str, Any]]) -> str:
    rows = [[f"<code>{esc(iv.get('module', '?'))}</code>", esc(iv.get("kind", "?")), esc(_pos(iv.get("positions"))),
             esc(iv.get("source", "—")) + (f" · factor {esc(iv['factor'])}" if iv.get("factor") is not None else "")]
            for iv in interventions]
    return _table(["module", "kind", "positions", "source"], rows)


def _pos(positions: Any) -> str:
    return ", ".join(map(str, positions)) if isinstance(positions, list | tuple) else str(positions or "last")


def _outcome(scored: Mapping[str, Any], validated: bool | None) -> str:
    pairs = [("recovery", esc(fmt(scored.get("recovery"), 3))),
             ("metric", esc(fmt(scored.get("metric"), 3)) + ' <span class="muted">(logit target − observed; '
                                                           "&gt; 0 once fixed)</span>"),
             ("fixed", _yes(scored.get("fixed"))),
             ("argmax after fix" if validated is not None else "argmax with this set", _tok(scored.get("argmax_token")))]
    if validated is not None:
        pairs.insert(0, ("validated", _yes(validated)))
    return _facts(pairs)


def _fix_section(report: Mapping[str, Any]) -> str:
    fix = report.get("fix_set")
    if fix:
        inner = _interventions_table(fix.get("interventions") or []) + _outcome(fix, bool(fix.get("validated")))
        return _section("What fixes it: minimal fix set", inner, "fix")
    partial = (report.get("search") or {}).get("best_partial")
    if not partial:
        return _section("What fixes it: minimal fix set", _empty("No fix set and no partial set found."), "fix")
    inner = (_empty("No fix set found. Best partial set (does not fix the failure):")
             + _interventions_table(partial.get("interventions") or []) + _outcome(partial, None))
    return _section("What fixes it: best partial set", inner, "fix")


def _fidelity_section(report: Mapping[str, Any]) -> str:
    fid = report.get("fidelity") or {}
    rep = report.get("replays") or {}
    search = report.get("search") or {}
    first = fid.get("first_divergent")
    pairs = [("faithful", _yes(fid.get("faithful"))),
             ("max logit diff", esc(_small(fid.get("max_logit_diff")))),
             ("max activation diff", esc(_small(fid.get("max_activation_diff")))),
             ("tolerance", esc(_small(fid.get("tolerance")))),
             ("first divergent module", f"<code>{esc(first)}</code>" if first else '<span class="muted">none</span>'),
             ("forward passes", esc(rep.get("forward_passes", "—"))),
             ("candidates / evaluated", f"{esc(rep.get('candidates', '—'))} / {esc(rep.get('evaluated', '—'))}"),
             ("budget exhausted", _yes(rep.get("budget_exhausted"))),
             ("search", esc(f"{search.get('strategy', '—')}, {len(search.get('steps') or [])} steps"))]
    return _section("Replay fidelity and cost", _facts(pairs), "fidelity")


def _localisation_section(report: Mapping[str, Any]) -> str:
    rows = list(report.get("localisation") or [])[:LOCALISATION_ROWS]
    if not rows:
        return _section("Localisation", _empty("No layer ranking (no CF metrics)."), "localisation")
    cells = [[esc(r.get("rank", "—")), esc(r.get("layer", "—")), esc(fmt(r.get("score"), 3)),
              esc(fmt(r.get("onset"), 3)), _yes(r.get("anomalous")),
              ", ".join(f"<code>{esc(m)}</code>" for m in (r.get("modules") or [])[:3])] for r in rows]
    note = _empty("Layers by onset: how much a layer adds to the strongest anomaly seen before it.")
    return _section("Localisation", note + _table(["rank", "layer", "score", "onset", "anomalous", "top modules"],
                                                  cells, numeric=(0, 1, 2, 3)), "localisation")


def _notes_section(report: Mapping[str, Any]) -> str:
    notes = report.get("notes") or []
    provenance = report.get("provenance")
    if not notes and not provenance:
        return ""
    inner = "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else ""
    if provenance:
        inner += f"<h2>Provenance</h2><pre>{esc(json.dumps(provenance, indent=2, default=str))}</pre>"
    return _section("Notes", inner, "notes")
