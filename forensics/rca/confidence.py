"""Confidence in a reported fix set: one documented formula of things a user can check.

    terms = ConfidenceTerms(faithful=True, validated=True, recovery=0.98, margin=1.3, specificity=1.0,
                            size=1, suppression=False)
    confidence(terms), explain(terms)

``confidence = 0`` unless the replay is faithful and the fix set validated; else
``round(S x (0.45 R + 0.35 M + 0.2 Z), 4)``, halved for a suppression, where R = clip(recovery, 0, 1)
(0 when no baseline produces the target, so recovery is unavailable), M = margin / (margin + 1) with
margin = the fixed replay's decision margin in logits (clipped at 0), Z = 1 / size, and S = 1 - changed /
checked benign answers (0.5 when no benign bundle was checked): a fix that changes the answers the model
got right explains nothing about this incident, so specificity scales everything else. A partial fix
(the regenerated answer is not the expected text) is halved like a suppression. When the fix set was
replayed on sibling incidents (``forensics.rca.siblings``: the same family, never seen by the search),
the value is multiplied by ``0.5 + 0.5 H`` with H = the share of siblings it fixes: a fix that transfers
to none is halved, one that transfers to all keeps its confidence.

    >>> confidence(ConfidenceTerms(True, True, 1.0, 1.0, 1.0, 1, False))
    0.825
    >>> confidence(ConfidenceTerms(True, True, 1.0, 1.0, 1.0, 1, False, siblings_fixed=1, siblings_checked=4))
    0.5156
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["NEAR_TIE_SHARE", "ConfidenceTerms", "confidence", "explain"]

WEIGHTS = {"recovery": 0.45, "margin": 0.35, "size": 0.2}
NEAR_TIE_SHARE = 0.1  # more than this share of single interventions flipping the answer: a near tie (weak evidence)


@dataclass(frozen=True)
class ConfidenceTerms:
    faithful: bool
    validated: bool
    recovery: float | None
    margin: float
    specificity: float | None  # 1 - changed / checked; None: no benign bundle checked
    size: int
    suppression: bool
    partial: bool = False  # the regenerated answer is not the expected text
    siblings_fixed: int | None = None  # sibling incidents the set fixes, replayed position-free
    siblings_checked: int | None = None  # sibling incidents it was judged on; None or 0: no factor

    @property
    def transfer(self) -> float | None:
        """H, the share of sibling incidents the set fixes; None when none was checked."""
        if not self.siblings_checked:
            return None
        return min(1.0, max(0.0, (self.siblings_fixed or 0) / self.siblings_checked))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parts(t: ConfidenceTerms) -> dict[str, float]:
    margin = max(0.0, t.margin)
    return {
        "recovery": min(1.0, max(0.0, t.recovery)) if t.recovery is not None else 0.0,
        "margin": margin / (margin + 1.0),
        "specificity": t.specificity if t.specificity is not None else 0.5,
        "size": 1.0 / max(1, t.size),
    }


def confidence(t: ConfidenceTerms) -> float:
    if not (t.faithful and t.validated):
        return 0.0
    parts = _parts(t)
    value = parts["specificity"] * sum(WEIGHTS[k] * parts[k] for k in WEIGHTS)
    share = t.transfer
    siblings = 1.0 if share is None else 0.5 + 0.5 * share
    return round(value * (0.5 if t.suppression or t.partial else 1.0) * siblings, 4)


def explain(t: ConfidenceTerms | None) -> str:
    """The number in one sentence a user can check term by term."""
    if t is None:
        return (
            "confidence 0: no validated fix set was found (confidence rates a fix inside the model; a cause in "
            "the input is reported under provenance and input level)."
        )
    if not t.faithful:
        return "confidence 0: the replay is not faithful, so no intervention on it explains the incident."
    if not t.validated:
        return "confidence 0: the fix set did not hold on a fresh replay."
    recovery = (
        f"recovers {t.recovery:.2f} of the gap to a run that answers correctly"
        if t.recovery is not None
        else "recovery unavailable (no baseline produces the expected answer)"
    )
    side = "no benign answer checked" if t.specificity is None else f"keeps {t.specificity:.0%} of the benign answers"
    members = "1 member" if t.size == 1 else f"{t.size} members"
    tail = (
        "; halved: the new answer is punctuation or an end token (a suppression)"
        if t.suppression
        else "; halved: the regenerated answer is not the expected text (a partial fix)"
        if t.partial
        else ""
    )
    share = t.transfer
    transfer = (
        ""
        if share is None
        else f"; × {0.5 + 0.5 * share:.2f}: it fixes {t.siblings_fixed or 0} of {t.siblings_checked} sibling "
        "incidents replayed position-free"
    )
    return (
        f"confidence {confidence(t):.2f}: validated on a faithful replay, {recovery}, margin "
        f"{t.margin:+.2f} logits, {side}, {members}{tail}{transfer}."
    )
