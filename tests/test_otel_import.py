"""`import-trace`: OTLP JSON GenAI traces re-recorded on a local model (issue 13, item 3).

Each test writes its own trace in the collector file exporter's format; the model is the tiny llama
with a small chat template saved into a copy of its directory.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forensics.bundle import load_bundle
from forensics.cli import main
from forensics.errors import TraceError
from forensics.models import LoadedModel, resolve_model
from forensics.record.otel import MAX_TRACE_BYTES, TraceCall, import_call, read_call, render_prompt

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SYSTEM = "You answer with one city."
DOC = "The capital of France is Lyon."
USER = f"Retrieved: {DOC}\nThe capital of France is"
TRACE_ID = "5b8efff798038103d269b633813fc60c"


def attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value if isinstance(value, str) else json.dumps(value)}}


def span(span_id: str, name: str, start: int, attrs: dict[str, Any], parent: str = "") -> dict[str, Any]:
    return {
        "traceId": TRACE_ID,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 5_000_000),
        "attributes": [attr(k, v) for k, v in attrs.items()],
    }


def text(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": content}]}


def chat_span(span_id: str, start: int, user: str = USER, output: str | None = " Lyon") -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.input.messages": [text("system", SYSTEM), text("user", user)],
    }
    if output is not None:
        attrs["gen_ai.output.messages"] = [{**text("assistant", output), "finish_reason": "stop"}]
    return span(span_id, "chat gpt-4o-mini", start, attrs, parent="00f067aa0ba902b7")


def retrieval_span() -> dict[str, Any]:
    docs = [{"id": "doc-1", "score": 0.93, "content": DOC}]
    attrs = {
        "gen_ai.operation.name": "retrieval",
        "gen_ai.retrieval.query.text": "capital of France",
        "gen_ai.retrieval.documents": docs,
    }
    return span("a1b2c3d4e5f60718", "retrieval", 1_700_000_000_000_000_000, attrs, parent="00f067aa0ba902b7")


def otlp(*spans: dict[str, Any]) -> dict[str, Any]:
    scope = {"scope": {"name": "openai.instrumentation"}, "spans": list(spans)}
    return {"resourceSpans": [{"resource": {"attributes": [attr("service.name", "rag")]}, "scopeSpans": [scope]}]}


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def chat_dir(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    dest = tmp_path_factory.mktemp("chat-model") / "tiny-chat"
    shutil.copytree(tiny_dirs["llama"], dest)
    tok = AutoTokenizer.from_pretrained(dest)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def chat_model(chat_dir: Path) -> LoadedModel:
    from tests.conftest import LIVE_MODELS

    loaded = resolve_model(str(chat_dir), device="cpu")
    LIVE_MODELS.append(loaded.model)
    return loaded


def rendered(system: str = SYSTEM, user: str = USER) -> str:
    return f"<|system|>{system}\n<|user|>{user}\n<|assistant|>"


def local_says(chat_model: LoadedModel, tmp_path: Path, trace: Path) -> str:
    call = read_call(trace)
    run = import_call(chat_model, call, tmp_path / "probe", "as-generated")
    return run.text


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the import ------------------------------------------------------------------------------------
def test_chat_span_with_retrieval_is_rerecorded(
    chat_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = write(tmp_path / "trace.json", otlp(retrieval_span(), chat_span("5fb397be34d26b51", 1_700_000_001 * 10**9)))
    out = tmp_path / "bundle"
    code, stdout, _ = cli(
        ["import-trace", str(trace), "--model", str(chat_dir), "--forbidden", " Lyon", "--out", str(out)], capsys
    )
    assert code == 0
    bundle = load_bundle(out)
    assert bundle.inputs["prompt"] == rendered()  # the chat template's rendering, generation prompt included
    calls = bundle.manifest["external_calls"]
    assert [(c["name"], c["args"], c["result"]) for c in calls] == [
        ("retrieval", ["capital of France"], [{"id": "doc-1", "score": 0.93, "content": DOC}])
    ]
    assert calls[0]["duration_s"] == pytest.approx(0.005)
    spans = bundle.inputs["spans"]  # the retrieved document is linked to the input text it became
    linked = spans[calls[0]["span"]]
    assert linked["kind"] == "external" and linked["name"] == "retrieval"
    assert bundle.inputs["prompt"][slice(*linked["chars"])] == DOC
    assert [s["role"] for s in spans if s["kind"] == "message"] == ["system", "user"]
    assert "span:      5fb397be34d26b51 (chat, 2 messages)" in stdout
    assert "1 calls from the trace (retrieval)" in stdout


def test_verdict_reproduces_or_differs(
    chat_model: LoadedModel, chat_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    differs = write(tmp_path / "differs.json", otlp(chat_span("5fb397be34d26b51", 10, output=" Zanzibar Zanzibar")))
    said = local_says(chat_model, tmp_path, differs)
    assert said.strip() and not " Zanzibar Zanzibar".startswith(said)
    code, stdout, _ = cli(
        ["import-trace", str(differs), "--model", str(chat_dir), "--expected", " Paris", "--out", str(tmp_path / "a")],
        capsys,
    )
    assert code == 0
    assert f"trace:     differs: trace said ' Zanzibar Zanzibar', local model says {said!r}" in stdout
    same = write(tmp_path / "same.json", otlp(chat_span("5fb397be34d26b51", 10, output=said + " and more")))
    code, stdout, _ = cli(
        ["import-trace", str(same), "--model", str(chat_dir), "--expected", " Paris", "--out", str(tmp_path / "b")],
        capsys,
    )
    assert code == 0 and "trace:     reproduces" in stdout
    silent = write(tmp_path / "silent.json", otlp(chat_span("5fb397be34d26b51", 10, output=None)))
    call = read_call(silent)
    run = import_call(chat_model, call, tmp_path / "c", "as-generated")
    assert run.reproduces is None and "records no output" in run.verdict


def test_span_id_picks_a_span_and_the_default_is_the_last_started(chat_model: LoadedModel, tmp_path: Path) -> None:
    late = chat_span("bbbbbbbbbbbbbbbb", 2_000, user="The second question")
    early = chat_span("aaaaaaaaaaaaaaaa", 1_000, user="The first question")
    trace = write(tmp_path / "two.json", otlp(late, early))  # file order is not start order
    assert read_call(trace).messages[-1]["content"] == "The second question"
    picked = read_call(trace, "AAAAAAAAAAAAAAAA")
    assert picked.span_id == "aaaaaaaaaaaaaaaa"
    run = import_call(chat_model, picked, tmp_path / "b", "as-generated")
    assert run.bundle.inputs["prompt"] == rendered(user="The first question")


def test_cli_span_id(chat_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    late = chat_span("bbbbbbbbbbbbbbbb", 2_000, user="The second question")
    early = chat_span("aaaaaaaaaaaaaaaa", 1_000, user="The first question")
    trace = write(tmp_path / "two.json", otlp(late, early))
    out = tmp_path / "b"
    argv = ["import-trace", str(trace), "--model", str(chat_dir), "--expected", " x", "--out", str(out)]
    code, stdout, _ = cli([*argv, "--span-id", "aaaaaaaaaaaaaaaa"], capsys)
    assert code == 0 and "span:      aaaaaaaaaaaaaaaa (chat, 2 messages)" in stdout
    assert load_bundle(out).inputs["prompt"] == rendered(user="The first question")
    code, _, stderr = cli([*argv[:-1], str(tmp_path / "c"), "--span-id", "cccc"], capsys)
    assert code == 2 and stderr.startswith("error: ") and "no span has id 'cccc'" in stderr


def test_json_lines_and_tool_parts(tmp_path: Path) -> None:
    tool = span(
        "c0ffee0000000001",
        "execute_tool get_weather",
        50,
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.arguments": {"city": "Paris"},
            "gen_ai.tool.call.result": "rain, 12 C",
        },
    )
    messages = [
        text("user", "Weather in Paris?"),
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "rain, 12 C"}]},
    ]
    chat = span("c0ffee0000000002", "chat", 100, {"gen_ai.operation.name": "chat", "gen_ai.input.messages": messages})
    path = tmp_path / "lines.jsonl"
    path.write_text(json.dumps(otlp(tool)) + "\n" + json.dumps(otlp(chat)) + "\n")  # the exporter's format
    call = read_call(path)
    assert call.messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        },
        {"role": "tool", "content": "rain, 12 C"},
    ]
    assert [(c["name"], c["args"], c["result"]) for c in call.external_calls] == [
        ("get_weather", [{"city": "Paris"}], "rain, 12 C")
    ]
    assert call.output_text is None


# -- hostile files ---------------------------------------------------------------------------------
def _good() -> dict[str, Any]:
    return otlp(retrieval_span(), chat_span("5fb397be34d26b51", 1_700_000_001 * 10**9))


def _with_attr(key: str, value: dict[str, Any]) -> dict[str, Any]:
    doc = _good()
    chat = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    chat["attributes"] = [a for a in chat["attributes"] if a["key"] != key] + [{"key": key, "value": value}]
    return doc


HOSTILE: dict[str, tuple[bytes, str]] = {
    "not-json": (b"{resourceSpans: oops", "invalid JSON"),
    "not-utf8": (b'{"resourceSpans": ["\xff\xfe"]}', "UTF-8"),
    "top-level-list": (b"[1, 2]", "expected an object with 'resourceSpans'"),
    "spans-not-list": (b'{"resourceSpans": [{"scopeSpans": [{"spans": 7}]}]}', "expected a list"),
    "no-chat-span": (json.dumps(otlp(retrieval_span())).encode(), "no chat span"),
    "messages-int": (
        json.dumps(_with_attr("gen_ai.input.messages", {"intValue": "3"})).encode(),
        "expected a list of messages",
    ),
    "messages-bad-json": (
        json.dumps(_with_attr("gen_ai.input.messages", {"stringValue": "[{role: user"})).encode(),
        "gen_ai.input.messages: expected JSON, got invalid JSON",
    ),
    "role-bogus": (
        json.dumps(_with_attr("gen_ai.input.messages", {"stringValue": '[{"role": "root", "parts": []}]'})).encode(),
        "expected a message with role one of",
    ),
    "anyvalue-two-fields": (
        json.dumps(_with_attr("gen_ai.operation.name", {"stringValue": "chat", "intValue": "1"})).encode(),
        "expected an AnyValue with one field",
    ),
    "deep": (b'{"resourceSpans": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested at most 64 levels"),
    "deep-in-messages": (
        json.dumps(_with_attr("gen_ai.input.messages", {"stringValue": "[" * 500 + "]" * 500})).encode(),
        "nested at most 64 levels",
    ),
    "nan": (b'{"resourceSpans": [], "x": NaN}', "finite number"),
    "pretty-broken": (json.dumps(_good(), indent=1).encode()[:-40], "trace.json: expected OTLP JSON, got invalid JSON"),
    "jsonl-broken-line": (
        json.dumps(_good()).encode() + b"\n" + json.dumps(_good()).encode()[:-3] + b"\n",
        "trace.json line 2: expected OTLP JSON, got invalid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_trace_is_one_error_line(
    case: str, chat_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, fragment = HOSTILE[case]
    trace = tmp_path / "trace.json"
    trace.write_bytes(data)
    with pytest.raises(TraceError, match="trace|span"):
        read_call(trace)
    code, stdout, stderr = cli(
        ["import-trace", str(trace), "--model", str(chat_dir), "--forbidden", "x", "--out", str(tmp_path / "b")], capsys
    )
    assert code == 2 and not stdout
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert fragment in stderr
    assert not (tmp_path / "b").exists()


def test_unknown_span_id_and_huge_file(tmp_path: Path) -> None:
    trace = write(tmp_path / "trace.json", _good())
    with pytest.raises(TraceError, match="no span has id 'ffff' \\(chat spans: 5fb397be34d26b51\\)"):
        read_call(trace, "ffff")
    with pytest.raises(TraceError, match="expected a chat span .* got 'retrieval'"):
        read_call(trace, "a1b2c3d4e5f60718")
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(MAX_TRACE_BYTES + 1)  # sparse: the size cap refuses it before parsing
    with pytest.raises(TraceError, match=f"expected at most {MAX_TRACE_BYTES} bytes"):
        read_call(huge)


def test_no_chat_template_is_one_model_error(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    from forensics.errors import ModelError

    call = read_call(write(tmp_path / "t.json", _good()))
    if getattr(tiny_llama.tokenizer, "chat_template", None):
        pytest.skip("the tiny tokenizer has a chat template")
    with pytest.raises(ModelError, match="no chat template"):
        render_prompt(call, tiny_llama.tokenizer)


# -- fuzzing, as the bundles are fuzzed ------------------------------------------------------------
GOOD = json.dumps(_good(), indent=1).encode()
mutation = st.tuples(
    st.sampled_from(["flip", "truncate", "insert", "replace"]),
    st.integers(min_value=0, max_value=len(GOOD)),
    st.binary(min_size=1, max_size=16),
)


def _read_or_trace_error(path: Path) -> None:
    try:
        call = read_call(path)
    except TraceError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(call, TraceCall) and call.messages


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation)
def test_mutated_traces_read_or_raise_trace_error(tmp_path: Path, m: tuple[str, int, bytes]) -> None:
    op, at, payload = m
    data = bytearray(GOOD)
    if op == "flip":
        data[at % len(data)] ^= payload[0] or 1
    elif op == "truncate":
        del data[at:]
    elif op == "insert":
        data[at:at] = payload
    else:
        data[at : at + len(payload)] = payload
    path = tmp_path / "mutated.json"
    path.write_bytes(bytes(data))
    _read_or_trace_error(path)


JUNK = [None, True, 0, -1, 1.5, "", "x", "chat", "[]", "{}", '[{"role": "user"}]', [], {}, [{}], {"stringValue": 1}]


def test_structurally_mutated_traces_read_or_raise_trace_error(tmp_path: Path) -> None:
    """Random nodes of a valid trace (and of its messages JSON) replaced by junk values, seeded."""
    rng = random.Random(13)
    for case in range(600):
        doc = _good()
        if case % 2:  # mutate inside the messages: decode, mutate, re-encode
            chat = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
            inner = chat["attributes"][2]["value"]
            inner["stringValue"] = json.dumps(_mutate(json.loads(inner["stringValue"]), rng))
        else:
            doc = _mutate(doc, rng)
        path = tmp_path / f"s{case}.json"
        path.write_text(json.dumps(doc))
        _read_or_trace_error(path)


def _mutate(doc: Any, rng: random.Random) -> Any:
    nodes: list[tuple[Any, Any]] = []  # (container, key) of every value
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            nodes.append((node, key))
            stack.append(value)
    for _ in range(rng.randint(1, 3)):
        container, key = rng.choice(nodes)
        container[key] = rng.choice(JUNK)
    return doc


def test_structured_tool_result_is_linked_and_system_instructions_lead(chat_model: LoadedModel, tmp_path: Path) -> None:
    tool = span(
        "c0ffee0000000001",
        "execute_tool get_weather",
        50,
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.result": {"temp": 12},
        },
    )
    messages = [
        text("user", "Weather in Paris?"),
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": {"temp": 12}}]},
    ]
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system_instructions": [{"type": "text", "content": "Be brief."}],
        "gen_ai.input.messages": messages,
    }
    trace = write(tmp_path / "tool.json", otlp(tool, span("c0ffee0000000002", "chat", 100, attrs)))
    call = read_call(trace)
    assert [m["role"] for m in call.messages] == ["system", "user", "tool"]
    assert call.messages[0]["content"] == "Be brief." and call.messages[2]["content"] == '{"temp": 12}'
    run = import_call(chat_model, call, tmp_path / "b", "as-generated")
    (recorded,) = run.bundle.manifest["external_calls"]
    assert recorded["result"] == {"temp": 12}
    linked = run.bundle.inputs["spans"][recorded["span"]]
    assert run.bundle.inputs["prompt"][slice(*linked["chars"])] == '{"temp": 12}'


def test_text_completion_span_is_recorded_as_its_text(chat_model: LoadedModel, tmp_path: Path) -> None:
    attrs = {"gen_ai.operation.name": "text_completion", "gen_ai.input.messages": [text("user", "Once upon a time")]}
    trace = write(tmp_path / "completion.json", otlp(span("0123456789abcdef", "text_completion", 1, attrs)))
    run = import_call(chat_model, read_call(trace), tmp_path / "b", "as-generated")
    assert run.bundle.inputs["prompt"] == "Once upon a time"  # no chat template around a completion
