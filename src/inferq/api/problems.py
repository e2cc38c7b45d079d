"""Errors as ``application/problem+json`` (RFC 9457). The one place HTTP statuses are chosen."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferq.errors import (
    InferqError,
    InvalidInput,
    JobConflict,
    JobNotFound,
    ModelNotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: error class → (HTTP status, problem slug, title). Subclasses are listed before parents.
_MAP: list[tuple[type[InferqError], int, str, str]] = [
    (ModelNotFound, 404, "model-not-found", "Model not found"),
    (JobNotFound, 404, "job-not-found", "Job not found"),
    (JobConflict, 409, "job-conflict", "Job conflict"),
    (UnsupportedMediaType, 415, "unsupported-media-type", "Unsupported media type"),
    (InvalidInput, 422, "invalid-input", "Invalid input"),
    (ServiceUnavailable, 503, "service-unavailable", "Service unavailable"),
]

_STATUS_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid-input", "Invalid input"),
}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response."""
    body = {"type": f"urn:inferq:problem:{slug}", "title": title, "status": status,
            "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(exc: InferqError) -> JSONResponse:
    """The response for one of inferq's errors."""
    for cls, status, slug, title in _MAP:
        if isinstance(exc, cls):
            extra: dict[str, Any] = {}
            headers = None
            if isinstance(exc, InvalidInput):
                extra["errors"] = exc.errors
            if isinstance(exc, ServiceUnavailable):
                headers = {"Retry-After": str(exc.retry_after_s)}
            return problem(status, slug, title, str(exc), headers=headers, **extra)
    log.error("unmapped error: %r", exc)
    return problem(500, "internal-error", "Internal error", "an unexpected error occurred")


def field_errors(errors: Any, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """pydantic/FastAPI error dicts as ``[{"field": "a.b", "message": ...}]``."""
    out = []
    for err in errors:
        loc = [str(p) for p in (*prefix, *err.get("loc", ())) if p not in ("body",)]
        out.append({"field": ".".join(loc) or "(body)", "message": err.get("msg", "invalid")})
    return out


def install(app: FastAPI) -> None:
    """Route every error through problem+json."""

    @app.exception_handler(InferqError)
    async def _inferq_error(request: Request, exc: InferqError) -> JSONResponse:
        return problem_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "invalid-input", "Invalid input", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug, title = _STATUS_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
        return problem(exc.status_code, slug, title, str(exc.detail),
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal-error", "Internal error", "an unexpected error occurred")
