"""Export a fix: judge it, refuse it if it breaks the population, write a model directory plus ``fix.json``.

    result = export_fix("fixed-model/", loaded, edit, fitting=fam, held_out=held, population=pop)
    AutoModelForCausalLM.from_pretrained("fixed-model/")     # plain transformers loads the edit
    resolve_model("fixed-model/")                             # and so does the registry

A weight edit is written as a Hugging Face directory (``save_pretrained``: config.json,
model.safetensors, tokenizer files) and checked: the directory is loaded back with plain
``transformers`` and must give the edited model's logits. A hook spec is written as ``fix.json`` plus
``fix_values.safetensors`` (``apply_fix`` installs it on the original model). Either way ``fix.json``
(schema ``model-forensics/fix@1``, docs/fix-format.md) says what changed, where it came from and how
it was judged. An edit whose specificity falls below ``1 - max_broken`` is refused (``EditRefused``,
naming the prompts it broke) and nothing is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forensics.durable import storage_errors
from forensics.edit.base import EditRefused, WeightEdit, edited_copy
from forensics.edit.evaluate import EditEvaluation, decision_logits, evaluate_edit
from forensics.edit.hookspec import HookEdit, install_hooks
from forensics.edit.prompts import FamilyPrompt, PopulationPrompt
from forensics.errors import ConfigError, ModelError
from forensics.models.registry import LoadedModel, weights_sha256
from forensics.version import __version__

__all__ = [
    "DEFAULT_MAX_BROKEN",
    "FIX_FILE",
    "FIX_SCHEMA",
    "ExportResult",
    "export_fix",
    "fix_document",
    "read_fix_file",
    "validate_fix_file",
]

FIX_SCHEMA = "model-forensics/fix@1"
FIX_FILE = "fix.json"
DEFAULT_MAX_BROKEN = 0.05


@dataclass(frozen=True)
class ExportResult:
    path: Path
    evaluation: EditEvaluation
    fix: dict[str, Any]  # what fix.json holds

    def load_command(self) -> str:
        """How to load the result, in one line of Python."""
        if self.fix["method"] == "hooks":
            return f"with forensics.edit.apply_fix(model, {str(self.path / FIX_FILE)!r}): ..."
        return f"AutoModelForCausalLM.from_pretrained({str(self.path)!r})"


def export_fix(
    out: str | os.PathLike[str],
    loaded: LoadedModel,
    edit: WeightEdit | HookEdit,
    *,
    fitting: Sequence[FamilyPrompt],
    held_out: Sequence[FamilyPrompt] = (),
    population: Sequence[PopulationPrompt] = (),
    max_broken: float = DEFAULT_MAX_BROKEN,
    provenance: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Judge ``edit`` of ``loaded`` (the unedited model) and write it to ``out`` (see module docstring)."""
    if not 0.0 <= max_broken <= 1.0:
        raise ConfigError(f"max_broken must be a share in [0, 1], got {max_broken!r}")
    if not fitting:
        raise ConfigError("export_fix needs at least one fitting prompt (the incident) to measure efficacy on")
    model, tokenizer = loaded.model, loaded.tokenizer
    before = loaded.info.sha256
    if isinstance(edit, HookEdit):
        edited = None
        with install_hooks(model, edit.members):
            evaluation = evaluate_edit(model, tokenizer, fitting=fitting, held_out=held_out, population=population)
    else:
        edited = edited_copy(model, edit)
        evaluation = evaluate_edit(edited, tokenizer, fitting=fitting, held_out=held_out, population=population)
    _refuse_if_broken(evaluation, max_broken)
    target = Path(out)
    _check_target(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with storage_errors(tmp):
            after = _write_files(tmp, loaded, edit, edited, fitting)
            fix = fix_document(loaded, edit, evaluation, before, after, max_broken, provenance)
            (tmp / FIX_FILE).write_text(json.dumps(fix, indent=2, allow_nan=False) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(target, evaluation, fix)


def _refuse_if_broken(evaluation: EditEvaluation, max_broken: float) -> None:
    spec = evaluation.specificity
    broken = evaluation.broken_share()
    if broken > max_broken:
        names = "; ".join(spec.failed[:5]) + ("; ..." if len(spec.failed) > 5 else "")
        raise EditRefused(
            f"edit refused: it changes the next token of {spec.total - spec.passed} of {spec.total} population "
            f"prompts ({broken:.1%} > max_broken {max_broken:.1%}): {names}"
        )


def _check_target(target: Path) -> None:
    """``out`` may be new, empty, or an earlier export (it holds fix.json); anything else is refused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / FIX_FILE).is_file())):
        raise ConfigError(f"output {target}: exists and is not an earlier export (no {FIX_FILE}); choose another")


def _write_files(
    tmp: Path, loaded: LoadedModel, edit: WeightEdit | HookEdit, edited: Any, fitting: Sequence[FamilyPrompt]
) -> str | None:
    """Write the model (or the hook values) into ``tmp``; the edited weights' sha256 (None for hooks)."""
    from safetensors.torch import save_file

    if isinstance(edit, HookEdit):
        section, values = edit.spec()
        save_file(values, str(tmp / section["values_file"]))
        return None
    edited.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    _check_reload(tmp, edited, fitting)
    return weights_sha256(edited)


def _check_reload(path: Path, edited: Any, fitting: Sequence[FamilyPrompt]) -> None:
    """Plain ``transformers`` must load ``path`` into a model giving ``edited``'s logits (a bias that did
    not survive, a flag it does not read, would show here)."""
    from transformers import AutoModelForCausalLM

    param = next(edited.parameters())
    plain = AutoModelForCausalLM.from_pretrained(str(path), dtype=param.dtype, use_safetensors=True).to(param.device)
    plain.eval()
    probe = list(fitting[:2])
    ours, theirs = decision_logits(edited, probe), decision_logits(plain, probe)
    gap = max((float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)), default=0.0)
    if gap > 1e-4:
        raise ModelError(f"export {path}: plain transformers loads logits {gap:.3g} away from the edited model's")


def fix_document(
    loaded: LoadedModel,
    edit: WeightEdit | HookEdit,
    evaluation: EditEvaluation,
    before: str,
    after: str | None,
    max_broken: float,
    provenance: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The content of fix.json (docs/fix-format.md)."""
    section: dict[str, Any] | None = None
    if isinstance(edit, HookEdit):
        section, _ = edit.spec()
        edit_part: dict[str, Any] = {"tensors": [], "config_flags": [], "details": {"refused": edit.refused}}
    else:
        changes = edit.changes(loaded.model)
        edit_part = {
            "tensors": [c.to_dict() for c in changes],
            "config_flags": list(edit.flags),
            "delta_norm": float(sum(c.norm**2 for c in changes) ** 0.5),
            "rank": max((c.rank for c in changes if c.rank is not None), default=None),
            "details": dict(edit.details),
        }
    return {
        "schema": FIX_SCHEMA,
        "version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": edit.method,
        "edit": edit_part,
        "hooks": section,
        "provenance": {
            **dict(provenance or {}),
            "model": {"ref": loaded.info.ref, "family": loaded.info.family},
            "sha256_before": before,
            "sha256_after": after,
        },
        "evaluation": {**evaluation.to_dict(), "max_broken": max_broken, "broken_share": evaluation.broken_share()},
    }


REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "version": str,
    "created_at": str,
    "method": str,
    "edit": dict,
    "hooks": (dict, type(None)),
    "provenance": dict,
    "evaluation": dict,
}
SCORES = ("efficacy", "generalisation", "specificity", "fluency")


def validate_fix_file(data: Any) -> None:
    """``ConfigError`` naming the first field of a fix.json document that is missing or of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"fix.json: a JSON object expected, got {type(data).__name__}")
    for key, kind in REQUIRED.items():
        if key not in data or not isinstance(data[key], kind):
            raise ConfigError(f"fix.json: field {key!r} missing or not {kind}: {data.get(key)!r}")
    if data["schema"] != FIX_SCHEMA or data["method"] not in ("weights", "rank-one", "rollback", "hooks"):
        raise ConfigError(f"fix.json: schema {data['schema']!r} / method {data['method']!r} not known")
    if (data["method"] == "hooks") != (data["hooks"] is not None):
        raise ConfigError("fix.json: 'hooks' is set exactly when method is 'hooks'")
    for key in ("tensors", "config_flags"):
        if not isinstance(data["edit"].get(key), list):
            raise ConfigError(f"fix.json: edit.{key} must be a list")
    for key in ("sha256_before", "sha256_after", "model"):
        if key not in data["provenance"]:
            raise ConfigError(f"fix.json: provenance.{key} missing")
    for name in SCORES:
        score = data["evaluation"].get(name)
        if not isinstance(score, dict) or not {"share", "passed", "total", "failed"} <= set(score):
            raise ConfigError(f"fix.json: evaluation.{name} needs share, passed, total, failed")
    if not isinstance(data["evaluation"].get("max_broken"), int | float):
        raise ConfigError("fix.json: evaluation.max_broken must be a number")


def read_fix_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A fix.json, validated."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"fix {path}: cannot be read as JSON ({exc})") from exc
    validate_fix_file(data)
    return dict(data)
