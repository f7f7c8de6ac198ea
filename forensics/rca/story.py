"""What an analysis found, collected as it runs (the commands that reproduce it: ``AnalysisRequest.command``).

story = Story(replayer)
story.skip("the CCA search", "the replay is not faithful")
story.notes.append("...")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forensics.cca.atp import Attribution
from forensics.cca.fixset import CCAResult, FixSet
from forensics.replay.replayer import Replayer

__all__ = ["Story", "incident_section"]


@dataclass
class Story:
    rp: Replayer
    notes: list[str] = field(default_factory=list)
    not_evaluated: list[dict[str, str]] = field(default_factory=list)
    input_level: list[dict[str, Any]] = field(default_factory=list)
    fixes: list[FixSet] = field(default_factory=list)
    cca: CCAResult | None = None
    m_incident: float | None = None
    m_source: float | None = None
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
            "m_baseline": self.m_source,  # the report field keeps its name (schema rca@2)
            "recovery_available": self.m_source is not None,
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
