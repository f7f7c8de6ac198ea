"""A bundle written before manifests carried ``inputs.spans`` (tests/golden/bundle_v1_nospans) still loads."""

from __future__ import annotations

from pathlib import Path

from forensics.bundle import load_bundle

GOLDEN = Path(__file__).parent / "golden" / "bundle_v1_nospans"


def test_old_bundle_without_spans_loads() -> None:
    bundle = load_bundle(GOLDEN)
    assert bundle.id == "bundle_v1_nospans"
    assert bundle.inputs["prompt"] == "Hi. Go"
    assert bundle.inputs["input_ids"] == [40, 73, 14, 221, 39, 79]
    assert "spans" not in bundle.inputs
    assert bundle.outputs["generated_ids"] == [150, 29]
    assert bundle.activation("model.layers.1").shape == (7, 64)
