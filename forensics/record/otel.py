"""OpenTelemetry GenAI traces (OTLP JSON, as the collector's file exporter writes them) into bundles.

    call = read_call("trace.json")                       # the last chat span, or span_id="5fb397be34d26b51"
    prompt = render_prompt(call, loaded.tokenizer)       # the model's own chat template + generation prompt
    run = import_call(loaded, call, "bundles/from-trace", FailureSpec.forbidden("Lyon"))
    run.verdict                                          # 'reproduces' or "differs: trace said …"

A trace is re-recorded, never replayed from the provider: the chat span's ``gen_ai.input.messages``
become chat messages for the local model, and every tool result (``execute_tool`` spans) and
retrieved document list (``gen_ai.retrieval.documents``) of the same trace goes into the manifest's
``external_calls``, served from the trace; no tool is ever run. Every problem with the file is one
``TraceError`` line naming the span and attribute.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forensics.bundle import Bundle
from forensics.bundle.strictjson import LimitError, check_value, loads_strict
from forensics.errors import ModelError, TraceError
from forensics.models.registry import LoadedModel
from forensics.record.greedy import SpecChoice, record_greedy
from forensics.record.recorder import CallLog
from forensics.vocab import BundleKind

__all__ = [
    "CHAT_OPERATIONS",
    "MAX_TRACE_BYTES",
    "TraceCall",
    "TraceImport",
    "compare_outputs",
    "import_call",
    "read_call",
    "read_spans",
    "render_prompt",
]

MAX_TRACE_BYTES = 64 * 1024 * 1024
CHAT_OPERATIONS = ("chat", "text_completion", "generate_content")
ROLES = ("system", "user", "assistant", "tool")
_SCALARS: dict[str, type | tuple[type, ...]] = {"stringValue": str, "boolValue": bool, "doubleValue": (int, float)}


@dataclass(frozen=True)
class Span:
    """One OTLP span, its attributes decoded from ``[{key, value: {stringValue|...}}]`` into plain values."""

    trace_id: str
    span_id: str
    name: str
    start_ns: int
    end_ns: int | None
    attributes: dict[str, Any]

    @property
    def operation(self) -> str | None:
        op = self.attributes.get("gen_ai.operation.name")
        return op if isinstance(op, str) else None


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


# -- reading ---------------------------------------------------------------------------------------
def read_spans(path: str | os.PathLike[str]) -> list[Span]:
    """Every span of an OTLP JSON file (one document, or one document per line), in file order."""
    where = f"trace {os.fspath(path)}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TRACE_BYTES + 1)
    except OSError as exc:
        raise TraceError(f"{where}: cannot be read ({exc.strerror or exc})") from exc
    if len(data) > MAX_TRACE_BYTES:
        raise TraceError(f"{where}: expected at most {MAX_TRACE_BYTES} bytes, got more")
    spans: list[Span] = []
    for line, doc in _documents(where, data):
        spans.extend(_spans_of(f"{where}{line}", doc))
    return spans


def _documents(where: str, data: bytes) -> Iterator[tuple[str, Any]]:
    """One JSON document, or JSON Lines (the file exporter writes one ExportTraceServiceRequest per line)."""
    try:
        whole = _strict(data)
    except TraceError as exc:
        lines = [(n, raw) for n, raw in enumerate(data.splitlines(), 1) if raw.strip()]
        if len(lines) < 2 or not _is_object(lines[0][1]):  # a broken pretty-printed file: the whole error
            raise TraceError(f"{where}: {exc}") from None
    else:
        yield "", whole
        return
    for n, raw in lines:
        try:
            yield f" line {n}", _strict(raw)
        except TraceError as exc:
            raise TraceError(f"{where} line {n}: {exc}") from None


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(_strict(line), dict)
    except TraceError:
        return False


def _strict(data: bytes, what: str = "OTLP JSON") -> Any:
    try:
        return loads_strict(data)
    except UnicodeDecodeError as exc:
        raise TraceError(f"expected UTF-8 JSON, got undecodable bytes at offset {exc.start}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, LimitError, duplicate keys
        raise TraceError(f"expected {what}, got invalid JSON ({str(exc)[:200]})") from None


def _spans_of(where: str, doc: Any) -> Iterator[Span]:
    for i, resource in enumerate(_list(doc, "resourceSpans", where)):
        for j, scope in enumerate(_list(resource, "scopeSpans", f"{where}: resourceSpans[{i}]")):
            for k, raw in enumerate(_list(scope, "spans", f"{where}: resourceSpans[{i}].scopeSpans[{j}]")):
                yield _span(f"{where}: resourceSpans[{i}].scopeSpans[{j}].spans[{k}]", raw)


def _list(obj: Any, key: str, where: str) -> list[Any]:
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected an object with {key!r}, got {_kind(obj)}")
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise TraceError(f"{where}.{key}: expected a list, got {_kind(value)}")
    return value


def _span(where: str, raw: Any) -> Span:
    if not isinstance(raw, dict):
        raise TraceError(f"{where}: expected a span object, got {_kind(raw)}")
    ids = {}
    for key in ("traceId", "spanId", "name"):
        value = raw.get(key, "")
        if not isinstance(value, str):
            raise TraceError(f"{where}.{key}: expected a string, got {_kind(value)}")
        ids[key] = value
    attributes = {}
    for n, item in enumerate(_list(raw, "attributes", where)):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise TraceError(f"{where}.attributes[{n}]: expected {{key, value}}, got {_kind(item)}")
        attributes[item["key"]] = _any_value(f"{where}.attributes[{item['key']!r}]", item.get("value"))
    end = raw.get("endTimeUnixNano")
    return Span(
        ids["traceId"].lower(),
        ids["spanId"].lower(),
        ids["name"],
        _nanos(f"{where}.startTimeUnixNano", raw.get("startTimeUnixNano", 0)),
        None if end is None else _nanos(f"{where}.endTimeUnixNano", end),
        attributes,
    )


def _nanos(where: str, value: Any) -> int:
    """OTLP JSON writes 64-bit integers as decimal strings; numbers are accepted too."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,20}", value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise TraceError(f"{where}: expected nanoseconds (a decimal string), got {_kind(value)}")


def _any_value(where: str, value: Any) -> Any:
    """An OTLP ``AnyValue`` as a plain value (nesting is bounded by the strict parser's depth limit)."""
    if not isinstance(value, dict) or len(value) > 1:
        raise TraceError(f"{where}: expected an AnyValue with one field, got {_kind(value)}")
    if not value:
        return None
    ((field, inner),) = value.items()
    if field in _SCALARS:
        if not isinstance(inner, _SCALARS[field]) or (field == "doubleValue" and isinstance(inner, bool)):
            raise TraceError(f"{where}.{field}: expected a {field.removesuffix('Value')}, got {_kind(inner)}")
        return inner
    if field == "intValue":
        if isinstance(inner, str) and re.fullmatch(r"-?[0-9]{1,20}", inner):
            return int(inner)
        if isinstance(inner, int) and not isinstance(inner, bool):
            return inner
        raise TraceError(f"{where}.intValue: expected an integer, got {_kind(inner)}")
    if field == "bytesValue" and isinstance(inner, str):
        return inner  # base64, kept as text
    if field in ("arrayValue", "kvlistValue"):
        items = _list(inner, "values", f"{where}.{field}")
        if field == "arrayValue":
            return [_any_value(f"{where}[{n}]", item) for n, item in enumerate(items)]
        out = {}
        for n, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise TraceError(f"{where}.kvlistValue[{n}]: expected {{key, value}}, got {_kind(item)}")
            out[item["key"]] = _any_value(f"{where}[{item['key']!r}]", item.get("value"))
        return out
    raise TraceError(f"{where}: expected stringValue, intValue, doubleValue, boolValue, arrayValue, ..., got {field!r}")


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:40] + ("…" if len(value) > 40 else ""))
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(type(value), repr(value))


# -- picking the call ------------------------------------------------------------------------------
def read_call(path: str | os.PathLike[str], span_id: str | None = None) -> TraceCall:
    """The chat span ``span_id`` of the trace file (default: the chat span that started last)."""
    spans = read_spans(path)
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
            return _strict(value.encode("utf-8"), "JSON")
        except TraceError as exc:
            raise TraceError(f"{where}: {key}: {exc}") from None
    return value


def _loose_attr(attributes: dict[str, Any], key: str) -> Any:
    """A tool's arguments or result: JSON when the string is JSON, else the text as it stands."""
    value = attributes.get(key)
    if isinstance(value, str):
        try:
            return _strict(value.encode("utf-8"), "JSON")
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
        raise TraceError(f"{where}: gen_ai.input.messages: expected a list of messages, got {_kind(raw)}")
    for n, message in enumerate(raw):
        out.extend(_message(f"{where}: gen_ai.input.messages[{n}]", message))
    return out


def _message(where: str, message: Any) -> list[dict[str, str]]:
    """One trace message as chat messages: tool results split off as ``tool`` messages, in order."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        got = _kind(message.get("role") if isinstance(message, dict) else message)
        raise TraceError(f"{where}: expected a message with role one of {list(ROLES)}, got {got}")
    role = message["role"]
    if isinstance(message.get("content"), str) and "parts" not in message:
        return [{"role": role, "content": message["content"]}]
    parts = message.get("parts")
    if not isinstance(parts, list):
        raise TraceError(f"{where}.parts: expected a list of parts, got {_kind(parts)}")
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
    raise TraceError(f"{where}: expected a text, tool_call or tool_call_response part, got {_kind(part)}")


def _text_parts(where: str, parts: Any) -> str:
    if not isinstance(parts, list):
        raise TraceError(f"{where}: expected a list of parts, got {_kind(parts)}")
    return "".join(_part_text(f"{where}[{n}]", part) for n, part in enumerate(parts))


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _output_text(where: str, span: Span) -> str | None:
    raw = _json_attr(where, span.attributes, "gen_ai.output.messages")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise TraceError(f"{where}: gen_ai.output.messages: expected a non-empty list of messages, got {_kind(raw)}")
    first = raw[0]
    if not isinstance(first, dict):
        raise TraceError(f"{where}: gen_ai.output.messages[0]: expected a message object, got {_kind(first)}")
    if isinstance(first.get("content"), str) and "parts" not in first:
        return str(first["content"])
    return _text_parts(f"{where}: gen_ai.output.messages[0].parts", first.get("parts"))


def _calls_of(span: Span) -> list[dict[str, Any]]:
    """The external calls a span records: a tool's arguments and result, a retriever's documents."""
    where, attrs = f"span {span.span_id or span.name}", span.attributes
    timing: dict[str, Any] = {"started_at": span.start_ns / 1e9}
    if span.end_ns is not None and span.end_ns >= span.start_ns:
        timing["duration_s"] = (span.end_ns - span.start_ns) / 1e9
    calls = []
    if span.operation == "execute_tool" or "gen_ai.tool.call.result" in attrs:
        name = attrs.get("gen_ai.tool.name", span.name)
        if not isinstance(name, str) or not name:
            raise TraceError(f"{where}: gen_ai.tool.name: expected a tool name, got {_kind(name)}")
        args = _loose_attr(attrs, "gen_ai.tool.call.arguments")
        result = _loose_attr(attrs, "gen_ai.tool.call.result")
        calls.append({"name": name, "args": [] if args is None else [args], "kwargs": {}, "result": result, **timing})
    if "gen_ai.retrieval.documents" in attrs:
        docs = _json_attr(where, attrs, "gen_ai.retrieval.documents")
        if not isinstance(docs, list):
            raise TraceError(f"{where}: gen_ai.retrieval.documents: expected a list of documents, got {_kind(docs)}")
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
