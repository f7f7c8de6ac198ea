"""The HTTP API (FastAPI), built per ingress replica around a backend that runs analyses.

    api = build_api(backend, settings, Metrics())      # backend: the Analyzer deployment's handle, wrapped
    # POST /v1/analyze  POST /v1/triage  GET /v1/results/{id}  GET /metrics   (Authorization: Bearer ...)
    # POST /v1/export-fix                                                     (admin only)
    # GET /healthz  GET /docs  GET /openapi.json                              (open: probes, API docs)

Routes live here, one router per concern (analyses, results, operations); what surrounds them lives
beside them: request bodies (``bodies``), bounded intake (``intake``), errors as answers (``errors``:
every error body is ``{"error": {"type", "message"}, "request_id"}``), request ids, metrics and log
lines (``middleware``), auth and audit (``security``). Each endpoint but the open ones needs one
permission (``requires``): 401 with ``WWW-Authenticate: Bearer`` without valid credentials, 403 when
the role or scope does not allow it. Analyses, triage, result reads and fix exports are audited (one
line each, refusals included) when an audit log is configured.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from forensics import service
from forensics.ops.audit import AuditLog
from forensics.ops.auth import Principal
from forensics.ops.metrics import Metrics
from serve_app.bodies import (
    ANALYZE_BODY,
    EXPORT_FIX_BODY,
    TRIAGE_BODY,
    ExportFixRequest,
    TraceAnalyzeRequest,
    TriageRequest,
)
from serve_app.errors import APIError, install_error_handlers
from serve_app.intake import BundleInput, FamilyInput, analyze_input, json_body
from serve_app.middleware import install_request_context
from serve_app.security import Access, Audit, audited, requires
from serve_app.settings import Settings

__all__ = ["Backend", "build_api"]

_DESCRIPTION = """Root-cause analysis of model incidents: analyse bundles, triage, fetch reports.

Send `Authorization: Bearer <token>` (an API token from `model-forensics tokens add`, or an OAuth2/OIDC JWT
when configured). Permissions: analyze needs `run_analysis`, triage `read_bundles`, results and metrics
`view_results`, export-fix `admin`. `/healthz`, `/docs` and `/openapi.json` are open.

`POST /v1/analyze` takes a bundle name (JSON `bundle`), a list of bundle names (JSON `bundles`: 2 or more
incidents of one failure mode, analysed as one failure family; the answer's `result` is the family report),
a bundle archive (multipart `file`), or an OpenTelemetry GenAI trace (JSON `trace` or `trace_text`, with
`model` and `expected` or `forbidden`): the trace's chat call is re-recorded on that model into a fresh
bundle and analysed with provenance; the answer adds `trace` (`reproduces`, `verdict`: whether the local
model says what the trace recorded).

`POST /v1/export-fix` (admin) turns a stored report's fix (a result id, or a report path under the output
directory) into an edited model written to `fixes/<out>` under the output directory, judged as
`model-forensics export-fix` judges it."""


class Backend(Protocol):
    """Runs the heavy work (in the Analyzer deployment); raises ``APIError`` for failures."""

    async def analyze(
        self, *, bundle: str, baseline: str | None, result_id: str, request_id: str, **reference_model: str
    ) -> dict[str, Any]: ...  # reference_model=... only when the request names one

    async def analyze_family(
        self, *, bundles: list[str], baseline: str | None, result_id: str, request_id: str
    ) -> dict[str, Any]: ...

    async def triage(self, *, directory: str, baseline: str | None, request_id: str) -> list[dict[str, Any]]: ...

    async def export_fix(self, *, body: dict[str, Any], request_id: str) -> dict[str, Any]: ...  # ExportFixRequest

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


def build_api(
    backend: Backend, settings: Settings, metrics: Metrics, *, access: Access | None = None, audit: Audit | None = None
) -> FastAPI:
    """The FastAPI app of one ingress replica; ``access``/``audit`` default to what ``settings`` configure."""
    api = FastAPI(title="model-forensics", version=_version(), description=_DESCRIPTION)
    api.state.access = access or settings.auth.access()
    api.state.audit = audit or AuditLog.from_path(settings.audit_log)
    install_error_handlers(api)
    install_request_context(api, metrics)
    api.include_router(_analysis_routes(backend, settings, metrics))
    api.include_router(_result_routes(settings))
    api.include_router(_fix_routes(backend))
    api.include_router(_operation_routes(settings, metrics))
    return api


# -- analyses: POST /v1/analyze, POST /v1/triage -------------------------------------------------
def _analysis_routes(backend: Backend, settings: Settings, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/analyze", openapi_extra=ANALYZE_BODY, summary="Analyse a bundle (by name or uploaded archive)")
    async def analyze(
        request: Request, principal: Annotated[Principal, requires("run_analysis", "analyze")]
    ) -> dict[str, Any]:
        async with audited(request, principal, "analyze") as entry:
            given = await analyze_input(request, settings)
            try:
                done = await _analyze(backend, settings, given, entry, request.state.request_id)
            except APIError as exc:
                if exc.status != 503:  # overload is not a failed analysis
                    metrics.observe_error(exc.kind)
                raise
            entry["result"] = done["id"]
        if isinstance(given, FamilyInput):  # a family report is no incident's: the metrics count incidents
            return _family_answer(done)
        metrics.observe_report(done["report"])
        return _answer(done)

    @router.post(
        "/v1/triage", openapi_extra=TRIAGE_BODY, summary="Rank the bundles of a directory by CF anomaly (no replay)"
    )
    async def triage(
        request: Request, principal: Annotated[Principal, requires("read_bundles", "triage")]
    ) -> dict[str, Any]:
        async with audited(request, principal, "triage") as entry:
            body = await json_body(request, TriageRequest)
            entry["bundle"] = body.directory
            rows = await backend.triage(
                directory=body.directory, baseline=body.baseline, request_id=request.state.request_id
            )
            entry["bundles"] = len(rows)
        return {"directory": body.directory, "bundles": rows}

    return router


async def _analyze(
    backend: Backend,
    settings: Settings,
    given: BundleInput | FamilyInput | TraceAnalyzeRequest,
    entry: dict[str, Any],
    rid: str,
) -> dict[str, Any]:
    """Ask the backend to analyse what ``POST /v1/analyze`` was sent; ``entry`` (the audit line) learns the bundle."""
    if isinstance(given, TraceAnalyzeRequest):
        return await _analyze_trace(backend, settings, given, entry, rid)
    if isinstance(given, FamilyInput):
        entry["bundle"] = ",".join(given.bundles)[:1000]
        entry["members"] = len(given.bundles)
        return await backend.analyze_family(
            bundles=list(given.bundles), baseline=given.baseline, result_id=service.new_result_id(), request_id=rid
        )
    entry["bundle"] = given.bundle
    extra = {"reference_model": given.reference_model} if given.reference_model is not None else {}
    return await backend.analyze(
        bundle=given.bundle, baseline=given.baseline, result_id=service.new_result_id(), request_id=rid, **extra
    )


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


def _answer(done: dict[str, Any]) -> dict[str, Any]:
    """The short answer of an analysis; the full report stays in ``GET /v1/results/{id}``."""
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


def _family_answer(done: dict[str, Any]) -> dict[str, Any]:
    """A family analysis's answer: the family report itself (it is short), also kept at ``/v1/results/{id}``."""
    return {
        "id": done["id"],
        "status": "done",
        "bundles": done["bundles"],
        "result": done["report"],
        "links": {"result": f"/v1/results/{done['id']}"},
    }


# -- fixes: POST /v1/export-fix (admin) ----------------------------------------------------------
def _fix_routes(backend: Backend) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/export-fix",
        openapi_extra=EXPORT_FIX_BODY,
        summary="Export a stored report's fix as an edited model under the output directory (admin only)",
    )
    async def export_fix(
        request: Request, principal: Annotated[Principal, requires("admin", "export_fix")]
    ) -> dict[str, Any]:
        async with audited(request, principal, "export_fix") as entry:
            body = await json_body(request, ExportFixRequest)
            entry["result"], entry["out"] = body.report[:200], body.out
            done = await backend.export_fix(body=body.model_dump(), request_id=request.state.request_id)
        return {"status": "done", **done}

    return router


# -- results: GET /v1/results/{id} ---------------------------------------------------------------
def _result_routes(settings: Settings) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/results/{result_id}", summary="The full JSON report of an analysis")
    async def result(
        result_id: str, request: Request, principal: Annotated[Principal, requires("view_results", "view_result")]
    ) -> dict[str, Any]:
        async with audited(request, principal, "view_result", result=result_id[:80]) as entry:
            report = await asyncio.to_thread(service.read_result, settings.output_dir, result_id)
            entry["bundle"] = report.get("bundle_id")
        return {"id": result_id, "status": "done", "result": report}

    return router


# -- operations: GET /healthz, GET /metrics ------------------------------------------------------
def _operation_routes(settings: Settings, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", summary="Liveness of this API replica (open: probes send no token)")
    async def healthz() -> JSONResponse:
        problems = settings.problems()
        return JSONResponse(
            {"status": "fail" if problems else "ok", "problems": problems}, status_code=503 if problems else 200
        )

    @router.get(
        "/metrics", summary="Prometheus metrics of this API replica (needs view_results)", response_class=Response
    )
    async def prometheus(principal: Annotated[Principal, requires("view_results")]) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router


def _version() -> str:
    from forensics.version import __version__

    return str(__version__)
