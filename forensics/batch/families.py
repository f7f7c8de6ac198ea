"""Failure families in a batch: incidents grouped by their ``failure_family`` label (unlabelled ones by an
identical failure spec: ``forensics.bundle.family_key``), each group of two or more analysed as one family
(``RCAPipeline.run_family``) on the batch's executor.

    families = plan_families(paths, output_dir="results/", baseline="benign/")
    rows = run_families(families, executor=LocalExecutor())     # or run_batch(..., families=families)

``OUTDIR/family-<name>.json`` (and ``.html`` with ``html``) is a group's family report
(``model-forensics/family@1``, docs/family-report.md), beside the per-incident ``<bundle>.json``. ``<name>``
is the label, or ``spec-<type>-<text>-<digest>`` for incidents grouped by their spec. Grouping reads
manifests only (``read_manifest``), so a member whose data is damaged is still grouped: the worker loads
every member with its checksums, leaves out those that fail (named in the report's ``members`` with
``analysed: false`` and in the row's ``left_out``) and analyses the rest; a group left with fewer than two
members is not analysed, and its row says why. A re-run skips a group whose report exists with the same
members. Rows are plain data: ``{"family", "label", "spec", "members", "left_out", "status", ...}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from forensics.config import Config, from_dict, to_dict
from forensics.errors import BundleError, StorageError
from forensics.exec.base import Executor
from forensics.population import bundle_name

log = logging.getLogger(__name__)

__all__ = [
    "FAMILY_PREFIX",
    "MIN_MEMBERS",
    "FamilyTask",
    "analyze_family_task",
    "plan_families",
    "run_families",
    "worker_pipeline",
]

FAMILY_PREFIX = "family-"  # OUTDIR/family-<name>.json: sorts together, apart from the bundles' reports
MIN_MEMBERS = 2
_SLUG = re.compile(r"[^A-Za-z0-9]+")


@dataclass(frozen=True)
class FamilyTask:
    """Plain data: one group of incidents to analyse as a family, and where its report goes."""

    name: str
    members: tuple[str, ...]
    output: str
    label: str | None = None
    spec: dict[str, Any] | None = field(default=None, hash=False)  # the shared spec of an unlabelled group
    population: str | None = None
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    html: bool = False
    model_key: str = ""
    encryption_key: bytes | None = field(default=None, repr=False)

    @property
    def html_path(self) -> Path | None:
        return Path(self.output).with_suffix(".html") if self.html else None

    def finished(self) -> bool:
        """Its report exists for the same members (and its HTML page, when asked for): a re-run skips it."""
        html = self.html_path
        if html is not None and not html.is_file():
            return False
        try:
            report = json.loads(Path(self.output).read_text())
            names = {bundle_name(m["path"]) for m in report["members"]}
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return names == {bundle_name(m) for m in self.members}

    def row(self, status: str, **more: Any) -> dict[str, Any]:
        """This group's line of ``summary.json``."""
        members = [bundle_name(m) for m in self.members]
        row = {"family": self.name, "label": self.label, "spec": self.spec, "members": members, "status": status}
        return {**row, **more}


def _name(key: tuple[Any, ...], failure: dict[str, Any] | None) -> str:
    """``<label>``, or ``spec-<type>-<text>-<8 hex of the spec>`` (the text cut to safe characters)."""
    if key[0] == "label":
        return str(key[1])
    digest = hashlib.sha256(json.dumps(key[1:]).encode()).hexdigest()[:8]
    slug = _SLUG.sub("-", str((failure or {}).get("text", ""))).strip("-")[:24]
    return "-".join(part for part in ("spec", str(key[1]), slug, digest) if part)


def plan_families(
    paths: Sequence[str | Path],
    *,
    output_dir: str | Path,
    baseline: str | None = None,
    model: str | None = None,
    config: Config | None = None,
    html: bool = False,
) -> list[FamilyTask]:
    """One task per group of at least ``MIN_MEMBERS`` incidents among ``paths`` (benign bundles are left
    out); a bundle whose manifest cannot be read joins no group (its own analysis reports it)."""
    from forensics.bundle import family_key, read_manifest

    key = config.encryption_key if config is not None else None
    groups: dict[tuple[Any, ...], list[tuple[str, dict[str, Any]]]] = {}
    for path in paths:
        try:
            manifest = read_manifest(str(path), encryption_key=key)
        except BundleError as exc:
            log.info("batch families: %s joins no family (%s)", bundle_name(path), exc)
            continue
        found = family_key(manifest) if manifest.get("kind") != "benign" else None
        if found is not None:
            groups.setdefault(found, []).append((str(path), manifest))
    cfg = to_dict(config or Config())
    out = Path(output_dir)
    tasks = []
    for found, members in groups.items():
        if len(members) < MIN_MEMBERS:
            log.info("batch families: %s has one incident, %s; no family analysis", _name(found, None), members[0][0])
            continue
        failure = members[0][1].get("failure") if found[0] == "spec" else None
        name = _name(found, failure)
        tasks.append(
            FamilyTask(
                name=name,
                members=tuple(p for p, _ in members),
                output=str(out / f"{FAMILY_PREFIX}{name}.json"),
                label=str(found[1]) if found[0] == "label" else None,
                spec=failure,
                population=baseline,
                model=model,
                config=cfg,
                html=html,
                model_key=model or str(members[0][1].get("model", {}).get("ref", "")),
                encryption_key=key,
            )
        )
    return tasks


def worker_pipeline(state: dict[Any, Any], config: dict[str, Any], encryption_key: bytes | None) -> Any:
    """The worker's warm ``RCAPipeline`` for ``config`` (one per config and key, shared by every task)."""
    from forensics.rca.pipeline import RCAPipeline

    key = ("pipeline", json.dumps(config, sort_keys=True), encryption_key)
    if key not in state:
        state[key] = RCAPipeline(replace(from_dict(Config, config), encryption_key=encryption_key))
    return state[key]


def analyze_family_task(task: FamilyTask, state: dict[Any, Any]) -> dict[str, Any]:
    """Worker side: load every member (checksums and all), leave out those that fail, analyse the rest as
    one family and write its report (and HTML page) atomically; returns the group's row."""
    from forensics.bundle import Bundle, load_bundle
    from forensics.rca.request import AnalysisRequest

    loaded: list[Bundle] = []
    left_out: list[dict[str, str]] = []
    for path in task.members:
        try:
            loaded.append(load_bundle(path, encryption_key=task.encryption_key))
        except BundleError as exc:
            left_out.append({"bundle": bundle_name(path), "path": path, "error": str(exc)})
    if len(loaded) < MIN_MEMBERS:
        why = f"{len(loaded)} of {len(task.members)} members could be loaded; a family needs {MIN_MEMBERS}"
        return task.row("not analysed", left_out=left_out, why=why)
    pipeline = worker_pipeline(state, task.config, task.encryption_key)
    result = pipeline.run_family(AnalysisRequest.of(loaded, population=task.population, model=task.model))
    for gone in left_out:  # the report names every member it was given, as analyze_family names its skipped ones
        result.members.append(
            {"bundle_id": gone["bundle"], "path": gone["path"], "analysed": False, "why": gone["error"]}
        )
        result.not_evaluated.append({"what": f"member {gone['bundle']}", "why": gone["error"]})
    _write(result, task)
    fix = result.fix_set
    return task.row(
        "done",
        left_out=left_out,
        report=task.output,
        analysed=sum(1 for m in result.members if m["analysed"]),
        fixed_members=fix["fixed_members"] if fix else 0,
        held_out=result.held_out,
        confidence=result.confidence,
        summary=result.summary,
    )


def _write(result: Any, task: FamilyTask) -> None:
    """The report, then its page; on any failure neither stands."""
    from forensics.report.family import write_family_html

    html = task.html_path
    try:
        result.export(task.output)
        if html is not None:
            write_family_html(result.to_dict(), html)
    except BaseException:
        for path in (Path(task.output), html):
            if path is not None:
                path.unlink(missing_ok=True)
        raise


def run_families(
    tasks: Sequence[FamilyTask],
    *,
    executor: Executor,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Analyse each group on ``executor`` (groups of one model go to the same worker); one row per group,
    sorted by name. A group's error is its row's ``error``; a full disk stops the run (``StorageError``)."""
    done = [t for t in tasks if t.finished()]
    rows = [t.row("already done", report=t.output) for t in done]
    if progress and done:
        progress(len(done))
    todo = [t for t in tasks if not t.finished()]
    for task, result, error in executor.map(analyze_family_task, todo, key=lambda t: t.model_key, progress=progress):
        if error is None and result is not None:
            rows.append(result)
            continue
        kind, message = (error.type, error.message) if error else ("NoResult", "the worker returned nothing")
        if kind == "StorageError":
            raise StorageError(message)
        rows.append(task.row("failed", error=f"{kind}: {message}"))
    return sorted(rows, key=lambda r: str(r["family"]))
