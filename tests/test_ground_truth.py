"""Ground truth: planted faults on tiny models; CF must localise them and CCA must fix them there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forensics.cli import main
from forensics.errors import ConfigError
from forensics.faults import PROMPTS, Fault, default_faults, evaluate_faults, plant_fault
from forensics.models import build_tiny_model, resolve_model


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


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cf_localises_and_cca_fixes_planted_faults(family: str, tmp_path: Path) -> None:
    path = build_tiny_model(family, tmp_path / family, seed=0, layers=6)
    report = evaluate_faults(str(path), default_faults(6, n=12, magnitude=3.0), PROMPTS, workdir=tmp_path / "gt")
    assert len(report.induced) >= 10
    assert report.top3 >= 0.9, report.to_dict()
    assert report.fix_hit >= 0.9, report.to_dict()
    assert report.top1 >= 0.75


def test_eval_cli(six_layer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(six_layer), "--faults", "3", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CF top-1" in out and "fix sets containing the faulty layer" in out
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["faults"] == 3 and len(data["cases"]) == 3
