"""Errors as HTTP answers: a status for each error of ``forensics.errors``, one body shape for all.

    http_status(BundleNotFoundError("..."))          # 404
    http_error_data(exc, request_id)                 # {"type", "message", "status", "request_id"}
    install_error_handlers(api)                      # every error -> {"error": {"type", "message"}, "request_id"}

``http_error_data`` is ``forensics.errors.error_data`` plus a status and a request id; past 499 (and
for a full disk) the message is generic and the details go to the log only. The Analyzer replica
sends it across Ray, and the ingress raises it again as an ``APIError``, the HTTP layer's one error
type (also raised for HTTP's own refusals: 411, 413, 415, 499, 503). ``AuthError`` answers carry a
``WWW-Authenticate`` challenge; an unreadable credential store is 503 with ``Retry-After``. FastAPI is
imported only by the functions that answer, so the mapping itself imports without it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from forensics.errors import (
    AnalysisTimeoutError,
    AuthError,
    BundleError,
    BundleNotFoundError,
    ConfigError,
    ForensicsError,
    ModelError,
    ReplayError,
    ResultNotFoundError,
    StorageError,
    TraceError,
    UploadTooLargeError,
    error_data,
)

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "CLIENT_CLOSED",
    "REALM",
    "RETRY_AFTER_S",
    "APIError",
    "AccessUnavailable",
    "AuditFailure",
    "disconnected",
    "error_response",
    "http_error_data",
    "http_status",
    "install_error_handlers",
    "status_of",
    "validation_message",
]

log = logging.getLogger("serve_app")

REALM = "model-forensics"  # of the WWW-Authenticate challenge
RETRY_AFTER_S = "5"
CLIENT_CLOSED = 499  # the client went away before its request was complete (nginx's code; nobody reads the answer)

_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (BundleNotFoundError, 404),
    (ResultNotFoundError, 404),
    (UploadTooLargeError, 413),
    (AnalysisTimeoutError, 504),
    (BundleError, 400),
    (TraceError, 400),
    (ConfigError, 422),
    (ModelError, 422),
    (ReplayError, 422),
    (AuthError, 403),
    (StorageError, 507),
)


class APIError(Exception):
    """An answer other than 2xx, as data: status, type, message (and optional headers)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> APIError:
        """The error ``http_error_data`` made on the other side of a Ray call, raised again here."""
        return cls(int(data["status"]), str(data["type"]), str(data["message"]))


class AccessUnavailable(Exception):
    """The credential store cannot be read (the server's fault, not the caller's): answered 503."""


class AuditFailure(RuntimeError):
    """An audit line could not be written; the request fails (500) rather than go unrecorded."""


def http_status(exc: BaseException) -> int:
    """The HTTP status of an error: 4xx for our errors (``AuthError.status`` wins when set), 500 for the rest."""
    status = getattr(exc, "status", None)
    if isinstance(exc, AuthError) and isinstance(status, int):
        return status
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)


def status_of(exc: BaseException) -> int:
    """The status an error is answered with, whichever layer raised it."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if isinstance(exc, APIError):
        return exc.status
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    return http_status(exc)


def http_error_data(exc: BaseException, request_id: str) -> dict[str, Any]:
    """``{"type", "message", "status", "request_id"}``; unexpected errors get a generic message (log has the rest)."""
    status = http_status(exc)
    data: dict[str, Any] = {**error_data(exc), "status": status, "request_id": request_id}
    if isinstance(exc, StorageError):  # the server's disk, not the caller's input: path in the log only
        log.error("request %s: %s", request_id, exc)
        data["type"] = "InsufficientStorage"
        data["message"] = (
            f"the server cannot store the result (disk full or I/O error); retry later, quote request id {request_id}"
        )
    elif status >= 500:
        log.error("request %s failed", request_id, exc_info=exc)
        data["type"], data["message"] = "InternalError", f"internal error; quote request id {request_id}"
    return data


def disconnected(received: int | None = None) -> APIError:
    got = "" if received is None else f" after {received} bytes"
    return APIError(
        CLIENT_CLOSED,
        "ClientDisconnect",
        f"the client closed the connection{got}, before the request body was complete",
    )


def validation_message(errors: Any) -> str:
    """Pydantic's errors in one line: the first five, each with where it is."""
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def error_response(
    status: int, kind: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        {"error": {"type": kind, "message": message}, "request_id": request_id}, status_code=status, headers=headers
    )


def install_error_handlers(api: FastAPI) -> None:
    """Answer every error the routes raise in the one body shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    api.exception_handler(APIError)(_api_error)
    api.exception_handler(AuthError)(_auth_error)
    api.exception_handler(AccessUnavailable)(_access_unavailable)
    api.exception_handler(ForensicsError)(_forensics_error)
    api.exception_handler(RequestValidationError)(_invalid)
    api.exception_handler(StarletteHTTPException)(_http_error)


def _rid(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or uuid.uuid4().hex)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.kind, exc.message, _rid(request), exc.headers)


async def _auth_error(request: Request, exc: AuthError) -> JSONResponse:
    status = http_status(exc)
    challenge = f'Bearer realm="{REALM}"'
    if status == 403:
        challenge += ', error="insufficient_scope"'
    elif request.headers.get("authorization"):
        challenge += ', error="invalid_token"'
    kind = "Forbidden" if status == 403 else "Unauthorized"
    return error_response(status, kind, str(exc), _rid(request), {"WWW-Authenticate": challenge})


async def _access_unavailable(request: Request, exc: AccessUnavailable) -> JSONResponse:
    return error_response(503, "AuthUnavailable", str(exc), _rid(request), {"Retry-After": RETRY_AFTER_S})


async def _forensics_error(request: Request, exc: ForensicsError) -> JSONResponse:
    data = http_error_data(exc, _rid(request))
    return error_response(data["status"], data["type"], data["message"], data["request_id"])


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "ValidationError", validation_message(exc.errors()), _rid(request))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, "HTTPError", str(exc.detail), _rid(request), dict(exc.headers or {}))
