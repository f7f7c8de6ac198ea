"""OTLP JSON trace files (as the OpenTelemetry collector's file exporter writes them) read into spans.

    spans = read_spans("trace.json", max_bytes=64 * 2**20)    # one document, or one per line
    spans[0].operation, spans[0].attributes["gen_ai.input.messages"]

Generic OpenTelemetry: each span's ids, name, timing and its attributes decoded from OTLP ``AnyValue``
objects into plain values; what the GenAI conventions make of them is ``forensics.record.otel``'s.
Every problem with the file is one ``TraceError`` line naming the span and attribute.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from forensics.bundle.strictjson import loads_strict
from forensics.errors import TraceError

__all__ = ["TraceSpan", "describe", "read_spans", "strict_json"]

_SCALARS: dict[str, type | tuple[type, ...]] = {"stringValue": str, "boolValue": bool, "doubleValue": (int, float)}


@dataclass(frozen=True)
class TraceSpan:
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


def read_spans(path: str | os.PathLike[str], max_bytes: int) -> list[TraceSpan]:
    """Every span of an OTLP JSON file (one document, or one document per line), in file order; a file
    of more than ``max_bytes`` is refused before it is parsed."""
    where = f"trace {os.fspath(path)}"
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise TraceError(f"{where}: cannot be read ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise TraceError(f"{where}: expected at most {max_bytes} bytes, got more")
    spans: list[TraceSpan] = []
    for line, doc in _documents(where, data):
        spans.extend(_spans_of(f"{where}{line}", doc))
    return spans


def _documents(where: str, data: bytes) -> Iterator[tuple[str, Any]]:
    """One JSON document, or JSON Lines (the file exporter writes one ExportTraceServiceRequest per line)."""
    try:
        whole = strict_json(data)
    except TraceError as exc:
        lines = [(n, raw) for n, raw in enumerate(data.splitlines(), 1) if raw.strip()]
        if len(lines) < 2 or not _is_object(lines[0][1]):  # a broken pretty-printed file: the whole error
            raise TraceError(f"{where}: {exc}") from None
    else:
        yield "", whole
        return
    for n, raw in lines:
        try:
            yield f" line {n}", strict_json(raw)
        except TraceError as exc:
            raise TraceError(f"{where} line {n}: {exc}") from None


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(strict_json(line), dict)
    except TraceError:
        return False


def strict_json(data: bytes, what: str = "OTLP JSON") -> Any:
    """``data`` parsed by the strict JSON reader (bounded depth and size, no duplicate keys, no NaN); else
    one ``TraceError`` line: expected ``what``, got invalid JSON (why)."""
    try:
        return loads_strict(data)
    except UnicodeDecodeError as exc:
        raise TraceError(f"expected UTF-8 JSON, got undecodable bytes at offset {exc.start}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, LimitError, duplicate keys
        raise TraceError(f"expected {what}, got invalid JSON ({str(exc)[:200]})") from None


def _spans_of(where: str, doc: Any) -> Iterator[TraceSpan]:
    for i, resource in enumerate(_list(doc, "resourceSpans", where)):
        for j, scope in enumerate(_list(resource, "scopeSpans", f"{where}: resourceSpans[{i}]")):
            for k, raw in enumerate(_list(scope, "spans", f"{where}: resourceSpans[{i}].scopeSpans[{j}]")):
                yield _span(f"{where}: resourceSpans[{i}].scopeSpans[{j}].spans[{k}]", raw)


def _list(obj: Any, key: str, where: str) -> list[Any]:
    if not isinstance(obj, dict):
        raise TraceError(f"{where}: expected an object with {key!r}, got {describe(obj)}")
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise TraceError(f"{where}.{key}: expected a list, got {describe(value)}")
    return value


def _span(where: str, raw: Any) -> TraceSpan:
    if not isinstance(raw, dict):
        raise TraceError(f"{where}: expected a span object, got {describe(raw)}")
    ids = {}
    for key in ("traceId", "spanId", "name"):
        value = raw.get(key, "")
        if not isinstance(value, str):
            raise TraceError(f"{where}.{key}: expected a string, got {describe(value)}")
        ids[key] = value
    attributes = {}
    for n, item in enumerate(_list(raw, "attributes", where)):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise TraceError(f"{where}.attributes[{n}]: expected {{key, value}}, got {describe(item)}")
        attributes[item["key"]] = _any_value(f"{where}.attributes[{item['key']!r}]", item.get("value"))
    end = raw.get("endTimeUnixNano")
    return TraceSpan(
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
    raise TraceError(f"{where}: expected nanoseconds (a decimal string), got {describe(value)}")


def _any_value(where: str, value: Any) -> Any:
    """An OTLP ``AnyValue`` as a plain value (nesting is bounded by the strict parser's depth limit)."""
    if not isinstance(value, dict) or len(value) > 1:
        raise TraceError(f"{where}: expected an AnyValue with one field, got {describe(value)}")
    if not value:
        return None
    ((field, inner),) = value.items()
    if field in _SCALARS:
        if not isinstance(inner, _SCALARS[field]) or (field == "doubleValue" and isinstance(inner, bool)):
            raise TraceError(f"{where}.{field}: expected a {field.removesuffix('Value')}, got {describe(inner)}")
        return inner
    if field == "intValue":
        if isinstance(inner, str) and re.fullmatch(r"-?[0-9]{1,20}", inner):
            return int(inner)
        if isinstance(inner, int) and not isinstance(inner, bool):
            return inner
        raise TraceError(f"{where}.intValue: expected an integer, got {describe(inner)}")
    if field == "bytesValue" and isinstance(inner, str):
        return inner  # base64, kept as text
    if field in ("arrayValue", "kvlistValue"):
        items = _list(inner, "values", f"{where}.{field}")
        if field == "arrayValue":
            return [_any_value(f"{where}[{n}]", item) for n, item in enumerate(items)]
        out = {}
        for n, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise TraceError(f"{where}.kvlistValue[{n}]: expected {{key, value}}, got {describe(item)}")
            out[item["key"]] = _any_value(f"{where}[{item['key']!r}]", item.get("value"))
        return out
    raise TraceError(f"{where}: expected stringValue, intValue, doubleValue, boolValue, arrayValue, ..., got {field!r}")


def describe(value: Any) -> str:
    """A value as a trace error shows it: a short quoted string, or its JSON kind."""
    if isinstance(value, str):
        return repr(value[:40] + ("…" if len(value) > 40 else ""))
    return {dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}.get(type(value), repr(value))
