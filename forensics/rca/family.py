"""A failure family analysed as one: what fixes the failure mode, not one prompt, measured held out.

    request = AnalysisRequest.of(["bundles/au1", "bundles/au2", "bundles/au3"], population="bundles/benign/")
    result = RCAPipeline(config).run_family(request)
    result.fix_set, result.held_out, result.members

Each member is replayed (and must replay faithfully and fail its own spec), every position-free candidate
is scored on every member (``forensics.cca.family``), and each reported set says how many members it
fixes, how many it fixes *held out* (found on the others, judged on the one left out), its regenerated
answer on each member and its side effects on the population. Report schema ``model-forensics/family@1``
(docs/family-report.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.bundle import Bundle
from forensics.cca.family import KEEP, FamilySearch, family_candidates, search_family
from forensics.cca.fixset import FixSet
from forensics.cca.judge import REGENERATE_TOKENS, check_side_effects
from forensics.cca.regenerate import regenerate_members
from forensics.config import Config
from forensics.durable import write_json_atomic
from forensics.errors import ReplayError
from forensics.models.arch import arch_for, component_of
from forensics.rca.inputs import ModelCache, bundle_of, judged_by, population_of, replay_options
from forensics.rca.request import AnalysisRequest
from forensics.replay.interventions import InterventionSet
from forensics.replay.replayer import Replayer

__all__ = ["FAMILY_SCHEMA", "FamilyResult", "analyze_family", "family_confidence"]

FAMILY_SCHEMA = "model-forensics/family@1"
COMPONENT_ROWS = 15


@dataclass
class FamilyResult:
    members: list[dict[str, Any]]
    fix_sets: list[dict[str, Any]]
    components: list[dict[str, Any]]
    held_out: dict[str, Any] | None
    confidence: float
    summary: str
    notes: list[str] = field(default_factory=list)
    not_evaluated: list[dict[str, str]] = field(default_factory=list)
    replays: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    population: list[str] = field(default_factory=list)
    population_paths: dict[str, str] = field(default_factory=dict)
    execution_time: float = 0.0
    commands: dict[str, str] = field(default_factory=dict)
    export_path: str | None = None

    @property
    def fix_set(self) -> dict[str, Any] | None:
        return self.fix_sets[0] if self.fix_sets else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": FAMILY_SCHEMA,
            "members": self.members,
            "fix_set": self.fix_set,
            "fix_sets": self.fix_sets,
            "components": self.components,
            "held_out": self.held_out,
            "confidence": self.confidence,
            "summary": self.summary,
            "notes": self.notes,
            "not_evaluated": self.not_evaluated,
            "replays": self.replays,
            "model": self.model,
            "population": self.population,
            "bundle_path": next((m["path"] for m in self.members if m["analysed"]), None),
            "baselines": {"population": self.population, "paths": self.population_paths},
            "execution_time": self.execution_time,
            "commands": self.commands,
            "export_path": self.export_path,
        }

    def export(self, path: str | os.PathLike[str]) -> str:
        self.export_path = str(Path(path))
        write_json_atomic(path, self.to_dict())
        return self.export_path


@dataclass
class _Member:
    bundle: Bundle
    rp: Replayer
    m_incident: float


def analyze_family(request: AnalysisRequest, config: Config, models: ModelCache) -> FamilyResult:
    t0 = time.perf_counter()
    incidents = [bundle_of(b, config) for b in request.incidents]
    population, _ = population_of(request.population, config)
    loaded = models.model(incidents[0], request.model)
    if request.failure is not None:
        incidents = [judged_by(b, request.failure, loaded.tokenizer) for b in incidents]
    notes: list[str] = []
    skipped: list[dict[str, str]] = []
    members = _members(incidents, loaded, population, request, config, skipped)
    if not members:
        raise ReplayError(
            "no member of the family can be analysed: " + "; ".join(f"{s['what']}: {s['why']}" for s in skipped)
        )
    rp0 = members[0].rp
    cca = config.modules.cca
    candidates = family_candidates(rp0.model, population=bool(population), heads="head" in cca.components)
    benign = _population_replayers(population, loaded, request, config, skipped)
    for rp in benign:  # the same population: what the members captured serves the side-effect check
        with contextlib.suppress(ReplayError):
            rp.bank.share(members[0].rp.bank)
    search = search_family(
        [m.rp for m in members],
        candidates,
        [m.m_incident for m in members],
        max_size=min(3, cca.max_fix_set_size),
        top_k=cca.prefilter_top_k if cca.prefilter == "atp" else None,
        population=benign,
    )
    if search.refused:
        skipped.append(
            {
                "what": f"{len(search.refused)} candidate sets on some members",
                "why": next(iter(search.refused.values())),
            }
        )
    best = [s for s in search.ranked()[:KEEP] if search.fixed[s].any()]
    fix_sets = [_fix_set(search, s, members, benign, regenerate=i == 0) for i, s in enumerate(best)]
    held = _held_out(search, len(members))
    result = FamilyResult(
        members=[_member_row(m, search, fix_sets) for m in members]
        + [_skipped_row(s) for s in skipped if "bundle" in s],
        fix_sets=fix_sets,
        components=_components(search, members),
        held_out=held,
        confidence=family_confidence(fix_sets[0], len(members)) if fix_sets else 0.0,
        summary="",
        notes=notes,
        not_evaluated=[{"what": s["what"], "why": s["why"]} for s in skipped],
        replays={"candidates": len(candidates), "evaluated": len(search.sets), "forward_passes": search.forward_passes},
        model=loaded.info.to_dict(),
        population=[b.id for b in population],
        population_paths={b.id: b.path for b in population},
        commands=request.command(),
    )
    result.summary = _summary(result, len(incidents))
    result.execution_time = time.perf_counter() - t0
    if request.output is not None:
        result.export(request.output)
    return result


def _members(
    incidents: list[Bundle],
    loaded: Any,
    population: list[Bundle],
    request: AnalysisRequest,
    config: Config,
    skipped: list[dict[str, str]],
) -> list[_Member]:
    """The members that can be analysed: a faithful replay of a run that fails its spec; the rest are skipped."""
    options = replay_options(
        config, allow_model_mismatch=request.allow_model_mismatch, allow_source_mismatch=request.allow_source_mismatch
    )
    out = []
    for b in incidents:
        why = None
        try:
            rp = Replayer(b, loaded=loaded, population=population, options=options)
            fidelity = rp.fidelity()
            outcome = rp.run(()) if rp.spec is not None else None
        except ReplayError as exc:
            why = str(exc)
        else:
            if not fidelity.faithful:
                why = f"the replay is not faithful (first divergent: {fidelity.first_divergent})"
            elif outcome is None:
                why = "the bundle has no failure spec"
            elif outcome.fixed:
                why = f"the replayed run does not fail its failure spec (it answers {outcome.argmax_token!r})"
        if why is not None:
            skipped.append({"what": f"member {b.id}", "why": why, "bundle": b.id, "path": b.path})
            continue
        out.append(_Member(b, rp, float(outcome.metric)))  # type: ignore[union-attr]
    for member in out[1:]:  # one population: means and heads captured for the first member serve them all
        with contextlib.suppress(ReplayError):
            member.rp.bank.share(out[0].rp.bank)
    return out


def _population_replayers(
    population: list[Bundle], loaded: Any, request: AnalysisRequest, config: Config, skipped: list[dict[str, str]]
) -> list[Replayer]:
    options = replay_options(
        config, allow_model_mismatch=request.allow_model_mismatch, allow_source_mismatch=request.allow_source_mismatch
    )
    out = []
    for b in population:
        try:
            out.append(Replayer(b, loaded=loaded, population=population, options=options))
        except ReplayError as exc:
            skipped.append({"what": f"side effects on {b.id}", "why": str(exc)})
    return out


def _fix_set(
    search: FamilySearch, s: int, members: list[_Member], benign: list[Replayer], *, regenerate: bool
) -> dict[str, Any]:
    """One reported set; the regenerated answers (4 greedy tokens on every member, all members in one
    padded pass per token: ``cca.regenerate``) for the best set only."""
    ivs: InterventionSet = search.sets[s]
    n = len(members)
    side = _side_effects(search, s, benign)
    news = regenerate_members([m.rp for m in members], ivs, REGENERATE_TOKENS) if regenerate else [None] * n
    per_member = []
    for m, (member, new) in enumerate(zip(members, news, strict=True)):
        rp = member.rp
        generated = list(rp.bundle.outputs["generated_ids"])
        per_member.append(
            {
                "bundle_id": member.bundle.id,
                "fixed": bool(search.fixed[s, m]),
                "margin_before": -member.m_incident,
                "margin_after": float(search.metric[s, m]),
                "regenerated": None if new is None else rp.tokenizer.decode(generated[: rp.step] + new),
            }
        )
    family = arch_for(members[0].rp.model).family
    return {
        "interventions": [iv.to_dict() for iv in ivs],
        "components": [component_of(iv.module, iv.head, family).label() for iv in ivs],
        "size": len(ivs),
        "fixed_members": int(search.fixed[s].sum()),
        "members": n,
        "held_out": search.held_out(s) if n > 1 else None,
        "held_out_of": n if n > 1 else None,
        "per_member": per_member,
        "side_effects": side,
    }


def _side_effects(search: FamilySearch, s: int, benign: list[Replayer]) -> dict[str, Any] | None:
    """Set ``s``'s side effects on the population (``check_side_effects``' fields): read from the search's
    population check where it replayed ``s`` there (the same replays), else replayed now."""
    if not benign:
        return None
    answers = search.answers.get(s)
    if answers is None:
        stub = FixSet(search.sets[s], True, None, float(search.metric[s].mean()), bool(search.fixed[s].all()), "")
        return check_side_effects([stub], benign)[0].side_effects
    changed = [rp.bundle.id for rp in benign if answers.get(rp.bundle.id)]
    return {
        "checked": len(answers),
        "changed": len(changed),
        "changed_bundles": changed,
        "skipped": len(benign) - len(answers),
    }


def _held_out(search: FamilySearch, n: int) -> dict[str, Any] | None:
    if n < 2:
        return None
    k = search.procedure_held_out()
    return {
        "fixed": k,
        "of": n,
        "statement": f"found on the other {n - 1} members and judged on the one left out, the family's best "
        f"fix set fixes {k} of {n}",
    }


def _components(search: FamilySearch, members: list[_Member]) -> list[dict[str, Any]]:
    """Single interventions by how many members they fix, then by mean gain: which components the
    failure runs through in most members."""
    family = arch_for(members[0].rp.model).family
    singles = [s for s in search.ranked() if len(search.sets[s]) == 1][:COMPONENT_ROWS]
    rows = []
    for s in singles:
        (iv,) = search.sets[s]
        gains = search.metric[s] - search.m_incident
        rows.append(
            {
                **iv.to_dict(),
                "component": component_of(iv.module, iv.head, family).label(),
                "fixed_members": int(search.fixed[s].sum()),
                "mean_gain": float(gains.mean()),
                "gains": {m.bundle.id: float(g) for m, g in zip(members, gains, strict=True)},
            }
        )
    return rows


def _member_row(member: _Member, search: FamilySearch, fix_sets: list[dict[str, Any]]) -> dict[str, Any]:
    rp, tok = member.rp, member.rp.tokenizer
    best = fix_sets[0]["per_member"] if fix_sets else []
    mine = next((row for row in best if row["bundle_id"] == member.bundle.id), None)
    return {
        "bundle_id": member.bundle.id,
        "path": member.bundle.path,
        "analysed": True,
        "prompt": member.bundle.inputs.get("prompt"),
        "decision_step": rp.step,
        "observed": tok.decode([rp.observed_id]),
        "expected": tok.decode([rp.target_id]) if rp.target_id is not None else None,
        "margin_before": -member.m_incident,
        "fixed": mine["fixed"] if mine else False,
        "margin_after": mine["margin_after"] if mine else None,
        "regenerated": mine["regenerated"] if mine else None,
    }


def _skipped_row(skip: dict[str, str]) -> dict[str, Any]:
    return {"bundle_id": skip["bundle"], "path": skip["path"], "analysed": False, "why": skip["why"]}


def family_confidence(fix: dict[str, Any], n: int) -> float:
    """``S x (0.5 H + 0.3 F + 0.2 Z)``: H the held-out share (members the set fixes when found without
    them), F the share of members it fixes, Z = 1 / size, S = 1 - changed / checked population answers (0.5
    when none was checked). A family of one has no held-out evidence: ``S x (0.6 F + 0.4 Z) / 2``."""
    side = fix.get("side_effects")
    spec = 1.0 - side["changed"] / side["checked"] if side and side["checked"] else 0.5
    fixed, size = fix["fixed_members"] / max(n, 1), 1.0 / max(fix["size"], 1)
    if fix.get("held_out") is None:
        return float(round(spec * (0.6 * fixed + 0.4 * size) / 2, 4))
    return float(round(spec * (0.5 * fix["held_out"] / n + 0.3 * fixed + 0.2 * size), 4))


def _summary(result: FamilyResult, given: int) -> str:
    n = sum(1 for m in result.members if m["analysed"])
    head = f"family of {given} incidents ({n} analysed)"
    fix = result.fix_set
    if fix is None:
        return f"{head}: no position-free intervention fixes any member"
    held = (
        f"; found without each member in turn, it fixes {fix['held_out']} of {n} held out"
        if fix["held_out"] is not None
        else ""
    )
    side = fix["side_effects"]
    side_text = (
        f"; it changes {side['changed']} of {side['checked']} population answers" if side and side["checked"] else ""
    )
    what = ", ".join(
        f"{iv['kind']} {label} at {'every position' if iv['positions'] == 'all' else 'the decision position'}"
        for iv, label in zip(fix["interventions"], fix["components"], strict=True)
    )
    return f"{head}: the best position-free fix, {what}, fixes {fix['fixed_members']} of {n} members{held}{side_text}"
