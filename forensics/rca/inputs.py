"""Input resolution: an ``AnalysisRequest`` becomes the loaded pieces an analysis works on.

    models = ModelCache(config)
    inputs = resolve_inputs(request, config, models)
    inputs.incident, inputs.population, inputs.cf_stats, inputs.loaded, inputs.sources

Models are loaded once per (reference, dtype) and kept warm in the ``ModelCache`` between analyses:
that one lookup serves the analysed model and a known-good reference model alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from forensics.bundle import Bundle, load_bundle
from forensics.cf.stats import CFStats
from forensics.config import Config
from forensics.errors import ModelError
from forensics.failure import FailureSpec
from forensics.models.registry import LoadedModel, resolve_model, wrap_model
from forensics.population import load_population, pick_counterfactuals
from forensics.rca.reference import reference_run
from forensics.rca.request import AnalysisRequest
from forensics.replay.options import ReplayOptions

__all__ = [
    "Inputs",
    "ModelCache",
    "bundle_of",
    "judged_by",
    "loadable",
    "population_of",
    "replay_options",
    "resolve_inputs",
]


@dataclass(frozen=True)
class Inputs:
    """What one analysis reads: the incident, its population (and CF statistics), the model, the
    reference run (with the reference model) when there is one, and the sources (reference run first)."""

    incident: Bundle
    population: list[Bundle]
    cf_stats: CFStats | None
    loaded: LoadedModel
    reference: tuple[LoadedModel, Bundle] | None
    sources: list[Bundle]


class ModelCache:
    """Loaded models by (reference, dtype), kept warm between analyses of one pipeline."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._loaded: dict[tuple[str, str], LoadedModel] = {}

    def get(self, ref: str, dtype: str) -> LoadedModel:
        key = (ref, dtype)
        if key not in self._loaded:
            cfg = self.config
            self._loaded[key] = resolve_model(
                ref,
                device=cfg.device,
                dtype=dtype,
                cache_dir=cfg.cache_dir,
                max_memory=cfg.model.max_memory,
                offload_dir=cfg.model.offload_dir,
            )
        return self._loaded[key]

    def model(self, incident: Bundle, model: Any) -> LoadedModel:
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
        return self.get(model if isinstance(model, str) else incident.model["ref"], _dtype(incident))

    def reference(self, incident: Bundle, reference_model: Any) -> LoadedModel:
        if isinstance(reference_model, LoadedModel):
            return reference_model
        if isinstance(reference_model, str | Path):
            return self.get(str(reference_model), _dtype(incident))
        raise ModelError(
            f"reference_model: expected a model reference (str) or a LoadedModel, got {type(reference_model).__name__}"
        )


def resolve_inputs(request: AnalysisRequest, config: Config, models: ModelCache) -> Inputs:
    incident = bundle_of(request.incident, config)
    population, stats = population_of(request.population, config)
    loaded = models.model(incident, request.model)
    if request.failure is not None:
        incident = judged_by(incident, request.failure, loaded.tokenizer)
    reference = None
    if request.reference_model is not None:
        ref = models.reference(incident, request.reference_model)
        root = Path(config.cache_dir or (Path(request.output).parent if request.output else config.output_dir))
        run = reference_run(incident, ref, root / "reference", model=loaded, encryption_key=config.encryption_key)
        reference = (ref, run)
    first = [reference[1]] if reference is not None else []
    if request.sources is not None:
        sources = [*first, *(bundle_of(s, config) for s in request.sources)]
    else:
        sources = [*first, *pick_counterfactuals(incident, population, k=config.modules.cca.counterfactuals)]
    return Inputs(incident, population, stats, loaded, reference, sources)


def judged_by(incident: Bundle, failure: tuple[str, str], tokenizer: Any) -> Bundle:
    """``incident`` against another failure spec; its decision step is the first generated token that
    violates it (a run that never does keeps its step, and the analysis says it does not fail)."""
    kind, text = failure
    spec = (
        FailureSpec.expected(text, tokenizer)
        if kind == "expected"
        else FailureSpec.forbidden(text, tokenizer=tokenizer)
    )
    generated = list(incident.outputs.get("generated_ids") or [])
    step = spec.decision_step(generated, tokenizer)
    view = incident.with_failure(spec.to_dict(), step if step is not None else incident.outputs.get("decision_step"))
    return view


def bundle_of(obj: Any, config: Config) -> Bundle:
    return obj if isinstance(obj, Bundle) else load_bundle(obj, encryption_key=config.encryption_key)


def population_of(population: Any, config: Config) -> tuple[list[Bundle], CFStats | None]:
    """(the population's bundles, its CF statistics or None): a ``.json`` file is CF statistics alone."""
    if population is None:
        return [], None
    if isinstance(population, str | Path) and str(population).endswith(".json"):
        return [], CFStats.from_json(population)
    cf = config.modules.cf
    bundles = load_population(population, limit=cf.population_samples, encryption_key=config.encryption_key)
    if len(bundles) < 2 or not cf.enabled:
        return bundles, None
    from forensics.cf.stats import build_cf_stats

    return bundles, build_cf_stats(bundles, cf)


def _dtype(incident: Bundle) -> str:
    return str(incident.model.get("dtype", "float32"))


def loadable(ref: LoadedModel) -> str | None:
    """How a worker elsewhere loads a model again (None: an in-memory model, which only this process has)."""
    info = ref.info
    return info.path if info.kind in ("hf_dir", "gguf") else info.ref if info.kind in ("embedded", "hf_cache") else None


def replay_options(
    config: Config, *, allow_model_mismatch: bool = False, allow_source_mismatch: bool = False
) -> ReplayOptions:
    """The replay settings a config implies (device, cache, batch size, tolerance, memory, key)."""
    return ReplayOptions(
        device=config.device,
        cache_dir=config.cache_dir,
        allow_model_mismatch=allow_model_mismatch,
        allow_source_mismatch=allow_source_mismatch,
        batch_size=config.modules.cca.batch_size,
        fidelity_tolerance=config.fidelity_tolerance,
        fidelity_rtol=config.fidelity_rtol,
        max_memory=config.max_memory,
        encryption_key=config.encryption_key,
    )


def with_reference(options: ReplayOptions, reference: tuple[LoadedModel, Bundle] | None) -> ReplayOptions:
    """``options`` that exempt the reference run from the weights check (it ran other weights)."""
    if reference is None:
        return options
    return replace(options, reference_sha256=reference[0].info.sha256, reference_model=loadable(reference[0]))
