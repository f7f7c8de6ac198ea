"""Hybrid replay of the whole answer (issue 13, item 5): tool results served from the recording or replaced
by a counterfactual text, interventions at every step, and never a live tool call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forensics.bundle import load_bundle
from forensics.cli import main
from forensics.errors import ReplayError
from forensics.models import LoadedModel
from forensics.record import CallLog, record_greedy
from forensics.replay import Intervention, Replayer
from forensics.replay.hybrid import hybrid_generate, regenerate, rewrite_input

DOC = "The capital of France is Lyon."
OTHER = "Zebras eat grass in Kenya every day, quietly."


class Retriever:
    """A tool that may run while recording and must never run again."""

    def __init__(self) -> None:
        self.live = True

    def __call__(self, query: str) -> str:
        if not self.live:
            raise AssertionError("a live tool was called during replay")
        return DOC


@pytest.fixture
def incident(tiny_llama: LoadedModel, tmp_path: Path) -> tuple[Path, Retriever]:
    tool = Retriever()
    log = CallLog()
    doc = log.external("retriever", tool)("capital of France")
    prompt = f"Retrieved: {doc}\nThe capital of France is"
    record_greedy(tiny_llama, prompt, tmp_path / "inc", max_new_tokens=4, calls=log)
    tool.live = False
    return tmp_path / "inc", tool


def test_rewrite_input_replaces_the_span_and_retokenises(tiny_llama: LoadedModel, incident: Any) -> None:
    bundle = load_bundle(incident[0])
    tok = tiny_llama.tokenizer
    assert rewrite_input(bundle, tok, {}) == bundle.inputs["input_ids"]
    assert rewrite_input(bundle, tok, {"retriever": DOC}) == bundle.inputs["input_ids"]
    new = rewrite_input(bundle, tok, {"retriever": OTHER})
    assert new == tok(f"Retrieved: {OTHER}\nThe capital of France is")["input_ids"]
    with pytest.raises(ReplayError, match=r"no recorded call result named 'search'.*found in the input: retriever"):
        rewrite_input(bundle, tok, {"search": "x"})


def test_recorded_input_regenerates_the_recorded_answer(tiny_llama: LoadedModel, incident: Any) -> None:
    bundle = load_bundle(incident[0])
    rp = Replayer(bundle, loaded=tiny_llama)
    run = hybrid_generate(rp)
    assert not run.input_changed and run.ids == bundle.outputs["generated_ids"]
    assert regenerate(rp, bundle.inputs["input_ids"], (), 4) == bundle.outputs["generated_ids"]


def test_counterfactual_tool_result_changes_input_and_answer(tiny_llama: LoadedModel, incident: Any) -> None:
    bundle = load_bundle(incident[0])
    rp = Replayer(bundle, loaded=tiny_llama)
    run = hybrid_generate(rp, replacements={"retriever": OTHER})
    assert run.input_changed and run.replaced == ("retriever",)
    assert run.ids != bundle.outputs["generated_ids"]
    tok = tiny_llama.tokenizer
    assert run.ids == regenerate(rp, tok(f"Retrieved: {OTHER}\nThe capital of France is")["input_ids"], (), 4)


def test_interventions_apply_at_every_step(tiny_llama: LoadedModel, incident: Any) -> None:
    bundle = load_bundle(incident[0])
    rp = Replayer(bundle, loaded=tiny_llama)
    ivs = (Intervention("model.layers.1", "zero", "all"),)
    assert hybrid_generate(rp, ivs).ids == rp.generate(ivs, 4)
    assert hybrid_generate(rp, ivs).ids != bundle.outputs["generated_ids"]


def test_replay_generate_cli_with_a_tool_result(
    tiny_llama: LoadedModel, incident: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path, tool = incident
    base = ["replay", str(path), "--generate", "--format", "json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)["generated"]
    assert plain["input_changed"] is False and plain["text"] == plain["recorded_text"]
    assert main([*base, "--tool-result", f"retriever={OTHER}", "--max-new-tokens", "3"]) == 0
    counter = json.loads(capsys.readouterr().out)["generated"]
    assert counter["input_changed"] is True and counter["replaced"] == ["retriever"]
    assert len(counter["ids"]) == 3 and counter["text"] != plain["text"][: len(counter["text"])]
    assert main(["replay", str(path), "--generate", "--tool-result", f"retriever={OTHER}"]) == 0
    out = capsys.readouterr().out
    assert "regenerated:" in out and "tool results replaced: retriever" in out and "no tool called" in out
    assert tool.live is False  # and it never raised: nothing called it


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tool-result", "retriever"], "--tool-result: expected NAME=TEXT"),
        (["--generate", "--tool-result", "web=x"], "no recorded call result named 'web'"),
        (["--max-new-tokens", "2"], "need --generate"),
    ],
)
def test_replay_generate_errors_are_one_line(
    incident: Any, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["replay", str(incident[0]), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_recorder_span_links_a_transformed_result(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    import torch

    from forensics.record import record

    model, tok, info = tiny_llama
    with record(model, tok, model_sha256=info.sha256) as rec:
        temp = rec.external("weather", lambda city: {"c": 31})("Lyon")["c"]
        text = f"{temp} degrees"
        rec.span("weather", text)
        prompt = f"Weather: {text}. Coat?"
        with torch.inference_mode():
            model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=2, do_sample=False, pad_token_id=0)
    bundle = rec.save(tmp_path / "b", kind="benign", prompt=prompt)
    span = bundle.inputs["spans"][bundle.manifest["external_calls"][0]["span"]]
    assert span["chars"] == [9, 9 + len(text)] and span["name"] == "weather"
    assert rewrite_input(bundle, tok, {"weather": "-5 degrees"}) == tok("Weather: -5 degrees. Coat?")["input_ids"]


@pytest.mark.slow
def test_smollm_counterfactual_retrieval_turns_lyon_into_paris(smol: LoadedModel, tmp_path: Path) -> None:
    from forensics.failure import FailureSpec

    log = CallLog()
    doc = log.external("retriever", lambda query: DOC)("capital of France")
    prompt = f"Retrieved: {doc}\nThe capital of France is"
    run = record_greedy(smol, prompt, tmp_path / "b", FailureSpec.forbidden("Lyon"), max_new_tokens=2, calls=log)
    assert run.failed and run.text.startswith(" Lyon")
    rp = Replayer(run.bundle, loaded=smol)
    fixed = hybrid_generate(rp, replacements={"retriever": "The capital of France is Paris."})
    assert fixed.text.startswith(" Paris")
