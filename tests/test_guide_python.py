"""The deployment guide's Python snippets, as written: `model_forensics` alias, env config, a torch model
passed positionally, `export_path`, the MLflow integration on a local file store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

import forensics
import model_forensics
from forensics.cli import main
from forensics.config import Config
from forensics.errors import ReplayError
from forensics.models import build_tiny_model
from model_forensics import RCAPipeline

PROMPT = "The capital of Australia is"


@pytest.fixture(scope="module")
def incident(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guide-py") / "incident_001"
    assert (
        main(
            [
                "record",
                "--model",
                str(tiny_dirs["llama"]),
                "--prompt",
                PROMPT,
                "--expected",
                " Canberra",
                "--out",
                str(out),
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    return out


def test_alias_reexports_the_public_api() -> None:
    assert model_forensics.__all__ == sorted(forensics.__all__)
    assert model_forensics.Intervention is forensics.Intervention
    assert issubclass(model_forensics.RCAPipeline, forensics.RCAPipeline)


def test_pipeline_reads_the_environment_unless_given_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_ENABLED", "true")
    monkeypatch.setenv("MODEL_FORENSICS_CACHE_SIZE", "10GB")
    pipeline = RCAPipeline()
    assert pipeline.config.cache.enabled and pipeline.config.cache.max_bytes == 10 * 1000**3
    assert RCAPipeline(Config()).config.cache.enabled is False  # explicit config wins
    assert forensics.RCAPipeline().config.cache.enabled is False  # the library never reads the environment


def test_a_torch_model_passed_positionally_is_the_model_analysed(
    incident: Path, tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_FORENSICS_OUTPUT_DIR", str(tmp_path / "results"))
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])  # a bare nn.Module, as MLflow returns it
    result = RCAPipeline().analyze_incident(str(incident), model)
    assert (
        result.model["kind"] == "module" and result.model["sha256"] == forensics.load_bundle(incident).model["sha256"]
    )
    assert result.export_path == str(tmp_path / "results" / "incident_001.json")
    assert json.loads(Path(result.export_path).read_text())["bundle_id"] == "incident_001"
    assert (tmp_path / "results" / "index.sqlite").is_file()  # `stats` finds it


def test_a_different_torch_model_is_refused_unless_allowed(incident: Path, tmp_path: Path) -> None:
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model("llama", tmp_path / "other", seed=1, layers=2))
    pipeline = RCAPipeline(Config(output_dir=str(tmp_path / "results")))
    with pytest.raises(ReplayError, match="allow_model_mismatch"):
        pipeline.analyze_incident(str(incident), other)
    result = pipeline.analyze_incident(str(incident), model=other, allow_model_mismatch=True)
    assert result.model["sha256"] != forensics.load_bundle(incident).model["sha256"]


def test_library_pipeline_uses_a_model_given_as_model_keyword(incident: Path, tiny_dirs: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    result = forensics.RCAPipeline().analyze_incident(str(incident), model=model)
    assert result.model["kind"] == "module"
    with pytest.raises(forensics.ModelError, match="expected a reference"):
        forensics.RCAPipeline().analyze_incident(str(incident), model=42)


def test_mlflow_snippet_end_to_end(
    incident: Path, tiny_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip(
        "mlflow", reason="the optional 'mlflow' extra is not installed (pip install -e '.[mlflow]')"
    )
    monkeypatch.setenv("MODEL_FORENSICS_OUTPUT_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())  # a local file store, no server
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(
            AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]), name="model", serialization_format="pickle"
        )  # how it was logged is the user's choice

    # --- the guide's snippet, verbatim from here ---
    def analyze_model_failure(model_run_id, incident_data):  # type: ignore[no-untyped-def]
        # Load model from MLflow
        model = mlflow.pytorch.load_model(f"runs:/{model_run_id}/model")

        # Run analysis
        pipeline = RCAPipeline()
        result = pipeline.analyze_incident(incident_data, model)

        # Log results to MLflow
        with mlflow.start_run(run_id=model_run_id):
            mlflow.log_metrics(
                {
                    "rca_confidence": result.confidence,
                    "anomalous_layers": len([m for m in result.compression_metrics if m.is_anomalous]),
                }
            )
            mlflow.log_artifact(result.export_path)
        return result

    # --- end of the snippet ---

    result = analyze_model_failure(run.info.run_id, str(incident))
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.metrics["rca_confidence"] == pytest.approx(result.confidence)
    assert logged.data.metrics["anomalous_layers"] == len(result.anomalous_modules)
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "incident_001.json" in artifacts
