"""Around every request: its id, its metric, its log line, and a generic 500 for what no handler answered.

    install_request_context(api, metrics)    # X-Request-ID, model_forensics_http_requests_total, one log line

The request id is the client's ``X-Request-ID`` when it is a safe token (Ray Serve's proxy sets one),
else a fresh uuid; every answer carries it, and so does every error body and audit line.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Counter

from forensics.ops.metrics import Metrics
from serve_app.errors import error_response, http_error_data

__all__ = ["REQUEST_ID", "install_request_context"]

log = logging.getLogger("serve_app")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

CallNext = Callable[[Request], Awaitable[Response]]


def install_request_context(api: FastAPI, metrics: Metrics) -> None:
    """Give each request an id, count it by endpoint and status in ``metrics``, log one line for it."""
    requests = Counter(
        "model_forensics_http_requests",
        "HTTP requests by endpoint and status",
        ["endpoint", "method", "status"],
        registry=metrics.registry,
    )

    @api.middleware("http")
    async def request_context(request: Request, call_next: CallNext) -> Response:
        # Ray Serve's proxy puts its request id (the client's, or a fresh uuid) in x-request-id and echoes
        # it as the X-Request-ID response header; we reuse it so our logs and Serve's correlate.
        given = request.headers.get("x-request-id")
        request.state.request_id = rid = given if given and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # anything no handler turned into an answer: log it, answer generically
            data = http_error_data(exc, rid)
            response = error_response(500, data["type"], data["message"], rid)
        if given is None:  # not behind the Serve proxy: say it ourselves
            response.headers["X-Request-ID"] = rid
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        requests.labels(endpoint=endpoint, method=request.method, status=str(response.status_code)).inc()
        elapsed = time.perf_counter() - started
        log.info("%s %s -> %s in %.3fs [%s]", request.method, endpoint, response.status_code, elapsed, rid)
        return response
