"""Ground truth: planted faults on tiny models; CF must localise them and CCA must fix them there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forensics.cli import main
from forensics.errors import ConfigError
from forensics.faults import (
    PROMPTS,
    Fault,
    FaultCase,
    component_faults,
    component_hit,
    default_faults,
    evaluate_faults,
    plant_fault,
)
from forensics.models import build_tiny_model, resolve_model
from forensics.models.arch import Component


@pytest.fixture(scope="module")
def six_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("six") / "llama6", seed=0, layers=6)


def test_plant_fault_touches_only_the_named_projection(six_layer: Path) -> None:
    model = resolve_model(str(six_layer), device="cpu").model
    broken = plant_fault(model, Fault(layer=2, site="head", head=1, seed=3))
    changed = [
        n
        for (n, a), (_, b) in zip(model.named_parameters(), broken.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    assert changed == ["model.layers.2.self_attn.o_proj.weight"]
    diff = (broken.model.layers[2].self_attn.o_proj.weight - model.model.layers[2].self_attn.o_proj.weight).abs()
    width = 64 // 4
    assert diff[:, width : 2 * width].sum() > 0 and diff[:, :width].sum() == 0 and diff[:, 2 * width :].sum() == 0
    with pytest.raises(ConfigError, match="fault layer 9"):
        plant_fault(model, Fault(layer=9))


def _changed(model: torch.nn.Module, broken: torch.nn.Module) -> list[str]:
    return [
        n
        for (n, a), (_, b) in zip(model.named_parameters(), broken.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_scale_fault_multiplies_only_the_heads_slice(family: str, tiny_dirs: dict[str, Path]) -> None:
    model = resolve_model(str(tiny_dirs[family]), device="cpu").model
    broken = plant_fault(model, Fault(layer=1, site="head", head=2, kind="scale", magnitude=5.0))
    name = "model.layers.1.self_attn.o_proj.weight" if family == "llama" else "transformer.h.1.attn.c_proj.weight"
    assert _changed(model, broken) == [name]
    before, after = dict(model.named_parameters())[name], dict(broken.named_parameters())[name]
    heads = model.config.num_attention_heads
    width = (before.shape[1] if family == "llama" else before.shape[0]) // heads
    cols = slice(2 * width, 3 * width)
    if family == "gpt2":  # Conv1D: [in, out], the head's rows
        before, after = before.T, after.T
    torch.testing.assert_close(after[:, cols], 5.0 * before[:, cols])
    rest = torch.ones(before.shape[1], dtype=torch.bool)
    rest[cols] = False
    assert torch.equal(after[:, rest], before[:, rest])


def test_scale_fault_on_the_mlp_and_its_component(tiny_dirs: dict[str, Path]) -> None:
    model = resolve_model(str(tiny_dirs["llama"]), device="cpu").model
    zeroed = plant_fault(model, Fault(layer=0, site="mlp", kind="scale", magnitude=0.0))
    assert _changed(model, zeroed) == ["model.layers.0.mlp.down_proj.weight"]
    assert zeroed.model.layers[0].mlp.down_proj.weight.abs().sum() == 0
    assert Fault(3, "head", head=2).component() == Component(3, "head", 2)
    assert Fault(3, "attn").component() == Component(3, "attn")
    with pytest.raises(ConfigError, match="scale fault magnitude"):
        Fault(0, kind="scale", magnitude=1.0)
    with pytest.raises(ConfigError, match="fault kind"):
        Fault(0, kind="shift")  # type: ignore[arg-type]


def test_component_faults_spread_over_layers_sites_and_kinds() -> None:
    faults = component_faults(30, n=30, heads=9)
    assert sorted(f.layer for f in faults) == list(range(30))
    combos = [(f.site, f.kind) for f in faults]
    assert {combos.count(c) for c in set(combos)} == {5} and len(set(combos)) == 6
    assert {f.head for f in faults if f.site == "head"} <= set(range(9))
    assert [f.layer for f in component_faults(30, n=3)] == [0, 14, 29]


def test_component_hit_rules() -> None:
    mlp, attn, head = Fault(4, "mlp"), Fault(4, "attn"), Fault(4, "head", head=2)
    assert component_hit(mlp, Component(4, "mlp"))
    assert not component_hit(mlp, Component(4, "attn")) and not component_hit(mlp, Component(4, "resid"))
    assert not component_hit(mlp, Component(5, "mlp"))
    assert component_hit(attn, Component(4, "attn")) and component_hit(attn, Component(4, "head", 7))
    assert not component_hit(attn, Component(4, "resid")) and not component_hit(attn, Component(3, "attn"))
    assert component_hit(head, Component(4, "head", 2)) and not component_hit(head, Component(4, "head", 1))
    assert not component_hit(head, Component(4, "attn"))
    assert component_hit(head, Component(4, "attn"), site_only=True)
    assert not component_hit(head, Component(4, "head", 1), site_only=True)
    case = FaultCase(head, prompt="p", validated=True)
    case.top_components = [Component(4, "attn"), Component(4, "head", 2)]
    case.fix_components = [Component(4, "resid"), Component(4, "head", 2)]
    assert not case.component_hit(1) and case.component_hit(1, site_only=True) and case.component_hit(2)
    assert case.fix_component_hit()
    case.validated = False
    assert not case.fix_component_hit()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cf_localises_and_cca_fixes_planted_faults(family: str, tmp_path: Path) -> None:
    path = build_tiny_model(family, tmp_path / family, seed=0, layers=6)
    report = evaluate_faults(str(path), default_faults(6, n=12, magnitude=3.0), PROMPTS, workdir=tmp_path / "gt")
    assert len(report.induced) >= 10
    assert report.top3 >= 0.9, report.to_dict()
    assert report.fix_hit >= 0.9, report.to_dict()
    assert report.top1 >= 0.75


def test_component_evaluation_end_to_end(six_layer: Path, tmp_path: Path) -> None:
    faults = component_faults(6, n=6, heads=4)
    report = evaluate_faults(str(six_layer), faults, PROMPTS, workdir=tmp_path / "gt")
    assert len(report.induced) >= 4
    cases = report.to_dict()["cases"]
    for c in (c for c in cases if c["prompt"]):
        assert c["top_components"], c
        assert c["top_components"][0]["site"] in ("resid", "attn", "mlp", "head")
        assert c["component"]["layer"] == c["fault"]["layer"]
    assert {(r["site"], r["kind"]) for r in report.table()} == {(f.site, f.kind) for f in faults}
    assert report.markdown().count("\n") == 2 + 6
    assert report.top1_component > 0  # the tool names the planted component at least once


def test_eval_cli(six_layer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(six_layer), "--faults", "3", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CF top-1" in out and "fix sets containing the faulty layer" in out
    assert "| site | kind |" in out and "top-1 component" in out
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["faults"] == 3 and len(data["cases"]) == 3
    assert "top1_component" in data and data["table"]
    # a second run in the same workdir replaces its own incident bundles instead of refusing
    assert main(["eval", "--model", str(six_layer), "--faults", "3", "--workdir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["cases"] == data["cases"]
