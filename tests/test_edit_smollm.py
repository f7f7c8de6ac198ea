"""The rank-one edit on the embedded model (issue 23, item 7): SmolLM2-135M says " Sydney" for the capital of
Australia; a rank-one edit of layer 4's MLP, fitted on three phrasings, fixes held-out phrasings and
leaves the answers to other capitals and to other questions about Australia unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from forensics.edit import edited_copy, evaluate_edit, family_prompt, population_prompts, rank_one_edit
from forensics.edit.evaluate import decision_logits
from forensics.failure import FailureSpec
from forensics.models import LoadedModel

pytestmark = pytest.mark.slow

FIT = [
    "The capital of Australia is",
    "Which city is the capital of Australia? It is",
    "The capital city of Australia is",
]
HELD_OUT = [
    "Fact: the capital of Australia is",
    "The capital of Australia is the city of",
    "Everyone knows that the capital of Australia is",
    "The Australian capital is",
    "Q: What is the capital of Australia?\nA:",
]
CAPITALS = {  # ones SmolLM2-135M answers right with greedy decoding (Egypt, India, Turkey it does not)
    "France": " Paris",
    "Japan": " Tokyo",
    "Germany": " Berlin",
    "Italy": " Rome",
    "Spain": " Madrid",
    "Russia": " Moscow",
    "China": " Beijing",
    "Canada": " Ottawa",
}
AUSTRALIA = [  # the neighbourhood: other questions about the subject, whose answers must stay
    "Australia's currency is",
    "The official language of Australia is",
    "The largest city in Australia is",  # " Sydney" is right here
    "Australia is a country in",
]


def test_a_rank_one_edit_fixes_held_out_phrasings_and_breaks_nothing(smol: LoadedModel) -> None:
    tok = smol.tokenizer
    spec = FailureSpec.expected(" Canberra", tok)
    fitting = [family_prompt(text, spec, tok) for text in FIT]
    held_out = [family_prompt(text, spec, tok) for text in HELD_OUT]
    texts = [f"The capital of {country} is" for country in CAPITALS] + AUSTRALIA
    population = population_prompts(smol.model, tok, texts)
    for prompt, answer in zip(population, CAPITALS.values(), strict=False):
        assert tok.decode(list(prompt.continuation[:1])) == answer
    before = evaluate_edit(smol.model, tok, fitting=fitting, held_out=held_out)
    assert before.efficacy.passed == 0 and before.generalisation.passed == 0  # every phrasing fails today

    edit = rank_one_edit(smol.model, tok, fitting, population, layer=4)
    edited = edited_copy(smol.model, edit)
    result = evaluate_edit(edited, tok, fitting=fitting, held_out=held_out, population=population)
    margins = [round(p.margin(row), 2) for p, row in zip(held_out, decision_logits(edited, held_out), strict=True)]
    summary = f"{result.line()}; held-out margins {margins}; ||dW||/||W|| {edit.details['relative_norm']:.3f}"
    assert edit.details["subject"] == "australia" and edit.details["rank"] == 1, summary
    assert result.efficacy.share == 1.0, summary
    assert result.generalisation.passed >= 3, summary
    assert result.specificity.share == 1.0, f"{summary}; broken: {result.specificity.failed}"
    assert (result.fluency.share or 0.0) >= 0.9, f"{summary}; changed: {result.fluency.failed}"


def test_export_fix_auto_ships_a_rank_one_edit_that_transfers(smol: LoadedModel, tmp_path: Any) -> None:
    """What a user gets by default from a family report: ``auto`` weighs the ablation's weight form against a
    rank-one edit (layer by leave-one-out over the three members) and ships the rank-one edit, which keeps
    the population's continuations; judged on five phrasings it never saw (``--prompts``) and on the
    population plus other questions about Australia."""
    import json

    from forensics.edit.from_report import ExportRequest, export_from_report
    from forensics.rca import AnalysisRequest, RCAPipeline
    from forensics.record import record_greedy

    spec = FailureSpec.expected(" Canberra", smol.tokenizer)
    members = []
    for i, text in enumerate(FIT):
        members.append(str(tmp_path / f"m{i}"))
        record_greedy(smol, text, members[-1], spec, kind="incident", max_new_tokens=3)
    for country in list(CAPITALS)[:6]:
        record_greedy(smol, f"The capital of {country} is", tmp_path / "pop" / country, "as-generated", kind="benign")
    report = RCAPipeline().run_family(AnalysisRequest.of(members, population=str(tmp_path / "pop"), model=smol))
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": t, "expected": " Canberra"} for t in HELD_OUT] + [{"prompt": t} for t in AUSTRALIA]
    prompts.write_text("\n".join(json.dumps(line) for line in lines))
    request = ExportRequest(report.to_dict(), "family.json", str(tmp_path / "fixed"), prompts=str(prompts))
    result, choice = export_from_report(request)
    fix = json.loads((tmp_path / "fixed" / "fix.json").read_text())
    ev = fix["evaluation"]
    summary = f"{choice.method} at L{choice.layer}: {result.evaluation.line()}; note: {choice.note}"
    print(summary)
    assert fix["method"] == "rank-one" and "layer_choice" in fix["edit"]["details"], summary
    assert ev["efficacy"]["passed"] == 3 and ev["generalisation"]["passed"] >= 3, summary
    assert ev["specificity"]["share"] >= 0.95, f"{summary}; broken: {ev['specificity']['failed']}"
    assert ev["fluency"]["share"] >= 0.8, f"{summary}; changed: {ev['fluency']['failed']}"
