"""Provenance (issue 13, item 4): which input spans cause a failure — gradient × embedding per span, then
removal and ablation measured by replay, the cause validated by regenerating the answer without it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.cli import main
from forensics.config import Config, ToggleConfig
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.rca import RCAPipeline
from forensics.rca.provenance import attribution, provenance_for, token_attribution
from forensics.record import CallLog, record_greedy
from forensics.replay import Intervention, Replayer
from forensics.replay.hybrid import regenerate
from forensics.report.html import render_html

DOC = "The capital of France is Lyon."
DOCS = [DOC, "Zebras eat grass in Kenya every day, quietly.", "Lyon Lyon Lyon.", "Berlin is big.", "Paris."]


def _incident(loaded: LoadedModel, out: Path, spec: Any = "runner-up") -> Any:
    log = CallLog()
    doc = log.external("retriever", lambda query: DOC)("capital of France")
    return record_greedy(loaded, f"Retrieved: {doc}\nThe capital of France is", out, spec, max_new_tokens=3, calls=log)


@pytest.fixture
def rp(tiny_llama: LoadedModel, tmp_path: Path) -> Replayer:
    return Replayer(_incident(tiny_llama, tmp_path / "inc").bundle, loaded=tiny_llama)


def test_attribution_is_summed_per_span(rp: Replayer) -> None:
    spans = rp.bundle.inputs["spans"]
    per_token = token_attribution(rp)
    assert len(per_token) == rp.length
    for span, score in zip(spans, attribution(rp, spans), strict=True):
        start, end = span["tokens"]
        assert score == pytest.approx(sum(per_token[start:end]), abs=1e-6)


def test_attribution_is_the_first_order_effect_of_scaling_a_span(rp: Replayer) -> None:
    """d metric / d alpha at alpha = 1, for the span's embeddings scaled by alpha, is its gradient × embedding:
    a finite difference by replay (a ``scale`` intervention) agrees with the backward pass."""
    span = next(s for s in rp.bundle.inputs["spans"] if s["kind"] == "external")
    positions = tuple(range(*span["tokens"]))
    eps = 1e-3
    up, down = (rp.run((Intervention("model.embed_tokens", "scale", positions, factor=1 + e),)) for e in (eps, -eps))
    slope = (up.metric - down.metric) / (2 * eps)
    assert attribution(rp, [span])[0] == pytest.approx(slope, rel=0.05, abs=1e-3)


def test_removal_and_ablation_are_measured_by_replay(rp: Replayer, tiny_llama: LoadedModel) -> None:
    out = provenance_for(rp, top=3)
    assert out["evaluated"] == 3 == out["total_spans"]
    ext = next(r for r in out["spans"] if r["kind"] == "external")
    assert ext["name"] == "retriever" and ext["call"] == 0 and ext["text"] == DOC
    assert ext["label"] == f"retriever result #1 ({DOC!r})"
    # removal: the input re-rendered without the document, then the decision step of that input
    tok = tiny_llama.tokenizer
    ids = tok("Retrieved: \nThe capital of France is")["input_ids"] + rp.bundle.outputs["generated_ids"][: rp.step]
    with torch.inference_mode():
        logits = tiny_llama.model(input_ids=torch.tensor([ids])).logits[:, -1].float()
    assert rp.spec is not None
    metric = float(rp.spec.metric(logits, observed_id=rp.observed_id, target_id=rp.target_id)[0])
    assert ext["removed"]["metric"] == pytest.approx(metric, abs=1e-4)
    assert ext["removed"]["argmax_token"] == tok.decode([int(logits[0].argmax())])
    # ablation: the span's embedding positions zeroed, by the replay driver
    iv = Intervention("model.embed_tokens", "zero", tuple(range(*ext["tokens"])))
    assert ext["ablated"]["metric"] == pytest.approx(rp.run((iv,)).metric, abs=1e-5)
    assert ext["ablated"]["fixed"] is rp.run((iv,)).fixed
    assert out["incident"]["metric"] == pytest.approx(rp.run(()).metric)


def test_spans_are_ranked_by_attribution_size(rp: Replayer) -> None:
    out = provenance_for(rp, top=2)
    scores = [abs(r["attribution"]) for r in out["spans"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    everything = sorted((abs(a) for a in attribution(rp, rp.bundle.inputs["spans"])), reverse=True)
    assert scores == pytest.approx(everything[:2])


def test_cause_is_a_fixing_removal_validated_by_regeneration(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    """On the tiny model: a document that changes the answer, and the answer without it as the expected one,
    so removing the document fixes the failure by construction; the cause names the call and regenerates
    that answer from the input without it."""
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    bare = tok("Retrieved: \nThe capital of France is")["input_ids"]
    with torch.inference_mode():
        first_id = int(model(input_ids=torch.tensor([bare])).logits[0, -1].argmax())
        doc = next(
            d
            for d in DOCS
            if int(
                model(**tok(f"Retrieved: {d}\nThe capital of France is", return_tensors="pt")).logits[0, -1].argmax()
            )
            != first_id
        )
    log = CallLog()
    log.external("retriever", lambda query: doc)("capital of France")
    spec = FailureSpec("expected", tok.decode([first_id]), (first_id,))
    run = record_greedy(tiny_llama, f"Retrieved: {doc}\nThe capital of France is", tmp_path / "inc", spec, calls=log)
    assert run.failed
    rp = Replayer(run.bundle, loaded=tiny_llama)
    out = provenance_for(rp)
    cause = out["cause"]
    assert cause is not None and cause["kind"] == "external" and cause["name"] == "retriever"
    assert cause["removed"]["fixed"] and cause["removed"]["argmax_token"] == tok.decode([first_id])
    assert cause["regenerated"]["ids"] == regenerate(rp, bare, (), len(run.bundle.outputs["generated_ids"]))
    assert cause["regenerated"]["ids"][0] == first_id
    assert cause["statement"].startswith(f"removing retriever result #1 ({doc!r}) turns ")
    assert out["summary"].startswith(cause["statement"])


def test_a_span_that_is_the_whole_input_is_not_removed(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    plain = record_greedy(tiny_llama, "Two plus two is", tmp_path / "plain", max_new_tokens=2)
    out = provenance_for(Replayer(plain.bundle, loaded=tiny_llama))
    assert [r["kind"] for r in out["spans"]] == ["sentence"]
    row = out["spans"][0]
    assert row["label"] == "sentence #1 ('Two plus two is')" and row["ablated"]["module"] == "model.embed_tokens"
    if row["removed"] is None:  # the tokenizer adds no BOS: nothing would be left to run
        assert out["cause"] is None and out["summary"].startswith("no span could be removed")


def test_no_fixing_removal_names_the_largest_move(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    run = record_greedy(tiny_llama, "Two plus two is four. The answer is", tmp_path / "two", max_new_tokens=2)
    out = provenance_for(Replayer(run.bundle, loaded=tiny_llama))
    assert [r["index"] for r in sorted(out["spans"], key=lambda r: r["index"])] == [0, 1]
    if out["cause"] is None:
        most = max(out["spans"], key=lambda r: r["removed"]["metric"])
        assert out["summary"].startswith(
            f"no measured span's removal fixes the failure; the largest move: removing {most['label']} "
        )
    else:
        assert out["cause"]["removed"]["fixed"] and out["summary"].startswith(out["cause"]["statement"])


def _config(on: bool) -> Config:
    config = Config()
    return replace(config, modules=replace(config.modules, provenance=ToggleConfig(enabled=on)))


def test_pipeline_reports_provenance_only_when_on(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    path = _incident(tiny_llama, tmp_path / "inc").bundle.path
    off = RCAPipeline(_config(False)).analyze_incident(path, model=tiny_llama)
    assert off.provenance is None
    on = RCAPipeline(_config(True)).analyze_incident(path, model=tiny_llama, output=tmp_path / "r.json")
    assert on.provenance is not None and on.fidelity["faithful"]
    assert {r["kind"] for r in on.provenance["spans"]} == {"sentence", "external"}
    assert not any("provenance" in n and "not implemented" in n for n in on.notes)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["provenance"]["summary"] == on.provenance["summary"]
    assert set(report["provenance"]) >= {"spans", "cause", "summary", "incident", "method"}
    # one forward + backward pass, the incident, per measured span a removal and an ablation (suffix reuse
    # may add the one pass that learns its cache)
    assert 0 <= report["provenance"]["forward_passes"] - (2 + 2 * report["provenance"]["evaluated"]) <= 1
    assert all("_removed_ids" not in r for r in report["provenance"]["spans"])


def test_unfaithful_replay_gets_no_provenance(
    tiny_llama: LoadedModel, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from forensics.models import resolve_model

    path = _incident(tiny_llama, tmp_path / "inc").bundle.path
    other = resolve_model(str(tiny_dirs["llama"]), device="cpu")
    other.model.model.layers[1].mlp.down_proj.weight.data.mul_(1.5)
    result = RCAPipeline(_config(True)).analyze_incident(path, model=other, allow_model_mismatch=True)
    assert result.fidelity["faithful"] is False and result.provenance is None
    assert {"what": "provenance (input spans)", "why": "the replay is not faithful"} in result.not_evaluated


def test_report_with_provenance_is_schema_valid(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parent.parent / "docs" / "report.schema.json").read_text())
    path = _incident(tiny_llama, tmp_path / "inc").bundle.path
    report = RCAPipeline(_config(True)).analyze_incident(path, model=tiny_llama).to_dict()
    jsonschema.validate(json.loads(json.dumps(report, default=str)), schema)
    broken = {**report, "provenance": {"spans": "not a list"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(json.dumps(broken, default=str)), schema)


def test_cli_flag_turns_provenance_on(
    tiny_llama: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _incident(tiny_llama, tmp_path / "inc").bundle.path
    out = tmp_path / "r.json"
    assert main(["analyze", path, "--model", str(tiny_llama.info.path), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["provenance"] is None and "provenance:" not in capsys.readouterr().out
    assert main(["analyze", path, "--model", str(tiny_llama.info.path), "--output", str(out), "--provenance"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert f"provenance: {report['provenance']['summary']}" in printed


def test_html_shows_a_provenance_section_escaped(rp: Replayer, tiny_llama: LoadedModel, tmp_path: Path) -> None:
    report = RCAPipeline(_config(True)).analyze_incident(rp.bundle.path, model=tiny_llama).to_dict()
    page = render_html(report)
    assert 'id="provenance"' in page and "retriever result #1" in page
    hostile = json.loads(json.dumps(report, default=str))
    hostile["provenance"]["summary"] = "<script>alert(1)</script>"
    hostile["provenance"]["spans"][0]["label"] = "<img src=x onerror=alert(1)>"
    page = render_html(hostile)
    assert "<script>alert" not in page and "<img src=x" not in page and "&lt;script&gt;" in page


@pytest.mark.slow
def test_smollm_retrieved_document_is_the_cause(smol: LoadedModel, tmp_path: Path) -> None:
    """smollm2-135m repeats the retrieved " Lyon"; without the document it says " Paris"."""
    run = _incident(smol, tmp_path / "inc", FailureSpec.expected(" Paris", smol.tokenizer))
    assert run.failed and run.text.startswith(" Lyon")
    out = provenance_for(Replayer(run.bundle, loaded=smol))
    ext = next(r for r in out["spans"] if r["kind"] == "external")
    assert ext["attribution"] < 0  # its presence pushes towards ' Lyon'
    assert ext["removed"]["argmax_token"] == " Paris" and ext["ablated"]["fixed"]
    cause = out["cause"]
    assert cause["name"] == "retriever" and cause["validated"] and cause["regenerated"]["text"].startswith(" Paris")
    assert cause["statement"].startswith(
        f"removing retriever result #1 ({DOC!r}) turns ' Lyon' into ' Paris' (metric -"
    )


TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny llama with a chat template saved into its directory."""
    from transformers import AutoTokenizer

    from forensics.models import build_tiny_model, resolve_model
    from tests.conftest import LIVE_MODELS

    path = build_tiny_model("llama", tmp_path_factory.mktemp("chat") / "llama", seed=0, layers=2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    loaded = resolve_model(str(path), device="cpu")
    LIVE_MODELS.append(loaded.model)
    return loaded


def test_chat_messages_and_documents_are_named_and_removed_one_by_one(chat_llama: LoadedModel, tmp_path: Path) -> None:
    from forensics.record.spans import render_chat
    from forensics.replay.hybrid import rewrite_input

    docs = ["The capital of France is Lyon.", "Zebras eat grass in Kenya."]
    log = CallLog()
    found = log.external("retriever", lambda query: docs)("capital of France")
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "tool", "content": "\n".join(found)},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    run = record_greedy(chat_llama, messages, tmp_path / "chat", max_new_tokens=2, calls=log)
    rp = Replayer(run.bundle, loaded=chat_llama)
    out = provenance_for(rp, top=10)
    assert out["evaluated"] == out["total_spans"] == 5
    labels = {r["label"] for r in out["spans"]}
    assert "tool message #2 ('The capital of France is Lyon. Zebras eat grass in Kenya.')" in labels
    assert (
        f"retriever result #1, document 2 ({docs[1]!r})" in labels
        and "system message #1 ('Answer in one word.')" in labels
    )
    tok = chat_llama.tokenizer
    by_label = {r["label"]: r for r in out["spans"]}
    tool = by_label["tool message #2 ('The capital of France is Lyon. Zebras eat grass in Kenya.')"]
    assert tool["role"] == "tool" and tool["index"] == 1
    emptied = rewrite_input(rp.bundle, tok, {"message:1": ""})
    assert tool["removed"]["input_length"] == len(emptied) + rp.step
    second = by_label[f"retriever result #1, document 2 ({docs[1]!r})"]
    one_less = render_chat(tok, [messages[0], {"role": "tool", "content": docs[0] + "\n"}, messages[2]])
    assert (
        second["part"] == 1
        and second["removed"]["input_length"] == len(tok(one_less, add_special_tokens=False)["input_ids"]) + rp.step
    )
