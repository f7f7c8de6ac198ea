"""Small HTML builders for the report page; every value from a report goes through ``esc``.

    _facts([("bundle", code("australia"))]) + table(["module"], [[code("model.layers.1.mlp")]])

Builders that take ``str`` cells expect HTML already (their callers escape); the ones that take
``Any`` escape it themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from forensics.report.plot import esc, fmt

__all__ = [
    "MISSING",
    "code",
    "empty",
    "facts",
    "flag",
    "interventions_table",
    "is_number",
    "positions",
    "section",
    "small",
    "table",
    "tok",
    "yes",
]

MISSING = '<span class="muted">not in this report</span>'


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def tok(text: Any) -> str:
    """A token or text as a visible literal (quotes, \\n, leading spaces), escaped."""
    if text is None:
        return '<span class="muted">—</span>'
    return f'<span class="tok">{esc(json.dumps(str(text), ensure_ascii=False))}</span>'


def code(text: Any) -> str:
    return f"<code>{esc(text)}</code>"


def small(value: Any) -> str:
    """Tiny differences and tolerances: 3 significant digits (2e-06), not fixed decimals."""
    return esc(f"{value:.3g}" if is_number(value) else fmt(value))


def yes(flag: Any) -> str:
    if flag is None:
        return '<span class="muted">—</span>'
    return '<span class="yes">yes</span>' if flag else '<span class="no">no</span>'


def flag(value: Any) -> str:
    """A neutral yes/no (neither good nor bad), '—' when unknown."""
    return '<span class="muted">—</span>' if value is None else ("yes" if value else "no")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """Cells are HTML already; ``numeric`` column indexes are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def facts(pairs: Sequence[tuple[str, str]]) -> str:
    """A definition list; values are HTML already."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def section(title: str, inner: str, css_id: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f'<section id="{css_id}"{cls}><h2>{esc(title)}</h2>{inner}</section>\n'


def empty(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


def positions(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value or "last")


def interventions_table(interventions: Sequence[Mapping[str, Any]]) -> str:
    """module, head (only when a member has one), kind, positions, source / factor."""
    heads = any(iv.get("head") is not None for iv in interventions)
    rows = []
    for iv in interventions:
        source = esc(iv.get("source", "—")) + (f" · factor {esc(iv['factor'])}" if iv.get("factor") is not None else "")
        row = [code(iv.get("module", "?"))] + ([esc(iv.get("head", "—"))] if heads else [])
        rows.append([*row, esc(iv.get("kind", "?")), esc(positions(iv.get("positions"))), source])
    return table(["module"] + (["head"] if heads else []) + ["kind", "positions", "source"], rows)
