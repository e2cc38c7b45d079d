"""The job store contract against the real Redis and PostgreSQL, plus what only they have."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from tests.unit.test_store_contract import (
    MakeStore,
    StoreContract,
    StoreTarget,
    finish_ok,
    new_job,
    submit,
    upgrades_a_table_of_an_older_version,
)

from inferq.queue.redis_store import RedisJobStore
from inferq.queue.store import PENDING_TTL_MARGIN_S, JobStore, create_store
from inferq.schemas import JobStatus

pytestmark = pytest.mark.integration


class TestRedisStore(StoreContract):
    """The contract on Redis."""

    @pytest.fixture
    def store_target(self, redis_url: str, redis_namespace: str) -> StoreTarget:
        # A namespace per test keeps listings apart; the session prefix gets it cleaned up.
        return redis_url, f"{redis_namespace}-{uuid.uuid4().hex[:6]}"

    @pytest.fixture
    def client(self, redis_url: str) -> redis.Redis:
        """A plain client, to look at the keys themselves."""
        return redis.Redis.from_url(redis_url)

    def test_finished_job_key_expires_after_result_ttl(
        self, make_store: MakeStore, client: redis.Redis
    ) -> None:
        store = make_store(result_ttl_s=600)
        assert isinstance(store, RedisJobStore)
        job = submit(store)
        key = f"{store.namespace}:job:{job.id}"
        assert 600 < int(client.ttl(key)) <= 600 + PENDING_TTL_MARGIN_S
        finish_ok(store, job.id)
        assert 0 < int(client.ttl(key)) <= 600

    def test_canceled_job_key_expires_after_result_ttl(
        self, make_store: MakeStore, client: redis.Redis
    ) -> None:
        store = make_store(result_ttl_s=600)
        assert isinstance(store, RedisJobStore)
        job = submit(store)
        store.cancel(job.id)
        assert 0 < int(client.ttl(f"{store.namespace}:job:{job.id}")) <= 600

    def test_idempotency_key_expires_with_its_job(
        self, make_store: MakeStore, client: redis.Redis
    ) -> None:
        store = make_store(result_ttl_s=600)
        assert isinstance(store, RedisJobStore)
        job = store.create(new_job(), "alice", idempotency_key="k")
        idem = f"{store.namespace}:idem:alice:k"
        assert client.get(idem) == job.id.encode()
        assert 600 < int(client.ttl(idem)) <= 600 + PENDING_TTL_MARGIN_S
        finish_ok(store, job.id)
        assert 0 < int(client.ttl(idem)) <= 600

    def test_running_and_active_sets_follow_the_job(
        self, make_store: MakeStore, client: redis.Redis
    ) -> None:
        store = make_store()
        assert isinstance(store, RedisJobStore)
        ns = store.namespace
        job = submit(store, owner="alice")
        assert client.zscore(f"{ns}:active:alice", job.id) is not None
        store.start(job.id, "w", datetime.now(UTC))
        assert client.zscore(f"{ns}:running", job.id) is not None
        store.requeue(job.id)
        assert client.zscore(f"{ns}:running", job.id) is None
        store.start(job.id, "w", datetime.now(UTC))
        finish_ok(store, job.id)
        assert client.zscore(f"{ns}:running", job.id) is None
        assert client.zscore(f"{ns}:active:alice", job.id) is None

    def test_overdue_drops_entries_of_vanished_jobs(
        self, make_store: MakeStore, client: redis.Redis
    ) -> None:
        store = make_store()
        assert isinstance(store, RedisJobStore)
        job = submit(store)
        store.start(job.id, "w", datetime.now(UTC) - timedelta(hours=1))
        client.delete(f"{store.namespace}:job:{job.id}")  # as if it expired
        assert store.overdue(datetime.now(UTC)) == []
        assert int(client.zcard(f"{store.namespace}:running")) == 0

    def test_listing_drops_index_entries_of_expired_jobs(
        self, make_store: MakeStore, client: redis.Redis
    ) -> None:
        store = make_store(result_ttl_s=1)
        assert isinstance(store, RedisJobStore)
        job = submit(store, "gone", owner="alice")
        kept = submit(store, "kept")
        finish_ok(store, job.id)
        time.sleep(1.5)
        assert [j.id for j in store.list().jobs] == [kept.id]
        ns = store.namespace
        assert int(client.zcard(f"{ns}:jobs")) == 1
        assert int(client.zcard(f"{ns}:jobs:model:gone")) == 0
        assert int(client.zcard(f"{ns}:jobs:owner:alice")) == 0

    def test_a_page_stops_at_the_scan_budget_and_goes_on_from_there(
        self, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import inferq.queue.redis_store as redis_store

        monkeypatch.setattr(redis_store, "_LIST_SCAN_BUDGET", 5)
        store = make_store()
        jobs = [submit(store) for _ in range(12)]
        wanted = jobs[0]  # the oldest: found only after several budget-limited pages
        store.cancel(wanted.id)
        found: list[str] = []
        cursor: str | None = None
        for _ in range(20):
            page = store.list(status=JobStatus.CANCELED, limit=3, cursor=cursor)
            found += [j.id for j in page.jobs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert found == [wanted.id]


class TestPostgresStore(StoreContract):
    """The contract on PostgreSQL."""

    @pytest.fixture
    def store_target(self, pg_url: str) -> StoreTarget:
        return pg_url, f"t{uuid.uuid4().hex[:8]}"

    def test_tables_are_made_in_the_schema_named_by_the_url(
        self, store: JobStore, store_target: StoreTarget, pg_schema: str
    ) -> None:
        store.ping()
        submit(store)
        url, namespace = store_target
        with psycopg.connect(url.split("?")[0]) as conn:
            rows = conn.execute(
                "SELECT table_schema FROM information_schema.tables WHERE table_name = %s",
                (f"{namespace}_jobs",),
            ).fetchall()
        assert rows == [(pg_schema,)]

    def test_a_notification_is_sent_only_when_the_update_commits(
        self, store: JobStore, store_target: StoreTarget
    ) -> None:
        job = submit(store)
        url, namespace = store_target
        with psycopg.connect(url, autocommit=True) as listener:
            listener.execute(f'LISTEN "{namespace}_jobs"')
            finish_ok(store, job.id)
            got = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        assert got == [f"{job.id} succeeded"]

    def test_a_table_of_an_older_version_gets_the_new_columns(self, store: JobStore) -> None:
        upgrades_a_table_of_an_older_version(store)


def test_a_store_made_from_a_postgres_url_uses_psycopg_3(pg_url: str) -> None:
    store = create_store(pg_url, namespace="tdriver", result_ttl_s=60)
    store.ping()
    assert store._engine.dialect.driver == "psycopg"  # type: ignore[attr-defined]
    store.close()


def test_redis_events_resubscribe_after_the_connection_is_killed(
    redis_url: str, redis_namespace: str
) -> None:
    namespace = f"{redis_namespace}-{uuid.uuid4().hex[:6]}"
    store = create_store(redis_url, namespace=namespace, result_ttl_s=60)
    admin = redis.Redis.from_url(redis_url)
    job = submit(store)

    async def scenario() -> str:
        events = store.create_events()
        await events.start()
        try:
            name = f"inferq-events:{namespace}:events"
            ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
            assert len(ids) == 1
            admin.client_kill_filter(_id=ids[0])  # as a Redis restart would
            async with events.subscribe(job.id) as queue:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    if any(c.get("name") == name for c in admin.client_list()):
                        break
                await asyncio.to_thread(store.cancel, job.id)
                return await asyncio.wait_for(queue.get(), 5)
        finally:
            await events.stop()

    assert asyncio.run(scenario()) == "canceled"
    store.close()
