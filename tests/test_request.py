"""One request type: what an analysis asks for, its module overrides and deadline as arguments, a run
that does not fail its spec, and a source that is the incident itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forensics.config import Config
from forensics.errors import AnalysisTimeoutError, ConfigError
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.rca import RCAPipeline
from forensics.rca.request import AnalysisRequest
from forensics.record import record_greedy

BENIGN = ["The capital of France is", "One plus one is", "The answer is"]


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("request")
    benign = [
        record_greedy(tiny_llama, p, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2).bundle
        for i, p in enumerate(BENIGN)
    ]
    answer = benign[0].outputs["generated_ids"][0]
    incident = record_greedy(
        tiny_llama,
        "The capital of Australia is",
        root / "incident",
        FailureSpec("expected", "", (answer,)),
        kind="incident",
        max_new_tokens=3,
    ).bundle
    return {"root": root, "population": str(root / "benign"), "benign": benign, "incident": incident}


def test_of_normalises_what_callers_hold(tmp_path: Path) -> None:
    request = AnalysisRequest.of(
        tmp_path / "inc", population=tmp_path / "pop", sources=tmp_path / "s", output=tmp_path / "r.json"
    )
    assert request.incidents == (str(tmp_path / "inc"),) and request.population == str(tmp_path / "pop")
    assert request.sources == (str(tmp_path / "s"),) and request.output == str(tmp_path / "r.json")
    assert AnalysisRequest.of("a", sources=["x", "y"]).sources == ("x", "y")
    assert AnalysisRequest.of("a", modules={"isc": True, "cf": False}).modules == (("cf", False), ("isc", True))
    hash(AnalysisRequest.of("a", population=["b", "c"]))  # frozen and hashable where its parts are


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modules": {"telepathy": True}}, "unknown module"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"on_timeout": "retry"}, "on_timeout"),
    ],
)
def test_a_bad_request_is_a_one_line_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AnalysisRequest.of("a", **kwargs)
    with pytest.raises(ConfigError, match="2 incidents make a failure family: analyse it with RCAPipeline.run_family"):
        _ = AnalysisRequest.of(["a", "b"]).incident


def test_modules_are_arguments_not_the_pipelines_config(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    pipeline = RCAPipeline(Config())
    request = AnalysisRequest.of(
        lab["incident"], population=lab["population"], model=tiny_llama, modules={"isc": True, "dbc": True}
    )
    with_modules = pipeline.run(request).to_dict()
    assert pipeline.config == Config() and pipeline.progress is None  # nothing swapped on the shared pipeline
    plain = pipeline.analyze_incident(lab["incident"], lab["population"], tiny_llama).to_dict()
    if with_modules["fix_set"] is not None:
        assert with_modules["isc"] is not None and with_modules["dbc"] is not None
    assert plain["isc"] is None and plain["dbc"] is None
    assert json.dumps(request.command()).count("model-forensics analyze") == 1


def test_the_deadline_is_an_argument_with_two_outcomes(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    pipeline = RCAPipeline(Config())
    partial = pipeline.run(
        AnalysisRequest.of(lab["incident"], population=lab["population"], model=tiny_llama, timeout_s=0.0)
    )
    assert partial.replays["timed_out"] is True
    assert any("time limit" in n and "best found so far" in n for n in partial.notes)
    with pytest.raises(AnalysisTimeoutError, match="exceeded the time limit of 0 s"):
        pipeline.run(
            AnalysisRequest.of(
                lab["incident"], population=lab["population"], model=tiny_llama, timeout_s=0.0, on_timeout="error"
            )
        )
    assert pipeline.progress is None


def test_a_run_that_does_not_fail_its_spec_says_so(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    """The guide's snippet on one of the population's own bundles, against the directory holding it: it was
    a ZeroDivisionError (recovery against a source identical to the incident)."""
    benign = lab["benign"][0]
    result = RCAPipeline().analyze_incident(benign.path, lab["population"], tiny_llama)
    assert result.fix_set is None and result.fix_sets == []
    assert any("does not fail its failure spec" in n for n in result.notes)
    assert {"what": "the CCA search", "why": "the bundle does not fail its failure spec"} in result.not_evaluated


def test_a_source_identical_to_the_incident_is_no_source(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    incident = lab["incident"]
    result = RCAPipeline().analyze_incident(incident, lab["population"], tiny_llama, patch_source=[incident.path])
    assert incident.id not in result.baselines["patch_sources"]
    assert any("a run of the incident itself" in n for n in result.notes)
    assert all(row["source"] != incident.id for row in result.to_dict()["input_level"])


def test_no_usable_intervention_type_skips_the_search_and_keeps_the_rest(
    lab: dict[str, Any], tiny_llama: LoadedModel
) -> None:
    """'patch' only, and no source: the search has nothing to try; CF and the rest of the report stand."""
    from dataclasses import replace

    config = Config()
    config = replace(
        config, modules=replace(config.modules, cca=replace(config.modules.cca, intervention_types=("patch",)))
    )
    result = RCAPipeline(config).analyze_incident(lab["incident"], lab["population"], tiny_llama, patch_source=[])
    whys = [row["why"] for row in result.not_evaluated if row["what"] == "the CCA search"]
    assert whys and "no usable intervention type" in whys[0]
    assert result.fix_set is None and result.compression_metrics


def test_the_failure_spec_can_be_overridden_by_the_request(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    incident = lab["incident"]
    said = tiny_llama.tokenizer.decode(incident.outputs["generated_ids"][:1])
    pipeline = RCAPipeline()
    request = AnalysisRequest.of(incident, population=lab["population"], model=tiny_llama, failure=("expected", said))
    result = pipeline.run(request)  # judged against what it does say: nothing to explain
    assert result.fix_set is None and any("does not fail its failure spec" in n for n in result.notes)
    assert result.decision["failure"]["text"] == said
    assert "--expected" in request.command()["reproduce"]
    forbidden = pipeline.run(replace_failure(request, ("forbidden", said)))
    assert forbidden.decision["step"] == 0 and forbidden.decision["failure"]["type"] == "forbidden"
    with pytest.raises(ConfigError, match="failure: expected"):
        AnalysisRequest.of("a", failure=("wanted", "x"))


def replace_failure(request: AnalysisRequest, failure: tuple[str, str]) -> AnalysisRequest:
    from dataclasses import replace

    return replace(request, failure=failure)
