"""``inputs.spans`` and ``external_calls[].span`` in the manifest schema: optional, ranged, cross-linked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from forensics.bundle import load_bundle, write_bundle
from tests.test_manifest_schema import ACTS, recorded_manifest, refused, rewrite

SPANS = [
    {"kind": "sentence", "index": 0, "chars": [0, 27], "tokens": [0, 3]},
    {"kind": "external", "name": "search", "call": 0, "chars": [4, 11], "tokens": [1, 2]},
]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    manifest = recorded_manifest()
    manifest["inputs"]["spans"] = SPANS
    manifest["external_calls"][0]["span"] = 1
    write_bundle(tmp_path / "inc", manifest, ACTS)
    return tmp_path / "inc"


def test_spans_load(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    assert loaded.inputs["spans"] == SPANS and loaded.manifest["external_calls"][0]["span"] == 1


def _spans(change: Any) -> Any:
    return lambda m: change(m["inputs"]["spans"], m)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s, m: s[0].update(tokens=[0, 4]),
            r"inputs.spans\[0\].tokens: expected a range within inputs.input_ids \(0 <= start <= end <= 3\), got \[0, 4\]",
        ),
        (lambda s, m: s[0].update(tokens=[2, 1]), r"inputs.spans\[0\].tokens: expected a range within"),
        (lambda s, m: s[0].update(kind="document"), r"inputs.spans\[0\].kind: expected one of 'message'"),
        (lambda s, m: s[0].update(tokens=[0]), r"inputs.spans\[0\].tokens: expected a range \[start, end\)"),
        (lambda s, m: s[1].update(role="robot"), r"inputs.spans\[1\].role: expected a chat role"),
        (lambda s, m: s[1].update(call=5), r"inputs.spans\[1\].call: expected an index into external_calls \(< 1\)"),
        (lambda s, m: s[1].pop("tokens"), r"inputs.spans\[1\]: missing required key 'tokens'"),
        (
            lambda s, m: m["external_calls"][0].update(span=7),
            r"external_calls\[0\].span: expected an index into inputs.spans \(< 2\), got 7",
        ),
    ],
)
def test_bad_spans_are_refused_naming_the_field(bundle: Path, change: Any, message: str) -> None:
    rewrite(bundle, _spans(change))
    assert re.search(message, refused(bundle)), refused(bundle)
