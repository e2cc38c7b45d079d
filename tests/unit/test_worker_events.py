"""``WorkerEvents`` without a RabbitMQ: disabled, broker down, heartbeat timing, in-memory."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery.events.state import State

from inferq.config import Settings
from inferq.queue.celery_app import create_celery
from inferq.queue.monitor import WorkerEvents, events_supported, worker_nodename


def _down_url() -> str:
    """An AMQP URL where nothing listens (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}//"


def _everything(events: WorkerEvents, job: str) -> None:
    events.online()
    events.heartbeat(1, 2)
    events.maybe_heartbeat()
    events.received(job, "echo", batch=False)
    events.started(job)
    events.succeeded(job, 0.1)
    events.failed(job, "ValueError", "bad")
    events.revoked(job)
    events.offline()
    events.close()
    events.close()


def test_nodename_and_supported_brokers() -> None:
    assert worker_nodename("box", 42) == "inferq-42@box"
    assert worker_nodename().startswith("inferq-")
    assert not events_supported("sqla+sqlite:////tmp/broker.sqlite")
    assert events_supported("amqp://guest:guest@127.0.0.1:5672//")
    assert events_supported("redis://127.0.0.1:6379/0")


def test_disabled_does_nothing(tmp_path: Path) -> None:
    app = create_celery(Settings(home=tmp_path, broker_url=_down_url()))
    for events in (WorkerEvents(app, enabled=False), WorkerEvents(enabled=True)):
        assert not events.enabled
        _everything(events, "job-1")
        assert not events.heartbeat_due()
        assert not events.maybe_heartbeat()
        assert events._conn is None and events._dispatcher is None


def test_embedded_broker_is_disabled(tmp_path: Path) -> None:
    events = WorkerEvents.for_settings(Settings(home=tmp_path), ["echo"])
    assert not events.enabled and events.app is None
    _everything(events, "job-1")


def test_broker_down_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    settings = Settings(home=tmp_path, broker_url=_down_url(), broker_timeout_s=1.0)
    events = WorkerEvents.for_settings(settings, clock=lambda: now[0])
    assert events.enabled
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="inferq.queue.monitor"):
        _everything(WorkerEvents.for_settings(settings, clock=lambda: now[0]), "job-1")
        for _ in range(3):
            events.online()  # the first tries and fails, the next back off
            now[0] += 100  # past any backoff: tries again
    assert time.monotonic() - t0 < 5
    warnings = [r for r in caplog.records if r.name == "inferq.queue.monitor"]
    assert len(warnings) == 2  # one per WorkerEvents and outage, not one per event
    assert events._conn is None


def test_heartbeat_timing_and_counters(tmp_path: Path) -> None:
    now = [10.0]
    app = create_celery(Settings(home=tmp_path, broker_url="memory://"))
    events = WorkerEvents(app, freq=2.0, clock=lambda: now[0])
    sent: list[tuple[str, dict[str, Any]]] = []
    events._send = lambda type_, **fields: sent.append((type_, fields))  # type: ignore[method-assign]
    assert events.heartbeat_due()  # nothing sent yet
    events.online()
    assert not events.maybe_heartbeat()
    now[0] += 1.9
    assert not events.heartbeat_due()
    now[0] += 0.1
    events.received("a", "echo")
    events.started("a")
    events.started("b")
    assert events.maybe_heartbeat()
    events.succeeded("a", 0.5)
    events.failed("b", "ValueError", "no")
    now[0] += 2.0
    assert events.maybe_heartbeat(active=7)
    beats = [f for t, f in sent if t == "worker-heartbeat"]
    assert [(b["active"], b["processed"]) for b in beats] == [(2, 0), (7, 2)]
    assert beats[0]["sw_ident"] == "inferq" and beats[0]["freq"] == 2.0
    assert {"sw_ver", "sw_sys", "loadavg"} <= beats[0].keys()
    received = next(f for t, f in sent if t == "task-received")
    assert received["uuid"] == "a" and received["name"] == "inferq.predict"
    assert received["retries"] == 0 and received["root_id"] == "a"


def test_events_reach_a_receiver_in_memory(tmp_path: Path) -> None:
    """The same events, read back by Celery's receiver and state on kombu's memory broker."""
    app = create_celery(Settings(home=tmp_path, broker_url="memory://"))
    hostname = f"inferq-{uuid.uuid4().hex[:6]}@unit"
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        with receiver.consumer_context(wakeup=False) as (consuming, _channel, _consumers):
            events = WorkerEvents(app, hostname=hostname)  # the queue is bound: send now
            events.online()
            events.received("j1", "echo")
            events.started("j1")
            events.succeeded("j1", 0.01)
            events.close()
            while len(seen) < 4:
                consuming.drain_events(timeout=2)
    state = State()
    for event in seen:
        state.event(event)
    assert [e["type"] for e in seen] == [
        "worker-online", "task-received", "task-started", "task-succeeded",
    ]
    assert state.workers[hostname].alive
    assert state.tasks["j1"].state == "SUCCESS"


def test_background_events_keep_their_order_and_leave_the_caller_at_once() -> None:
    from inferq.queue.monitor import BackgroundEvents

    sent: list[tuple[str, str]] = []

    class Recording(WorkerEvents):
        def started(self, job_id: str) -> None:
            time.sleep(0.05)  # a slow broker: the caller must not wait for it
            sent.append(("started", job_id))

        def succeeded(self, job_id: str, runtime_s: float, result: Any = None) -> None:
            sent.append(("succeeded", job_id))

    inner = Recording(enabled=False)
    inner.enabled = True  # send through the overrides above, no broker needed
    events = BackgroundEvents(inner)
    t0 = time.monotonic()
    for i in range(5):
        events.started(f"j{i}")
        events.succeeded(f"j{i}", 0.01)
    assert time.monotonic() - t0 < 0.05
    events.close()
    assert sent == [(kind, f"j{i}") for i in range(5) for kind in ("started", "succeeded")]
