"""A batch killed between writing a report, indexing it and dropping the error marker is repaired by the next run.

A child process runs ``run_batch`` with a checkpoint that hard-exits (``os._exit``, no cleanup, no
atexit) right after step k of ``forensics.batch.STEPS``; then ``model-forensics batch`` runs again
on the same output and must leave, for every incident, exactly one of a report or an error marker,
every report in ``index.sqlite``, and ``stats`` counting them all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from forensics.batch import STEPS
from forensics.cli import main
from forensics.models import LoadedModel
from forensics.ops.stats import indexed_paths, query_stats
from forensics.record import record_greedy

ROOT = Path(__file__).resolve().parents[1]
CRASH_CODE = 17
CHILD = f"""
import os, sys
from forensics.batch import plan_batch, run_batch
from forensics.exec import LocalExecutor
from forensics.population import list_bundle_paths

incidents, benign, output, step = sys.argv[1:5]

def checkpoint(done, name):
    if done == step:
        os._exit({CRASH_CODE})

tasks = plan_batch(list_bundle_paths(incidents), output_dir=output, baseline=benign)
run_batch(tasks, executor=LocalExecutor(), output_dir=output, checkpoint=checkpoint)
os._exit(0)
"""


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crash")
    record_greedy(
        tiny_llama, "The capital of Australia is", root / "incidents" / "inc0", kind="incident", max_new_tokens=2
    )
    shutil.copytree(root / "incidents" / "inc0", root / "incidents" / "broken")
    (root / "incidents" / "broken" / "activations.arrow").write_bytes(b"not arrow at all")
    for i, prompt in enumerate(["The capital of France is", "One plus one is", "The answer is"]):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    return {"incidents": root / "incidents", "benign": root / "benign"}


def _crash_at(step: str, lab: dict[str, Path], output: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(lab["incidents"]), str(lab["benign"]), str(output), step],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == CRASH_CODE, child.stderr[-3000:]


def _consistent(output: Path) -> dict[str, Any]:
    reports = {p for p in output.glob("*.json") if not p.name.endswith(".error.json") and p.name != "summary.json"}
    markers = {p.name.removesuffix(".error.json") for p in output.glob("*.error.json")}
    assert {p.stem for p in reports} == {"inc0"} and markers == {"broken"}
    assert indexed_paths(output) == {str(p.resolve()) for p in reports}
    assert query_stats(output, timedelta(days=1))["count"] == len(reports)
    assert not list(output.glob(".*"))  # no temp files of a killed write
    return json.loads((output / "summary.json").read_text())


@pytest.mark.parametrize("step", STEPS)
def test_a_batch_killed_at_each_step_is_repaired_by_the_next_run(
    step: str, lab: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "results"
    output.mkdir()
    stale = {"bundle": "inc0", "path": str(lab["incidents"] / "inc0"), "error": "ReplayError", "message": "earlier"}
    (output / "inc0.error.json").write_text(json.dumps(stale))  # an earlier run failed on inc0
    _crash_at(step, lab, output)
    if step in ("report-written", "indexed"):  # the windows the issue found: report and marker both present
        assert (output / "inc0.json").is_file() and (output / "inc0.error.json").is_file()

    code = main(["batch", str(lab["incidents"]), "--baseline", str(lab["benign"]), "--output", str(output)])
    assert code == 1  # the broken bundle still fails, now with its marker
    summary = _consistent(output)
    assert summary["failed"][0]["bundle"] == "broken"
    assert "inc0" in summary["done"] + summary["skipped"]
    assert "error" not in capsys.readouterr().err
