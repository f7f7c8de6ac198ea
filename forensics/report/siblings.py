"""A fix set's replay on sibling incidents, briefly: the fix card's "siblings" row and the printed line.

    siblings_cell(fix)      # HTML: "fixes 2 of 3 sibling incidents (replayed position-free)" + one row each
    siblings_line(fix)      # the same in one terminal line, or None when the report has no replay

Reads the JSON report alone (``fix_sets[].siblings``, ``forensics.rca.siblings``); every value is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forensics.report.blocks import MISSING, code, is_number, table, tok, yes
from forensics.report.plot import esc, fmt

__all__ = ["siblings_cell", "siblings_line"]


def siblings_cell(fix: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    """The fix card's cell: the statement, how positions were mapped, and each sibling's margins."""
    if "siblings" not in fix:
        return MISSING
    section = fix.get("siblings")
    if not isinstance(section, Mapping):
        search = report.get("siblings")
        why = search.get("statement") if isinstance(search, Mapping) else "not checked"
        return f'<span class="muted">{esc(why)}</span>'
    k, n = section.get("held_out"), section.get("held_out_of")
    css = "muted" if not section.get("replayed") or not n else "yes" if k == n else "no" if not k else ""
    out = f'<span class="{css}">{esc(section.get("statement", ""))}</span>'
    if section.get("note"):
        out += f' <span class="muted">({esc(section["note"])})</span>'
    rows = [
        [
            code(r.get("bundle_id")),
            esc(r.get("prompt") or ""),
            yes(r.get("fixed")) if not r.get("refused") else f'<span class="muted">{esc(r["refused"])}</span>',
            esc(fmt(r.get("margin_before"), 3)),
            esc(fmt(r.get("margin_after"), 3)) if is_number(r.get("margin_after")) else "—",
            tok(r.get("argmax_token")),
        ]
        for r in section.get("per_sibling") or []
        if isinstance(r, Mapping)
    ]
    if rows:
        out += table(["sibling", "prompt", "fixed", "margin before", "metric after", "answer"], rows, numeric=(3, 4))
    return out


def siblings_line(fix: Mapping[str, Any]) -> str | None:
    """``fixes 2 of 3 sibling incidents (replayed position-free): b1 yes, b2 yes, b3 no``, or None."""
    section = fix.get("siblings")
    if not isinstance(section, Mapping):
        return None
    rows = section.get("per_sibling") or []
    each = ", ".join(
        f"{r['bundle_id']} {'refused' if r.get('refused') else 'yes' if r.get('fixed') else 'no'}" for r in rows
    )
    note = f" [{section['note']}]" if section.get("note") else ""
    return f"{section['statement']}{note}" + (f": {each}" if each else "")
