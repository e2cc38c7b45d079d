"""The worker runtime: one predict per batch, bad items isolated, contract enforced."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from inferq.errors import RetryableError
from inferq.model import Model
from inferq.queue.store import JobStore, create_store
from inferq.registry import ModelSpec
from inferq.schemas import Job, JobStatus, new_job_id
from inferq.worker.runtime import WorkerRuntime, WorkItem


class Recorder(Model):
    """Remembers the size of every predict call; fails on negative numbers."""

    name = "recorder"
    calls: list[int] = []

    class Input(BaseModel):
        x: int

    class Output(BaseModel):
        y: int

    def predict(self, batch: list[Any]) -> list[Any]:
        type(self).calls.append(len(batch))
        if any(item.x < 0 for item in batch):
            raise ValueError("negative input")
        if any(item.x == 999 for item in batch):
            return [{"y": "not a number"} for _ in batch]
        return [self.Output(y=item.x * 10) for item in batch]


class ReturnsTooFew(Recorder):
    def predict(self, batch: list[Any]) -> list[Any]:
        return super().predict(batch)[:-1]


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return create_store(f"sqlite:///{tmp_path}/jobs.sqlite", namespace="rt", result_ttl_s=60)


def make_runtime(store: JobStore, cls: type[Model] = Recorder, max_batch: int = 8
                 ) -> WorkerRuntime:
    Recorder.calls = []
    spec = ModelSpec("recorder", cls, max_batch, 0.0)
    return WorkerRuntime({"recorder": spec}, store, "w1", device="cpu")


def new_job(store: JobStore) -> str:
    job = Job(id=new_job_id(), model="recorder", status=JobStatus.QUEUED,
              created_at=datetime.now(UTC))
    store.create(job)
    return job.id


def test_a_batch_of_eight_runs_as_one_predict_call(store: JobStore) -> None:
    rt = make_runtime(store)
    ids = [new_job(store) for _ in range(8)]
    rt.run_batch("recorder", [WorkItem(i, {"x": n}) for n, i in enumerate(ids)])
    assert Recorder.calls == [8]
    for n, job_id in enumerate(ids):
        job = store.get(job_id)
        assert job.status == JobStatus.SUCCEEDED
        assert job.output == {"y": n * 10}
        assert job.metrics.batch_size == 8


def test_more_than_max_batch_size_is_cut_into_calls(store: JobStore) -> None:
    rt = make_runtime(store, max_batch=4)
    ids = [new_job(store) for _ in range(10)]
    rt.run_batch("recorder", [WorkItem(i, {"x": 1}) for i in ids])
    assert Recorder.calls == [4, 4, 2]


def test_one_bad_item_fails_alone_and_its_neighbours_succeed(store: JobStore) -> None:
    rt = make_runtime(store)
    ids = [new_job(store) for _ in range(8)]
    values = [1, 2, 3, -1, 5, 6, 7, 8]
    rt.run_batch("recorder", [WorkItem(i, {"x": v}) for i, v in zip(ids, values, strict=True)])
    for job_id, v in zip(ids, values, strict=True):
        job = store.get(job_id)
        if v < 0:
            assert job.status == JobStatus.FAILED
            assert job.error is not None
            assert (job.error.type, job.error.message) == ("ValueError", "negative input")
        else:
            assert job.status == JobStatus.SUCCEEDED and job.output == {"y": v * 10}
    # Bisected depth first: 8 fails; [1,2,3,-1] fails; [1,2] ok; [3,-1] fails;
    # [3] ok; [-1] fails alone; [5,6,7,8] ok.
    assert Recorder.calls == [8, 4, 2, 2, 1, 1, 4]


def test_wrong_number_of_outputs_fails_the_batch_with_model_error(store: JobStore) -> None:
    rt = make_runtime(store, cls=ReturnsTooFew)
    ids = [new_job(store) for _ in range(3)]
    rt.run_batch("recorder", [WorkItem(i, {"x": 1}) for i in ids])
    for job_id in ids:
        job = store.get(job_id)
        assert job.status == JobStatus.FAILED
        assert job.error is not None and job.error.type == "ModelError"
        assert "returned 2 outputs for 3 inputs" in job.error.message


def test_outputs_that_do_not_fit_the_output_schema_are_a_model_error(store: JobStore) -> None:
    rt = make_runtime(store)
    job_id = new_job(store)
    rt.run_batch("recorder", [WorkItem(job_id, {"x": 999})])
    job = store.get(job_id)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.type == "ModelError"


def test_invalid_input_fails_its_job_without_calling_predict(store: JobStore) -> None:
    rt = make_runtime(store)
    bad, good = new_job(store), new_job(store)
    rt.run_batch("recorder", [WorkItem(bad, {"x": "nope"}), WorkItem(good, {"x": 2})])
    assert store.get(bad).status == JobStatus.FAILED
    assert store.get(good).output == {"y": 20}
    assert Recorder.calls == [1]


def test_batch_job_output_is_the_list_of_outputs_in_order(store: JobStore) -> None:
    rt = make_runtime(store, max_batch=4)
    job_id = new_job(store)
    rt.run_batch("recorder", [WorkItem(job_id, [{"x": n} for n in range(10)], batch=True)])
    job = store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.output == [{"y": n * 10} for n in range(10)]
    assert job.metrics.batch_size == 4
    assert Recorder.calls == [4, 4, 2]


def test_batch_job_with_a_bad_item_fails_naming_its_index(store: JobStore) -> None:
    rt = make_runtime(store)
    job_id = new_job(store)
    rt.run_batch("recorder", [WorkItem(job_id, [{"x": 1}, {"x": -5}, {"x": 3}], batch=True)])
    job = store.get(job_id)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.message == "inputs[1]: negative input"


def test_canceled_job_is_skipped(store: JobStore) -> None:
    rt = make_runtime(store)
    job_id = new_job(store)
    store.cancel(job_id)
    rt.run_batch("recorder", [WorkItem(job_id, {"x": 1})])
    assert Recorder.calls == []
    assert store.get(job_id).status == JobStatus.CANCELED


def test_setup_runs_once_however_many_batches(store: JobStore) -> None:
    class CountsSetup(Recorder):
        setups = 0

        def setup(self) -> None:
            type(self).setups += 1

    rt = make_runtime(store, cls=CountsSetup)
    rt.setup()
    for _ in range(3):
        rt.run_batch("recorder", [WorkItem(new_job(store), {"x": 1})])
    assert CountsSetup.setups == 1


class Transient(Recorder):
    """Raises RetryableError while ``failures`` lasts."""

    failures = 0
    max_retries = 2

    def predict(self, batch: list[Any]) -> list[Any]:
        if type(self).failures > 0:
            type(self).failures -= 1
            raise RetryableError("download timed out")
        return super().predict(batch)


def _spec_runtime(store: JobStore, cls: type[Model], **knobs: Any) -> WorkerRuntime:
    Recorder.calls = []
    on_hard = knobs.pop("on_hard", None)
    spec = ModelSpec("recorder", cls, 8, 0.0, **knobs)
    return WorkerRuntime({"recorder": spec}, store, "w1", device="cpu",
                         on_hard_timeout=on_hard)


def test_retryable_error_puts_the_job_back_until_max_retries(store: JobStore) -> None:
    Transient.failures = 10
    rt = _spec_runtime(store, Transient, max_retries=2)
    job_id = new_job(store)
    for attempt in (1, 2):
        (outcome,) = rt.run_batch("recorder", [WorkItem(job_id, {"x": 1})])
        assert outcome.retry and outcome.job is not None and outcome.job.attempts == attempt
        assert store.get(job_id).status == JobStatus.QUEUED
    (outcome,) = rt.run_batch("recorder", [WorkItem(job_id, {"x": 1})])
    job = store.get(job_id)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.type == "RetryableError"
    assert "gave up after 3 attempts" in job.error.message


def test_retryable_error_then_success(store: JobStore) -> None:
    Transient.failures = 1
    rt = _spec_runtime(store, Transient, max_retries=2)
    job_id = new_job(store)
    (first,) = rt.run_batch("recorder", [WorkItem(job_id, {"x": 4})])
    assert first.retry
    rt.run_batch("recorder", [WorkItem(job_id, {"x": 4})])
    job = store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.output == {"y": 40}
    assert job.attempts == 2


def test_plain_exceptions_are_not_retried(store: JobStore) -> None:
    rt = _spec_runtime(store, Recorder, max_retries=3)
    job_id = new_job(store)
    (outcome,) = rt.run_batch("recorder", [WorkItem(job_id, {"x": -1})])
    assert not outcome.retry
    assert store.get(job_id).status == JobStatus.FAILED


class Sleeper(Recorder):
    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(batch[0].x / 10)
        return super().predict(batch)


def test_soft_time_limit_fails_the_call_and_the_worker_goes_on(store: JobStore) -> None:
    rt = _spec_runtime(store, Sleeper, soft_time_limit_s=0.2, time_limit_s=30)
    slow, quick = new_job(store), new_job(store)
    rt.run_batch("recorder", [WorkItem(slow, {"x": 30})])
    job = store.get(slow)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.type == "JobTimeout" and "soft time limit" in job.error.message
    rt.run_batch("recorder", [WorkItem(quick, {"x": 0})])
    assert store.get(quick).status == JobStatus.SUCCEEDED


def test_hard_time_limit_fails_the_jobs_and_ends_the_process(store: JobStore) -> None:
    fired = threading.Event()
    rt = _spec_runtime(store, Sleeper, time_limit_s=0.2, on_hard=fired.set)
    job_id = new_job(store)
    rt.run_batch("recorder", [WorkItem(job_id, {"x": 8})])
    assert fired.is_set()  # in a worker this is os._exit: the process is replaced
    job = store.get(job_id)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.type == "JobTimeout" and "hard time limit" in job.error.message
    # predict returned after all; its late result was counted, not written.
    assert job.duplicate_executions == 1


def test_job_started_too_often_is_dead_lettered_without_running(store: JobStore) -> None:
    rt = _spec_runtime(store, Recorder, max_deliveries=2, max_retries=1)
    job_id = new_job(store)
    for _ in range(3):  # three earlier deliveries whose workers died
        store.start(job_id, "dead-worker", datetime.now(UTC))
    rt.run_batch("recorder", [WorkItem(job_id, {"x": 1})])
    assert Recorder.calls == []
    job = store.get(job_id)
    assert job.status == JobStatus.FAILED and job.error is not None
    assert job.error.type == "DeadLetter"
    assert store.list(error_type="DeadLetter").jobs[0].id == job_id
