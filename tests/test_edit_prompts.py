"""The prompts an edit is judged on (issue 23, item 4): JSON-lines prompt files, fixed by the argmax at the
decision position, and generalisation never counted on the prompts the edit was fitted on."""

from __future__ import annotations

from pathlib import Path

import pytest

from forensics.edit import FamilyPrompt, evaluate_edit, family_prompt, read_prompts
from forensics.edit.evaluate import decision_logits
from forensics.errors import ConfigError
from forensics.failure import FailureSpec
from forensics.models import LoadedModel


def test_prompt_files_hold_family_and_neighbourhood_prompts(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    tok = tiny_llama.tokenizer
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "The capital of Australia is", "expected": " Canberra"}\n\n'
        '{"prompt": "Sydney is", "forbidden": " the"}\n{"prompt": "The capital of France is"}\n'
    )
    family, neighbours = read_prompts(path, tok)
    assert [p.text for p in family] == ["The capital of Australia is", "Sydney is"]
    assert family[0].target_id == tok(" Canberra", add_special_tokens=False).input_ids[0]
    assert family[1].forbidden_id == tok(" the", add_special_tokens=False).input_ids[0]
    assert neighbours == ["The capital of France is"]
    for bad, why in [("not json", "not JSON"), ('{"prompt": "x", "answer": "y"}', "unknown key"), ("[1]", "expected")]:
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=why):
            read_prompts(path, tok)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_prompts(tmp_path / "missing.jsonl", tok)


def test_fixed_is_the_argmax_at_the_decision_position(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    prompt = family_prompt("The capital of", FailureSpec.expected(" x", tok), tok)
    (row,) = decision_logits(tiny_llama.model, [prompt])
    top = int(row.argmax())
    wants = FamilyPrompt(prompt.text, prompt.input_ids, target_id=top)
    refuses = FamilyPrompt(prompt.text, prompt.input_ids, forbidden_id=top)
    assert wants.fixed(row) and wants.margin(row) > 0
    assert not refuses.fixed(row) and refuses.margin(row) < 0
    with pytest.raises(ConfigError, match="exactly one of"):
        FamilyPrompt(prompt.text, prompt.input_ids, target_id=top, forbidden_id=top)


def test_generalisation_never_counts_a_fitting_prompt(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    prompt = family_prompt("The capital of Australia is", FailureSpec.expected(" Canberra", tok), tok)
    with pytest.raises(ConfigError, match="also fitting prompts"):
        evaluate_edit(tiny_llama.model, tok, fitting=[prompt], held_out=[prompt])


def test_the_neighbourhood_is_the_family_phrasings_with_the_population_subjects(tiny_llama: LoadedModel) -> None:
    from forensics.edit.neighbourhood import SUBJECT_PROBES, _other_subjects, neighbourhood
    from forensics.edit.prompts import encode, greedy_continuation, population_prompts

    tok = tiny_llama.tokenizer
    members = ["The capital of Australia is", "Fact: the capital of Australia is", "The Australian capital is"]
    population = population_prompts(
        tiny_llama.model, tok, ["The capital of France is", "The capital of Italy is", "One plus one is"]
    )
    import re

    others = _other_subjects(tok, re.compile(r"\baustralia\b", re.IGNORECASE), members, population)
    assert others == {"France": population[0].continuation[:1], "Italy": population[1].continuation[:1]}
    texts = neighbourhood(tiny_llama.model, tok, members, population, subject="australia")
    assert [t for t in texts if "Australia" in t] == [p.format(X="Australia") for p in SUBJECT_PROBES]  # as spelled
    swapped = [t for t in texts if "Australia" not in t]
    candidates = {f"Fact: the capital of {c} is": others[c] for c in others}  # "Australian" is no match
    assert set(swapped) <= set(candidates)
    for text, answer in candidates.items():  # kept exactly when the model answers it as on the population prompt
        same = greedy_continuation(tiny_llama.model, encode(tok, text), 1)[:1] == answer
        assert (text in swapped) == same
    assert neighbourhood(tiny_llama.model, tok, members, population, subject=None) == texts  # aligned: Australia
    assert neighbourhood(tiny_llama.model, tok, members, population, subject="Peru") == []


def test_one_prompt_finds_its_subject_by_aligning_with_the_population(tiny_llama: LoadedModel) -> None:
    from forensics.edit.neighbourhood import aligned_subject
    from forensics.edit.prompts import population_prompts

    tok = tiny_llama.tokenizer
    population = population_prompts(
        tiny_llama.model, tok, ["The capital of France is", "One plus one is two.", "Hello"], new_tokens=1
    )
    assert aligned_subject(tok, ["The capital of Australia is"], population) == "Australia"
    assert aligned_subject(tok, ["The capital of New South Wales is"], population) == "New South Wales"
    assert aligned_subject(tok, ["Fact: the capital of Australia is", "Hello world"], population) is None
