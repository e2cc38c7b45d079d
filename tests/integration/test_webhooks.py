"""Webhooks end to end: real RabbitMQ, Redis (and PostgreSQL for the schedule), a real HTTP
receiver on 127.0.0.1 (allowlisted), signatures checked with ``standardwebhooks``."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from standardwebhooks import Webhook

from inferq.config import Settings
from inferq.queue.store import JobStore, create_store
from inferq.schemas import Job, JobStatus, new_job_id
from inferq.webhooks.publisher import WebhookPublisher, webhook_queue_name
from inferq.webhooks.schedule import Delivery, RetrySchedule, create_schedule
from inferq.webhooks.sender import WebhookSender, sender_thread, server_secret
from inferq.webhooks.signing import new_secret

# --- a receiver ------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float


#: decide(path, nth request on that path) -> (status, extra headers, seconds to hang first)
Decide = Callable[[str, int], tuple[int, dict[str, str], float]]


@dataclass
class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records every POST and answers by ``decide``."""

    decide: Decide
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(decide=lambda path, n: (200, {}, 0.0))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with rec.lock:
                n = sum(1 for s in rec.seen if s.path == self.path)
                rec.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()},
                                    body, time.time()))
            status, headers, hang = rec.decide(self.path, n)
            if hang:
                time.sleep(hang)
            try:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender timed out and hung up

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # listen() backlog: the default 5 drops bursts of connects

    server = Server(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


# --- settings, store, queue cleanup ----------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, amqp_url: str, redis_url: str, redis_namespace: str
             ) -> Iterator[Settings]:
    ns = f"{redis_namespace}-wh-{uuid.uuid4().hex[:6]}"
    s = Settings(
        home=tmp_path,
        broker_url=amqp_url,
        result_url=redis_url,
        namespace=ns,
        webhook_secret=new_secret(),
        webhook_allow_nets="127.0.0.1/32",
        webhook_timeout_s=0.5,
        webhook_retry_schedule_s="0.2,0.2,0.2",
    )
    yield s
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        channel.queue_delete(webhook_queue_name(ns))
        channel.exchange_delete(ns)


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    st = create_store(settings.result_url, namespace=settings.namespace, result_ttl_s=3600)
    yield st
    st.close()


@pytest.fixture
def publisher(settings: Settings) -> Iterator[WebhookPublisher]:
    pub = WebhookPublisher(settings)
    yield pub
    pub.close()


def terminal_job(store: JobStore, url: str, events: list[Any] | None = None) -> Job:
    """A job written straight into the store and finished, as a worker would leave it."""
    job = Job(id=new_job_id(), model="echo", status=JobStatus.QUEUED, input={"x": 1},
              created_at=datetime.now(UTC), webhook=url,
              webhook_events=events or ["completed"])
    store.create(job)
    store.start(job.id, "w1", datetime.now(UTC))
    store.finish(job.id, JobStatus.SUCCEEDED, output={"y": [1, 2]}, finished_at=datetime.now(UTC))
    return job


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def attempts(store: JobStore, job_id: str) -> list[Any]:
    return store.get(job_id).webhook_attempts


# --- delivery --------------------------------------------------------------------------------


def test_delivered_signed_and_recorded(settings: Settings, store: JobStore,
                                       publisher: WebhookPublisher, receiver: Receiver) -> None:
    job = terminal_job(store, receiver.url("/hook?token=1"))
    publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 1)
    [seen] = receiver.on("/hook?token=1")
    payload = Webhook(settings.webhook_secret).verify(seen.body, seen.headers)
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job.id
    assert payload["data"]["status"] == "succeeded"
    assert payload["data"]["output"] == {"y": [1, 2]}
    assert "webhook_attempts" not in payload["data"]
    assert seen.headers["webhook-id"] == f"msg_{job.id}_completed"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["host"] == f"127.0.0.1:{receiver.port}"
    [attempt] = attempts(store, job.id)
    assert attempt.status_code == 200 and attempt.error is None
    assert attempt.event == "completed" and attempt.message_id == f"msg_{job.id}_completed"
    assert attempt.duration_ms is not None and attempt.duration_ms >= 0


def test_500_then_200_is_retried_with_the_same_id(settings: Settings, store: JobStore,
                                                  publisher: WebhookPublisher,
                                                  receiver: Receiver) -> None:
    receiver.decide = lambda path, n: (500 if n < 2 else 200, {}, 0.0)
    job = terminal_job(store, receiver.url("/flaky"))
    publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 3)
    got = attempts(store, job.id)
    assert [a.status_code for a in got] == [500, 500, 200]
    assert got[0].error == "HTTP 500" and got[2].error is None
    seen = receiver.on("/flaky")
    assert len(seen) == 3
    assert {s.headers["webhook-id"] for s in seen} == {f"msg_{job.id}_completed"}
    for s in seen:
        Webhook(settings.webhook_secret).verify(s.body, s.headers)
    # The retries waited about the schedule (0.2 s x uniform(0.5, 1.5)).
    gaps = [b.at - a.at for a, b in zip(seen, seen[1:], strict=False)]
    assert all(0.09 <= g <= 1.5 for g in gaps), gaps


def test_410_stops_retries(settings: Settings, store: JobStore, publisher: WebhookPublisher,
                           receiver: Receiver) -> None:
    receiver.decide = lambda path, n: (410, {}, 0.0)
    job = terminal_job(store, receiver.url("/gone"))
    publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 1)
        time.sleep(1.2)  # longer than the whole retry schedule
    [attempt] = attempts(store, job.id)
    assert attempt.status_code == 410 and "410" in (attempt.error or "")
    assert len(receiver.on("/gone")) == 1


def test_hanging_receiver_times_out_and_is_retried(settings: Settings, store: JobStore,
                                                   publisher: WebhookPublisher,
                                                   receiver: Receiver) -> None:
    receiver.decide = lambda path, n: (200, {}, 2.0 if n == 0 else 0.0)
    job = terminal_job(store, receiver.url("/slow"))
    publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 2)
    first, second = attempts(store, job.id)
    assert first.status_code is None and "timeout" in (first.error or "")
    assert first.duration_ms is not None and 400 <= first.duration_ms < 1500
    assert second.status_code == 200


def test_redirect_is_not_followed_and_gives_up(settings: Settings, store: JobStore,
                                               publisher: WebhookPublisher,
                                               receiver: Receiver) -> None:
    target = receiver.url("/elsewhere")
    receiver.decide = lambda path, n: (
        (302, {"location": target}, 0.0) if path == "/redirect" else (200, {}, 0.0)
    )
    job = terminal_job(store, receiver.url("/redirect"))
    publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 4)
        time.sleep(0.6)
    got = attempts(store, job.id)
    assert len(got) == 4  # the first attempt and the 3 retries of the schedule
    assert all(a.status_code == 302 and "not followed" in (a.error or "") for a in got)
    assert "gave up after 4 attempts" in (got[-1].error or "")
    assert receiver.on("/elsewhere") == []


def test_address_not_allowlisted_is_refused_at_send(settings: Settings, store: JobStore,
                                                    publisher: WebhookPublisher,
                                                    receiver: Receiver) -> None:
    # Written straight into the store: as if the check at submit had been passed (DNS said
    # something else then). 127.0.0.2 is loopback and outside the allowlist.
    job = terminal_job(store, f"http://127.0.0.2:{receiver.port}/x")
    publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 1)
        time.sleep(0.6)
    [attempt] = attempts(store, job.id)
    assert attempt.status_code is None and "loopback" in (attempt.error or "")
    assert receiver.seen == []


def test_a_hanging_receiver_does_not_hold_the_others(settings: Settings, store: JobStore,
                                                     publisher: WebhookPublisher,
                                                     receiver: Receiver) -> None:
    settings = settings.model_copy(update={"webhook_timeout_s": 3.0})
    receiver.decide = lambda path, n: (200, {}, 2.5 if path == "/hang" else 0.0)
    hung = terminal_job(store, receiver.url("/hang"))
    quick = [terminal_job(store, receiver.url(f"/ok{i}")) for i in range(5)]
    publisher.publish(hung.id, "completed")
    for job in quick:
        publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: all(len(attempts(store, j.id)) == 1 for j in quick), timeout=2.0)
        assert attempts(store, hung.id) == []  # still hanging
        wait_for(lambda: len(attempts(store, hung.id)) == 1)
    assert attempts(store, hung.id)[0].status_code == 200


def test_start_and_completed_have_distinct_ids(settings: Settings, store: JobStore,
                                               publisher: WebhookPublisher,
                                               receiver: Receiver) -> None:
    job = terminal_job(store, receiver.url("/both"), ["start", "completed"])
    publisher.publish(job.id, "start")
    publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 2)
    seen = receiver.on("/both")
    assert sorted(s.headers["webhook-id"] for s in seen) == [
        f"msg_{job.id}_completed", f"msg_{job.id}_start"
    ]
    types = sorted(json.loads(s.body)["type"] for s in seen)
    assert types == ["job.completed", "job.start"]


def test_owner_secret_signs(settings: Settings, store: JobStore, publisher: WebhookPublisher,
                            receiver: Receiver) -> None:
    secrets = {"alice": new_secret()}
    job = terminal_job(store, receiver.url("/alice"))
    publisher.publish(job.id, "completed", owner="alice")
    with sender_thread(settings, secret_for=lambda owner: secrets[owner or ""]):
        wait_for(lambda: len(attempts(store, job.id)) == 1)
    [seen] = receiver.on("/alice")
    Webhook(secrets["alice"]).verify(seen.body, seen.headers)


def test_expired_job_is_dropped_and_acked(settings: Settings, store: JobStore,
                                          publisher: WebhookPublisher,
                                          receiver: Receiver) -> None:
    publisher.publish(new_job_id(), "completed")  # no such job
    job = terminal_job(store, receiver.url("/after"))
    publisher.publish(job.id, "completed")
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 1)
    with Connection(settings.broker_url) as conn:
        _, count, _ = conn.channel().queue_declare(webhook_queue_name(settings.namespace),
                                                    passive=True)
    assert count == 0


def test_embedded_sqlite_broker_and_store(tmp_path: Path, receiver: Receiver) -> None:
    # ``inferq serve``: kombu's SQLAlchemy transport on SQLite, the SQLite job store.
    settings = Settings(home=tmp_path, namespace="wh", webhook_secret=new_secret(),
                        webhook_allow_nets="127.0.0.1/32", webhook_timeout_s=0.5,
                        webhook_retry_schedule_s="0.2")
    store = create_store(settings.result_url, namespace="wh", result_ttl_s=3600)
    receiver.decide = lambda path, n: (503 if n == 0 else 200, {}, 0.0)
    job = terminal_job(store, receiver.url("/embedded"))
    pub = WebhookPublisher(settings)
    pub.publish(job.id, "completed")
    pub.close()
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 2)
    assert [a.status_code for a in attempts(store, job.id)] == [503, 200]
    for seen in receiver.on("/embedded"):
        Webhook(settings.webhook_secret).verify(seen.body, seen.headers)
    store.close()


def test_https_is_pinned_to_the_checked_address_and_verifies_the_url_host(
    settings: Settings, store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = "hooks.inferq.test"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={host}",
         "-addext", f"subjectAltName=DNS:{host}"],
        check=True, capture_output=True,
    )
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real = socket.getaddrinfo

    def fake(name: Any, *args: Any, **kwargs: Any) -> Any:
        # Both names point at 127.0.0.1; only one is named in the certificate.
        return real("127.0.0.1" if str(name).endswith(".inferq.test") else name,
                    *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    sender = WebhookSender(settings, store=store,
                           verify=ssl.create_default_context(cafile=str(cert)))
    try:
        good = terminal_job(store, f"https://{host}:{port}/hook")
        outcome, retry = sender.deliver(Delivery(good.id, "completed", f"msg_{good.id}_completed"))
        assert (outcome, retry) == ("delivered", None)
        assert seen[0]["host"] == f"{host}:{port}"
        # Same address, a name the certificate does not cover: TLS fails, nothing is sent.
        bad = terminal_job(store, f"https://other.inferq.test:{port}/hook")
        outcome, retry = sender.deliver(Delivery(bad.id, "completed", f"msg_{bad.id}_completed"))
        assert outcome == "retry" and retry is not None
        [attempt] = attempts(store, bad.id)
        assert attempt.status_code is None and "CERTIFICATE" in (attempt.error or "").upper()
        assert len(seen) == 1
    finally:
        sender.close()
        server.shutdown()
        server.server_close()


def test_sender_process_stops_on_sigterm(settings: Settings, store: JobStore,
                                         publisher: WebhookPublisher, receiver: Receiver) -> None:
    env = {**os.environ, "INFERQ_HOME": str(settings.home),
           "INFERQ_BROKER_URL": settings.broker_url, "INFERQ_RESULT_URL": settings.result_url,
           "INFERQ_NAMESPACE": settings.namespace, "INFERQ_WEBHOOK_SECRET": settings.webhook_secret,
           "INFERQ_WEBHOOK_ALLOW_NETS": "127.0.0.1/32"}
    proc = subprocess.Popen([sys.executable, "-m", "inferq.webhooks.sender"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        job = terminal_job(store, receiver.url("/proc"))
        publisher.publish(job.id, "completed")
        wait_for(lambda: len(attempts(store, job.id)) == 1, timeout=15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    Webhook(settings.webhook_secret).verify(receiver.on("/proc")[0].body,
                                            receiver.on("/proc")[0].headers)


def test_sender_killed_mid_attempt_loses_nothing(settings: Settings, store: JobStore,
                                                 publisher: WebhookPublisher,
                                                 receiver: Receiver) -> None:
    # The first request hangs; the sender is SIGKILLed while it waits; the broker hands the
    # unacknowledged message to the next sender, which delivers it under the same id.
    receiver.decide = lambda path, n: (200, {}, 3.0 if n == 0 else 0.0)
    env = {**os.environ, "INFERQ_HOME": str(settings.home),
           "INFERQ_BROKER_URL": settings.broker_url, "INFERQ_RESULT_URL": settings.result_url,
           "INFERQ_NAMESPACE": settings.namespace, "INFERQ_WEBHOOK_SECRET": settings.webhook_secret,
           "INFERQ_WEBHOOK_ALLOW_NETS": "127.0.0.1/32", "INFERQ_WEBHOOK_TIMEOUT_S": "10"}
    proc = subprocess.Popen([sys.executable, "-m", "inferq.webhooks.sender"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job = terminal_job(store, receiver.url("/killed"))
        publisher.publish(job.id, "completed")
        wait_for(lambda: len(receiver.on("/killed")) == 1, timeout=15)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) == 1)
    [attempt] = attempts(store, job.id)  # the killed attempt was never recorded
    assert attempt.status_code == 200
    seen = receiver.on("/killed")
    assert [s.headers["webhook-id"] for s in seen] == [f"msg_{job.id}_completed"] * 2


# --- publisher ---------------------------------------------------------------------------------


def test_broker_down_falls_back_to_the_schedule(settings: Settings, store: JobStore,
                                                receiver: Receiver) -> None:
    down = settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:1//",
                                       "broker_timeout_s": 0.5})
    pub = WebhookPublisher(down)
    job = terminal_job(store, receiver.url("/fallback"))
    started = time.monotonic()
    pub.publish(job.id, "completed")
    pub.publish(job.id, "completed")  # within the back-off: straight to the schedule
    assert time.monotonic() - started < 2
    pub.close()
    with sender_thread(settings):
        wait_for(lambda: len(attempts(store, job.id)) >= 1)
    assert attempts(store, job.id)[0].status_code == 200


def test_publisher_never_raises_when_everything_is_down(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    down = settings.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:1//",
                                       "result_url": "redis://127.0.0.1:1/0",
                                       "broker_timeout_s": 0.5})
    pub = WebhookPublisher(down)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="inferq.webhooks.publisher"):
        pub.publish("some-job", "completed")
    assert time.monotonic() - started < 5
    assert "lost" in caplog.text
    pub.close()


# --- the retry schedule ------------------------------------------------------------------------


@pytest.fixture(params=["redis", "postgresql", "sqlite"])
def schedule(request: pytest.FixtureRequest, tmp_path: Path, redis_namespace: str
             ) -> Iterator[RetrySchedule]:
    ns = f"{redis_namespace}-sched-{uuid.uuid4().hex[:6]}"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    elif request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        ns = ns.replace("-", "_")
    else:
        url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    sched = create_schedule(Settings(home=tmp_path, result_url=url, namespace=ns))
    yield sched
    sched.close()


def test_schedule_claims_due_entries_once_and_leases_them(schedule: RetrySchedule) -> None:
    t0 = time.time()
    a = Delivery("job-a", "completed", "msg_job-a_completed", attempt=1)
    b = Delivery("job-b", "completed", "msg_job-b_completed", attempt=2, owner="bob")
    later = Delivery("job-c", "completed", "msg_job-c_completed", attempt=1)
    schedule.add(a, t0 - 1)
    schedule.add(b, t0 - 0.5)
    schedule.add(later, t0 + 100)
    claimed = schedule.claim(t0, 10, lease_s=30)
    assert [c.delivery for c in claimed] == [a, b]  # oldest due first, parsed back whole
    assert schedule.claim(t0, 10, lease_s=30) == []  # leased: nobody else gets them
    assert schedule.pending() == 3
    # done() removes; with a retry, the next attempt replaces it in the same step.
    schedule.done(claimed[0])
    schedule.done(claimed[1], (Delivery("job-b", "completed", "msg_job-b_completed", 3), t0))
    [again] = schedule.claim(t0, 10, lease_s=30)
    assert again.delivery.attempt == 3
    # A lease that runs out makes the entry claimable again (a sender that died).
    [after_lease] = schedule.claim(t0 + 31, 10, lease_s=30)
    assert after_lease.delivery == again.delivery
    schedule.release(after_lease, t0)
    assert len(schedule.claim(t0, 10, lease_s=30)) == 1
    assert schedule.pending() == 2


def test_schedule_concurrent_claimers_never_share(schedule: RetrySchedule) -> None:
    t0 = time.time()
    for i in range(60):
        schedule.add(Delivery(f"j{i}", "completed", f"msg_j{i}_completed", 1), t0 - 1)
    got: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        for _ in range(20):
            batch = schedule.claim(t0, 4, lease_s=60)
            with lock:
                got.extend(c.delivery.job_id for c in batch)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(f"j{i}" for i in range(60))  # each exactly once


# --- the server secret -------------------------------------------------------------------------


def test_server_secret_is_generated_once_private_and_stable(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    first = server_secret(s)
    assert first.startswith("whsec_")
    path = tmp_path / "home" / "webhook_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert server_secret(s) == first
    configured = new_secret()
    assert server_secret(s.model_copy(update={"webhook_secret": configured})) == configured
