"""Spans on the documented library path (issue "what a new user hit", item 3): a bundle recorded with
``with record(...) as rec:`` around the user's own call — ``generate``, a plain forward, a pipeline —
holds the same input spans as ``record_greedy`` gives (every sentence, every external-call result found
in the input), so provenance runs on it instead of being skipped."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.bundle import load_bundle
from forensics.config import Config, ToggleConfig
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.record import CallLog, record, record_greedy
from forensics.record.spans import sentence_ranges

DOC = "The capital of France is Lyon."
PROMPT = f"Retrieved: {DOC}\nThe capital of France is"
SENTENCES = ["Retrieved: The capital of France is Lyon.", "The capital of France is"]


def token_range(tok: Any, text: str, chars: tuple[int, int]) -> list[int]:
    """The tokens of ``text`` that overlap ``chars``, from the tokenizer's own offsets (what a span must say)."""
    enc = tok(text, return_offsets_mapping=True)
    hit = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < chars[1] and e > chars[0]]
    return [hit[0], hit[-1] + 1]


def check_spans(bundle: Any, tok: Any, *, external: bool) -> None:
    """The saved manifest: the prompt as text, its sentences, the retriever's result linked to its tokens."""
    manifest = load_bundle(bundle.path).manifest
    inputs = manifest["inputs"]
    assert inputs["prompt"] == PROMPT and inputs["input_ids"] == tok(PROMPT)["input_ids"]
    sentences = [s for s in inputs["spans"] if s["kind"] == "sentence"]
    assert [PROMPT[slice(*s["chars"])] for s in sentences] == SENTENCES
    assert [s["chars"] for s in sentences] == [list(r) for r in sentence_ranges(PROMPT)]
    for span, text in zip(sentences, SENTENCES, strict=True):
        assert span["tokens"] == token_range(tok, PROMPT, tuple(span["chars"]))
        assert tok.decode(inputs["input_ids"][slice(*span["tokens"])]).strip() == text
    found = [s for s in inputs["spans"] if s["kind"] == "external"]
    if not external:
        assert found == []
        return
    (span,) = found
    at = PROMPT.index(DOC)
    assert (span["name"], span["call"], span["chars"]) == ("retriever", 0, [at, at + len(DOC)])
    assert span["tokens"] == token_range(tok, PROMPT, (at, at + len(DOC)))
    assert tok.decode(inputs["input_ids"][slice(*span["tokens"])]).strip() == DOC
    assert manifest["external_calls"][0]["span"] == inputs["spans"].index(span)


def test_generate_under_record_gets_sentence_and_external_spans(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, info = tiny_llama
    with record(model, tok, model_ref=str(info.path), model_sha256=info.sha256) as rec:
        doc = rec.external("retriever", lambda query: DOC)("capital of France")
        with torch.inference_mode():
            model.generate(
                **tok(f"Retrieved: {doc}\nThe capital of France is", return_tensors="pt"),
                max_new_tokens=2,
                do_sample=False,
                pad_token_id=0,
            )
    bundle = rec.save(tmp_path / "b", failure=FailureSpec.forbidden("Lyon"))
    check_spans(bundle, tok, external=True)


def test_spans_equal_those_of_record_greedy(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, info = tiny_llama
    with record(model, tok, model_sha256=info.sha256) as rec:
        rec.external("retriever", lambda query: DOC)("capital of France")
        with torch.inference_mode():
            model.generate(**tok(PROMPT, return_tensors="pt"), max_new_tokens=2, do_sample=False, pad_token_id=0)
    mine = rec.save(tmp_path / "lib", kind="benign")
    log = CallLog()
    log.external("retriever", lambda query: DOC)("capital of France")
    greedy = record_greedy(tiny_llama, PROMPT, tmp_path / "greedy", "as-generated", max_new_tokens=2, calls=log)
    assert mine.inputs["spans"] == greedy.bundle.inputs["spans"]
    assert mine.manifest["external_calls"][0]["span"] == greedy.bundle.manifest["external_calls"][0]["span"]


def test_plain_forward_under_record_gets_spans(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, info = tiny_llama
    with record(model, tok, model_sha256=info.sha256) as rec:
        doc = rec.external("retriever", lambda query: DOC)("capital of France")
        with torch.inference_mode():
            model(**tok(f"Retrieved: {doc}\nThe capital of France is", return_tensors="pt"))
    bundle = rec.save(tmp_path / "b", kind="benign")
    assert len(bundle.outputs["generated_ids"]) == 1  # one forward: the next token is the whole answer
    check_spans(bundle, tok, external=True)


def test_pipeline_under_record_gets_spans(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    from transformers import pipeline

    model, tok, info = tiny_llama
    generator = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    with record(model, tok, model_sha256=info.sha256) as rec:
        generator(PROMPT, max_new_tokens=2, do_sample=False, pad_token_id=0)
    check_spans(rec.save(tmp_path / "b", kind="benign"), tok, external=False)


def test_an_explicit_prompt_still_wins(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, info = tiny_llama
    with record(model, tok, model_sha256=info.sha256) as rec, torch.inference_mode():
        model(**tok(PROMPT, return_tensors="pt"))
    bundle = rec.save(tmp_path / "b", kind="benign", prompt="Something else entirely.")
    assert bundle.inputs["prompt"] == "Something else entirely."
    assert [s["kind"] for s in bundle.inputs["spans"]] == ["sentence"]


def test_without_a_tokenizer_there_is_no_text_and_no_spans(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, info = tiny_llama
    with record(model, model_sha256=info.sha256) as rec, torch.inference_mode():
        model(**tok(PROMPT, return_tensors="pt"))
    bundle = rec.save(tmp_path / "b", kind="benign")
    assert bundle.inputs["prompt"] is None and "spans" not in bundle.inputs


@pytest.mark.slow
def test_smollm_library_recording_gets_provenance(smol: LoadedModel, tmp_path: Path) -> None:
    """The new user's incident: a retriever's document pasted into the prompt, smollm2-135m repeating its
    " Lyon"; analysed with provenance on, the document is measured (not "provenance skipped")."""
    from forensics.rca import RCAPipeline

    model, tok, info = smol
    with record(model, tok, model_ref="smollm2-135m", model_sha256=info.sha256) as rec:
        doc = rec.external("retriever", lambda query: DOC)("capital of France")
        with torch.inference_mode():
            model.generate(
                **tok(f"Retrieved: {doc}\nThe capital of France is", return_tensors="pt"),
                max_new_tokens=3,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
    bundle = rec.save(tmp_path / "inc", failure=FailureSpec.expected(" Paris", tok))
    assert bundle.outputs["is_failure"] and tok.decode(bundle.outputs["generated_ids"]).startswith(" Lyon")
    config = Config()
    modules = replace(  # provenance alone: the CF and CCA searches are other tests' business
        config.modules,
        provenance=ToggleConfig(enabled=True),
        cf=replace(config.modules.cf, enabled=False),
        cca=replace(config.modules.cca, enabled=False),
    )
    result = RCAPipeline(replace(config, modules=modules)).analyze_incident(bundle.path, model=smol)
    prov = result.provenance
    assert prov is not None and not prov["summary"].startswith("provenance skipped"), prov
    assert prov["total_spans"] == 3 and prov["evaluated"] >= 1
    ext = next(r for r in prov["spans"] if r["kind"] == "external")
    assert ext["name"] == "retriever" and ext["text"] == DOC
    assert ext["removed"]["argmax_token"] == " Paris"
