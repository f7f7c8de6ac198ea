"""Components ranked by their exact single effect: what the engineer reads first.

    rows = rank_components(cca.singles, attribution, m_incident=-0.4, family="llama", tokens=tokens)
    rows[0]["component"]["label"], rows[0]["where"], rows[0]["effect"], rows[0]["atp"]

Each row is one evaluated single intervention: the component it acts on (layer, site, head), where
(token positions, by their text), what it does to the decision margin in an exact replay (``effect``
= metric - the incident's metric; > 0 moves towards the expected answer) and what attribution
patching estimated before the replay (``atp``), so the estimate can be checked against the truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from forensics.models.arch import component_of
from forensics.rca.atp import Attribution
from forensics.rca.search import Scored
from forensics.replay.interventions import Positions

__all__ = ["position_label", "rank_components", "summarize"]


def position_label(positions: Positions, tokens: Sequence[str]) -> str:
    """``last ' is'``, ``all``, ``2 ' of'``, ``2-4 ' of Australia is'``."""
    if positions == "all":
        return "every position"
    if positions == "last":
        return f"the last position ({tokens[-1]!r})" if tokens else "the last position"
    pos = list(positions)
    text = "".join(tokens[p] for p in pos if 0 <= p < len(tokens))
    where = f"position {pos[0]}" if len(pos) == 1 else f"positions {pos[0]}-{pos[-1]}"
    return f"{where} ({text!r})" if text else where


def rank_components(
    singles: Sequence[Scored],
    attribution: Attribution | None,
    *,
    m_incident: float,
    family: str | None,
    tokens: Sequence[str],
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The evaluated single interventions: fixing ones first, then components (heads, attention, MLPs)
    before residual-stream overwrites (patching a late residual from a good run restores everything
    before it, wherever the cause is, so it names no component), then the largest exact effect."""

    def key(s: Scored) -> tuple[bool, bool, float]:  # fixing first; components before residual overwrites
        iv = s.interventions[0]
        return (not s.fixed, iv.head is None and component_of(iv.module, None, family).site == "resid", -s.metric)

    ranked = sorted((s for s in singles if len(s.interventions) == 1), key=key)
    rows = []
    for s in ranked[:limit]:
        iv = s.interventions[0]
        rows.append(
            {
                "component": component_of(iv.module, iv.head, family).to_dict(),
                "intervention": iv.to_dict(),
                "where": position_label(iv.positions, tokens),
                "effect": s.metric - m_incident,
                "metric": s.metric,
                "fixed": s.fixed,
                "recovery": s.recovery,
                "argmax_token": s.argmax_token,
                "atp": attribution.estimate(iv) if attribution is not None else None,
            }
        )
    return rows


def _verb(iv: Mapping[str, Any]) -> str:
    """What the intervention does to the component, in words."""
    if iv["kind"] == "patch":
        return f"patching it from {iv.get('source') or 'the source'}"
    return {"zero": "removing it", "mean": "replacing it by its benign mean"}.get(iv["kind"], "scaling it")


def summarize(
    rows: Sequence[Mapping[str, Any]], fix: Mapping[str, Any] | None, decision: Mapping[str, Any], *, top: int = 3
) -> str:
    """One or two sentences: which components at which positions push the observed token over the
    expected one (largest exact effects), and what the reported fix set does."""
    observed, target = decision.get("observed"), decision.get("target")
    best: dict[str, Mapping[str, Any]] = {}  # each component once, at its largest effect
    for r in rows:
        if r["effect"] > 0:
            best.setdefault(r["component"]["label"], r)
    named = [r for r in best.values() if r["component"]["site"] != "resid"]
    pushing = sorted(named or best.values(), key=lambda r: -r["effect"])[:top]  # components before the state
    if not pushing:
        return ""
    over = f"{observed!r} over {target!r}" if target else f"{observed!r}"
    parts = ", ".join(
        f"{r['component']['label']} at {r['where']} ({_verb(r['intervention'])}: {r['effect']:+.2f} logits"
        + (f", answers {r['argmax_token']!r})" if r["fixed"] else ")")
        for r in pushing
    )
    text = f"Pushing {over} (exact replay, margin change per single intervention): {parts}."
    if fix and fix.get("interventions"):
        members = ", ".join(
            component_of(iv["module"], iv.get("head")).label()
            + f" ({iv['kind']}{' from ' + iv['source'] if iv.get('source') else ''})"
            for iv in fix["interventions"]
        )
        regen = (fix.get("regenerated") or {}).get("text")
        side = fix.get("side_effects") or {}
        said = (
            f" the model then says {regen!r}"
            if regen is not None
            else f" the model then answers {fix['argmax_token']!r}"
        )
        effects = f"; {side['changed']} of {side['checked']} benign answers change" if side.get("checked") else ""
        text += f" The smallest validated fix: {members};{said}{effects}."
    return text
