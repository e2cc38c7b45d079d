"""Time limits with real processes: the soft limit fails the job and the worker goes on;
the hard limit fails the job, ends the worker process, and its supervisor starts another."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kombu import Connection
from tests.procs import Proc, free_port, inferq_env, wait_until, workers_online

from inferq.client import Client

pytestmark = pytest.mark.integration

MODELS = ("slow-soft-limit", "slow-hard-limit", "echo")


def test_soft_and_hard_time_limits_fail_the_job_and_the_worker_goes_on(
        amqp_url: str, redis_url: str, redis_namespace: str, tmp_path: Path) -> None:
    namespace = f"{redis_namespace}-t{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = inferq_env(INFERQ_BROKER_URL=amqp_url, INFERQ_RESULT_URL=redis_url,
                     INFERQ_NAMESPACE=namespace, INFERQ_PORT=str(port),
                     INFERQ_HOME=str(tmp_path), INFERQ_WORKER_HEARTBEAT_S="1")
    url = f"http://127.0.0.1:{port}"
    api = Proc(["api"], env, tmp_path / "api.log")
    worker = Proc(["worker", "--models", ",".join(MODELS)], env, tmp_path / "worker.log")
    try:
        wait_until(lambda: workers_online(url, "echo") == 1, 60, "a worker", [api, worker])
        with Client(url) as client:
            soft = client.submit("slow-soft-limit", {"seconds": 3}, wait=20)
            assert soft.status.value == "failed" and soft.error is not None
            assert soft.error.type == "JobTimeout" and "soft" in soft.error.message

            hard = client.submit("slow-hard-limit", {"seconds": 5}, wait=20)
            if not hard.status.is_terminal():
                hard = client.wait(hard.id, timeout=30)
            assert hard.status.value == "failed" and hard.error is not None
            assert hard.error.type == "JobTimeout" and "hard" in hard.error.message

            # The worker process was replaced; the new one serves, and the timed-out job,
            # redelivered to it, is not run again.
            after = client.submit("echo", {"text": "still here"}, wait=30)
            if not after.status.is_terminal():
                after = client.wait(after.id, timeout=30)
            assert after.status.value == "succeeded"
            assert client.get(hard.id).status.value == "failed"
        assert worker.alive()  # the supervisor itself never died
        assert "exited with 70" in worker.tail(200)
    finally:
        for p in (api, worker):
            p.stop()
        with Connection(amqp_url) as conn:
            channel = conn.default_channel
            for model in MODELS:
                channel.queue_delete(f"{namespace}.{model}")
            for name in (namespace, f"{namespace}.dead"):
                channel.exchange_delete(name)
            channel.queue_delete(f"{namespace}.dead")
