"""Prometheus metrics: guide names, alert rules that parse and name real metrics, batch textfile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from forensics.ops.metrics import METRIC_NAMES, Metrics

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = [ROOT / "configs" / "prometheus-alerts.yml", ROOT / "k8s" / "prometheus-rules.yaml"]


def _groups(path: Path) -> list[dict[str, object]]:
    data = yaml.safe_load(path.read_text())
    return data["spec"]["groups"] if "spec" in data else data["groups"]


@pytest.mark.parametrize("path", [p for p in RULE_FILES if p.exists()], ids=lambda p: p.name)
def test_alert_rules_parse_and_name_real_metrics(path: Path) -> None:
    rules = [r for g in _groups(path) for r in g["rules"]]  # type: ignore[attr-defined]
    assert {r["alert"] for r in rules} == {"HighAnomalyScore", "LowFixRate"}
    exposed = Metrics().exposition().decode()
    for rule in rules:
        names = set(re.findall(r"model_forensics_[a-z_]+", rule["expr"]))
        assert names and names <= set(METRIC_NAMES)
        for name in names:
            assert f"# TYPE {name} " in exposed


def test_observe_report_and_textfile(tmp_path: Path) -> None:
    m = Metrics()
    m.observe_report(
        {
            "execution_time": 1.5,
            "compression_metrics": [{"is_anomalous": True}, {"is_anomalous": False}],
            "fix_set": {"validated": True},
            "replays": {"forward_passes": 7, "evaluated": 40},
        }
    )
    m.observe_report({"execution_time": 2.5, "compression_metrics": [], "fix_set": None, "replays": {}})
    m.observe_error("BundleError")
    m.write_textfile(tmp_path / "mf.prom")
    text = (tmp_path / "mf.prom").read_text()
    assert "model_forensics_fix_rate 0.5" in text
    assert "model_forensics_anomaly_score 0.5" in text
    assert "model_forensics_analysis_duration_seconds_count 2.0" in text
    assert 'model_forensics_errors_total{type="BundleError"} 1.0' in text
    assert "model_forensics_replay_forward_passes_total 7.0" in text
