"""The report's JSON Schemas (rca@2 and the kept rca@1), the rca@2 golden file, the confidence formula."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from forensics.rca.result import REPORT_SCHEMA, REPORT_SCHEMAS, RCAResult

jsonschema = pytest.importorskip("jsonschema")

DOCS = Path(__file__).resolve().parents[1] / "docs"
GOLDEN = Path(__file__).resolve().parent / "golden" / "report_rca2.json"
SCHEMA_FILES = {
    "model-forensics/rca@1": DOCS / "report-rca1.schema.json",
    "model-forensics/rca@2": DOCS / "report.schema.json",
}


def schema_for(schema_id: str) -> dict[str, Any]:
    """The JSON Schema document of a report schema id."""
    return dict(json.loads(SCHEMA_FILES[schema_id].read_text()))


def validator_for(schema_id: str) -> Any:
    schema = schema_for(schema_id)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def golden() -> dict[str, Any]:
    return dict(json.loads(GOLDEN.read_text()))


def confidence_of(terms: dict[str, Any]) -> float:
    """docs/report-schema.md, section "Confidence", written out once more as the test's oracle."""
    if not (terms["faithful"] and terms["validated"]):
        return 0.0
    r = min(1.0, max(0.0, terms["recovery"])) if terms["recovery"] is not None else 0.0
    margin = max(0.0, terms["margin"])
    s = terms["specificity"] if terms["specificity"] is not None else 0.5
    h = 0.5 if terms["suppression"] else 1.0
    return round(s * (0.45 * r + 0.35 * margin / (margin + 1) + 0.2 / terms["size"]) * h, 4)


def test_every_accepted_id_has_a_schema_file() -> None:
    assert set(REPORT_SCHEMAS) == set(SCHEMA_FILES) and REPORT_SCHEMA in REPORT_SCHEMAS
    for schema_id in REPORT_SCHEMAS:
        assert schema_for(schema_id)["properties"]["schema"] == {"const": schema_id}


def test_golden_rca2_validates() -> None:
    report = golden()
    validator_for("model-forensics/rca@2").validate(report)
    assert not validator_for("model-forensics/rca@1").is_valid(report)  # the id says which format it is


def test_golden_is_consistent_with_the_documented_formulas() -> None:
    """Recovery, confidence, fix_set == fix_sets[0]: the golden is an example a reader can check by hand."""
    report = golden()
    d, fix, terms = report["decision"], report["fix_set"], report["confidence_terms"]
    assert fix == report["fix_sets"][0]
    assert fix["recovery"] == pytest.approx(
        (fix["metric"] - d["m_incident"]) / (d["m_baseline"] - d["m_incident"]), abs=1e-4
    )
    assert terms["recovery"] == fix["recovery"] and terms["margin"] == fix["metric"] and terms["size"] == fix["size"]
    effects = fix["side_effects"]
    assert terms["specificity"] == 1 - effects["changed"] / effects["checked"]
    assert report["confidence"] == confidence_of(terms)
    assert report["incident"]["generated_tokens"][report["incident"]["decision_step"]] == report["incident"]["observed"]
    assert d["near_tie"]["evaluated_singles"] == len(report["single_effects"])
    assert d["near_tie"]["flipping_singles"] == sum(e["fixed"] for e in report["single_effects"])


@pytest.mark.parametrize(
    "terms, expected",
    [
        (
            {
                "faithful": True,
                "validated": True,
                "recovery": 1.0,
                "margin": 1e9,
                "specificity": 1.0,
                "size": 1,
                "suppression": False,
            },
            1.0,
        ),
        (
            {
                "faithful": False,
                "validated": True,
                "recovery": 1.0,
                "margin": 3.0,
                "specificity": 1.0,
                "size": 1,
                "suppression": False,
            },
            0.0,
        ),
        (
            {
                "faithful": True,
                "validated": True,
                "recovery": None,
                "margin": 1.0,
                "specificity": None,
                "size": 2,
                "suppression": False,
            },
            0.1375,
        ),  # 0.5 x (0 + 0.175 + 0.1)
        (
            {
                "faithful": True,
                "validated": True,
                "recovery": 2.3,
                "margin": -0.2,
                "specificity": 0.5,
                "size": 1,
                "suppression": True,
            },
            0.1625,
        ),  # 0.5 x (0.45 + 0 + 0.2) x 0.5
    ],
)
def test_confidence_formula_examples(terms: dict[str, Any], expected: float) -> None:
    """The documented formula and the implementation agree (forensics.rca.confidence)."""
    from forensics.rca.confidence import ConfidenceTerms, confidence

    assert confidence_of(terms) == pytest.approx(expected, abs=1e-4)
    assert confidence(ConfidenceTerms(**terms)) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "broken",
    [
        {"schema": "model-forensics/rca@1"},
        {"confidence": 1.5},
        {"fix_set": {"interventions": []}},
        {"compression_metrics": [{"module": "m"}]},
        {"input_level": [{"source": "b"}]},
        {"not_evaluated": [{"what": "layers 0-3"}]},
        {"commands": {"reproduce": "model-forensics analyze b"}},
        {"confidence_terms": {"faithful": True}},
        {"confidence_terms": {**golden()["confidence_terms"], "size": 0}},
    ],
)
def test_rca2_schema_rejects(broken: dict[str, Any]) -> None:
    assert not validator_for("model-forensics/rca@2").is_valid({**golden(), **broken})


def test_rca2_schema_requires_and_allows_nulls() -> None:
    validator = validator_for("model-forensics/rca@2")
    report = golden()
    for key in schema_for("model-forensics/rca@2")["required"]:
        assert not validator.is_valid({k: v for k, v in report.items() if k != key}), key
    for key in ("verdict", "side_effects", "regenerated", "positions"):
        fix = {k: v for k, v in report["fix_set"].items() if k != key}
        assert not validator.is_valid({**report, "fix_set": fix}), key
    unavailable = copy.deepcopy(report)  # recovery unavailable, no benign bundles, nothing regenerated, no prompt
    unavailable["fix_set"].update(recovery=None, side_effects=None, regenerated=None)
    unavailable["decision"].update(m_baseline=None, recovery_available=False, recovery_note="no baseline says it")
    unavailable["single_effects"][0]["recovery"] = None
    unavailable["incident"]["prompt"] = None
    unavailable["fix_set"]["interventions"][0]["head"] = 3
    validator.validate(unavailable)
    validator.validate({**report, "fix_set": None, "fix_sets": [], "confidence": 0.0, "confidence_terms": None})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**report, "fix_set": {**report["fix_set"], "verdict": "fixed"}})


def test_rca1_schema_still_reads_rca1_reports() -> None:
    """The kept rca@1 schema: an rca@2 golden cut back to rca@1's fields validates."""
    rca1_keys = set(schema_for("model-forensics/rca@1")["properties"])
    report = {k: v for k, v in golden().items() if k in rca1_keys}
    report["schema"] = "model-forensics/rca@1"
    fix = report["fix_set"]
    report["fix_set"] = {
        k: fix[k] for k in ("interventions", "validated", "recovery", "metric", "fixed", "argmax_token", "size")
    }
    validator_for("model-forensics/rca@1").validate(report)


def test_schema_lists_every_field_rcaresult_writes() -> None:
    """A new RCAResult field must be documented in the schema of the id it writes (and in report-schema.md)."""
    schema = schema_for(REPORT_SCHEMA)
    keys = set(RCAResult("b", 0.0, 0.0, [], None, {}, {}, {}).to_dict())
    assert keys == set(schema["properties"])
    doc = (DOCS / "report-schema.md").read_text()
    assert all(f"`{k}`" in doc for k in set(schema_for("model-forensics/rca@2")["properties"]) | keys)


def test_doc_states_the_confidence_formula() -> None:
    doc = (DOCS / "report-schema.md").read_text()
    assert "round(S · (0.45·R + 0.35·M + 0.2·Z) · h, 4)" in doc and "## rca@1: what changed" in doc
