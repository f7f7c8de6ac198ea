"""The operations commands through their own parsers: info, migrate-config, test, stats, validate-fix."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from forensics.commands import info_cmd, migrate_cmd, selftest_cmd, stats_cmd, validate_cmd
from forensics.errors import ConfigError
from forensics.models import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "report_rca2.json"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in [v for v in os.environ if v.startswith("MODEL_FORENSICS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_DIR", str(tmp_path / "cache"))


def run(module: ModuleType, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=module.NAME)
    module.configure(parser)
    return int(module.run(parser.parse_args(argv)))


def test_info_json_has_health(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "bundles").mkdir()
    monkeypatch.setenv("MODEL_FORENSICS_BUNDLE_DIR", str(tmp_path / "bundles"))
    monkeypatch.setenv("MODEL_FORENSICS_OUTPUT_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("MODEL_FORENSICS_ENCRYPTION_KEY", "A" * 43 + "=")
    assert run(info_cmd, ["--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["health"]["status"] == "ok"
    names = {c["name"] for c in info["health"]["checks"]}
    assert names == {
        "embedded_model_package",
        "cache_dir_writable",
        "output_dir_writable",
        "bundle_dir_exists",
        "device_available",
    }
    assert info["config"]["bundle_dir"] == str(tmp_path / "bundles") and info["config"]["encryption_key_set"]
    assert "A" * 43 not in json.dumps(info)
    assert {"cuda_available", "cuda_count", "cuda_names"} <= set(info["devices"])
    assert info["packages"]["torch"] and info["version"]


def test_info_degraded_and_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
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


def test_migrate_config_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
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
    assert run(migrate_cmd, ["--from", "v1.0", "--to", "v1.1", str(ROOT / "configs" / "batch.yaml"), "--out", "-"]) == 0
    assert capsys.readouterr().out.count('version: "1.1"') == 1


def test_stats_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = {
        "schema": "model-forensics/rca@1",
        "bundle_id": "x",
        "execution_time": 2.0,
        "confidence": 0.9,
        "compression_metrics": [{"module": "model.layers.1.mlp", "score": 3.0, "is_anomalous": True}],
        "fix_set": {"validated": True},
    }
    (tmp_path / "x.json").write_text(json.dumps(report))
    assert run(stats_cmd, ["--since", "24h", "--format", "json", "--output-dir", str(tmp_path), "--rebuild"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 1 and stats["fix_rate"] == 1.0 and stats["anomalous_layers"] == {"1": 1}
    assert run(stats_cmd, ["--output-dir", str(tmp_path)]) == 0
    assert "fix rate 1.00" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--since '24x' not allowed"):
        run(stats_cmd, ["--since", "24x", "--output-dir", str(tmp_path)])


def test_stats_command_reads_rca2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report = json.loads(GOLDEN.read_text())
    report["fix_set"]["recovery"] = None  # recovery unavailable: allowed in rca@2
    (tmp_path / "australia.json").write_text(json.dumps(report))
    assert run(stats_cmd, ["--format", "json", "--output-dir", str(tmp_path), "--rebuild"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 1 and stats["fix_rate"] == 1.0 and stats["confidence_mean"] == report["confidence"]
    assert stats["anomalous_layers"] == {"14": 1, "15": 1}


@pytest.mark.parametrize("schema", [None, "model-forensics/rca@0", "model-forensics/bundle@1"])
def test_validate_fix_refuses_unknown_schemas(tmp_path: Path, schema: str | None) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema": schema, "fix_set": None}))
    with pytest.raises(
        ConfigError,
        match=r"is not one this version reads \(expected one of "
        r"model-forensics/rca@1, model-forensics/rca@2\)",
    ):
        run(validate_cmd, [str(path)])
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="schema None is not one"):
        run(validate_cmd, [str(path)])


@pytest.fixture(scope="module")
def analysed(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real analysis on the tiny model that finds a validated fix set."""
    from forensics.rca import RCAPipeline
    from forensics.record import record_greedy

    root = tmp_path_factory.mktemp("validate")
    incident = record_greedy(
        tiny_llama, "The capital of Australia is", root / "inc", kind="incident", max_new_tokens=3
    ).bundle
    for i, prompt in enumerate(
        [
            "The capital of France is",
            "One plus one is",
            "The answer is",
            "Berlin is the capital of",
            "A retriever returns",
            "The model answers",
        ]
    ):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    report = RCAPipeline().analyze_incident(incident.path, baseline=str(root / "benign"), model=tiny_llama).to_dict()
    assert report["fix_set"] and report["fix_set"]["validated"]
    return report


def _rca1(report: dict[str, Any]) -> dict[str, Any]:
    """The same analysis as an rca@1 report: rca@1's fields only."""
    keys = set(json.loads((ROOT / "docs" / "report-rca1.schema.json").read_text())["properties"])
    old = {k: v for k, v in report.items() if k in keys}
    old["schema"] = "model-forensics/rca@1"
    old["fix_set"] = {
        k: v
        for k, v in report["fix_set"].items()
        if k in ("interventions", "validated", "recovery", "metric", "fixed", "argmax_token", "size")
    }
    return old


def test_validate_fix_reads_rca1_and_rca2(
    analysed: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rca2 = {**analysed, "schema": "model-forensics/rca@2"}
    rca2["fix_set"] = {**analysed["fix_set"], "recovery": None}  # unavailable recovery does not matter here
    for name, report in (("rca2.json", rca2), ("rca1.json", _rca1(analysed))):
        (tmp_path / name).write_text(json.dumps(report))
        assert run(validate_cmd, [str(tmp_path / name)]) == 0, name
        assert "STILL FIXES" in capsys.readouterr().out
