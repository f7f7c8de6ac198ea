"""The RCA pipeline: replay with proof, CF (where), CCA (what fixes it), one result.

    pipeline = RCAPipeline(load_config("configs/default.yaml"))
    result = pipeline.analyze_incident("bundles/australia", baseline="bundles/benign/")
    result.fix_set.interventions, result.confidence, result.export_path

Analysis refuses to interpret interventions on an unfaithful replay: CF is still reported, CCA is not.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from forensics.bundle import Bundle, load_bundle
from forensics.config import CCAConfig, Config
from forensics.errors import ConfigError, ModelError, ReplayError
from forensics.exec.base import Executor, ReplayJob
from forensics.exec.local import LocalExecutor
from forensics.failure import tokenization_warnings
from forensics.models.arch import arch_for
from forensics.models.registry import LoadedModel, resolve_model, wrap_model
from forensics.rca.atp import Attribution, attribute
from forensics.rca.cca import CCAResult, FixSet, build_candidates, find_fix_set
from forensics.rca.components import rank_components, summarize
from forensics.rca.confidence import ConfidenceTerms, confidence, explain
from forensics.rca.dbc import dbc_for
from forensics.rca.evidence import baseline_metric, input_level, output_module, same_input, target_sources
from forensics.rca.isc import isc_for
from forensics.rca.judge import check_side_effects, judge_answer, rank
from forensics.rca.localise import rank_layers
from forensics.rca.population import load_population, pick_counterfactuals
from forensics.rca.provenance import provenance_for
from forensics.rca.reference import reference_heads, reference_run, reference_section
from forensics.rca.result import RCAResult
from forensics.rca.story import NEAR_TIE_SHARE, Story, commands, incident_section
from forensics.replay.fidelity import Fidelity
from forensics.replay.heads import attention_modules
from forensics.replay.interventions import Intervention
from forensics.replay.options import ReplayOptions
from forensics.replay.replayer import Replayer
from forensics.replay.sources import prefix_length

__all__ = ["RCAPipeline", "cf_prior", "replay_options"]

log = logging.getLogger(__name__)
MAX_FIX_SETS = 3  # validated fix sets reported, best first
Progress = Callable[[str, int, int | None], None]  # (phase, advance, total)


class RCAPipeline:
    """Analyse incidents; holds config, executor and a warm model between calls."""

    def __init__(
        self, config: Config | None = None, *, executor: Executor | None = None, progress: Progress | None = None
    ) -> None:
        self.config = config or Config()
        self.executor = executor or LocalExecutor()
        self.progress = progress
        self._models: dict[tuple[str, str], LoadedModel] = {}

    # -- public --------------------------------------------------------------------------------
    def analyze_incident(
        self,
        bundle: Any,
        baseline: Any = None,
        model: Any = None,
        *,
        patch_source: Any = None,
        output: str | Path | None = None,
        html: str | Path | None = None,
        allow_model_mismatch: bool = False,
        allow_baseline_mismatch: bool = False,
        reference_model: Any = None,
    ) -> RCAResult:
        """``reference_model`` (a reference, a path or a ``LoadedModel``): a known-good version of the model
        with the same architecture; its run of the incident's own tokens becomes the first patch source
        (``forensics.rca.reference``) and the report gets a ``reference`` section."""
        if model is None and _is_model(baseline):  # the guide's analyze_incident(incident_data, model)
            baseline, model = None, baseline
        t0 = time.perf_counter()
        deadline = time.monotonic() + 60.0 * self.config.timeout_minutes
        timings: dict[str, float] = {}
        incident = self._bundle(bundle)
        population, stats = self._baselines(baseline)
        loaded = self._model(incident, model)
        reference = self._reference(incident, loaded, reference_model, output)
        timings["load"] = time.perf_counter() - t0
        cfs = self._counterfactuals(incident, population, patch_source, reference)
        options = replay_options(
            self.config, allow_model_mismatch=allow_model_mismatch, allow_baseline_mismatch=allow_baseline_mismatch
        )
        if reference is not None:
            options = replace(
                options, reference_sha256=reference[0].info.sha256, reference_model=_loadable(reference[0])
            )
        rp = Replayer(incident, loaded=loaded, baselines=population, counterfactuals=cfs, options=options)
        if reference is not None:
            rp.bank.set_heads(reference[1].id, *reference_heads(*reference))  # REF's heads, not this model's
        fidelity = rp.fidelity()
        story = Story(rp)
        ref_section = reference_section(incident, *reference) if reference is not None else None
        if ref_section is not None and not ref_section["produces_target"]:
            story.notes.append(ref_section["statement"])
        provenance = provenance_for(rp) if self.config.modules.provenance.enabled and fidelity.faithful else None
        if self.config.modules.provenance.enabled and not fidelity.faithful:
            story.skip("provenance (input spans)", "the replay is not faithful")
        if rp.spec is not None:
            story.notes += tokenization_warnings(rp.spec, rp.tokenizer, prompt=incident.inputs.get("prompt"))
        if not population:
            story.notes.append(
                "analysis without baselines: CF skipped, 'mean' unavailable and no side-effect "
                "check; confidence rests on fidelity, validation, margin and size only"
            )
        metrics = self._cf(incident, population, stats, story, timings)
        advanced: dict[str, Any] = {}  # isc / dbc, when on and a fix set was found
        if not fidelity.faithful:
            story.notes.append(
                f"replay not faithful (first divergent: {fidelity.first_divergent}); CCA skipped: {fidelity.advice()}"
            )
            story.skip("the CCA search (every intervention)", "the replay is not faithful")
        elif self.config.modules.cca.enabled and rp.spec is not None:
            t = time.perf_counter()
            advanced = self._diagnose(rp, incident, metrics, cfs, population, story, deadline)
            timings["cca"] = time.perf_counter() - t
        elif not self.config.modules.cca.enabled:
            story.skip("the CCA search", "modules.cca.enabled is false")
        result = self._result(rp, incident, metrics, fidelity, story, population, cfs, timings, t0)
        result.isc, result.dbc = advanced.get("isc"), advanced.get("dbc")
        result.attribution = story.attribution.to_dict() if story.attribution else None
        if story.cca is not None and story.m_incident is not None:
            result.components = rank_components(
                story.cca.singles,
                story.attribution,
                m_incident=story.m_incident,
                family=arch_for(rp.model).family,
                tokens=[rp.tokenizer.decode([t]) for t in rp.input_ids[0].tolist()],
                references=[reference[1].id] if reference is not None else (),
            )
            result.summary = summarize(
                result.components,
                result.fix_set.to_dict() if result.fix_set else None,
                result.decision,
                reference=ref_section,
            )
        result.provenance = provenance
        result.reference = ref_section
        result.commands = commands(
            incident.path,
            baseline,
            patch_source,
            model,
            output,
            allow_model_mismatch,
            allow_baseline_mismatch,
            _loadable(reference[0]) if reference is not None else None,
        )
        if output is not None:
            result.export(output)
        if html is not None:
            from forensics.rca.report_html import write_html

            write_html(result, html)
        return result

    # -- steps ---------------------------------------------------------------------------------
    def _bundle(self, obj: Bundle | str | Path) -> Bundle:
        return obj if isinstance(obj, Bundle) else load_bundle(obj, encryption_key=self.config.encryption_key)

    def _model(self, incident: Bundle, model: Any) -> LoadedModel:
        """The model analysed: a ``LoadedModel``; a torch model the caller holds (``nn.Module``, or
        ``(model, tokenizer)``: used as given, its weights hashed, so a model other than the recording's
        is refused by the replay unless ``allow_model_mismatch``); a reference; None: the bundle's."""
        if isinstance(model, LoadedModel):
            return model
        module, tokenizer = model if isinstance(model, tuple) and len(model) == 2 else (model, None)
        if isinstance(module, nn.Module):
            return wrap_model(
                module,
                tokenizer,
                ref=f"<torch model {type(module).__name__}>",
                tokenizer_ref=(incident.manifest.get("tokenizer") or {}).get("ref", incident.model["ref"]),
                cache_dir=self.config.cache_dir,
            )
        if model is not None and not isinstance(model, str):
            raise ModelError(
                f"model: expected a reference (str), a LoadedModel, a torch nn.Module or "
                f"(nn.Module, tokenizer), got {type(model).__name__}"
            )
        ref = model if isinstance(model, str) else incident.model["ref"]
        key = (ref, incident.model.get("dtype", "float32"))
        if key not in self._models:
            self._models[key] = resolve_model(
                ref, device=self.config.device, dtype=key[1], cache_dir=self.config.cache_dir
            )
        return self._models[key]

    def _baselines(self, baseline: Any) -> tuple[list[Any], Any]:
        """(benign population bundles, CF statistics or None)."""
        if baseline is None:
            return [], None
        limit = self.config.modules.cf.baseline_samples
        if isinstance(baseline, str | Path) and str(baseline).endswith(".json"):
            from forensics.rca.cf import BaselineStats

            return [], BaselineStats.from_json(baseline)
        population = load_population(baseline, limit=limit, encryption_key=self.config.encryption_key)
        if len(population) < 2 or not self.config.modules.cf.enabled:
            return population, None
        from forensics.rca.cf import build_baseline

        return population, build_baseline(population, self.config.modules.cf)

    def _counterfactuals(
        self, incident: Any, population: Sequence[Any], patch_source: Any, reference: Any = None
    ) -> list[Any]:
        """Patch sources: the reference run first (when there is one), then the given or picked ones."""
        first = [reference[1]] if reference is not None else []
        if patch_source is not None:
            sources = patch_source if isinstance(patch_source, list) else [patch_source]
            return [*first, *(self._bundle(p) for p in sources)]
        return [*first, *pick_counterfactuals(incident, population, k=self.config.modules.cca.patch_sources)]

    def _reference(
        self, incident: Bundle, loaded: LoadedModel, reference_model: Any, output: str | Path | None
    ) -> tuple[LoadedModel, Bundle] | None:
        """(REF loaded, its run of the incident's tokens), or None without a reference model. The run is
        cached under ``cache_dir/reference`` (else ``reference/`` next to the report, else in ``output_dir``)."""
        if reference_model is None:
            return None
        if isinstance(reference_model, LoadedModel):
            ref = reference_model
        elif isinstance(reference_model, str | Path):
            key = (str(reference_model), incident.model.get("dtype", "float32"))
            if key not in self._models:
                self._models[key] = resolve_model(
                    key[0], device=self.config.device, dtype=key[1], cache_dir=self.config.cache_dir
                )
            ref = self._models[key]
        else:
            raise ModelError(
                f"reference_model: expected a model reference (str) or a LoadedModel, got {type(reference_model).__name__}"
            )
        cfg = self.config
        root = Path(cfg.cache_dir) if cfg.cache_dir else Path(output).parent if output else Path(cfg.output_dir)
        bundle = reference_run(incident, ref, root / "reference", model=loaded, encryption_key=cfg.encryption_key)
        return ref, bundle

    def _cf(
        self, incident: Any, population: Sequence[Any], stats: Any, story: Story, timings: dict[str, float]
    ) -> list[Any]:
        if not self.config.modules.cf.enabled:
            story.skip("CF (compression forensics)", "modules.cf.enabled is false")
            return []
        if stats is None:
            story.notes.append(
                f"CF skipped: needs ≥ 2 benign baseline bundles or a baseline statistics file "
                f"(got {len(population)} bundles)"
            )
            story.skip("CF (compression forensics)", f"needs ≥ 2 benign baseline bundles, got {len(population)}")
            return []
        from forensics.rca.cf import analyze_cf

        t = time.perf_counter()
        metrics = list(analyze_cf(incident, stats, self.config.modules.cf))
        timings["cf"] = time.perf_counter() - t
        return metrics

    def _diagnose(
        self,
        rp: Replayer,
        incident: Bundle,
        metrics: Sequence[Any],
        cfs: Sequence[Bundle],
        population: Sequence[Bundle],
        story: Story,
        deadline: float,
    ) -> dict[str, Any]:
        """Input-level evidence, the CCA search, then each fix judged (regenerated answer, side effects);
        returns the advanced modules' results (isc, dbc) where they are on."""
        story.m_incident = rp.run(()).metric
        sources, story.recovery_note = target_sources(rp, cfs)
        story.sources = [b.id for b in sources]
        story.m_baseline = baseline_metric(rp, sources[0]) if sources else None
        if story.recovery_note:
            story.notes.append(story.recovery_note)
        story.input_level = input_level(rp, cfs)
        cca_cfg = self.config.modules.cca
        types = [t for t in cca_cfg.intervention_types if not (t == "mean" and not rp.bank.population)]
        if "patch" in types and not sources:
            types.remove("patch")
            if not cfs:
                story.notes.append("no counterfactual baseline: 'patch' interventions left out")
        if not types:
            raise ConfigError("no usable intervention types: 'mean'/'patch' need baseline bundles")
        cfg = replace(cca_cfg, intervention_types=tuple(types))
        evaluate = self.executor.evaluator(self._job(rp, incident, sources), local=rp)
        same = same_input(rp, sources)
        candidates = self._candidates(rp, incident, cfg, story, same, metrics)
        story.cca = cca = find_fix_set(
            evaluate,
            incident.modules,
            cfg,
            m_incident=story.m_incident,
            m_baseline=story.m_baseline,
            patch_sources=story.sources,
            prior=cf_prior(metrics),
            progress=self._tick("cca"),
            deadline=deadline,
            output_module=output_module(rp),
            same_input=same,
            candidates=candidates,
            length=rp.length,
        )
        self._unevaluated(incident, cca, story)
        judged_fixes = [judge_answer(rp, fix) for fix in cca.fix_sets]
        benign = self._benign_replayers(rp, population, sources, story) if judged_fixes else []
        checked = check_side_effects(judged_fixes, benign, length=rp.length, references=same)
        contexts = {b.id for b in sources if b.id not in same and prefix_length(b, rp.step) > rp.length}
        story.fixes = rank(checked, same, contexts)[:MAX_FIX_SETS]
        modules, fix = self.config.modules, (story.fixes[0] if story.fixes else None)
        advanced = {
            "isc": isc_for(rp, fix, story) if modules.isc.enabled else None,
            "dbc": dbc_for(rp, fix, story) if modules.dbc.enabled else None,
        }
        near = story.near_tie()
        if near["evaluated_singles"] and near["flipping_singles"] > NEAR_TIE_SHARE * near["evaluated_singles"]:
            story.notes.append(
                f"near tie: the incident's margin is {-story.m_incident:.3f} logits and "
                f"{near['flipping_singles']} of {near['evaluated_singles']} single interventions "
                "flip the answer; many small pushes change it, so read any one fix as weak evidence"
            )
        return advanced

    def _candidates(
        self,
        rp: Replayer,
        incident: Bundle,
        cfg: CCAConfig,
        story: Story,
        same: frozenset[str],
        metrics: Sequence[Any],
    ) -> list[Intervention]:
        """The single interventions the search evaluates: with ``prefilter: atp`` the top N of every
        component x position candidate by attribution patching (one forward and backward pass), else
        every candidate of the recorded modules, ordered by the CF prior."""
        spans = incident.inputs.get("spans") or ()
        if cfg.prefilter == "atp":
            story.attribution = atp = attribute(
                rp,
                kinds=cfg.intervention_types,
                sources=story.sources,
                same_input=same,
                sites=cfg.components,
                spans=spans,
                include=cfg.positions,
                output_module=output_module(rp),
                sink_exact=cfg.prefilter_sink_exact,
            )
            top = _kept(atp, cfg.prefilter_top_k, [s for s in story.sources if s in same])
            atp.kept = len(top)
            story.skip(
                f"{atp.candidates - len(top)} of {atp.candidates} component x position candidates in an exact replay",
                f"the AtP pre-filter kept the top {len(top)} by estimated effect (modules.cca.prefilter_top_k); "
                "each evaluated one reports its estimate next to its exact effect",
            )
            return [iv for iv, _ in top]
        heads = {attn: arch_for(rp.model).head_slices(rp.model, attn)[0] for attn in attention_modules(rp.model)}
        return build_candidates(
            incident.modules,
            cfg,
            story.sources,
            cf_prior(metrics),
            output_module=output_module(rp),
            same_input=same,
            length=rp.length,
            heads=heads if "head" in cfg.components else None,
            spans=spans,
        )

    def _unevaluated(self, incident: Bundle, cca: CCAResult, story: Story) -> None:
        seen = {iv.module for s in cca.singles for iv in s.interventions}
        missing = [m for m in incident.modules if m not in seen]
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
                f"{len(missing)} of {len(incident.modules)} modules as single interventions "
                f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})",
                why,
            )
        if cca.timed_out:
            story.notes.append(
                f"timeout_minutes ({self.config.timeout_minutes}) reached: the search stopped "
                f"after {cca.evaluated} sets; the result is the best found so far"
            )

    def _benign_replayers(
        self, rp: Replayer, population: Sequence[Bundle], sources: Sequence[Bundle], story: Story
    ) -> list[Replayer]:
        """One replayer per benign bundle of the same model, for the side-effect check."""
        out = []
        for b in population:
            try:
                other = Replayer(b, loaded=rp.loaded, baselines=population, counterfactuals=sources, options=rp.options)
            except ReplayError as exc:
                story.skip(f"side effects on {b.id}", str(exc))
                continue
            with contextlib.suppress(ReplayError):  # same baselines: heads captured for the incident serve here
                other.bank.share(rp.bank)
            out.append(other)
        return out

    def _job(self, rp: Replayer, incident: Bundle, cfs: Sequence[Bundle]) -> ReplayJob:
        """The replay session as plain data, so a remote worker can rebuild it."""
        info = rp.loaded.info
        return ReplayJob(
            bundle=incident.path,
            baselines=tuple(b.path for b in rp.bank.population.values()),
            counterfactuals=tuple(b.path for b in cfs),
            model=info.path if info.kind in ("hf_dir", "gguf") else info.ref,
            options=rp.options,
        )

    def _tick(self, phase: str) -> Callable[[int, int | None], None] | None:
        progress = self.progress
        if progress is None:
            return None
        return lambda n, total: progress(phase, n, total)

    def _result(
        self,
        rp: Replayer,
        incident: Bundle,
        metrics: list[Any],
        fidelity: Fidelity,
        story: Story,
        population: Sequence[Bundle],
        cfs: Sequence[Bundle],
        timings: dict[str, float],
        t0: float,
    ) -> RCAResult:
        cca, fix = story.cca, (story.fixes[0] if story.fixes else None)
        layers = rank_layers(metrics)
        terms = confidence_terms(fidelity, fix)
        replays = {
            "forward_passes": rp.forward_passes,
            "candidates": cca.candidates if cca else 0,
            "evaluated": cca.evaluated if cca else 0,
            "budget_exhausted": cca.budget_exhausted if cca else False,
            "timed_out": cca.timed_out if cca else False,
        }
        return RCAResult(
            bundle_id=incident.id,
            confidence=confidence(terms) if terms else 0.0,
            execution_time=time.perf_counter() - t0,
            compression_metrics=metrics,
            fix_set=fix,
            replays=replays,
            fidelity=fidelity.to_dict(),
            decision=story.decision(),
            localisation=layers,
            single_effects=[_single(s, story) for s in cca.singles] if cca else [],
            search={
                "strategy": cca.strategy,
                "steps": cca.steps,
                "best_partial": cca.best_partial.to_dict() if cca.best_partial else None,
            }
            if cca
            else {},
            baselines={
                "population": [b.id for b in population],
                "patch_sources": story.sources,
                "counterfactuals": [b.id for b in cfs],
                "paths": {b.id: b.path for b in [*population, *cfs]},
            },
            bundle_path=incident.path,
            cf={"anomaly_threshold": self.config.modules.cf.anomaly_threshold},
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


def _loadable(ref: LoadedModel) -> str | None:
    """How a worker elsewhere loads REF again (None: an in-memory model, which only this process has)."""
    info = ref.info
    return info.path if info.kind in ("hf_dir", "gguf") else info.ref if info.kind in ("embedded", "hf_cache") else None


def _kept(atp: Attribution, k: int, references: Sequence[str] = ()) -> list[tuple[Intervention, float]]:
    """The pre-filter's pick: the best ``k`` by estimate, of which the residual stream (whose patches
    estimate large, as they carry a whole state) takes at most a quarter, so components get the rest.
    With a reference run of the incident's own input, every attention and MLP output patched from it
    at every position is kept too, and each attention's head with the largest estimate in size (three
    per layer; where the two versions differ in one head, the others estimate 0): a first-order
    estimate underrates, or even flips the sign of, a large early difference between the two models,
    and these are what a regression is made of."""
    resid = atp.top(max(1, k // 4), sites={"resid"})
    parts = atp.top(k, sites={"attn", "mlp", "head"})
    kept = sorted([*resid, *parts], key=lambda pair: -pair[1])[:k]
    seen = {iv for iv, _ in kept}
    for source in references:
        best_head: dict[str, tuple[Intervention, float]] = {}
        for node in atp.nodes:
            iv = Intervention(node.module, "patch", "all", source, head=node.head)
            estimate = atp.estimate(iv)
            if estimate is None or iv in seen:
                continue
            if node.head is None and node.component(atp.family).site in ("attn", "mlp"):
                kept.append((iv, estimate))
                seen.add(iv)
            elif node.head is not None and abs(estimate) > abs(best_head.get(node.module, (iv, 0.0))[1]):
                best_head[node.module] = (iv, estimate)
        kept += [pair for pair in best_head.values() if pair[0] not in seen]
    return kept


def _single(s: Any, story: Story) -> dict[str, Any]:
    atp = story.attribution
    return {**s.to_dict(), "atp": atp.estimate(s.interventions[0]) if atp and len(s.interventions) == 1 else None}


def _is_model(obj: Any) -> bool:
    """A model object, not a baseline (a path, a bundle, a list of bundles)."""
    if isinstance(obj, tuple) and len(obj) == 2:
        obj = obj[0]
    return isinstance(obj, LoadedModel | nn.Module)


def confidence_terms(fidelity: Fidelity, fix: FixSet | None) -> ConfidenceTerms | None:
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
    )


def replay_options(
    config: Config, *, allow_model_mismatch: bool = False, allow_baseline_mismatch: bool = False
) -> ReplayOptions:
    """The replay settings a config implies (device, cache, batch size, tolerance, memory, key)."""
    return ReplayOptions(
        device=config.device,
        cache_dir=config.cache_dir,
        allow_model_mismatch=allow_model_mismatch,
        allow_baseline_mismatch=allow_baseline_mismatch,
        batch_size=config.modules.cca.batch_size,
        fidelity_tolerance=config.fidelity_tolerance,
        fidelity_rtol=config.fidelity_rtol,
        max_memory=config.max_memory,
        encryption_key=config.encryption_key,
    )


def cf_prior(metrics: Sequence[Any]) -> dict[str, float]:
    """Search order from CF: the onset score of a module's layer (where an anomaly starts, see
    ``rank_layers``), then the module's own score as a tie-breaker."""
    from forensics.rca.localise import layer_of

    onset = {row["layer"]: row["onset"] for row in rank_layers(metrics)}
    return {m.module: onset.get(layer_of(m.module), 0.0) + 0.01 * float(m.score) for m in metrics}
