"""The blocking client. Its protocol logic lives in ``_common``; this module does the I/O."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import httpx

from inferq.client._common import (
    DEFAULT_TIMEOUT_S,
    Call,
    ClientConfig,
    Flow,
    JobEventReader,
    T,
    build_request,
    cancel_flow,
    events_call,
    get_flow,
    list_flow,
    model_flow,
    models_flow,
    raise_for_status,
    run_flow,
    submit_flow,
    unreachable,
    wait_flow,
)
from inferq.schemas import Job, JobPage, JobStatus, ModelInfo


class Client:
    """A blocking client of the inferq HTTP API (v1).

    ``base_url`` defaults to ``$INFERQ_URL`` or ``http://127.0.0.1:8000``; ``api_key`` to
    ``$INFERQ_API_KEY`` (sent as ``Authorization: Bearer``). ``timeout`` (seconds, None for
    none) bounds each request; calls that ask the server to wait get that much longer to
    read. ``transport`` replaces httpx's (tests pass an ``httpx.MockTransport``).

    Errors are those of ``inferq.errors`` (``JobNotFound``, ``InvalidInput``,
    ``ServiceUnavailable`` when the API cannot be reached, ...), ``HTTPError`` for other
    error statuses, and ``JobFailed`` from :meth:`run`. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = ClientConfig.resolve(base_url, api_key, timeout)
        self._http = httpx.Client(
            base_url=self._config.base_url,
            headers=self._config.headers(),
            timeout=self._config.timeout(),
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._config.base_url

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections the client holds."""
        self._http.close()

    # --- jobs ---------------------------------------------------------------------------

    def submit(
        self,
        model: str,
        input: Mapping[str, Any] | None = None,
        *,
        webhook: str | None = None,
        webhook_events: Sequence[str] | None = None,
        wait: float | None = None,
    ) -> Job:
        """Submit a job to ``model`` and return it as queued (or finished, see ``wait``).

        Input values that are ``bytes``, a ``pathlib.Path``, a binary file object or an
        ``inferq.schemas.Image`` are uploaded as files (``multipart/form-data``); without
        any the input is sent as JSON. ``webhook`` is called on ``webhook_events``
        (``"start"``, ``"completed"``). ``wait`` (seconds, at most 60) asks the server to
        answer only once the job has finished or that time has passed.
        """
        return self._drive(submit_flow(model, input, webhook, webhook_events, wait))

    def get(self, job_id: str, *, wait: float | None = None) -> Job:
        """The job ``job_id``; with ``wait`` (≤ 60 s) the server answers early only if it ends."""
        return self._drive(get_flow(job_id, wait))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is terminal and return it, by long-polling (no sleep loop).

        Raises ``TimeoutError`` if ``timeout`` seconds pass first; None waits forever.
        """
        return self._drive(wait_flow(job_id, timeout))

    def cancel(self, job_id: str) -> Job:
        """Cancel the job; ``JobConflict`` if it has already ended."""
        return self._drive(cancel_flow(job_id))

    def list(
        self,
        *,
        model: str | None = None,
        status: JobStatus | str | None = None,
        limit: int | None = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first; pass its ``next_cursor`` as ``cursor`` for more."""
        return self._drive(list_flow(model, status, limit, cursor))

    def iter_jobs(
        self,
        *,
        model: str | None = None,
        status: JobStatus | str | None = None,
        limit: int | None = 50,
        cursor: str | None = None,
    ) -> Iterator[Job]:
        """Every job, newest first, fetching pages of ``limit`` as it goes."""
        while True:
            page = self.list(model=model, status=status, limit=limit, cursor=cursor)
            yield from page.jobs
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def events(self, job_id: str) -> Iterator[Job]:
        """The job at each change of state, from its server-sent event stream.

        Ends after the terminal state; raises ``ServiceUnavailable`` if the stream ends
        before that. The stream has no read timeout: it lasts as long as the job.
        """
        request = build_request(self._http, events_call(job_id), self._config)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise unreachable(exc, request) from exc
        try:
            if not response.is_success:
                response.read()
                raise_for_status(response)
            reader = JobEventReader(job_id)
            for line in response.iter_lines():
                job = reader.feed(line)
                if job is not None:
                    yield job
                if reader.done:
                    return
            reader.finish()
        except httpx.TransportError as exc:
            raise unreachable(exc, request) from exc
        finally:
            response.close()

    def run(
        self, model: str, input: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Submit, wait for the job and return its output.

        Raises ``JobFailed`` (with the ``job``) if it failed or was canceled, and
        ``TimeoutError`` if ``timeout`` seconds pass first (None: wait forever).
        """
        return self._drive(run_flow(model, input, timeout))

    # --- models -------------------------------------------------------------------------

    def models(self) -> builtins.list[ModelInfo]:
        """Every model the API serves."""
        return self._drive(models_flow())

    def model(self, name: str) -> ModelInfo:
        """The model ``name``; ``ModelNotFound`` if it is not served."""
        return self._drive(model_flow(name))

    # --- I/O ----------------------------------------------------------------------------

    def _drive(self, flow: Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                call = flow.send(self._send(call))
        except StopIteration as stop:
            return cast(T, stop.value)
        finally:
            flow.close()

    def _send(self, call: Call) -> httpx.Response:
        request = build_request(self._http, call, self._config)
        try:
            return self._http.send(request)
        except httpx.TransportError as exc:
            raise unreachable(exc, request) from exc
