"""The JSON bodies the HTTP API takes, as pydantic models (unknown keys refused), and their OpenAPI entries.

    AnalyzeRequest(bundle="incidents/incident_001")                     # POST /v1/analyze, a bundle by name
    TraceAnalyzeRequest(trace={...}, model="smollm2-135m", forbidden="Lyon")   # POST /v1/analyze, a trace
    TriageRequest(directory="incidents")                                # POST /v1/triage

Bodies are read by hand after authentication (``serve_app.intake``), not by FastAPI before it, so
the routes declare them to OpenAPI here (``ANALYZE_BODY``, ``TRIAGE_BODY``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forensics.service import MAX_NAME_CHARS
from serve_app.errors import APIError

__all__ = ["ANALYZE_BODY", "MAX_SPEC_CHARS", "TRIAGE_BODY", "AnalyzeRequest", "TraceAnalyzeRequest", "TriageRequest"]

MAX_SPEC_CHARS = 4096
_BASELINE = "benign bundle dir or .json under bundle_dir (default: the app's)"


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(
        min_length=1, max_length=MAX_NAME_CHARS, description="bundle name under bundle_dir, e.g. incidents/incident_001"
    )
    baseline: str | None = Field(default=None, max_length=MAX_NAME_CHARS, description=_BASELINE)
    reference_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="known-good version of the bundle's model (same architecture; one of the app's "
        "allowed_models): its run of the incident's tokens is the patch source",
    )


class TraceAnalyzeRequest(BaseModel):
    """An OpenTelemetry GenAI trace, re-recorded on a local model into a fresh bundle, then analysed
    with provenance on (``forensics.record.otel``; no tool is ever run: results come from the trace)."""

    model_config = ConfigDict(extra="forbid")
    trace: dict[str, Any] | None = Field(
        default=None, description="the OTLP JSON trace as an object ({'resourceSpans': [...]}); or trace_text"
    )
    trace_text: str | None = Field(
        default=None,
        min_length=1,
        description="the trace as text: one OTLP JSON document, or JSON Lines as the collector's file exporter writes",
    )
    model: str = Field(
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="model reference to re-record on, e.g. smollm2-135m (one of the app's allowed_models)",
    )
    expected: str | None = Field(
        default=None, min_length=1, max_length=MAX_SPEC_CHARS, description="the correct continuation text"
    )
    forbidden: str | None = Field(
        default=None, min_length=1, max_length=MAX_SPEC_CHARS, description="text that must not be produced (plain)"
    )
    span_id: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[0-9a-fA-F]+$",
        description="the chat span to re-record (hex span id; default: the chat span that started last)",
    )
    baseline: str | None = Field(default=None, max_length=MAX_NAME_CHARS, description=_BASELINE)

    @model_validator(mode="after")
    def _one_of_each(self) -> TraceAnalyzeRequest:
        if (self.trace is None) == (self.trace_text is None):
            raise ValueError("send exactly one of 'trace' (an object) or 'trace_text' (a string)")
        if (self.expected is None) == (self.forbidden is None):
            raise ValueError("send exactly one of 'expected' or 'forbidden' (the failure spec)")
        return self

    def trace_bytes(self) -> bytes:
        if self.trace_text is not None:
            return self.trace_text.encode("utf-8")
        try:
            return json.dumps(self.trace, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):
            raise APIError(400, "TraceError", "trace: nested too deeply to be an OTLP JSON trace") from None


class TriageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    directory: str = Field(
        default=".", min_length=1, max_length=MAX_NAME_CHARS, description="directory of bundles under bundle_dir"
    )
    baseline: str | None = Field(default=None, max_length=MAX_NAME_CHARS)


_UPLOAD_FORM = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "bundle archive (.tar or .tar.zst)"},
        "baseline": {"type": "string"},
        "reference_model": {"type": "string"},
    },
}
ANALYZE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [AnalyzeRequest.model_json_schema(), TraceAnalyzeRequest.model_json_schema()]}
            },
            "multipart/form-data": {"schema": _UPLOAD_FORM},
        },
    },
}
TRIAGE_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": TriageRequest.model_json_schema()}}}
}
