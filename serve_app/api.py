"""The HTTP API (FastAPI), built per ingress replica around a backend that runs analyses.

    api = build_api(backend, settings, Metrics())      # backend: the Analyzer deployment's handle, wrapped
    # POST /v1/analyze  POST /v1/triage  GET /v1/results/{id}  GET /healthz  GET /metrics  GET /docs

Every answer carries ``X-Request-ID``; every error body is ``{"error": {"type", "message"}, "request_id"}``.
Our errors map to 4xx (``forensics.service.http_status``), overload to 503, anything else to a generic
500 whose traceback goes to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from forensics import service
from forensics.errors import ForensicsError
from forensics.ops.auth import Principal
from forensics.ops.metrics import Metrics
from serve_app.security import AnonymousAccess, Audit, NoAudit, requires
from serve_app.settings import Settings

__all__ = ["APIError", "AnalyzeRequest", "Backend", "TriageRequest", "build_api"]

log = logging.getLogger("serve_app")

MAX_JSON_BYTES = 64 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024     # multipart boundaries and headers on top of the archive itself
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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
    bundle: str = Field(min_length=1, max_length=service.MAX_NAME_CHARS,
                        description="bundle name under bundle_dir, e.g. incidents/incident_001")
    baseline: str | None = Field(default=None, max_length=service.MAX_NAME_CHARS,
                                 description="benign bundle dir or .json under bundle_dir (default: the app's)")


class TriageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    directory: str = Field(default=".", min_length=1, max_length=service.MAX_NAME_CHARS,
                           description="directory of bundles under bundle_dir")
    baseline: str | None = Field(default=None, max_length=service.MAX_NAME_CHARS)


class Backend(Protocol):
    """Runs the heavy work (in the Analyzer deployment); raises ``APIError`` for failures."""

    async def analyze(self, *, bundle: str, baseline: str | None, result_id: str,
                      request_id: str) -> dict[str, Any]: ...

    async def triage(self, *, directory: str, baseline: str | None, request_id: str) -> list[dict[str, Any]]: ...


_ANALYZE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": AnalyzeRequest.model_json_schema()},
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary",
                                        "description": "bundle archive (.tar or .tar.zst)"},
                               "baseline": {"type": "string"}}}},
        },
    },
}


def build_api(backend: Backend, settings: Settings, metrics: Metrics, *, access: Any = None,
              audit: Audit | None = None) -> FastAPI:
    """The FastAPI app of one ingress replica; ``access``/``audit`` are the auth and audit plug points."""
    api = FastAPI(title="model-forensics", version=_version(),
                  description="Root-cause analysis of model incidents: analyse bundles, triage, fetch reports.")
    api.state.access = access or AnonymousAccess()
    api.state.audit = audit or NoAudit()
    requests = Counter("model_forensics_http_requests", "HTTP requests by endpoint and status",
                       ["endpoint", "method", "status"], registry=metrics.registry)
    _install_errors(api)
    _install_middleware(api, requests)

    @api.post("/v1/analyze", openapi_extra=_ANALYZE_BODY, summary="Analyse a bundle (by name or uploaded archive)")
    async def analyze(request: Request, principal: Annotated[Principal, requires("run_analysis")]) -> dict[str, Any]:
        bundle, baseline = await _analyze_input(request, settings)
        result_id = service.new_result_id()
        rid = request.state.request_id
        try:
            record = await backend.analyze(bundle=bundle, baseline=baseline, result_id=result_id, request_id=rid)
        except APIError as exc:
            if exc.status != 503:  # overload is not a failed analysis
                metrics.observe_error(exc.kind)
            _audit(request, principal, "analyze", bundle, "error", error=exc.kind)
            raise
        metrics.observe_report(record["report"])
        _audit(request, principal, "analyze", bundle, "ok", result=record["id"])
        return {"id": record["id"], "status": "done", "bundle": bundle,
                "result": service.summarize(record["report"]), "links": {"result": f"/v1/results/{record['id']}"}}

    @api.post("/v1/triage", summary="Rank the bundles of a directory by CF anomaly (no replay)")
    async def triage(body: TriageRequest, request: Request,
                     principal: Annotated[Principal, requires("read_bundles")]) -> dict[str, Any]:
        try:
            rows = await backend.triage(directory=body.directory, baseline=body.baseline,
                                        request_id=request.state.request_id)
        except APIError as exc:
            _audit(request, principal, "triage", body.directory, "error", error=exc.kind)
            raise
        _audit(request, principal, "triage", body.directory, "ok", bundles=len(rows))
        return {"directory": body.directory, "bundles": rows}

    @api.get("/v1/results/{result_id}", summary="The full JSON report of an analysis")
    async def result(result_id: str, request: Request,
                     principal: Annotated[Principal, requires("view_results")]) -> dict[str, Any]:
        report = await asyncio.to_thread(service.read_result, settings.output_dir, result_id)
        _audit(request, principal, "view_result", report.get("bundle_id"), "ok", result=result_id)
        return {"id": result_id, "status": "done", "result": report}

    @api.get("/healthz", summary="Liveness of this API replica")
    async def healthz() -> JSONResponse:
        problems = settings.problems()
        return JSONResponse({"status": "fail" if problems else "ok", "problems": problems},
                            status_code=503 if problems else 200)

    @api.get("/metrics", summary="Prometheus metrics of this API replica", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return api


# -- request bodies ------------------------------------------------------------------------------
async def _analyze_input(request: Request, settings: Settings) -> tuple[str, str | None]:
    """(bundle name, baseline name) from a JSON body, or from a multipart upload saved under bundle_dir."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _upload(request, settings)
    if kind not in ("application/json", ""):
        raise APIError(415, "UnsupportedMediaType",
                       f"content type {kind!r}: send application/json or multipart/form-data")
    raw = await _read_bounded(request, MAX_JSON_BYTES)
    try:
        body = AnalyzeRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise APIError(422, "ValidationError", _validation_message(exc.errors())) from None
    return body.bundle, body.baseline


async def _read_bounded(request: Request, limit: int) -> bytes:
    _check_length(request, limit)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise APIError(413, "PayloadTooLarge", f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise APIError(400, "BadRequest", f"Content-Length {declared[:40]!r} is not a number")
    if int(declared) > limit:
        raise APIError(413, "PayloadTooLarge", f"request body of {declared} bytes is over the limit of {limit}")


async def _upload(request: Request, settings: Settings) -> tuple[str, str | None]:
    if request.headers.get("content-length") is None:
        raise APIError(411, "LengthRequired", "uploads need a Content-Length header")
    _check_length(request, settings.max_upload_bytes + FORM_OVERHEAD_BYTES)
    form = await request.form(max_files=1, max_fields=4)
    try:
        file, baseline = form.get("file"), form.get("baseline")
        if not isinstance(file, UploadFile):
            raise APIError(422, "ValidationError", "multipart upload: put the bundle archive in a part named 'file'")
        if baseline is not None and not isinstance(baseline, str):
            raise APIError(422, "ValidationError", "multipart upload: 'baseline' must be a text field")
        name = await asyncio.to_thread(service.save_upload, settings.bundle_dir, file.file, file.filename,
                                       max_bytes=settings.max_upload_bytes)
    finally:
        await form.close()
    return name, baseline or None


# -- errors, request ids, request metrics --------------------------------------------------------
def _error(status: int, kind: str, message: str, request_id: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}, "request_id": request_id},
                        status_code=status, headers=headers)


def _rid(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or uuid.uuid4().hex)


def _install_errors(api: FastAPI) -> None:
    @api.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.kind, exc.message, _rid(request), exc.headers)

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
        log.info("%s %s -> %s in %.3fs [%s]", request.method, endpoint, response.status_code,
                 time.perf_counter() - started, rid)
        return response


def _validation_message(errors: Any) -> str:
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _audit(request: Request, principal: Principal, action: str, bundle: str | None, outcome: str,
           **extra: Any) -> None:
    request.app.state.audit.record(principal, action, bundle, outcome, request_id=request.state.request_id, **extra)


def _version() -> str:
    from forensics import __version__

    return str(__version__)
