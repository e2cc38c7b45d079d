"""The worker's side of webhooks: hand an event to the webhook queue, never wait on it.

The worker calls ``publish(job.id, "start")`` once a job runs and
``publish(job.id, "completed")`` once it is terminal. That puts one small persistent JSON
message, ``{"job_id", "event", "message_id"}``, on the durable queue ``{namespace}.webhooks``;
the sender process (``inferq.webhooks.sender``) does the HTTP. So a slow, failing or hanging
receiver never holds a worker, and a worker never talks to a URL a user chose.

``message_id`` is ``msg_{job_id}_{event}``: the same for every retry and every redelivery,
and what the receiver sees as ``webhook-id`` -- so it can drop duplicates.

Publishing failures never reach the caller. When the broker cannot take the message, the
delivery goes into the durable retry schedule (``schedule.py``, in the job store's database)
due at once, where the sender finds it within a second; only when that fails too is the
webhook lost, and logged. After a broker failure the broker is left alone for
``BROKER_BACKOFF_S``, so a down broker costs a worker one connect timeout, not one per job.
"""

# kombu ships no type hints: calls into it are untyped by necessity.


from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kombu import Connection, Exchange, Producer, Queue  # type: ignore[attr-defined]

from inferq.config import Settings
from inferq.queue.celery_app import transport_options
from inferq.webhooks.schedule import Delivery, RetrySchedule, create_schedule, now

log = logging.getLogger(__name__)

#: After the broker failed, publish straight to the schedule for this long.
BROKER_BACKOFF_S = 5.0


def webhook_queue_name(namespace: str) -> str:
    """The broker queue that carries webhook deliveries."""
    return f"{namespace}.webhooks"


def webhook_queue(namespace: str) -> Queue:
    """The durable webhook queue, bound to the namespace's direct exchange by its name."""
    name = webhook_queue_name(namespace)
    return Queue(name, Exchange(namespace, type="direct", durable=True), routing_key=name,
                 durable=True)


def message_id(job_id: str, event: str) -> str:
    """The Standard Webhooks id of ``event`` of ``job_id``: stable across retries."""
    return f"msg_{job_id}_{event}"


class WebhookPublisher:
    """Publishes webhook deliveries on its own broker connection (thread-safe, lazy)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue = webhook_queue(settings.namespace)
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._schedule: RetrySchedule | None = None
        self._broker_down_until = 0.0

    def _ensure(self) -> Producer:
        if self._producer is None:
            conn = Connection(
                self.settings.broker_url,
                transport_options=transport_options(self.settings.broker_url),
                connect_timeout=self.settings.broker_timeout_s,
                heartbeat=0,
            )
            # max_retries=0: fail at once, no retry sleeps while a worker waits on us.
            conn.ensure_connection(max_retries=0)
            producer = Producer(conn.channel(), exchange=self.queue.exchange)
            self.queue.bind(producer.channel).declare()
            self._conn, self._producer = conn, producer
        return self._producer

    def _reset(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: BLE001 - it is already broken; we only let go of it
                log.debug("closing a broken webhook connection failed", exc_info=True)

    def publish(self, job_id: str, event: str, owner: str | None = None) -> None:
        """Queue ``event`` (``start`` or ``completed``) of ``job_id`` for delivery.

        ``owner`` (the API key's owner, if the caller knows it) picks the signing secret.
        Never raises: if neither the broker nor the schedule takes it, it is logged and the
        webhook is lost -- the inference is not.
        """
        body: dict[str, Any] = {
            "job_id": job_id,
            "event": event,
            "message_id": message_id(job_id, event),
        }
        if owner is not None:
            body["owner"] = owner
        with self._lock:
            if time.monotonic() >= self._broker_down_until:
                try:
                    self._ensure().publish(
                        body,
                        serializer="json",
                        routing_key=self.queue.routing_key,
                        delivery_mode=2,  # persistent: survives a broker restart
                        retry=False,  # never stall a worker in kombu's retry loop
                    )
                    return
                except Exception as exc:  # noqa: BLE001 - never break inference
                    log.warning("webhook queue unreachable (%s); using the retry schedule", exc)
                    self._reset()
                    self._broker_down_until = time.monotonic() + BROKER_BACKOFF_S
            try:
                if self._schedule is None:
                    self._schedule = create_schedule(self.settings)
                self._schedule.add(Delivery.from_dict(body), now())
            except Exception as exc:  # noqa: BLE001 - never break inference
                log.error("webhook %s of job %s lost: neither the broker nor the schedule "
                          "took it (%s)", event, job_id, exc)

    def close(self) -> None:
        """Close the connection (a later ``publish`` opens a new one)."""
        with self._lock:
            self._reset()
            if self._schedule is not None:
                self._schedule.close()
                self._schedule = None
