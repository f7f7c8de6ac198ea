"""RCAPipeline and the analysis CLI verbs on a tiny model with real bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from forensics.cli import main
from forensics.config import load_config
from forensics.models import LoadedModel, resolve_model
from forensics.rca import RCAPipeline
from forensics.record import record_greedy

BENIGN = [
    "The capital of France is",
    "One plus one is",
    "The answer is",
    "Berlin is the capital of",
    "A retriever returns",
    "The model answers",
]


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lab")
    incidents = root / "incidents"
    for i, prompt in enumerate(["The capital of Australia is", "Two plus two is"]):
        record_greedy(tiny_llama, prompt, incidents / f"inc{i}", kind="incident", max_new_tokens=3)
    for i, prompt in enumerate(BENIGN):
        record_greedy(tiny_llama, prompt, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    return {"root": root, "incidents": incidents, "benign": root / "benign"}


def test_analyze_incident_result_fields(lab: dict[str, Any], tiny_llama: LoadedModel, tmp_path: Path) -> None:
    result = RCAPipeline().analyze_incident(
        str(lab["incidents"] / "inc0"), baseline=str(lab["benign"]), model=tiny_llama, output=tmp_path / "r.json"
    )
    assert 0.0 <= result.confidence <= 1.0 and result.execution_time > 0
    assert len(result.compression_metrics) == 6
    assert all(
        hasattr(m, "module") and hasattr(m, "score") and hasattr(m, "is_anomalous") for m in result.compression_metrics
    )
    assert result.fix_set is not None and result.fix_set.validated and result.fix_set.interventions
    assert result.replays["forward_passes"] > 0 and result.replays["evaluated"] > 0
    assert result.export_path == str(tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    for key in ("confidence", "execution_time", "compression_metrics", "fix_set", "replays", "export_path"):
        assert key in report
    assert report["schema"] == "model-forensics/rca@2"
    assert report["fix_set"]["interventions"][0]["module"].startswith("model.layers.")


def test_no_baseline_still_analyses_with_zero_ablation(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    result = RCAPipeline().analyze_incident(str(lab["incidents"] / "inc0"), model=tiny_llama)
    assert result.compression_metrics == []
    assert any("CF skipped" in n for n in result.notes) and any("patch" in n for n in result.notes)
    assert result.single_effects and all(e["interventions"][0]["kind"] == "zero" for e in result.single_effects)


def test_unfaithful_replay_refuses_cca(lab: dict[str, Any], tiny_dirs: dict[str, Path]) -> None:
    other = resolve_model(str(tiny_dirs["llama"]), device="cpu")
    other.model.model.layers[1].mlp.down_proj.weight.data.mul_(1.5)
    result = RCAPipeline().analyze_incident(
        str(lab["incidents"] / "inc0"), baseline=str(lab["benign"]), model=other, allow_model_mismatch=True
    )
    assert result.fidelity["faithful"] is False
    assert result.fidelity["first_divergent"] == "model.layers.1.mlp"
    assert result.fix_set is None and result.replays["evaluated"] == 0
    assert any("not faithful" in n for n in result.notes)


@pytest.mark.parametrize("strategy", ["beam", "random"])
def test_strategies_through_config(lab: dict[str, Any], tiny_llama: LoadedModel, strategy: str) -> None:
    config = load_config(overrides={"modules.cca.search_strategy": strategy, "modules.cca.max_fix_set_size": 2})
    result = RCAPipeline(config).analyze_incident(
        str(lab["incidents"] / "inc1"), baseline=str(lab["benign"]), model=tiny_llama
    )
    assert result.search["strategy"] == strategy


def test_cli_analyze_validate_triage_baseline(
    lab: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rca.json"
    assert (
        main(
            [
                "analyze",
                str(lab["incidents"] / "inc0"),
                "--baseline",
                str(lab["benign"]),
                "--output",
                str(out),
                "--profile",
            ]
        )
        == 0
    )
    text = capsys.readouterr()
    assert "fix set" in text.out and "confidence" in text.out and "profile (s)" in text.err
    assert main(["validate-fix", str(out)]) == 0
    assert "STILL FIXES" in capsys.readouterr().out

    stats = tmp_path / "benign.json"
    assert main(["build-baseline", str(lab["benign"]), "--out", str(stats)]) == 0
    capsys.readouterr()
    assert main(["triage", str(lab["incidents"]), "--baseline", str(stats), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    scores = [r["max_score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["bundle"] for r in rows} == {"inc0", "inc1"}
    assert main(["triage", str(lab["incidents"]), "--baseline", str(lab["benign"]), "--sort-by", "size"]) == 0
    assert "inc0" in capsys.readouterr().out


def test_validate_fix_fails_on_a_model_it_does_not_fix(
    lab: dict[str, Any], tmp_path: Path, tiny_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rca.json"
    main(["analyze", str(lab["incidents"] / "inc0"), "--baseline", str(lab["benign"]), "--output", str(out)])
    report = json.loads(out.read_text())
    report["fix_set"]["interventions"] = [
        {"module": "model.layers.0.mlp", "kind": "scale", "positions": "last", "factor": 1.0}
    ]  # a no-op cannot fix anything
    out.write_text(json.dumps(report))
    assert main(["validate-fix", str(out)]) == 1
    assert "DOES NOT FIX" in capsys.readouterr().out


def test_batch_resumes_and_survives_a_bad_bundle(
    lab: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "incidents"
    shutil.copytree(lab["incidents"], work)
    bad = work / "broken"
    shutil.copytree(work / "inc1", bad)
    (bad / "activations.arrow").write_bytes(b"not arrow at all")
    results = tmp_path / "results"
    code = main(["batch", str(work), "--baseline", str(lab["benign"]), "--output", str(results)])
    assert code == 1
    text = capsys.readouterr().out
    assert "2 analysed" in text and "1 failed" in text and "FAILED broken" in text
    assert json.loads((results / "inc0.json").read_text())["bundle_id"] == "inc0"
    error = json.loads((results / "broken.error.json").read_text())
    assert "activations.arrow" in error["message"]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["done"] == ["inc0", "inc1"] and summary["failed"][0]["bundle"] == "broken"
    prom = (results / "model_forensics.prom").read_text()  # textfile-collector metrics of the run
    assert "model_forensics_fix_rate" in prom and 'model_forensics_errors_total{type="BundleError"} 1.0' in prom

    shutil.rmtree(bad)
    assert main(["batch", str(work), "--baseline", str(lab["benign"]), "--output", str(results)]) == 0
    assert "0 analysed, 2 already done" in capsys.readouterr().out
    assert not list(results.glob(".*"))  # no temp files left behind
