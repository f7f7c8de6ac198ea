"""Sibling incidents: an incident's fix sets replayed, position-free, on other incidents of its family."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from forensics.bundle import Bundle, load_bundle
from forensics.cca.fixset import FixSet
from forensics.config import Config, load_config
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.rca import AnalysisRequest, RCAPipeline
from forensics.rca.confidence import ConfidenceTerms, confidence, explain
from forensics.rca.siblings import (
    RAW_POSITIONS_NOTE,
    Found,
    SiblingReport,
    find_siblings,
    position_free,
    replay_on_siblings,
    sibling_dirs,
)
from forensics.record import record_greedy
from forensics.replay import Intervention
from forensics.replay.replayer import Replayer
from forensics.report.html import render_html
from forensics.report.text import print_summary

PHRASINGS = [
    "The capital of Australia is",
    "Australia's capital is",
    "The capital city of Australia is",
    "Fact: the capital of Australia is",
]
BENIGN = ["The capital of France is", "One plus one is", "The answer is"]


def _incident(loaded: LoadedModel, prompt: str, out: Path, answer: int, family: str | None = None) -> Bundle:
    spec = FailureSpec("expected", "", (answer,))
    return record_greedy(loaded, prompt, out, spec, kind="incident", max_new_tokens=2, failure_family=family).bundle


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tiny_gpt2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``benign/``: the population, plus incidents labelled ``au`` (siblings by label, in the population);
    ``spec/``: four phrasings with one failure spec, a corrupt copy, an unreadable bundle, a link out;
    ``label/``: a labelled incident, an unlabelled one with the same spec, a labelled one of another model."""
    root = tmp_path_factory.mktemp("siblings")
    benign = [
        record_greedy(tiny_llama, p, root / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2).bundle
        for i, p in enumerate(BENIGN)
    ]
    answer = int(benign[0].outputs["generated_ids"][0])
    for i, prompt in enumerate(PHRASINGS):
        _incident(tiny_llama, prompt, root / "spec" / f"m{i}", answer)
    shutil.copytree(root / "spec" / "m1", root / "spec" / "m1-corrupt")
    data = root / "spec" / "m1-corrupt" / "activations.arrow"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    (root / "spec" / "m9-unreadable").mkdir()
    (root / "spec" / "m9-unreadable" / "manifest.json").write_text("{not json")
    _incident(tiny_llama, "Australia has its capital in", root / "outside" / "m5", answer)
    os.symlink(root / "outside" / "m5", root / "spec" / "m5-link")
    _incident(tiny_llama, PHRASINGS[0], root / "label" / "au0", answer, family="au")
    _incident(tiny_llama, PHRASINGS[1], root / "label" / "au1-unlabelled", answer)
    _incident(tiny_gpt2, PHRASINGS[2], root / "label" / "au2-gpt2", 5, family="au")
    for i, prompt in enumerate(PHRASINGS[1:], start=1):
        _incident(tiny_llama, prompt, root / "benign" / f"au{i}", answer, family="au")
    return {"root": root, "population": str(root / "benign"), "answer": answer}


def _analyse(lab: dict[str, Any], incident: Path, model: LoadedModel, config: Config | None = None) -> dict[str, Any]:
    request = AnalysisRequest.of(str(incident), population=lab["population"], model=model)
    return RCAPipeline(config).run(request).to_dict()


@pytest.fixture(scope="module")
def by_spec(lab: dict[str, Any], tiny_llama: LoadedModel) -> dict[str, Any]:
    return _analyse(lab, lab["root"] / "spec" / "m0", tiny_llama)


def test_siblings_found_by_spec_are_replayed_and_reported(by_spec: dict[str, Any]) -> None:
    report = by_spec
    search = report["siblings"]
    assert search["key"][0] == "spec" and search["found"] == 4  # m1..m3 and m1's corrupt copy, not m0 itself
    assert [r["bundle_id"] for r in search["replayed"]] == ["m1", "m2", "m3"]
    assert report["fix_sets"], "the tiny incident has a fix set"
    for fix in report["fix_sets"]:
        section = fix["siblings"]
        print(fix["interventions"], section["statement"])
        assert section["replayed"] and section["held_out_of"] == 3 == len(section["per_sibling"])
        assert section["held_out"] == sum(r["fixed"] for r in section["per_sibling"])
        assert section["statement"] == f"fixes {section['held_out']} of 3 sibling incidents (replayed position-free)"
        for row in section["per_sibling"]:
            assert row["margin_before"] > 0 and (row["margin_after"] > 0) == row["fixed"]
        for how in section["mapped"]:
            assert how["as"]["positions"] in ("all", "last")
            assert how["as"] == {**how["intervention"], "positions": how["as"]["positions"]}
        raw = any(
            isinstance(h["intervention"]["positions"], list) and h["as"]["positions"] == "all"
            for h in section["mapped"]
        )
        assert (section["note"] == RAW_POSITIONS_NOTE) == raw
    assert report["fix_set"] == report["fix_sets"][0]
    best = report["fix_set"]["siblings"]
    assert best["statement"] in report["summary"] and best["statement"] in search["statement"]
    assert "siblings" in report["timings"]


def test_the_confidence_uses_the_share_of_siblings_fixed(by_spec: dict[str, Any]) -> None:
    terms, best = by_spec["confidence_terms"], by_spec["fix_set"]["siblings"]
    assert (terms["siblings_fixed"], terms["siblings_checked"]) == (best["held_out"], best["held_out_of"])
    assert by_spec["confidence"] == confidence(ConfidenceTerms(**terms))
    without = confidence(ConfidenceTerms(**{**terms, "siblings_fixed": None, "siblings_checked": None}))
    assert by_spec["confidence"] == pytest.approx(without * (0.5 + 0.5 * best["held_out"] / 3), abs=1e-4)
    assert "sibling incidents replayed position-free" in by_spec["confidence_explanation"]


def test_a_corrupt_sibling_an_unreadable_one_and_a_link_out_are_skipped_with_a_note(by_spec: dict[str, Any]) -> None:
    skipped = {s["what"]: s["why"] for s in by_spec["siblings"]["skipped"]}
    assert "sha256" in skipped["sibling m1-corrupt"]  # its manifest reads, its activations fail their checksum
    assert "manifest cannot be read" in skipped["bundle m9-unreadable"]
    assert any("not followed" in why for what, why in skipped.items() if "m5-link" in what)
    assert "m5" not in [r["bundle_id"] for r in by_spec["siblings"]["replayed"]]
    notes = " ".join(by_spec["notes"])
    assert "skipped" in notes and "m9-unreadable" in notes and "m5-link" in notes


def test_siblings_found_by_label_and_another_model_skipped(lab: dict[str, Any], tiny_llama: LoadedModel) -> None:
    report = _analyse(lab, lab["root"] / "label" / "au0", tiny_llama)
    search = report["siblings"]
    assert search["key"] == ["label", "au"]
    replayed = [r["bundle_id"] for r in search["replayed"]]
    assert replayed == ["au1", "au2", "au3"]  # in the population directory; the unlabelled neighbour is not one
    skipped = {s["what"]: s["why"] for s in search["skipped"]}
    assert "another model" in skipped["sibling au2-gpt2"]
    assert all(f["siblings"]["held_out_of"] == 3 for f in report["fix_sets"] if f["siblings"]["replayed"])


def test_the_switch_turns_it_off(lab: dict[str, Any], tiny_llama: LoadedModel, by_spec: dict[str, Any]) -> None:
    config = load_config(overrides={"modules.cca.siblings": False})
    report = _analyse(lab, lab["root"] / "spec" / "m0", tiny_llama, config)
    assert report["siblings"] is None and all(f["siblings"] is None for f in report["fix_sets"])
    assert report["confidence_terms"]["siblings_checked"] is None
    assert {"what": "the replay on sibling incidents", "why": "modules.cca.siblings is false"} in report[
        "not_evaluated"
    ]
    assert report["fix_sets"][0]["interventions"] == by_spec["fix_sets"][0]["interventions"]  # the search is the same


def test_an_incident_without_siblings_costs_no_replay(
    lab: dict[str, Any], tiny_llama: LoadedModel, tmp_path: Path
) -> None:
    _incident(tiny_llama, PHRASINGS[0], tmp_path / "alone" / "a0", lab["answer"], family="lonely")
    report = _analyse(lab, tmp_path / "alone" / "a0", tiny_llama)
    search = report["siblings"]
    assert search["found"] == 0 and search["replayed"] == [] and "no sibling incident" in search["statement"]
    assert "siblings" not in report["timings"] and report["confidence_terms"]["siblings_checked"] is None
    assert all(f["siblings"] is None for f in report["fix_sets"])

    def never(bundle: Bundle) -> Replayer:
        raise AssertionError("no sibling, no replayer")

    fix = FixSet((Intervention("m", "zero", "last"),), True, 1.0, 1.0, True, "")
    empty = replay_on_siblings([fix], Found(("label", "x"), []), never, length=4)
    assert empty.sections == [None] and empty.best() is None


def test_at_most_the_nearest_by_name_and_the_rest_counted(lab: dict[str, Any]) -> None:
    incident = load_bundle(lab["root"] / "spec" / "m0")
    dirs = sibling_dirs(incident, lab["population"])
    assert dirs == [(lab["root"] / "benign").resolve(), (lab["root"] / "spec").resolve()]
    found = find_siblings(incident, dirs, sha256=incident.model["sha256"], limit=2)
    assert [Path(p).name for p in found.paths] == ["m1", "m1-corrupt"] and found.left_out == 2
    assert "(the 2 nearest by name; 2 more left out)" in SiblingReport(found).statement()


def test_positions_map_to_position_free_forms() -> None:
    iv = Intervention("model.layers.1.mlp", "zero", (3,))
    assert position_free(iv, 4) == (Intervention("model.layers.1.mlp", "zero", "last"), "the decision position -> last")
    assert position_free(Intervention("m", "zero", "last"), 9)[0].positions == "last"
    assert position_free(Intervention("m", "zero", (0, 1, 2, 3)), 4)[0].positions == "all"
    mapped, how = position_free(Intervention("m", "mean", (1, 2)), 4)
    assert mapped.positions == "all" and how == "positions 1, 2 of this prompt -> all"


def test_confidence_factor_without_and_with_siblings() -> None:
    base = ConfidenceTerms(True, True, 1.0, 1e9, 1.0, 1, False)
    assert confidence(base) == 1.0
    assert (
        confidence(ConfidenceTerms(True, True, 1.0, 1e9, 1.0, 1, False, siblings_fixed=0, siblings_checked=4)) == 0.5
    )  # transfers to none: halved
    assert (
        confidence(ConfidenceTerms(True, True, 1.0, 1e9, 1.0, 1, False, siblings_fixed=4, siblings_checked=4)) == 1.0
    )  # to all: kept
    assert (
        confidence(ConfidenceTerms(True, True, 1.0, 1e9, 1.0, 1, False, siblings_fixed=0, siblings_checked=0)) == 1.0
    )  # none checked: no factor
    assert "× 0.75: it fixes 2 of 4 sibling" in explain(
        ConfidenceTerms(True, True, 1.0, 1e9, 1.0, 1, False, siblings_fixed=2, siblings_checked=4)
    )
    assert "sibling" not in explain(base)


def test_the_report_validates_and_renders_its_siblings(
    by_spec: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_report_schema import validator_for

    validator_for("model-forensics/rca@2").validate(json.loads(json.dumps(by_spec)))
    page = render_html(by_spec)
    assert "sibling incidents (replayed position-free)" in page and "The report&#x27;s confidence" not in page
    assert "H (siblings, held out)" in page
    print_summary(by_spec)
    out = capsys.readouterr().out
    assert "  siblings: fixes " in out and "m1 " in out


@pytest.mark.slow
def test_smollm2_australia_fix_replayed_on_its_phrasings(smol: LoadedModel, tmp_path: Path) -> None:
    """The demo incident and three other wordings of it (expected " Canberra"): the report carries the
    replay of its fix sets on them. Whether they transfer is printed, not asserted."""
    spec = FailureSpec.expected(" Canberra", smol.tokenizer)
    for i, prompt in enumerate(["The capital of France is", "The capital of Japan is", "The capital of Italy is"]):
        record_greedy(smol, prompt, tmp_path / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=3)
    prompts = [
        "The capital of Australia is",
        "The capital city of Australia is",
        "Fact: the capital of Australia is",
        "The Australian capital is",
    ]
    runs = [record_greedy(smol, p, tmp_path / "au" / f"au{i}", spec, max_new_tokens=4) for i, p in enumerate(prompts)]
    for p, run in zip(prompts, runs, strict=True):
        print(f"{p!r} -> {run.text!r} (failure: {run.bundle.kind == 'incident'})")
    request = AnalysisRequest.of(str(tmp_path / "au" / "au0"), population=str(tmp_path / "benign"), model=smol)
    report = RCAPipeline().run(request).to_dict()
    print_summary(report)
    print(json.dumps(report["siblings"], indent=1))
    for fix in report["fix_sets"]:
        print(json.dumps({"interventions": fix["interventions"], "siblings": fix["siblings"]}, indent=1))
    failing = sum(run.bundle.kind == "incident" for run in runs[1:])
    assert report["siblings"]["found"] == failing
    if report["fix_sets"] and failing:
        section = report["fix_set"]["siblings"]
        assert section is not None and len(section["per_sibling"]) == section["held_out_of"] + sum(
            r["refused"] is not None for r in section["per_sibling"]
        )
        assert report["confidence_terms"]["siblings_checked"] == section["held_out_of"] or not section["held_out_of"]
