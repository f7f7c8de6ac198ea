"""The report's "Fix you can ship" section: what ``export-fix`` would write for the best fix set, and how.

ship_section(report)    # HTML; empty when the report has no fix set
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from forensics.report.blocks import empty, facts, section
from forensics.report.plot import esc

__all__ = ["ship_section"]


def ship_section(report: Mapping[str, Any]) -> str:
    fix = report.get("fix_set")
    if not isinstance(fix, Mapping) or not fix.get("interventions"):
        return ""
    from forensics.edit.weights import weight_form_problem
    from forensics.replay.interventions import Intervention

    found = (weight_form_problem(Intervention.from_dict(iv)) for iv in fix["interventions"])
    problems = [p for p in found if p is not None]
    path = report.get("export_path") or "REPORT.json"
    command = shlex.join(["model-forensics", "export-fix", str(path), "--out", "fixed-model"])
    if problems:
        form = (
            "no exact weight form: " + "; ".join(problems) + ". export-fix ships it as a hook spec "
            '(forensics.edit.apply_fix(model, "fixed-model/fix.json")); a rank-one edit of an MLP '
            "(--method rank-one) is a weight change that may carry over to other phrasings"
        )
    else:
        form = "an exact weight form: zeroed or scaled output-projection weights, a model plain transformers loads"
    pairs = [
        ("what ships", esc(form)),
        (
            "how it is judged",
            esc(
                "efficacy (this incident and --fit-prompts), generalisation (held-out --prompts only), specificity "
                "(population answers unchanged) and fluency (8-token continuations unchanged), written into fix.json; "
                "an edit that breaks more than --max-broken of the population is refused"
            ),
        ),
    ]
    inner = facts(pairs) + f'<pre class="cmd">{esc(command)}</pre>'
    inner += empty("A fix found on one prompt is evidence about that prompt: judge it on other phrasings (--prompts).")
    return section("Fix you can ship", inner, "ship")
