"""A device this machine lacks is a one-line error naming the setting, never a traceback; `info` reports it
as a failing health check and exits non-zero (issue 14, item 4).

``cuda:999`` is missing on every machine; plain ``cuda`` (the high-performance config) only where CUDA is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forensics.errors import ModelError
from forensics.models.registry import available_devices, resolve_device
from forensics.ops.health import check_device

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment without MODEL_FORENSICS_* settings, with existing dirs (health otherwise ok)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FORENSICS_")}
    (tmp_path / "bundles").mkdir()
    return {
        **clean,
        "MODEL_FORENSICS_BUNDLE_DIR": str(tmp_path / "bundles"),
        "MODEL_FORENSICS_OUTPUT_DIR": str(tmp_path / "out"),
        "MODEL_FORENSICS_CACHE_DIR": str(tmp_path / "cache"),
    }


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forensics.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    available = ", ".join(available_devices())
    assert lines[0].startswith("error: ") and f"available: {available} or auto" in lines[0]
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_check_device_names_what_is_there() -> None:
    assert check_device("cpu")[0] and check_device("auto")[0]
    ok, detail = check_device("cuda:999")
    assert not ok and detail.startswith("device 'cuda:999' is not available on this machine")
    assert check_device("cuda")[0] is (not NO_CUDA)


def test_library_refuses_a_missing_device_by_name() -> None:
    with pytest.raises(ModelError, match=r"device 'cuda:999' is not available on this machine .*available: cpu"):
        resolve_device("cuda:999")
    assert resolve_device("cpu").type == "cpu"


def test_record_device_flag(env: dict[str, str], tmp_path: Path, tiny_dirs: dict[str, Path]) -> None:
    proc = cli(
        [
            "record",
            "--model",
            str(tiny_dirs["llama"]),
            "--prompt",
            "Paris is",
            "--expected",
            " big",
            "--out",
            str(tmp_path / "b"),
            "--device",
            "cuda:999",
        ],
        env,
        tmp_path,
    )
    assert_one_line(proc, "device 'cuda:999' is not available on this machine")
    assert not (tmp_path / "b").exists()


def test_environment_variable_is_named(env: dict[str, str], tmp_path: Path) -> None:
    proc = cli(["triage", str(tmp_path / "bundles")], {**env, "MODEL_FORENSICS_DEVICE": "cuda:999"}, tmp_path)
    assert_one_line(proc, "environment variable MODEL_FORENSICS_DEVICE='cuda:999'", "device 'cuda:999'")


def test_config_file_key_is_named(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "gpu.yaml"
    config.write_text("device: cuda:999\n")
    proc = cli(
        ["batch", str(tmp_path / "bundles"), "--output", str(tmp_path / "r"), "--config", str(config)], env, tmp_path
    )
    assert_one_line(proc, f"config file {config}, key 'device'")
    proc = cli(["test"], {**env, "MODEL_FORENSICS_CONFIG": str(config)}, tmp_path)  # the self-test too
    assert_one_line(proc, f"config file {config} (MODEL_FORENSICS_CONFIG), key 'device'")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: the high-performance config is valid here")
def test_high_performance_config_without_cuda(env: dict[str, str], tmp_path: Path) -> None:
    config = ROOT / "configs" / "high_performance.yaml"
    proc = cli(["analyze", str(tmp_path / "bundles" / "x"), "--config", str(config)], env, tmp_path)
    line = assert_one_line(proc, f"config file {config}, key 'device'", "device 'cuda'")
    if torch.version.cuda is None:
        assert f"torch {torch.__version__} is built without CUDA" in line


def test_info_reports_the_failing_check_and_exits_nonzero(env: dict[str, str], tmp_path: Path) -> None:
    ok = cli(["info", "--format", "json"], env, tmp_path)
    assert ok.returncode == 0, ok.stdout[-2000:]
    assert json.loads(ok.stdout)["health"]["status"] == "ok"
    bad = cli(["info", "--format", "json"], {**env, "MODEL_FORENSICS_DEVICE": "cuda:999"}, tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    info = json.loads(bad.stdout)
    failing = [c for c in info["health"]["checks"] if not c["ok"]]
    assert info["health"]["status"] == "degraded" and [c["name"] for c in failing] == ["device_available"]
    assert "cuda:999" in failing[0]["detail"] and info["devices"]["resolved"] is None
    table = cli(["info"], {**env, "MODEL_FORENSICS_DEVICE": "cuda:999"}, tmp_path)
    assert table.returncode == 1 and "DEGRADED" in table.stdout and "device_available" in table.stdout
