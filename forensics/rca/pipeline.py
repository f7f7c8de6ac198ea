"""The RCA pipeline: replay with proof, CF (where), CCA (what fixes it), one result.

    pipeline = RCAPipeline(load_config("configs/default.yaml"))
    result = pipeline.analyze_incident("bundles/australia", baseline="bundles/benign/")
    result.fix_set.interventions, result.confidence, result.export_path

Analysis refuses to interpret interventions on an unfaithful replay: CF is still reported, CCA is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from forensics.bundle import Bundle, load_bundle
from forensics.config import Config
from forensics.errors import ConfigError
from forensics.exec.base import Executor, ReplayJob
from forensics.exec.local import LocalExecutor
from forensics.models.registry import LoadedModel, resolve_model
from forensics.rca.cca import CCAResult, find_fix_set
from forensics.rca.localise import rank_layers
from forensics.rca.population import load_population, pick_counterfactuals
from forensics.rca.result import RCAResult
from forensics.replay.interventions import Intervention
from forensics.replay.options import ReplayOptions
from forensics.replay.replayer import Replayer

__all__ = ["RCAPipeline", "cf_prior", "replay_options"]

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int | None], None]  # (phase, advance, total)


class RCAPipeline:
    """Analyse incidents; holds config, executor and a warm model between calls."""

    def __init__(self, config: Config | None = None, *, executor: Executor | None = None,
                 progress: Progress | None = None) -> None:
        self.config = config or Config()
        self.executor = executor or LocalExecutor()
        self.progress = progress
        self._models: dict[tuple[str, str], LoadedModel] = {}

    # -- public --------------------------------------------------------------------------------
    def analyze_incident(self, bundle: Any, baseline: Any = None, model: Any = None, *,
                         patch_source: Any = None, output: str | Path | None = None,
                         html: str | Path | None = None, allow_model_mismatch: bool = False,
                         allow_baseline_mismatch: bool = False) -> RCAResult:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        incident = self._bundle(bundle)
        population, stats = self._baselines(baseline)
        loaded = self._model(incident, model)
        timings["load"] = time.perf_counter() - t0
        cfs = self._counterfactuals(incident, population, patch_source)
        options = replay_options(self.config, allow_model_mismatch=allow_model_mismatch,
                                 allow_baseline_mismatch=allow_baseline_mismatch)
        rp = Replayer(incident, loaded=loaded, baselines=population, counterfactuals=cfs, options=options)
        fidelity = rp.fidelity()
        notes: list[str] = [f"modules.{name}.enabled is set but {name} is not implemented in this version; skipped"
                            for name in ("isc", "dbc", "provenance")
                            if getattr(self.config.modules, name).enabled]
        metrics = self._cf(incident, population, stats, notes, timings)
        cca, m_inc, m_base = None, None, None
        if not fidelity.faithful:
            notes.append(f"replay not faithful (first divergent: {fidelity.first_divergent}); CCA skipped")
        elif self.config.modules.cca.enabled and rp.spec is not None:
            t = time.perf_counter()
            cca, m_inc, m_base = self._cca(rp, incident, metrics, cfs, notes)
            timings["cca"] = time.perf_counter() - t
        result = self._result(rp, incident, metrics, cca, fidelity.to_dict(), m_inc, m_base, population, cfs,
                              notes, timings, t0)
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
        if isinstance(model, LoadedModel):
            return model
        ref = model if isinstance(model, str) else incident.model["ref"]
        key = (ref, incident.model.get("dtype", "float32"))
        if key not in self._models:
            self._models[key] = resolve_model(ref, device=self.config.device, dtype=key[1],
                                              cache_dir=self.config.cache_dir)
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

    def _counterfactuals(self, incident: Any, population: Sequence[Any], patch_source: Any) -> list[Any]:
        if patch_source is not None:
            return [self._bundle(p) for p in (patch_source if isinstance(patch_source, list) else [patch_source])]
        return pick_counterfactuals(incident, population, k=self.config.modules.cca.patch_sources)

    def _cf(self, incident: Any, population: Sequence[Any], stats: Any, notes: list[str],
            timings: dict[str, float]) -> list[Any]:
        if not self.config.modules.cf.enabled:
            return []
        if stats is None:
            notes.append(f"CF skipped: needs ≥ 2 benign baseline bundles or a baseline statistics file "
                         f"(got {len(population)} bundles)")
            return []
        from forensics.rca.cf import analyze_cf

        t = time.perf_counter()
        metrics = list(analyze_cf(incident, stats, self.config.modules.cf))
        timings["cf"] = time.perf_counter() - t
        return metrics

    def _cca(self, rp: Replayer, incident: Any, metrics: Sequence[Any], cfs: Sequence[Any],
             notes: list[str]) -> tuple[CCAResult, float, float]:
        cca_cfg = self.config.modules.cca
        types = [t for t in cca_cfg.intervention_types if not (t == "mean" and not rp.bank.population)]
        if "patch" in types and not cfs:
            types.remove("patch")
            notes.append("no counterfactual baseline: 'patch' interventions left out")
        if not types:
            raise ConfigError("no usable intervention types: 'mean'/'patch' need baseline bundles")
        cfg = type(cca_cfg)(**{**cca_cfg.__dict__, "intervention_types": tuple(types)})
        evaluate = self.executor.evaluator(self._job(rp, incident, cfs), local=rp)
        m_inc = rp.run(()).metric
        m_base = self._baseline_metric(rp, cfs, m_inc)
        prior = cf_prior(metrics)
        cca = find_fix_set(evaluate, incident.modules, cfg, m_incident=m_inc, m_baseline=m_base,
                           patch_sources=[b.id for b in cfs], prior=prior, progress=self._tick("cca"))
        return cca, m_inc, m_base

    def _job(self, rp: Replayer, incident: Bundle, cfs: Sequence[Bundle]) -> ReplayJob:
        """The replay session as plain data, so a remote worker can rebuild it."""
        info = rp.loaded.info
        return ReplayJob(
            bundle=incident.path, baselines=tuple(b.path for b in rp.bank.population.values()),
            counterfactuals=tuple(b.path for b in cfs),
            model=info.path if info.kind in ("hf_dir", "gguf") else info.ref, options=rp.options,
        )

    def _baseline_metric(self, rp: Replayer, cfs: Sequence[Any], m_inc: float) -> float:
        """The metric a counterfactual run reaches (its own logits, via patching the last residual at
        the last position); without one, the mirror of the incident's margin."""
        sites = rp.bundle.manifest["recorded"].get("sites", {})
        resid = [m for m in rp.bundle.modules if sites.get(m) == "resid"]
        if cfs and resid:
            m = rp.run((Intervention(resid[-1], "patch", "last", cfs[0].id),)).metric
            if m > m_inc:
                return m
        return max(-m_inc, 1e-3) if m_inc < 0 else m_inc + 1.0

    def _tick(self, phase: str) -> Callable[[int], None] | None:
        progress = self.progress
        if progress is None:
            return None
        return lambda n: progress(phase, n, None)

    def _result(self, rp: Replayer, incident: Any, metrics: list[Any], cca: CCAResult | None,
                fidelity: dict[str, Any], m_inc: float | None, m_base: float | None, population: Sequence[Any],
                cfs: Sequence[Any], notes: list[str], timings: dict[str, float], t0: float) -> RCAResult:
        tok = rp.tokenizer
        layers = rank_layers(metrics)
        fix = cca.fix_set if cca else None
        decision = {"step": rp.step, "observed": tok.decode([rp.observed_id]), "observed_id": rp.observed_id,
                    "target": tok.decode([rp.target_id]) if rp.target_id is not None else None,
                    "target_id": rp.target_id, "failure": incident.failure, "m_incident": m_inc,
                    "m_baseline": m_base}
        replays = {"forward_passes": rp.forward_passes, "candidates": cca.candidates if cca else 0,
                   "evaluated": cca.evaluated if cca else 0, "budget_exhausted": cca.budget_exhausted if cca else False}
        return RCAResult(
            bundle_id=incident.id, confidence=_confidence(fix, layers), execution_time=time.perf_counter() - t0,
            compression_metrics=metrics, fix_set=fix, replays=replays, fidelity=fidelity, decision=decision,
            localisation=layers, single_effects=[s.to_dict() for s in cca.singles] if cca else [],
            search={"strategy": cca.strategy, "steps": cca.steps,
                    "best_partial": cca.best_partial.to_dict() if cca.best_partial else None} if cca else {},
            baselines={"population": [b.id for b in population], "patch_sources": [b.id for b in cfs],
                       "paths": {b.id: b.path for b in [*population, *cfs]}},
            bundle_path=incident.path, cf={"anomaly_threshold": self.config.modules.cf.anomaly_threshold},
            model=rp.loaded.info.to_dict(), timings=timings, notes=notes,
        )


def replay_options(config: Config, *, allow_model_mismatch: bool = False,
                   allow_baseline_mismatch: bool = False) -> ReplayOptions:
    """The replay settings a config implies (device, cache, batch size, tolerance, memory, key)."""
    return ReplayOptions(device=config.device, cache_dir=config.cache_dir, allow_model_mismatch=allow_model_mismatch,
                         allow_baseline_mismatch=allow_baseline_mismatch, batch_size=config.modules.cca.batch_size,
                         fidelity_tolerance=config.fidelity_tolerance, max_memory=config.max_memory,
                         encryption_key=config.encryption_key)


def cf_prior(metrics: Sequence[Any]) -> dict[str, float]:
    """Search order from CF: the onset score of a module's layer (where an anomaly starts, see
    ``rank_layers``), then the module's own score as a tie-breaker."""
    from forensics.rca.localise import layer_of

    onset = {row["layer"]: row["onset"] for row in rank_layers(metrics)}
    return {m.module: onset.get(layer_of(m.module), 0.0) + 0.01 * float(m.score) for m in metrics}


def _confidence(fix: Any, layers: list[dict[str, Any]]) -> float:
    """0.7 x validated recovery (clipped to [0, 1]) + 0.3 if an anomalous layer among CF's top 3 holds a
    fix-set module (CF and CCA agree)."""
    from forensics.rca.localise import layer_of

    if fix is None or not fix.validated:
        return 0.0
    top3 = {row["layer"] for row in layers[:3] if row["anomalous"]}
    agree = any(layer_of(iv.module) in top3 for iv in fix.interventions)
    return round(0.7 * min(1.0, max(0.0, float(fix.recovery))) + (0.3 if agree else 0.0), 4)
