"""The report page's Provenance section: which input spans cause the failure (``report["provenance"]``).

    html = provenance_section(report)      # "" when the report has no provenance

Every value comes from the report and is escaped (span texts are tool results and documents: hostile input).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forensics.report.blocks import section, table, tok, yes
from forensics.report.plot import esc, fmt

__all__ = ["provenance_section"]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _outcome(o: Any) -> list[str]:
    if not isinstance(o, Mapping):
        return ['<span class="muted">—</span>'] * 3
    return [esc(fmt(o.get("metric"), 3)), tok(o.get("argmax_token")), yes(o.get("fixed"))]


def provenance_section(report: Mapping[str, Any]) -> str:
    prov = report.get("provenance")
    if not isinstance(prov, Mapping):
        return ""
    rows = [
        [
            esc(s.get("label", s.get("kind", "?"))),
            esc(fmt(s.get("attribution"), 3)),
            *_outcome(s.get("removed")),
            *_outcome(s.get("ablated")),
        ]
        for s in prov.get("spans") or []
        if isinstance(s, Mapping)
    ]
    cause = prov.get("cause")
    verdict = ""
    if isinstance(cause, Mapping):
        state = "validated" if cause.get("validated") else "not validated"
        regen = _mapping(cause.get("regenerated"))
        verdict = (
            f'<div class="card"><span class="badge {"ok" if cause.get("validated") else "warn"}">{esc(state)}</span> '
            f"cause: {esc(cause.get('label', '?'))}; regenerated without it: {tok(regen.get('text'))}</div>"
        )
    incident = _mapping(prov.get("incident"))
    inner = (
        f"<p>{esc(prov.get('summary', ''))}</p>"
        + verdict
        + f'<p class="muted">{esc(prov.get("method", ""))}; incident metric {esc(fmt(incident.get("metric"), 3))}, '
        f"{esc(prov.get('evaluated', len(rows)))} of {esc(prov.get('total_spans', '?'))} spans measured.</p>"
        + table(
            ["span", "attribution", "removed: metric", "argmax", "fixed", "ablated: metric", "argmax", "fixed"],
            rows,
            numeric=(1, 2, 5),
        )
    )
    return section("Provenance: which input spans cause the failure", inner, "provenance")
