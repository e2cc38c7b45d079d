"""Fault #6: the webhook receiver fails, then hangs, then recovers.

200 terminal jobs want a ``completed`` webhook. For the first seconds the receiver answers
500, then it hangs past the sender's timeout, then it answers 200. Two senders share the
queue and the retry schedule, and one of them is stopped and replaced half-way. In the end
every job must have been delivered exactly once with a 2xx, every request must carry a
valid Standard Webhooks signature, and each job's ``webhook-id`` must be its own and the
same on all its attempts. Bounded: under 60 s, 200 jobs.

Real RabbitMQ and Redis on 127.0.0.1 (the integration tests' fixtures).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from standardwebhooks import Webhook
from tests.chaos.chaoslib import Counts, unique_namespace

from inferq.config import Settings
from inferq.queue.store import create_store
from inferq.schemas import Job, JobStatus, new_job_id
from inferq.webhooks.publisher import WebhookPublisher, webhook_queue_name
from inferq.webhooks.sender import sender_thread
from inferq.webhooks.signing import new_secret

pytestmark = pytest.mark.chaos

JOBS = 200
FAIL_UNTIL_S = 3.0  # receiver answers 500 until then...
HANG_UNTIL_S = 6.0  # ...then holds each request past the timeout until then, then 200
TIMEOUT_S = 0.5
BUDGET_S = 50.0


@pytest.fixture
def services(tmp_path: Path, amqp_url: str, redis_url: str, redis_namespace: str
             ) -> Iterator[Settings]:
    """Settings on the real RabbitMQ and Redis (the integration fixtures); the namespace
    lies under the session's, so its Redis keys go with it; its queue is deleted here."""
    ns = unique_namespace(redis_namespace, "wh6-")
    yield Settings(
        home=tmp_path, broker_url=amqp_url, result_url=redis_url, namespace=ns,
        webhook_secret=new_secret(), webhook_allow_nets="127.0.0.1/32",
        webhook_timeout_s=TIMEOUT_S, webhook_retry_schedule_s="0.5,1,1,1.5,2,2,2,2,2,2,2,2",
    )
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        channel.queue_delete(webhook_queue_name(ns))
        channel.exchange_delete(ns)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen() backlog: 200 senders' connects at once


class FlakyReceiver:
    """500, then hanging, then 200 -- by time since ``start()``. Records every request."""

    def __init__(self) -> None:
        self.t0 = float("inf")
        self.lock = threading.Lock()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.ok_by_id: Counter[str] = Counter()
        self.phases: Counter[str] = Counter()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                elapsed = time.monotonic() - receiver.t0
                phase = "fail" if elapsed < FAIL_UNTIL_S else (
                    "hang" if elapsed < HANG_UNTIL_S else "ok")
                with receiver.lock:
                    receiver.requests.append((headers, body))
                    receiver.phases[phase] += 1
                    if phase == "ok":
                        receiver.ok_by_id[headers.get("webhook-id", "")] += 1
                if phase == "hang":
                    time.sleep(TIMEOUT_S * 3)  # the sender gave up long before
                    self.close_connection = True
                    return
                status = 200 if phase == "ok" else 500
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def start(self) -> None:
        self.t0 = time.monotonic()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_receiver_failing_hanging_recovering(
    services: Settings, record_property: Callable[[str, object], None]
) -> None:
    settings = services
    started = time.monotonic()
    store = create_store(settings.result_url, namespace=settings.namespace, result_ttl_s=3600)
    receiver = FlakyReceiver()
    publisher = WebhookPublisher(settings)
    jobs: list[str] = []
    try:
        for i in range(JOBS):
            job = Job(id=new_job_id(), model="echo", status=JobStatus.QUEUED, input={"i": i},
                      created_at=datetime.now(UTC),
                      webhook=f"http://127.0.0.1:{receiver.port}/hooks/{i}",
                      webhook_events=["completed"])
            store.create(job)
            store.start(job.id, "w1", datetime.now(UTC))
            store.finish(job.id, JobStatus.SUCCEEDED, output={"i": i},
                         finished_at=datetime.now(UTC))
            publisher.publish(job.id, "completed")
            jobs.append(job.id)
        receiver.start()
        deadline = started + BUDGET_S

        def delivered() -> int:
            return sum(1 for j in jobs
                       if any(a.status_code == 200 for a in store.get(j).webhook_attempts))

        with sender_thread(settings):
            with sender_thread(settings) as replaced:
                time.sleep((FAIL_UNTIL_S + HANG_UNTIL_S) / 2)  # mid-hang
                replaced.set()  # graceful stop of one sender; a new one takes over
            with sender_thread(settings):
                while time.monotonic() < deadline and delivered() < JOBS:
                    time.sleep(0.25)
                time.sleep(1.0)  # room for any duplicate to show up
    finally:
        publisher.close()
        receiver.close()

    # --- every job delivered exactly once, every request signed, ids per job ---
    wh = Webhook(settings.webhook_secret)
    ids_by_job: dict[str, set[str]] = defaultdict(set)
    for headers, body in receiver.requests:
        payload = wh.verify(body, headers)  # raises on any bad signature
        ids_by_job[payload["data"]["id"]].add(headers["webhook-id"])
    records = {j: store.get(j).webhook_attempts for j in jobs}
    store.close()
    successes = {j: sum(1 for a in records[j] if a.status_code == 200) for j in jobs}
    lost = [j for j in jobs if successes[j] == 0]
    duplicate = sum(n - 1 for n in receiver.ok_by_id.values() if n > 1)
    terminal = sum(1 for j in jobs if successes[j] >= 1)
    attempts = sum(len(r) for r in records.values())
    Counts(
        "webhook-receiver-fail-hang-recover",
        submitted=JOBS, accepted=len(jobs), terminal=terminal, lost=len(lost),
        # No job runs here: "duplicate" counts deliveries a receiver got twice with a 2xx.
        duplicate_executions=duplicate,
        extra={"duplicate_deliveries": duplicate, "requests": len(receiver.requests),
               "attempts_recorded": attempts, **{f"phase_{k}": v for k, v in
                                                 receiver.phases.items()},
               "bad_signatures": 0, "elapsed_s": round(time.monotonic() - started, 1)},
    ).report(record_property)

    for mid, n in receiver.ok_by_id.items():
        if n > 1:  # diagnosis for a failure below: what the sender saw of that webhook
            job_id = mid.removeprefix("msg_").removesuffix("_completed")
            print("duplicate", mid, [(a.status_code, a.error, a.duration_ms)
                                     for a in records.get(job_id, [])])
    assert lost == []
    assert duplicate == 0 and all(n == 1 for n in successes.values())
    assert len(receiver.ok_by_id) == JOBS
    assert all(ids == {f"msg_{j}_completed"} for j, ids in ids_by_job.items())
    assert set(ids_by_job) == set(jobs)
    # Every job failed before it succeeded (nothing succeeded before the recovery), the last
    # attempt is the success, and every request the receiver saw is recorded on its job.
    assert all(len(r) >= 2 and r[-1].status_code == 200 for r in records.values())
    assert receiver.phases["hang"] > 0
    assert any("timeout" in (a.error or "") for r in records.values() for a in r)
    assert attempts >= len(receiver.requests)
    assert time.monotonic() - started < 60
