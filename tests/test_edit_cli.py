"""`model-forensics export-fix` (issue 23, item 6): from an rca@2 report to a directory plain transformers
loads, with the four numbers printed; a broken or mismatched report or model is one line and exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.bundle import Bundle
from forensics.cli import main
from forensics.edit import FIX_FILE, read_fix_file
from forensics.models import LoadedModel
from forensics.record import record_greedy

ATTN = "model.layers.1.self_attn"


@pytest.fixture(scope="module")
def bundles(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    root = tmp_path_factory.mktemp("export-cli")
    incident = record_greedy(tiny_llama, "The capital of Australia is", root / "incident", "runner-up").bundle
    for i, text in enumerate(["The capital of France is", "One plus one is two. The answer is"]):
        record_greedy(tiny_llama, text, root / "benign" / f"benign_{i}", "as-generated", max_new_tokens=4)
    return incident, root / "benign"


def write_report(path: Path, incident: Bundle, fix_sets: list[list[dict[str, Any]]], **extra: Any) -> Path:
    report = {
        "schema": "model-forensics/rca@2",
        "bundle_id": incident.id,
        "bundle_path": str(incident.path),
        "fix_sets": [{"interventions": ivs, "validated": True} for ivs in fix_sets],
        "baselines": {"population": [], "paths": {}},
        "model": {"ref": incident.model["ref"], "sha256": incident.model["sha256"]},
        **extra,
    }
    path.write_text(json.dumps(report))
    return path


def test_export_fix_writes_a_directory_plain_transformers_loads(
    bundles: tuple[Bundle, Path], tiny_llama: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    incident, benign = bundles
    last = [{"module": ATTN, "kind": "zero", "positions": "last"}]  # best, but position-dependent
    heads = [{"module": ATTN, "kind": "zero", "positions": "all", "head": 2}]
    report = write_report(tmp_path / "rca.json", incident, [last, heads])
    prompts = tmp_path / "held.jsonl"
    prompts.write_text('{"prompt": "Australia has its capital in", "expected": " Canberra"}\n{"prompt": "Hello"}\n')
    out = tmp_path / "fixed"
    argv = ["export-fix", str(report), "--out", str(out), "--population", str(benign), "--prompts", str(prompts)]
    code = main([*argv, "--max-broken", "1", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "fix set #0 has no weight form" in text and "position-dependent" in text
    for name in ("efficacy", "generalisation", "specificity", "fluency"):
        assert name in text
    assert re.search(r"specificity +\S+ +\(\d/7\)", text) and re.search(r"generalisation +\S+ +\(\d/1\)", text), text
    assert f"load it: AutoModelForCausalLM.from_pretrained({str(out)!r})" in text
    doc = read_fix_file(out / FIX_FILE)
    assert doc["method"] == "weights" and doc["provenance"]["fix_set_index"] == 1
    near = doc["provenance"]["neighbourhood"]  # 2 benign bundles + "Hello", then questions about the subject
    assert "Australia is a" in near and doc["evaluation"]["specificity"]["total"] == 3 + len(near) == 7
    assert doc["evaluation"]["generalisation"]["total"] == 1
    plain = AutoModelForCausalLM.from_pretrained(str(out))
    ids = torch.tensor([list(incident.inputs["input_ids"])])
    edited = tiny_llama.model.model.layers[1].self_attn.o_proj.weight.detach().clone()
    edited[:, 32:48] = 0  # head 2 of 4, head_dim 16
    assert torch.equal(plain.model.layers[1].self_attn.o_proj.weight.detach(), edited)
    assert plain(input_ids=ids).logits.shape[-1] == 384


def test_only_position_dependent_fixes_ship_as_hooks(
    bundles: tuple[Bundle, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    incident, benign = bundles
    report = write_report(tmp_path / "rca.json", incident, [[{"module": ATTN, "kind": "zero", "positions": "last"}]])
    argv = ["export-fix", str(report), "--out", str(tmp_path / "h"), "--population", str(benign)]
    code = main([*argv, "--max-broken", "1", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0 and "exported as hooks" in text and "apply_fix(model," in text
    assert read_fix_file(tmp_path / "h" / FIX_FILE)["method"] == "hooks"


def test_a_rank_one_edit_from_the_cli(
    bundles: tuple[Bundle, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    incident, benign = bundles
    report = write_report(tmp_path / "rca.json", incident, [])
    argv = ["export-fix", str(report), "--out", str(tmp_path / "r1"), "--method", "rank-one", "--layer", "0"]
    code = main([*argv, "--subject", "Australia", "--population", str(benign), "--max-broken", "1"])
    text = capsys.readouterr().out
    assert code == 0, text
    doc = read_fix_file(tmp_path / "r1" / FIX_FILE)
    assert doc["method"] == "rank-one" and doc["edit"]["rank"] == 1
    assert doc["edit"]["tensors"][0]["name"] == "model.layers.0.mlp.down_proj.weight"


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("not-json", "cannot be read as JSON"),
        ("schema", "schema 'model-forensics/rca@9' is not one this version reads"),
        ("fix-sets", "fix_sets[0] has no interventions list"),
        ("intervention", "intervention kind 'erase' not allowed"),
        ("no-fix", "no validated fix set to export"),
        ("model", "export-fix edits the model the incident came from"),
        ("bundle", "bundle"),
    ],
)
def test_a_broken_report_or_model_is_one_line(
    case: str,
    fragment: str,
    bundles: tuple[Bundle, Path],
    tiny_dirs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    incident, _ = bundles
    path = write_report(tmp_path / "rca.json", incident, [[{"module": ATTN, "kind": "zero", "positions": "all"}]])
    data = json.loads(path.read_text())
    extra: list[str] = []
    if case == "not-json":
        path.write_text("{not json")
    elif case == "schema":
        path.write_text(json.dumps({**data, "schema": "model-forensics/rca@9"}))
    elif case == "fix-sets":
        path.write_text(json.dumps({**data, "fix_sets": [{"interventions": "zero"}]}))
    elif case == "intervention":
        path.write_text(json.dumps({**data, "fix_sets": [{"interventions": [{"module": ATTN, "kind": "erase"}]}]}))
    elif case == "no-fix":
        path.write_text(json.dumps({**data, "fix_sets": []}))
    elif case == "model":
        extra = ["--model", str(tiny_dirs["qwen2"])]
    else:
        path.write_text(json.dumps({**data, "bundle_path": str(tmp_path / "missing")}))
    code = main(["export-fix", str(path), "--out", str(tmp_path / "out"), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
