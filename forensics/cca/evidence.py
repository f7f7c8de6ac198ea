"""Evidence around the search: which baselines may serve as patch sources, the baseline metric that
recovery is measured against, and input-level results (the incident with another prompt's input).

    sources, note = target_sources(rp, counterfactuals)     # only runs that really produce the target
    m_base = source_metric(rp, sources[0]) if sources else None   # None: recovery unavailable
    rows = input_level(rp, counterfactuals)                 # "the failure disappears when ..."
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forensics.bundle import Bundle
from forensics.population import coverage
from forensics.replay.interventions import Intervention
from forensics.replay.replayer import Replayer

__all__ = [
    "SAME_QUESTION",
    "input_level",
    "is_the_incident",
    "output_module",
    "produces_target",
    "reference_run_ids",
    "source_metric",
    "target_sources",
]

SAME_QUESTION = 0.75  # forbidden specs: a source must hold this share of the incident's prompt tokens


def produces_target(rp: Replayer, bundle: Bundle) -> bool:
    """Whether ``bundle``'s own run answers what the incident should have answered at its decision step
    (``expected``: the target token; ``forbidden``: anything but the forbidden token)."""
    generated = list(bundle.outputs.get("generated_ids") or [])
    if rp.step >= len(generated):
        return False
    token = int(generated[rp.step])
    if rp.target_id is not None:
        return token == rp.target_id
    # forbidden: any other answer would do, so only a run of the same question shows a correct one
    return (
        token != rp.observed_id and coverage(rp.bundle.inputs["input_ids"], bundle.inputs["input_ids"]) >= SAME_QUESTION
    )


def is_the_incident(rp: Replayer, bundle: Bundle) -> bool:
    """Whether ``bundle`` is a run of the incident itself: the same tokens on the same weights (patching
    from it changes nothing, so it is no source)."""
    mine, theirs = rp.bundle, bundle
    same_weights = mine.model.get("sha256") == theirs.model.get("sha256")
    return (
        same_weights
        and list(mine.inputs["input_ids"]) == list(theirs.inputs["input_ids"])
        and list(mine.outputs.get("generated_ids") or [])[: rp.step + 1]
        == list(theirs.outputs.get("generated_ids") or [])[: rp.step + 1]
    )


def target_sources(rp: Replayer, sources: Sequence[Bundle]) -> tuple[list[Bundle], str | None]:
    """The sources that produce the target, and, when some or all do not, a note saying so. A run of the
    incident itself is no source (it would patch in the incident's own values)."""
    itself = [b.id for b in sources if is_the_incident(rp, b)]
    counterfactuals = [b for b in sources if b.id not in itself]
    if itself:
        note = f"left out as sources: {', '.join(itself)} (a run of the incident itself: same tokens, same weights)"
        good, other = target_sources(rp, counterfactuals)
        return good, "; ".join(n for n in (note, other) if n)
    good = [b for b in counterfactuals if produces_target(rp, b)]
    left = [b.id for b in counterfactuals if b not in good]
    want = (
        repr(rp.tokenizer.decode([rp.target_id]))
        if rp.target_id is not None
        else "a non-forbidden token to the same question"
    )
    if not counterfactuals:
        return [], "recovery unavailable: no source was given (a population to pick counterfactuals from, or a source)"
    if not good:
        return [], (
            f"recovery unavailable: none of the sources ({', '.join(left)}) answers {want} "
            "at the decision step, so none shows what a correct run looks like; 'patch' interventions "
            "were left out"
        )
    if left:
        return good, f"sources that do not answer {want} were left out: {', '.join(left)}"
    return good, None


def _resid_modules(rp: Replayer) -> list[str]:
    sites = rp.bundle.manifest["recorded"].get("sites", {}) or {}
    return [m for m in rp.bundle.modules if sites.get(m) == "resid"]


def reference_run_ids(rp: Replayer, sources: Sequence[Bundle]) -> frozenset[str]:
    """Sources that ran the incident's own prompt tokens (a reference model's run of the same input)."""
    mine = list(rp.bundle.inputs["input_ids"])
    return frozenset(b.id for b in sources if list(b.inputs["input_ids"]) == mine)


def output_module(rp: Replayer) -> str | None:
    """The last decoder layer's residual: what the LM head reads."""
    resid = _resid_modules(rp)
    return resid[-1] if resid else None


def source_metric(rp: Replayer, source: Bundle) -> float | None:
    """The metric the source's own run reaches: its last residual at the last position carries its logits."""
    resid = _resid_modules(rp)
    if not resid:
        return None
    return rp.run((Intervention(resid[-1], "patch", "last", source.id),)).metric


def input_level(rp: Replayer, counterfactuals: Sequence[Bundle]) -> list[dict[str, Any]]:
    """For each counterfactual: the incident with its input replaced (the first residual patched at every
    position). Evidence about the input, never a fix set: it names no component."""
    resid = _resid_modules(rp)
    if not resid or not counterfactuals:
        return []
    sets = [(Intervention(resid[0], "patch", "all", b.id),) for b in counterfactuals]
    rows = []
    for b, out in zip(counterfactuals, rp.evaluate(sets), strict=True):
        verdict = "disappears" if out.fixed else "persists"
        theirs = len(b.inputs["input_ids"]) + rp.step
        span = "its input" if theirs >= rp.length else f"the last {theirs} of the incident's {rp.length} positions"
        cut = f" (its last {rp.length} of {theirs} positions)" if theirs > rp.length else ""
        rows.append(
            {
                "source": b.id,
                "interventions": [iv.to_dict() for iv in out.interventions],
                "fixed": out.fixed,
                "argmax_token": out.argmax_token,
                "metric": out.metric,
                "statement": f"the failure {verdict} when {span} is replaced by bundle {b.id}{cut} "
                f"({resid[0]} patched at every position): now {out.argmax_token!r}",
            }
        )
    return rows
