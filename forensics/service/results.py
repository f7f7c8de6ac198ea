"""Stored results: ``output_dir/<result id>.json``, each indexed for ``stats`` as it is written.

    result_id = new_result_id()                      # 32 lowercase hex digits, nothing else is a result id
    report = store_result(result, "results/", result_id)
    read_result("results/", result_id)               # the full JSON report; ResultNotFoundError otherwise

A report is written atomically and indexed; when indexing fails the report is removed, so no id
the caller never received can stand for a stored result. ``repair_index`` indexes reports a killed
process wrote but never indexed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

from forensics.durable import storage_errors
from forensics.errors import ResultNotFoundError
from forensics.ops.logs import log_analysis
from forensics.ops.stats import INDEX_NAME, index_result, indexed_paths

__all__ = [
    "FAMILY_REPORT",
    "RESULT_ID_PATTERN",
    "check_result_id",
    "new_result_id",
    "read_result",
    "repair_index",
    "store_family",
    "store_result",
]

log = logging.getLogger(__name__)

RESULT_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
FAMILY_REPORT = "model-forensics/family@1"  # forensics.rca.family.FAMILY_SCHEMA: stored, never indexed


def new_result_id() -> str:
    return uuid.uuid4().hex


def check_result_id(result_id: str) -> str:
    """``result_id`` if it is 32 lowercase hex digits; ``ResultNotFoundError`` otherwise (nothing else can exist)."""
    if not isinstance(result_id, str) or not RESULT_ID_PATTERN.fullmatch(result_id):
        raise ResultNotFoundError(f"result id {str(result_id)[:80]!r}: expected 32 lowercase hex digits")
    return result_id


def store_result(result: Any, output_dir: str | os.PathLike[str], result_id: str) -> dict[str, Any]:
    """Write ``result`` (an ``RCAResult``) as ``output_dir/<result_id>.json``, index it, log it; returns the report."""
    root = _results_root(output_dir)
    target = root / f"{result_id}.json"
    try:
        result.export(target)
        report: dict[str, Any] = result.to_dict()
        with storage_errors(root / INDEX_NAME):
            index_result(root, report, target)
    except BaseException:  # the caller gets an error, not this id: no report may stand for it
        target.unlink(missing_ok=True)
        raise
    log_analysis(report)  # the guide's execution_time / memory_usage lines, as the CLI writes them
    return report


def store_family(result: Any, output_dir: str | os.PathLike[str], result_id: str) -> dict[str, Any]:
    """Write ``result`` (a ``FamilyResult``) as ``output_dir/<result_id>.json`` atomically; returns the report.
    Not indexed: ``stats`` counts incidents, and each member's own analysis is its row."""
    target = _results_root(output_dir) / f"{result_id}.json"
    try:
        result.export(target)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    report: dict[str, Any] = result.to_dict()
    return report


def read_result(output_dir: str | os.PathLike[str], result_id: str) -> dict[str, Any]:
    """The stored report of ``result_id``; ``ResultNotFoundError`` when there is none."""
    path = _results_root(output_dir) / f"{check_result_id(result_id)}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultNotFoundError(f"result {result_id}: not found") from None
    return data


def repair_index(output_dir: str | os.PathLike[str]) -> int:
    """Index the stored results (``<id>.json``) the index of ``output_dir`` lacks (a process killed
    between writing a report and indexing it); returns how many. The Serve app runs it on start."""
    root = _results_root(output_dir)
    with storage_errors(root / INDEX_NAME):
        indexed = indexed_paths(root)
        missing = [
            p
            for p in sorted(root.glob("*.json"))
            if RESULT_ID_PATTERN.fullmatch(p.stem) and str(p.resolve()) not in indexed
        ]
        count = 0
        for path in missing:
            try:
                report = json.loads(path.read_text())
                if isinstance(report, dict) and report.get("schema") == FAMILY_REPORT:
                    continue  # a family's report: stored for GET /v1/results, not an incident's row
                index_result(root, report, path)
                count += 1
            except (OSError, ValueError, KeyError, TypeError) as exc:  # not a report of ours: leave it alone
                log.warning("result %s is not a readable report (%s); not indexed", path, exc)
    return count


def _results_root(output_dir: str | os.PathLike[str]) -> Path:
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root
