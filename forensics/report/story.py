"""The story sections of the HTML report: the incident, the fix sets and their effect, confidence,
input-level evidence, what was not evaluated, and the commands that reproduce and validate.

    incident_section(report) + fixes_section(report) + confidence_section(report)

Each reads the JSON report alone and works for rca@1 (most of these fields absent: shown as "not in
this report") and rca@2. Every value is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from forensics.rca.confidence import NEAR_TIE_SHARE, WEIGHTS, ConfidenceTerms, confidence
from forensics.report.blocks import (
    MISSING,
    code,
    empty,
    facts,
    flag,
    interventions_table,
    is_number,
    section,
    table,
    tok,
    yes,
)
from forensics.report.plot import esc, fmt
from forensics.report.siblings import siblings_cell

__all__ = [
    "commands_section",
    "confidence_section",
    "documented_confidence",
    "explanation",
    "fix_sets",
    "fixes_section",
    "incident_section",
    "input_level_section",
    "not_evaluated_section",
]


def _is_rca1(report: Mapping[str, Any]) -> bool:
    return report.get("schema") == "model-forensics/rca@1"


# -- the incident ---------------------------------------------------------------------------------
def _generated(incident: Mapping[str, Any]) -> str:
    """The generated text with the decision token in <mark>; tokens as decoded one by one."""
    tokens, step = incident.get("generated_tokens"), incident.get("decision_step")
    if isinstance(tokens, list) and tokens and isinstance(step, int) and 0 <= step < len(tokens):
        before, after = "".join(map(str, tokens[:step])), "".join(map(str, tokens[step + 1 :]))
        mark = f'<mark title="decision step {step}: the first wrong token">{esc(tokens[step])}</mark>'
        return f'<pre class="text">{esc(before)}{mark}{esc(after)}</pre>'
    text = incident.get("generated_text")
    return f'<pre class="text">{esc(text)}</pre>' if text is not None else MISSING


def _expected_vs_observed(incident: Mapping[str, Any], decision: Mapping[str, Any]) -> str:
    failure = incident.get("failure") or decision.get("failure") or {}
    observed = incident.get("observed", decision.get("observed"))
    expected = incident.get("expected", decision.get("target"))
    if failure.get("type") == "forbidden":
        return f"forbidden {tok(failure.get('text'))}, observed {tok(observed)}"
    wanted = f"expected {tok(expected)}"
    if failure.get("text") is not None and failure.get("text") != expected:
        wanted += f' <span class="muted">(first token of {tok(failure.get("text"))})</span>'
    return f"{wanted}, observed {tok(observed)}"


def _near_tie(decision: Mapping[str, Any]) -> str:
    tie = decision.get("near_tie")
    if not isinstance(tie, Mapping):
        return MISSING
    flips, total = int(tie.get("flipping_singles") or 0), int(tie.get("evaluated_singles") or 0)
    out = esc(f"{flips} of {total} single interventions flip the answer on their own")
    if total and flips / total > NEAR_TIE_SHARE:
        out += ' <span class="no">— a near tie: flipping it is weak evidence of a cause</span>'
    return out


def _margin(decision: Mapping[str, Any]) -> str:
    margin = decision.get("margin")
    if not is_number(margin):
        return MISSING
    return (
        esc(f"{fmt(margin, 3)} logits") + ' <span class="muted">(observed token over the target, or over the '
        "best other token for a forbidden spec)</span>"
    )


def incident_section(report: Mapping[str, Any]) -> str:
    incident, decision = report.get("incident") or {}, report.get("decision") or {}
    prompt = incident.get("prompt")
    pairs = [
        ("prompt", f'<pre class="text">{esc(prompt)}</pre>' if prompt is not None else MISSING),
        ("generated", _generated(incident)),
        ("decision step", esc(incident.get("decision_step", decision.get("step", "—")))),
        ("expected vs observed", _expected_vs_observed(incident, decision)),
        ("incident margin", _margin(decision)),
        ("near tie", _near_tie(decision)),
    ]
    return section("The incident", facts(pairs), "incident")


# -- fix sets -------------------------------------------------------------------------------------
def fix_sets(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """rca@2 ``fix_sets``, else the single rca@1 ``fix_set``."""
    sets = report.get("fix_sets")
    if isinstance(sets, list) and sets:
        return [s for s in sets if isinstance(s, Mapping)]
    fix = report.get("fix_set")
    return [fix] if isinstance(fix, Mapping) else []


def _recovery(scored: Mapping[str, Any], decision: Mapping[str, Any]) -> str:
    value = scored.get("recovery")
    note = decision.get("recovery_note")
    if is_number(value):
        out = esc(fmt(value, 3)) + ' <span class="muted">(1 = as good as the baseline)</span>'
        return out + (f' <span class="muted">— {esc(note)}</span>' if note else "")
    return '<span class="no">unavailable</span>' + (f" — {esc(note)}" if note else "")


def _side_effects(fix: Mapping[str, Any]) -> str:
    if "side_effects" not in fix:
        return MISSING
    side = fix.get("side_effects")
    if not isinstance(side, Mapping):
        return '<span class="muted">not checked: no benign bundles of this model</span>'
    changed, checked = int(side.get("changed") or 0), int(side.get("checked") or 0)
    skipped = int(side.get("skipped") or 0)
    why = (
        f"{skipped} benign bundle{'s' if skipped != 1 else ''} it has no counterpart on (a prompt shorter "
        "than its positions reach, or a patch carrying the incident's own input)"
    )
    if not checked:
        return '<span class="muted">not checked: ' + (esc(why) if skipped else "no benign bundle replayed") + "</span>"
    css = "yes" if changed == 0 else "no"
    out = f'<span class="{css}">changes {changed} of {checked} benign answers</span>'
    names = side.get("changed_bundles") or []
    out += (": " + ", ".join(code(n) for n in names)) if names else ""
    return out + (f' <span class="muted">(not checked on {esc(why)})</span>' if skipped else "")


def _regenerated(fix: Mapping[str, Any], failure: Mapping[str, Any]) -> str:
    if "regenerated" not in fix:
        return MISSING
    regen = fix.get("regenerated")
    if not isinstance(regen, Mapping):
        return '<span class="muted">not regenerated</span>'
    key = "contains_forbidden" if failure.get("type") == "forbidden" else "contains_expected"
    word = "forbidden" if key == "contains_forbidden" else "expected"
    flag = regen.get(key)
    good = None if flag is None else (not flag if key == "contains_forbidden" else bool(flag))
    check = (
        ""
        if flag is None
        else f' <span class="{"yes" if good else "no"}">'
        f"({'contains' if flag else 'does not contain'} the {word} text)</span>"
    )
    return f'<pre class="text">{esc(regen.get("text", ""))}</pre>{check}'


def _verdict_badge(fix: Mapping[str, Any]) -> str:
    verdict = fix.get("verdict")
    if verdict == "suppression":
        return (
            '<span class="badge warn">suppression</span> <span class="muted">the wrong answer is gone, but '
            "the new one is punctuation, whitespace or an end token</span>"
        )
    if verdict == "partial":
        return (
            '<span class="badge warn">partial</span> <span class="muted">the expected token now leads at the '
            "decision step, but the regenerated answer is not the expected text</span>"
        )
    if verdict == "correction":
        return '<span class="badge ok">correction</span> <span class="muted">the model now answers as wanted</span>'
    return MISSING


def _metric_note(failure: Mapping[str, Any], rca1: bool) -> str:
    if rca1:
        return "logit target − observed (rca@1); &gt; 0 once fixed"
    if failure.get("type") == "forbidden":
        return "logit margin of the best other token over the forbidden one; &gt; 0 once fixed"
    return "logit margin of the target over the best other token; &gt; 0 once fixed"


def _positions_text(fix: Mapping[str, Any]) -> str:
    """``, every position`` when a member acts at every position (``positions`` then counts it as 1000,
    a ranking weight, not a number of tokens), else ``, N position(s)``; "" when unknown."""
    if any(isinstance(iv, Mapping) and iv.get("positions") == "all" for iv in fix.get("interventions") or []):
        return ", every position"
    count = fix.get("positions")
    return f", {count} position{'s' if count != 1 else ''}" if is_number(count) else ""


def _fix_card(i: int, fix: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    decision = report.get("decision") or {}
    failure = (report.get("incident") or {}).get("failure") or decision.get("failure") or {}
    n = int(fix.get("size", len(fix.get("interventions") or [])))
    pairs = [
        ("verdict", _verdict_badge(fix)),
        ("validated", yes(fix.get("validated"))),
        ("argmax after fix", tok(fix.get("argmax_token"))),
        (
            "metric",
            esc(fmt(fix.get("metric"), 3)) + f' <span class="muted">({_metric_note(failure, _is_rca1(report))})</span>',
        ),
        ("recovery", _recovery(fix, decision)),
        ("regenerated", _regenerated(fix, failure)),
        ("side effects", _side_effects(fix)),
        ("size", esc(f"{n} member{'s' if n != 1 else ''}{_positions_text(fix)}")),
        ("siblings", siblings_cell(fix, report)),
    ]
    title = "Best fix set" if i == 0 else f"Alternative {i}"
    return (
        f'<div class="card"><h3>{esc(title)}</h3>{interventions_table(fix.get("interventions") or [])}'
        f"{facts(pairs)}</div>"
    )


def fixes_section(report: Mapping[str, Any]) -> str:
    sets = fix_sets(report)
    if sets:
        intro = empty(
            "Each set is 1-minimal (every member necessary) and validated by a fresh replay; best first: "
            "corrections before suppressions, no side effects before some, then fewer members."
        )
        return section(
            "What fixes it: minimal fix sets",
            intro + "".join(_fix_card(i, f, report) for i, f in enumerate(sets)),
            "fix",
        )
    partial = (report.get("search") or {}).get("best_partial")
    if not partial:
        return section("What fixes it: minimal fix set", empty("No fix set and no partial set found."), "fix")
    decision = report.get("decision") or {}
    pairs = [
        ("metric", esc(fmt(partial.get("metric"), 3))),
        ("recovery", _recovery(partial, decision)),
        ("fixed", yes(partial.get("fixed"))),
        ("argmax with this set", tok(partial.get("argmax_token"))),
    ]
    inner = (
        empty("No fix set found. Best partial set (does not fix the failure):")
        + interventions_table(partial.get("interventions") or [])
        + facts(pairs)
    )
    return section("What fixes it: best partial set", inner, "fix")


# -- confidence -----------------------------------------------------------------------------------
def explanation(report: Mapping[str, Any]) -> str:
    """The report's one-sentence explanation, or one derived for an older report."""
    text = report.get("confidence_explanation")
    if isinstance(text, str) and text:
        return text
    if _is_rca1(report):
        return (
            "rca@1 formula: 0.7 × clip(recovery, 0, 1), plus 0.3 when a fix-set layer is among CF's top-3 "
            "anomalous layers; 0 without a validated fix set."
        )
    return "No explanation in this report."


def _terms(terms: Mapping[str, Any]) -> ConfidenceTerms:
    margin, size = terms.get("margin"), terms.get("size")
    return ConfidenceTerms(
        bool(terms.get("faithful")),
        bool(terms.get("validated")),
        float(terms["recovery"]) if is_number(terms.get("recovery")) else None,
        float(margin) if is_number(margin) else 0.0,
        float(terms["specificity"]) if is_number(terms.get("specificity")) else None,
        int(size) if is_number(size) else 1,
        bool(terms.get("suppression")),
        bool(terms.get("partial")),
        int(terms["siblings_fixed"]) if is_number(terms.get("siblings_fixed")) else None,
        int(terms["siblings_checked"]) if is_number(terms.get("siblings_checked")) else None,
    )


def documented_confidence(terms: Mapping[str, Any]) -> float:
    """The documented formula (forensics.rca.confidence) applied to a report's ``confidence_terms``."""
    return confidence(_terms(terms))


def _term_rows(terms: Mapping[str, Any]) -> list[list[str]]:
    t = _terms(terms)
    rec, spec = t.recovery, t.specificity
    parts = {
        "recovery": (
            min(1.0, max(0.0, rec)) if rec is not None else 0.0,
            f"{fmt(rec, 3)} → clip to [0, 1]" if rec is not None else "unavailable → 0",
        ),
        "margin": ((m := max(0.0, t.margin)) / (m + 1.0), f"{fmt(t.margin, 3)} logits → m/(m+1)"),
        "size": (1.0 / max(1, t.size), f"{t.size} member{'s' if t.size != 1 else ''} → 1/size"),
    }
    letters = {"recovery": "R", "margin": "M", "size": "Z"}
    rows = [
        [
            f"{letters.get(name, name)} ({name})",
            esc(parts[name][1]),
            esc(fmt(parts[name][0], 3)),
            esc(f"{weight:.2f}"),
            esc(fmt(weight * parts[name][0], 4)),
        ]
        for name, weight in WEIGHTS.items()
    ]
    s_text = f"{fmt(spec, 3)} (1 − changed/checked)" if spec is not None else "not checked → 0.5"
    rows.append(["S (specificity)", esc(s_text), esc(fmt(spec if spec is not None else 0.5, 3)), "× all", ""])
    halved = t.suppression or t.partial
    why = "suppression" if t.suppression else "partial" if t.partial else "no"
    rows.append(
        [
            "h (suppression / partial)",
            esc(f"{why} → 0.5" if halved else "no → 1"),
            esc("0.500" if halved else "1.000"),
            "× all",
            "",
        ]
    )
    share = t.transfer
    if share is not None:
        h_text = f"fixes {t.siblings_fixed or 0} of {t.siblings_checked} siblings → 0.5 + 0.5·H"
        rows.append(["H (siblings, held out)", esc(h_text), esc(fmt(0.5 + 0.5 * share, 3)), "× all", ""])
    return rows


def confidence_section(report: Mapping[str, Any]) -> str:
    terms = report.get("confidence_terms")
    head = (
        f'<p class="confidence"><b>{esc(fmt(report.get("confidence"), 2))}</b> '
        f'<span class="explain">{esc(explanation(report))}</span></p>'
    )
    if not isinstance(terms, Mapping):
        return section(
            "Confidence", head + (empty("No fix set: confidence is 0.") if not _is_rca1(report) else ""), "confidence"
        )
    gate = (
        f"faithful replay {yes(terms.get('faithful'))} · fix validated {yes(terms.get('validated'))} · "
        f"suppression {flag(terms.get('suppression'))} · partial {flag(terms.get('partial'))} (either halves the value)"
    )
    formula = empty(
        "confidence = 0 unless faithful and validated; else round(S · (0.45·R + 0.35·M + 0.2·Z) · h, 4), "
        "× (0.5 + 0.5·H) when sibling incidents were checked (docs/report-schema.md)."
    )
    rows = table(["term", "from the report", "value", "weight", "adds"], _term_rows(terms), numeric=(2, 4))
    expected, given = documented_confidence(terms), report.get("confidence")
    if is_number(given) and abs(expected - given) > 5e-4:
        formula += (
            f'<p class="advice">The report\'s confidence {esc(fmt(given, 4))} differs from the documented '
            f"formula applied to these terms ({esc(fmt(expected, 4))}).</p>"
        )
    return section("Confidence", head + f"<p>{gate}</p>" + rows + formula, "confidence")


# -- input level, not evaluated, commands ---------------------------------------------------------
def input_level_section(report: Mapping[str, Any]) -> str:
    title = "Input-level evidence (input substitution, not a cause)"
    items = report.get("input_level")
    intro = empty(
        "These interventions overwrite every position, or most of the prompt, with another prompt's "
        "activations: they replace the input. That the failure then disappears says the input decides "
        "the answer; it names no component inside the model, so it is never a fix set and adds nothing "
        "to confidence."
    )
    if items is None:
        return section(title, MISSING if _is_rca1(report) else empty("No input-level results."), "input-level")
    if not items:
        return section(title, intro + empty("None: no input substitution fixed or was evaluated."), "input-level")
    rows = [
        [
            esc(it.get("statement", "")),
            code(it.get("source", "?")),
            interventions_table(it.get("interventions") or []),
            yes(it.get("fixed")),
            tok(it.get("argmax_token")),
            esc(fmt(it.get("metric"), 3)),
        ]
        for it in items
    ]
    inner = intro + table(
        ["statement", "input from", "substitution", "failure gone", "argmax", "metric"], rows, numeric=(5,)
    )
    return section(title, inner, "input-level", css="input-level")


def _what_why(items: Sequence[Mapping[str, Any]]) -> str:
    return (
        "<ul>"
        + "".join(f"<li><b>{esc(it.get('what', '?'))}</b> — {esc(it.get('why', '?'))}</li>" for it in items)
        + "</ul>"
    )


def not_evaluated_section(report: Mapping[str, Any]) -> str:
    items = report.get("not_evaluated")
    if items is None:
        return section("Not evaluated", MISSING, "not-evaluated")
    if not items:
        return section("Not evaluated", empty("Nothing in scope was left out."), "not-evaluated")
    return section("Not evaluated, and why", _what_why(items), "not-evaluated")


def commands_section(report: Mapping[str, Any]) -> str:
    cmds = report.get("commands") or {}
    pairs = []
    for key, label in (("reproduce", "reproduce the analysis"), ("validate", "validate the fix")):
        line = cmds.get(key)
        if line:
            pairs.append((label, f'<pre class="cmd"><code>{esc(line)}</code></pre>'))
        elif key == "validate" and report.get("export_path"):
            derived = f"model-forensics validate-fix {report['export_path']}"
            pairs.append(
                (
                    label,
                    f'<pre class="cmd"><code>{esc(derived)}</code></pre>'
                    '<span class="muted">(derived from export_path)</span>',
                )
            )
        else:
            pairs.append((label, MISSING))
    return section("Reproduce and validate", facts(pairs), "commands")
