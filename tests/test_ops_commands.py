"""The operations commands through their own parsers: info, migrate-config, test, stats."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

from forensics.commands import info_cmd, migrate_cmd, selftest_cmd, stats_cmd
from forensics.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in [v for v in os.environ if v.startswith("MODEL_FORENSICS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_DIR", str(tmp_path / "cache"))


def run(module: ModuleType, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=module.NAME)
    module.configure(parser)
    return int(module.run(parser.parse_args(argv)))


def test_info_json_has_health(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                              tmp_path: Path) -> None:
    (tmp_path / "bundles").mkdir()
    monkeypatch.setenv("MODEL_FORENSICS_BUNDLE_DIR", str(tmp_path / "bundles"))
    monkeypatch.setenv("MODEL_FORENSICS_OUTPUT_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("MODEL_FORENSICS_ENCRYPTION_KEY", "A" * 43 + "=")
    assert run(info_cmd, ["--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["health"]["status"] == "ok"
    names = {c["name"] for c in info["health"]["checks"]}
    assert names == {"embedded_model_package", "cache_dir_writable", "output_dir_writable", "bundle_dir_exists",
                     "device_available"}
    assert info["config"]["bundle_dir"] == str(tmp_path / "bundles") and info["config"]["encryption_key_set"]
    assert "A" * 43 not in json.dumps(info)
    assert {"cuda_available", "cuda_count", "cuda_names"} <= set(info["devices"])
    assert info["packages"]["torch"] and info["version"]


def test_info_degraded_and_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_FORENSICS_BUNDLE_DIR", str(tmp_path / "missing"))
    assert run(info_cmd, ["--format", "json"]) == 1  # health not ok: non-zero, for scripts and probes
    health = json.loads(capsys.readouterr().out)["health"]
    assert health["status"] == "degraded"
    assert [c["name"] for c in health["checks"] if not c["ok"]] == ["bundle_dir_exists"]
    assert run(info_cmd, []) == 1
    out = capsys.readouterr().out
    assert "health" in out and "DEGRADED" in out and "bundle_dir_exists" in out


def test_selftest_passes_on_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(selftest_cmd, ["--config", str(ROOT / "configs" / "default.yaml")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert sum(line.startswith("PASS ") for line in lines) == 8 and "FAIL" not in out
    assert lines[-1].startswith("self-test: PASS (8/8 steps")


def test_selftest_fails_non_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("modules:\n  cca:\n    enabled: false\n")  # no CCA: no fix set can come back
    code = run(selftest_cmd, ["--config", str(config), "--workdir", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL  validated fix set" in out and "self-test: FAIL (7/8 steps" in out


def test_migrate_config_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / "configs" / "high_performance.yaml").read_text())
    monkeypatch.setenv("MODEL_FORENSICS_CONFIG", str(path))
    assert run(migrate_cmd, ["--from", "v1.0", "--to", "v1.1"]) == 0  # the guide's exact form
    assert 'version: "1.1"' in path.read_text() and (tmp_path / "config.yaml.v1.0.bak").is_file()
    assert "migrated" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="is a v1.1 config"):
        run(migrate_cmd, ["--from", "v1.0", "--to", "v1.1"])
    with pytest.raises(ConfigError, match="'v3' is unknown"):
        run(migrate_cmd, ["--from", "v3", "--to", "v1.1", str(path)])
    assert run(migrate_cmd, ["--from", "v1.0", "--to", "v1.1", str(ROOT / "configs" / "batch.yaml"),
                             "--out", "-"]) == 0
    assert capsys.readouterr().out.count('version: "1.1"') == 1


def test_stats_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = {"schema": "model-forensics/rca@1", "bundle_id": "x", "execution_time": 2.0, "confidence": 0.9,
              "compression_metrics": [{"module": "model.layers.1.mlp", "score": 3.0, "is_anomalous": True}],
              "fix_set": {"validated": True}}
    (tmp_path / "x.json").write_text(json.dumps(report))
    assert run(stats_cmd, ["--since", "24h", "--format", "json", "--output-dir", str(tmp_path), "--rebuild"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 1 and stats["fix_rate"] == 1.0 and stats["anomalous_layers"] == {"1": 1}
    assert run(stats_cmd, ["--output-dir", str(tmp_path)]) == 0
    assert "fix rate 1.00" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--since '24x' not allowed"):
        run(stats_cmd, ["--since", "24x", "--output-dir", str(tmp_path)])
