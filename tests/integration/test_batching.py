"""Dynamic batching on the real RabbitMQ, with real API and worker processes."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kombu import Connection
from tests.procs import Proc, free_port, inferq_env, wait_until, workers_online

from inferq.client import Client

pytestmark = pytest.mark.integration


def test_jobs_queued_before_the_worker_starts_run_as_one_batch(
        amqp_url: str, redis_url: str, redis_namespace: str, tmp_path: Path) -> None:
    namespace = f"{redis_namespace}-b{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = inferq_env(INFERQ_BROKER_URL=amqp_url, INFERQ_RESULT_URL=redis_url,
                     INFERQ_NAMESPACE=namespace, INFERQ_PORT=str(port),
                     INFERQ_HOME=str(tmp_path), INFERQ_WORKER_HEARTBEAT_S="1")
    url = f"http://127.0.0.1:{port}"
    api = Proc(["api"], env, tmp_path / "api.log")
    worker: Proc | None = None
    try:
        with Client(url) as client:
            wait_until(lambda: client.models() is not None, 30, "the API", [api])
            jobs = [client.submit("echo-batched", {"text": str(i)}) for i in range(8)]
            worker = Proc(["worker", "--models", "echo-batched"], env, tmp_path / "w.log")
            done = [client.wait(j.id, timeout=60) for j in jobs]
            assert [j.output for j in done] == [
                {"text": str(i), "batch_size": 8} for i in range(8)]
            assert {j.metrics.batch_size for j in done} == {8}
            # At low load a lone job still runs: after the batch window, in a batch of one.
            wait_until(lambda: workers_online(url, "echo-batched") == 1, 30, "worker", [worker])
            lone = client.submit("echo-batched", {"text": "lone"}, wait=30)
            assert lone.status.value == "succeeded"
            assert lone.output == {"text": "lone", "batch_size": 1}
            info = client.model("echo-batched")
            assert (info.max_batch_size, info.batch_timeout_s) == (8, 0.5)
    finally:
        for p in (api, worker):
            if p is not None:
                p.stop()
        with Connection(amqp_url) as conn:
            conn.default_channel.queue_delete(f"{namespace}.echo-batched")
            conn.default_channel.exchange_delete(namespace)
            conn.default_channel.queue_delete(f"{namespace}.dead")
            conn.default_channel.exchange_delete(f"{namespace}.dead")
