"""A family report (schema ``model-forensics/family@1``) as terminal lines and as a page.

    print_family(report)
    write_family_html(report, "reports/family.html")

The page leads with the answer, then the members (fixed or not, margin before and after, regenerated
answer), the fix sets with their held-out counts, and the components table: each component's change of
the decision margin on every member, as a heatmap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from forensics.durable import write_atomic
from forensics.report.blocks import code, empty, facts, interventions_table, section, table, tok, yes
from forensics.report.html import page
from forensics.report.plot import esc, fmt, recovery_colour

__all__ = ["print_family", "render_family_html", "write_family_html"]


def print_family(report: Mapping[str, Any]) -> None:
    print(report["summary"])
    for member in report["members"]:
        if not member["analysed"]:
            print(f"  {member['bundle_id']}: not analysed ({member['why']})")
            continue
        state = "fixed" if member["fixed"] else "not fixed"
        print(
            f"  {member['bundle_id']}: {member['observed']!r} instead of {member['expected']!r}, {state}"
            + (f", now says {member['regenerated']!r}" if member.get("regenerated") is not None else "")
        )
    for fix in report["fix_sets"][1:]:
        print(f"  also: {_fix_line(fix)}")
    held = report.get("held_out")
    if held:
        print(f"held out: {held['statement']}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(
        f"confidence {report['confidence']:.2f}; {report['replays']['evaluated']} sets on every member, {report['execution_time']:.1f}s"
    )


def _fix_line(fix: Mapping[str, Any]) -> str:
    what = " + ".join(
        f"{iv['kind']} {label} @{iv['positions']}"
        for iv, label in zip(fix["interventions"], fix["components"], strict=True)
    )
    held = f", {fix['held_out']} of {fix['held_out_of']} held out" if fix.get("held_out") is not None else ""
    return f"{what}: fixes {fix['fixed_members']} of {fix['members']}{held}"


def write_family_html(report: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, render_family_html(report).encode("utf-8"), mode=0o644)
    return str(target)


def render_family_html(report: Mapping[str, Any]) -> str:
    body = "".join(
        [
            f'<header><h1>Failure family</h1><p class="verdict {"ok" if report.get("fix_set") else "none"}">'
            f"{esc(report['summary'])}</p>"
            + facts(
                [
                    ("confidence", esc(fmt(report["confidence"]))),
                    ("held out", esc((report.get("held_out") or {}).get("statement", "n/a"))),
                ]
            )
            + "</header>\n",
            _members_section(report["members"]),
            _fixes_section(report["fix_sets"]),
            _components_section(report["components"], [m["bundle_id"] for m in report["members"] if m["analysed"]]),
            section(
                "Not evaluated",
                table(["what", "why"], [[esc(r["what"]), esc(r["why"])] for r in report["not_evaluated"]]),
                "not-evaluated",
            )
            if report["not_evaluated"]
            else "",
            section("Reproduce", f'<pre class="cmd">{esc(report["commands"].get("reproduce", ""))}</pre>', "commands"),
        ]
    )
    return page("Failure family", body)


def _members_section(members: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            code(m["bundle_id"]),
            tok(m.get("prompt")) if m["analysed"] else esc(m.get("why", "")),
            tok(m.get("observed")),
            tok(m.get("expected")),
            yes(m.get("fixed")) if m["analysed"] else "—",
            esc(fmt(m.get("margin_before"))),
            esc(fmt(m.get("margin_after"))),
            tok(m.get("regenerated")),
        ]
        for m in members
    ]
    headers = ["member", "prompt", "said", "expected", "fixed", "margin before", "margin after", "regenerated"]
    return section("Members", table(headers, rows, numeric=(5, 6)), "members")


def _fixes_section(fixes: Sequence[Mapping[str, Any]]) -> str:
    if not fixes:
        return section("Fix sets", empty("no position-free intervention fixes any member"), "fixes")
    parts = []
    for i, fix in enumerate(fixes):
        side = fix.get("side_effects") or {}
        held = f"{fix['held_out']} of {fix['held_out_of']}" if fix.get("held_out") is not None else "n/a (one member)"
        parts.append(
            f"<h3>#{i + 1}: fixes {fix['fixed_members']} of {fix['members']} members</h3>"
            + facts(
                [
                    ("held out", esc(held)),
                    ("population answers changed", esc(f"{side.get('changed', 0)} of {side.get('checked', 0)}")),
                ]
            )
            + interventions_table(fix["interventions"])
        )
    return section("Fix sets (position-free)", "".join(parts), "fixes")


def _components_section(rows: Sequence[Mapping[str, Any]], members: Sequence[str]) -> str:
    if not rows:
        return ""
    scale = max((abs(g) for r in rows for g in r["gains"].values()), default=1.0) or 1.0
    cells = [
        [esc(r["component"]), esc(r["kind"]), esc(r["positions"]), esc(r["fixed_members"])]
        + [
            f'<span style="background:{recovery_colour(r["gains"].get(m, 0.0) / scale)};padding:0 4px">{esc(fmt(r["gains"].get(m)))}</span>'
            for m in members
        ]
        for r in rows
    ]
    legend = f'<p class="muted">cells: change of the decision margin on each member, logits (blue towards the expected answer, red away; full colour at ±{scale:.2f})</p>'
    return section(
        "Components across the family",
        legend + table(["component", "kind", "positions", "members fixed", *members], cells, numeric=(3,)),
        "components",
    )
