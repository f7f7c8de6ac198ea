"""Spans of a recorded input (issue 13, items 1-2): messages, sentences and external-call results, each
with the token range that decodes back to its text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.bundle import load_bundle
from forensics.cli import main
from forensics.errors import ConfigError, ForensicsError
from forensics.models import LoadedModel, build_tiny_model, resolve_model
from forensics.record import CallLog, record, record_greedy
from forensics.record.spans import char_offsets, render_chat, sentence_ranges
from tests.conftest import LIVE_MODELS

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
DOC = "The capital of France is Lyon."
MESSAGES = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "tool", "content": DOC},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny llama with a chat template saved into its directory (the registry loads it from there)."""
    from transformers import AutoTokenizer

    path = build_tiny_model("llama", tmp_path_factory.mktemp("chat") / "llama", seed=0, layers=2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    loaded = resolve_model(str(path), device="cpu")
    LIVE_MODELS.append(loaded.model)
    return loaded


def decoded(bundle: Any, tok: Any, span: dict[str, Any]) -> str:
    start, end = span["tokens"]
    return str(tok.decode(bundle.inputs["input_ids"][start:end]))


def test_chat_messages_are_spans_whose_tokens_decode_to_their_content(chat_llama: LoadedModel, tmp_path: Path) -> None:
    tok = chat_llama.tokenizer
    bundle = record_greedy(chat_llama, MESSAGES, tmp_path / "b", max_new_tokens=2).bundle
    assert bundle.inputs["prompt"] == render_chat(tok, MESSAGES)
    assert bundle.inputs["input_ids"] == tok(bundle.inputs["prompt"], add_special_tokens=False)["input_ids"]
    spans = bundle.inputs["spans"]
    assert [(s["kind"], s["index"], s["role"]) for s in spans] == [
        ("message", 0, "system"),
        ("message", 1, "tool"),
        ("message", 2, "user"),
    ]
    for span, msg in zip(spans, MESSAGES, strict=True):
        assert decoded(bundle, tok, span).strip() == msg["content"]
        start, end = span["chars"]
        assert bundle.inputs["prompt"][start:end] == msg["content"]


def test_plain_prompt_sentences_are_spans(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    prompt = "The sky is blue. Grass is green!\nWhy is that"
    bundle = record_greedy(tiny_llama, prompt, tmp_path / "b", max_new_tokens=2).bundle
    spans = bundle.inputs["spans"]
    assert [s["kind"] for s in spans] == ["sentence"] * 3
    texts = [decoded(bundle, tiny_llama.tokenizer, s).strip() for s in spans]
    assert texts == ["The sky is blue.", "Grass is green!", "Why is that"]


def test_sentence_split() -> None:
    text = "Pi is 3.14 here. Next?  Last one"
    assert [text[a:b] for a, b in sentence_ranges(text)] == ["Pi is 3.14 here.", "Next?", "Last one"]


def test_retriever_result_links_to_its_span(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    log = CallLog()
    doc = log.external("retriever", lambda query: DOC)("France")
    prompt = f"Retrieved: {doc}\nThe capital of France is"
    bundle = record_greedy(tiny_llama, prompt, tmp_path / "b", max_new_tokens=2, calls=log).bundle
    call = bundle.manifest["external_calls"][0]
    span = bundle.inputs["spans"][call["span"]]
    assert span["kind"] == "external" and span["name"] == "retriever" and span["call"] == 0
    assert decoded(bundle, tiny_llama.tokenizer, span).strip() == DOC


def test_list_results_link_each_document(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    model, tok, info = tiny_llama
    docs = ["Paris is in France.", "Lyon is a city."]
    prompt = "Context: " + " ".join(docs) + " Answer:"
    with record(model, tok, model_sha256=info.sha256) as rec:
        rec.external("search", lambda q: docs)("France")
        with torch.inference_mode():
            model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=2, do_sample=False, pad_token_id=0)
    bundle = rec.save(tmp_path / "b", kind="benign", prompt=prompt)
    ext = [s for s in bundle.inputs["spans"] if s["kind"] == "external"]
    assert [s["part"] for s in ext] == [0, 1]
    assert [decoded(bundle, tok, s).strip() for s in ext] == docs
    assert bundle.manifest["external_calls"][0]["span"] == bundle.inputs["spans"].index(ext[0])


def test_explicit_span_for_a_transformed_result(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    log = CallLog()
    raw = log.external("weather", lambda city: {"temp_c": 31, "city": city})("Lyon")
    text = f"It is {raw['temp_c']} degrees in {raw['city']}."
    log.span("weather", text)
    prompt = f"Weather: {text} Should I wear a coat?"
    bundle = record_greedy(tiny_llama, prompt, tmp_path / "b", max_new_tokens=2, calls=log).bundle
    call = bundle.manifest["external_calls"][0]
    span = bundle.inputs["spans"][call["span"]]
    assert (span["kind"], span["name"], span["call"]) == ("external", "weather", 0)
    assert decoded(bundle, tiny_llama.tokenizer, span).strip() == text
    by_range = CallLog()
    by_range.external("weather", lambda city: 31)("Lyon")
    by_range.span("weather", (9, 9 + len(text)))
    again = record_greedy(tiny_llama, prompt, tmp_path / "c", max_new_tokens=2, calls=by_range).bundle
    assert again.inputs["spans"][-1]["tokens"] == span["tokens"]


def test_explicit_span_not_in_the_input_is_an_error(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    log = CallLog()
    log.span("weather", "never fed to the model")
    with pytest.raises(ForensicsError, match="span 'weather'.*does not appear"):
        record_greedy(tiny_llama, "Hello there.", tmp_path / "b", max_new_tokens=1, calls=log)


def test_chat_errors_are_clear(tiny_llama: LoadedModel, chat_llama: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no chat template"):
        record_greedy(tiny_llama, MESSAGES, tmp_path / "a", max_new_tokens=1)
    with pytest.raises(ConfigError, match=r"messages\[1\]: role 'robot' unknown"):
        record_greedy(chat_llama, [MESSAGES[0], {"role": "robot", "content": "x"}], tmp_path / "b", max_new_tokens=1)


def test_offsets_fall_back_to_incremental_decoding(tiny_llama: LoadedModel) -> None:
    tok = tiny_llama.tokenizer
    text = "The sky is blue. Grass"
    ids = tok(text)["input_ids"]

    class NoOffsets:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("return_offsets_mapping is not available")

        def decode(self, ids: list[int], **kwargs: Any) -> str:
            return str(tok.decode(ids, **kwargs))

    fast = [(s, e) for s, e in char_offsets(tok, text, ids) if e > s]
    slow = [(s, e) for s, e in char_offsets(NoOffsets(), text, ids) if e > s]
    assert slow == fast


def test_encrypted_bundle_keeps_the_prompt_and_spans_sealed(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    key = bytes(range(32))
    log = CallLog()
    doc = log.external("retriever", lambda q: DOC)("France")
    run = record_greedy(
        tiny_llama, f"Retrieved: {doc}\nSo", tmp_path / "b", max_new_tokens=1, encryption_key=key, calls=log
    )
    on_disk = (tmp_path / "b" / "manifest.json").read_text()
    assert "Lyon" not in on_disk and "Retrieved" not in on_disk and '"spans"' not in on_disk
    assert "inputs" not in json.loads(on_disk)
    assert load_bundle(tmp_path / "b", encryption_key=key).inputs["spans"] == run.bundle.inputs["spans"]


def test_record_cli_messages(chat_llama: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messages = tmp_path / "chat.json"
    messages.write_text(json.dumps(MESSAGES))
    out = tmp_path / "b"
    argv = ["record", "--model", chat_llama.info.path, "--messages", str(messages), "--forbidden", "Lyon"]
    assert main([*argv, "--out", str(out), "--max-new-tokens", "2"]) == 0
    assert "messages:  3 (system, tool, user)" in capsys.readouterr().out
    assert [s["role"] for s in load_bundle(out).inputs["spans"]] == ["system", "tool", "user"]
    messages.write_text(json.dumps([{"role": "robot", "content": "hi"}]))
    assert main([*argv, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --messages") and "role 'robot' unknown" in err and "\n" not in err


@pytest.mark.slow
def test_smollm_chat_template_spans(smol: LoadedModel, tmp_path: Path) -> None:
    bundle = record_greedy(smol, MESSAGES, tmp_path / "b", max_new_tokens=1).bundle
    for span, msg in zip(bundle.inputs["spans"], MESSAGES, strict=True):
        assert decoded(bundle, smol.tokenizer, span).strip() == msg["content"]


def test_replay_generate_replaces_a_chat_message(
    chat_llama: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forensics.replay import Replayer
    from forensics.replay.hybrid import hybrid_generate, rewrite_input

    bundle = record_greedy(chat_llama, MESSAGES, tmp_path / "b", max_new_tokens=3).bundle
    other = [MESSAGES[0], {"role": "tool", "content": "Zebras eat grass."}, MESSAGES[2]]
    tok = chat_llama.tokenizer
    expected = tok(render_chat(tok, other), add_special_tokens=False)["input_ids"]
    assert rewrite_input(bundle, tok, {"message:1": "Zebras eat grass."}) == expected
    run = hybrid_generate(Replayer(bundle, loaded=chat_llama), replacements={"message:1": "Zebras eat grass."})
    assert run.input_changed and run.input_ids == expected
    assert main(["replay", str(tmp_path / "b"), "--generate", "--tool-result", "web=x"]) == 2
    assert "found in the input: message:0, message:1, message:2" in capsys.readouterr().err
