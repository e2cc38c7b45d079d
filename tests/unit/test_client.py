"""The client SDK against ``httpx.MockTransport``: no server.

Most tests run twice, through ``Client`` and through ``AsyncClient`` (the ``api`` fixture),
since the two must behave the same.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import inferq.client
from inferq.client import AsyncClient, Client, HTTPError, JobFailed, _common
from inferq.client._common import SSEEvent, SSEParser
from inferq.errors import (
    InferqError,
    InvalidInput,
    JobConflict,
    JobNotFound,
    ModelNotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from inferq.schemas import Image, Job, JobStatus

BASE = "http://inferq.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16

Handler = Callable[[httpx.Request], httpx.Response]


def job_json(job_id: str = "j1", status: str = "queued", **fields: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "model": "mnist",
        "status": status,
        "created_at": "2025-01-01T00:00:00Z",
        **fields,
    }


def problem(status: int, slug: str, detail: str = "nope", **extra: Any) -> httpx.Response:
    body = {
        "type": f"urn:inferq:problem:{slug}",
        "title": slug.replace("-", " "),
        "status": status,
        "detail": detail,
        **extra,
    }
    return httpx.Response(
        status, content=json.dumps(body), headers={"content-type": "application/problem+json"}
    )


class Api:
    """Calls one client method through ``Client`` or ``AsyncClient`` and records requests."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.requests: list[httpx.Request] = []

    def _transport(self, handler: Handler) -> httpx.MockTransport:
        def record(request: httpx.Request) -> httpx.Response:
            request.read()
            self.requests.append(request)
            return handler(request)

        return httpx.MockTransport(record)

    def call(self, handler: Handler, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(*args, **kwargs)``; iterators are drained into a list."""
        client_kw = kwargs.pop("client_kw", {"base_url": BASE})
        if self.kind == "sync":
            with Client(transport=self._transport(handler), **client_kw) as client:
                result = getattr(client, method)(*args, **kwargs)
                return list(result) if isinstance(result, Iterator) else result

        async def go() -> Any:
            async with AsyncClient(transport=self._transport(handler), **client_kw) as client:
                result = getattr(client, method)(*args, **kwargs)
                if hasattr(result, "__aiter__"):
                    return [item async for item in result]
                return await result

        return asyncio.run(go())

    @property
    def request(self) -> httpx.Request:
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> Api:
    return Api(request.param)


def answer(body: Any, status: int = 200, **headers: str) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers)


def form_parts(request: httpx.Request) -> dict[str, tuple[str | None, str, bytes]]:
    """The parts of a multipart request: name → (filename, content type, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    assert message.is_multipart()
    parts = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts[str(part.get_param("name", header="content-disposition"))] = (
            part.get_filename(),
            part.get_content_type(),
            payload,
        )
    return parts


# --- the package --------------------------------------------------------------------------


def test_public_names_are_exactly_all() -> None:
    assert sorted(inferq.client.__all__) == ["AsyncClient", "Client", "HTTPError", "JobFailed"]
    for name in inferq.client.__all__:
        assert getattr(inferq.client, name).__doc__
    assert issubclass(HTTPError, InferqError) and issubclass(JobFailed, InferqError)


def test_client_imports_no_server_dependencies() -> None:
    code = (
        "import sys, inferq.client\n"
        "heavy = {'celery', 'fastapi', 'torch', 'sqlalchemy', 'redis'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_methods_of_sync_and_async_clients_match() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in vars(cls) if not n.startswith("_")}

    assert public(Client) - {"close"} == public(AsyncClient) - {"aclose"}
    for cls in (Client, AsyncClient):
        for name in public(cls):
            assert getattr(cls, name).__doc__, f"{cls.__name__}.{name} has no docstring"


# --- configuration ------------------------------------------------------------------------


def test_base_url_and_api_key_come_from_the_environment(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERQ_URL", "http://env.test:9000/prefix/")
    monkeypatch.setenv("INFERQ_API_KEY", "s3cret")
    api.call(answer(job_json()), "get", "j1", client_kw={})
    assert str(api.request.url) == "http://env.test:9000/prefix/v1/jobs/j1"
    assert api.request.headers["authorization"] == "Bearer s3cret"


def test_defaults_to_localhost_and_sends_no_authorization_without_a_key(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERQ_URL", raising=False)
    monkeypatch.delenv("INFERQ_API_KEY", raising=False)
    api.call(answer(job_json()), "get", "j1", client_kw={})
    assert str(api.request.url) == "http://127.0.0.1:8000/v1/jobs/j1"
    assert "authorization" not in api.request.headers


def test_arguments_override_the_environment(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_URL", "http://env.test")
    monkeypatch.setenv("INFERQ_API_KEY", "env-key")
    api.call(answer(job_json()), "get", "j1", client_kw={"base_url": BASE, "api_key": "arg"})
    assert api.request.url.host == "inferq.test"
    assert api.request.headers["authorization"] == "Bearer arg"


def test_plain_calls_use_the_timeout_and_waiting_calls_add_their_wait_to_the_read_timeout(
    api: Api,
) -> None:
    api.call(answer(job_json()), "get", "j1", client_kw={"base_url": BASE, "timeout": 10})
    api.call(answer(job_json()), "get", "j1", wait=5, client_kw={"base_url": BASE, "timeout": 10})
    plain, waiting = (r.extensions["timeout"] for r in api.requests)
    assert plain == {"connect": 10, "read": 10, "write": 10, "pool": 10}
    assert waiting == {"connect": 10, "read": 15, "write": 10, "pool": 10}


def test_context_managers_close_the_http_client() -> None:
    with Client(BASE) as client:
        pass
    assert client._http.is_closed

    async def go() -> AsyncClient:
        async with AsyncClient(BASE) as client:
            pass
        return client

    assert asyncio.run(go())._http.is_closed


# --- submit -------------------------------------------------------------------------------


def test_submit_without_files_sends_json(api: Api) -> None:
    job = api.call(answer(job_json(), 202), "submit", "mnist", {"x": 1, "name": "a"})
    assert isinstance(job, Job) and job.status is JobStatus.QUEUED
    request = api.request
    assert (request.method, request.url.path) == ("POST", "/v1/models/mnist/jobs")
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"input": {"x": 1, "name": "a"}}
    assert "prefer" not in request.headers


def test_submit_sends_webhook_options_in_json(api: Api) -> None:
    api.call(
        answer(job_json(), 202),
        "submit",
        "mnist",
        {"x": 1},
        webhook="http://hook.test/h",
        webhook_events=["start", "completed"],
    )
    assert json.loads(api.request.content) == {
        "input": {"x": 1},
        "webhook": "http://hook.test/h",
        "webhook_events": ["start", "completed"],
    }


def test_submit_with_no_input_sends_an_empty_input(api: Api) -> None:
    api.call(answer(job_json(), 202), "submit", "mnist")
    assert json.loads(api.request.content) == {"input": {}}


def test_submit_quotes_the_model_name_in_the_path(api: Api) -> None:
    api.call(answer(job_json(), 202), "submit", "a/b c", {})
    assert api.request.url.raw_path == b"/v1/models/a%2Fb%20c/jobs"


def test_submit_with_any_upload_sends_multipart(api: Api, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    api.call(
        answer(job_json(), 202),
        "submit",
        "mnist",
        {
            "raw": PNG,
            "path": photo,
            "file": io.BytesIO(b"not an image"),
            "image": Image(PNG),
            "text": "hello",
            "count": 3,
            "options": {"a": [1, 2]},
            "flag": True,
        },
        webhook="http://hook.test/h",
        webhook_events=["start", "completed"],
    )
    assert api.request.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = form_parts(api.request)
    assert parts == {
        "raw": ("raw", "image/png", PNG),
        "path": ("photo.jpg", "image/jpeg", JPEG),
        "file": ("file", "application/octet-stream", b"not an image"),
        "image": ("image", "image/png", PNG),
        "text": (None, "text/plain", b"hello"),
        "count": (None, "text/plain", b"3"),
        "options": (None, "text/plain", b'{"a": [1, 2]}'),
        "flag": (None, "text/plain", b"true"),
        "webhook": (None, "text/plain", b"http://hook.test/h"),
        "webhook_events": (None, "text/plain", b"start,completed"),
    }


def test_submit_names_an_uploaded_open_file_by_its_base_name(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "digit.png"
    path.write_bytes(PNG)
    with path.open("rb") as f:
        api.call(answer(job_json(), 202), "submit", "mnist", {"image": f})
    assert form_parts(api.request)["image"] == ("digit.png", "image/png", PNG)


def test_submit_refuses_a_text_mode_file(api: Api) -> None:
    with pytest.raises(TypeError, match="binary mode"):
        api.call(answer(job_json(), 202), "submit", "mnist", {"image": io.StringIO("x")})
    assert api.requests == []


def test_submit_refuses_an_input_field_named_like_a_webhook_part_in_multipart(api: Api) -> None:
    with pytest.raises(ValueError, match="webhook"):
        api.call(answer(job_json(), 202), "submit", "mnist", {"image": PNG, "webhook": "x"})
    assert api.requests == []


@pytest.mark.parametrize(
    ("wait", "header", "read_timeout"),
    [(5, "wait=5", 35.0), (2.5, "wait=2.5", 32.5), (600, "wait=60", 90.0), (-1, "wait=0", 30.0)],
)
def test_submit_with_wait_sends_prefer_capped_at_60(
    api: Api, wait: float, header: str, read_timeout: float
) -> None:
    job = api.call(answer(job_json(status="succeeded", output=7)), "submit", "m", {}, wait=wait)
    assert job.output == 7
    assert api.request.headers["prefer"] == header
    assert api.request.extensions["timeout"]["read"] == read_timeout


# --- get, wait, cancel ----------------------------------------------------------------------


def test_get_returns_the_job(api: Api) -> None:
    job = api.call(answer(job_json("a b", "running")), "get", "a b")
    assert (job.id, job.status) == ("a b", JobStatus.RUNNING)
    assert api.request.url.raw_path == b"/v1/jobs/a%20b"


def test_get_with_wait_asks_the_server_to_hold_the_request(api: Api) -> None:
    api.call(answer(job_json()), "get", "j1", wait=90)
    assert api.request.url.params["wait"] == "60"


class FakeClock:
    """Stands in for ``time`` in ``_common``: the mock server advances it by each wait."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_common, "time", fake)
    return fake


def holding_server(clock: FakeClock, statuses: list[str]) -> Handler:
    """Answers each GET with the next status, after "holding" it for the wait it asked."""
    remaining = iter(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        clock.now += float(request.url.params.get("wait", "0"))
        return httpx.Response(200, json=job_json(status=next(remaining)))

    return handle


def test_wait_long_polls_until_the_job_is_terminal(api: Api, clock: FakeClock) -> None:
    handler = holding_server(clock, ["queued", "running", "succeeded"])
    job = api.call(handler, "wait", "j1")
    assert job.status is JobStatus.SUCCEEDED
    assert [r.url.params["wait"] for r in api.requests] == ["60", "60", "60"]
    assert all(r.url.path == "/v1/jobs/j1" for r in api.requests)


def test_wait_asks_for_no_more_than_the_time_left(api: Api, clock: FakeClock) -> None:
    handler = holding_server(clock, ["running", "running", "running", "failed"])
    with pytest.raises(TimeoutError, match="j1"):
        api.call(handler, "wait", "j1", timeout=150)
    assert [r.url.params["wait"] for r in api.requests] == ["60", "60", "30"]


def test_wait_returns_a_terminal_job_even_with_no_time_left(api: Api, clock: FakeClock) -> None:
    job = api.call(holding_server(clock, ["canceled"]), "wait", "j1", timeout=0)
    assert job.status is JobStatus.CANCELED
    assert api.request.url.params["wait"] == "0"


def test_cancel_posts_to_the_cancel_url(api: Api) -> None:
    job = api.call(answer(job_json(status="canceled")), "cancel", "j1")
    assert job.status is JobStatus.CANCELED
    assert (api.request.method, api.request.url.path) == ("POST", "/v1/jobs/j1/cancel")


def test_cancel_of_a_finished_job_raises_job_conflict(api: Api) -> None:
    handler = lambda r: problem(409, "job-conflict", "job j1 already succeeded")  # noqa: E731
    with pytest.raises(JobConflict, match="already succeeded"):
        api.call(handler, "cancel", "j1")


# --- run ----------------------------------------------------------------------------------


def test_run_returns_the_output_when_submit_waited_long_enough(api: Api) -> None:
    assert api.call(answer(job_json(status="succeeded", output=[3])), "run", "m", {}) == [3]
    assert api.request.headers["prefer"] == "wait=60"


def test_run_long_polls_when_the_submit_wait_ran_out(api: Api, clock: FakeClock) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            clock.now += 10
            return httpx.Response(202, json=job_json("j9", "running"))
        return httpx.Response(200, json=job_json("j9", "succeeded", output={"digit": 4}))

    assert api.call(handle, "run", "mnist", {"x": 1}, timeout=25) == {"digit": 4}
    post, get = api.requests
    assert post.headers["prefer"] == "wait=25"
    assert (get.url.path, get.url.params["wait"]) == ("/v1/jobs/j9", "15")


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (job_json(status="failed", error={"type": "ValueError", "message": "bad"}), "bad"),
        (job_json(status="canceled"), "canceled"),
    ],
)
def test_run_raises_job_failed_with_the_job(api: Api, job: dict[str, Any], message: str) -> None:
    with pytest.raises(JobFailed, match=message) as info:
        api.call(answer(job), "run", "mnist", {})
    assert info.value.job.id == "j1"
    assert info.value.job.status.is_terminal()


def test_run_raises_timeout_error(api: Api, clock: FakeClock) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        clock.now += 5
        return httpx.Response(202, json=job_json(status="running"))

    with pytest.raises(TimeoutError):
        api.call(handle, "run", "mnist", {}, timeout=5)
    assert len(api.requests) == 2  # the submit, then one last look


# --- listing ------------------------------------------------------------------------------


def test_list_sends_filters_and_parses_the_page(api: Api) -> None:
    body = {"jobs": [job_json("j2"), job_json("j1")], "next_cursor": "c2"}
    page = api.call(answer(body), "list", model="mnist", status=JobStatus.FAILED, cursor="c1")
    assert [j.id for j in page.jobs] == ["j2", "j1"] and page.next_cursor == "c2"
    params = dict(api.request.url.params)
    assert params == {"model": "mnist", "status": "failed", "limit": "50", "cursor": "c1"}
    assert api.request.url.path == "/v1/jobs"


def test_list_refuses_an_unknown_status(api: Api) -> None:
    with pytest.raises(ValueError):
        api.call(answer({"jobs": []}), "list", status="done")


def test_iter_jobs_follows_next_cursor(api: Api) -> None:
    pages = {
        None: {"jobs": [job_json("j4"), job_json("j3")], "next_cursor": "c1"},
        "c1": {"jobs": [job_json("j2")], "next_cursor": "c2"},
        "c2": {"jobs": [job_json("j1")], "next_cursor": None},
    }
    handler = lambda r: httpx.Response(200, json=pages[r.url.params.get("cursor")])  # noqa: E731
    jobs = api.call(handler, "iter_jobs", model="mnist", limit=2)
    assert [j.id for j in jobs] == ["j4", "j3", "j2", "j1"]
    assert [r.url.params.get("cursor") for r in api.requests] == [None, "c1", "c2"]
    assert {r.url.params["limit"] for r in api.requests} == {"2"}


# --- models -------------------------------------------------------------------------------

MODEL = {
    "name": "mnist",
    "description": "digits",
    "input_schema": {},
    "output_schema": {},
    "max_batch_size": 8,
    "batch_timeout_s": 0.05,
    "workers_online": 1,
}


def test_models_lists_the_served_models(api: Api) -> None:
    models = api.call(answer({"models": [MODEL]}), "models")
    assert [m.name for m in models] == ["mnist"]
    assert api.request.url.path == "/v1/models"


def test_model_describes_one_model(api: Api) -> None:
    assert api.call(answer(MODEL), "model", "mnist").max_batch_size == 8
    assert api.request.url.path == "/v1/models/mnist"


def test_unknown_model_raises_model_not_found_named_from_the_url(api: Api) -> None:
    handler = lambda r: problem(404, "model-not-found", "no such model")  # noqa: E731
    with pytest.raises(ModelNotFound) as info:
        api.call(handler, "model", "a/b")
    assert info.value.name == "a/b"
    with pytest.raises(ModelNotFound) as info:
        api.call(handler, "submit", "resnet", {})
    assert info.value.name == "resnet"
    with pytest.raises(ModelNotFound) as info:
        api.call(handler, "list", model="vgg")
    assert info.value.name == "vgg"


# --- events -------------------------------------------------------------------------------


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that arrives in the given chunks, to sync and async clients alike."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def sse(*chunks: str) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=Chunks([c.encode() for c in chunks]),
        )

    return handle


def event(status: str, newline: str = "\n") -> str:
    data = json.dumps(job_json(status=status))
    return f"event: {status}{newline}data: {data}{newline}{newline}"


def test_events_yields_a_job_per_event_and_ends_after_the_terminal_one(api: Api) -> None:
    handler = sse(
        ": keep-alive\n\n",
        event("queued"),
        event("running", "\r\n")[:30],  # an event split across chunks
        event("running", "\r\n")[30:],
        ":ping\n",
        event("succeeded"),
        event("failed"),  # never read: the stream is over for the client
    )
    jobs = api.call(handler, "events", "j1")
    assert [j.status.value for j in jobs] == ["queued", "running", "succeeded"]
    assert api.request.url.path == "/v1/jobs/j1/events"
    assert api.request.headers["accept"] == "text/event-stream"
    assert api.request.extensions["timeout"]["read"] is None


def test_events_raises_if_the_stream_ends_before_the_job(api: Api) -> None:
    with pytest.raises(ServiceUnavailable, match="ended before the job finished"):
        api.call(sse(event("queued"), event("running")), "events", "j1")


def test_events_of_an_unknown_job_raises_job_not_found(api: Api) -> None:
    handler = lambda r: problem(404, "job-not-found")  # noqa: E731
    with pytest.raises(JobNotFound) as info:
        api.call(handler, "events", "nope")
    assert info.value.job_id == "nope"


def test_events_maps_a_broken_connection_to_service_unavailable(api: Api) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ServiceUnavailable, match="inferq.test"):
        api.call(handle, "events", "j1")


def test_sse_parser_follows_the_event_stream_rules() -> None:
    parser = SSEParser()
    lines = [
        ": comment",
        "event: running",
        "data: line one",
        "data:line two",
        "id: 7",
        "retry: 100",
        "unknown: x",
        "",
        "",  # a blank line with nothing pending dispatches nothing
        "event: lonely",
        "",  # an event without data is dropped
        "data",
        "",
    ]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert events == [
        SSEEvent("running", "line one\nline two", "7"),
        SSEEvent("message", "", "7"),
    ]


# --- error mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_response", "error"),
    [
        (lambda: problem(404, "job-not-found"), JobNotFound),
        (lambda: problem(409, "job-conflict"), JobConflict),
        (lambda: problem(422, "invalid-input"), InvalidInput),
        (lambda: problem(413, "payload-too-large"), InvalidInput),
        (lambda: problem(415, "unsupported-media-type"), UnsupportedMediaType),
        (lambda: problem(503, "service-unavailable"), ServiceUnavailable),
        (lambda: problem(401, "unauthorized"), HTTPError),
        (lambda: problem(403, "forbidden"), HTTPError),
        (lambda: problem(429, "rate-limited"), HTTPError),
        (lambda: problem(500, "internal"), HTTPError),
        # No problem document: the status code decides.
        (lambda: httpx.Response(404, text="Not Found"), JobNotFound),
        (lambda: httpx.Response(404, json={"detail": "Not Found"}), JobNotFound),
        (lambda: httpx.Response(409, text="conflict"), JobConflict),
        (lambda: httpx.Response(422, json={"detail": []}), InvalidInput),
        (lambda: httpx.Response(502, text="Bad Gateway"), ServiceUnavailable),
        (lambda: httpx.Response(503, text="down"), ServiceUnavailable),
        (lambda: httpx.Response(500, text="boom"), HTTPError),
        (lambda: httpx.Response(401), HTTPError),
    ],
)
def test_error_responses_map_to_inferq_errors(
    api: Api, make_response: Callable[[], httpx.Response], error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        api.call(lambda r: make_response(), "get", "j1")
    assert type(info.value) is error
    if isinstance(info.value, JobNotFound):
        assert info.value.job_id == "j1"


def test_http_error_carries_status_and_problem(api: Api) -> None:
    response = problem(429, "rate-limited", "slow down")
    response.headers["retry-after"] = "12"
    with pytest.raises(HTTPError, match="slow down") as info:
        api.call(lambda r: response, "get", "j1")
    assert info.value.status_code == 429
    assert info.value.problem["type"] == "urn:inferq:problem:rate-limited"
    assert info.value.retry_after_s == 12


def test_invalid_input_carries_the_field_errors(api: Api) -> None:
    errors = [{"field": "image", "message": "not an image"}]
    handler = lambda r: problem(422, "invalid-input", "bad input", errors=errors)  # noqa: E731
    with pytest.raises(InvalidInput, match="bad input") as info:
        api.call(handler, "submit", "mnist", {"image": PNG})
    assert info.value.errors == errors


@pytest.mark.parametrize(("header", "seconds"), [("7", 7), (None, 5), ("soon", 5)])
def test_service_unavailable_takes_retry_after(api: Api, header: str | None, seconds: int) -> None:
    response = problem(503, "service-unavailable", "broker down")
    if header is not None:
        response.headers["retry-after"] = header
    with pytest.raises(ServiceUnavailable, match="broker down") as info:
        api.call(lambda r: response, "list")
    assert info.value.retry_after_s == seconds


def test_retry_after_as_an_http_date_is_read_in_seconds(api: Api) -> None:
    response = problem(503, "service-unavailable")
    response.headers["retry-after"] = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past
    with pytest.raises(ServiceUnavailable) as info:
        api.call(lambda r: response, "list")
    assert info.value.retry_after_s == 0


def test_404_on_a_url_that_names_no_job_or_model_is_an_http_error(api: Api) -> None:
    with pytest.raises(HTTPError) as info:
        api.call(lambda r: httpx.Response(404, text="Not Found"), "list", model="mnist")
    assert info.value.status_code == 404


def test_a_connection_refused_is_service_unavailable_naming_the_url(api: Api) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ServiceUnavailable, match=r"http://inferq\.test") as info:
        api.call(handle, "get", "j1")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_a_timeout_is_service_unavailable(api: Api) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    with pytest.raises(ServiceUnavailable, match="timed out"):
        api.call(handle, "models")


def test_a_malformed_success_body_is_an_http_error(api: Api) -> None:
    with pytest.raises(HTTPError, match="unexpected response"):
        api.call(answer({"id": "j1"}), "get", "j1")
    with pytest.raises(HTTPError, match="unexpected response"):
        api.call(lambda r: httpx.Response(200, text="<html>"), "models")


def test_the_real_transport_reports_a_refused_connection() -> None:
    # Port 9 (discard) on localhost is closed on any sane machine.
    with Client("http://127.0.0.1:9", timeout=5) as client:
        with pytest.raises(ServiceUnavailable, match=r"127\.0\.0\.1:9"):
            client.get("j1")
