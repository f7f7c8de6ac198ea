"""Components ranked by their exact single effect: what the engineer reads first.

    rows = rank_components(cca.singles, attribution, m_incident=-0.4, family="llama", tokens=tokens)
    rows[0]["component"]["label"], rows[0]["where"], rows[0]["effect"], rows[0]["atp"]

Each row is one evaluated single intervention: the component it acts on (layer, site, head), where
(token positions, by their text), what it does to the decision margin in an exact replay (``effect``
= metric - the incident's metric; > 0 moves towards the expected answer) and what attribution
patching estimated before the replay (``atp``), so the estimate can be checked against the truth.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from forensics.cca.atp import Attribution
from forensics.cca.fixset import is_reference_patch
from forensics.cca.strategies import Scored, closeness
from forensics.models.arch import component_of
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
    reference_runs: Collection[str] = (),
) -> list[dict[str, Any]]:
    """The evaluated single interventions: fixing ones first, then components (heads, attention, MLPs)
    before residual-stream overwrites (patching a late residual from a good run restores everything
    before it, wherever the cause is, so it names no component), then the largest exact effect; a
    head that does nearly all its attention does comes just before it (``_heads_first``).

    ``reference_runs``: reference runs (a known-good version of the model on the incident's own input).
    Patches from them come first, the earliest component in the forward pass first, then the narrower
    one (a head before its attention), then the one closest to restoring the reference's run (recovery
    1, to 0.01): before the first place where the two versions differ, patching from the reference
    changes nothing, so the earliest patch that fixes the answer is where the divergence starts; a later
    one fixes only because it carries what flowed into it."""

    def key(s: Scored) -> tuple[bool, bool, bool, int, int, int, float, float]:
        iv = s.interventions[0]
        comp = component_of(iv.module, iv.head, family)
        if not is_reference_patch(iv, reference_runs):
            return (not s.fixed, comp.site == "resid", True, 0, 0, 0, 0.0, -s.metric)
        restores = closeness(s.recovery, True, saturate=1.0, digits=2) if s.recovery is not None else 0.0
        late = 0 if comp.site in ("attn", "head") else 1  # a layer's attention runs before its MLP
        return (not s.fixed, comp.site == "resid", False, comp.layer or 0, late, comp.breadth, -restores, -s.metric)

    ranked = _heads_first(sorted((s for s in singles if len(s.interventions) == 1), key=key), m_incident)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for s in ranked:
        iv = s.interventions[0]
        same = (iv.module, iv.head, iv.kind, iv.positions, iv.factor, round(s.metric, 4))
        if same in seen:  # the same change from an interchangeable source (a run of the same tokens)
            continue
        seen.add(same)
        if len(rows) == limit:
            break
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


NARROW_SHARE = 0.9  # a head that does this share of its whole attention's effect is named before it


def _heads_first(ranked: list[Scored], m_incident: float) -> list[Scored]:
    """``ranked`` with, before each attention row, the best head of that attention that the same
    intervention (kind, source, positions) on the head alone does ``NARROW_SHARE`` of the effect of,
    and fixes where the attention fixes: the head is the more precise name of the same cause."""
    out: list[Scored] = []
    moved: set[int] = set()
    for s in ranked:
        if id(s) in moved:
            continue
        iv = s.interventions[0]
        effect = s.metric - m_incident
        if iv.head is None and component_of(iv.module).site == "attn" and effect > 0:
            heads = [
                h
                for h in ranked
                if id(h) not in moved
                and (h.interventions[0].module, h.interventions[0].kind, h.interventions[0].source)
                == (iv.module, iv.kind, iv.source)
                and h.interventions[0].positions == iv.positions
                and h.interventions[0].head is not None
                and h.fixed >= s.fixed
                and h.metric - m_incident >= NARROW_SHARE * effect
            ]
            if heads:
                best = max(heads, key=lambda h: h.metric)
                moved.add(id(best))
                out.append(best)
        out.append(s)
    return out


def _verb(iv: Mapping[str, Any]) -> str:
    """What the intervention does to the component, in words."""
    if iv["kind"] == "patch":
        return f"patching it from {iv.get('source') or 'the source'}"
    return {"zero": "removing it", "mean": "replacing it by its benign mean"}.get(iv["kind"], "scaling it")


RESTORES = 0.95  # a reference patch this close to recovery 1 restores the reference's run


def summarize(
    rows: Sequence[Mapping[str, Any]],
    fix: Mapping[str, Any] | None,
    decision: Mapping[str, Any],
    *,
    top: int = 3,
    reference: Mapping[str, Any] | None = None,
) -> str:
    """One or two sentences: which components at which positions push the observed token over the
    expected one (largest exact effects), and what the reported fix set does. With a ``reference``
    (the report's section) whose patch of one component restores its run, that comes first: it is
    where the two versions diverge."""
    text = _push(rows, fix, decision, top)
    lead = _divergence(rows, reference) if reference else ""
    return f"{lead} {text}".strip()


def _divergence(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, Any]) -> str:
    first = rows[0] if rows else None
    if first is None or first["intervention"].get("source") != reference.get("bundle_id") or not first["fixed"]:
        return ""
    recovery = first.get("recovery")
    name, where, ref = first["component"]["label"], first["where"], reference.get("ref")
    if recovery is not None and closeness(recovery, True, saturate=1.0, digits=2) >= RESTORES:
        return (
            f"The versions diverge at {name}: patching it at {where} from the reference model {ref!r} "
            f"restores the reference's run (recovery {recovery:.2f}; answers {first['argmax_token']!r})."
        )
    how = f"recovery {recovery:.2f}" if recovery is not None else "recovery unavailable"
    return (
        f"The earliest component whose patch from the reference model {ref!r} fixes the answer is {name} "
        f"(at {where}; answers {first['argmax_token']!r}, {how}); it does not restore the reference's run "
        "exactly, so the versions differ in more places: read it as where the difference starts to matter."
    )


def _push(
    rows: Sequence[Mapping[str, Any]], fix: Mapping[str, Any] | None, decision: Mapping[str, Any], top: int
) -> str:
    observed, target = decision.get("observed"), decision.get("target")
    best: dict[str, Mapping[str, Any]] = {}  # each component once, at its largest effect
    positive = [r for r in rows if r["effect"] > 0]
    sunk = [r for r in positive if r["intervention"].get("positions") == [0]]  # the first position alone
    keep = [r for r in positive if r["intervention"].get("positions") != [0]] or positive
    for r in keep:
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
    if sunk and len(keep) < len(positive):
        strongest = max(sunk, key=lambda r: r["effect"])
        text += (
            f" {len(sunk)} more move it at the first position alone (up to {strongest['effect']:+.2f} logits, "
            f"{strongest['component']['label']}): the attention sink, which every later position reads, so "
            "they disturb everything after it rather than name where the answer is computed."
        )
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
        if fix.get("sink"):
            text += (
                " It acts through the first position, the attention sink every later position reads, and no "
                "longer fixes without it: it shows the answer can be moved there, not where it is computed."
            )
    return text
