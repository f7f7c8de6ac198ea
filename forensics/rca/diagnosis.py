"""Diagnosis: on a faithful replay, the evidence and the search for fixes, each fix then judged.

    advanced = diagnose(Diagnosis(rp, inputs, config, executor, story, deadline, progress), metrics)

Input-level evidence first (which sources carry the answer), then the CCA search over the candidates
(AtP's top N, or every candidate ordered by the CF prior), then each validated fix set judged: its
regenerated answer and its side effects on the population. ISC and DBC run on the best fix when on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from forensics.bundle import Bundle
from forensics.cca.atp import Attribution, attribute
from forensics.cca.candidates import build_candidates
from forensics.cca.dbc import dbc_for
from forensics.cca.evidence import (
    input_level,
    is_the_incident,
    output_module,
    reference_run_ids,
    source_metric,
    target_sources,
)
from forensics.cca.isc import isc_for
from forensics.cca.judge import check_side_effects, judge_answer, rank
from forensics.cca.search import find_fix_set
from forensics.cf.localise import layer_of, rank_layers
from forensics.config import CCAConfig, Config
from forensics.errors import ReplayError
from forensics.exec.base import Executor, ReplayJob
from forensics.models.arch import arch_for
from forensics.rca.confidence import NEAR_TIE_SHARE
from forensics.rca.inputs import Inputs
from forensics.rca.story import Story
from forensics.replay.heads import attention_modules
from forensics.replay.interventions import Intervention
from forensics.replay.replayer import Replayer
from forensics.replay.sources import prefix_length

__all__ = ["MAX_FIX_SETS", "Diagnosis", "Progress", "cf_prior", "diagnose"]

MAX_FIX_SETS = 3  # validated fix sets reported, best first
Progress = Callable[[str, int, int | None], None]  # (phase, advance, total)


@dataclass(frozen=True)
class Diagnosis:
    """One diagnosis's context: the incident's replayer, what it reads, how it runs, where it writes."""

    rp: Replayer
    inputs: Inputs
    config: Config
    executor: Executor
    story: Story
    deadline: float | None = None  # time.monotonic() past which the search stops
    progress: Progress | None = None


def diagnose(d: Diagnosis, metrics: Sequence[Any]) -> dict[str, Any]:
    """Input-level evidence, the CCA search, then each fix judged (regenerated answer, side effects);
    returns the advanced modules' results (isc, dbc) where they are on."""
    rp, story = d.rp, d.story
    sources = _sources(d)
    cfg = _search_config(d, sources)
    if cfg is None:
        return {}
    refs = reference_run_ids(rp, sources)
    story.cca = cca = find_fix_set(
        d.executor.evaluator(_job(rp, d.inputs.incident, sources), local=rp),
        d.inputs.incident.modules,
        cfg,
        m_incident=story.m_incident if story.m_incident is not None else rp.run(()).metric,
        m_source=story.m_source,
        sources=story.sources,
        prior=cf_prior(metrics),
        progress=_tick(d.progress, "cca"),
        deadline=d.deadline,
        output_module=output_module(rp),
        reference_runs=refs,
        candidates=_candidates(d, cfg, refs, metrics),
        length=rp.length,
    )
    _unevaluated(d, cca)
    if cca.refused:
        why = next(iter(cca.refused.values()))
        story.skip(f"{len(cca.refused)} candidate sets the replay cannot do", f"the replay refused them, e.g.: {why}")
    judged = [judge_answer(rp, fix) for fix in cca.fix_sets]
    benign = _population_replayers(d, sources) if judged else []
    checked = check_side_effects(judged, benign, length=rp.length, reference_runs=refs)
    contexts = {b.id for b in sources if b.id not in refs and prefix_length(b, rp.step) > rp.length}
    story.fixes = rank(checked, refs, contexts)[:MAX_FIX_SETS]
    _near_tie(story)
    return _advanced(d)


def _sources(d: Diagnosis) -> list[Bundle]:
    """The sources that can show a correct run (the story notes the others), the metric of the first,
    and the input-level evidence of every source but the incident itself."""
    rp, story = d.rp, d.story
    sources, story.recovery_note = target_sources(rp, d.inputs.sources)
    story.sources = [b.id for b in sources]
    story.m_source = source_metric(rp, sources[0]) if sources else None
    if story.m_source is not None and story.m_incident is not None and story.m_source <= story.m_incident:
        story.recovery_note = (
            f"recovery unavailable: the source {sources[0].id} reaches a margin of {story.m_source:.3f}, no "
            f"better than the incident's {story.m_incident:.3f}, so it cannot measure how much of the way a fix goes"
        )
        story.m_source = None
    if story.recovery_note:
        story.notes.append(story.recovery_note)
    story.input_level = input_level(rp, [b for b in d.inputs.sources if not is_the_incident(rp, b)])
    return sources


def _search_config(d: Diagnosis, sources: Sequence[Bundle]) -> CCAConfig | None:
    """The CCA settings with the intervention types this incident can use ('mean' needs a population,
    'patch' a source that produces the target); None, with the search marked skipped, when none is left."""
    cca = d.config.modules.cca
    types = [t for t in cca.intervention_types if not (t == "mean" and not d.rp.bank.population)]
    if "patch" in types and not sources:
        types.remove("patch")
        if not d.inputs.sources:
            d.story.notes.append("no source to patch from (no counterfactual): 'patch' interventions left out")
    if not types:
        why = (
            f"no usable intervention type of {', '.join(cca.intervention_types)}: 'mean' needs a population, "
            "'patch' a source that answers right"
        )
        d.story.notes.append(f"CCA skipped: {why}")
        d.story.skip("the CCA search", why)
        return None
    return replace(cca, intervention_types=tuple(types))


def _advanced(d: Diagnosis) -> dict[str, Any]:
    story, modules = d.story, d.config.modules
    fix = story.fixes[0] if story.fixes else None
    m_incident = float(story.m_incident or 0.0)
    return {
        "isc": isc_for(d.rp, fix, m_incident=m_incident, m_source=story.m_source, notes=story.notes)
        if modules.isc.enabled
        else None,
        "dbc": dbc_for(d.rp, fix, m_incident=m_incident, notes=story.notes) if modules.dbc.enabled else None,
    }


def _near_tie(story: Story) -> None:
    near = story.near_tie()
    if near["evaluated_singles"] and near["flipping_singles"] > NEAR_TIE_SHARE * near["evaluated_singles"]:
        story.notes.append(
            f"near tie: the incident's margin is {-(story.m_incident or 0.0):.3f} logits and "
            f"{near['flipping_singles']} of {near['evaluated_singles']} single interventions "
            "flip the answer; many small pushes change it, so read any one fix as weak evidence"
        )


def _candidates(d: Diagnosis, cfg: CCAConfig, refs: frozenset[str], metrics: Sequence[Any]) -> list[Intervention]:
    """The single interventions the search evaluates: with ``prefilter: atp`` the top N of every
    component x position candidate by attribution patching (one forward and backward pass), else
    every candidate of the recorded modules, ordered by the CF prior."""
    rp, story = d.rp, d.story
    spans = d.inputs.incident.inputs.get("spans") or ()
    if cfg.prefilter == "atp":
        story.attribution = atp = attribute(
            rp,
            kinds=cfg.intervention_types,
            sources=story.sources,
            reference_runs=refs,
            sites=cfg.components,
            spans=spans,
            include=cfg.positions,
            output_module=output_module(rp),
            sink_exact=cfg.prefilter_sink_exact,
            sink_exact_max=cfg.prefilter_sink_exact_max,
        )
        top = kept(atp, cfg.prefilter_top_k, [s for s in story.sources if s in refs])
        atp.kept = len(top)
        story.skip(
            f"{atp.candidates - len(top)} of {atp.candidates} component x position candidates in an exact replay",
            f"the AtP pre-filter kept the top {len(top)} by estimated effect (modules.cca.prefilter_top_k); "
            "each evaluated one reports its estimate next to its exact effect",
        )
        return [iv for iv, _ in top]
    heads = {attn: arch_for(rp.model).head_slices(rp.model, attn)[0] for attn in attention_modules(rp.model)}
    return build_candidates(
        d.inputs.incident.modules,
        cfg,
        story.sources,
        cf_prior(metrics),
        output_module=output_module(rp),
        reference_runs=refs,
        length=rp.length,
        heads=heads if "head" in cfg.components else None,
        spans=spans,
    )


def _unevaluated(d: Diagnosis, cca: Any) -> None:
    story, modules = d.story, d.inputs.incident.modules
    seen = {iv.module for s in cca.singles for iv in s.interventions}
    missing = [m for m in modules if m not in seen]
    if missing and story.attribution is None:
        why = (
            "timeout_minutes reached"
            if cca.timed_out
            else "the max_replays budget ran out"
            if cca.budget_exhausted
            else "the scan stopped early: a single intervention already fixed the "
            "failure with recovery above early_stop_threshold"
        )
        story.skip(
            f"{len(missing)} of {len(modules)} modules as single interventions "
            f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})",
            why,
        )
    if cca.timed_out:
        story.notes.append(
            f"the time limit (timeout_minutes: {d.config.timeout_minutes}, or the request's) was reached: the "
            f"search stopped after {cca.evaluated} sets; the result is the best found so far"
        )


def _population_replayers(d: Diagnosis, sources: Sequence[Bundle]) -> list[Replayer]:
    """One replayer per population bundle, for the side-effect check."""
    rp, population = d.rp, d.inputs.population
    out = []
    for b in population:
        try:
            other = Replayer(b, loaded=rp.loaded, population=population, sources=sources, options=rp.options)
        except ReplayError as exc:
            d.story.skip(f"side effects on {b.id}", str(exc))
            continue
        with contextlib.suppress(ReplayError):  # same population: heads captured for the incident serve here
            other.bank.share(rp.bank)
        out.append(other)
    return out


def _job(rp: Replayer, incident: Bundle, sources: Sequence[Bundle]) -> ReplayJob:
    """The replay session as plain data, so a remote worker can rebuild it."""
    info = rp.loaded.info
    return ReplayJob(
        bundle=incident.path,
        population=tuple(b.path for b in rp.bank.population.values()),
        sources=tuple(b.path for b in sources),
        model=info.path if info.kind in ("hf_dir", "gguf") else info.ref,
        options=rp.options,
    )


def _tick(progress: Progress | None, phase: str) -> Callable[[int, int | None], None] | None:
    if progress is None:
        return None
    return lambda n, total: progress(phase, n, total)


def kept(atp: Attribution, k: int, reference_runs: Sequence[str] = ()) -> list[tuple[Intervention, float]]:
    """The pre-filter's pick: the best ``k`` by estimate, of which the residual stream (whose patches
    estimate large, as they carry a whole state) takes at most a quarter, so components get the rest.
    With a reference run of the incident's own input, every attention and MLP output patched from it
    at every position is kept too, and each attention's head with the largest estimate in size (three
    per layer; where the two versions differ in one head, the others estimate 0): a first-order
    estimate underrates, or even flips the sign of, a large early difference between the two models,
    and these are what a regression is made of."""
    resid = atp.top(max(1, k // 4), sites={"resid"})
    parts = atp.top(k, sites={"attn", "mlp", "head"})
    out = sorted([*resid, *parts], key=lambda pair: -pair[1])[:k]
    seen = {iv for iv, _ in out}
    for source in reference_runs:
        best_head: dict[str, tuple[Intervention, float]] = {}
        for node in atp.nodes:
            iv = Intervention(node.module, "patch", "all", source, head=node.head)
            estimate = atp.estimate(iv)
            if estimate is None or iv in seen:
                continue
            if node.head is None and node.component(atp.family).site in ("attn", "mlp"):
                out.append((iv, estimate))
                seen.add(iv)
            elif node.head is not None and abs(estimate) > abs(best_head.get(node.module, (iv, 0.0))[1]):
                best_head[node.module] = (iv, estimate)
        out += [pair for pair in best_head.values() if pair[0] not in seen]
    return out


def cf_prior(metrics: Sequence[Any]) -> dict[str, float]:
    """Search order from CF: the onset score of a module's layer (where an anomaly starts, see
    ``rank_layers``), then the module's own score as a tie-breaker."""
    onset = {row["layer"]: row["onset"] for row in rank_layers(metrics)}
    return {m.module: onset.get(layer_of(m.module), 0.0) + 0.01 * float(m.score) for m in metrics}
