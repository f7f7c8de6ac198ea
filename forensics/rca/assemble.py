"""Result assembly: what the replay, CF and the diagnosis found, as one ``RCAResult``.

result = assemble(Findings(rp, inputs, request, story, fidelity, metrics, advanced), config, timings, t0)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forensics.cca.components import rank_components, summarize
from forensics.cca.fixset import FixSet
from forensics.cf.localise import rank_layers
from forensics.config import Config
from forensics.models.arch import arch_for
from forensics.rca.confidence import ConfidenceTerms, confidence, explain
from forensics.rca.inputs import Inputs, loadable
from forensics.rca.request import AnalysisRequest
from forensics.rca.result import RCAResult
from forensics.rca.siblings import SiblingReport
from forensics.rca.story import Story, incident_section
from forensics.replay.fidelity import Fidelity
from forensics.replay.replayer import Replayer

__all__ = ["Findings", "assemble", "confidence_terms"]


@dataclass(frozen=True)
class Findings:
    """Everything an analysis found, before it becomes a result."""

    rp: Replayer
    inputs: Inputs
    request: AnalysisRequest
    story: Story
    fidelity: Fidelity
    metrics: list[Any]
    reference: dict[str, Any] | None = None  # the report's reference section
    provenance: dict[str, Any] | None = None
    advanced: Mapping[str, Any] = field(default_factory=dict)  # isc / dbc
    siblings: SiblingReport | None = None  # the fix sets replayed on sibling incidents (modules.cca.siblings)


def assemble(f: Findings, config: Config, timings: dict[str, float], t0: float) -> RCAResult:
    rp, story, cca = f.rp, f.story, f.story.cca
    fix = story.fixes[0] if story.fixes else None
    terms = confidence_terms(f.fidelity, fix, f.siblings.best() if f.siblings else None)
    result = RCAResult(
        bundle_id=f.inputs.incident.id,
        confidence=confidence(terms) if terms else 0.0,
        execution_time=time.perf_counter() - t0,
        compression_metrics=f.metrics,
        fix_set=fix,
        replays=_replays(rp, story),
        fidelity=f.fidelity.to_dict(),
        decision=story.decision(),
        localisation=rank_layers(f.metrics),
        single_effects=[_single(s, story) for s in cca.singles] if cca else [],
        search={
            "strategy": cca.strategy,
            "steps": cca.steps,
            "best_partial": cca.best_partial.to_dict() if cca.best_partial else None,
        }
        if cca
        else {},
        baselines=_sources_section(f.inputs, story),
        bundle_path=f.inputs.incident.path,
        cf={"anomaly_threshold": config.modules.cf.anomaly_threshold},
        model=rp.loaded.info.to_dict(),
        timings=timings,
        notes=story.notes,
        incident=incident_section(rp),
        fix_sets=story.fixes,
        input_level=story.input_level,
        not_evaluated=story.not_evaluated,
        confidence_terms=terms.to_dict() if terms else None,
        confidence_explanation=explain(terms),
    )
    result.isc, result.dbc = f.advanced.get("isc"), f.advanced.get("dbc")
    result.attribution = story.attribution.to_dict() if story.attribution else None
    if cca is not None and story.m_incident is not None:
        result.components = rank_components(
            cca.singles,
            story.attribution,
            m_incident=story.m_incident,
            family=arch_for(rp.model).family,
            tokens=[rp.tokenizer.decode([t]) for t in rp.input_ids[0].tolist()],
            reference_runs=[f.inputs.reference[1].id] if f.inputs.reference is not None else (),
        )
        result.summary = summarize(
            result.components,
            result.fix_set.to_dict() if result.fix_set else None,
            result.decision,
            reference=f.reference,
        )
    if f.siblings is not None:
        _with_siblings(result, f.siblings)
    result.provenance = f.provenance
    result.reference = f.reference
    ref = f.inputs.reference
    result.commands = f.request.command(reference_model=loadable(ref[0]) if ref is not None else None)
    return result


def _replays(rp: Replayer, story: Story) -> dict[str, Any]:
    cca = story.cca
    return {
        "forward_passes": rp.forward_passes,
        "candidates": cca.candidates if cca else 0,
        "evaluated": cca.evaluated if cca else 0,
        "budget_exhausted": cca.budget_exhausted if cca else False,
        "timed_out": cca.timed_out if cca else False,
    }


def _sources_section(inputs: Inputs, story: Story) -> dict[str, Any]:
    """The report's ``baselines`` section: the population, the sources used (ids), every path."""
    population, sources = inputs.population, inputs.sources
    return {
        "population": [b.id for b in population],
        "patch_sources": story.sources,
        "counterfactuals": [b.id for b in sources],
        "paths": {b.id: b.path for b in [*population, *sources]},
    }


def _single(s: Any, story: Story) -> dict[str, Any]:
    atp = story.attribution
    return {**s.to_dict(), "atp": atp.estimate(s.interventions[0]) if atp and len(s.interventions) == 1 else None}


def _with_siblings(result: RCAResult, siblings: SiblingReport) -> None:
    """The report's ``siblings`` section, each fix set's replay on them, and the summary's last words."""
    result.siblings = siblings.to_dict()
    result.fix_set_siblings = list(siblings.sections)
    best = siblings.best()
    if best is not None:
        result.summary = " ".join(p for p in (result.summary, f"The best fix set {best['statement']}.") if p)


def confidence_terms(
    fidelity: Fidelity, fix: FixSet | None, siblings: Mapping[str, Any] | None = None
) -> ConfidenceTerms | None:
    """The confidence formula's inputs for ``fix``; ``siblings``: its replay on sibling incidents (the
    ``siblings`` section of the best fix set), whose share fixed scales the value."""
    if fix is None:
        return None
    side = fix.side_effects
    specificity = 1.0 - side["changed"] / side["checked"] if side and side["checked"] else None
    return ConfidenceTerms(
        fidelity.faithful,
        fix.validated,
        fix.recovery,
        fix.metric,
        specificity,
        len(fix.interventions),
        fix.verdict == "suppression",
        fix.verdict == "partial",
        siblings["held_out"] if siblings else None,
        siblings["held_out_of"] if siblings else None,
    )
