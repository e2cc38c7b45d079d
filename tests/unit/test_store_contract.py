"""The job store contract: the rules of ``inferq.queue.store`` that every store keeps.

``StoreContract`` holds the tests; a subclass names its store with a ``store_target``
fixture returning ``(url, namespace)``. Here the contract runs on SQLite in ``tmp_path``,
with no server; ``tests/integration/test_stores.py`` runs the same class against the real
Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inferq.errors import ConfigError, JobConflict, JobNotFound, StoreUnavailable
from inferq.queue.sql_store import SqlJobStore, sqlite_events_dir
from inferq.queue.store import JobEvents, JobStore, create_store
from inferq.schemas import (
    FinishItem,
    Job,
    JobError,
    JobMetrics,
    JobStatus,
    WebhookAttempt,
    WorkerInfo,
    new_job_id,
)

StoreTarget = tuple[str, str]
MakeStore = Callable[..., JobStore]

#: How long an announcement may take to arrive: far below any polling interval worth having.
EVENT_TIMEOUT_S = 2.0


def new_job(model: str = "echo", **fields: Any) -> Job:
    """A fresh queued job, as the API would create it."""
    values: dict[str, Any] = {
        "id": new_job_id(),
        "model": model,
        "status": JobStatus.QUEUED,
        "input": {"text": "hello"},
        "created_at": datetime.now(UTC),
    }
    values.update(fields)
    return Job(**values)


#: A fixed instant for transitions whose time does not matter to the test.
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def submit(store: JobStore, model: str = "echo", owner: str | None = None, **fields: Any) -> Job:
    """Create a job in ``store`` and return it."""
    job = new_job(model, **fields)
    assert store.create(job, owner=owner).id == job.id
    return job


def fail(store: JobStore, job_id: str, error_type: str) -> bool:
    """Finish a job as failed with an error of ``error_type``."""
    error = JobError(type=error_type, message="it broke")
    return store.finish(job_id, JobStatus.FAILED, error=error, finished_at=datetime.now(UTC))


def webhook_attempt(n: int, status_code: int | None = 500) -> WebhookAttempt:
    """The ``n``-th try at delivering a webhook."""
    return WebhookAttempt(
        at=datetime.now(UTC),
        event="completed",
        message_id=f"msg-{n}",
        status_code=status_code,
        error=None if status_code == 200 else "server error",
        duration_ms=12.5,
    )


def finish_ok(store: JobStore, job_id: str, output: Any = "done") -> bool:
    """Finish a job as succeeded, now."""
    return store.finish(job_id, JobStatus.SUCCEEDED, output=output, finished_at=datetime.now(UTC))


def run_async(coro: Any) -> Any:
    """Run a coroutine to its end (pytest-asyncio is not a dependency)."""
    return asyncio.run(coro)


async def started(events: JobEvents) -> JobEvents:
    """``events``, started."""
    await events.start()
    return events


class StoreContract:
    """The tests every ``JobStore`` passes. Subclasses provide ``store_target``."""

    @pytest.fixture
    def store_target(self) -> StoreTarget:
        """``(url, namespace)`` of the store under test; a fresh namespace per test."""
        raise NotImplementedError

    @pytest.fixture
    def make_store(self, store_target: StoreTarget) -> Iterator[MakeStore]:
        """Open stores on the target (a second one stands for another process)."""
        url, namespace = store_target
        stores: list[JobStore] = []

        def make(result_ttl_s: int = 3600) -> JobStore:
            store = create_store(url, namespace=namespace, result_ttl_s=result_ttl_s)
            stores.append(store)
            return store

        yield make
        for store in stores:
            store.close()

    @pytest.fixture
    def store(self, make_store: MakeStore) -> JobStore:
        """A store with a one-hour result TTL."""
        return make_store()

    # --- create and read --------------------------------------------------------------------

    def test_created_job_reads_back_queued_with_utc_datetimes(self, store: JobStore) -> None:
        job = new_job(
            input={"text": "hi", "n": 3, "nested": {"a": [1, 2.5, None]}, "empty": []},
            webhook="https://example.com/hook",
            webhook_events=["start", "completed"],
        )
        store.create(job, owner="alice")
        got = store.get(job.id)
        assert got == job
        assert got.created_at.utcoffset() == timedelta(0)
        assert got.status is JobStatus.QUEUED

    def test_naive_datetimes_are_taken_as_utc(self, store: JobStore) -> None:
        created = datetime(2030, 1, 2, 3, 4, 5, 678000)
        job = submit(store, created_at=created)
        assert store.get(job.id).created_at == created.replace(tzinfo=UTC)

    def test_create_with_an_existing_id_conflicts(self, store: JobStore) -> None:
        job = submit(store)
        with pytest.raises(JobConflict):
            store.create(job)

    def test_unknown_id_is_not_found(self, store: JobStore) -> None:
        missing = new_job_id()
        with pytest.raises(JobNotFound):
            store.get(missing)
        with pytest.raises(JobNotFound):
            store.start(missing, "w1", datetime.now(UTC))
        with pytest.raises(JobNotFound):
            finish_ok(store, missing)
        with pytest.raises(JobNotFound):
            store.cancel(missing)
        store.delete(missing)  # deleting nothing is fine

    def test_delete_removes_the_job_and_its_listing(self, store: JobStore) -> None:
        model = f"m-{uuid.uuid4().hex[:8]}"
        job = submit(store, model)
        store.delete(job.id)
        with pytest.raises(JobNotFound):
            store.get(job.id)
        assert store.list(model=model).jobs == []

    # --- transitions ------------------------------------------------------------------------

    def test_start_marks_a_queued_job_running(self, store: JobStore) -> None:
        job = submit(store)
        at = datetime.now(UTC)
        running = store.start(job.id, "worker-1", at)
        assert running is not None
        assert running.status is JobStatus.RUNNING
        assert (running.worker, running.started_at) == ("worker-1", at)
        assert store.get(job.id) == running

    def test_start_again_on_redelivery_moves_it_to_the_new_worker(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        again = store.start(job.id, "worker-2", datetime.now(UTC))
        assert again is not None
        assert (again.status, again.worker) == (JobStatus.RUNNING, "worker-2")

    def test_start_on_a_canceled_job_returns_none(self, store: JobStore) -> None:
        job = submit(store)
        store.cancel(job.id)
        assert store.start(job.id, "worker-1", datetime.now(UTC)) is None
        assert store.get(job.id).status is JobStatus.CANCELED

    def test_start_on_a_finished_job_returns_none(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        assert finish_ok(store, job.id)
        assert store.start(job.id, "worker-2", datetime.now(UTC)) is None
        assert store.get(job.id).worker == "worker-1"

    def test_finish_stores_output_and_metrics_exactly(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        # Floats with 17 significant digits, big ints and empty containers must survive.
        output = {"p": [0.12345678901234566, 1e-300], "big": 2**62 + 1, "e": [], "o": {}}
        at = datetime.now(UTC)
        metrics = JobMetrics(queue_ms=1.5, inference_ms=20.25, batch_size=4)
        assert store.finish(
            job.id, JobStatus.SUCCEEDED, output=output, metrics=metrics, finished_at=at
        )
        got = store.get(job.id)
        assert (got.status, got.output, got.error) == (JobStatus.SUCCEEDED, output, None)
        assert (got.metrics, got.finished_at, got.worker) == (metrics, at, "worker-1")

    def test_failed_job_keeps_its_error(self, store: JobStore) -> None:
        job = submit(store)
        error = JobError(type="ValueError", message="bad pixel")
        assert store.finish(job.id, JobStatus.FAILED, error=error, finished_at=datetime.now(UTC))
        got = store.get(job.id)
        assert (got.status, got.error, got.output) == (JobStatus.FAILED, error, None)

    def test_finish_refuses_a_status_that_is_not_terminal(self, store: JobStore) -> None:
        job = submit(store)
        with pytest.raises(ValueError):
            store.finish(job.id, JobStatus.RUNNING, finished_at=datetime.now(UTC))

    def test_second_terminal_write_is_ignored(self, store: JobStore) -> None:
        job = submit(store)
        assert finish_ok(store, job.id, output="first")
        before = store.get(job.id)
        error = JobError(type="RuntimeError", message="late duplicate")
        assert not store.finish(
            job.id, JobStatus.FAILED, error=error, finished_at=datetime.now(UTC)
        )
        after = store.get(job.id)
        assert after.duplicate_executions == 1
        assert after.model_copy(update={"duplicate_executions": 0}) == before

    def test_finish_after_cancel_is_ignored(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        store.cancel(job.id)
        assert not finish_ok(store, job.id)
        got = store.get(job.id)
        assert (got.status, got.output) == (JobStatus.CANCELED, None)

    def test_concurrent_finishes_have_exactly_one_winner(self, make_store: MakeStore) -> None:
        stores = [make_store() for _ in range(8)]
        job = submit(stores[0])
        barrier = threading.Barrier(len(stores))
        results: list[bool] = []

        def finish(store: JobStore, n: int) -> None:
            barrier.wait()
            results.append(finish_ok(store, job.id, output=n))

        threads = [threading.Thread(target=finish, args=(s, n)) for n, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(results) == [False] * 7 + [True]
        assert stores[0].get(job.id).output in range(len(stores))

    def test_cancel_moves_a_queued_job_to_canceled(self, store: JobStore) -> None:
        job = submit(store)
        canceled = store.cancel(job.id)
        assert canceled.status is JobStatus.CANCELED
        assert canceled.finished_at is not None
        assert store.get(job.id) == canceled

    def test_cancel_moves_a_running_job_to_canceled(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        assert store.cancel(job.id).status is JobStatus.CANCELED

    @pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED])
    def test_cancel_of_a_terminal_job_conflicts(self, store: JobStore, status: JobStatus) -> None:
        job = submit(store)
        store.finish(job.id, status, finished_at=datetime.now(UTC))
        with pytest.raises(JobConflict):
            store.cancel(job.id)
        assert store.get(job.id).status is status

    def test_cancel_twice_conflicts(self, store: JobStore) -> None:
        job = submit(store)
        store.cancel(job.id)
        with pytest.raises(JobConflict):
            store.cancel(job.id)

    # --- owners -----------------------------------------------------------------------------

    def test_start_many_starts_queued_and_skips_terminal_and_unknown(
            self, store: JobStore) -> None:
        queued, canceled = submit(store, "m0"), submit(store, "m0")
        store.cancel(canceled.id)
        started = store.start_many([queued.id, canceled.id, "no-such-job"], "w1", NOW)
        assert started[0] is not None and started[0].status is JobStatus.RUNNING
        assert started[0].attempts == 1
        assert started[1:] == [None, None]

    def test_finish_many_is_first_write_wins_per_job(self, store: JobStore) -> None:
        a, b = submit(store, "m0"), submit(store, "m0")
        store.start_many([a.id, b.id], "w1", NOW)
        assert store.finish(a.id, JobStatus.FAILED, finished_at=NOW)
        written = store.finish_many([
            FinishItem(a.id, JobStatus.SUCCEEDED, output={"late": True}, finished_at=NOW),
            FinishItem(b.id, JobStatus.SUCCEEDED, output={"x": [1.5, []]}, finished_at=NOW),
            FinishItem("no-such-job", JobStatus.SUCCEEDED, finished_at=NOW),
        ])
        assert written == [False, True, None]
        late = store.get(a.id)
        assert late.status is JobStatus.FAILED and late.duplicate_executions == 1
        assert store.get(b.id).output == {"x": [1.5, []]}

    def test_owner_of_names_the_submitting_key(self, store: JobStore) -> None:
        mine = submit(store, "m0", owner="key_a")
        nobody = submit(store, "m0")
        assert store.owner_of(mine.id) == "key_a"
        assert store.owner_of(nobody.id) is None
        with pytest.raises(JobNotFound):
            store.owner_of("no-such-job")

    def test_another_owner_can_neither_see_nor_cancel_a_job(self, store: JobStore) -> None:
        model = f"m-{uuid.uuid4().hex[:8]}"
        job = submit(store, model, owner="alice")
        assert store.get(job.id, owner="alice").id == job.id
        with pytest.raises(JobNotFound):
            store.get(job.id, owner="bob")
        with pytest.raises(JobNotFound):
            store.cancel(job.id, owner="bob")
        assert store.get(job.id).status is JobStatus.QUEUED
        assert store.list(model=model, owner="bob").jobs == []
        assert [j.id for j in store.list(model=model, owner="alice").jobs] == [job.id]
        assert store.cancel(job.id, owner="alice").status is JobStatus.CANCELED

    def test_a_job_without_owner_is_hidden_from_owners(self, store: JobStore) -> None:
        job = submit(store)
        with pytest.raises(JobNotFound):
            store.get(job.id, owner="alice")
        assert store.get(job.id).id == job.id

    # --- listing ----------------------------------------------------------------------------

    def test_list_pages_newest_first_without_gaps_or_duplicates(self, store: JobStore) -> None:
        model = f"m-{uuid.uuid4().hex[:8]}"
        ids = [submit(store, model).id for _ in range(25)]
        seen: list[str] = []
        sizes: list[int] = []
        cursor: str | None = None
        for _ in range(10):
            page = store.list(model=model, limit=10, cursor=cursor)
            seen += [j.id for j in page.jobs]
            sizes.append(len(page.jobs))
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sizes == [10, 10, 5]
        assert seen == sorted(ids, reverse=True)

    def test_list_without_filters_pages_every_job(self, store: JobStore) -> None:
        ids = {submit(store, f"m{n % 3}").id for n in range(12)}
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = store.list(limit=5, cursor=cursor)
            seen += [j.id for j in page.jobs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        # Other tests may share a server; this test's jobs come in order, each once.
        mine = [i for i in seen if i in ids]
        assert mine == sorted(ids, reverse=True)
        assert len(seen) == len(set(seen))

    def test_list_filters_by_model_and_status(self, store: JobStore) -> None:
        tag = uuid.uuid4().hex[:8]
        a, b = f"a-{tag}", f"b-{tag}"
        a_jobs = [submit(store, a) for _ in range(6)]
        b_jobs = [submit(store, b) for _ in range(3)]
        for job in a_jobs[::2]:
            finish_ok(store, job.id)
        store.cancel(b_jobs[0].id)

        def ids(**filters: Any) -> list[str]:
            return [j.id for j in store.list(limit=100, **filters).jobs]

        def newest_first(jobs: list[Job]) -> list[str]:
            # Ids made in the same millisecond are ordered by their random bits, not by
            # creation: the order is the ids' order, by the contract.
            return sorted((j.id for j in jobs), reverse=True)

        assert ids(model=a) == newest_first(a_jobs)
        assert ids(model=b) == newest_first(b_jobs)
        assert ids(model=a, status=JobStatus.SUCCEEDED) == newest_first(a_jobs[::2])
        assert ids(model=a, status=JobStatus.QUEUED) == newest_first(a_jobs[1::2])
        assert ids(model=b, status=JobStatus.CANCELED) == [b_jobs[0].id]
        assert ids(model=b, status=JobStatus.FAILED) == []

    def test_status_filter_pages_without_gaps(self, store: JobStore) -> None:
        model = f"m-{uuid.uuid4().hex[:8]}"
        jobs = [submit(store, model) for _ in range(20)]
        done = [j.id for j in jobs[::3]]
        for job_id in done:
            finish_ok(store, job_id)
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = store.list(model=model, status=JobStatus.SUCCEEDED, limit=2, cursor=cursor)
            assert all(j.status is JobStatus.SUCCEEDED for j in page.jobs)
            seen += [j.id for j in page.jobs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == sorted(done, reverse=True)

    def test_list_by_owner_across_models(self, store: JobStore) -> None:
        owner = f"owner-{uuid.uuid4().hex[:8]}"
        mine = [submit(store, f"m{n}", owner=owner).id for n in range(4)]
        submit(store, "m0", owner=f"other-{owner}")
        page = store.list(owner=owner, limit=10)
        assert [j.id for j in page.jobs] == sorted(mine, reverse=True)
        assert [j.id for j in store.list(owner=owner, model="m1").jobs] == [mine[1]]

    def test_list_rejects_a_limit_below_one(self, store: JobStore) -> None:
        with pytest.raises(ValueError):
            store.list(limit=0)

    # --- idempotency ------------------------------------------------------------------------

    def test_idempotent_replay_returns_the_same_job_and_writes_one_record(
        self, store: JobStore
    ) -> None:
        model = f"m-{uuid.uuid4().hex[:8]}"
        first = new_job(model)
        created = store.create(first, owner="alice", idempotency_key="k1", request_hash="h1")
        assert created == first
        replay = store.create(
            new_job(model), owner="alice", idempotency_key="k1", request_hash="h1"
        )
        assert replay == created
        assert [j.id for j in store.list(model=model).jobs] == [first.id]

    def test_idempotency_key_with_a_different_request_conflicts(self, store: JobStore) -> None:
        model = f"m-{uuid.uuid4().hex[:8]}"
        store.create(new_job(model), owner="alice", idempotency_key="k1", request_hash="h1")
        with pytest.raises(JobConflict, match="different request"):
            store.create(new_job(model), owner="alice", idempotency_key="k1", request_hash="h2")
        assert len(store.list(model=model).jobs) == 1

    def test_idempotency_keys_are_per_owner(self, store: JobStore) -> None:
        model = f"m-{uuid.uuid4().hex[:8]}"
        made = {
            owner: store.create(new_job(model), owner, idempotency_key="k", request_hash="h")
            for owner in ("alice", "bob", None, "")
        }
        assert len({job.id for job in made.values()}) == 4
        again = store.create(new_job(model), None, idempotency_key="k", request_hash="h")
        assert again.id == made[None].id

    def test_idempotent_replay_returns_the_job_as_it_is_now(self, store: JobStore) -> None:
        first = store.create(new_job(), idempotency_key="k", request_hash="h")
        store.start(first.id, "worker-1", datetime.now(UTC))
        finish_ok(store, first.id, output="out")
        replay = store.create(new_job(), idempotency_key="k", request_hash="h")
        assert (replay.id, replay.status, replay.output) == (first.id, JobStatus.SUCCEEDED, "out")

    def test_idempotency_key_expires_with_its_job(self, make_store: MakeStore) -> None:
        store = make_store(result_ttl_s=1)
        first = store.create(new_job(), idempotency_key="k", request_hash="h")
        finish_ok(store, first.id)
        time.sleep(1.5)
        second = store.create(new_job(), idempotency_key="k", request_hash="other")
        assert second.id != first.id
        assert store.get(second.id).status is JobStatus.QUEUED

    def test_a_deleted_job_frees_its_idempotency_key(self, store: JobStore) -> None:
        first = store.create(new_job(), idempotency_key="k", request_hash="h")
        store.delete(first.id)
        second = store.create(new_job(), idempotency_key="k", request_hash="h")
        assert second.id != first.id

    def test_concurrent_creates_with_one_key_make_one_job(self, make_store: MakeStore) -> None:
        stores = [make_store() for _ in range(8)]
        model = f"m-{uuid.uuid4().hex[:8]}"
        barrier = threading.Barrier(len(stores))
        results: list[str] = []
        errors: list[BaseException] = []

        def create(store: JobStore) -> None:
            barrier.wait()
            try:
                job = store.create(
                    new_job(model), owner="alice", idempotency_key="race", request_hash="h"
                )
                results.append(job.id)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert errors == []
        assert len(results) == len(stores)
        assert len(set(results)) == 1
        assert [j.id for j in stores[0].list(model=model).jobs] == results[:1]
        assert stores[0].count_active("alice") == 1

    # --- attempts, duplicates, requeue ------------------------------------------------------

    def test_attempts_count_every_start(self, store: JobStore) -> None:
        job = submit(store)
        assert store.get(job.id).attempts == 0
        first = store.start(job.id, "worker-1", datetime.now(UTC))
        second = store.start(job.id, "worker-2", datetime.now(UTC))
        assert first is not None and second is not None
        assert (first.attempts, second.attempts) == (1, 2)
        assert store.get(job.id).attempts == 2

    def test_start_of_a_terminal_job_does_not_count_an_attempt(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        finish_ok(store, job.id)
        assert store.start(job.id, "worker-2", datetime.now(UTC)) is None
        assert store.get(job.id).attempts == 1

    def test_duplicate_finishes_are_counted_not_written(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        assert finish_ok(store, job.id, output="first")
        assert not finish_ok(store, job.id, output="second")
        assert not fail(store, job.id, "RuntimeError")
        got = store.get(job.id)
        assert (got.status, got.output, got.error) == (JobStatus.SUCCEEDED, "first", None)
        assert got.duplicate_executions == 2

    def test_a_finish_after_cancel_counts_a_duplicate_execution(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        store.cancel(job.id)
        assert not finish_ok(store, job.id)
        got = store.get(job.id)
        assert (got.status, got.duplicate_executions) == (JobStatus.CANCELED, 1)

    def test_requeue_moves_a_running_job_back_to_queued(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))
        assert store.requeue(job.id)
        got = store.get(job.id)
        assert (got.status, got.started_at, got.attempts) == (JobStatus.QUEUED, None, 1)
        again = store.start(job.id, "worker-2", datetime.now(UTC))
        assert again is not None
        assert (again.status, again.worker, again.attempts) == (JobStatus.RUNNING, "worker-2", 2)

    def test_requeue_refuses_a_job_that_is_not_running(self, store: JobStore) -> None:
        queued = submit(store)
        assert not store.requeue(queued.id)
        done = submit(store)
        store.start(done.id, "worker-1", datetime.now(UTC))
        finish_ok(store, done.id)
        assert not store.requeue(done.id)
        assert store.get(done.id).status is JobStatus.SUCCEEDED
        assert store.get(queued.id).status is JobStatus.QUEUED
        assert not store.requeue(new_job_id())

    def test_requeue_is_announced(self, store: JobStore) -> None:
        job = submit(store)
        store.start(job.id, "worker-1", datetime.now(UTC))

        async def scenario() -> str:
            events = await started(store.create_events())
            try:
                async with events.subscribe(job.id) as queue:
                    assert await asyncio.to_thread(store.requeue, job.id)
                    return await asyncio.wait_for(queue.get(), EVENT_TIMEOUT_S)
            finally:
                await events.stop()

        assert run_async(scenario()) == "queued"

    # --- webhook attempts -------------------------------------------------------------------

    def test_webhook_attempts_are_appended_in_a_terminal_state(self, store: JobStore) -> None:
        job = submit(store)
        store.add_webhook_attempt(job.id, webhook_attempt(0))
        finish_ok(store, job.id)
        before = store.get(job.id)
        store.add_webhook_attempt(job.id, webhook_attempt(1, status_code=None))
        store.add_webhook_attempt(job.id, webhook_attempt(2, status_code=200))
        got = store.get(job.id)
        assert [a.message_id for a in got.webhook_attempts] == ["msg-0", "msg-1", "msg-2"]
        assert got.webhook_attempts[2] == webhook_attempt(2, 200).model_copy(
            update={"at": got.webhook_attempts[2].at}
        )
        assert got.model_copy(update={"webhook_attempts": before.webhook_attempts}) == before

    def test_webhook_attempts_keep_the_latest_fifty(self, store: JobStore) -> None:
        job = submit(store)
        for n in range(53):
            store.add_webhook_attempt(job.id, webhook_attempt(n))
        attempts = store.get(job.id).webhook_attempts
        assert [a.message_id for a in attempts] == [f"msg-{n}" for n in range(3, 53)]

    def test_webhook_attempt_on_an_unknown_job_is_not_found(self, store: JobStore) -> None:
        with pytest.raises(JobNotFound):
            store.add_webhook_attempt(new_job_id(), webhook_attempt(0))

    def test_webhook_attempt_keeps_a_finished_job_expiring(self, make_store: MakeStore) -> None:
        store = make_store(result_ttl_s=1)
        job = submit(store)
        finish_ok(store, job.id)
        store.add_webhook_attempt(job.id, webhook_attempt(0))
        time.sleep(1.5)
        with pytest.raises(JobNotFound):
            store.get(job.id)
        with pytest.raises(JobNotFound):
            store.add_webhook_attempt(job.id, webhook_attempt(1))

    def test_concurrent_webhook_attempts_are_all_kept(self, make_store: MakeStore) -> None:
        stores = [make_store() for _ in range(4)]
        job = submit(stores[0])
        barrier = threading.Barrier(len(stores))

        def add(store: JobStore, n: int) -> None:
            barrier.wait()
            for k in range(5):
                store.add_webhook_attempt(job.id, webhook_attempt(n * 10 + k))

        threads = [threading.Thread(target=add, args=(s, n)) for n, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert len(stores[0].get(job.id).webhook_attempts) == 20

    # --- overdue ----------------------------------------------------------------------------

    def test_overdue_lists_running_jobs_that_started_before_the_cutoff(
        self, store: JobStore
    ) -> None:
        now = datetime.now(UTC)
        old, older, fresh, queued, finished, requeued = (submit(store) for _ in range(6))
        store.start(old.id, "w", now - timedelta(minutes=10))
        store.start(older.id, "w", now - timedelta(minutes=20))
        store.start(fresh.id, "w", now)
        store.start(finished.id, "w", now - timedelta(minutes=30))
        finish_ok(store, finished.id)
        store.start(requeued.id, "w", now - timedelta(minutes=30))
        store.requeue(requeued.id)
        mine = {old.id, older.id, fresh.id, queued.id, finished.id, requeued.id}

        def overdue(cutoff: datetime, limit: int = 100) -> list[str]:
            # Other tests may share a server: only this test's jobs.
            return [j.id for j in store.overdue(cutoff, limit) if j.id in mine]

        cutoff = now - timedelta(minutes=5)
        assert sorted(overdue(cutoff)) == sorted([old.id, older.id])
        assert all(j.status is JobStatus.RUNNING for j in store.overdue(cutoff))
        assert overdue(now - timedelta(minutes=15)) == [older.id]
        store.cancel(older.id)
        assert overdue(cutoff) == [old.id]

    def test_overdue_sees_a_redelivered_job_by_its_latest_start(self, store: JobStore) -> None:
        now = datetime.now(UTC)
        job = submit(store)
        store.start(job.id, "w1", now - timedelta(minutes=10))
        store.start(job.id, "w2", now)
        assert job.id not in [j.id for j in store.overdue(now - timedelta(minutes=5))]

    def test_overdue_honours_its_limit(self, store: JobStore) -> None:
        long_ago = datetime(2000, 1, 1, tzinfo=UTC)
        for n in range(3):
            job = submit(store)
            store.start(job.id, "w", long_ago + timedelta(seconds=n))
        assert len(store.overdue(long_ago + timedelta(seconds=10), limit=2)) == 2

    # --- in-flight counts -------------------------------------------------------------------

    def test_count_active_counts_queued_and_running_jobs_per_owner(self, store: JobStore) -> None:
        owner = f"owner-{uuid.uuid4().hex[:8]}"
        other = f"other-{owner}"
        jobs = [submit(store, owner=owner) for _ in range(4)]
        submit(store, owner=other)
        assert store.count_active(owner) == 4
        store.start(jobs[0].id, "w", datetime.now(UTC))
        assert store.count_active(owner) == 4
        finish_ok(store, jobs[0].id)
        assert store.count_active(owner) == 3
        store.cancel(jobs[1].id)
        assert store.count_active(owner) == 2
        store.start(jobs[2].id, "w", datetime.now(UTC))
        store.requeue(jobs[2].id)
        assert store.count_active(owner) == 2
        fail(store, jobs[2].id, "ValueError")
        store.delete(jobs[3].id)
        assert store.count_active(owner) == 0
        assert store.count_active(other) == 1
        assert store.count_active(f"nobody-{owner}") == 0

    def test_count_active_without_owner_counts_the_unowned_jobs(self, store: JobStore) -> None:
        before = store.count_active(None)
        job = submit(store)
        submit(store, owner=f"owner-{uuid.uuid4().hex[:8]}")
        assert store.count_active(None) == before + 1
        finish_ok(store, job.id)
        assert store.count_active(None) == before

    def test_count_active_forgets_jobs_that_expired_while_waiting(
        self, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import inferq.queue.redis_store as redis_store
        import inferq.queue.sql_store as sql_store

        # Without the week-long margin a queued job expires after the result TTL.
        for module in (redis_store, sql_store):
            monkeypatch.setattr(module, "PENDING_TTL_MARGIN_S", 0)
        owner = f"owner-{uuid.uuid4().hex[:8]}"
        store = make_store(result_ttl_s=1)
        submit(store, owner=owner)
        assert store.count_active(owner) == 1
        time.sleep(2.1)
        assert store.count_active(owner) == 0

    # --- error type filter ------------------------------------------------------------------

    def test_list_filters_failed_jobs_by_error_type(self, store: JobStore) -> None:
        model = f"m-{uuid.uuid4().hex[:8]}"
        dead = [submit(store, model) for _ in range(3)]
        other = submit(store, model)
        ok = submit(store, model)
        for job in dead:
            fail(store, job.id, "DeadLetter")
        fail(store, other.id, "ValueError")
        finish_ok(store, ok.id)

        def ids(**filters: Any) -> list[str]:
            return [j.id for j in store.list(model=model, limit=100, **filters).jobs]

        assert ids(error_type="DeadLetter") == sorted((j.id for j in dead), reverse=True)
        assert ids(error_type="ValueError") == [other.id]
        assert ids(error_type="DeadLetter", status=JobStatus.FAILED) == ids(error_type="DeadLetter")
        assert ids(error_type="DeadLetter", status=JobStatus.SUCCEEDED) == []
        assert ids(error_type="KeyError") == []
        page = store.list(model=model, error_type="DeadLetter", limit=2)
        rest = store.list(model=model, error_type="DeadLetter", limit=2, cursor=page.next_cursor)
        assert [j.id for j in page.jobs + rest.jobs] == ids(error_type="DeadLetter")
        assert rest.next_cursor is None

    # --- expiry -----------------------------------------------------------------------------

    def test_finished_job_expires_after_result_ttl(self, make_store: MakeStore) -> None:
        store = make_store(result_ttl_s=1)
        model = f"m-{uuid.uuid4().hex[:8]}"
        finished, canceled, waiting = (submit(store, model) for _ in range(3))
        finish_ok(store, finished.id)
        store.cancel(canceled.id)
        assert store.get(finished.id).status is JobStatus.SUCCEEDED
        time.sleep(1.5)
        for job in (finished, canceled):
            with pytest.raises(JobNotFound):
                store.get(job.id)
        # A job still waiting outlives the result TTL by a wide margin.
        assert store.get(waiting.id).status is JobStatus.QUEUED
        assert [j.id for j in store.list(model=model).jobs] == [waiting.id]
        with pytest.raises(JobNotFound):
            store.cancel(finished.id)
        with pytest.raises(JobNotFound):
            finish_ok(store, canceled.id)

    # --- workers ----------------------------------------------------------------------------

    def test_heartbeat_lists_a_worker_until_its_ttl_runs_out(self, store: JobStore) -> None:
        tag = uuid.uuid4().hex[:8]

        def info(name: str, models: list[str]) -> WorkerInfo:
            return WorkerInfo(
                id=f"{name}-{tag}",
                models=models,
                hostname="host",
                pid=42,
                last_seen=datetime.now(UTC),
            )

        store.heartbeat(info("short", ["echo"]), ttl_s=0.5)
        store.heartbeat(info("long", ["echo"]), ttl_s=60)
        store.heartbeat(info("long", ["echo", "mnist"]), ttl_s=60)  # a beat updates the entry
        mine = {w.id: w for w in store.workers() if w.id.endswith(tag)}
        assert set(mine) == {f"short-{tag}", f"long-{tag}"}
        assert mine[f"long-{tag}"].models == ["echo", "mnist"]
        time.sleep(0.8)
        assert [w.id for w in store.workers() if w.id.endswith(tag)] == [f"long-{tag}"]

    def test_ping_answers(self, store: JobStore) -> None:
        store.ping()

    # --- events -----------------------------------------------------------------------------

    def test_events_announce_a_finish_made_by_another_store(self, make_store: MakeStore) -> None:
        api, worker = make_store(), make_store()
        job = submit(api)

        async def scenario() -> list[str]:
            events = await started(api.create_events())
            try:
                async with events.subscribe(job.id) as queue:
                    at = datetime.now(UTC)
                    await asyncio.to_thread(worker.start, job.id, "worker-1", at)
                    first = await asyncio.wait_for(queue.get(), EVENT_TIMEOUT_S)
                    # From a plain thread, as a worker's result callback would run.
                    thread = threading.Thread(target=finish_ok, args=(worker, job.id))
                    thread.start()
                    second = await asyncio.wait_for(queue.get(), EVENT_TIMEOUT_S)
                    thread.join()
                    return [first, second]
            finally:
                await events.stop()

        assert run_async(scenario()) == ["running", "succeeded"]

    def test_events_skip_writes_that_changed_nothing(self, make_store: MakeStore) -> None:
        store = make_store()
        job = submit(store)
        finish_ok(store, job.id)

        async def scenario() -> bool:
            events = await started(store.create_events())
            try:
                async with events.subscribe(job.id) as queue:
                    assert not await asyncio.to_thread(finish_ok, store, job.id)
                    assert (
                        await asyncio.to_thread(store.start, job.id, "w", datetime.now(UTC)) is None
                    )
                    await asyncio.sleep(0.3)
                    return queue.empty()
            finally:
                await events.stop()

        assert run_async(scenario())

    def test_events_reach_this_process_from_another_process(
        self, make_store: MakeStore, store_target: StoreTarget
    ) -> None:
        store = make_store()
        job = submit(store)
        url, namespace = store_target
        script = (
            "import sys\n"
            "from datetime import UTC, datetime\n"
            "from inferq.queue.store import create_store\n"
            "from inferq.schemas import JobStatus\n"
            "store = create_store(sys.argv[1], namespace=sys.argv[2], result_ttl_s=3600)\n"
            "ok = store.finish(sys.argv[3], JobStatus.FAILED, finished_at=datetime.now(UTC))\n"
            "sys.exit(0 if ok else 1)\n"
        )

        async def scenario() -> str:
            events = await started(store.create_events())
            try:
                async with events.subscribe(job.id) as queue:
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-c", script, url, namespace, job.id
                    )
                    status = await asyncio.wait_for(queue.get(), 30)
                    assert await proc.wait() == 0
                    return status
            finally:
                await events.stop()

        assert run_async(scenario()) == "failed"


class TestSqliteStore(StoreContract):
    """The contract on an SQLite file, as ``inferq serve`` uses it."""

    @pytest.fixture
    def store_target(self, tmp_path: Path) -> StoreTarget:
        return f"sqlite:///{tmp_path}/data/jobs.db", "inferq"


# --- SQLite's own announcements ------------------------------------------------------------


def test_sqlite_store_removes_the_socket_of_a_dead_listener(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path}/jobs.db", namespace="inferq", result_ttl_s=60)
    job = submit(store)
    folder = sqlite_events_dir(tmp_path / "jobs.db")
    folder.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(folder / "999999-deadbeef.sock"))
    dead.close()  # the file stays, as when a process is killed
    finish_ok(store, job.id)
    assert list(folder.iterdir()) == []
    folder.rmdir()
    store.close()


def upgrades_a_table_of_an_older_version(store: JobStore) -> None:
    """Make the jobs table as the version before attempts and idempotency did, with one job
    in it, then check ``store`` (not used before) adds what is missing and works on it."""
    from sqlalchemy import JSON, Column, DateTime, MetaData, String, Table, insert

    assert isinstance(store, SqlJobStore)
    old = Table(
        f"{store.namespace}_jobs",
        MetaData(),
        Column("id", String, primary_key=True),
        Column("model", String, nullable=False),
        Column("status", String(16), nullable=False),
        Column("owner", String),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("started_at", DateTime(timezone=True)),
        Column("finished_at", DateTime(timezone=True)),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("worker", String),
        Column("input", JSON),
        Column("output", JSON),
        Column("error", JSON),
        Column("metrics", JSON),
        Column("webhook", String),
        Column("webhook_events", JSON),
    )
    engine = store._engine
    old.metadata.create_all(engine)
    old_id = new_job_id()
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(old).values(
                id=old_id,
                model="echo",
                status="queued",
                owner="alice",
                created_at=now,
                expires_at=now + timedelta(hours=1),
                input={},
                metrics={},
                webhook_events=[],
            )
        )
    got = store.get(old_id)
    assert (got.attempts, got.duplicate_executions, got.webhook_attempts) == (0, 0, [])
    assert store.count_active("alice") == 1
    running = store.start(old_id, "w", datetime.now(UTC))
    assert running is not None and running.attempts == 1
    first = store.create(new_job(), "alice", idempotency_key="k", request_hash="h")
    assert store.create(new_job(), "alice", idempotency_key="k", request_hash="h") == first
    with pytest.raises(JobConflict):
        store.create(new_job(), "alice", idempotency_key="k", request_hash="other")


def test_sqlite_store_upgrades_a_table_of_an_older_version(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path}/jobs.db", namespace="inferq", result_ttl_s=60)
    try:
        upgrades_a_table_of_an_older_version(store)
    finally:
        store.close()
    # The next start finds nothing to add.
    again = create_store(f"sqlite:///{tmp_path}/jobs.db", namespace="inferq", result_ttl_s=60)
    assert again.count_active("alice") == 2
    again.close()


def test_sqlite_events_folder_is_beside_a_database_with_a_short_path() -> None:
    database = Path("/tmp/iq/jobs.db")
    assert sqlite_events_dir(database) == Path(f"{database.resolve()}.events")


def test_sqlite_events_use_a_short_folder_when_the_path_is_long(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "jobs.db"
    folder = sqlite_events_dir(deep)
    assert len(str(folder)) < 70
    assert folder == sqlite_events_dir(deep)  # every process finds the same one

    async def scenario() -> str:
        store = create_store(f"sqlite:///{deep}", namespace="inferq", result_ttl_s=60)
        job = submit(store)
        events = await started(store.create_events())
        try:
            async with events.subscribe(job.id) as queue:
                await asyncio.to_thread(store.cancel, job.id)
                return await asyncio.wait_for(queue.get(), EVENT_TIMEOUT_S)
        finally:
            await events.stop()
            store.close()

    assert run_async(scenario()) == "canceled"


def test_sqlite_store_needs_a_file() -> None:
    with pytest.raises(ConfigError):
        create_store("sqlite:///:memory:", namespace="inferq", result_ttl_s=60)


# --- unreachable servers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:1/0", "postgresql://postgres@127.0.0.1:1/test"],
    ids=["redis", "postgresql"],
)
def test_unreachable_store_raises_store_unavailable(url: str) -> None:
    store = create_store(url, namespace="inferq", result_ttl_s=60)
    started_at = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.get(new_job_id())
    with pytest.raises(StoreUnavailable):
        run_async(store.create_events().start())
    assert time.monotonic() - started_at < 10
    store.close()
