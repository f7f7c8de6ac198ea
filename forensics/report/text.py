"""The report in a terminal: the lines `analyze` and the demo print after an analysis.

print_summary(result.to_dict())
"""

from __future__ import annotations

from typing import Any

from forensics.report.siblings import siblings_line

__all__ = ["print_summary"]


def print_summary(report: dict[str, Any]) -> None:
    d = report["decision"]
    margin = d.get("margin")
    print(
        f"incident {report['bundle_id']}: observed {d['observed']!r}"
        + (f", expected {d['target']!r}" if d.get("target") else "")
        + f" at step {d['step']}"
        + (f" (margin {margin:.3f} logits)" if isinstance(margin, float) else "")
    )
    if report.get("reference"):
        print(f"reference: {report['reference']['statement']}")
    anomalous = [m["module"] for m in report["compression_metrics"] if m["is_anomalous"]]
    top = ", ".join(
        f"layer {r['layer']} (score {r['score']:.1f}, onset +{r.get('onset', 0.0):.1f})"
        for r in report["localisation"][:3]
    )
    print(f"CF: {len(anomalous)} anomalous modules; layers by onset: {top or 'n/a'}")
    for row in report.get("input_level", []):
        print(f"input level: {row['statement']}")
    if report.get("summary"):
        print(f"answer: {report['summary']}")
    fix = report["fix_set"]
    if fix:
        print(f"fix set: {_describe(fix)}")
        line = siblings_line(fix)
        if line:
            print(f"  siblings: {line}")
        for other in report.get("fix_sets", [])[1:]:
            print(f"  also:  {_describe(other)}")
    else:
        skipped = next((n for n in report.get("not_evaluated", []) if n.get("what") == "the CCA search"), None)
        print(f"no fix set: the CCA search did not run ({skipped['why']})" if skipped else "no fix set found")
        if (report.get("siblings") or {}).get("found"):
            print(f"siblings: {report['siblings']['statement']}")
    if report.get("isc"):
        print(f"isc: {report['isc']['summary']}")
    if report.get("dbc"):
        print(f"dbc: {report['dbc']['summary']}")
    if report.get("provenance"):
        print(f"provenance: {report['provenance'].get('summary', '')}")
    for note in report["notes"]:
        print(f"note: {note}")
    r = report["replays"]
    print(report.get("confidence_explanation") or f"confidence {report['confidence']:.2f}")
    print(f"{r['forward_passes']} forward passes, {r['evaluated']} sets evaluated, {report['execution_time']:.1f}s")


def _describe(fix: dict[str, Any]) -> str:
    ivs = "; ".join(
        f"{iv['kind']} {iv['module']}"
        + (f" head {iv['head']}" if iv.get("head") is not None else "")
        + f" @{iv['positions']}"
        + (f" from {iv['source']}" if iv.get("source") else "")
        for iv in fix["interventions"]
    )
    state = "validated" if fix["validated"] else "NOT validated"
    recovery = "n/a" if fix.get("recovery") is None else f"{fix['recovery']:.2f}"
    side = fix.get("side_effects")
    side_text = _side_effects(side) if side else ""
    regen = fix.get("regenerated") or {}
    said = f", says {regen['text']!r}" if regen.get("text") is not None else f", now {fix['argmax_token']!r}"
    return (
        f"{fix.get('verdict', 'correction')} ({fix['size']}, {state}, recovery {recovery}, margin "
        f"{fix['metric']:+.2f}{side_text}{said}): {ivs}"
    )


def _side_effects(side: dict[str, Any]) -> str:
    skipped = int(side.get("skipped") or 0)
    if not side["checked"]:
        return f", benign answers not checked ({skipped} without a counterpart)" if skipped else ""
    tail = f"; {skipped} not checked: no counterpart" if skipped else ""
    return f", changes {side['changed']} of {side['checked']} benign answers{tail}"
