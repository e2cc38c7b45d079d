"""The job store: where a job's record lives, and how its changes are announced.

One interface, three implementations chosen by URL (``create_store``):

* ``redis://``      -- ``RedisJobStore`` (``queue/redis_store.py``): one JSON value per job,
  transitions in Lua, changes announced on a pub/sub channel.
* ``postgresql://`` -- ``SqlJobStore`` (``queue/sql_store.py``): one row per job,
  transitions as conditional UPDATEs, changes announced with NOTIFY.
* ``sqlite:///``    -- ``SqlJobStore`` too; changes announced by datagrams on Unix
  sockets in a folder beside the database (every API process binds one).

Rules every implementation keeps (and ``tests/unit/test_store_contract.py`` checks):

* a read returns status, output and error from one atomic read, never a torn state;
* the first terminal write wins; a later ``finish`` returns False and changes nothing;
* ``cancel`` moves a queued or running job to ``canceled``; a terminal one raises JobConflict;
* finished jobs expire ``result_ttl_s`` after they end; an expired job is JobNotFound;
* every transition is announced to ``JobEvents`` subscribers *after* it is durable.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from inferq.schemas import (
    FinishItem,
    Job,
    JobError,
    JobMetrics,
    JobPage,
    JobStatus,
    WebhookAttempt,
    WorkerInfo,
)

#: How much longer than ``result_ttl_s`` a queued or running job is kept. A job the broker
#: lost would otherwise stay "queued" forever; a week outlives any sane queue wait.
PENDING_TTL_MARGIN_S = 7 * 24 * 3600


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class JobStore(ABC):
    """The durable record of every job. Synchronous: the API calls it from a thread pool."""

    @abstractmethod
    def create(
        self,
        job: Job,
        owner: str | None = None,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> Job:
        """Write a new job (status ``queued``) and return it. StoreUnavailable if unreachable.

        With ``idempotency_key``: if ``owner`` already created a job with that key (and it
        has not expired), nothing is written and that earlier job is returned -- when
        ``request_hash`` matches; a different ``request_hash`` raises JobConflict. The key
        lives as long as its job. Check and write are one atomic step (two API replicas
        racing with the same key create one job).
        """

    @abstractmethod
    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, read atomically. JobNotFound if unknown, expired, or owned by another."""

    @abstractmethod
    def owner_of(self, job_id: str) -> str | None:
        """The API key id that submitted the job (None: no key). JobNotFound if gone."""

    @abstractmethod
    def start(self, job_id: str, worker: str, started_at: datetime) -> Job | None:
        """Mark the job ``running`` on ``worker``; from ``queued`` or ``running`` (redelivery).

        Increments ``attempts`` (the returned job carries the new count). Returns the job,
        or None when it is terminal (canceled before it ran, or already finished by an
        earlier delivery): the worker then skips it. JobNotFound if unknown.
        """

    def start_many(
        self, job_ids: builtins.list[str], worker: str, started_at: datetime
    ) -> builtins.list[Job | None]:
        """``start`` for a batch (a store may do it in fewer round trips); gone → None."""
        from inferq.errors import JobNotFound

        out: builtins.list[Job | None] = []
        for job_id in job_ids:
            try:
                out.append(self.start(job_id, worker, started_at))
            except JobNotFound:
                out.append(None)
        return out

    def finish_many(self, items: builtins.list[FinishItem]) -> builtins.list[bool | None]:
        """``finish`` for a batch: whether each wrote the terminal state; gone → None."""
        from inferq.errors import JobNotFound

        out: builtins.list[bool | None] = []
        for item in items:
            try:
                out.append(self.finish(item.job_id, item.status, output=item.output,
                                       error=item.error, metrics=item.metrics,
                                       finished_at=item.finished_at))
            except JobNotFound:
                out.append(None)
        return out

    @abstractmethod
    def requeue(self, job_id: str) -> bool:
        """Move a ``running`` job back to ``queued`` for a retry. False if it is not running."""

    @abstractmethod
    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        output: Any = None,
        error: JobError | None = None,
        metrics: JobMetrics | None = None,
        finished_at: datetime,
    ) -> bool:
        """Write the terminal state. True if this call wrote it, False if one already was.

        When one already was, the job's ``duplicate_executions`` is incremented (a
        redelivered job ran twice: counted, not written) and nothing else changes.
        """

    @abstractmethod
    def add_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> None:
        """Append one webhook delivery attempt to the job (shown in ``webhook_attempts``).

        Allowed in any state, terminal included; keeps the job's TTL. JobNotFound if gone.
        """

    @abstractmethod
    def overdue(self, started_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Jobs still ``running`` that started before ``started_before`` (for the reaper)."""

    @abstractmethod
    def count_active(self, owner: str | None) -> int:
        """How many of ``owner``'s jobs are ``queued`` or ``running`` (for in-flight quotas)."""

    @abstractmethod
    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel a queued or running job. JobConflict if it is terminal already."""

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """Remove a job record (used when the broker refused the job it was made for)."""

    @abstractmethod
    def list(
        self,
        *,
        model: str | None = None,
        status: JobStatus | None = None,
        error_type: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first. ``cursor`` is the ``next_cursor`` of the previous page.

        ``error_type`` keeps only failed jobs whose ``error.type`` is that (e.g. the dead
        letters: ``DeadLetter``).
        """

    @abstractmethod
    def heartbeat(self, worker: WorkerInfo, ttl_s: float) -> None:
        """Record that a worker is alive and serving its models, for ``ttl_s`` seconds."""

    @abstractmethod
    def workers(self) -> builtins.list[WorkerInfo]:
        """Workers whose heartbeat has not run out."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    @abstractmethod
    def create_events(self) -> JobEvents:
        """A new listener for job changes, for one API process (start it in the event loop)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class JobEvents(ABC):
    """Announcements of job changes, fanned out to asyncio waiters in one process.

    One connection per process listens (Redis SUBSCRIBE, PostgreSQL LISTEN, a Unix
    datagram socket); every ``subscribe`` gets the ids of changed jobs through a queue.
    To wait without a race: subscribe first, then read the job, then wait.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Queue[str]]] = {}
        #: The listening task of implementations that run one.
        self._task: asyncio.Task[None] | None = None

    async def _stop_task(self) -> None:
        """Cancel the listening task, if any, and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @abstractmethod
    async def start(self) -> None:
        """Connect and start listening. Returns once announcements will be received."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop listening and close the connection."""

    def dispatch(self, job_id: str, status: str) -> None:
        """Hand one announcement to the waiters of ``job_id`` (called by the listener)."""
        for queue in self._waiters.get(job_id, ()):
            queue.put_nowait(status)

    def dispatch_message(self, message: bytes | str) -> None:
        """Hand on one ``"{job_id} {status}"`` announcement as the listeners receive it."""
        text = message.decode() if isinstance(message, bytes) else message
        job_id, _, status = text.partition(" ")
        if status:
            self.dispatch(job_id, status)

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue that receives the new status each time ``job_id`` changes."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._waiters.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(queue)
                if not waiters:
                    del self._waiters[job_id]


def create_store(url: str, *, namespace: str, result_ttl_s: int) -> JobStore:
    """The store for ``url``: ``redis://``, ``postgresql://`` or ``sqlite:///``."""
    from inferq.errors import ConfigError

    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from inferq.queue.redis_store import RedisJobStore

        return RedisJobStore(url, namespace=namespace, result_ttl_s=result_ttl_s)
    if scheme.startswith("postgres") or scheme.startswith("sqlite"):
        from inferq.queue.sql_store import SqlJobStore

        return SqlJobStore(url, namespace=namespace, result_ttl_s=result_ttl_s)
    raise ConfigError(f"unsupported result store URL {url!r}: use redis://, postgresql:// or sqlite:///")
