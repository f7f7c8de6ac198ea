"""A stored report's fix exported over HTTP (admin only): the edited model written under ``output_dir``.

    done = run_export_fix(config, bundle_dir="bundles/", output_dir="results/", report="3fa2…", out="au-fix")
    done["out"], done["method"], done["evaluation"]["efficacy"]     # 'fixes/au-fix', 'weights', {...}

``report`` names a report the service knows: a result id (``<id>.json`` of an analysis or a family
analysis), or a ``.json`` path relative to ``output_dir`` (a batch's ``family-<label>.json``). ``out`` is
one plain name; the model directory is ``output_dir/fixes/<out>``, never anywhere else. The bundles the
report names must lie under ``bundle_dir`` and its model must be one of ``allowed_models``. The export
itself is ``forensics.edit.from_report.export_from_report``, exactly what ``model-forensics export-fix`` runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forensics.errors import BundleError, BundleNotFoundError, ConfigError, ResultNotFoundError
from forensics.service.analyses import check_model_allowed
from forensics.service.paths import MAX_NAME_CHARS, bundle_root, resolve_bundle
from forensics.service.results import RESULT_ID_PATTERN

if TYPE_CHECKING:
    from forensics.config import Config

__all__ = ["EXPORT_METHODS", "FIXES_DIR", "OUT_NAME_PATTERN", "check_out_name", "resolve_report", "run_export_fix"]

FIXES_DIR = "fixes"  # exported models: output_dir/fixes/<out>/
EXPORT_METHODS = (
    "auto",
    "weights",
    "rank-one",
    "rollback",
    "hooks",
)  # forensics.edit.choose.METHODS (pinned by a test)
OUT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_OUT_NAME = re.compile(OUT_NAME_PATTERN.removeprefix("^").removesuffix("$"))


def check_out_name(out: object) -> str:
    """``out`` when it is one plain name (1-128 letters, digits, ``.``, ``_``, ``-``, a letter or digit first)."""
    if not isinstance(out, str) or not _OUT_NAME.fullmatch(out):
        raise ConfigError(
            f"out {str(out)[:80]!r}: expected one plain directory name (1-128 letters, digits, '.', '_' or '-', "
            f"a letter or digit first); it is created under output_dir/{FIXES_DIR}/"
        )
    return out


def resolve_report(output_dir: str | os.PathLike[str], report: str) -> Path:
    """The report file ``report`` names under ``output_dir``: ``<id>.json`` for a result id, else a relative
    ``.json`` path confined to ``output_dir`` (symlinks followed). ``ConfigError`` for a name that could leave
    it, ``ResultNotFoundError`` for one that names nothing."""
    root = Path(output_dir).resolve()
    if not isinstance(report, str) or not report or len(report) > MAX_NAME_CHARS:
        raise ConfigError(f"report: expected a result id or a .json path of 1 to {MAX_NAME_CHARS} characters")
    if RESULT_ID_PATTERN.fullmatch(report):
        path = root / f"{report}.json"
    elif not report.endswith(".json"):
        raise ConfigError(f"report {report[:200]!r}: expected a result id (32 hex digits) or a .json path")
    else:
        try:
            path = resolve_bundle(root, report)
        except BundleNotFoundError:  # a safe name that names nothing
            raise ResultNotFoundError(f"report {report[:200]!r}: not found under output_dir") from None
        except BundleError as exc:  # absolute, '..', a symlink out: refused before anything is read
            message = str(exc).replace(f"bundle name {report!r}: ", "")
            raise ConfigError(f"report {report[:200]!r}: must name a report under output_dir; {message}") from None
    if not path.is_file():
        raise ResultNotFoundError(f"report {report[:200]!r}: not found")
    return path


def _check_bundles(bundle_dir: str | os.PathLike[str], report: Mapping[str, Any], name: str) -> None:
    """The bundles an export loads (the incident, a family's members) must lie under ``bundle_dir``."""
    root = bundle_root(bundle_dir)
    paths = [report.get("bundle_path")] + [m.get("path") for m in report.get("members") or [] if m.get("analysed")]
    for path in paths:
        if path is not None and not Path(str(path)).resolve().is_relative_to(root):
            raise ConfigError(f"report {name[:200]!r}: names bundle {str(path)[:200]!r}, outside bundle_dir; refused")


def run_export_fix(
    config: Config,
    *,
    bundle_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    report: str,
    out: str,
    method: str = "auto",
    max_broken: float | None = None,
    layer: int | None = None,
    subject: str | None = None,
    population: str | os.PathLike[str] | None = None,
    encryption_key: bytes | None = None,
    allowed_models: Collection[str] | None = None,
) -> dict[str, Any]:
    """Export the fix of report ``report`` into ``output_dir/fixes/<out>`` (see the module docstring).
    ``population``: a benign bundle directory the caller already confined. Returns ``{"report", "out",
    "method", "note", "evaluation", "load"}`` (``out`` relative to ``output_dir``)."""
    from forensics.edit.export import DEFAULT_MAX_BROKEN
    from forensics.edit.from_report import ExportRequest, export_from_report
    from forensics.rca.family import FAMILY_SCHEMA
    from forensics.rca.result import REPORT_SCHEMAS, read_report

    name = check_out_name(out)
    if method not in EXPORT_METHODS:
        raise ConfigError(f"method {method!r}: expected one of {', '.join(EXPORT_METHODS)}")
    path = resolve_report(output_dir, report)
    data = read_report(path, (*REPORT_SCHEMAS, FAMILY_SCHEMA))
    _check_bundles(bundle_dir, data, report)
    ref = (data.get("model") or {}).get("ref")
    if allowed_models is not None:
        check_model_allowed(str(ref), allowed_models)
    target = Path(output_dir).resolve() / FIXES_DIR / name
    request = ExportRequest(
        data,
        str(path),
        str(target),
        method=method,  # type: ignore[arg-type]  # checked against EXPORT_METHODS above
        population_dir=None if population is None else str(population),
        max_broken=DEFAULT_MAX_BROKEN if max_broken is None else max_broken,
        layer=layer,
        subject=subject,
        device=config.device,
        cache_dir=config.cache_dir,
        encryption_key=encryption_key,
    )
    result, choice = export_from_report(request)
    ev = result.evaluation
    scores = {k: getattr(ev, k).to_dict() for k in ("efficacy", "generalisation", "specificity", "fluency")}
    return {
        "report": report,
        "out": f"{FIXES_DIR}/{name}",
        "method": choice.method,
        "note": choice.note,
        "evaluation": scores,
        "load": "hooks (fix.json)" if choice.method == "hooks" else "AutoModelForCausalLM.from_pretrained",
    }
