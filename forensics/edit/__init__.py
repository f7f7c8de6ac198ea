"""Fixes you can ship: exact weight forms, rank-one MLP edits, partial rollbacks, hook specs, judged and exported.

edit = weight_form(model, fix_set)                  # or rank_one_edit(...), rollback_edit(...)
result = export_fix("fixed/", loaded, edit, fitting=fam, held_out=held, population=pop)
result.evaluation.line()                            # efficacy, generalisation, specificity, fluency
"""

from forensics.edit.base import (
    BIAS_FLAGS,
    EditMethod,
    EditRefused,
    NoWeightForm,
    TensorChange,
    WeightEdit,
    apply_edit,
    edited_copy,
)
from forensics.edit.choose import METHODS, FixChoice, choose_fix, report_fix_sets
from forensics.edit.evaluate import EditEvaluation, Score, evaluate_edit
from forensics.edit.export import FIX_FILE, FIX_SCHEMA, ExportResult, export_fix, read_fix_file, validate_fix_file
from forensics.edit.hookspec import FixHandle, HookEdit, HookMember, apply_fix, hook_members, install_hooks
from forensics.edit.layer_choice import LayerChoice, LayerTrial, candidate_layers, choose_layer
from forensics.edit.prompts import (
    FamilyPrompt,
    PopulationPrompt,
    family_prompt,
    incident_prompt,
    population_prompts,
    read_prompts,
    subject_positions,
    subject_span,
)
from forensics.edit.rank_one import RankOneOptions, rank_one_edit
from forensics.edit.rollback import rollback_edit, rollback_modules
from forensics.edit.weights import position_free_mean, weight_form

__all__ = [
    "BIAS_FLAGS",
    "FIX_FILE",
    "FIX_SCHEMA",
    "METHODS",
    "EditEvaluation",
    "EditMethod",
    "EditRefused",
    "ExportResult",
    "FamilyPrompt",
    "FixChoice",
    "FixHandle",
    "HookEdit",
    "HookMember",
    "LayerChoice",
    "LayerTrial",
    "NoWeightForm",
    "PopulationPrompt",
    "RankOneOptions",
    "Score",
    "TensorChange",
    "WeightEdit",
    "apply_edit",
    "apply_fix",
    "candidate_layers",
    "choose_fix",
    "choose_layer",
    "edited_copy",
    "evaluate_edit",
    "export_fix",
    "family_prompt",
    "hook_members",
    "incident_prompt",
    "install_hooks",
    "population_prompts",
    "position_free_mean",
    "rank_one_edit",
    "read_fix_file",
    "read_prompts",
    "report_fix_sets",
    "rollback_edit",
    "rollback_modules",
    "subject_positions",
    "subject_span",
    "validate_fix_file",
    "weight_form",
]
