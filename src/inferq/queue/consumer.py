"""The worker's consume loop: Celery-protocol messages in, dynamic batches out.

Celery's own worker runs one task per message; it has no notion of "wait up to
``batch_timeout_s`` for more messages of this model". So the worker consumes the
per-model queues itself, with kombu, in one thread:

* messages are held (unacknowledged) in a ``Batcher`` per model; prefetch is the largest
  ``max_batch_size`` served, so a full batch can be held and no more (celery-batches'
  rule: prefetch >= batch size);
* a batch runs as soon as it is full, or ``batch_timeout_s`` after its first message;
* each message is acknowledged only after its job's terminal state is stored. A worker
  that dies holding messages never acknowledged them: the broker redelivers them (the
  effect of Celery's ``acks_late`` + ``reject_on_worker_lost``);
* JSON only: a message in any other serialization (pickle) is rejected, never loaded;
* a redelivered message (its worker died, or the connection dropped) runs alone, in a
  batch of one: if it is a poison job that kills its worker, it takes no neighbours with
  it, and the neighbours of the batch it killed are not counted against their limits;
* a job whose ``predict`` raised ``RetryableError`` is held (still unacknowledged) for a
  backoff of ``2**(attempts-1)`` s (±50 % jitter, at most 60 s), then runs again.

Messages are Celery task messages (protocol 2) published by ``Broker.publish`` with
``send_task``, so the queues stay readable by Celery's tools.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kombu import Connection, Message, Queue  # type: ignore[attr-defined]

from inferq.errors import StoreUnavailable
from inferq.queue.celery_app import PREDICT_TASK
from inferq.queue.monitor import BackgroundEvents, WorkerEvents
from inferq.registry import ModelSpec
from inferq.schemas import Job, JobStatus
from inferq.worker.batcher import Batcher
from inferq.worker.runtime import Outcome, WorkerRuntime, WorkItem

log = logging.getLogger(__name__)

#: How long the loop blocks on the broker when no batch is pending.
IDLE_WAIT_S = 1.0
#: Longest backoff before a retry.
MAX_RETRY_BACKOFF_S = 60.0


class WebhookSink(Protocol):
    """Where the consumer sends webhook events (``inferq.webhooks.publisher``)."""

    def publish(self, job_id: str, event: str) -> None:
        """Queue the delivery of ``event`` for ``job_id``."""


def retry_backoff_s(attempts: int) -> float:
    """Seconds to wait before running a job again after its ``attempts``-th try."""
    base: float = min(2.0 ** max(attempts - 1, 0), MAX_RETRY_BACKOFF_S)
    return base * random.uniform(0.5, 1.5)


@dataclass
class Delivery:
    """A received message and the work it carries."""

    message: Message
    item: WorkItem


def parse_task(body: Any, headers: dict[str, Any]) -> tuple[str, WorkItem]:
    """``(model, item)`` from a Celery protocol-2 ``inferq.predict`` message.

    Raises ValueError for anything else.
    """
    if headers.get("task") != PREDICT_TASK:
        raise ValueError(f"not an {PREDICT_TASK} message: task={headers.get('task')!r}")
    if not (isinstance(body, list | tuple) and len(body) == 3):
        raise ValueError("body is not a protocol-2 [args, kwargs, embed] triple")
    args, kwargs, _embed = body
    if not (isinstance(args, list | tuple) and len(args) == 3):
        raise ValueError("expected args [job_id, model, input]")
    job_id, model, payload = args
    batch = bool((kwargs or {}).get("batch", False))
    if not isinstance(job_id, str) or not isinstance(model, str):
        raise ValueError("job_id and model must be strings")
    if batch and not (isinstance(payload, list) and all(isinstance(p, dict) for p in payload)):
        raise ValueError("a batch job's input must be a list of objects")
    if not batch and not isinstance(payload, dict):
        raise ValueError("a job's input must be an object")
    return model, WorkItem(job_id, payload, batch)


class BatchingConsumer:
    """Consumes the queues of ``specs``, batches per model, runs and acknowledges."""

    def __init__(
        self,
        broker_url: str,
        queues: dict[str, Queue],
        specs: dict[str, ModelSpec],
        runtime: WorkerRuntime,
        *,
        transport_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[str, int], None] | None = None,
        events: WorkerEvents | BackgroundEvents | None = None,
        webhooks: WebhookSink | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.queues = queues  # model -> its queue
        self.specs = specs
        self.runtime = runtime
        self.transport_options = transport_options or {}
        self.clock = clock
        self.on_batch = on_batch
        self.stop_event = threading.Event()
        self.prefetch = max(s.max_batch_size for s in specs.values())
        self.batchers: dict[str, Batcher[Delivery]] = {
            name: Batcher(s.max_batch_size, s.batch_timeout_s, clock)
            for name, s in specs.items()
        }
        self.events: WorkerEvents | BackgroundEvents = events or WorkerEvents(enabled=False)
        self.webhooks = webhooks
        #: Redelivered messages, each to be run alone.
        self.suspects: list[tuple[str, Delivery]] = []
        #: Messages waiting out a retry backoff: (due, seq, model, delivery).
        self.delayed: list[tuple[float, int, str, Delivery]] = []
        self._seq = itertools.count()
        runtime.on_started = self._on_started

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run`` (unacked messages go back)."""
        self.stop_event.set()

    def run(self) -> None:
        """Consume until ``stop()``; reconnect with backoff when the broker goes away."""
        backoff = 0.5
        while not self.stop_event.is_set():
            conn = Connection(self.broker_url, transport_options=self.transport_options,
                              heartbeat=0)
            try:
                conn.ensure_connection(max_retries=1)
                backoff = 0.5
                self._consume(conn)
            except (*conn.connection_errors, *conn.channel_errors, OSError) as exc:
                log.warning("broker connection lost (%s); reconnecting in %.1f s", exc, backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                # Held messages belong to the dead channel: the broker redelivers them.
                for batcher in self.batchers.values():
                    batcher.drain()
                self.suspects.clear()
                self.delayed.clear()
                conn.release()

    def _consume(self, conn: Connection) -> None:
        channel = conn.channel()
        queues = [q.bind(channel) for q in self.queues.values()]
        with conn.Consumer(queues, channel=channel, callbacks=[self._on_message],
                           accept=["json"], on_decode_error=self._on_decode_error) as consumer:
            consumer.qos(prefetch_count=self.prefetch)
            log.info("consuming %s (prefetch %d)",
                     ", ".join(q.name for q in self.queues.values()), self.prefetch)
            while not self.stop_event.is_set():
                self._run_ready()
                pending = [b.time_left() for b in self.batchers.values() if len(b)]
                if self.delayed:
                    pending.append(self.delayed[0][0] - self.clock())
                timeout = max(0.0, min(pending, default=IDLE_WAIT_S))
                try:
                    conn.drain_events(timeout=timeout or 0.0001)
                except TimeoutError:
                    pass

    def _on_message(self, body: Any, message: Message) -> None:
        try:
            model, item = parse_task(body, message.headers or {})
        except ValueError as exc:
            log.error("rejecting a malformed message: %s", exc)
            message.reject(requeue=False)
            return
        batcher = self.batchers.get(model)
        if batcher is None:
            log.error("job %s is for model %s, not served here; rejected", item.job_id, model)
            message.reject(requeue=False)
            return
        self.events.received(item.job_id, model, item.batch)
        if (message.delivery_info or {}).get("redelivered"):
            self.suspects.append((model, Delivery(message, item)))
        else:
            batcher.add(Delivery(message, item))

    def _on_decode_error(self, message: Message, exc: Exception) -> None:
        # A pickled (or otherwise non-JSON) message is never loaded.
        log.error("rejecting a message that is not JSON (%s): %s", message.content_type, exc)
        message.reject(requeue=False)

    def _run_ready(self) -> None:
        while self.suspects:
            model, delivery = self.suspects.pop(0)
            self._run(model, [delivery])
        now = self.clock()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, model, delivery = heapq.heappop(self.delayed)
            self.batchers[model].add(delivery)
        for model, batcher in self.batchers.items():
            while batcher.ready():
                self._run(model, batcher.take())

    def _run(self, model: str, deliveries: list[Delivery]) -> None:
        t0 = time.perf_counter()
        try:
            outcomes = self.runtime.run_batch(model, [d.item for d in deliveries])
        except StoreUnavailable as exc:
            # Nothing could be recorded: give the messages back to run again later.
            log.warning("job store unreachable (%s); requeueing %d jobs", exc, len(deliveries))
            time.sleep(1.0)
            for d in deliveries:
                d.message.requeue()
            return
        runtime_s = time.perf_counter() - t0
        by_id = {o.job_id: o for o in outcomes}
        for d in deliveries:
            outcome = by_id.get(d.item.job_id)
            if outcome is not None and outcome.retry:
                attempts = outcome.job.attempts if outcome.job else 1
                due = self.clock() + retry_backoff_s(attempts)
                heapq.heappush(self.delayed, (due, next(self._seq), model, d))
                continue
            d.message.ack()
            self._announce(d.item.job_id, outcome, runtime_s)
        if self.on_batch is not None:
            self.on_batch(model, len(deliveries))

    def _on_started(self, job: Job) -> None:
        self.events.started(job.id)
        if self.webhooks is not None and job.webhook and "start" in job.webhook_events:
            self.webhooks.publish(job.id, "start")

    def _announce(self, job_id: str, outcome: Outcome | None, runtime_s: float) -> None:
        if outcome is None:  # skipped: canceled, or finished by an earlier delivery
            self.events.revoked(job_id)
            return
        if outcome.status == JobStatus.SUCCEEDED:
            self.events.succeeded(job_id, runtime_s)
        elif outcome.error is not None:
            self.events.failed(job_id, outcome.error.type, outcome.error.message)
        job = outcome.job
        if self.webhooks is not None and job is not None and job.webhook \
                and "completed" in job.webhook_events:
            self.webhooks.publish(job_id, "completed")
