"""Shipping a fix (issue 23, items 1, 3, 5): the exported directory loads with plain transformers and gives
the edited model's logits; position-dependent fixes ship as hook specs that equal the replay; an edit
that breaks the population is refused; a rollback restores only the named modules; fix.json validates."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.bundle import Bundle
from forensics.edit import (
    FIX_FILE,
    EditRefused,
    HookEdit,
    NoWeightForm,
    apply_fix,
    edited_copy,
    export_fix,
    hook_members,
    incident_prompt,
    population_prompts,
    read_fix_file,
    rollback_edit,
    validate_fix_file,
    weight_form,
)
from forensics.errors import ConfigError, ModelError
from forensics.models import LoadedModel, resolve_model
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer
from tests.conftest import our_hooks

BENIGN = ["The capital of France is", "The capital of Italy is", "One plus one is two. The answer is"]


@pytest.fixture(scope="module")
def lab(tiny_llama: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, list[Bundle]]:
    """An incident of the tiny llama and its population (benign bundles), recorded once."""
    root = tmp_path_factory.mktemp("edit-lab")
    incident = record_greedy(tiny_llama, "The capital of Australia is", root / "incident", "runner-up").bundle
    population = [
        record_greedy(tiny_llama, text, root / "benign" / f"benign_{i}", "as-generated", max_new_tokens=4).bundle
        for i, text in enumerate(BENIGN)
    ]
    return incident, population


def population_of(loaded: LoadedModel, bundles: list[Bundle]) -> list[Any]:
    return population_prompts(loaded.model, loaded.tokenizer, [list(b.inputs["input_ids"]) for b in bundles])


@torch.inference_mode()
def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def test_a_bias_added_to_a_llama_projection_survives_plain_transformers(
    tiny_llama: LoadedModel, lab: tuple[Bundle, list[Bundle]], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    incident, benign = lab
    attn = "model.layers.1.self_attn"
    mean = torch.randn(64, generator=torch.Generator().manual_seed(0))
    fix = (Intervention(attn, "mean", "all"), Intervention("model.layers.0.self_attn", "zero", "all", head=3))
    edit = weight_form(tiny_llama.model, fix, means={(attn, None): mean})
    assert edit.flags == ("attention_bias",)
    fitting = [incident_prompt(incident)]
    result = export_fix(
        tmp_path / "fixed",
        tiny_llama,
        edit,
        fitting=fitting,
        population=population_of(tiny_llama, benign),
        max_broken=1.0,
        provenance={"report": "rca.json"},
    )
    assert tiny_llama.model.config.attention_bias is False  # the shared model itself is left alone
    assert tiny_llama.model.model.layers[1].self_attn.o_proj.bias is None
    plain = AutoModelForCausalLM.from_pretrained(str(result.path))
    assert plain.config.attention_bias is True
    assert torch.allclose(plain.model.layers[1].self_attn.o_proj.bias.detach(), mean.float())
    ids = torch.randint(1, 384, (2, 9), generator=torch.Generator().manual_seed(1))
    edited = edited_copy(tiny_llama.model, edit)
    assert (logits(plain, ids) - logits(edited, ids)).abs().max() < 1e-5
    fix_doc = read_fix_file(result.path / FIX_FILE)
    registry = resolve_model(str(result.path), device="cpu")
    assert registry.info.sha256 == fix_doc["provenance"]["sha256_after"] != tiny_llama.info.sha256
    assert fix_doc["provenance"]["sha256_before"] == tiny_llama.info.sha256
    changed = {t["name"]: t for t in fix_doc["edit"]["tensors"]}
    assert changed[f"{attn}.o_proj.bias"]["added"] is True and changed[f"{attn}.o_proj.bias"]["relative"] is None
    assert changed[f"{attn}.o_proj.weight"]["relative"] == pytest.approx(1.0)  # W = 0: the whole weight removed
    assert changed["model.layers.0.self_attn.o_proj.weight"]["rank"] == 16  # one head's 16 columns zeroed
    assert fix_doc["evaluation"]["efficacy"]["total"] == 1 and fix_doc["evaluation"]["specificity"]["total"] == 3


def test_a_position_dependent_fix_ships_as_hooks_that_equal_the_replay(
    tiny_llama: LoadedModel, lab: tuple[Bundle, list[Bundle]], tmp_path: Path
) -> None:
    incident, benign = lab
    fix = (
        Intervention("model.layers.1.mlp", "mean", "last"),
        Intervention("model.layers.0.self_attn", "zero", (0, -2), head=1),
    )
    with pytest.raises(NoWeightForm, match="position-dependent") as refused:
        weight_form(tiny_llama.model, fix)
    assert "\n" not in str(refused.value)
    rp = Replayer(incident, loaded=tiny_llama, population=benign)
    edit = HookEdit(tuple(hook_members(fix, rp.bank, length=rp.length, step=rp.step)), rp.length, str(refused.value))
    result = export_fix(
        tmp_path / "hooks",
        tiny_llama,
        edit,
        fitting=[incident_prompt(incident)],
        population=population_of(tiny_llama, benign),
        max_broken=1.0,
    )
    doc = read_fix_file(result.path / FIX_FILE)
    assert doc["method"] == "hooks" and doc["hooks"]["members"][0]["values"] == "member0"
    assert not (result.path / "config.json").exists()
    replayed = rp.logits([fix])[0]
    with apply_fix(tiny_llama.model, result.path / FIX_FILE):
        hooked = logits(tiny_llama.model, rp.input_ids)[0, -1]
    assert (hooked - replayed).abs().max() < 1e-5
    assert (hooked - rp.logits([()])[0]).abs().max() > 1e-3
    assert not our_hooks(tiny_llama.model)
    handle = apply_fix(tiny_llama.model, result.path / FIX_FILE)
    handle.remove()
    handle.remove()  # idempotent
    assert not our_hooks(tiny_llama.model)


def test_an_edit_that_breaks_the_population_is_refused_and_nothing_is_written(
    tiny_llama: LoadedModel, lab: tuple[Bundle, list[Bundle]], tmp_path: Path
) -> None:
    incident, benign = lab
    edit = weight_form(tiny_llama.model, (Intervention("model.layers.0.mlp", "zero", "all"),))
    population = population_of(tiny_llama, benign)
    with pytest.raises(EditRefused, match=r"edit refused: it changes the next token of \d of 3") as info:
        export_fix(tmp_path / "out", tiny_llama, edit, fitting=[incident_prompt(incident)], population=population)
    assert "The capital of" in str(info.value) or "One plus one" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_rollback_restores_only_the_named_modules(tiny_llama: LoadedModel, tiny_gpt2: LoadedModel) -> None:
    regressed = copy.deepcopy(tiny_llama.model)
    with torch.no_grad():
        regressed.model.layers[1].mlp.down_proj.weight.add_(0.5)
        regressed.model.layers[0].self_attn.o_proj.weight.add_(0.5)
    edit = rollback_edit(regressed, tiny_llama.model, ["model.layers.1.mlp"])
    assert sorted(edit.tensors) == [f"model.layers.1.mlp.{p}_proj.weight" for p in ("down", "gate", "up")]
    restored = edited_copy(regressed, edit)
    assert torch.equal(
        restored.model.layers[1].mlp.down_proj.weight, tiny_llama.model.model.layers[1].mlp.down_proj.weight
    )
    assert torch.equal(
        restored.model.layers[0].self_attn.o_proj.weight, regressed.model.layers[0].self_attn.o_proj.weight
    )
    with pytest.raises(ModelError, match="gpt2"):
        rollback_edit(regressed, tiny_gpt2.model, ["model.layers.1.mlp"])


def test_fix_json_validates_against_its_documented_fields(
    tiny_llama: LoadedModel, lab: tuple[Bundle, list[Bundle]], tmp_path: Path
) -> None:
    incident, _ = lab
    edit = weight_form(tiny_llama.model, (Intervention("model.layers.1.self_attn", "scale", "all", factor=0.9),))
    result = export_fix(tmp_path / "f", tiny_llama, edit, fitting=[incident_prompt(incident)], max_broken=1.0)
    doc = json.loads((result.path / FIX_FILE).read_text())
    validate_fix_file(doc)
    assert doc["schema"] == "model-forensics/fix@1" and doc["hooks"] is None
    assert {"efficacy", "generalisation", "specificity", "fluency", "max_broken"} <= set(doc["evaluation"])
    for key, broken in [("schema", "x"), ("method", "magic"), ("evaluation", {}), ("provenance", {"model": {}})]:
        with pytest.raises(ConfigError, match="fix.json"):
            validate_fix_file({**doc, key: broken})
    with pytest.raises(ConfigError, match="load the exported directory itself"):
        apply_fix(tiny_llama.model, result.path / FIX_FILE)  # a weight edit has no hooks to install
    with pytest.raises(ConfigError, match="not an earlier export"):
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "notes.txt").write_text("mine")
        export_fix(tmp_path / "taken", tiny_llama, edit, fitting=[incident_prompt(incident)], max_broken=1.0)


def _family_report(held_out: int | None, n: int = 3, *, sets: bool = True) -> dict[str, Any]:
    zero = Intervention("model.layers.0.mlp", "zero", "all").to_dict()
    fix = {"interventions": [zero], "held_out": held_out, "held_out_of": n if held_out is not None else None}
    return {
        "schema": "model-forensics/family@1",
        "members": [{"analysed": True} for _ in range(n)],
        "fix_sets": [fix] if sets else [],
    }


def test_auto_ships_a_family_ablation_only_when_it_transfers(tiny_llama: LoadedModel) -> None:
    from forensics.edit import choose_fix

    transfers = choose_fix(_family_report(3), tiny_llama.model, "auto")
    assert transfers.method == "weights" and transfers.note == ""
    weak = choose_fix(_family_report(1), tiny_llama.model, "auto")
    assert weak.method == "rank-one" and weak.layer == 0 and "33% of the members held out" in weak.note
    assert choose_fix(_family_report(1), tiny_llama.model, "weights").method == "weights"  # asked for: as asked
    nothing = choose_fix(_family_report(None, sets=False), tiny_llama.model, "auto")
    assert nothing.method == "rank-one" and nothing.layer is None and "leave-one-out" in nothing.note
    single = {"schema": "model-forensics/rca@2", "fix_sets": _family_report(None)["fix_sets"]}
    assert choose_fix(single, tiny_llama.model, "auto").method == "weights"  # one incident: nothing held out
    with pytest.raises(ConfigError, match="no validated fix set"):
        choose_fix({"fix_sets": []}, tiny_llama.model, "auto")
