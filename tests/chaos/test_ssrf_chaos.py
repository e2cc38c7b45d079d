"""Fault #7: webhook URLs aimed at inferq's own machine, in every disguise.

A canary TCP listener on 127.0.0.1 and [::1] counts every connection. Webhook URLs pointing
at it -- by address, by hex and decimal and octal and short forms, by IPv6 forms that carry
127.0.0.1, by a name that resolves to loopback, by a name that resolves to a public address
at submit and to loopback at send (DNS rebinding), and through a redirect -- must all be
refused, and the canary must see 0 connections.

* at submit: ``check_webhook_url`` with nothing allowlisted refuses each URL (422);
* at send: the same URLs written straight into the store (as if the submit check had been
  passed) and queued; the sender, with nothing allowlisted, records a refusal on each job
  and connects nowhere;
* redirects: a redirector on 127.0.0.1 (allowlisted for this part) answers 301/302/303/
  307/308 pointing at the canary and the metadata address; the sender never follows.

Bounded: under 60 s, a few dozen URLs. Real RabbitMQ and Redis on 127.0.0.1 (the
integration tests' fixtures).
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from tests.chaos.chaoslib import Counts, unique_namespace

from inferq.config import Settings
from inferq.queue.store import JobStore, create_store
from inferq.schemas import Job, JobStatus, new_job_id
from inferq.webhooks.publisher import WebhookPublisher, webhook_queue_name
from inferq.webhooks.sender import sender_thread
from inferq.webhooks.signing import new_secret
from inferq.webhooks.ssrf import UnsafeWebhookURL, check_webhook_url

pytestmark = pytest.mark.chaos

BUDGET_S = 45.0
REBIND_HOST = "rebind.inferq-test.example"


@pytest.fixture
def services(tmp_path: Path, amqp_url: str, redis_url: str, redis_namespace: str
             ) -> Iterator[Settings]:
    """Settings on the real RabbitMQ and Redis (the integration fixtures); the namespace
    lies under the session's, so its Redis keys go with it; its queue is deleted here."""
    ns = unique_namespace(redis_namespace, "ssrf7-")
    yield Settings(
        home=tmp_path, broker_url=amqp_url, result_url=redis_url, namespace=ns,
        webhook_secret=new_secret(), webhook_allow_nets="",
        webhook_timeout_s=1.0, webhook_retry_schedule_s="0.1",
    )
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        channel.queue_delete(webhook_queue_name(ns))
        channel.exchange_delete(ns)


class Canary:
    """Counts every TCP connection to one port on 127.0.0.1 and (if it exists) [::1]."""

    def __init__(self) -> None:
        self.hits = 0
        self.lock = threading.Lock()
        canary = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with canary.lock:
                    canary.hits += 1

        self.servers: list[socketserver.ThreadingTCPServer] = []
        v4 = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = v4.server_address[1]
        self.servers.append(v4)

        class V6(socketserver.ThreadingTCPServer):
            address_family = socket.AF_INET6

        try:
            self.servers.append(V6(("::1", self.port), Handler))
            self.has_v6 = True
        except OSError:
            self.has_v6 = False  # no IPv6 loopback here: [::1] cannot connect anywhere
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


def disguises(port: int) -> list[str]:
    """Every spelling of "this machine, port ``port``" we know of."""
    return [
        f"http://127.0.0.1:{port}/",
        f"http://[::1]:{port}/",
        f"http://0x7f000001:{port}/",
        f"http://0x7f.0.0.1:{port}/",
        f"http://2130706433:{port}/",
        f"http://017700000001:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://127.1:{port}/",
        f"http://127.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://LOCALHOST.:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://[::ffff:7f00:1]:{port}/",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/",
        f"http://[::127.0.0.1]:{port}/",
        f"http://0.0.0.0:{port}/",
        f"http://0:{port}/",
        f"http://[::]:{port}/",
        f"https://127.0.0.1:{port}/",
        f"http://127.0.0.1:{port}@example.com/",
        f"http://example.com@127.0.0.1:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        f"http://{REBIND_HOST}:{port}/",
    ]


def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """``REBIND_HOST`` resolves to a public address once (the submit check), then to
    127.0.0.1 (the send); every other name goes to the real resolver."""
    real = socket.getaddrinfo
    calls = {"n": 0}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == REBIND_HOST:
            calls["n"] += 1
            address = "93.184.216.34" if calls["n"] == 1 else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def queue_jobs(store: JobStore, publisher: WebhookPublisher, urls: list[str]) -> list[str]:
    ids = []
    for url in urls:
        job = Job(id=new_job_id(), model="echo", status=JobStatus.QUEUED,
                  created_at=datetime.now(UTC), webhook=url, webhook_events=["completed"])
        store.create(job)
        store.finish(job.id, JobStatus.SUCCEEDED, output={}, finished_at=datetime.now(UTC))
        publisher.publish(job.id, "completed")
        ids.append(job.id)
    return ids


def wait_for(predicate: Callable[[], bool], deadline: float) -> None:
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_ssrf_targets_are_refused_and_the_canary_stays_silent(
    services: Settings, canary: Canary, monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    deadline = started + BUDGET_S
    settings = services
    urls = disguises(canary.port)
    dns = fake_dns(monkeypatch)

    # 1. At submit: nothing allowlisted, every URL refused -- but the rebinding name, whose
    #    DNS answer is public at this moment (what the send-time check is for).
    accepted_at_submit = []
    for url in urls:
        try:
            check_webhook_url(url, settings.webhook_allow_nets)
            accepted_at_submit.append(url)
        except UnsafeWebhookURL as exc:
            assert exc.errors[0]["field"] == "webhook"
    assert accepted_at_submit == [f"http://{REBIND_HOST}:{canary.port}/"]
    assert dns["n"] == 1

    # 2. At send: the same URLs in the store (as if accepted), sender with no allowlist.
    store = create_store(settings.result_url, namespace=settings.namespace, result_ttl_s=600)
    publisher = WebhookPublisher(settings)
    ids = queue_jobs(store, publisher, urls)
    with sender_thread(settings):
        wait_for(lambda: all(store.get(j).webhook_attempts for j in ids), deadline)
        time.sleep(0.5)  # a retry, if one were scheduled, would come now
    records = {j: store.get(j).webhook_attempts for j in ids}
    # A name that does not resolve (here: "localhost." without DNS) is refused and retried
    # by the schedule, since DNS may come back; an address that is refused is final.
    refused = [u for u, j in zip(urls, ids, strict=True) if records[j] and all(
        a.status_code is None and "refused" in (a.error or "") for a in records[j])]
    lost = sum(1 for r in records.values() if not r)
    delivered = sum(1 for r in records.values() for a in r if a.status_code is not None)
    Counts(
        "ssrf-at-send",
        submitted=len(urls), accepted=len(accepted_at_submit), terminal=len(refused),
        lost=lost, duplicate_executions=0,
        extra={"duplicate": 0, "delivered": delivered, "canary_hits": canary.hits,
               "ipv6_canary": canary.has_v6},
    ).report(record_property)
    assert len(refused) == len(urls), [
        (u, [(a.status_code, a.error) for a in records[j]])
        for u, j in zip(urls, ids, strict=True) if u not in refused
    ]
    assert delivered == 0
    assert canary.hits == 0

    # 3. Redirects: a redirector on 127.0.0.1 (allowlisted now) points at the canary.
    targets = [f"http://[::1]:{canary.port}/", f"http://localhost:{canary.port}/",
               f"http://127.0.0.1:{canary.port}/", "http://169.254.169.254/latest/meta-data/"]
    codes = [301, 302, 303, 307, 308]
    seen: list[str] = []

    class Redirector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append(self.path)
            n = int(self.path.strip("/"))
            self.send_response(codes[n % len(codes)])
            self.send_header("location", targets[n % len(targets)])
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # listen() backlog: the default 5 drops bursts of connects

    server = Server(("127.0.0.1", 0), Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    allowed = settings.model_copy(update={"webhook_allow_nets": "127.0.0.1/32"})
    n_redirects = len(codes) * len(targets)
    try:
        rids = queue_jobs(store, publisher, [
            f"http://127.0.0.1:{server.server_address[1]}/{i}" for i in range(n_redirects)
        ])
        with sender_thread(allowed):
            # The first attempt and the one retry of the schedule ("0.1"), then it gives up.
            wait_for(lambda: all(len(store.get(j).webhook_attempts) == 2 for j in rids),
                     deadline)
    finally:
        server.shutdown()
        server.server_close()
        publisher.close()
    rrecords = [store.get(j).webhook_attempts for j in rids]
    store.close()
    not_followed = sum(1 for r in rrecords
                       if all(a.status_code in codes and "not followed" in (a.error or "")
                              for a in r))
    Counts(
        "ssrf-redirects",
        submitted=n_redirects, accepted=n_redirects, terminal=not_followed,
        lost=n_redirects - not_followed, duplicate_executions=0,
        extra={"duplicate": 0, "redirector_hits": len(seen), "canary_hits": canary.hits,
               "elapsed_s": round(time.monotonic() - started, 1)},
    ).report(record_property)
    assert not_followed == n_redirects, [[(a.status_code, a.error) for a in r] for r in rrecords]
    assert "gave up" in (rrecords[0][-1].error or "")
    assert len(seen) == 2 * n_redirects
    assert canary.hits == 0
    assert time.monotonic() - started < 60
