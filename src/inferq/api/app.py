"""``create_app(settings)``: the FastAPI application of inferq.

Every store and broker call is synchronous and runs in the thread pool; waiting for a
job (``Prefer: wait``, ``?wait=``, SSE) holds no thread: it awaits the store's change
announcements (Redis pub/sub, PostgreSQL LISTEN, Unix datagrams for SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from inferq.api import problems
from inferq.api.access import Admission, Authenticator, Owner, auth_enabled, authenticate
from inferq.api.inputs import Submission, read_submission, request_hash, summarize
from inferq.api.limits import BodyLimitMiddleware, check_images
from inferq.auth.keys import KeyStore, create_key_store
from inferq.auth.ratelimit import RateLimiter, create_rate_limiter
from inferq.config import Settings
from inferq.errors import InvalidInput, ModelNotFound, ServiceUnavailable
from inferq.queue.broker import Broker
from inferq.queue.store import JobEvents, JobStore, create_store
from inferq.registry import ModelSpec, discover
from inferq.schemas import Job, JobPage, JobStatus, ModelInfo, new_job_id

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often a waiter re-reads the job even without an announcement: a safety net for an
#: announcement lost while the listener reconnects, not the way waiting works.
SAFETY_RECHECK_S = 5.0
_TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal())
SSE_KEEPALIVE_S = 15.0
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.I)
#: What an ``Idempotency-Key`` may be: printable ASCII, 1 to 255 characters.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
#: ``error.type`` of a job failed as a dead letter (see ``inferq.errors.DeadLetter``).
DEAD_LETTER = "DeadLetter"
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class Services:
    """What the routes need: settings, models, the store and its events, the broker, and
    with auth on the key lookup (``auth``) and the per-key submit limits (``admission``)."""

    def __init__(
        self, settings: Settings, specs: dict[str, ModelSpec], store: JobStore, broker: Broker
    ) -> None:
        self.settings = settings
        self.specs = specs
        self.store = store
        self.broker = broker
        self.events: JobEvents | None = None
        self.auth: Authenticator | None = None
        self.admission: Admission | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store/broker call in the thread pool."""
        return await run_in_threadpool(fn, *args, **kwargs)

    def spec(self, name: str) -> ModelSpec:
        """The served model ``name``, or ModelNotFound."""
        try:
            return self.specs[name]
        except KeyError:
            raise ModelNotFound(name) from None

    async def wait_terminal(self, job_id: str, timeout_s: float, owner: str | None = None
                            ) -> Job:
        """The job once terminal, or as it is after ``timeout_s``. Woken by announcements."""
        assert self.events is not None
        async with self.events.subscribe(job_id) as changes:
            # After subscribing: no lost wake-up.
            job = await self.call(self.store.get, job_id, owner)
            return await self.wait_changes(job, changes, timeout_s, owner)

    async def wait_changes(self, job: Job, changes: asyncio.Queue[str], timeout_s: float,
                           owner: str | None = None) -> Job:
        """Wait on ``changes`` (subscribed before ``job`` was read) until it is terminal."""
        deadline = time.monotonic() + timeout_s
        while not job.status.is_terminal():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                status = await asyncio.wait_for(changes.get(), min(remaining, SAFETY_RECHECK_S))
            except TimeoutError:
                status = None  # the safety re-read
            if status is not None and status not in _TERMINAL:
                continue  # e.g. "running": nothing to read yet
            job = await self.call(self.store.get, job.id, owner)
        return job


def _model_info(services: Services, spec: ModelSpec, online: int) -> ModelInfo:
    return ModelInfo(
        name=spec.name,
        description=spec.description,
        input_schema=spec.input_schema,
        output_schema=spec.output_schema,
        max_batch_size=spec.max_batch_size,
        batch_timeout_s=spec.batch_timeout_s,
        workers_online=online,
    )


def _job_response(job: Job, status_code: int, **headers: str) -> JSONResponse:
    return JSONResponse(job.model_dump(mode="json"), status_code=status_code, headers=headers)


def create_app(
    settings: Settings | None = None,
    *,
    specs: dict[str, ModelSpec] | None = None,
    store: JobStore | None = None,
    broker: Broker | None = None,
    key_store: KeyStore | None = None,
    rate_limiter: RateLimiter | None = None,
) -> FastAPI:
    """The API app. Stores, broker and limiter are made from ``settings`` unless given.

    With ``settings.auth`` on, keys and rate limits live where the jobs do
    (``settings.result_url``), so every API replica sees the same ones.
    """
    settings = settings or Settings()
    if settings.embedded:
        settings.ensure_home()
    specs = specs if specs is not None else discover(settings.config_file)
    store = store or create_store(
        settings.result_url, namespace=settings.namespace, result_ttl_s=settings.result_ttl_s
    )
    broker = broker or Broker(settings, list(specs))
    services = Services(settings, specs, store, broker)
    if auth_enabled(settings.auth):
        key_store = key_store or create_key_store(settings.result_url, settings.namespace)
        rate_limiter = rate_limiter or create_rate_limiter(
            settings.result_url, settings.namespace, settings.rate_limit_per_s
        )
        services.auth = Authenticator(key_store)
        services.admission = Admission(rate_limiter, store, settings.max_in_flight)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.events = store.create_events()
        await services.events.start()
        try:
            yield
        finally:
            await services.events.stop()
            await run_in_threadpool(broker.close)
            await run_in_threadpool(store.close)
            if services.auth is not None:
                await run_in_threadpool(services.auth.keys.close)
            if services.admission is not None:
                await run_in_threadpool(services.admission.limiter.close)

    app = FastAPI(
        title="inferq",
        version="1",
        description="Submit inference jobs, wait for them (long-poll, SSE), read results.",
        lifespan=lifespan,
    )
    app.state.services = services
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """The broker and the job store answer; 503 otherwise."""
        checks: dict[str, str] = {}
        for name, ping in (("broker", broker.ping), ("store", store.ping)):
            try:
                await services.call(ping)
                checks[name] = "ok"
            except ServiceUnavailable as exc:
                checks[name] = str(exc)
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        return problems.problem(
            503, "service-unavailable", "Service unavailable",
            "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"),
            headers={"Retry-After": "5"}, checks=checks,
        )

    # Every /v1 route needs a key when auth is on; health, docs and the UI stay open.
    v1 = APIRouter(dependencies=[Depends(authenticate)])

    @v1.get("/v1/models", tags=["models"])
    async def list_models() -> dict[str, list[ModelInfo]]:
        """Every served model, with its schemas, batching knobs and workers online."""
        workers = await services.call(store.workers)
        return {"models": [
            _model_info(services, s, sum(1 for w in workers if s.name in w.models))
            for s in specs.values()
        ]}

    @v1.get("/v1/models/{model}", tags=["models"])
    async def get_model(model: str) -> ModelInfo:
        """One served model."""
        spec = services.spec(model)
        workers = await services.call(store.workers)
        return _model_info(services, spec, sum(1 for w in workers if model in w.models))

    @v1.post(
        "/v1/models/{model}/jobs",
        tags=["jobs"],
        status_code=202,
        response_model=Job,
        responses={200: {"model": Job, "description": "Finished within Prefer: wait"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "object",
                "properties": {"input": {"type": "object"},
                               "inputs": {"type": "array", "items": {"type": "object"}},
                               "webhook": {"type": "string", "format": "uri"},
                               "webhook_events": {"type": "array", "items": {
                                   "type": "string", "enum": ["start", "completed"]}}}}},
            "multipart/form-data": {"schema": {"type": "object"}},
        }}},
    )
    async def submit(model: str, request: Request, owner: Owner) -> JSONResponse:
        """Submit a job. 202 with the job; ``Prefer: wait=N`` waits up to N s for the result.

        ``Idempotency-Key``: the same key and body answer the same job (header
        ``Idempotent-Replayed: true``) without running it again; a different body is a 409.
        """
        spec = services.spec(model)
        idempotency_key = _idempotency_key(request.headers.get("idempotency-key"))
        if owner is not None and services.admission is not None:
            await services.admission.admit(owner)
        sub = await read_submission(
            request, spec, settings.max_batch_inputs, max_json_depth=settings.max_json_depth,
            webhook_allow_nets=settings.webhook_allow_nets,
        )
        batch = sub.inputs is not None
        summary = ({"inputs": summarize(sub.inputs), "count": len(sub.inputs or [])}
                   if batch else summarize(sub.input))
        job = Job(
            id=new_job_id(), model=model, status=JobStatus.QUEUED,
            input=summary, created_at=datetime.now(UTC),
            webhook=sub.webhook, webhook_events=sub.webhook_events if sub.webhook else [],
        )
        payload: Any = ([i.model_dump(mode="json") for i in sub.inputs or []] if batch
                        else sub.input.model_dump(mode="json") if sub.input else {})
        digest = (None if idempotency_key is None else
                  request_hash(model, payload, batch, job.webhook, list(job.webhook_events)))
        wait_s = _prefer_wait(request.headers.get("prefer"), settings.max_wait_s)
        assert services.events is not None
        # Subscribed before publishing, so no announcement can be missed and the job needs
        # no second read while it is known to be queued.
        async with services.events.subscribe(job.id) as changes:
            # One trip to the thread pool for everything blocking: each trip costs a
            # thread hand-off, which at low load was a good part of a job's latency.
            job, replayed = await services.call(
                _accept, services, sub, job, payload, owner, idempotency_key, digest)
            if wait_s is not None and not replayed:
                job = await services.wait_changes(job, changes, wait_s, owner)
        if wait_s is not None and replayed:  # the earlier job: its own subscription
            job = await services.wait_terminal(job.id, wait_s, owner)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        if wait_s is not None:
            headers["Preference-Applied"] = f"wait={wait_s:g}"
        return _job_response(job, 200 if job.status.is_terminal() else 202, **headers)

    @v1.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(
        owner: Owner,
        model: str | None = None,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs, newest first; follow ``next_cursor`` for the next page."""
        return await services.call(
            store.list, model=model, status=status, owner=owner, limit=limit, cursor=cursor
        )

    @v1.get("/v1/dead-letters", tags=["jobs"])
    async def list_dead_letters(
        owner: Owner,
        model: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs failed as dead letters (delivered too often without finishing), newest first."""
        return await services.call(
            store.list, model=model, error_type=DEAD_LETTER, owner=owner, limit=limit,
            cursor=cursor,
        )

    @v1.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(
        job_id: str, owner: Owner, wait: Annotated[float, Query(ge=0, le=60)] = 0
    ) -> Job:
        """A job. ``?wait=N`` holds the request until it is terminal or N s pass."""
        if wait > 0:
            return await services.wait_terminal(job_id, min(wait, settings.max_wait_s), owner)
        return await services.call(store.get, job_id, owner)

    @v1.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel_job(job_id: str, owner: Owner) -> Job:
        """Cancel a queued (or running) job; 409 if it is already terminal."""
        job = await services.call(store.cancel, job_id, owner)
        if job.webhook and "completed" in job.webhook_events:
            # No worker will run it, so no worker will announce its end: the API does.
            await services.call(broker.publish_webhook, job.id, "completed", owner)
        return job

    @v1.get(
        "/v1/jobs/{job_id}/events",
        tags=["jobs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(job_id: str, request: Request, owner: Owner) -> StreamingResponse:
        """Server-Sent Events: the job now, then one event per change, ending when terminal."""
        await services.call(store.get, job_id, owner)  # 404 before the stream starts
        return StreamingResponse(
            _sse(services, job_id, request, owner), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.include_router(v1)

    if WEB_DIR.is_dir() and (WEB_DIR / "index.html").exists():
        app.mount("/ui", StaticFiles(directory=WEB_DIR, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        async def root() -> Response:
            return Response(status_code=307, headers={"Location": "/ui/"})

    return app


def _accept(
    services: Services, sub: Submission, job: Job, payload: Any, owner: str | None,
    idempotency_key: str | None, digest: str | None,
) -> tuple[Job, bool]:
    """Check the images, write the job, publish it: ``(job, replayed)``. Blocking.

    A replayed Idempotency-Key returns the earlier job, published already. If the broker
    refuses the job, its record is removed again and BrokerUnavailable propagates: a job
    is accepted only once both hold it.
    """
    settings = services.settings
    if sub.inputs is not None:
        for i, item in enumerate(sub.inputs):
            check_images(item, ("inputs", i), settings.max_image_pixels)
    elif sub.input is not None:
        check_images(sub.input, ("input",), settings.max_image_pixels)
    created = services.store.create(job, owner, idempotency_key=idempotency_key,
                                    request_hash=digest)
    if created.id != job.id:
        return created, True
    try:
        services.broker.publish(job.id, job.model, payload, batch=sub.inputs is not None)
    except ServiceUnavailable:
        # Not accepted: the record must not linger as a job that will never run.
        with contextlib.suppress(ServiceUnavailable):
            services.store.delete(job.id)
        raise
    return created, False


def _idempotency_key(header: str | None) -> str | None:
    if header is None:
        return None
    if not _IDEMPOTENCY_KEY.match(header):
        raise InvalidInput(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
            [{"field": "Idempotency-Key", "message": "1 to 255 printable ASCII characters"}],
        )
    return header


def _prefer_wait(header: str | None, cap_s: float) -> float | None:
    if not header:
        return None
    match = _PREFER_WAIT.search(header)
    if match is None:
        return None
    return min(float(match.group(1)), cap_s)


def _sse_event(job: Job) -> bytes:
    return f"event: {job.status.value}\ndata: {job.model_dump_json()}\n\n".encode()


async def _sse(services: Services, job_id: str, request: Request, owner: str | None
               ) -> AsyncIterator[bytes]:
    assert services.events is not None
    async with services.events.subscribe(job_id) as changes:
        job = await services.call(services.store.get, job_id, owner)
        yield _sse_event(job)
        last = job.status
        quiet_s = 0.0
        while not job.status.is_terminal():
            if await request.is_disconnected():
                return
            try:
                await asyncio.wait_for(changes.get(), SAFETY_RECHECK_S)
                quiet_s = 0.0
            except TimeoutError:
                quiet_s += SAFETY_RECHECK_S
                if quiet_s >= SSE_KEEPALIVE_S:
                    quiet_s = 0.0
                    yield b": keep-alive\n\n"
            job = await services.call(services.store.get, job_id, owner)
            if job.status != last:
                last = job.status
                yield _sse_event(job)

