"""OpenTelemetry GenAI traces (OTLP JSON, as the collector's file exporter writes them) into bundles.

    call = read_call("trace.json")                       # the last chat span, or span_id="5fb397be34d26b51"
    prompt = render_prompt(call, loaded.tokenizer)       # the model's own chat template + generation prompt
    run = import_call(loaded, call, "bundles/from-trace", FailureSpec.forbidden("Lyon"))
    run.verdict                                          # 'reproduces' or "differs: trace said …"

A trace is re-recorded, never replayed from the provider: the chat span's ``gen_ai.input.messages``
become chat messages for the local model, and every tool result (``execute_tool`` spans) and
retrieved document list (``gen_ai.retrieval.documents``) of the same trace goes into the manifest's
``external_calls``, served from the trace; no tool is ever run. The file itself is read by
``forensics.record.otlp``; every problem with it is one ``TraceError`` line naming the span and attribute.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forensics.bundle import Bundle
from forensics.bundle.strictjson import LimitError, check_value
from forensics.errors import ModelError, TraceError
from forensics.models.registry import LoadedModel
from forensics.record.greedy import SpecChoice, record_greedy
from forensics.record.otlp import TraceSpan, describe, read_spans, strict_json
from forensics.record.recorder import CallLog
from forensics.record.spans import CHAT_ROLES
from forensics.vocab import BundleKind

__all__ = [
    "CHAT_OPERATIONS",
    "MAX_TRACE_BYTES",
    "TraceCall",
    "TraceImport",
    "compare_outputs",
    "import_call",
    "read_call",
    "render_prompt",
]

MAX_TRACE_BYTES = 64 * 1024 * 1024
CHAT_OPERATIONS = ("chat", "text_completion", "generate_content")


@dataclass(frozen=True)
class TraceCall:
    """The LLM call picked from a trace: its input as chat messages, its recorded output, the trace's calls."""

    span_id: str
    operation: str
    messages: list[dict[str, str]]
    output_text: str | None
    external_calls: list[dict[str, Any]]


@dataclass(frozen=True)
class TraceImport:
    """A re-recorded trace call: the bundle, the local model's text, and whether it matches the trace."""

    bundle: Bundle
    text: str
    failed: bool
    reproduces: bool | None
    verdict: str


# -- picking the call ------------------------------------------------------------------------------
def read_call(path: str | os.PathLike[str], span_id: str | None = None) -> TraceCall:
    """The chat span ``span_id`` of the trace file (default: the chat span that started last)."""
    spans = read_spans(path, MAX_TRACE_BYTES)
    chats = [s for s in spans if s.operation in CHAT_OPERATIONS]
    if span_id is not None:
        wanted = span_id.strip().lower()
        match = [s for s in spans if s.span_id == wanted]
        if not match:
            known = ", ".join(s.span_id for s in chats[:8]) or "none"
            raise TraceError(f"trace {os.fspath(path)}: no span has id {span_id!r} (chat spans: {known})")
        chosen = match[0]
        if chosen.operation not in CHAT_OPERATIONS:
            raise TraceError(
                f"span {chosen.span_id}: expected a chat span (gen_ai.operation.name one of {list(CHAT_OPERATIONS)}),"
                f" got {chosen.operation!r}"
            )
    elif not chats:
        raise TraceError(
            f"trace {os.fspath(path)}: no chat span (gen_ai.operation.name one of {list(CHAT_OPERATIONS)})"
            f" among its {len(spans)} spans"
        )
    else:
        chosen = max(enumerate(chats), key=lambda pair: (pair[1].start_ns, pair[0]))[1]
    where = f"span {chosen.span_id or chosen.name}"
    messages = _messages(where, chosen.attributes)
    if not messages:
        raise TraceError(f"{where}: gen_ai.input.messages holds no message to re-record")
    calls = [c for s in spans if s.trace_id == chosen.trace_id for c in _calls_of(s)]
    try:  # as deep as the manifest will hold them: manifest -> external_calls -> [i] -> result ...
        check_value({"external_calls": calls})
    except LimitError as exc:
        raise TraceError(f"{where}: a tool result or document is too deep for a bundle: {exc}") from None
    return TraceCall(chosen.span_id, chosen.operation or "chat", messages, _output_text(where, chosen), calls)


def _json_attr(where: str, attributes: dict[str, Any], key: str) -> Any:
    """A structured attribute: recorded as a JSON string (usual on spans) or in structured form."""
    value = attributes.get(key)
    if isinstance(value, str):
        try:
            return strict_json(value.encode("utf-8"), "JSON")
        except TraceError as exc:
            raise TraceError(f"{where}: {key}: {exc}") from None
    return value


def _loose_attr(attributes: dict[str, Any], key: str) -> Any:
    """A tool's arguments or result: JSON when the string is JSON, else the text as it stands."""
    value = attributes.get(key)
    if isinstance(value, str):
        try:
            return strict_json(value.encode("utf-8"), "JSON")
        except TraceError:
            return value
    return value


def _messages(where: str, attributes: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    system = _json_attr(where, attributes, "gen_ai.system_instructions")
    if system is not None:
        text = _text_parts(f"{where}: gen_ai.system_instructions", system)
        out.extend([{"role": "system", "content": text}] if text else [])
    raw = _json_attr(where, attributes, "gen_ai.input.messages")
    if not isinstance(raw, list):
        raise TraceError(f"{where}: gen_ai.input.messages: expected a list of messages, got {describe(raw)}")
    for n, message in enumerate(raw):
        out.extend(_message(f"{where}: gen_ai.input.messages[{n}]", message))
    return out


def _message(where: str, message: Any) -> list[dict[str, str]]:
    """One trace message as chat messages: tool results split off as ``tool`` messages, in order."""
    if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
        got = describe(message.get("role") if isinstance(message, dict) else message)
        raise TraceError(f"{where}: expected a message with role one of {list(CHAT_ROLES)}, got {got}")
    role = message["role"]
    if isinstance(message.get("content"), str) and "parts" not in message:
        return [{"role": role, "content": message["content"]}]
    parts = message.get("parts")
    if not isinstance(parts, list):
        raise TraceError(f"{where}.parts: expected a list of parts, got {describe(parts)}")
    out: list[dict[str, str]] = []
    pending: list[str] = []
    for n, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "tool_call_response":
            if pending:
                out.append({"role": role, "content": "".join(pending)})
                pending = []
            out.append({"role": "tool", "content": _as_text(part.get("response"))})
        else:
            pending.append(_part_text(f"{where}.parts[{n}]", part))
    if "".join(pending):  # an empty message (only reasoning, no parts) gives the model nothing to read
        out.append({"role": role, "content": "".join(pending)})
    return out


def _part_text(where: str, part: Any) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("content"), str):
        return str(part["content"])
    if kind == "tool_call" and isinstance(part.get("name"), str):
        call = {"name": part["name"], "arguments": part.get("arguments")}
        return f"<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>"
    if kind == "reasoning":
        return ""  # the provider's hidden reasoning is not part of what the local model reads
    raise TraceError(f"{where}: expected a text, tool_call or tool_call_response part, got {describe(part)}")


def _text_parts(where: str, parts: Any) -> str:
    if not isinstance(parts, list):
        raise TraceError(f"{where}: expected a list of parts, got {describe(parts)}")
    return "".join(_part_text(f"{where}[{n}]", part) for n, part in enumerate(parts))


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _output_text(where: str, span: TraceSpan) -> str | None:
    raw = _json_attr(where, span.attributes, "gen_ai.output.messages")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise TraceError(f"{where}: gen_ai.output.messages: expected a non-empty list of messages, got {describe(raw)}")
    first = raw[0]
    if not isinstance(first, dict):
        raise TraceError(f"{where}: gen_ai.output.messages[0]: expected a message object, got {describe(first)}")
    if isinstance(first.get("content"), str) and "parts" not in first:
        return str(first["content"])
    return _text_parts(f"{where}: gen_ai.output.messages[0].parts", first.get("parts"))


def _calls_of(span: TraceSpan) -> list[dict[str, Any]]:
    """The external calls a span records: a tool's arguments and result, a retriever's documents."""
    where, attrs = f"span {span.span_id or span.name}", span.attributes
    timing: dict[str, Any] = {"started_at": span.start_ns / 1e9}
    if span.end_ns is not None and span.end_ns >= span.start_ns:
        timing["duration_s"] = (span.end_ns - span.start_ns) / 1e9
    calls = []
    if span.operation == "execute_tool" or "gen_ai.tool.call.result" in attrs:
        name = attrs.get("gen_ai.tool.name", span.name)
        if not isinstance(name, str) or not name:
            raise TraceError(f"{where}: gen_ai.tool.name: expected a tool name, got {describe(name)}")
        args = _loose_attr(attrs, "gen_ai.tool.call.arguments")
        result = _loose_attr(attrs, "gen_ai.tool.call.result")
        calls.append({"name": name, "args": [] if args is None else [args], "kwargs": {}, "result": result, **timing})
    if "gen_ai.retrieval.documents" in attrs:
        docs = _json_attr(where, attrs, "gen_ai.retrieval.documents")
        if not isinstance(docs, list):
            raise TraceError(f"{where}: gen_ai.retrieval.documents: expected a list of documents, got {describe(docs)}")
        query = attrs.get("gen_ai.retrieval.query.text")
        name = attrs.get("gen_ai.data_source.id", "retrieval")
        calls.append(
            {
                "name": name if isinstance(name, str) and name else "retrieval",
                "args": [] if query is None else [query],
                "kwargs": {},
                "result": docs,
                **timing,
            }
        )
    return calls


# -- re-recording ----------------------------------------------------------------------------------
def render_prompt(call: TraceCall, tokenizer: Any) -> str:
    """The call's input as the local model reads it: its chat template with the generation prompt
    (a ``text_completion`` span's text as it stands)."""
    if call.operation == "text_completion":
        return "".join(m["content"] for m in call.messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the model's tokenizer has no chat template; cannot render the trace's chat messages")
    try:
        rendered = tokenizer.apply_chat_template(call.messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template may refuse a role or an order (jinja raise_exception)
        raise ModelError(f"the model's chat template refuses the trace's messages ({str(exc)[:200]})") from exc
    if not isinstance(rendered, str) or not rendered:
        raise ModelError("the model's chat template rendered the trace's messages as nothing")
    return rendered


def import_call(
    loaded: LoadedModel,
    call: TraceCall,
    out: str | Path,
    spec: SpecChoice,
    *,
    kind: BundleKind | None = None,
    max_new_tokens: int = 8,
    seed: int = 0,
    encryption_key: bytes | None = None,
    streaming: bool = False,
) -> TraceImport:
    """Re-record ``call`` greedily on the local model into ``out`` (its messages through the model's chat
    template, as ``record --messages`` does), the trace's external calls in the manifest and linked to
    the input where their text appears; then compare the local text with the trace's recorded output."""
    prompt = render_prompt(call, loaded.tokenizer)  # refuses a template error before any recording
    log = CallLog()
    log.calls.extend(copy.deepcopy(call.external_calls))
    for name, texts, every in _result_texts(call.external_calls):
        found = [text for text in texts if text in prompt]  # as the model read it
        for text in found if every else found[:1]:
            log.span(name, text)
    run = record_greedy(
        loaded,
        prompt if call.operation == "text_completion" else call.messages,
        out,
        spec,
        kind=kind,
        max_new_tokens=max_new_tokens,
        seed=seed,
        encryption_key=encryption_key,
        streaming=streaming,
        calls=log,
    )
    text = loaded.tokenizer.decode(run.bundle.outputs["generated_ids"], skip_special_tokens=True)
    reproduces, verdict = compare_outputs(call.output_text, text)
    return TraceImport(run.bundle, text, run.failed, reproduces, verdict)


def _result_texts(calls: list[dict[str, Any]]) -> Iterator[tuple[str, list[str], bool]]:
    """``(call name, texts, every)`` for results the span builder cannot find by itself: every retrieved
    document's ``content`` (``every``), or one of a structured tool result's JSON spellings. A string
    result is found without help; a name shared by several calls is left to that search too (an
    explicit span names its call by name only)."""
    names = [c["name"] for c in calls]
    for c in calls:
        result = c["result"]
        if names.count(c["name"]) > 1 or isinstance(result, str) or result is None:
            continue
        docs = [d.get("content") for d in result if isinstance(d, dict)] if isinstance(result, list) else []
        texts = [d for d in docs if isinstance(d, str) and d]
        if texts:
            yield c["name"], texts, True
        else:
            yield c["name"], [json.dumps(result, ensure_ascii=False), json.dumps(result)], False


def compare_outputs(trace_text: str | None, local_text: str) -> tuple[bool | None, str]:
    """``(True, "reproduces")`` when the local greedy text and the trace's output agree as far as both
    go (the local run stops at ``max_new_tokens``), whitespace runs counted as one space.

        >>> compare_outputs(" Lyon is the capital.", " Lyon is")
        (True, 'reproduces')
        >>> compare_outputs(" Paris", " Lyon")
        (False, "differs: trace said ' Paris', local model says ' Lyon'")
    """
    if trace_text is None:
        return None, "the trace records no output (gen_ai.output.messages) to compare with"

    def norm(text: str) -> str:
        return " ".join(text.split())

    trace, local = norm(trace_text), norm(local_text)
    if trace == local or (trace and local and (trace.startswith(local) or local.startswith(trace))):
        return True, "reproduces"
    return False, f"differs: trace said {trace_text[:200]!r}, local model says {local_text[:200]!r}"
