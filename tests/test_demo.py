"""The `make demo` story on the embedded smollm2-135m, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forensics.cli import main

pytestmark = pytest.mark.slow


def test_demo_records_analyses_and_writes_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "incident: 'The capital of Australia is' -> ' Sydney" in out
    assert "fix set: correction" in out and "validated" in out
    report = json.loads((tmp_path / "reports" / "australia.json").read_text())
    assert report["decision"]["observed"] == " Sydney" and report["decision"]["target"] == " Canberra"
    assert report["fix_set"]["validated"] and report["fix_set"]["argmax_token"] == " Canberra"
    assert report["fidelity"]["faithful"] and len(report["compression_metrics"]) == 90
    assert report["baselines"]["patch_sources"][0] == "australia_in_context"  # the counterfactual comes first
    assert "isc:" in out and "dbc:" in out  # make demo turns the advanced modules on
    assert report["isc"] and report["dbc"]
    assert not any("not implemented" in n and ("isc" in n or "dbc" in n) for n in report["notes"])
    html = (tmp_path / "reports" / "australia.html").read_text()
    assert "<svg" in html and "http://" not in html and "https://" not in html
    # the retrieval incident: provenance names the retrieved document, validated with the document removed
    assert "incident: 'Retrieved: The capital of France is Lyon.\\nThe capital of France is' -> ' Lyon" in out
    assert out.index("incident australia:") < out.index("incident france_retrieved:")
    retrieval = json.loads((tmp_path / "reports" / "retrieval.json").read_text())
    assert retrieval["decision"]["observed"] == " Lyon" and retrieval["decision"]["target"] == " Paris"
    cause = retrieval["provenance"]["cause"]
    assert (
        cause["kind"] == "external"
        and cause["name"] == "retriever"
        and cause["text"] == "The capital of France is Lyon."
    )
    assert cause["removed"]["fixed"] and cause["removed"]["argmax_token"] == " Paris"
    assert cause["validated"] and cause["regenerated"]["text"].startswith(" Paris")
    assert (
        "provenance: removing retriever result #1 ('The capital of France is Lyon.') turns ' Lyon' into ' Paris'" in out
    )
    assert 'id="provenance"' in (tmp_path / "reports" / "retrieval.html").read_text()
    # a second run reuses the recorded bundles (idempotent) and reaches the same fix
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "reports" / "australia.json").read_text())
    assert again["fix_set"]["interventions"] == report["fix_set"]["interventions"]
