"""The HTTP API (FastAPI), built per ingress replica around a backend that runs analyses.

    api = build_api(backend, settings, Metrics())      # backend: the Analyzer deployment's handle, wrapped
    # POST /v1/analyze  POST /v1/triage  GET /v1/results/{id}  GET /metrics   (Authorization: Bearer ...)
    # GET /healthz  GET /docs  GET /openapi.json                              (open: probes, API docs)

Every answer carries ``X-Request-ID``; every error body is ``{"error": {"type", "message"}, "request_id"}``.
Our errors map to 4xx (``forensics.service.http_status``), overload to 503, anything else to a generic
500 whose traceback goes to the log only. Each endpoint but the open ones needs one permission
(``serve_app.security.requires``): 401 with ``WWW-Authenticate: Bearer`` without valid credentials,
403 when the role or scope does not allow it. Analyses, triage and result reads are audited (one
line each, refusals included) when an audit log is configured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from forensics import service
from forensics.errors import AuthError, ForensicsError
from forensics.ops.audit import AuditLog
from forensics.ops.auth import Principal
from forensics.ops.metrics import Metrics
from serve_app.security import Access, AccessUnavailable, Audit, record, requires
from serve_app.settings import Settings

__all__ = ["APIError", "AnalyzeRequest", "Backend", "TraceAnalyzeRequest", "TriageRequest", "build_api"]

log = logging.getLogger("serve_app")

MAX_JSON_BYTES = 64 * 1024  # a JSON body; one carrying a trace may add the trace limit (service.trace_limit)
MAX_SPEC_CHARS = 4096
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and headers on top of the archive itself
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REALM = "model-forensics"  # of the WWW-Authenticate challenge
RETRY_AFTER_S = "5"
CLIENT_CLOSED = 499  # the client went away before its request was complete (nginx's code; nobody reads the answer)

Body = TypeVar("Body", bound=BaseModel)


class APIError(Exception):
    """An answer other than 2xx, as data: status, type, message (and optional headers)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> APIError:
        return cls(int(data["status"]), str(data["type"]), str(data["message"]))


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(
        min_length=1,
        max_length=service.MAX_NAME_CHARS,
        description="bundle name under bundle_dir, e.g. incidents/incident_001",
    )
    baseline: str | None = Field(
        default=None,
        max_length=service.MAX_NAME_CHARS,
        description="benign bundle dir or .json under bundle_dir (default: the app's)",
    )
    reference_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=service.MAX_NAME_CHARS,
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
        max_length=service.MAX_NAME_CHARS,
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
    baseline: str | None = Field(
        default=None,
        max_length=service.MAX_NAME_CHARS,
        description="benign bundle dir or .json under bundle_dir (default: the app's)",
    )

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
    model_config = ConfigDict(extra="forbid")  # read by hand after auth (see _json_body), not by FastAPI
    directory: str = Field(
        default=".",
        min_length=1,
        max_length=service.MAX_NAME_CHARS,
        description="directory of bundles under bundle_dir",
    )
    baseline: str | None = Field(default=None, max_length=service.MAX_NAME_CHARS)


class Backend(Protocol):
    """Runs the heavy work (in the Analyzer deployment); raises ``APIError`` for failures."""

    async def analyze(
        self, *, bundle: str, baseline: str | None, result_id: str, request_id: str, **reference_model: str
    ) -> dict[str, Any]: ...  # reference_model=... only when the request names one

    async def triage(self, *, directory: str, baseline: str | None, request_id: str) -> list[dict[str, Any]]: ...

    async def analyze_trace(
        self,
        *,
        trace: str,
        model: str,
        expected: str | None,
        forbidden: str | None,
        span_id: str | None,
        baseline: str | None,
        result_id: str,
        request_id: str,
    ) -> dict[str, Any]: ...


_ANALYZE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [AnalyzeRequest.model_json_schema(), TraceAnalyzeRequest.model_json_schema()],
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "bundle archive (.tar or .tar.zst)",
                        },
                        "baseline": {"type": "string"},
                        "reference_model": {"type": "string"},
                    },
                }
            },
        },
    },
}
_TRIAGE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": TriageRequest.model_json_schema()}}}
}
_DESCRIPTION = """Root-cause analysis of model incidents: analyse bundles, triage, fetch reports.

Send `Authorization: Bearer <token>` (an API token from `model-forensics tokens add`, or an OAuth2/OIDC JWT
when configured). Permissions: analyze needs `run_analysis`, triage `read_bundles`, results and metrics
`view_results`. `/healthz`, `/docs` and `/openapi.json` are open.

`POST /v1/analyze` takes a bundle name (JSON), a bundle archive (multipart `file`), or an OpenTelemetry
GenAI trace (JSON `trace` or `trace_text`, with `model` and `expected` or `forbidden`): the trace's chat call
is re-recorded on that model into a fresh bundle and analysed with provenance; the answer adds `trace`
(`reproduces`, `verdict`: whether the local model says what the trace recorded)."""


def build_api(
    backend: Backend, settings: Settings, metrics: Metrics, *, access: Access | None = None, audit: Audit | None = None
) -> FastAPI:
    """The FastAPI app of one ingress replica; ``access``/``audit`` default to what ``settings`` configure."""
    api = FastAPI(title="model-forensics", version=_version(), description=_DESCRIPTION)
    api.state.access = access or settings.auth.access()
    api.state.audit = audit or AuditLog.from_path(settings.audit_log)
    requests = Counter(
        "model_forensics_http_requests",
        "HTTP requests by endpoint and status",
        ["endpoint", "method", "status"],
        registry=metrics.registry,
    )
    _install_errors(api)
    _install_middleware(api, requests)

    @api.post("/v1/analyze", openapi_extra=_ANALYZE_BODY, summary="Analyse a bundle (by name or uploaded archive)")
    async def analyze(
        request: Request, principal: Annotated[Principal, requires("run_analysis", "analyze")]
    ) -> dict[str, Any]:
        async with _audited(request, principal, "analyze") as entry:
            given = await _analyze_input(request, settings)
            rid = request.state.request_id
            try:
                if isinstance(given, TraceAnalyzeRequest):
                    done = await _analyze_trace(backend, settings, given, entry, rid)
                else:
                    entry["bundle"] = given[0]
                    extra = {"reference_model": given[2]} if given[2] is not None else {}
                    done = await backend.analyze(
                        bundle=given[0], baseline=given[1], result_id=service.new_result_id(), request_id=rid, **extra
                    )
            except APIError as exc:
                if exc.status != 503:  # overload is not a failed analysis
                    metrics.observe_error(exc.kind)
                raise
            entry["result"] = done["id"]
        metrics.observe_report(done["report"])
        answer = {
            "id": done["id"],
            "status": "done",
            "bundle": done["bundle"],
            "result": service.summarize(done["report"]),
            "links": {"result": f"/v1/results/{done['id']}"},
        }
        if "trace" in done:  # a trace body: what the re-recording said, and the input spans that caused it
            answer["trace"] = done["trace"]
            answer["result"]["provenance"] = done["report"].get("provenance")
        return answer

    @api.post(
        "/v1/triage", openapi_extra=_TRIAGE_BODY, summary="Rank the bundles of a directory by CF anomaly (no replay)"
    )
    async def triage(
        request: Request, principal: Annotated[Principal, requires("read_bundles", "triage")]
    ) -> dict[str, Any]:
        async with _audited(request, principal, "triage") as entry:
            body = await _json_body(request, TriageRequest)
            entry["bundle"] = body.directory
            rows = await backend.triage(
                directory=body.directory, baseline=body.baseline, request_id=request.state.request_id
            )
            entry["bundles"] = len(rows)
        return {"directory": body.directory, "bundles": rows}

    @api.get("/v1/results/{result_id}", summary="The full JSON report of an analysis")
    async def result(
        result_id: str, request: Request, principal: Annotated[Principal, requires("view_results", "view_result")]
    ) -> dict[str, Any]:
        async with _audited(request, principal, "view_result", result=result_id[:80]) as entry:
            report = await asyncio.to_thread(service.read_result, settings.output_dir, result_id)
            entry["bundle"] = report.get("bundle_id")
        return {"id": result_id, "status": "done", "result": report}

    @api.get("/healthz", summary="Liveness of this API replica (open: probes send no token)")
    async def healthz() -> JSONResponse:
        problems = settings.problems()
        return JSONResponse(
            {"status": "fail" if problems else "ok", "problems": problems}, status_code=503 if problems else 200
        )

    @api.get("/metrics", summary="Prometheus metrics of this API replica (needs view_results)", response_class=Response)
    async def prometheus(principal: Annotated[Principal, requires("view_results")]) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return api


# -- request bodies ------------------------------------------------------------------------------
async def _analyze_input(
    request: Request, settings: Settings
) -> tuple[str, str | None, str | None] | TraceAnalyzeRequest:
    """(bundle name, baseline name, reference model) from a JSON body or a multipart upload saved under
    bundle_dir; or a trace body. A reference model must be one of the app's ``allowed_models``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _upload(request, settings)
    if kind not in ("application/json", ""):
        raise APIError(
            415, "UnsupportedMediaType", f"content type {kind[:80]!r}: send application/json or multipart/form-data"
        )
    raw = await _read_bounded(request, service.trace_limit(settings.max_upload_bytes) + MAX_JSON_BYTES)
    if _names_a_trace(raw):
        return _validated(TraceAnalyzeRequest, raw)
    if len(raw) > MAX_JSON_BYTES:
        raise APIError(
            413, "PayloadTooLarge", f"request body larger than {MAX_JSON_BYTES} bytes (only a trace body may be larger)"
        )
    body = _validated(AnalyzeRequest, raw)
    if body.reference_model is not None:
        service.check_model_allowed(body.reference_model, settings.allowed_models)
    return body.bundle, body.baseline, body.reference_model


def _names_a_trace(raw: bytes) -> bool:
    """Whether a JSON body is a trace body (an object with ``trace`` or ``trace_text``); junk is not."""
    try:
        probe = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON: the bundle body's validation says so
        return False
    return isinstance(probe, dict) and ("trace" in probe or "trace_text" in probe)


async def _analyze_trace(
    backend: Backend, settings: Settings, body: TraceAnalyzeRequest, entry: dict[str, Any], rid: str
) -> dict[str, Any]:
    """Refuse a model the app does not allow, save the trace under ``uploads/`` (bounded, parsed once:
    a malformed trace is refused here, before an analyzer is asked), then re-record and analyse it."""
    entry["model"] = body.model[:200]
    service.check_model_allowed(body.model, settings.allowed_models)
    data = body.trace_bytes()
    trace = await asyncio.to_thread(
        service.save_trace, settings.bundle_dir, data, span_id=body.span_id, max_bytes=settings.max_upload_bytes
    )
    entry["bundle"] = entry["trace"] = trace
    done = await backend.analyze_trace(
        trace=trace,
        model=body.model,
        expected=body.expected,
        forbidden=body.forbidden,
        span_id=body.span_id,
        baseline=body.baseline,
        result_id=service.new_result_id(),
        request_id=rid,
    )
    entry["bundle"] = done["bundle"]
    return done


async def _json_body(request: Request, model: type[Body]) -> Body:
    """The bounded JSON body as ``model``; read here (after auth) rather than by FastAPI (before it)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/json", ""):
        raise APIError(415, "UnsupportedMediaType", f"content type {kind[:80]!r}: send application/json")
    return _validated(model, await _read_bounded(request, MAX_JSON_BYTES))


def _validated(model: type[Body], raw: bytes) -> Body:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise APIError(422, "ValidationError", _validation_message(exc.errors())) from None


async def _read_bounded(request: Request, limit: int) -> bytes:
    _check_length(request, limit)
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise APIError(413, "PayloadTooLarge", f"request body larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _disconnected(total) from None
    return b"".join(chunks)


def _disconnected(received: int | None = None) -> APIError:
    got = "" if received is None else f" after {received} bytes"
    return APIError(
        CLIENT_CLOSED,
        "ClientDisconnect",
        f"the client closed the connection{got}, before the request body was complete",
    )


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise APIError(400, "BadRequest", f"Content-Length {declared[:40]!r} is not a number")
    if int(declared) > limit:
        raise APIError(413, "PayloadTooLarge", f"request body of {declared} bytes is over the limit of {limit}")


async def _upload(request: Request, settings: Settings) -> tuple[str, str | None, str | None]:
    if request.headers.get("content-length") is None:
        raise APIError(411, "LengthRequired", "uploads need a Content-Length header")
    _check_length(request, settings.max_upload_bytes + FORM_OVERHEAD_BYTES)
    try:
        form = await request.form(max_files=1, max_fields=4)
    except ClientDisconnect:  # mid-upload: audited as the client's doing, never as a 500
        raise _disconnected() from None
    try:
        file, baseline, reference = form.get("file"), form.get("baseline"), form.get("reference_model")
        if not isinstance(file, UploadFile):
            raise APIError(422, "ValidationError", "multipart upload: put the bundle archive in a part named 'file'")
        if baseline is not None and not isinstance(baseline, str):
            raise APIError(422, "ValidationError", "multipart upload: 'baseline' must be a text field")
        if reference is not None and not (isinstance(reference, str) and 0 < len(reference) <= service.MAX_NAME_CHARS):
            raise APIError(422, "ValidationError", "multipart upload: 'reference_model' must be a short text field")
        if reference:
            service.check_model_allowed(reference, settings.allowed_models)
        name = await asyncio.to_thread(
            service.save_upload,
            settings.bundle_dir,
            file.file,
            file.filename,
            max_bytes=settings.max_upload_bytes,
            encryption_key=settings.encryption_key,
        )
    finally:
        await form.close()
    return name, baseline or None, reference or None


# -- errors, request ids, request metrics --------------------------------------------------------
def _error(
    status: int, kind: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": kind, "message": message}, "request_id": request_id}, status_code=status, headers=headers
    )


def _rid(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or uuid.uuid4().hex)


def _install_errors(api: FastAPI) -> None:
    @api.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.kind, exc.message, _rid(request), exc.headers)

    @api.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        status = service.http_status(exc)
        challenge = f'Bearer realm="{REALM}"'
        if status == 403:
            challenge += ', error="insufficient_scope"'
        elif request.headers.get("authorization"):
            challenge += ', error="invalid_token"'
        kind = "Forbidden" if status == 403 else "Unauthorized"
        return _error(status, kind, str(exc), _rid(request), {"WWW-Authenticate": challenge})

    @api.exception_handler(AccessUnavailable)
    async def access_unavailable(request: Request, exc: AccessUnavailable) -> JSONResponse:
        return _error(503, "AuthUnavailable", str(exc), _rid(request), {"Retry-After": RETRY_AFTER_S})

    @api.exception_handler(ForensicsError)
    async def forensics_error(request: Request, exc: ForensicsError) -> JSONResponse:
        data = service.error_data(exc, _rid(request))
        return _error(data["status"], data["type"], data["message"], data["request_id"])

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "ValidationError", _validation_message(exc.errors()), _rid(request))

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "HTTPError", str(exc.detail), _rid(request), dict(exc.headers or {}))


def _install_middleware(api: FastAPI, requests: Counter) -> None:
    @api.middleware("http")
    async def request_context(request: Request, call_next: Any) -> Response:
        # Ray Serve's proxy puts its request id (the client's, or a fresh uuid) in x-request-id and echoes
        # it as the X-Request-ID response header; we reuse it so our logs and Serve's correlate.
        given = request.headers.get("x-request-id")
        request.state.request_id = rid = given if given and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        started = time.perf_counter()
        try:
            response: Response = await call_next(request)
        except Exception as exc:  # anything no handler turned into an answer: log it, answer generically
            data = service.error_data(exc, rid)
            response = _error(500, data["type"], data["message"], rid)
        if given is None:  # not behind the Serve proxy: say it ourselves
            response.headers["X-Request-ID"] = rid
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        requests.labels(endpoint=endpoint, method=request.method, status=str(response.status_code)).inc()
        log.info(
            "%s %s -> %s in %.3fs [%s]",
            request.method,
            endpoint,
            response.status_code,
            time.perf_counter() - started,
            rid,
        )
        return response


def _validation_message(errors: Any) -> str:
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


@asynccontextmanager
async def _audited(request: Request, principal: Principal, action: str, **fields: Any) -> AsyncIterator[dict[str, Any]]:
    """One audit line when the block ends: ``ok``, or ``error`` with the error's type (then re-raised).

    The block fills the yielded dict: ``bundle`` (the bundle or directory it touched) and more fields.
    """
    entry: dict[str, Any] = {"bundle": None, **fields}
    try:
        yield entry
    except asyncio.CancelledError:  # behind Serve's proxy a client that hangs up cancels its request
        await _audit(request, principal, action, "error", entry, error="ClientDisconnect", status=CLIENT_CLOSED)
        raise
    except Exception as exc:
        kind = exc.kind if isinstance(exc, APIError) else type(exc).__name__
        await _audit(request, principal, action, "error", entry, error=kind, status=_status_of(exc))
        raise
    await _audit(request, principal, action, "ok", entry)


async def _audit(
    request: Request, principal: Principal, action: str, outcome: str, entry: dict[str, Any], **more: Any
) -> None:
    extra = {k: v for k, v in entry.items() if k != "bundle"}
    await asyncio.to_thread(
        record,
        request,
        principal.name,
        principal.role,
        action,
        entry["bundle"],
        outcome,
        via=principal.via,
        **extra,
        **more,
    )


def _status_of(exc: Exception) -> int:
    if isinstance(exc, APIError):
        return exc.status
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    return service.http_status(exc)


def _version() -> str:
    from forensics.version import __version__

    return str(__version__)
