"""Rank-one MLP edits (issue 23, item 2): the closed form moves the chosen keys to the target and leaves
the protected keys' outputs in place; on tiny models the edited model fixes its fitting prompts."""

from __future__ import annotations

import pytest
import torch

from forensics.edit import (
    FamilyPrompt,
    RankOneOptions,
    edited_copy,
    evaluate_edit,
    family_prompt,
    population_prompts,
    rank_one_edit,
    subject_positions,
    subject_span,
)
from forensics.edit.rank_one import capture_keys, mlp_projection, solve_rank_one
from forensics.errors import ConfigError
from forensics.failure import FailureSpec
from forensics.models import LoadedModel

FIT = ["The capital of Australia", "Canberra is in Australia"]  # the subject is the decision position
POPULATION = ["The capital of France is", "The capital of Italy is", "Berlin is the capital of", "One plus one is"]


def test_the_closed_form_maps_the_mean_key_to_the_target_and_spares_protected_keys() -> None:
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(40, 64, generator=gen, dtype=torch.float64)
    protected = torch.randn(300, 40, generator=gen, dtype=torch.float64) @ basis  # a 40-dim subspace of 64
    keys = protected[:2] * 0.1 + torch.randn(2, 64, generator=gen, dtype=torch.float64)
    delta = torch.randn(32, generator=gen, dtype=torch.float64)
    update, c = solve_rank_one(keys, delta, protected, ridge=1e-6)
    assert torch.allclose(update @ keys.mean(0), delta, atol=1e-9)  # W' k̄ = W k̄ + δ = v*
    assert torch.allclose(c @ keys.mean(0), torch.tensor(1.0, dtype=torch.float64))
    assert int(torch.linalg.matrix_rank(update)) == 1
    moved = (protected @ update.T).norm(dim=-1) / delta.norm()
    assert float(moved.max()) < 1e-3  # keys in the protected span barely move


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("layer", [0, 1])
def test_a_rank_one_edit_fixes_the_fitting_prompts_and_keeps_the_population(
    name: str, layer: int, request: pytest.FixtureRequest
) -> None:
    loaded: LoadedModel = request.getfixturevalue(name)
    tok = loaded.tokenizer
    spec = FailureSpec.expected(" Canberra", tok)
    fitting = [family_prompt(text, spec, tok) for text in FIT]
    population = population_prompts(loaded.model, tok, POPULATION)
    assert evaluate_edit(loaded.model, tok, fitting=fitting).efficacy.passed == 0  # the failure is real
    edit = rank_one_edit(loaded.model, tok, fitting, population, layer=layer, options=RankOneOptions(steps=30))
    edited = edited_copy(loaded.model, edit)
    result = evaluate_edit(edited, tok, fitting=fitting, population=population)
    assert result.efficacy.share == 1.0 and result.specificity.share == 1.0

    _, proj = mlp_projection(loaded.model, layer)
    (change,) = [c for c in edit.changes(loaded.model)]
    assert change.name == f"{proj}.weight" and change.rank == 1 and 0 < (change.relative or 0) < 2
    old, new = (m.get_submodule(proj).weight.detach().double() for m in (loaded.model, edited))
    if type(loaded.model.get_submodule(proj)).__name__ == "Conv1D":
        old, new = old.T, new.T
    protected = torch.cat(capture_keys(loaded.model, proj, [p.input_ids + p.continuation for p in population]))
    moved = (protected @ (new - old).T).norm(dim=-1) / (protected @ old.T).norm(dim=-1)
    assert float(moved.max()) < 0.1 and float(moved.median()) < 0.03  # protected outputs stay within tolerance
    assert abs(float(moved.max()) - edit.details["protected_change_max"]) < 1e-4
    keys = capture_keys(loaded.model, proj, [p.input_ids for p in fitting])
    positions = edit.details["subject_positions"]
    fit_keys = torch.stack([k[p] for k, p in zip(keys, positions, strict=True)])
    shift = fit_keys.mean(0) @ (new - old).T  # the mean key's output moves by δ: the target minus W k̄
    assert float(shift.norm()) > 1.0


def test_the_subject_is_the_shared_non_template_span() -> None:
    texts = ["The capital of Australia is", "Australia's capital is", "Q: What is the capital of Australia?\nA:"]
    assert subject_span(texts, template=["The capital of France is"]) == "australia"
    assert subject_span(["New York City is big", "I love New York City"]) == "new york city"
    assert subject_span(["The capital of Peru is"], template=POPULATION) == "peru"
    nz = [
        "The capital of New Zealand is",
        "The capital city of New Zealand is",
        "Everyone knows that the capital of New Zealand is",
    ]
    other = ["France has its capital in", "Japan has its capital in"]  # the population phrased another way
    assert subject_span(nz, template=other) == "new zealand"  # not "of new zealand is": the name
    assert subject_span(["Water boils at", "Everyone knows water boils at"]) == "water boils at"  # no name: longest
    with pytest.raises(ConfigError, match="share no word"):
        subject_span(["abc", "xyz"])


def test_subject_positions_are_the_last_token_of_the_subject(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    spec = FailureSpec.expected(" Canberra", tok)
    prompts = [family_prompt(t, spec, tok) for t in ["The capital of Australia is", "Australia: its capital is"]]
    for prompt, pos in zip(prompts, subject_positions(tok, prompts, "Australia"), strict=True):
        assert tok.decode(list(prompt.input_ids[: pos + 1])).endswith("Australia")
        assert not tok.decode(list(prompt.input_ids[:pos])).endswith("Australia")
    with pytest.raises(ConfigError, match="does not occur"):
        subject_positions(tok, prompts, "Peru")


def test_the_last_layer_cannot_carry_a_subject_before_the_decision(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    fitting = [family_prompt("The capital of Australia is", FailureSpec.expected(" Canberra", tok), tok)]
    with pytest.raises(ConfigError, match="does not reach the decision position"):
        rank_one_edit(tiny_llama.model, tok, fitting, [], layer=1, subject="Australia", options=RankOneOptions(steps=2))


def test_a_subject_at_the_first_token_is_not_fitted(tiny_llama: LoadedModel) -> None:
    """The first token has no context to read the subject from (a model without BOS reads it as its attention
    sink): a fitting prompt that starts with the subject is left out of the fit and named."""
    tok = tiny_llama.tokenizer
    spec = FailureSpec.expected(" Canberra", tok)
    bare = tuple(tok("Australia", add_special_tokens=False).input_ids)  # as a tokenizer without BOS encodes it
    fitting = [FamilyPrompt("Australia", bare, target_id=spec.target_id(0))]
    fitting += [family_prompt(t, spec, tok) for t in FIT]
    positions = [0, *subject_positions(tok, fitting[1:], "Australia")]  # a one-token subject sits at 0
    population = population_prompts(tiny_llama.model, tok, POPULATION)
    edit = rank_one_edit(
        tiny_llama.model,
        tok,
        fitting,
        population,
        layer=0,
        subject_positions=positions,
        options=RankOneOptions(steps=5),
    )
    assert edit.details["unfitted"]["prompts"] == ["Australia"]
    assert edit.details["subject_positions"] == positions[1:]
    alone = rank_one_edit(
        tiny_llama.model, tok, fitting[:1], population, layer=0, subject_positions=[0], options=RankOneOptions(steps=2)
    )
    assert "unfitted" not in alone.details  # nothing else to fit on: the prompt is kept


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_the_layer_is_chosen_by_leave_one_out_and_the_table_says_why(name: str, request: pytest.FixtureRequest) -> None:
    from forensics.edit import LayerTrial, candidate_layers, choose_layer

    loaded: LoadedModel = request.getfixturevalue(name)
    tok = loaded.tokenizer
    spec = FailureSpec.expected(" Canberra", tok)
    fitting = [family_prompt(t, spec, tok) for t in [*FIT, "Where is Canberra? In Australia"]]
    population = population_prompts(loaded.model, tok, POPULATION)
    seen: list[str] = []
    choice = choose_layer(
        loaded.model, tok, fitting, population, diagnosed=[1], options=RankOneOptions(steps=15), progress=seen.append
    )
    assert [t.layer for t in choice.trials] == candidate_layers(2, [1]) == [1, 0] and len(seen) == 2
    assert choice.trials[0].diagnosed and not choice.trials[1].diagnosed
    usable = [t for t in choice.trials if t.error is None]
    best = min(usable, key=LayerTrial.key)
    assert choice.layer == best.layer and all(best.held_out >= t.held_out for t in usable)
    assert all(0 <= t.held_out <= t.members == len(fitting) for t in choice.trials)
    assert choice.edit.details["layer"] == choice.layer and f"layer {choice.layer}" in choice.note
    assert evaluate_edit(edited_copy(loaded.model, choice.edit), tok, fitting=fitting).efficacy.share == 1.0
    row = choice.table()[0]
    assert set(row) >= {"layer", "diagnosed", "held_out", "population_changed", "relative_norm"}

    one = choose_layer(loaded.model, tok, fitting[:1], population, diagnosed=[0], options=RankOneOptions(steps=5))
    assert one.layer == 0 and one.trials == () and "nothing to hold out" in one.note
