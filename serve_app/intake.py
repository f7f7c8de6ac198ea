"""Request bodies read within bounds, after authentication: JSON up to a size, archives up to the upload limit.

    given = await analyze_input(request, settings)     # BundleInput (by name or uploaded), FamilyInput or a trace
    body = await json_body(request, TriageRequest)     # any bounded JSON body as its pydantic model

A body over its limit is refused by its ``Content-Length`` before a byte is read and again while it
streams (413); a client that hangs up mid-body is 499; an upload is saved under ``bundle_dir/uploads/``
by ``forensics.service.save_upload`` and named by what it returns.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from forensics import service
from serve_app.bodies import AnalyzeRequest, TraceAnalyzeRequest
from serve_app.errors import APIError, disconnected, validation_message
from serve_app.settings import Settings

__all__ = ["FORM_OVERHEAD_BYTES", "MAX_JSON_BYTES", "BundleInput", "FamilyInput", "analyze_input", "json_body"]

MAX_JSON_BYTES = 64 * 1024  # a JSON body; one carrying a trace may add the trace limit (service.trace_limit)
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and headers on top of the archive itself

Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True)
class BundleInput:
    """A bundle to analyse: named in a JSON body, or uploaded (then ``bundle`` is its ``uploads/...`` name)."""

    bundle: str
    baseline: str | None = None
    reference_model: str | None = None  # one of the app's allowed_models, checked on intake


@dataclass(frozen=True)
class FamilyInput:
    """The bundles of one failure family, named in a JSON body (``bundles``), analysed as one."""

    bundles: tuple[str, ...]
    baseline: str | None = None


async def analyze_input(request: Request, settings: Settings) -> BundleInput | FamilyInput | TraceAnalyzeRequest:
    """What ``POST /v1/analyze`` was sent: a bundle (JSON body or multipart upload saved under bundle_dir),
    a list of bundles (a failure family), or a trace body. A reference model must be one of the app's
    ``allowed_models``."""
    kind = _content_type(request)
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
    if body.bundles is not None:
        return FamilyInput(tuple(service.check_members(body.bundles)), body.baseline)
    if body.reference_model is not None:
        service.check_model_allowed(body.reference_model, settings.allowed_models)
    return BundleInput(str(body.bundle), body.baseline, body.reference_model)  # set: bundles is not


async def json_body(request: Request, model: type[Body]) -> Body:
    """The bounded JSON body as ``model``; read here (after auth) rather than by FastAPI (before it)."""
    kind = _content_type(request)
    if kind not in ("application/json", ""):
        raise APIError(415, "UnsupportedMediaType", f"content type {kind[:80]!r}: send application/json")
    return _validated(model, await _read_bounded(request, MAX_JSON_BYTES))


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _names_a_trace(raw: bytes) -> bool:
    """Whether a JSON body is a trace body (an object with ``trace`` or ``trace_text``); junk is not."""
    try:
        probe = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON: the bundle body's validation says so
        return False
    return isinstance(probe, dict) and ("trace" in probe or "trace_text" in probe)


def _validated(model: type[Body], raw: bytes) -> Body:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise APIError(422, "ValidationError", validation_message(exc.errors())) from None


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
        raise disconnected(total) from None
    return b"".join(chunks)


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise APIError(400, "BadRequest", f"Content-Length {declared[:40]!r} is not a number")
    if int(declared) > limit:
        raise APIError(413, "PayloadTooLarge", f"request body of {declared} bytes is over the limit of {limit}")


async def _upload(request: Request, settings: Settings) -> BundleInput:
    """The multipart upload's archive saved under ``bundle_dir/uploads/`` (bounded), with its text fields."""
    if request.headers.get("content-length") is None:
        raise APIError(411, "LengthRequired", "uploads need a Content-Length header")
    _check_length(request, settings.max_upload_bytes + FORM_OVERHEAD_BYTES)
    try:
        form = await request.form(max_files=1, max_fields=4)
    except ClientDisconnect:  # mid-upload: audited as the client's doing, never as a 500
        raise disconnected() from None
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
    return BundleInput(name, baseline or None, reference or None)
