"""The RCA pipeline: replay with proof, CF (where), CCA (what fixes it), one result.

    pipeline = RCAPipeline(load_config("configs/default.yaml"))
    result = pipeline.run(AnalysisRequest.of("bundles/australia", population="bundles/benign/"))
    result = pipeline.analyze_incident("bundles/australia", baseline="bundles/benign/")   # the same, as the guide writes it
    result.fix_set.interventions, result.confidence, result.export_path

Analysis refuses to interpret interventions on an unfaithful replay: CF is still reported, CCA is not.
Three steps, each in its own module: input resolution (``inputs``), diagnosis (``diagnosis``) and
result assembly (``assemble``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from forensics.bundle import Bundle
from forensics.config import Config
from forensics.errors import AnalysisTimeoutError
from forensics.exec.base import Executor
from forensics.exec.local import LocalExecutor
from forensics.failure import tokenization_warnings
from forensics.models.registry import LoadedModel
from forensics.rca.assemble import Findings, assemble
from forensics.rca.diagnosis import Diagnosis, Progress, diagnose
from forensics.rca.family import FamilyResult, analyze_family
from forensics.rca.inputs import Inputs, ModelCache, replay_options, resolve_inputs, with_reference
from forensics.rca.provenance import provenance_for
from forensics.rca.reference import reference_heads, reference_section
from forensics.rca.request import AnalysisRequest
from forensics.rca.result import RCAResult
from forensics.rca.siblings import SiblingReport, check_siblings
from forensics.rca.story import Story
from forensics.replay.fidelity import Fidelity
from forensics.replay.replayer import Replayer

__all__ = ["RCAPipeline"]


class RCAPipeline:
    """Analyse incidents; holds config, executor and warm models between calls. ``progress``: the
    default progress callback of every run (a run may pass its own)."""

    def __init__(
        self, config: Config | None = None, *, executor: Executor | None = None, progress: Progress | None = None
    ) -> None:
        self.config = config or Config()
        self.executor = executor or LocalExecutor()
        self.progress = progress
        self.models = ModelCache(self.config)

    def analyze_incident(
        self,
        bundle: Any,
        baseline: Any = None,
        model: Any = None,
        *,
        patch_source: Any = None,
        output: str | Path | None = None,
        allow_model_mismatch: bool = False,
        allow_baseline_mismatch: bool = False,
        reference_model: Any = None,
    ) -> RCAResult:
        """``run`` of one request, in the deployment guide's words: ``baseline`` is the population (or CF
        statistics), ``patch_source`` the sources; ``analyze_incident(bundle, model)`` works as the guide
        writes it. ``reference_model``: a known-good version of the model with the same architecture; its
        run of the incident's own tokens becomes the first source (``forensics.rca.reference``)."""
        if model is None and _is_model(baseline):
            baseline, model = None, baseline
        request = AnalysisRequest.of(
            bundle,
            population=baseline,
            sources=patch_source,
            model=model,
            output=output,
            allow_model_mismatch=allow_model_mismatch,
            allow_source_mismatch=allow_baseline_mismatch,
            reference_model=reference_model,
        )
        return self.run(request)

    def run_family(self, request: AnalysisRequest) -> FamilyResult:
        """Analyse ``request``'s incidents as one failure family (``forensics.rca.family``)."""
        return analyze_family(request, request.configured(self.config), self.models)

    def run(self, request: AnalysisRequest, *, progress: Progress | None = None) -> RCAResult:
        """Analyse ``request``'s incident; writes the JSON report when ``request.output`` is set."""
        t0 = time.perf_counter()
        config = request.configured(self.config)
        deadline = time.monotonic() + request.deadline_s(config)
        inputs = resolve_inputs(request, config, self.models)
        timings = {"load": time.perf_counter() - t0}
        rp = self._replayer(inputs, request, config)
        fidelity = rp.fidelity()
        story = Story(rp)
        ref_section = reference_section(inputs.incident, *inputs.reference) if inputs.reference else None
        if ref_section is not None and not ref_section["produces_target"]:
            story.notes.append(ref_section["statement"])
        provenance = self._provenance(rp, fidelity, story, config)
        self._notes(rp, inputs, story)
        metrics = self._cf(inputs, story, timings, config)
        _past_deadline(request, story, deadline, inputs.incident, config)
        advanced: dict[str, Any] = {}
        if self._can_diagnose(rp, fidelity, story, config):
            t = time.perf_counter()
            d = Diagnosis(rp, inputs, config, self.executor, story, deadline, progress or self.progress)
            advanced = diagnose(d, metrics)
            timings["cca"] = time.perf_counter() - t
        siblings = self._siblings(rp, inputs, request, story, config, deadline, timings)
        _past_deadline(request, story, deadline, inputs.incident, config)
        findings = Findings(
            rp, inputs, request, story, fidelity, metrics, ref_section, provenance, advanced, siblings=siblings
        )
        result = assemble(findings, config, timings, t0)
        if request.output is not None:
            result.export(request.output)
        return result

    # -- steps ---------------------------------------------------------------------------------
    def _replayer(self, inputs: Inputs, request: AnalysisRequest, config: Config) -> Replayer:
        options = replay_options(
            config,
            allow_model_mismatch=request.allow_model_mismatch,
            allow_source_mismatch=request.allow_source_mismatch,
        )
        rp = Replayer(
            inputs.incident,
            loaded=inputs.loaded,
            population=inputs.population,
            sources=inputs.sources,
            options=with_reference(options, inputs.reference),
        )
        if inputs.reference is not None:  # REF's heads, not this model's
            rp.bank.set_heads(inputs.reference[1].id, *reference_heads(*inputs.reference))
        return rp

    def _provenance(self, rp: Replayer, fidelity: Fidelity, story: Story, config: Config) -> dict[str, Any] | None:
        if not config.modules.provenance.enabled:
            return None
        if not fidelity.faithful:
            story.skip("provenance (input spans)", "the replay is not faithful")
            return None
        return provenance_for(rp)

    def _siblings(
        self,
        rp: Replayer,
        inputs: Inputs,
        request: AnalysisRequest,
        story: Story,
        config: Config,
        deadline: float,
        timings: dict[str, float],
    ) -> SiblingReport | None:
        """The fix sets replayed on sibling incidents (``forensics.rca.siblings``), when the CCA search ran
        and ``modules.cca.siblings`` is on; finding none reads manifests only."""
        if story.cca is None:
            return None
        if not config.modules.cca.siblings:
            story.skip("the replay on sibling incidents", "modules.cca.siblings is false")
            return None
        t = time.perf_counter()
        report = check_siblings(rp, inputs, request, story.fixes, config, deadline)
        for skip in [*report.found.skipped, *report.skipped]:
            story.notes.append(f"{skip['what']} skipped: {skip['why']}")
        if report.replayed:
            timings["siblings"] = time.perf_counter() - t
        return report

    def _notes(self, rp: Replayer, inputs: Inputs, story: Story) -> None:
        if rp.spec is not None:
            story.notes += tokenization_warnings(rp.spec, rp.tokenizer, prompt=inputs.incident.inputs.get("prompt"))
        if not inputs.population:
            story.notes.append(
                "analysis without a population: CF skipped, 'mean' unavailable and no side-effect "
                "check; confidence rests on fidelity, validation, margin and size only"
            )

    def _can_diagnose(self, rp: Replayer, fidelity: Fidelity, story: Story, config: Config) -> bool:
        """Whether the CCA search runs: a faithful replay, CCA on, a failure spec, and a run that fails it."""
        if not fidelity.faithful:
            story.notes.append(
                f"replay not faithful (first divergent: {fidelity.first_divergent}); CCA skipped: {fidelity.advice()}"
            )
            story.skip("the CCA search (every intervention)", "the replay is not faithful")
            return False
        if not config.modules.cca.enabled:
            story.skip("the CCA search", "modules.cca.enabled is false")
            return False
        if rp.spec is None:
            return False
        outcome = rp.run(())
        story.m_incident = outcome.metric
        if outcome.fixed:
            story.notes.append(
                f"the replayed run does not fail its failure spec (it answers {outcome.argmax_token!r} at the "
                "decision step): there is no failure to explain, so no fix was searched for"
            )
            story.skip("the CCA search", "the bundle does not fail its failure spec")
            return False
        return True

    def _cf(self, inputs: Inputs, story: Story, timings: dict[str, float], config: Config) -> list[Any]:
        if not config.modules.cf.enabled:
            story.skip("CF (compression forensics)", "modules.cf.enabled is false")
            return []
        if inputs.cf_stats is None:
            n = len(inputs.population)
            story.notes.append(f"CF skipped: needs ≥ 2 population bundles or a CF statistics file (got {n} bundles)")
            story.skip("CF (compression forensics)", f"needs ≥ 2 population bundles, got {n}")
            return []
        from forensics.cf.scores import analyze_cf

        t = time.perf_counter()
        metrics = list(analyze_cf(inputs.incident, inputs.cf_stats, config.modules.cf))
        timings["cf"] = time.perf_counter() - t
        return metrics


def _past_deadline(request: AnalysisRequest, story: Story, deadline: float, incident: Bundle, config: Config) -> None:
    """With ``on_timeout="error"``, an analysis past its deadline raises instead of reporting a partial search."""
    timed_out = (story.cca is not None and story.cca.timed_out) or time.monotonic() > deadline
    if request.on_timeout == "error" and timed_out:
        raise AnalysisTimeoutError(
            f"analysis of {incident.id!r} exceeded the time limit of {request.deadline_s(config):g} s "
            "(config timeout_minutes)"
        )


def _is_model(obj: Any) -> bool:
    """A model object, not a population (a path, a bundle, a list of bundles)."""
    if isinstance(obj, tuple) and len(obj) == 2:
        obj = obj[0]
    return isinstance(obj, LoadedModel | nn.Module)
