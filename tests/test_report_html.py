"""HTML report: self-contained, escaped, both plots drawn from the JSON report; the report schema."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from forensics.models import LoadedModel
from forensics.rca import RCAPipeline
from forensics.rca.cca import FixSet
from forensics.rca.report_html import render_html, threshold_of, verdict, write_html
from forensics.rca.report_svg import column_label, recovery_colour, site_of
from forensics.rca.result import REPORT_SCHEMA, RCAResult
from forensics.replay.interventions import Intervention

HOSTILE = "<script>alert(1)</script>"
DOCS = Path(__file__).resolve().parents[1] / "docs"
SCHEMA_FILES = {"model-forensics/rca@1": DOCS / "report-rca1.schema.json",
                "model-forensics/rca@2": DOCS / "report.schema.json"}


def _metric(module: str, score: float, threshold: float = 2.0) -> dict[str, Any]:
    return {"module": module, "ratios": {"zlib": 0.41, "lzma": 0.38}, "baseline_mean": {"zlib": 0.45, "lzma": 0.40},
            "baseline_std": {"zlib": 0.01, "lzma": 0.01}, "z_scores": {"zlib": -score, "lzma": -score / 2},
            "score": score, "is_anomalous": score > threshold}


def _single(module: str, kind: str, recovery: float, *, fixed: bool = False, source: str | None = None,
            token: str = " Sydney") -> dict[str, Any]:
    iv: dict[str, Any] = {"module": module, "kind": kind, "positions": "last"}
    if source is not None:
        iv["source"] = source
    return {"interventions": [iv], "metric": -2.0 + 3.5 * recovery, "recovery": recovery, "fixed": fixed,
            "argmax_token": token}


@pytest.fixture
def report() -> dict[str, Any]:
    """A 3-layer llama-style incident: the fault is planted in layer 1's MLP."""
    mods = [f"model.layers.{i}.{s}" for i in range(3) for s in ("self_attn", "mlp")] + ["model.layers.2"]
    scores = {"model.layers.0.self_attn": 0.4, "model.layers.0.mlp": 0.9, "model.layers.1.self_attn": 1.1,
              "model.layers.1.mlp": 6.3, "model.layers.2.self_attn": 1.7, "model.layers.2.mlp": 2.4,
              "model.layers.2": 3.1}
    singles = [_single(m, k, 0.05 * i - 0.2) for i, (m, k) in enumerate((m, k) for m in mods for k in ("zero", "mean"))]
    singles[6] = _single("model.layers.1.mlp", "zero", 1.12, fixed=True, token=" Canberra")
    singles.append(_single("model.layers.1.mlp", "patch", 1.4, fixed=True, source="benign_3", token=" Canberra"))
    fix_iv = {"module": "model.layers.1.mlp", "kind": "zero", "positions": "last"}
    return {
        "schema": REPORT_SCHEMA, "version": "0.1.0", "bundle_id": "australia", "bundle_path": "/b/australia",
        "confidence": 1.0, "execution_time": 3.21,
        "compression_metrics": [_metric(m, scores[m]) for m in mods],
        "fix_set": {"interventions": [fix_iv], "validated": True, "recovery": 1.12, "metric": 1.92, "fixed": True,
                    "argmax_token": " Canberra", "size": 1},
        "replays": {"forward_passes": 12, "candidates": 15, "evaluated": 17, "budget_exhausted": False},
        "fidelity": {"faithful": True, "tolerance": 1e-4, "max_logit_diff": 2e-6, "max_activation_diff": 3e-6,
                     "first_divergent": None, "module_diffs": {m: 1e-6 for m in mods}},
        "decision": {"step": 0, "observed": " Sydney", "observed_id": 11, "target": " Canberra", "target_id": 12,
                     "failure": {"type": "expected", "text": " Canberra", "token_ids": [12], "regex": False},
                     "m_incident": -2.0, "m_baseline": 1.5},
        "localisation": [{"layer": 1, "score": 6.3, "onset": 5.2, "anomalous": True, "rank": 1,
                          "modules": ["model.layers.1.mlp", "model.layers.1.self_attn"]},
                         {"layer": 0, "score": 0.9, "onset": 0.9, "anomalous": False, "rank": 2,
                          "modules": ["model.layers.0.mlp", "model.layers.0.self_attn"]},
                         {"layer": 2, "score": 3.1, "onset": 0.0, "anomalous": True, "rank": 3,
                          "modules": ["model.layers.2", "model.layers.2.mlp", "model.layers.2.self_attn"]}],
        "single_effects": singles,
        "search": {"strategy": "greedy", "steps": [{"size": 1, "evaluated": 15, "best_recovery": 1.4}],
                   "best_partial": None},
        "baselines": {"population": ["benign_1", "benign_2", "benign_3"], "patch_sources": ["benign_3"],
                      "paths": {"benign_3": "/b/benign_3"}},
        "model": {"ref": "tiny-llama", "kind": "hf_dir", "path": "/m/tiny", "sha256": "3fa2c0ffee" * 6 + "abcd",
                  "family": "llama", "dtype": "float32", "device": "cpu", "num_layers": 3},
        "cf": {"anomaly_threshold": 2.0},
        "timings": {"load": 0.4, "cf": 0.3, "cca": 2.5},
        "notes": ["no counterfactual baseline for benign_9"],
        "provenance": None,
        "export_path": "/r/australia.json",
    }


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


# -- self-contained -------------------------------------------------------------------------------
def test_page_is_self_contained(report: dict[str, Any]) -> None:
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    for needle in ("http://", "https://", "src=", "href=", "<script", "<link", "@import", "url(", "<img", "<iframe"):
        assert needle not in page.lower(), needle
    assert "script-src" not in page and "default-src 'none'" in page  # CSP forbids scripts outright


def test_one_svg_per_plot(report: dict[str, Any]) -> None:
    svgs = _svgs(render_html(report))
    assert len(svgs) == 2
    assert "CF anomaly score" in svgs[0] and "recovery of single interventions" in svgs[1]


# -- CF bar chart ---------------------------------------------------------------------------------
def test_bars_one_per_module_anomalous_highlighted(report: dict[str, Any]) -> None:
    chart = _svgs(render_html(report))[0]
    bars = re.findall(r'<rect class="(bar[^"]*)"[^>]*><title>([^<]*)</title>', chart)
    assert len(bars) == len(report["compression_metrics"])
    hot = {title.split(":")[0] for cls, title in bars if "anomalous" in cls}
    assert hot == {m["module"] for m in report["compression_metrics"] if m["is_anomalous"]}
    assert hot == {"model.layers.1.mlp", "model.layers.2.mlp", "model.layers.2"}
    assert [label for label in re.findall(r'class="layer"[^>]*>([^<]*)<', chart)] == ["L0", "L1", "L2"]


def test_threshold_line_at_threshold_height(report: dict[str, Any]) -> None:
    """The dashed line sits where a bar of score == threshold would end."""
    report["compression_metrics"].append(_metric("model.layers.0", 2.0, threshold=9.0))  # a bar exactly at 2.0
    chart = _svgs(render_html(report))[0]
    line = re.search(r'<line class="threshold" x1="[^"]*" y1="([^"]*)" x2="[^"]*" y2="([^"]*)"', chart)
    assert line is not None and line.group(1) == line.group(2)
    bar = re.search(r'<rect class="bar" x="[^"]*" y="([^"]*)"[^>]*><title>model.layers.0: score 2.0000', chart)
    assert bar is not None and float(bar.group(1)) == pytest.approx(float(line.group(1)), abs=0.11)
    assert "threshold 2.00" in chart


def test_threshold_sources_in_order(report: dict[str, Any]) -> None:
    assert threshold_of(report) == 2.0
    report["cf"] = {"anomaly_threshold": 3.5}
    assert threshold_of(report) == 3.5
    report["search"]["cf_threshold"] = 4.0
    assert threshold_of(report) == 4.0
    assert threshold_of({}) == 2.0
    assert "threshold 5.50" in render_html(report, threshold=5.5)


# -- heatmap --------------------------------------------------------------------------------------
def test_heatmap_one_cell_per_single_effect(report: dict[str, Any]) -> None:
    heat = _svgs(render_html(report))[1]
    assert len(re.findall(r'<g class="cell', heat)) == len(report["single_effects"])
    assert len(re.findall(r'<g class="cell fixed"', heat)) == 2
    rows = re.findall(r'class="layer"[^>]*>([^<]*)<', heat)
    assert rows == ["L0", "L1", "L2"]
    assert "mlp/zero/last" in heat and "block/mean/last" in heat and "mlp/patch/last" in heat


def test_heatmap_tooltips_hold_exact_values(report: dict[str, Any]) -> None:
    heat = _svgs(render_html(report))[1]
    assert "model.layers.1.mlp patch last from benign_3\nrecovery 1.4000, metric 2.9000" in heat
    assert "FIXED the failure alone" in heat


def test_heatmap_colour_scale_diverges_and_clips() -> None:
    assert recovery_colour(0.0) == "#f7f7f7"
    assert recovery_colour(-1.0) == recovery_colour(-7.0) == "#b2182b"
    assert recovery_colour(1.5) == recovery_colour(40.0) == "#2166ac"
    assert recovery_colour(float("nan")) == "#f7f7f7"


def test_heatmap_separates_patch_sources_only_when_needed() -> None:
    iv = {"module": "transformer.h.7.attn", "kind": "patch", "positions": [3, 4], "source": "b1"}
    assert column_label(iv) == "attn/patch/p3,4"
    assert column_label(iv, with_source=True) == "attn/patch[b1]/p3,4"
    assert [site_of(m) for m in ("model.layers.7", "model.layers.7.mlp.down_proj", "lm_head")] == \
        ["block", "mlp.down_proj", "lm_head"]


def test_two_patch_sources_get_two_cells(report: dict[str, Any]) -> None:
    report["single_effects"].append(_single("model.layers.1.mlp", "patch", 0.7, source="benign_2"))
    heat = _svgs(render_html(report))[1]
    assert len(re.findall(r'<g class="cell', heat)) == len(report["single_effects"])
    assert "mlp/patch[benign_2]/last" in heat and "mlp/patch[benign_3]/last" in heat


# -- header, tables -------------------------------------------------------------------------------
def test_header_and_fix_table(report: dict[str, Any]) -> None:
    page = render_html(report)
    assert "Validated minimal fix set of 1 intervention<" in page
    assert "australia" in page and "tiny-llama" in page and "3fa2c0ffee3f" in page
    assert "&quot; Sydney&quot;" in page and "&quot; Canberra&quot;" in page  # tokens shown as literals
    assert "1.00" in page and "3.21 s" in page
    fix = page[page.index('id="fix"') :]
    assert "<code>model.layers.1.mlp</code></td><td>zero</td><td>last</td>" in fix
    assert "validated</dt><dd><span class=\"yes\">yes" in fix
    assert "no counterfactual baseline for benign_9" in page
    assert "forward passes</dt><dd>12" in page and "15 / 17" in page


def test_verdicts() -> None:
    assert verdict({"fix_set": None}) == ("No fix set found", "none")
    assert verdict({"fix_set": None, "fidelity": {"faithful": False}})[0].startswith("No fix set found: replay not")
    two = {"interventions": [{}, {}], "size": 2, "validated": True}
    assert verdict({"fix_set": two}) == ("Validated minimal fix set of 2 interventions", "ok")
    assert verdict({"fix_set": {**two, "validated": False}})[1] == "warn"


def test_hostile_text_is_escaped(report: dict[str, Any]) -> None:
    report["bundle_id"] = HOSTILE
    report["decision"]["observed"] = HOSTILE
    report["decision"]["failure"]["text"] = HOSTILE
    report["fix_set"]["argmax_token"] = HOSTILE
    report["single_effects"][0]["argmax_token"] = HOSTILE
    report["single_effects"][0]["interventions"][0]["module"] = f"model.layers.0.{HOSTILE}"
    report["compression_metrics"][0]["module"] = f"model.layers.0.{HOSTILE}\"onload=\"x"
    report["notes"].append(HOSTILE)
    report["model"]["ref"] = HOSTILE
    report["provenance"] = {"tokens": [HOSTILE]}
    page = render_html(report)
    assert "<script" not in page.lower()
    assert 'onload="x' not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 8


# -- graceful with missing sections ---------------------------------------------------------------
def test_no_fix_no_metrics_no_effects(report: dict[str, Any]) -> None:
    report.update(fix_set=None, compression_metrics=[], single_effects=[], localisation=[], notes=[], confidence=0.0)
    page = render_html(report)
    assert "No fix set found" in page and "No fix set and no partial set found" in page
    assert _svgs(page) == []
    assert "No CF metrics" in page and "No single-intervention effects" in page and "No layer ranking" in page


def test_best_partial_shown_without_fix(report: dict[str, Any]) -> None:
    report["fix_set"] = None
    report["search"]["best_partial"] = _single("model.layers.2.mlp", "mean", 0.4, token=" Perth")
    page = render_html(report)
    part = page[page.index('id="fix"') :]
    assert "best partial set" in part and "model.layers.2.mlp" in part and "&quot; Perth&quot;" in part


def test_minimal_report_renders() -> None:
    """Only the required keys; fidelity, decision, search and model absent (CCA never ran)."""
    page = render_html({"schema": REPORT_SCHEMA, "version": "0.1.0", "bundle_id": "x", "confidence": 0.0,
                        "execution_time": 0.1, "compression_metrics": [], "fix_set": None, "replays": {},
                        "export_path": None})
    assert "No fix set found" in page and "</html>" in page


# -- write_html -----------------------------------------------------------------------------------
def test_write_html_atomic_from_dict_and_result(report: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    assert write_html(report, target) == str(target)
    assert target.read_text(encoding="utf-8") == render_html(report)
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]  # no temp file left
    assert target.stat().st_mode & 0o777 == 0o644
    result = RCAResult(bundle_id="r1", confidence=0.7, execution_time=1.0, compression_metrics=[],
                       fix_set=FixSet((Intervention("model.layers.0.mlp", "zero"),), True, 1.0, 0.5, True, " a"),
                       replays={"forward_passes": 3, "candidates": 2, "evaluated": 2}, fidelity={}, decision={})
    path = write_html(result, tmp_path / "new" / "r1.html")
    assert "Validated minimal fix set of 1 intervention" in Path(path).read_text(encoding="utf-8")


def test_write_html_failure_keeps_old_file(report: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")

    def boom(src: str, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_html(report, target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# -- end to end -----------------------------------------------------------------------------------
def test_pipeline_report_validates_and_renders(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    """A real analysis on a tiny model: its JSON report matches the schema and its page has both plots."""
    from forensics.record import record_greedy

    incident = record_greedy(tiny_llama, "The capital of Australia is", tmp_path / "inc", kind="incident", max_new_tokens=3).bundle
    for i, prompt in enumerate(["The capital of France is", "One plus one is", "The answer is"]):
        record_greedy(tiny_llama, prompt, tmp_path / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2)
    result = RCAPipeline().analyze_incident(incident.path, baseline=str(tmp_path / "benign"), model=tiny_llama,
                                            output=tmp_path / "r.json", html=tmp_path / "r.html")
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILES[report["schema"]].read_text())).validate(report)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(_svgs(page)) == 2 and "https://" not in page and "src=" not in page
    assert len(re.findall(r'<g class="cell', page)) == len(report["single_effects"]) == len(result.single_effects)
    assert len(re.findall(r'<rect class="bar', page)) == len(report["compression_metrics"])
