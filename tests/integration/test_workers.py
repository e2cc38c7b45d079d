"""Real API and worker processes on RabbitMQ, with the job store on Redis and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from kombu import Connection
from tests.procs import Proc, free_port, inferq_env, wait_until, workers_online

from inferq.client import Client

pytestmark = pytest.mark.integration

MODELS = "echo,slow-predict,exc-in-predict,counting-setup"


@dataclass
class Stack:
    """An API and two workers sharing one namespace."""

    url: str
    api: Proc
    workers: list[Proc]
    setup_file: Path


def _delete_queues(amqp_url: str, namespace: str) -> None:
    with Connection(amqp_url) as conn:
        channel = conn.default_channel
        for model in MODELS.split(","):
            channel.queue_delete(f"{namespace}.{model}")
        channel.exchange_delete(namespace)
        channel.queue_delete(f"{namespace}.dead")
        channel.exchange_delete(f"{namespace}.dead")


@pytest.fixture(scope="module", params=["redis", "postgresql"])
def stack(request: pytest.FixtureRequest, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    result_url = request.getfixturevalue("redis_url" if request.param == "redis" else "pg_url")
    # Under the session's Redis namespace, so the redis_url fixture deletes its keys.
    namespace = f"{request.getfixturevalue('redis_namespace')}-w{uuid.uuid4().hex[:6]}"
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    setup_file = tmp / "setups.txt"
    port = free_port()
    env = inferq_env(
        INFERQ_BROKER_URL=amqp_url, INFERQ_RESULT_URL=result_url, INFERQ_NAMESPACE=namespace,
        INFERQ_HOME=str(tmp / "home"), INFERQ_PORT=str(port), INFERQ_WORKER_HEARTBEAT_S="1",
        COUNTING_SETUP_FILE=str(setup_file),
    )
    api = Proc(["api"], env, tmp / "api.log")
    workers = [Proc(["worker", "--models", MODELS], env, tmp / f"worker{i}.log")
               for i in range(2)]
    url = f"http://127.0.0.1:{port}"
    procs = [api, *workers]
    try:
        wait_until(lambda: workers_online(url, "echo") == 2, 90, "two workers online", procs)
        yield Stack(url, api, workers, setup_file)
    finally:
        for p in procs:
            p.stop()
        _delete_queues(amqp_url, namespace)


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url) as c:
        yield c


def test_a_job_runs_end_to_end_on_the_real_services(client: Client) -> None:
    job = client.submit("echo", {"text": "real", "repeat": 2}, wait=20)
    assert job.status.value == "succeeded"
    assert job.output == {"text": "realreal", "batch_size": 1}
    assert job.metrics.queue_ms is not None and job.metrics.inference_ms is not None


def test_two_workers_on_one_queue_both_take_jobs(client: Client, stack: Stack) -> None:
    jobs = [client.submit("slow-predict", {"seconds": 0.3}) for _ in range(8)]
    done = [client.wait(j.id, timeout=60) for j in jobs]
    assert all(j.status.value == "succeeded" for j in done)
    assert len({j.worker for j in done}) == 2


def test_setup_runs_once_per_worker_process(client: Client, stack: Stack) -> None:
    jobs = [client.submit("counting-setup", {"n": i}) for i in range(12)]
    done = [client.wait(j.id, timeout=60) for j in jobs]
    assert all(j.status.value == "succeeded" for j in done)
    setups = stack.setup_file.read_text().split()
    # Two worker processes (each under its supervisor), one setup() each.
    assert len(setups) == len(set(setups)) == 2
    assert {str(j.output["pid"]) for j in done} <= set(setups)


def test_model_that_raises_fails_only_its_jobs_and_the_worker_goes_on(client: Client) -> None:
    bad = client.submit("exc-in-predict", {"text": "boom"})
    good = [client.submit("exc-in-predict", {"text": f"ok{i}"}) for i in range(4)]
    failed = client.wait(bad.id, timeout=30)
    assert failed.status.value == "failed"
    assert failed.error is not None and failed.error.type == "ValueError"
    assert all(client.wait(j.id, timeout=30).status.value == "succeeded" for j in good)
    assert client.submit("echo", {"text": "after"}, wait=20).status.value == "succeeded"


def test_canceled_queued_job_never_runs(client: Client) -> None:
    # Both workers busy (prefetch 1 each), so the third job waits in RabbitMQ.
    busy = [client.submit("slow-predict", {"seconds": 2.0}) for _ in range(2)]
    victim = client.submit("echo", {"text": "never"})
    canceled = client.cancel(victim.id)
    assert canceled.status.value == "canceled"
    for j in busy:
        client.wait(j.id, timeout=60)
    # A later job on the same queue finishing proves the canceled one was consumed.
    assert client.submit("echo", {"text": "later"}, wait=20).status.value == "succeeded"
    after = client.get(victim.id)
    assert after.status.value == "canceled"
    assert after.output is None and after.started_at is None


def test_long_poll_and_events_over_real_http(client: Client, stack: Stack) -> None:
    job = client.submit("slow-predict", {"seconds": 0.5})
    statuses = [j.status.value for j in client.events(job.id)]
    assert statuses[-1] == "succeeded"
    r = httpx.get(f"{stack.url}/v1/jobs/{job.id}", params={"wait": 5}, timeout=10)
    assert r.json()["status"] == "succeeded"


def test_readiness_reports_broker_and_store(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert r.status_code == 200
    assert r.json()["checks"] == {"broker": "ok", "store": "ok"}
