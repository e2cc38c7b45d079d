"""The reaper: jobs still running past their model's deadline end failed (timeout)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.unit.test_runtime import Recorder

from inferq.queue.store import create_store
from inferq.queue.worker_main import REAP_GRACE_S, reap
from inferq.registry import ModelSpec
from inferq.schemas import Job, JobStatus, new_job_id


def test_a_job_running_past_its_deadline_is_failed_and_a_fresh_one_is_left(
        tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path}/jobs.sqlite", namespace="r", result_ttl_s=60)
    specs = {"recorder": ModelSpec("recorder", Recorder, 8, 0.0, time_limit_s=30)}
    now = datetime.now(UTC)
    ids = []
    for started in (now - timedelta(seconds=30 + REAP_GRACE_S + 5), now - timedelta(seconds=5)):
        job = Job(id=new_job_id(), model="recorder", status=JobStatus.QUEUED,
                  created_at=started)
        store.create(job)
        store.start(job.id, "lost-worker", started)
        ids.append(job.id)
    assert reap(store, specs, now) == 1
    abandoned, fresh = (store.get(i) for i in ids)
    assert abandoned.status is JobStatus.FAILED and abandoned.error is not None
    assert abandoned.error.type == "JobTimeout" and "worker was lost" in abandoned.error.message
    assert fresh.status is JobStatus.RUNNING
    assert reap(store, specs, now) == 0  # several reapers: the first write wins
