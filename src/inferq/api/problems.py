"""Errors as ``application/problem+json`` (RFC 9457). The one place HTTP statuses are chosen."""

from __future__ import annotations

import logging
import math
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
    429: ("too-many-requests", "Too many requests"),
}


class HTTPProblem(Exception):
    """A refusal that exists only at the HTTP layer (no key, too many requests, too big).

    Made by the functions below, so that every status is still chosen in this module.
    """

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def response(self) -> JSONResponse:
        """This problem as problem+json."""
        slug, title = _STATUS_SLUGS.get(self.status, ("http-error", "HTTP error"))
        return problem(self.status, slug, title, self.detail, headers=self.headers, **self.extra)


def unauthorized(detail: str, *, invalid: bool = False) -> HTTPProblem:
    """401: no API key, or one that is unknown or revoked (RFC 6750's challenge)."""
    challenge = 'Bearer realm="inferq"'
    if invalid:
        challenge += ', error="invalid_token"'
    return HTTPProblem(401, detail, headers={"WWW-Authenticate": challenge})


def too_many_requests(detail: str, retry_after_s: float) -> HTTPProblem:
    """429 with ``Retry-After`` in whole seconds (at least 1)."""
    seconds = max(1, math.ceil(retry_after_s))
    return HTTPProblem(429, detail, headers={"Retry-After": str(seconds)},
                       retry_after_s=seconds)


def too_large(field: str, detail: str) -> HTTPProblem:
    """413 naming the field that is too big (e.g. an image with too many pixels)."""
    return HTTPProblem(413, f"{field}: {detail}", errors=[{"field": field, "message": detail}])


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

    @app.exception_handler(HTTPProblem)
    async def _http_problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return exc.response()

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
