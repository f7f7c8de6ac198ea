"""The JSON bodies the HTTP API takes, as pydantic models (unknown keys refused), and their OpenAPI entries.

    AnalyzeRequest(bundle="incidents/incident_001")                     # POST /v1/analyze, a bundle by name
    AnalyzeRequest(bundles=["au/m0", "au/m1", "au/m2"])                 # POST /v1/analyze, a failure family
    TraceAnalyzeRequest(trace={...}, model="smollm2-135m", forbidden="Lyon")   # POST /v1/analyze, a trace
    TriageRequest(directory="incidents")                                # POST /v1/triage
    ExportFixRequest(report="<result id>", out="au-fix")                # POST /v1/export-fix (admin)

Bodies are read by hand after authentication (``serve_app.intake``), not by FastAPI before it, so
the routes declare them to OpenAPI here (``ANALYZE_BODY``, ``TRIAGE_BODY``, ``EXPORT_FIX_BODY``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forensics.service import MAX_FAMILY_MEMBERS, MAX_NAME_CHARS, OUT_NAME_PATTERN
from serve_app.errors import APIError

__all__ = [
    "ANALYZE_BODY",
    "EXPORT_FIX_BODY",
    "MAX_SPEC_CHARS",
    "TRIAGE_BODY",
    "AnalyzeRequest",
    "ExportFixRequest",
    "TraceAnalyzeRequest",
    "TriageRequest",
]

MAX_SPEC_CHARS = 4096
_BASELINE = "benign bundle dir or .json under bundle_dir (default: the app's)"


_NAME = Field(min_length=1, max_length=MAX_NAME_CHARS)


class AnalyzeRequest(BaseModel):
    """One bundle (``bundle``), or the members of a failure family (``bundles``: 2 or more, analysed as one)."""

    model_config = ConfigDict(extra="forbid")
    bundle: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="bundle name under bundle_dir, e.g. incidents/incident_001",
    )
    bundles: list[Annotated[str, _NAME]] | None = Field(
        default=None,
        min_length=2,
        max_length=MAX_FAMILY_MEMBERS,
        description="bundle names under bundle_dir: the incidents of one failure mode, analysed as one failure "
        "family (the answer is the family report, model-forensics/family@1)",
    )
    baseline: str | None = Field(default=None, max_length=MAX_NAME_CHARS, description=_BASELINE)
    reference_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="known-good version of the bundle's model (same architecture; one of the app's "
        "allowed_models): its run of the incident's tokens is the patch source",
    )

    @model_validator(mode="after")
    def _bundle_or_family(self) -> AnalyzeRequest:
        if (self.bundle is None) == (self.bundles is None):
            raise ValueError("send exactly one of 'bundle' (a name) or 'bundles' (a list of 2 or more names)")
        if self.bundles is not None and self.reference_model is not None:
            raise ValueError("'reference_model' is for one bundle; a family is searched with position-free ablations")
        return self


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


class ExportFixRequest(BaseModel):
    """A stored report's fix, exported as an edited model under ``output_dir/fixes/<out>`` (``model-forensics
    export-fix``'s options)."""

    model_config = ConfigDict(extra="forbid")
    report: str = Field(
        min_length=1,
        max_length=MAX_NAME_CHARS,
        description="a result id (from POST /v1/analyze) or a .json report path relative to output_dir "
        "(e.g. batch/family-au.json)",
    )
    out: str = Field(
        pattern=OUT_NAME_PATTERN,
        description="a plain directory name; the model is written to output_dir/fixes/<out> (new, or an "
        "earlier export)",
    )
    method: Literal["auto", "weights", "rank-one", "rollback", "hooks"] = Field(
        default="auto", description="as export-fix --method (auto: an exact weight form when there is one)"
    )
    max_broken: float | None = Field(
        default=None, ge=0.0, le=1.0, description="refuse an edit that changes more than this share of the population"
    )
    layer: int | None = Field(default=None, ge=0, le=10_000, description="decoder layer of a rank-one edit")
    subject: str | None = Field(default=None, min_length=1, max_length=MAX_SPEC_CHARS)
    population: str | None = Field(
        default=None, max_length=MAX_NAME_CHARS, description="benign bundle directory under bundle_dir"
    )


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
EXPORT_FIX_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ExportFixRequest.model_json_schema()}},
    }
}
