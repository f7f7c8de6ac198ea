"""What an analysis found, collected as it runs, and the commands that reproduce and validate it.

story = Story(replayer)
story.skip("the CCA search", "the replay is not faithful")
story.notes.append("...")
commands("bundles/australia", "bundles/benign", None, None, "reports/australia.json", False, False)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.rca.atp import Attribution
from forensics.rca.cca import CCAResult, FixSet
from forensics.replay.replayer import Replayer

__all__ = ["NEAR_TIE_SHARE", "Story", "commands", "incident_section"]

NEAR_TIE_SHARE = 0.1  # more than this share of single interventions flipping the answer: a near tie


@dataclass
class Story:
    rp: Replayer
    notes: list[str] = field(default_factory=list)
    not_evaluated: list[dict[str, str]] = field(default_factory=list)
    input_level: list[dict[str, Any]] = field(default_factory=list)
    fixes: list[FixSet] = field(default_factory=list)
    cca: CCAResult | None = None
    m_incident: float | None = None
    m_baseline: float | None = None
    recovery_note: str | None = None
    sources: list[str] = field(default_factory=list)
    attribution: Attribution | None = None

    def skip(self, what: str, why: str) -> None:
        self.not_evaluated.append({"what": what, "why": why})

    def near_tie(self) -> dict[str, int]:
        singles = self.cca.singles if self.cca else []
        return {"flipping_singles": sum(s.fixed for s in singles), "evaluated_singles": len(singles)}

    def decision(self) -> dict[str, Any]:
        rp, tok = self.rp, self.rp.tokenizer
        return {
            "step": rp.step,
            "observed": tok.decode([rp.observed_id]),
            "observed_id": rp.observed_id,
            "target": tok.decode([rp.target_id]) if rp.target_id is not None else None,
            "target_id": rp.target_id,
            "failure": rp.bundle.failure,
            "m_incident": self.m_incident,
            "m_baseline": self.m_baseline,
            "recovery_available": self.m_baseline is not None,
            "recovery_note": self.recovery_note,
            "margin": -self.m_incident if self.m_incident is not None else None,
            "near_tie": self.near_tie(),
        }


def incident_section(rp: Replayer) -> dict[str, Any]:
    """The prompt and the generated text, token by token, with the decision step."""
    tok, outputs = rp.tokenizer, rp.bundle.outputs
    generated = list(outputs["generated_ids"])
    return {
        "prompt": rp.bundle.inputs.get("prompt"),
        "generated_text": tok.decode(generated),
        "generated_tokens": [tok.decode([t]) for t in generated],
        "decision_step": rp.step,
        "observed": tok.decode([rp.observed_id]),
        "expected": tok.decode([rp.target_id]) if rp.target_id is not None else None,
        "failure": rp.bundle.failure,
    }


def commands(
    bundle: str,
    baseline: Any,
    patch_source: Any,
    model: Any,
    output: str | Path | None,
    allow_model_mismatch: bool,
    allow_baseline_mismatch: bool,
    reference_model: str | None = None,
) -> dict[str, str]:
    """The command lines that reproduce this analysis and validate its fix set (``reference_model``: how
    the known-good version is loaded again, when it can be)."""
    words = ["model-forensics", "analyze", bundle]
    if isinstance(baseline, str | Path):
        words += ["--baseline", str(baseline)]
    sources = patch_source if isinstance(patch_source, list | tuple) else [patch_source] if patch_source else []
    for source in sources:
        words += ["--patch-source", str(getattr(source, "path", source))]
    if isinstance(model, str):
        words += ["--model", model]
    if reference_model is not None:
        words += ["--reference-model", reference_model]
    if output is not None:
        words += ["--output", str(output)]
    if allow_model_mismatch:
        words.append("--allow-model-mismatch")
    if allow_baseline_mismatch:
        words.append("--allow-baseline-mismatch")
    report = str(output) if output is not None else "REPORT.json"
    return {"reproduce": shlex.join(words), "validate": shlex.join(["model-forensics", "validate-fix", report])}
