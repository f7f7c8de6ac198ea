"""bench/gpu_check.sh on a machine without CUDA, in its bounded mode: every CUDA step says it is skipped,
the long CPU steps too, a failing step is reported without stopping the rest, and one table comes out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
CUDA_STEPS = (
    "make demo (device auto)",
    "fidelity cpu<->cuda",
    "bf16 on cuda",
    "family of 8 vs 1 on cuda",
    "ray: 2 actors x 0.5 GPU",
)
LONG_STEPS = ("head sweep vs TL, nnsight", "AtP recall")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skips of a machine without CUDA")


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "GPU_CHECK_QUICK": "1", "GPU_CHECK_WORK": str(tmp_path), "PY": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=environ, timeout=120, check=False)


def table(stdout: str) -> dict[str, tuple[str, str]]:
    """The final table: {step: (result, seconds)}."""
    rows = stdout.split("| step | result | seconds |", 1)[1].splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows if line.startswith("| ")]
    return {step: (result, seconds) for step, result, seconds in cells}


def test_without_cuda_every_cuda_step_is_skipped_in_one_table(tmp_path: Path) -> None:
    done = run(tmp_path)
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert list(rows) == ["environment", *CUDA_STEPS[:4], *LONG_STEPS, CUDA_STEPS[4]]
    for step in CUDA_STEPS:
        assert rows[step][0] == "skipped: no CUDA device"
    for step in LONG_STEPS:
        assert rows[step][0] == "skipped: quick mode (GPU_CHECK_QUICK=1)"
    assert rows["environment"][0] == f"torch {torch.__version__}, no CUDA device"
    assert all(seconds.isdigit() for _, seconds in rows.values())
    assert "total " in done.stdout.splitlines()[-1]


def test_a_failed_step_is_reported_and_the_rest_still_run(tmp_path: Path) -> None:
    done = run(tmp_path, PY=str(tmp_path / "no-python"))
    assert done.returncode == 1
    rows = table(done.stdout)
    assert rows["environment"][0].startswith("FAILED (exit 127)")
    assert rows["bf16 on cuda"][0] == "skipped: no CUDA device"  # the later steps still ran
    assert len(rows) == 1 + len(CUDA_STEPS) + len(LONG_STEPS)


def test_steps_past_the_budget_fail_unstarted(tmp_path: Path) -> None:
    done = run(tmp_path, GPU_CHECK_QUICK="0", GPU_CHECK_BUDGET="5")
    assert done.returncode == 1
    rows = table(done.stdout)
    assert rows["environment"][0] == "FAILED: not started, the check's 5 s are spent"
    assert rows["make demo (device auto)"][0] == "skipped: no CUDA device"  # skips are still said
    assert rows["AtP recall"][0] == "FAILED: not started, the check's 5 s are spent"
