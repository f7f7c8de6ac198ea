"""Batch, triage, replay and analyze on hostile bundles mixed with good ones: nothing falls over.

Hostile bundles are real recordings of a tiny model, mutated by the generators of
``bench/fuzz_bundles.py`` (wrong JSON types and ranges, cross-field lies, lying files tables, lying
Arrow IPC, symlinks and special files, hostile archives) or made to fail after loading (a model that
is gone, another model's weights). Each CLI verb runs in process through ``forensics.cli.main`` and
must end with a documented exit status, no traceback and no internal error; ``batch`` must give
every incident a report or an ``.error.json`` naming one of our errors, and still analyse the good one.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.fuzz_bundles import (
    Pristine,
    cross_field_lie,
    hostile_archive,
    lying_arrow,
    lying_files_table,
    mutate_manifest,
    read_manifest,
    special_files,
    write_manifest,
)
from forensics import errors
from forensics.cli import main
from forensics.models import LoadedModel
from forensics.record import record_greedy

BENIGN = ["The capital of France is", "One plus one is", "The answer is", "Berlin is the capital of"]
OUR_ERRORS = {name for name in errors.__all__ if name.endswith("Error")}
FAMILIES = [
    "manifest-json",
    "manifest-cross-field",
    "files-table",
    "arrow",
    "special-files",
    "archive",
    "model-gone",
    "other-model",
]


@pytest.fixture(scope="module")
def lab(
    tiny_llama: LoadedModel, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hostile-runs")
    record_greedy(tiny_llama, "The capital of Australia is", root / "good" / "good", kind="incident", max_new_tokens=2)
    for i, prompt in enumerate(BENIGN):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    (root / "outside").mkdir()
    return {
        "root": root,
        "good": root / "good" / "good",
        "benign": root / "benign",
        "gpt2": tiny_dirs["gpt2"],
        "outside": root / "outside",
    }


def _make_hostile(lab: dict[str, Any], family: str, seed: int, dest: Path) -> Path:
    """A copy of the good incident at ``dest``, made hostile; returns the path to hand to the CLI."""
    rng = random.Random(seed)
    shutil.copytree(lab["good"], dest)
    pristine = Pristine(dest, dest, dest, dest, lab["outside"])
    mutations = {
        "manifest-json": mutate_manifest,
        "manifest-cross-field": cross_field_lie,
        "files-table": lying_files_table,
        "arrow": lying_arrow,
        "special-files": special_files,
        "archive": hostile_archive,
    }
    if family in mutations:
        try:
            made = mutations[family](rng, dest, pristine)
        except (IndexError, KeyError, TypeError):  # a lie that does not fit this recording's shape
            made = mutate_manifest(rng, dest, pristine)
        if isinstance(made, Path):  # an archive beside the directory: only the archive is the case
            shutil.rmtree(dest)
            return made
        return dest
    manifest = read_manifest(dest)
    manifest["model"]["ref"] = str(lab["root"] / "no-such-model") if family == "model-gone" else str(lab["gpt2"])
    write_manifest(dest, manifest)
    return dest


def _run(argv: list[str], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.clear()
    code = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and "internal error" not in text, (argv, text[-2000:])
    bugs = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not bugs, (argv, [r.getMessage() for r in bugs])
    return code, out.out


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cases=st.lists(st.tuples(st.sampled_from(FAMILIES), st.integers(0, 2**31)), min_size=2, max_size=3))
def test_hostile_bundles_never_stop_a_run(
    lab: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    cases: list[tuple[str, int]],
) -> None:
    work = tmp_path_factory.mktemp("case")
    incidents = work / "incidents"
    shutil.copytree(lab["good"], incidents / "good")
    hostile = [_make_hostile(lab, family, seed, incidents / f"h{i}") for i, (family, seed) in enumerate(cases)]
    results = work / "results"

    code, out = _run(
        ["batch", str(incidents), "--baseline", str(lab["benign"]), "--output", str(results)], capsys, caplog
    )
    assert code in (0, 1)
    summary = json.loads((results / "summary.json").read_text())
    assert "good" in summary["done"]
    assert (code == 1) == bool(summary["failed"])
    for failure in summary["failed"]:
        marker = json.loads((results / f"{failure['bundle']}.error.json").read_text())
        assert marker["error"] in OUR_ERRORS, marker
        assert not (results / f"{failure['bundle']}.json").exists()

    code, out = _run(["triage", str(incidents), "--baseline", str(lab["benign"]), "--format", "json"], capsys, caplog)
    rows = json.loads(out)
    assert code == (1 if any(r.get("error") for r in rows) else 0)
    assert any(r["bundle"] == "good" and "max_score" in r for r in rows)
    assert [r for r in rows if r.get("error")] == rows[len(rows) - sum(bool(r.get("error")) for r in rows) :]

    for path in hostile:
        code, _ = _run(["replay", str(path), "--format", "json"], capsys, caplog)
        assert code in (0, 1, 2)
        code, _ = _run(
            ["analyze", str(path), "--baseline", str(lab["benign"]), "--output", str(work / "one.json")], capsys, caplog
        )
        assert code in (0, 2)
    shutil.rmtree(work, ignore_errors=True)
