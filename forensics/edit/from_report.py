"""From an RCA report to a shipped fix: load what the report names, choose, edit, judge, export.

    request = ExportRequest(report, "rca.json", "fixed/", population_dir="bundles/benign")
    result, choice = export_from_report(request)      # what ``model-forensics export-fix`` runs

The report is an rca@2 object or a family report (the caller checks its schema): its ``fix_sets``, ``bundle_path``,
``baselines`` (``population`` ids, ``patch_sources``, ``paths``), ``model`` and ``reference``. The
incident is the fitting prompt (plus ``fit_prompts``); ``prompts`` adds held-out family prompts and
neighbourhood prompts; the population is the report's benign bundles and those in ``population_dir``,
each judged against the unedited model's own greedy continuation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from forensics.bundle import Bundle, load_bundle
from forensics.edit.base import WeightEdit
from forensics.edit.choose import (
    FixChoice,
    MethodChoice,
    choose_fix,
    diagnosed_layer,
    family_members,
    held_out_share,
)
from forensics.edit.contest import contest
from forensics.edit.export import DEFAULT_MAX_BROKEN, ExportResult, export_fix
from forensics.edit.hookspec import HookEdit, hook_members
from forensics.edit.layer_choice import choose_layer
from forensics.edit.neighbourhood import neighbourhood
from forensics.edit.prompts import (
    FamilyPrompt,
    PopulationPrompt,
    incident_prompt,
    population_prompts,
    read_prompts,
    subject_span,
)
from forensics.edit.rank_one import rank_one_edit
from forensics.edit.rollback import rollback_edit, rollback_modules
from forensics.edit.weights import weight_form
from forensics.errors import ConfigError, ModelError
from forensics.models.registry import LoadedModel, resolve_model
from forensics.population import load_population
from forensics.replay import Replayer, ReplayOptions

__all__ = ["ExportRequest", "export_from_report"]


@dataclass(frozen=True)
class ExportRequest:
    """Everything ``export-fix`` needs, as one value (``report``: the parsed JSON object)."""

    report: Mapping[str, Any] = field(repr=False)
    report_path: str
    out: str
    method: MethodChoice = "auto"
    population_dir: str | None = None
    prompts: str | None = None
    fit_prompts: str | None = None
    max_broken: float = DEFAULT_MAX_BROKEN
    layer: int | None = None
    subject: str | None = None
    reference: str | None = None
    model: str | None = None
    bundle: str | None = None
    device: str = "auto"
    cache_dir: str | None = None
    encryption_key: bytes | None = field(default=None, repr=False)
    progress: Callable[[str], None] | None = field(default=None, repr=False, compare=False)  # long steps, as lines


def export_from_report(request: ExportRequest) -> tuple[ExportResult, FixChoice]:
    """Export the report's fix (see module docstring); one-line errors: ``ConfigError`` (report, prompts),
    ``BundleError`` (bundles), ``ModelError`` (a model that is not the incident's)."""
    report = request.report
    path = request.bundle or report.get("bundle_path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"report {request.report_path}: no bundle_path; pass the incident bundle explicitly")
    bundle = load_bundle(path, encryption_key=request.encryption_key)
    loaded = _load_model(request, bundle)
    benign = _population_bundles(request, bundle)
    fitting = [incident_prompt(b) for b in _fitting_bundles(request, bundle)]
    held_out: list[FamilyPrompt] = []
    neighbours: list[str] = []
    if request.fit_prompts:
        fitting += read_prompts(request.fit_prompts, loaded.tokenizer)[0]
    if request.prompts:
        held_out, neighbours = read_prompts(request.prompts, loaded.tokenizer)
    sources: list[str | Sequence[int]] = [list(b.inputs["input_ids"]) for b in benign]
    population = population_prompts(loaded.model, loaded.tokenizer, [*sources, *neighbours])
    choice = choose_fix(report, loaded.model, request.method, layer=request.layer)
    edit = _edit(request, choice, loaded, bundle, benign, fitting, population)
    near = neighbourhood(
        loaded.model,
        loaded.tokenizer,
        [p.text for p in fitting],
        population,
        subject=_subject(request, fitting, population),
    )
    judged = [*population, *population_prompts(loaded.model, loaded.tokenizer, near)]  # never protected: unseen
    choice, edit = _auto_contest(request, choice, edit, loaded, fitting, population, judged)
    provenance = {
        "report": request.report_path,
        "bundle_id": bundle.id,
        "bundle_path": path,
        "fix_set_index": choice.index,
        "fix_set": [iv.to_dict() for iv in choice.fix],
        "population": [b.id for b in benign],
        "neighbourhood": near,
        "note": choice.note,
    }
    if choice.method == "rollback":
        provenance["reference"] = _reference_ref(request)
    result = export_fix(
        request.out,
        loaded,
        edit,
        fitting=fitting,
        held_out=held_out,
        population=judged,
        max_broken=request.max_broken,
        provenance=provenance,
    )
    return result, choice


def _auto_contest(
    request: ExportRequest,
    choice: FixChoice,
    edit: WeightEdit | HookEdit,
    loaded: LoadedModel,
    fitting: list[FamilyPrompt],
    population: list[PopulationPrompt],
    judged: list[PopulationPrompt],
) -> tuple[FixChoice, WeightEdit | HookEdit]:
    """``auto`` on a family report whose weight form transfers: weighed against a rank-one edit (``contest``)."""
    report = request.report
    share = held_out_share(report, choice.index or 0) if family_members(report) >= 2 else None
    if request.method != "auto" or choice.method != "weights" or not isinstance(edit, WeightEdit) or share is None:
        return choice, edit
    return contest(
        loaded,
        choice,
        edit,
        share,
        fitting,
        population,
        judged,
        diagnosed=diagnosed_layer(report, loaded.model),
        subject=request.subject,
        progress=request.progress,
    )


def _subject(request: ExportRequest, fitting: list[FamilyPrompt], population: list[PopulationPrompt]) -> str | None:
    """The family's subject for its neighbourhood: ``--subject``, else the span its prompts share (None when
    they share none, or with one prompt: ``neighbourhood`` then aligns it with the population's prompts)."""
    if request.subject or len(fitting) < 2:  # one prompt: the neighbourhood aligns it with the population
        return request.subject
    try:
        return subject_span([p.text for p in fitting], template=[p.text for p in population])
    except ConfigError:
        return None


def _fitting_bundles(request: ExportRequest, bundle: Bundle) -> list[Bundle]:
    """The incidents the fix was found on: the report's incident, or every analysed member of a family
    report (``model-forensics/family@1``); held-out prompts come only from ``prompts``."""
    members = [m for m in request.report.get("members") or [] if m.get("analysed")]
    if not members or request.bundle:
        return [bundle]
    return [load_bundle(m["path"], encryption_key=request.encryption_key) for m in members]


def _load_model(request: ExportRequest, bundle: Bundle) -> LoadedModel:
    info = request.report.get("model") or {}
    ref = request.model or info.get("ref") or bundle.model.get("ref")
    if not isinstance(ref, str):
        raise ConfigError(f"report {request.report_path}: names no model; pass --model")
    dtype = str(bundle.model.get("dtype") or "float32")
    loaded = resolve_model(ref, device=request.device, dtype=dtype, cache_dir=request.cache_dir)
    want = bundle.model.get("sha256")
    if want and loaded.info.sha256 != want:
        raise ModelError(
            f"model {ref!r} has weights sha256 {loaded.info.sha256[:12]}…, incident {bundle.id} was recorded on "
            f"{str(want)[:12]}…; export-fix edits the model the incident came from"
        )
    return loaded


def _population_bundles(request: ExportRequest, incident: Bundle) -> list[Bundle]:
    """The report's population bundles that have paths, then those of ``population_dir`` (by id, once)."""
    info = request.report.get("baselines") or {}
    paths = info.get("paths") or {}
    found: dict[str, Bundle] = {}
    for bid in info.get("population") or []:
        if bid in paths:
            found[bid] = load_bundle(paths[bid], encryption_key=request.encryption_key)
    if request.population_dir:
        for b in load_population(request.population_dir, encryption_key=request.encryption_key):
            found.setdefault(b.id, b)
    return [b for b in found.values() if b.kind == "benign" and b.id != incident.id]


def _reference_ref(request: ExportRequest) -> str:
    ref = request.reference or (request.report.get("reference") or {}).get("ref")
    if not isinstance(ref, str):
        raise ConfigError("rollback needs a reference model: the report has none; pass --reference REF")
    return ref


def _edit(
    request: ExportRequest,
    choice: FixChoice,
    loaded: LoadedModel,
    bundle: Bundle,
    benign: list[Bundle],
    fitting: list[FamilyPrompt],
    population: list[PopulationPrompt],
) -> WeightEdit | HookEdit:
    model = loaded.model
    if choice.method == "weights":
        return weight_form(model, choice.fix)
    if choice.method == "rank-one":
        if request.layer is not None or len(fitting) < 2:
            if choice.layer is None:
                raise ConfigError("rank-one edit: the report names no layer and has one member; pass --layer")
            return rank_one_edit(
                model, loaded.tokenizer, fitting, population, layer=choice.layer, subject=request.subject
            )
        mlp = diagnosed_layer(request.report, model)
        diagnosed = [] if mlp is None else [mlp]
        chosen = choose_layer(
            model, loaded.tokenizer, fitting, population, diagnosed=diagnosed, subject=request.subject
        )
        details = {
            **chosen.edit.details,
            "layer_choice": {"diagnosed": mlp, "note": chosen.note, "tried": chosen.table()},
        }
        return replace(chosen.edit, details=details)
    if choice.method == "rollback":
        ref = resolve_model(_reference_ref(request), device=request.device, cache_dir=request.cache_dir)
        return rollback_edit(model, ref.model, rollback_modules(choice.fix))
    return _hooks(request, choice, loaded, bundle, benign)


def _hooks(
    request: ExportRequest, choice: FixChoice, loaded: LoadedModel, bundle: Bundle, benign: list[Bundle]
) -> HookEdit:
    """The fix as hooks; mean / patch rows come from a replay of the incident with the report's sources."""
    info = request.report.get("baselines") or {}
    paths = info.get("paths") or {}
    sources = [
        load_bundle(paths[s], encryption_key=request.encryption_key)
        for s in dict.fromkeys(iv.source for iv in choice.fix if iv.kind == "patch" and iv.source)
        if s in paths
    ]
    reference = request.report.get("reference") or {}
    options = ReplayOptions(
        device=request.device,
        cache_dir=request.cache_dir,
        reference_sha256=reference.get("sha256"),
        reference_model=reference.get("ref"),
        encryption_key=request.encryption_key,
    )
    rp = Replayer(bundle, loaded=loaded, population=benign, sources=sources, options=options)
    members = hook_members(choice.fix, rp.bank, length=rp.length, step=rp.step)
    return HookEdit(tuple(members), rp.length, refused=choice.note)
