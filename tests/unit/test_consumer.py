"""The batching consume loop on kombu's in-memory transport: no server needed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kombu import Connection
from tests.conftest import FIXTURE_CONFIG

from inferq.config import Settings
from inferq.queue.broker import Broker
from inferq.queue.celery_app import model_queue
from inferq.queue.consumer import BatchingConsumer, parse_task
from inferq.queue.store import JobStore, create_store
from inferq.registry import discover, select
from inferq.schemas import Job, JobStatus, new_job_id
from inferq.worker.runtime import WorkerRuntime


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, broker_url="memory://", config_file=FIXTURE_CONFIG,
                    namespace=f"c{uuid.uuid4().hex[:8]}")


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    s = create_store(settings.result_url, namespace=settings.namespace, result_ttl_s=60)
    yield s
    s.close()


class Running:
    """A consumer on a thread, and the sizes of the batches it ran."""

    def __init__(self, settings: Settings, store: JobStore, models: list[str]) -> None:
        specs = select(discover(settings.config_file), models)
        runtime = WorkerRuntime(specs, store, "w", device="cpu")
        self.batches: list[tuple[str, int]] = []
        self.consumer = BatchingConsumer(
            settings.broker_url, {m: model_queue(settings.namespace, m) for m in specs},
            specs, runtime, on_batch=lambda m, n: self.batches.append((m, n)),
        )
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


def submit(settings: Settings, store: JobStore, model: str, input: dict) -> str:
    job = Job(id=new_job_id(), model=model, status=JobStatus.QUEUED,
              created_at=datetime.now(UTC))
    store.create(job)
    Broker(settings, [model]).publish(job.id, model, input)
    return job.id


def wait_terminal(store: JobStore, ids: list[str], timeout: float = 15) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [store.get(i) for i in ids]
        if all(j.status.is_terminal() for j in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError("jobs did not finish")


def test_eight_queued_jobs_run_as_one_predict_call(settings: Settings, store: JobStore) -> None:
    ids = [submit(settings, store, "echo-batched", {"text": str(i)}) for i in range(8)]
    with Running(settings, store, ["echo-batched"]) as running:
        jobs = wait_terminal(store, ids)
    assert running.batches == [("echo-batched", 8)]
    assert all(j.output == {"text": str(i), "batch_size": 8} for i, j in enumerate(jobs))
    assert all(j.metrics.batch_size == 8 for j in jobs)


def test_a_lone_job_runs_after_batch_timeout(settings: Settings, store: JobStore) -> None:
    with Running(settings, store, ["echo-batched"]) as running:
        time.sleep(0.2)
        job_id = submit(settings, store, "echo-batched", {"text": "alone"})
        (job,) = wait_terminal(store, [job_id])
    assert job.status == JobStatus.SUCCEEDED
    assert running.batches == [("echo-batched", 1)]
    # It was held for the batch window (0.5 s) before running, not run at once.
    assert job.metrics.queue_ms is not None and job.metrics.queue_ms >= 400


def test_one_bad_item_in_a_batch_fails_alone(settings: Settings, store: JobStore) -> None:
    texts = ["a", "b", "boom", "d", "e"]
    ids = [submit(settings, store, "exc-batched", {"text": t}) for t in texts]
    with Running(settings, store, ["exc-batched"]):
        jobs = wait_terminal(store, ids)
    statuses = {t: j.status for t, j in zip(texts, jobs, strict=True)}
    assert statuses.pop("boom") == JobStatus.FAILED
    assert set(statuses.values()) == {JobStatus.SUCCEEDED}


def test_pickled_message_is_rejected_never_loaded(settings: Settings, store: JobStore) -> None:
    queue = model_queue(settings.namespace, "echo-batched")
    with Connection(settings.broker_url) as conn:
        conn.Producer().publish(
            [[new_job_id(), "echo-batched", {"text": "x"}], {}, {}], serializer="pickle",
            exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue],
            headers={"task": "inferq.predict"},
        )
    good = submit(settings, store, "echo-batched", {"text": "fine"})
    with Running(settings, store, ["echo-batched"]) as running:
        (job,) = wait_terminal(store, [good])
    assert job.status == JobStatus.SUCCEEDED
    assert running.batches == [("echo-batched", 1)]


@pytest.mark.parametrize("body, headers", [
    ([["id", "m", {}], {}, {}], {"task": "something.else"}),
    ([["id", "m"], {}, {}], {"task": "inferq.predict"}),
    ({"not": "a triple"}, {"task": "inferq.predict"}),
    ([["id", "m", [1, 2]], {"batch": True}, {}], {"task": "inferq.predict"}),
])
def test_malformed_task_messages_are_refused(body: object, headers: dict) -> None:
    with pytest.raises(ValueError):
        parse_task(body, headers)


def test_a_retryable_failure_is_held_then_run_again(settings: Settings, store: JobStore,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path / "flaky"))
    monkeypatch.setattr("inferq.queue.consumer.retry_backoff_s", lambda attempts: 0.2)
    job_id = submit(settings, store, "flaky", {"text": "once", "fail_times": 1})
    with Running(settings, store, ["flaky"]) as running:
        (job,) = wait_terminal(store, [job_id])
    assert job.status == JobStatus.SUCCEEDED
    assert job.output == {"text": "once", "tries": 2}
    assert job.attempts == 2
    assert running.batches == [("flaky", 1), ("flaky", 1)]
