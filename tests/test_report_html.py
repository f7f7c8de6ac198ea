"""HTML report: self-contained, escaped, tells the story of rca@1 and rca@2 reports; matplotlib plots."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from forensics.cca.fixset import FixSet
from forensics.models import LoadedModel
from forensics.rca import RCAPipeline
from forensics.rca.result import RCAResult
from forensics.replay.interventions import Intervention
from forensics.report.html import render_html, threshold_of, verdict, write_html
from forensics.report.svg import FIXED_COLOUR, column_label, recovery_colour, site_of

HOSTILE = "<script>alert(1)</script>"
DOCS = Path(__file__).resolve().parents[1] / "docs"
SCHEMA_FILES = {
    "model-forensics/rca@1": DOCS / "report-rca1.schema.json",
    "model-forensics/rca@2": DOCS / "report.schema.json",
}
GOLDEN = Path(__file__).resolve().parent / "golden" / "report_rca2.json"
RCA1 = "model-forensics/rca@1"


def _metric(module: str, score: float, threshold: float = 2.0) -> dict[str, Any]:
    return {
        "module": module,
        "ratios": {"zlib": 0.41, "lzma": 0.38},
        "baseline_mean": {"zlib": 0.45, "lzma": 0.40},
        "baseline_std": {"zlib": 0.01, "lzma": 0.01},
        "z_scores": {"zlib": -score, "lzma": -score / 2},
        "score": score,
        "is_anomalous": score > threshold,
    }


def _single(
    module: str, kind: str, recovery: float, *, fixed: bool = False, source: str | None = None, token: str = " Sydney"
) -> dict[str, Any]:
    iv: dict[str, Any] = {"module": module, "kind": kind, "positions": "last"}
    if source is not None:
        iv["source"] = source
    return {
        "interventions": [iv],
        "metric": -2.0 + 3.5 * recovery,
        "recovery": recovery,
        "fixed": fixed,
        "argmax_token": token,
    }


@pytest.fixture
def report() -> dict[str, Any]:
    """An rca@1 report of a 3-layer llama-style incident: the fault is planted in layer 1's MLP."""
    mods = [f"model.layers.{i}.{s}" for i in range(3) for s in ("self_attn", "mlp")] + ["model.layers.2"]
    scores = {
        "model.layers.0.self_attn": 0.4,
        "model.layers.0.mlp": 0.9,
        "model.layers.1.self_attn": 1.1,
        "model.layers.1.mlp": 6.3,
        "model.layers.2.self_attn": 1.7,
        "model.layers.2.mlp": 2.4,
        "model.layers.2": 3.1,
    }
    singles = [_single(m, k, 0.05 * i - 0.2) for i, (m, k) in enumerate((m, k) for m in mods for k in ("zero", "mean"))]
    singles[6] = _single("model.layers.1.mlp", "zero", 1.12, fixed=True, token=" Canberra")
    singles.append(_single("model.layers.1.mlp", "patch", 1.4, fixed=True, source="benign_3", token=" Canberra"))
    fix_iv = {"module": "model.layers.1.mlp", "kind": "zero", "positions": "last"}
    return {
        "schema": RCA1,
        "version": "0.1.0",
        "bundle_id": "australia",
        "bundle_path": "/b/australia",
        "confidence": 1.0,
        "execution_time": 3.21,
        "compression_metrics": [_metric(m, scores[m]) for m in mods],
        "fix_set": {
            "interventions": [fix_iv],
            "validated": True,
            "recovery": 1.12,
            "metric": 1.92,
            "fixed": True,
            "argmax_token": " Canberra",
            "size": 1,
        },
        "replays": {"forward_passes": 12, "candidates": 15, "evaluated": 17, "budget_exhausted": False},
        "fidelity": {
            "faithful": True,
            "tolerance": 1e-4,
            "max_logit_diff": 2e-6,
            "max_activation_diff": 3e-6,
            "first_divergent": None,
            "module_diffs": {m: 1e-6 for m in mods},
        },
        "decision": {
            "step": 0,
            "observed": " Sydney",
            "observed_id": 11,
            "target": " Canberra",
            "target_id": 12,
            "failure": {"type": "expected", "text": " Canberra", "token_ids": [12], "regex": False},
            "m_incident": -2.0,
            "m_baseline": 1.5,
        },
        "localisation": [
            {
                "layer": 1,
                "score": 6.3,
                "onset": 5.2,
                "anomalous": True,
                "rank": 1,
                "modules": ["model.layers.1.mlp", "model.layers.1.self_attn"],
            },
            {
                "layer": 0,
                "score": 0.9,
                "onset": 0.9,
                "anomalous": False,
                "rank": 2,
                "modules": ["model.layers.0.mlp", "model.layers.0.self_attn"],
            },
            {
                "layer": 2,
                "score": 3.1,
                "onset": 0.0,
                "anomalous": True,
                "rank": 3,
                "modules": ["model.layers.2", "model.layers.2.mlp", "model.layers.2.self_attn"],
            },
        ],
        "single_effects": singles,
        "search": {
            "strategy": "greedy",
            "steps": [{"size": 1, "evaluated": 15, "best_recovery": 1.4}],
            "best_partial": None,
        },
        "baselines": {
            "population": ["benign_1", "benign_2", "benign_3"],
            "patch_sources": ["benign_3"],
            "paths": {"benign_3": "/b/benign_3"},
        },
        "model": {
            "ref": "tiny-llama",
            "kind": "hf_dir",
            "path": "/m/tiny",
            "sha256": "3fa2c0ffee" * 6 + "abcd",
            "family": "llama",
            "dtype": "float32",
            "device": "cpu",
            "num_layers": 3,
        },
        "cf": {"anomaly_threshold": 2.0},
        "timings": {"load": 0.4, "cf": 0.3, "cca": 2.5},
        "notes": ["no counterfactual baseline for benign_9"],
        "provenance": None,
        "export_path": "/r/australia.json",
    }


@pytest.fixture
def rca2() -> dict[str, Any]:
    """The rca@2 golden report (smollm2, 30 layers, layers 12-17 scanned, two fix sets, one input-level result)."""
    return dict(json.loads(GOLDEN.read_text()))


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.S)


def _svg(page: str, label: str) -> str:
    return next(s for s in _svgs(page) if f'aria-label="{label}' in s)


def _groups(svg: str, css: str) -> list[str]:
    """The inner SVG of every marked group whose class is exactly ``css``."""
    return re.findall(rf'<g id="[^"]*" class="{css}">(.*?)</g>', svg, flags=re.S)


def _part(page: str, css_id: str) -> str:
    start = page.index(f'<section id="{css_id}"')
    return page[start : page.index("</section>", start)]


# -- self-contained -------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["rca1", "rca2"])
def test_page_is_self_contained(report: dict[str, Any], rca2: dict[str, Any], which: str) -> None:
    page = render_html(report if which == "rca1" else rca2)
    assert page.startswith("<!DOCTYPE html>")
    for needle in (
        "http://",
        "https://",
        "src=",
        "<script",
        "<link",
        "@import",
        "<img",
        "<iframe",
        "<image",
        "data:",
        "<style type",
    ):
        assert needle not in page.lower(), needle
    assert re.findall(r'href="(?!#)', page) == [] and re.findall(r"url\((?!#)", page) == []  # in-page refs only
    assert "script-src" not in page and "default-src 'none'" in page  # CSP forbids scripts outright
    assert page == render_html(report if which == "rca1" else rca2)  # deterministic, ids included


def test_plots_are_matplotlib_svgs(report: dict[str, Any]) -> None:
    svgs = _svgs(render_html(report))
    assert [re.search(r'aria-label="([^"]*)"', s).group(1) for s in svgs] == [  # type: ignore[union-attr]
        "recovery of single interventions",
        "top single effects by recovery",
        "CF anomaly score per module",
    ]
    assert all('class="plot"' in s and "<text" in s for s in svgs)  # text stays text (searchable, small)
    ids = re.findall(r'\bid="([^"]*)"', "".join(svgs))
    assert len(ids) == len(set(ids))  # two plots on one page never share an id


# -- CF bar chart ---------------------------------------------------------------------------------
def test_bars_one_per_module_anomalous_highlighted(report: dict[str, Any]) -> None:
    chart = _svg(render_html(report), "CF anomaly score")
    bars = re.findall(r'class="(bar[^"]*)">\s*<title>([^<]*)</title>', chart)
    assert len(bars) == len(report["compression_metrics"])
    hot = {title.split(":")[0] for cls, title in bars if "anomalous" in cls}
    assert hot == {m["module"] for m in report["compression_metrics"] if m["is_anomalous"]}
    assert hot == {"model.layers.1.mlp", "model.layers.2.mlp", "model.layers.2"}
    for layer in ("L0", "L1", "L2"):
        assert f">{layer}</text>" in chart
    assert "threshold 2.00" in chart and "model.layers.1.mlp: score 6.3000 (anomalous)" in chart


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
    heat = _svg(render_html(report), "recovery of single interventions")
    assert len(_groups(heat, "cell")) + len(_groups(heat, "cell fixed")) == len(report["single_effects"])
    assert len(_groups(heat, "cell fixed")) == 2
    assert [r for r in ("L0", "L1", "L2") if f">{r}</text>" in heat] == ["L0", "L1", "L2"]
    assert "mlp/zero/last" in heat and "block/mean/last" in heat and "mlp/patch/last" in heat


def test_heatmap_tooltips_hold_exact_values(report: dict[str, Any]) -> None:
    heat = _svg(render_html(report), "recovery of single interventions")
    assert "model.layers.1.mlp patch last from benign_3\nrecovery 1.4000, metric 2.9000" in heat
    assert "FIXES the failure on its own" in heat and "does not fix the failure" in heat


def test_colour_scale_is_clipped_and_never_the_fixed_colour() -> None:
    assert recovery_colour(0.0) == "#f7f7f7"
    assert recovery_colour(-1.0) == recovery_colour(-7.0)
    assert recovery_colour(1.0) == recovery_colour(1.5) == recovery_colour(40.0)
    assert recovery_colour(float("nan")) == recovery_colour(None) == "#f7f7f7"
    scale = {recovery_colour(v / 10) for v in range(-20, 21)}
    assert FIXED_COLOUR not in scale and "#2166ac" not in scale and "#053061" not in scale  # no deep blue


def test_a_non_fixed_cell_is_never_drawn_in_the_fixed_colour(report: dict[str, Any]) -> None:
    """A high recovery that does not fix (another token wins) is at most the top of the scale, not green."""
    report["single_effects"].append(_single("model.layers.0.mlp", "patch", 2.2, source="benign_3", token=" Perth"))
    heat = _svg(render_html(report), "recovery of single interventions")
    plain, fixed = _groups(heat, "cell"), _groups(heat, "cell fixed")
    assert plain and fixed
    assert all(FIXED_COLOUR not in g for g in plain) and all(FIXED_COLOUR in g for g in fixed)
    perth = next(g for g in plain if "model.layers.0.mlp patch last from benign_3" in g)
    assert f"fill: {recovery_colour(1.0)}" in perth and "recovery 2.2000" in perth and "2.20" in perth


def test_heatmap_hatches_layers_never_evaluated(rca2: dict[str, Any]) -> None:
    page = render_html(rca2)
    heat = _svg(page, "recovery of single interventions")
    missing = _groups(heat, "cell not-evaluated")
    cols = {column_label(e["interventions"][0]) for e in rca2["single_effects"]}
    assert len(missing) == 30 * len(cols) - len(rca2["single_effects"])  # all 30 layers shown, 24 evaluated
    assert all("hatch" in g or "url(#" in g for g in missing)
    assert "L0 mlp/patch/last: not evaluated — layers 0-11 and 18-29: the scan ranks layers" in heat
    legend = _part(page, "singles")
    assert "hatched grey: not evaluated — layers 0-11 and 18-29" in legend
    assert "colour clipped to [−1, 1]" in legend and "the only cells drawn green" in legend


def test_heatmap_separates_patch_sources_only_when_needed() -> None:
    iv = {"module": "transformer.h.7.attn", "kind": "patch", "positions": [3, 4], "source": "b1"}
    assert column_label(iv) == "attn/patch/p3,4"
    assert column_label(iv, with_source=True) == "attn/patch[b1]/p3,4"
    assert column_label({**iv, "head": 5}) == "attn.h5/patch/p3,4"
    assert [site_of(m) for m in ("model.layers.7", "model.layers.7.mlp.down_proj", "lm_head")] == [
        "block",
        "mlp.down_proj",
        "lm_head",
    ]


def test_two_patch_sources_get_two_cells(report: dict[str, Any]) -> None:
    report["single_effects"].append(_single("model.layers.1.mlp", "patch", 0.7, source="benign_2"))
    heat = _svg(render_html(report), "recovery of single interventions")
    assert len(_groups(heat, "cell")) + len(_groups(heat, "cell fixed")) == len(report["single_effects"])
    assert "mlp/patch[benign_2]/last" in heat and "mlp/patch[benign_3]/last" in heat


def test_unavailable_recovery_colours_by_margin_share(rca2: dict[str, Any]) -> None:
    """No baseline produces the target: cells show the share of the incident's margin closed, labelled so."""
    for e in rca2["single_effects"]:
        e["recovery"] = None
    rca2["decision"].update(
        m_baseline=None, recovery_available=False, recovery_note="no counterfactual says ' Canberra'"
    )
    for fix in (rca2["fix_set"], *rca2["fix_sets"]):
        fix["recovery"] = None
    page = render_html(rca2)
    heat = _svg(page, "share of the incident's margin closed")
    assert "share of the incident&#x27;s margin closed" in heat or "share of the incident's margin closed" in heat
    assert "recovery unavailable" in page
    fix = _part(page, "fix")
    assert '<span class="no">unavailable</span> — no counterfactual says' in fix


# -- the story: rca@2 ----------------------------------------------------------------------------
def test_rca2_page_tells_the_story(rca2: dict[str, Any]) -> None:
    page = render_html(rca2)
    incident = _part(page, "incident")
    assert "The capital of Australia is" in incident
    assert '<mark title="decision step 0: the first wrong token"> Sydney</mark>. It is' in incident
    assert 'expected <span class="tok">&quot; Canberra&quot;</span>, observed' in incident
    assert "2.310 logits" in incident and "2 of 24 single interventions flip the answer on their own" in incident
    fix = _part(page, "fix")
    assert fix.count('<div class="card">') == 2 and "correction" in fix
    assert "changes 0 of 11 benign answers" in fix and "changes 2 of 11 benign answers" in fix
    assert "<code>benign_france</code>" in fix and " Canberra. It is" in fix and "(contains the expected text)" in fix
    assert "baseline: counterfactual cf_australia" in fix and "0.930" in fix
    conf = _part(page, "confidence")
    assert rca2["confidence_explanation"] in conf and "<b>0.72</b>" in conf
    assert "0.4183" in conf and "round(S · (0.45·R + 0.35·M + 0.2·Z) · h, 4)" in conf
    assert "differs from the documented formula" not in conf
    level = _part(page, "input-level")
    assert "Input-level evidence (input substitution, not a cause)" in level
    assert "replaced by bundle cf_australia" in level and "never a fix set" in level
    assert "layers 0-11 and 18-29</b> — the scan ranks layers" in _part(page, "not-evaluated")
    cmds = _part(page, "commands")
    assert f"<code>{rca2['commands']['reproduce']}</code>" in cmds
    assert "<code>model-forensics validate-fix reports/australia.json</code>" in cmds
    assert "Validated minimal fix set of 2 interventions: a correction" in page


def test_suppression_and_no_side_effect_check(rca2: dict[str, Any]) -> None:
    fix = rca2["fix_set"]
    fix.update(
        verdict="suppression",
        argmax_token=".",
        side_effects=None,
        regenerated={"text": ".", "contains_expected": None, "contains_forbidden": False},
    )
    rca2["incident"]["failure"] = {"type": "forbidden", "text": " Sydney", "token_ids": [28640], "regex": False}
    rca2["fix_sets"] = [fix]  # fix_set is fix_sets[0]
    text, css = verdict(rca2)
    assert css == "warn" and "only a suppression: the new answer '.'" in text
    part = _part(render_html(rca2), "fix")
    assert '<span class="badge warn">suppression</span>' in part
    assert "not checked: no benign bundles of this model" in part
    assert "(does not contain the forbidden text)" in part and "best other token over the forbidden one" in part


def test_unfaithful_replay_shows_the_advice(rca2: dict[str, Any]) -> None:
    rca2["fidelity"].update(
        faithful=False,
        first_divergent="model.layers.14.mlp",
        advice="check that the model's weights are the recording's",
    )
    rca2["fidelity"]["modules"]["model.layers.14.mlp"].update(abs=None, rel=None, ok=False)
    rca2.update(
        fix_set=None,
        fix_sets=[],
        input_level=[],
        confidence=0.0,
        confidence_terms=None,
        confidence_explanation="confidence 0: the replay is not faithful.",
    )
    page = render_html(rca2)
    assert verdict(rca2)[0].startswith("No fix set found: replay not faithful")
    fid = _part(page, "fidelity")
    assert "check that the model&#x27;s weights are the recording&#x27;s" in fid
    assert fid.index('model.layers.14.mlp</code></td><td class="num">—') > 0  # shape mismatch listed first
    assert "No fix set: confidence is 0." in _part(page, "confidence")


def test_confidence_that_departs_from_the_formula_is_flagged(rca2: dict[str, Any]) -> None:
    from forensics.report.story import documented_confidence

    assert documented_confidence(rca2["confidence_terms"]) == rca2["confidence"]
    rca2["confidence"] = 0.6
    conf = _part(render_html(rca2), "confidence")
    assert "The report's confidence 0.6000 differs from the documented formula applied to these terms (0.7219)" in conf


def test_head_shown_when_present(rca2: dict[str, Any]) -> None:
    rca2["fix_sets"][0]["interventions"][0]["head"] = 3
    fix = _part(render_html(rca2), "fix")
    assert "<th>head</th>" in fix and "<td>3</td>" in fix


# -- the story: rca@1 degrades --------------------------------------------------------------------
def test_rca1_page_says_what_it_lacks(report: dict[str, Any]) -> None:
    page = render_html(report)
    assert "not in this report" in _part(page, "incident")  # no prompt in rca@1
    assert "rca@1 formula" in _part(page, "confidence")
    assert "not in this report" in _part(page, "input-level") and "not in this report" in _part(page, "not-evaluated")
    cmds = _part(page, "commands")
    assert "model-forensics validate-fix /r/australia.json" in cmds and "(derived from export_path)" in cmds
    assert "not in this report" in cmds  # no reproduce line in rca@1


# -- header, tables -------------------------------------------------------------------------------
def test_header_and_fix_table(report: dict[str, Any]) -> None:
    page = render_html(report)
    assert "Validated minimal fix set of 1 intervention<" in page
    assert "australia" in page and "tiny-llama" in page and "3fa2c0ffee3f" in page
    assert "&quot; Sydney&quot;" in page and "&quot; Canberra&quot;" in page  # tokens shown as literals
    assert "1.00" in page and "3.21 s" in page
    fix = _part(page, "fix")
    assert "<code>model.layers.1.mlp</code></td><td>zero</td><td>last</td>" in fix
    assert 'validated</dt><dd><span class="yes">yes' in fix
    assert "no counterfactual baseline for benign_9" in page
    assert "forward passes</dt><dd>12" in page and "15 / 17" in page


def test_verdicts() -> None:
    assert verdict({"fix_set": None}) == ("No fix set found", "none")
    assert verdict({"fix_set": None, "fidelity": {"faithful": False}})[0].startswith("No fix set found: replay not")
    two = {"interventions": [{}, {}], "size": 2, "validated": True}
    assert verdict({"fix_set": two}) == ("Validated minimal fix set of 2 interventions", "ok")
    assert verdict({"fix_set": {**two, "validated": False}})[1] == "warn"
    assert verdict({"fix_set": None, "input_level": [{"fixed": True}]})[0].startswith("No fix set inside the model")


@pytest.mark.parametrize("which", ["rca1", "rca2"])
def test_hostile_text_is_escaped(report: dict[str, Any], rca2: dict[str, Any], which: str) -> None:
    r = report if which == "rca1" else rca2
    r["bundle_id"] = HOSTILE
    r["decision"]["observed"] = HOSTILE
    r["decision"]["failure"]["text"] = HOSTILE
    r["fix_set"]["argmax_token"] = HOSTILE
    r["single_effects"][0]["argmax_token"] = HOSTILE
    r["single_effects"][0]["interventions"][0]["module"] = f"model.layers.0.{HOSTILE}$\\frac{{1}}{{0}}$"
    r["compression_metrics"][0]["module"] = f'model.layers.0.{HOSTILE}"onload="x'
    r["notes"].append(HOSTILE)
    r["model"]["ref"] = HOSTILE
    r["provenance"] = {"tokens": [HOSTILE]}
    if which == "rca2":
        r["incident"].update(
            prompt=f"Ignore this. {HOSTILE}</pre><b>", generated_tokens=[HOSTILE, "&amp;"], observed=HOSTILE
        )
        r["commands"]["reproduce"] = f"model-forensics analyze '{HOSTILE}'"
        r["input_level"][0]["statement"] = HOSTILE
        r["not_evaluated"].append({"what": HOSTILE, "why": HOSTILE})
        r["confidence_explanation"] = HOSTILE
    page = render_html(r)
    assert "<script" not in page.lower() and "</pre><b>" not in page
    assert re.search(r"<[^>]*\sonload=", page) is None  # no attribute injected (a quote in text is inert)
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= (8 if which == "rca1" else 15)
    if which == "rca2":
        assert '<mark title="decision step 0: the first wrong token">&lt;script&gt;' in page
        assert "&amp;amp;" in page  # a token that looks like an entity stays literal


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
    part = _part(render_html(report), "fix")
    assert "best partial set" in part and "model.layers.2.mlp" in part and "&quot; Perth&quot;" in part


@pytest.mark.parametrize("schema", [RCA1, "model-forensics/rca@2"])
def test_minimal_report_renders(schema: str) -> None:
    """Only the required rca@1 keys; fidelity, decision, search and model absent (CCA never ran)."""
    page = render_html(
        {
            "schema": schema,
            "version": "0.1.0",
            "bundle_id": "x",
            "confidence": 0.0,
            "execution_time": 0.1,
            "compression_metrics": [],
            "fix_set": None,
            "replays": {},
            "export_path": None,
        }
    )
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
    result = RCAResult(
        bundle_id="r1",
        confidence=0.7,
        execution_time=1.0,
        compression_metrics=[],
        fix_set=FixSet((Intervention("model.layers.0.mlp", "zero"),), True, 1.0, 0.5, True, " a"),
        replays={"forward_passes": 3, "candidates": 2, "evaluated": 2},
        fidelity={},
        decision={},
    )
    path = write_html(result, tmp_path / "new" / "r1.html")
    assert "Validated minimal fix set of 1 intervention" in Path(path).read_text(encoding="utf-8")


def test_write_html_failure_keeps_old_file(
    report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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

    incident = record_greedy(
        tiny_llama, "The capital of Australia is", tmp_path / "inc", kind="incident", max_new_tokens=3
    ).bundle
    for i, prompt in enumerate(["The capital of France is", "One plus one is", "The answer is"]):
        record_greedy(
            tiny_llama, prompt, tmp_path / "benign" / f"b{i}", "as-generated", kind="benign", max_new_tokens=2
        )
    result = RCAPipeline().analyze_incident(
        incident.path,
        baseline=str(tmp_path / "benign"),
        model=tiny_llama,
        output=tmp_path / "r.json",
    )
    write_html(result, tmp_path / "r.html")
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILES[report["schema"]].read_text())).validate(report)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert len(_svgs(page)) >= 2 and "https://" not in page and "src=" not in page
    heat = _svg(page, "recovery of single interventions")
    cells = len(_groups(heat, "cell")) + len(_groups(heat, "cell fixed"))
    assert cells == len(report["single_effects"]) == len(result.single_effects)
    assert len(re.findall(r'class="bar[ "]', page)) == len(report["compression_metrics"])
    assert report["bundle_id"] in page and "validate-fix" in page
    grid = report["attribution"]["grid"]  # the AtP pre-filter is on by default
    assert len(grid["tokens"]) == grid["positions"] and "".join(grid["tokens"]).endswith(" Australia is")
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", _svg(page, "AtP estimate"))
    assert "Australia" in texts and "estimated change of the decision margin, logits" in texts


# -- components: token columns, colour keys, fix sizes ---------------------------------------------
TOKENS = ["The", " capital", " of", " Australia", " is"]


def _with_components(rca2: dict[str, Any]) -> dict[str, Any]:
    """rca2 plus an attribution grid over the incident's five tokens and two evaluated components."""
    cells: list[list[float | None]] = [[None, None, 0.2, -0.4, 1.1], [None, 0.3, None, None, -0.7]]
    rca2["attribution"] = {
        "method": "atp",
        "candidates": 40,
        "kept": 10,
        "forward_passes": 1,
        "backward_passes": 1,
        "seconds": 0.5,
        "top": [],
        "grid": {"layers": 2, "positions": 5, "sites": {"mlp": cells}, "tokens": TOKENS},
    }
    component = {"layer": 1, "site": "mlp", "head": None, "label": "L1.MLP"}
    rca2["components"] = [
        {
            "component": component,
            "intervention": {"module": "model.layers.1.mlp", "kind": "zero", "positions": "last"},
            "where": "the last position (' is')",
            "effect": 0.9,
            "metric": -1.4,
            "fixed": False,
            "recovery": 0.4,
            "argmax_token": " Sydney",
            "atp": 1.1,
        },
        {
            "component": {**component, "layer": 0, "label": "L0.MLP"},
            "intervention": {"module": "model.layers.0.mlp", "kind": "zero", "positions": [3]},
            "where": "position 3 (' Australia')",
            "effect": -0.2,
            "metric": -2.5,
            "fixed": False,
            "recovery": -0.1,
            "argmax_token": " Sydney",
            "atp": -0.4,
        },
    ]
    return rca2


def test_effect_heatmaps_label_columns_with_tokens_and_carry_a_colour_key(rca2: dict[str, Any]) -> None:
    page = render_html(_with_components(rca2))
    for label, legend in (
        ("AtP estimate", "estimated change of the decision margin, logits"),
        ("exact effect", "exact change of the decision margin, logits"),
    ):
        heat = _svg(page, label)
        texts = re.findall(r"<text[^>]*>([^<]*)</text>", heat)
        for token in ("The", "capital", "of", "Australia", "is"):  # each column named by its token
            assert token in texts, (label, token, texts)
        assert "position (token)" in texts and legend in texts
        assert 'class="legend"' in heat and "blue towards the expected answer, red away" in heat
        assert "rotate(-90" in heat  # 'capital', 'Australia': long labels stand up
        assert "<image" not in heat and "data:" not in heat  # the key is vector, the page stays self-contained
    cell = _svg(page, "exact effect")
    assert "layer 1, position 4 ' is': 0.900 logits" in cell  # the tooltip names the token too


def test_effect_heatmap_columns_fall_back_to_numbers_without_tokens(rca2: dict[str, Any]) -> None:
    """An older report (no tokens in the grid): the columns keep their position numbers."""
    from forensics.report.components import column_tokens, token_label

    report = _with_components(rca2)
    del report["attribution"]["grid"]["tokens"]
    assert column_tokens(report, 5) == []
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", _svg(render_html(report), "AtP estimate"))
    assert all(str(p) in texts for p in range(5)) and "Australia" not in texts
    report["incident"]["tokens"] = TOKENS  # the incident section may carry them instead
    assert column_tokens(report, 5) == TOKENS and column_tokens(report, 4) == []
    assert token_label("\n", 0) == "\\n" and token_label(" " * 3, 1) == "␣"
    assert token_label("x" * 40, 2) == "x" * 11 + "…"


def test_a_fix_at_every_position_says_so(rca2: dict[str, Any]) -> None:
    """FixSet.positions counts 'all' as 1000 (a ranking weight): the page says "every position"."""
    fix = rca2["fix_sets"][0]
    fix["interventions"] = [{"module": "model.layers.3.mlp", "kind": "zero", "positions": "all"}]
    fix.update(size=1, positions=1000)
    rca2["fix_set"] = fix
    part = _part(render_html(rca2), "fix")
    assert "1 member, every position" in part and "1000" not in part
    assert "2 members, 2 positions" in part  # the alternative, at the last position of each member


def test_side_effects_skipped_on_short_prompts_are_named(rca2: dict[str, Any]) -> None:
    fixes = rca2["fix_sets"]
    fixes[0]["side_effects"] = {"checked": 0, "changed": 0, "changed_bundles": [], "skipped": 11}
    fixes[1]["side_effects"] = {"checked": 4, "changed": 1, "changed_bundles": ["benign_france"], "skipped": 7}
    rca2["fix_set"] = fixes[0]
    part = _part(render_html(rca2), "fix")
    assert "not checked: 11 benign bundles it has no counterpart on (a prompt shorter" in part
    assert "changes 1 of 4 benign answers" in part and "(not checked on 7 benign bundles" in part


def test_the_page_says_what_fix_can_ship_and_how(report: dict[str, Any]) -> None:
    page = render_html(report)  # the fixture's fix: zero the layer-1 MLP at the last position
    assert "Fix you can ship" in page and "model-forensics export-fix" in page
    assert "no exact weight form" in page and "position-dependent" in page
    everywhere = {
        **report,
        "fix_set": {
            **report["fix_set"],
            "interventions": [{"module": "model.layers.1.mlp", "kind": "zero", "positions": "all"}],
        },
    }
    assert "an exact weight form" in render_html(everywhere)
    assert "Fix you can ship" not in render_html({**report, "fix_set": None, "fix_sets": []})
