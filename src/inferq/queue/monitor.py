"""Celery monitoring events from inferq workers, so Flower shows them and their jobs.

inferq's workers consume Celery task messages without Celery's worker loop (see
``consumer.py``), so nothing would tell Flower (or ``celery events``) that they exist.
``WorkerEvents`` sends the events Celery's worker sends, with the same fields:

* ``worker-online``, ``worker-heartbeat`` (every ``freq`` seconds) and ``worker-offline``,
  with ``freq``, ``active``, ``processed``, ``loadavg``, ``sw_ident``, ``sw_ver``, ``sw_sys``
  (``celery/worker/heartbeat.py``). A monitor marks a worker offline when no heartbeat
  came for ``freq * 2`` seconds (``celery.events.state.HEARTBEAT_EXPIRE_WINDOW``);
* ``task-received``, ``task-started``, ``task-succeeded``, ``task-failed`` and
  ``task-revoked`` per job, with the job id as the task's ``uuid``
  (``celery/worker/strategy.py`` and ``request.py``). ``Broker.publish`` sends every job
  with ``task_id=job_id``, so Flower's task ids are inferq's job ids.

Events go to Celery's ``celeryev`` topic exchange on a connection of their own (a pyamqp
connection must never be shared with the consuming thread), without publisher confirms
and as transient messages, like Celery's. Monitoring must never hurt serving: no method
raises; a failed send is logged, the connection dropped, and a new one tried on a later
call after a backoff (events in between are dropped, not buffered).

The embedded SQLite broker (``sqla+...``) has no exchange that other processes could read
from: there ``WorkerEvents`` is disabled and every method does nothing.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from reprlib import Repr
from typing import Any

from celery import Celery

from inferq.config import Settings
from inferq.queue.celery_app import PREDICT_TASK, create_celery

log = logging.getLogger(__name__)

#: Seconds between heartbeats: the default of Celery's worker (``--heartbeat-interval``).
DEFAULT_FREQ_S = 2.0

#: First and longest wait before reconnecting after a failed send.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0

#: ``sw_ident`` of the heartbeats: Flower shows it where Celery's workers say ``py-celery``.
SW_IDENT = "inferq"

_repr = Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = 8
_repr.maxdict = 8
_repr.maxlevel = 3


def _short_repr(value: Any, limit: int = 256) -> str:
    """A bounded repr, as Celery's ``saferepr`` of ``argsrepr``/``result``."""
    try:
        text = _repr.repr(value)
    except Exception:  # noqa: BLE001 - a repr must never break monitoring
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _version() -> str:
    try:
        return metadata.version("inferq")
    except metadata.PackageNotFoundError:
        return "unknown"


def worker_nodename(hostname: str | None = None, pid: int | None = None) -> str:
    """A Celery-style node name for this process: ``inferq-<pid>@<hostname>``."""
    return f"inferq-{os.getpid() if pid is None else pid}@{hostname or socket.gethostname()}"


def events_supported(broker_url: str) -> bool:
    """False for brokers whose events no other process could receive (embedded SQLite)."""
    scheme = broker_url.split(":", 1)[0].lower()
    return not scheme.startswith("sqla") and scheme != "sqlalchemy"


def _load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # not on every platform
        return [0.0, 0.0, 0.0]


class WorkerEvents:
    """Sends Celery's worker and task events for one inferq worker process.

    ``app`` is the worker's Celery app (``create_celery(settings, models)``); its broker
    is where events go. With ``enabled=False`` (or no ``app``) every method is a no-op.
    ``active`` and ``processed`` in heartbeats default to counts this object keeps from
    the task events it sent. Safe to call from several threads; never raises.
    """

    def __init__(
        self,
        app: Celery | None = None,
        *,
        hostname: str | None = None,
        enabled: bool = True,
        freq: float = DEFAULT_FREQ_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.hostname = hostname or worker_nodename()
        self.enabled = bool(enabled and app is not None)
        self.freq = float(freq)
        self.clock = clock
        self.processed = 0
        self._active: set[str] = set()
        self._lock = threading.RLock()
        self._conn: Any = None
        self._dispatcher: Any = None
        self._closed = False
        self._next_beat = 0.0  # due at once: the first maybe_heartbeat sends
        self._retry_at = 0.0
        self._retry_s = RETRY_MIN_S
        self._failing = False
        self._software = {"sw_ident": SW_IDENT, "sw_ver": _version(), "sw_sys": platform.system()}

    @classmethod
    def for_settings(
        cls, settings: Settings, models: Iterable[str] = (), **kwargs: Any
    ) -> WorkerEvents:
        """``WorkerEvents`` on the broker of ``settings``; disabled for embedded SQLite."""
        enabled = kwargs.pop("enabled", True) and events_supported(settings.broker_url)
        app = create_celery(settings, models) if enabled else None
        return cls(app, enabled=enabled, **kwargs)

    # -- worker events ---------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Jobs started and not yet finished, as this object counted them."""
        return len(self._active)

    def online(self) -> None:
        """``worker-online``: the worker is up (Flower lists it from here)."""
        self._worker_event("worker-online", None, None)
        self._next_beat = self.clock() + self.freq

    def heartbeat(self, active: int | None = None, processed: int | None = None) -> None:
        """``worker-heartbeat`` now; ``None`` counts come from this object's own counters."""
        self._worker_event("worker-heartbeat", active, processed)
        self._next_beat = self.clock() + self.freq

    def heartbeat_due(self) -> bool:
        """True when ``freq`` seconds passed since the last heartbeat (or online)."""
        return self.enabled and not self._closed and self.clock() >= self._next_beat

    def maybe_heartbeat(self, active: int | None = None, processed: int | None = None) -> bool:
        """Send a heartbeat if one is due; call it from a loop that wakes at least every second.

        Returns whether one was due.
        """
        if not self.heartbeat_due():
            return False
        self.heartbeat(active, processed)
        return True

    def offline(self) -> None:
        """``worker-offline``: the worker stops (Flower shows it offline at once)."""
        self._worker_event("worker-offline", None, None)

    # -- task events -----------------------------------------------------------------------

    def received(self, job_id: str, model: str, batch: bool = False) -> None:
        """``task-received``: the job's message reached this worker."""
        self._send(
            "task-received",
            uuid=job_id,
            name=PREDICT_TASK,
            args=_short_repr([job_id, model, "..."]),
            kwargs=_short_repr({"batch": batch}),
            root_id=job_id,
            parent_id=None,
            retries=0,
            eta=None,
            expires=None,
        )

    def started(self, job_id: str) -> None:
        """``task-started``: the job runs now (the event carries this process's ``pid``)."""
        with self._lock:
            self._active.add(job_id)
        self._send("task-started", uuid=job_id)

    def succeeded(self, job_id: str, runtime_s: float, result: Any = None) -> None:
        """``task-succeeded`` after ``runtime_s`` seconds; ``result`` is shown as a short repr.

        The output itself is in inferq's job store, not in the event.
        """
        self._finish(job_id)
        self._send(
            "task-succeeded", uuid=job_id, result=_short_repr(result), runtime=float(runtime_s)
        )

    def failed(self, job_id: str, error_type: str, message: str) -> None:
        """``task-failed`` with ``exception`` as ``ErrorType('message')``, like Celery's."""
        self._finish(job_id)
        self._send(
            "task-failed",
            uuid=job_id,
            exception=f"{error_type}({_short_repr(message)})",
            traceback="",
        )

    def revoked(self, job_id: str, expired: bool = False) -> None:
        """``task-revoked``: the job was not run (canceled, or gone from the job store)."""
        self._finish(job_id)
        self._send("task-revoked", uuid=job_id, terminated=False, signum=None, expired=expired)

    def close(self) -> None:
        """Drop the events connection; later calls do nothing."""
        with self._lock:
            self._closed = True
            self._disconnect()

    # -- internals -------------------------------------------------------------------------

    def _finish(self, job_id: str) -> None:
        with self._lock:
            self._active.discard(job_id)
            self.processed += 1

    def _worker_event(self, type_: str, active: int | None, processed: int | None) -> None:
        self._send(
            type_,
            freq=self.freq,
            active=self.active if active is None else active,
            processed=self.processed if processed is None else processed,
            loadavg=_load_average(),
            **self._software,
        )

    def _send(self, type_: str, **fields: Any) -> None:
        if not self.enabled or self._closed:
            return
        with self._lock:
            if self._closed:
                return
            try:
                dispatcher = self._connect()
                if dispatcher is None:
                    return  # backing off after a failure: this event is dropped
                dispatcher.send(type_, retry=False, **fields)
            except Exception as exc:  # noqa: BLE001 - monitoring must never stop the worker
                self._on_error(type_, exc)
                return
            if self._failing:
                log.info("monitoring events: sending again")
                self._failing = False
                self._retry_s = RETRY_MIN_S

    def _connect(self) -> Any:
        """The dispatcher, connecting first if needed; None while backing off."""
        if self._dispatcher is not None:
            return self._dispatcher
        if self.clock() < self._retry_at:
            return None
        assert self.app is not None
        # Our own connection: never the consuming one. Events are transient; no confirms.
        conn = self.app.connection_for_write(transport_options={"confirm_publish": False})
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
            channel = conn.channel()
            self._dispatcher = self.app.events.Dispatcher(
                conn,
                hostname=self.hostname,
                enabled=True,
                groups=None,
                channel=channel,
                buffer_while_offline=False,  # raise to us: we drop, never grow a buffer
            )
        except BaseException:
            _release(conn)
            raise
        self._conn = conn
        return self._dispatcher

    def _on_error(self, type_: str, exc: Exception) -> None:
        self._disconnect()
        self._retry_at = self.clock() + self._retry_s
        if not self._failing:
            log.warning("monitoring event %s not sent (%s: %s); retrying in %.0f s",
                        type_, type(exc).__name__, exc, self._retry_s)
        else:
            log.debug("monitoring event %s not sent: %r", type_, exc)
        self._failing = True
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    def _disconnect(self) -> None:
        dispatcher, conn = self._dispatcher, self._conn
        self._dispatcher = self._conn = None
        if dispatcher is not None:
            try:
                dispatcher.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("closing the event dispatcher: %r", exc)
        if conn is not None:
            _release(conn)


def _release(conn: Any) -> None:
    try:
        conn.release()
    except Exception as exc:  # noqa: BLE001 - a dead connection may fail to close
        log.debug("releasing the events connection: %r", exc)


class BackgroundEvents:
    """``WorkerEvents`` whose task events are sent from a thread of their own.

    A send is a network write; done inline, three of them per job sat on the path from a
    message's arrival to its result. Here the consume loop only queues them, in order.
    Heartbeats pass straight through (they come from the heartbeat thread already).
    """

    _QUEUED = frozenset({"online", "offline", "received", "started", "succeeded", "failed",
                         "revoked"})

    def __init__(self, events: WorkerEvents) -> None:
        self._events = events
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any] | None, Any, Any]] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="inferq-events", daemon=True)
        if events.enabled:
            self._thread.start()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._events, name)
        if name in self._QUEUED and self._events.enabled:

            def enqueue(*args: Any, **kwargs: Any) -> None:
                self._queue.put((attr, args, kwargs))

            return enqueue
        return attr

    def _run(self) -> None:
        while True:
            fn, args, kwargs = self._queue.get()
            if fn is None:
                return
            fn(*args, **kwargs)  # WorkerEvents never raises

    def close(self) -> None:
        """Send what is queued (a few seconds at most), then close the connection."""
        if self._thread.is_alive():
            self._queue.put((None, (), {}))
            self._thread.join(5.0)
        self._events.close()
