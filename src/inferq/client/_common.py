"""What the sync and async clients share: requests as data, response parsing, error mapping.

Each client method is written once here as a *flow*: a generator that yields the HTTP
calls it needs (:class:`Call`) and is sent back each ``httpx.Response``. ``Client`` drives
a flow with blocking I/O, ``AsyncClient`` with ``await``; neither holds protocol logic.
Only streaming (``events``) and pagination differ in shape, and they share
:class:`JobEventReader` and :func:`raise_for_status` from here.

This module imports ``inferq.errors``, ``inferq.schemas``, httpx and pydantic only, so
the client installs without any server dependency.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, TypeAlias, TypeVar
from urllib.parse import quote, unquote

import httpx
from pydantic import ValidationError

from inferq.errors import (
    InferqError,
    InvalidInput,
    JobConflict,
    JobNotFound,
    ModelNotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from inferq.schemas import Image, Job, JobPage, JobStatus, ModelInfo, sniff_image_type

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
#: The longest wait the server holds a request for (``Prefer: wait`` and ``?wait=``).
MAX_WAIT_S = 60.0
PROBLEM_TYPE_PREFIX = "urn:inferq:problem:"


# --- Errors the client adds to inferq.errors ----------------------------------------------


class HTTPError(InferqError):
    """The API answered with an error status that maps to no error of ``inferq.errors``.

    For example 401 (unauthorized), 403 (forbidden), 429 (rate-limited) or 500.
    ``problem`` is the RFC 9457 problem document (``{}`` when the body was not one);
    ``retry_after_s`` is the ``Retry-After`` header in seconds, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        problem: dict[str, Any] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.problem: dict[str, Any] = problem or {}
        self.retry_after_s = retry_after_s


class JobFailed(InferqError):
    """``run()`` found the job failed or canceled; ``job`` is the job as it ended."""

    def __init__(self, job: Job) -> None:
        if job.status is JobStatus.CANCELED:
            message = f"job {job.id} was canceled"
        elif job.error is not None:
            message = f"job {job.id} failed: {job.error.type}: {job.error.message}"
        else:
            message = f"job {job.id} ended {job.status.value}"
        super().__init__(message)
        self.job = job


# --- Configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    """The settings both clients are built from, with environment defaults applied."""

    base_url: str
    api_key: str | None
    timeout_s: float | None

    @classmethod
    def resolve(
        cls, base_url: str | None, api_key: str | None, timeout_s: float | None
    ) -> ClientConfig:
        """Fill ``base_url`` from ``INFERQ_URL`` and ``api_key`` from ``INFERQ_API_KEY``."""
        url = base_url or os.environ.get("INFERQ_URL") or DEFAULT_BASE_URL
        key = api_key if api_key is not None else os.environ.get("INFERQ_API_KEY")
        return cls(base_url=url.rstrip("/"), api_key=key or None, timeout_s=timeout_s)

    def headers(self) -> dict[str, str]:
        """Headers sent with every request."""
        headers = {"Accept": "application/json", "User-Agent": "inferq-client"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def timeout(self, extra_read_s: float | None = 0.0) -> httpx.Timeout:
        """The timeout of one call; ``extra_read_s`` (a server-side wait) extends the read
        timeout, and None lifts it (for event streams, which stay open as long as the job).
        """
        if self.timeout_s is None:
            return httpx.Timeout(None)
        read = None if extra_read_s is None else self.timeout_s + extra_read_s
        return httpx.Timeout(self.timeout_s, read=read)


# --- Calls: requests as data ----------------------------------------------------------------

FilePart: TypeAlias = tuple[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class Call:
    """One HTTP request a flow needs, before it is bound to a client.

    ``wait_s`` is how long the server may hold the request on purpose (added to the
    read timeout); None means the response is a stream with no read timeout.
    """

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: dict[str, str] | None = None
    files: list[FilePart] | None = None
    wait_s: float | None = 0.0


def build_request(
    http: httpx.Client | httpx.AsyncClient, call: Call, config: ClientConfig
) -> httpx.Request:
    """Turn ``call`` into an ``httpx.Request`` on ``http`` (base URL and headers applied)."""
    return http.build_request(
        call.method,
        call.path,
        params=call.params or None,
        headers=call.headers or None,
        json=call.json,
        data=call.data,
        files=call.files,
        timeout=config.timeout(call.wait_s),
    )


def unreachable(exc: httpx.TransportError, request: httpx.Request) -> ServiceUnavailable:
    """The error for a request that got no answer (refused, reset, timed out)."""
    url = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
    if isinstance(exc, httpx.TimeoutException):
        what = f"timed out talking to the inferq API at {url}"
    else:
        what = f"cannot reach the inferq API at {url}"
    return ServiceUnavailable(f"{what} ({type(exc).__name__}: {exc})")


def _segment(value: str) -> str:
    return quote(value, safe="")


def format_wait(wait_s: float) -> str:
    """``wait_s`` capped to ``[0, MAX_WAIT_S]``, as the API writes it: ``5`` or ``2.5``."""
    capped = round(max(0.0, min(float(wait_s), MAX_WAIT_S)), 3)
    return str(int(capped)) if capped == int(capped) else str(capped)


def _capped(wait_s: float) -> float:
    return float(format_wait(wait_s))


# --- Submitting: JSON or multipart -----------------------------------------------------------


def _is_upload(value: Any) -> bool:
    if isinstance(value, bytes | bytearray | memoryview | PurePath | Image):
        return True
    return hasattr(value, "read") and not isinstance(value, str)


def _file_part(name: str, value: Any) -> FilePart:
    filename = name
    media_type: str | None = None
    if isinstance(value, Image):
        data, media_type = value.data, value.media_type
    elif isinstance(value, PurePath):
        with open(value, "rb") as f:
            data = f.read()
        filename = value.name
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raw = value.read()
        if not isinstance(raw, bytes | bytearray):
            raise TypeError(f"input field {name!r}: open the file in binary mode ('rb')")
        data = bytes(raw)
        file_name = getattr(value, "name", None)
        if isinstance(file_name, str) and file_name:
            filename = os.path.basename(file_name)
    if media_type is None:
        media_type = sniff_image_type(data) or "application/octet-stream"
    return (name, (filename, data, media_type))


def _form_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def submit_call(
    model: str,
    input: Mapping[str, Any] | None,
    webhook: str | None,
    webhook_events: Sequence[str] | None,
    wait: float | None,
) -> Call:
    """The ``POST /v1/models/{model}/jobs`` call: multipart if any input value is an upload
    (bytes, a path, a binary file, an ``Image``), JSON otherwise.
    """
    fields = dict(input or {})
    events = [webhook_events] if isinstance(webhook_events, str) else webhook_events
    headers = {} if wait is None else {"Prefer": f"wait={format_wait(wait)}"}
    wait_s = 0.0 if wait is None else _capped(wait)
    path = f"/v1/models/{_segment(model)}/jobs"

    if not any(_is_upload(v) for v in fields.values()):
        body: dict[str, Any] = {"input": fields}
        if webhook is not None:
            body["webhook"] = webhook
        if events is not None:
            body["webhook_events"] = list(events)
        return Call("POST", path, headers=headers, json=body, wait_s=wait_s)

    # In multipart the input fields and the webhook options share one namespace.
    for reserved in ("webhook", "webhook_events"):
        if reserved in fields:
            raise ValueError(
                f"input field {reserved!r} cannot be sent with a file upload: in "
                "multipart/form-data that part name is the job's webhook option"
            )
    data: dict[str, str] = {}
    files: list[FilePart] = []
    for name, value in fields.items():
        if _is_upload(value):
            files.append(_file_part(name, value))
        else:
            data[name] = _form_value(value)
    if webhook is not None:
        data["webhook"] = webhook
    if events is not None:
        data["webhook_events"] = ",".join(events)
    return Call("POST", path, headers=headers, data=data, files=files, wait_s=wait_s)


# --- Flows: one per client method ------------------------------------------------------------

#: A client method as a generator: yields the calls it needs, is sent their responses,
#: returns the result.
Flow: TypeAlias = Generator[Call, httpx.Response, T]


def submit_flow(
    model: str,
    input: Mapping[str, Any] | None,
    webhook: str | None,
    webhook_events: Sequence[str] | None,
    wait: float | None,
) -> Flow[Job]:
    """``submit``: one POST; the job as the server answers it (finished if ``wait`` sufficed)."""
    response = yield submit_call(model, input, webhook, webhook_events, wait)
    return parse_job(response)


def get_flow(job_id: str, wait: float | None) -> Flow[Job]:
    """``get``: one GET, held by the server up to ``wait`` seconds if given."""
    params = {} if wait is None else {"wait": format_wait(wait)}
    wait_s = 0.0 if wait is None else _capped(wait)
    response = yield Call("GET", f"/v1/jobs/{_segment(job_id)}", params=params, wait_s=wait_s)
    return parse_job(response)


def wait_flow(job_id: str, timeout: float | None) -> Flow[Job]:
    """``wait``: long-poll GETs of at most ``MAX_WAIT_S`` each until the job is terminal.

    No sleeping: the server holds each request. Raises ``TimeoutError`` once ``timeout``
    seconds have passed (None: never). At least one GET is always made.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = MAX_WAIT_S if deadline is None else max(0.0, deadline - time.monotonic())
        job = yield from get_flow(job_id, min(remaining, MAX_WAIT_S))
        if job.status.is_terminal():
            return job
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"job {job_id} did not finish within {timeout} s (it is {job.status.value})"
            )


def run_flow(model: str, input: Mapping[str, Any] | None, timeout: float | None) -> Flow[Any]:
    """``run``: submit with ``Prefer: wait``, long-poll until done, return the output.

    Raises ``JobFailed`` if the job failed or was canceled, ``TimeoutError`` on timeout.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    first_wait = MAX_WAIT_S if timeout is None else min(timeout, MAX_WAIT_S)
    job = yield from submit_flow(model, input, None, None, first_wait)
    if not job.status.is_terminal():
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        job = yield from wait_flow(job.id, remaining)
    if job.status is not JobStatus.SUCCEEDED:
        raise JobFailed(job)
    return job.output


def cancel_flow(job_id: str) -> Flow[Job]:
    """``cancel``: one POST; ``JobConflict`` if the job had already ended."""
    response = yield Call("POST", f"/v1/jobs/{_segment(job_id)}/cancel")
    return parse_job(response)


def list_flow(
    model: str | None, status: JobStatus | str | None, limit: int | None, cursor: str | None
) -> Flow[JobPage]:
    """``list``: one page of ``GET /v1/jobs``, newest first."""
    params: dict[str, str] = {}
    if model is not None:
        params["model"] = model
    if status is not None:
        params["status"] = JobStatus(status).value
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    response = yield Call("GET", "/v1/jobs", params=params)
    return _parse(response, JobPage.model_validate)


def models_flow() -> Flow[list[ModelInfo]]:
    """``models``: every served model."""
    response = yield Call("GET", "/v1/models")
    return _parse(response, lambda body: [ModelInfo.model_validate(m) for m in body["models"]])


def model_flow(name: str) -> Flow[ModelInfo]:
    """``model``: one served model; ``ModelNotFound`` if there is none of that name."""
    response = yield Call("GET", f"/v1/models/{_segment(name)}")
    return _parse(response, ModelInfo.model_validate)


def events_call(job_id: str) -> Call:
    """The ``GET /v1/jobs/{id}/events`` call (a stream: no read timeout)."""
    return Call(
        "GET",
        f"/v1/jobs/{_segment(job_id)}/events",
        headers={"Accept": "text/event-stream"},
        wait_s=None,
    )


# --- Responses ------------------------------------------------------------------------------


def parse_job(response: httpx.Response) -> Job:
    """The ``Job`` in a response, or the error the response stands for."""
    return _parse(response, Job.model_validate)


def _parse(response: httpx.Response, validate: Callable[[Any], T]) -> T:
    raise_for_status(response)
    try:
        return validate(response.json())
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise HTTPError(
            f"unexpected response from {response.request.method} {response.request.url}: {exc}",
            status_code=response.status_code,
        ) from exc


def raise_for_status(response: httpx.Response) -> None:
    """Raise the error an error response stands for; do nothing on success.

    The body must have been read (``read()``/``aread()`` for a streamed response).
    """
    if response.is_success:
        return
    raise error_from_response(response)


_MODEL_URL = re.compile(r"/v1/models/(?P<name>[^/?#]+)")
_JOB_URL = re.compile(r"/v1/jobs/(?P<id>[^/?#]+)")


def _problem(response: httpx.Response) -> dict[str, Any]:
    if "json" not in response.headers.get("content-type", ""):
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after_s(response: httpx.Response) -> int | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, math.ceil((when - datetime.now(UTC)).total_seconds()))


def error_from_response(response: httpx.Response) -> InferqError:
    """The ``inferq.errors`` exception for an error response (``HTTPError`` if none fits).

    The problem ``type`` slug decides; when the body is no inferq problem document the
    status code does (404 on a job URL is ``JobNotFound``, 503 is ``ServiceUnavailable``).
    """
    status = response.status_code
    problem = _problem(response)
    problem_type = problem.get("type")
    slug = (
        problem_type.removeprefix(PROBLEM_TYPE_PREFIX)
        if isinstance(problem_type, str) and problem_type.startswith(PROBLEM_TYPE_PREFIX)
        else None
    )
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        detail = problem.get("title") if isinstance(problem.get("title"), str) else None
    message = detail or f"{status} {response.reason_phrase}".strip()
    errors = problem.get("errors")
    field_errors: list[dict[str, Any]] = (
        [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    )
    path = response.request.url.raw_path.decode("ascii")  # still quoted: "a%2Fb" is one name
    model_match = _MODEL_URL.search(path)
    job_match = _JOB_URL.search(path)
    path_model = unquote(model_match["name"]) if model_match else None
    job_id = unquote(job_match["id"]) if job_match else None
    if slug is None or slug not in _SLUGS:
        # A bare 404 means "no such job/model" only where the URL names one.
        slug = _slug_for_status(status, path_model, job_id)
    # The server can also report an unknown model in the ``model`` filter of GET /v1/jobs.
    model_name = path_model or response.request.url.params.get("model")
    if slug == "model-not-found":
        return ModelNotFound(model_name or detail or "?")
    if slug == "job-not-found":
        return JobNotFound(job_id or detail or "?")
    if slug == "job-conflict":
        return JobConflict(message)
    if slug == "unsupported-media-type":
        return UnsupportedMediaType(message, field_errors)
    if slug in ("invalid-input", "payload-too-large"):
        return InvalidInput(message, field_errors)
    if slug == "service-unavailable":
        exc = ServiceUnavailable(message)
        retry_after = _retry_after_s(response)
        if retry_after is not None:
            exc.retry_after_s = retry_after
        return exc
    return HTTPError(
        f"{status} {response.reason_phrase}: {message}" if detail else message,
        status_code=status,
        problem=problem,
        retry_after_s=_retry_after_s(response),
    )


_SLUGS = frozenset(
    {
        "model-not-found",
        "job-not-found",
        "job-conflict",
        "invalid-input",
        "unsupported-media-type",
        "payload-too-large",
        "service-unavailable",
    }
)


def _slug_for_status(status: int, model_name: str | None, job_id: str | None) -> str | None:
    if status == 404:
        if job_id is not None:
            return "job-not-found"
        if model_name is not None:
            return "model-not-found"
        return None
    return {
        400: "invalid-input",
        409: "job-conflict",
        413: "payload-too-large",
        415: "unsupported-media-type",
        422: "invalid-input",
        502: "service-unavailable",
        503: "service-unavailable",
        504: "service-unavailable",
    }.get(status)


# --- Server-sent events ---------------------------------------------------------------------


@dataclass
class SSEEvent:
    """One server-sent event: its ``event`` name (default ``message``) and joined data."""

    event: str = "message"
    data: str = ""
    id: str | None = None


class SSEParser:
    """A line-at-a-time parser of ``text/event-stream`` (the WHATWG rules, minus ``retry``).

    Feed it lines without their line ending; it returns an event when a blank line ends
    one. Comment lines (``:`` first) are ignored; an event with no data is dropped.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SSEEvent | None:
        """Take one line; return the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        event = (
            SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            if self._data
            else None
        )
        self._event, self._data = "", []
        return event


class JobEventReader:
    """Turns the lines of ``GET /v1/jobs/{id}/events`` into jobs; ``done`` after a terminal one."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.done = False
        self._parser = SSEParser()

    def feed(self, line: str) -> Job | None:
        """Take one line; return the job its event carries, if it completes one."""
        event = self._parser.feed(line)
        if event is None or self.done:
            return None
        try:
            job = Job.model_validate_json(event.data)
        except ValidationError as exc:
            raise HTTPError(
                f"unreadable event {event.event!r} in the stream of job {self.job_id}: {exc}",
                status_code=200,
            ) from exc
        self.done = job.status.is_terminal()
        return job

    def finish(self) -> None:
        """Call at the end of the stream: raise if it ended before the job did."""
        if not self.done:
            raise ServiceUnavailable(
                f"the event stream of job {self.job_id} ended before the job finished; "
                "use wait() or events() again"
            )
