"""``WorkerEvents`` against the real RabbitMQ, read back the way Flower reads events.

Flower consumes Celery's ``celeryev`` topic exchange with an ``EventReceiver`` and feeds
every event into ``celery.events.state.State``; these tests do the same, and keep only the
events of their own unique node name (other test sessions may share the broker).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery
from celery.events.state import State

from inferq.config import Settings
from inferq.queue.celery_app import PREDICT_TASK, create_celery
from inferq.queue.monitor import WorkerEvents

pytestmark = pytest.mark.integration


@dataclass
class Capture:
    """Events of one node name, captured by an ``EventReceiver`` in a thread."""

    hostname: str
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: dict[str, Any]) -> None:
        if event.get("hostname") == self.hostname:
            with self.lock:
                self.events.append(event)

    def wait_for(self, type_: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [e for e in self.events if e["type"] == type_]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def types(self) -> list[str]:
        with self.lock:
            return [e["type"] for e in self.events]


@pytest.fixture
def app(amqp_url: str, tmp_path: Any) -> Celery:
    settings = Settings(home=tmp_path, broker_url=amqp_url, namespace=f"t{uuid.uuid4().hex[:8]}")
    return create_celery(settings, [])


@pytest.fixture
def capture(app: Celery) -> Iterator[Capture]:
    cap = Capture(hostname=f"inferq-test-{uuid.uuid4().hex[:8]}@monitor")
    ready = threading.Event()
    errors: list[BaseException] = []
    conn = app.connection_for_read()
    receiver = app.events.Receiver(conn, handlers={"*": cap.add})

    def on_ready(*args: Any, **kwargs: Any) -> None:
        ready.set()  # the receiver's queue is bound: events sent from now on reach it

    receiver.on_consume_ready = on_ready

    def consume() -> None:
        try:
            receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=consume, name="event-receiver", daemon=True)
    thread.start()
    assert ready.wait(10), "the event receiver did not start"
    assert not errors, errors
    yield cap
    receiver.should_stop = True
    thread.join(5)
    conn.release()


def test_flower_sees_worker_and_jobs(app: Celery, capture: Capture) -> None:
    events = WorkerEvents(app, hostname=capture.hostname)
    ok, bad = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        events.online()
        events.received(ok, "echo", batch=False)
        events.received(bad, "echo", batch=True)
        events.started(ok)
        events.started(bad)
        assert events.active == 2
        events.heartbeat()
        events.succeeded(ok, 0.25, result={"y": 1})
        events.failed(bad, "InvalidInput", "x must be a number")
        events.heartbeat(active=0, processed=2)

        beats = capture.wait_for("worker-heartbeat", 2)
        assert len(beats) == 2
        assert capture.wait_for("task-failed")
        state = State()
        for event in list(capture.events):
            state.event(event)

        worker = state.workers[capture.hostname]
        assert worker.alive
        assert worker.sw_ident == "inferq"
        assert worker.freq == 2.0
        assert worker.processed == 2
        assert beats[0]["active"] == 2 and beats[0]["processed"] == 0
        assert len(beats[0]["loadavg"]) == 3

        task_ok, task_bad = state.tasks[ok], state.tasks[bad]
        assert task_ok.state == "SUCCESS"
        assert task_ok.name == PREDICT_TASK
        assert task_ok.runtime == 0.25
        assert task_ok.worker.hostname == capture.hostname
        assert ok in task_ok.args and "echo" in task_ok.args
        assert task_ok.result == "{'y': 1}"
        assert task_bad.state == "FAILURE"
        assert task_bad.exception == "InvalidInput('x must be a number')"
        assert "'batch': True" in task_bad.kwargs

        events.offline()
        capture.wait_for("worker-offline")
        for event in capture.events:
            if event["type"] == "worker-offline":
                state.event(event)
        assert not state.workers[capture.hostname].alive
    finally:
        events.close()

    assert capture.types()[:3] == ["worker-online", "task-received", "task-received"]
    started = capture.wait_for("task-started", 2)
    assert {e["uuid"] for e in started} == {ok, bad}
    assert all(isinstance(e["pid"], int) for e in started)


def test_revoked_and_maybe_heartbeat(app: Celery, capture: Capture) -> None:
    now = [100.0]
    events = WorkerEvents(app, hostname=capture.hostname, freq=1.0, clock=lambda: now[0])
    job = str(uuid.uuid4())
    try:
        events.online()
        assert not events.maybe_heartbeat()  # online counts as the first beat
        now[0] += 0.5
        assert not events.heartbeat_due()
        now[0] += 0.6
        assert events.maybe_heartbeat()
        assert not events.maybe_heartbeat()
        events.received(job, "echo")
        events.revoked(job)
        assert capture.wait_for("worker-heartbeat")
        assert capture.wait_for("task-revoked")
        state = State()
        for event in list(capture.events):
            state.event(event)
        assert state.tasks[job].state == "REVOKED"
        assert state.workers[capture.hostname].freq == 1.0
    finally:
        events.close()
    assert capture.types().count("worker-heartbeat") == 1


def test_recovers_after_its_connection_breaks(
    app: Celery, capture: Capture, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    events = WorkerEvents(app, hostname=capture.hostname, clock=lambda: now[0])
    try:
        events.online()
        assert capture.wait_for("worker-online")
        # The broker drops the connection under it (as on a RabbitMQ restart).
        broken = events._conn
        broken.connection.sock.shutdown(socket.SHUT_RDWR)
        with caplog.at_level(logging.DEBUG, logger="inferq.queue.monitor"):
            events.heartbeat()  # fails: logged, dropped, no exception
            assert events._conn is None
            events.heartbeat()  # backing off: dropped without trying
            now[0] += 60
            events.heartbeat()  # reconnects, on a new connection
        assert events._conn is not None and events._conn is not broken
        assert capture.wait_for("worker-heartbeat")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "worker-heartbeat not sent" in warnings[0].getMessage()
        assert any("sending again" in r.getMessage() for r in caplog.records)
    finally:
        events.close()
