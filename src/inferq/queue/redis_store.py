"""The job store on Redis: one JSON value per job, transitions in Lua, pub/sub announcements.

Keys, all under ``{namespace}:``:

* ``job:{id}``            the whole record (the job and its owner) as one JSON string, so a
  read is one GET and can never see status and result torn apart;
* ``jobs``                every job, newest first by id (UUIDv7); members are
  ``"{id} {json [model, owner]}"`` so a stale member can be removed from the other indexes
  without its (expired) record;
* ``jobs:model:{model}``  and ``jobs:owner:{owner}``: the ids of one model's / one owner's jobs;
* ``idem:{owner or '-'}:{key}``  the id of the job an Idempotency-Key created, expiring with
  that job (its TTL is set whenever the job's is);
* ``running``             the ids of running jobs scored by ``started_at`` (epoch seconds), for
  ``overdue``; entries of jobs that moved on or expired are dropped as they are met;
* ``active:{owner or '-'}``  the ids of one owner's queued and running jobs, scored by when
  their record expires, so ``count_active`` drops the expired ones with one ZREMRANGEBYSCORE;
* ``worker:{id}``         a worker's heartbeat, expiring by itself; ``workers`` finds them
  without a SCAN of the whole keyspace;
* ``events``              the pub/sub channel, ``"{id} {status}"`` per transition.

All index sorted sets have score 0 and are read by lex range, so a cursor is just the last id.

Expiry: a queued or running job lives ``result_ttl_s + PENDING_TTL_MARGIN_S`` (refreshed on
start); a terminal job expires ``result_ttl_s`` after it ends. Index entries of expired jobs
are removed lazily, by listing and by a small sweep of the oldest entries every
``_SWEEP_EVERY`` creates.

Creation is one Lua script too: the Idempotency-Key check, the record, its indexes.
Transitions are compare-and-set: Python reads the record, decides, and one Lua script writes
the new value only if the stored one is still the one read (by SHA-1), sets the TTL (of the
idempotency key too), updates ``running`` and ``active:*`` and PUBLISHes in the same atomic
step. The record is not decoded and re-encoded in Lua on
purpose: Redis' cjson keeps only 14 significant digits of a float and turns ``[]`` into
``{}``, which would silently change model outputs.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from pydantic_core import to_jsonable_python
from redis.backoff import NoBackoff
from redis.retry import Retry

from inferq.errors import JobConflict, JobNotFound, StoreUnavailable
from inferq.queue.store import (
    PENDING_TTL_MARGIN_S,
    JobEvents,
    JobStore,
    as_utc,
)
from inferq.schemas import (
    TERMINAL_STATUSES,
    FinishItem,
    Job,
    JobError,
    JobMetrics,
    JobPage,
    JobStatus,
    WebhookAttempt,
    WorkerInfo,
)

log = logging.getLogger(__name__)

#: Seconds to connect and to wait for one answer; a store that takes longer is "down".
_SOCKET_TIMEOUT_S = 2.0
#: A pooled connection idle this long is PINGed before use (catches a restarted server).
_HEALTH_CHECK_INTERVAL_S = 30
#: Index entries one ``list`` call may examine before it returns a (possibly short) page.
_LIST_SCAN_BUDGET = 2000
#: Sweep the oldest index entries once every this many creates in one process...
_SWEEP_EVERY = 64
#: ...looking at this many of them.
_SWEEP_BATCH = 256
#: Batches of ``running`` one ``overdue`` call reads at most.
_OVERDUE_ROUNDS = 20
#: A transition retried this often without winning is a bug, not contention.
_MAX_CAS_ATTEMPTS = 50

# Compare-and-set one job record. KEYS: the record, the ``running`` set, the owner's
# ``active`` set, the idempotency key (or a name never written). ARGV: 1 SHA-1 of the value
# read, 2 the new value, 3 its TTL in seconds ('' keeps the TTL), 4 the channel, 5 the
# announcement ('' for none), 6 the job id, 7 'add' / 'rem' / '' for ``running`` with 8 its
# score, 9 the same for ``active`` with 10 its score, 11 '1' when KEYS[4] is the job's
# idempotency key. Returns 0 when the record is gone, 1 when it changed since it was read (the
# caller reads again), 2 when written. A value equal to the new one counts as written: that
# is this very call retried after a lost reply.
_CAS_SCRIPT = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if redis.sha1hex(cur) ~= ARGV[1] then
  if cur == ARGV[2] then return 2 end
  return 1
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  if ARGV[11] == '1' then redis.call('EXPIRE', KEYS[4], ARGV[3]) end
end
if ARGV[7] == 'add' then redis.call('ZADD', KEYS[2], ARGV[8], ARGV[6])
elseif ARGV[7] == 'rem' then redis.call('ZREM', KEYS[2], ARGV[6]) end
if ARGV[9] == 'add' then redis.call('ZADD', KEYS[3], ARGV[10], ARGV[6])
elseif ARGV[9] == 'rem' then redis.call('ZREM', KEYS[3], ARGV[6]) end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 2
"""
_GONE, _CHANGED, _WRITTEN = 0, 1, 2

# Create one job. KEYS: 1 the record, 2 ``jobs``, 3 ``jobs:model:{model}``, 4 the owner's
# ``active`` set, 5 the idempotency key (or a name never written), 6 ``jobs:owner:{owner}``
# (or a name never written). ARGV: 1 the record, 2 its TTL, 3 the ``jobs`` member, 4 the id,
# 5 '1' with an idempotency key, 6 '1' with an owner, 7 the record-key prefix, 8 the expiry
# (epoch seconds) as ``active`` score. Returns {0} when created, {1, id} when the idempotency
# key names a live job already, {2} when a job with this id exists. A key left by a job that
# expired a moment before it (both expire at the same second) is taken over.
_CREATE_SCRIPT = """
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then
    if existing == ARGV[4] then return {2} end
    if redis.call('EXISTS', ARGV[7] .. existing) == 1 then return {1, existing} end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {2} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[5] == '1' then redis.call('SET', KEYS[5], ARGV[4], 'EX', ARGV[2]) end
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('ZADD', KEYS[3], 0, ARGV[4])
if ARGV[6] == '1' then redis.call('ZADD', KEYS[6], 0, ARGV[4]) end
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[4])
return {0}
"""
_CREATED, _REPLAYED, _ID_TAKEN = 0, 1, 2

# Delete KEYS[1] only while its value is ARGV[1].
_DELETE_IF_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# Drop ``running`` entries (KEYS[1]) of jobs that are gone or no longer running. ARGV[1] the
# record-key prefix, the rest the ids. (Decoding only reads the status: nothing is re-encoded.)
_DROP_RUNNING_SCRIPT = """
for i = 2, #ARGV do
  local cur = redis.call('GET', ARGV[1] .. ARGV[i])
  if not cur or cjson.decode(cur)['status'] ~= 'running' then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 0
"""

#: Record fields that are the store's, not the job's.
_PRIVATE_FIELDS = frozenset({"owner", "idempotency_key", "request_hash"})
#: Webhook attempts kept per job: the latest ones.
_MAX_WEBHOOK_ATTEMPTS = 50

_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Turn every way of not reaching Redis into StoreUnavailable."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"the Redis job store is unreachable: {exc}") from exc


def _iso(value: datetime) -> str:
    return as_utc(value).isoformat()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _job(record: dict[str, Any]) -> Job:
    fields = {k: v for k, v in record.items() if k not in _PRIVATE_FIELDS}
    return Job.model_validate(fields)


def _epoch(value: datetime) -> float:
    return as_utc(value).timestamp()


@dataclass(frozen=True)
class _Write:
    """How a transition writes: the TTL (None keeps it), whether it is announced, and what
    happens to the job's entries in ``running`` and ``active:*`` ('add', 'rem' or '')."""

    ttl_s: int | None
    announce: bool = True
    running: str = ""
    running_score: float = 0.0
    active: str = ""


class RedisJobStore(JobStore):
    """Jobs in Redis, for many API and worker processes on many machines."""

    def __init__(self, url: str, *, namespace: str, result_ttl_s: int) -> None:
        self.url = url
        self.namespace = namespace
        self.result_ttl_s = int(result_ttl_s)
        self.pending_ttl_s = self.result_ttl_s + PENDING_TTL_MARGIN_S
        self.channel = f"{namespace}:events"
        # One quick retry re-dials a pooled connection a server restart closed; more would
        # only make an outage slower to report.
        self._pool = redis.ConnectionPool.from_url(
            url,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_SOCKET_TIMEOUT_S,
            health_check_interval=_HEALTH_CHECK_INTERVAL_S,
            retry=Retry(NoBackoff(), 1),
        )
        self._redis = redis.Redis(connection_pool=self._pool)
        self._cas = self._redis.register_script(_CAS_SCRIPT)
        self._create_script = self._redis.register_script(_CREATE_SCRIPT)
        self._drop_running_script = self._redis.register_script(_DROP_RUNNING_SCRIPT)
        self._delete_if_script = self._redis.register_script(_DELETE_IF_SCRIPT)
        self._creates = itertools.count(1)

    # --- keys -------------------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    def _all_index(self) -> str:
        return f"{self.namespace}:jobs"

    def _model_index(self, model: str) -> str:
        return f"{self.namespace}:jobs:model:{model}"

    def _owner_index(self, owner: str) -> str:
        return f"{self.namespace}:jobs:owner:{owner}"

    def _all_member(self, job_id: str, model: str, owner: str | None) -> str:
        return f"{job_id} {json.dumps([model, owner])}"

    def _idem_key(self, owner: str | None, key: str) -> str:
        return f"{self.namespace}:idem:{owner if owner is not None else '-'}:{key}"

    def _running_index(self) -> str:
        return f"{self.namespace}:running"

    def _active_index(self, owner: str | None) -> str:
        return f"{self.namespace}:active:{owner if owner is not None else '-'}"

    def _unused_key(self) -> str:
        """A key name passed to a script where it needs one but this call has none."""
        return f"{self.namespace}:unused"

    # --- jobs -------------------------------------------------------------------------------

    def create(
        self,
        job: Job,
        owner: str | None = None,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> Job:
        """Write a new job, or return the one ``idempotency_key`` made; one Lua step."""
        record = job.model_dump(mode="json")
        record["status"] = JobStatus.QUEUED.value
        record["created_at"] = _iso(job.created_at)
        record["owner"] = owner
        idem = self._idem_key(owner, idempotency_key) if idempotency_key is not None else None
        record["idempotency_key"] = idem
        record["request_hash"] = request_hash if idem is not None else None
        # A replayed key whose job expires between the script and the read: try again.
        for _ in range(3):
            with _unavailable():
                outcome = cast(
                    builtins.list[Any],
                    self._create_script(
                        keys=[
                            self._job_key(job.id),
                            self._all_index(),
                            self._model_index(job.model),
                            self._active_index(owner),
                            idem or self._unused_key(),
                            self._owner_index(owner) if owner is not None else self._unused_key(),
                        ],
                        args=[
                            json.dumps(record),
                            self.pending_ttl_s,
                            self._all_member(job.id, job.model, owner),
                            job.id,
                            "1" if idem is not None else "0",
                            "1" if owner is not None else "0",
                            f"{self.namespace}:job:",
                            time.time() + self.pending_ttl_s,
                        ],
                    ),
                )
            if outcome[0] == _CREATED:
                if next(self._creates) % _SWEEP_EVERY == 0:
                    self._sweep()
                return _job(record)
            if outcome[0] == _ID_TAKEN:
                raise JobConflict(f"a job with id {job.id!r} exists already")
            raw = self._read(_text(outcome[1]))
            if raw is None:
                continue
            existing = json.loads(raw)
            if existing.get("request_hash") != request_hash:
                raise JobConflict(
                    f"Idempotency-Key {idempotency_key!r} was used with a different request"
                )
            return _job(existing)
        raise RuntimeError(f"Idempotency-Key {idempotency_key!r} kept naming expiring jobs")

    def _read(self, job_id: str) -> bytes | None:
        with _unavailable():
            return cast(bytes | None, self._redis.get(self._job_key(job_id)))

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job from one GET: status, output and error can never be torn apart."""
        raw = self._read(job_id)
        if raw is None:
            raise JobNotFound(job_id)
        record = json.loads(raw)
        if owner is not None and record.get("owner") != owner:
            raise JobNotFound(job_id)
        return _job(record)

    def owner_of(self, job_id: str) -> str | None:
        """The owner kept in the job's record."""
        raw = self._read(job_id)
        if raw is None:
            raise JobNotFound(job_id)
        owner = json.loads(raw).get("owner")
        return str(owner) if owner is not None else None

    def _cas_call(
        self, job_id: str, raw: bytes, record: dict[str, Any], new: dict[str, Any],
        how: _Write, client: Any = None,
    ) -> Any:
        idem = record.get("idempotency_key")
        ttl_s = how.ttl_s
        return self._cas(
            keys=[
                self._job_key(job_id),
                self._running_index(),
                self._active_index(record.get("owner")),
                idem or self._unused_key(),
            ],
            args=[
                hashlib.sha1(raw).hexdigest(),
                json.dumps(new),
                "" if ttl_s is None else ttl_s,
                self.channel,
                f"{job_id} {new['status']}" if how.announce else "",
                job_id,
                how.running,
                how.running_score,
                how.active,
                time.time() + (ttl_s or 0),
                "1" if idem else "0",
            ],
            client=client,
        )

    def _transition(
        self,
        job_id: str,
        change: Callable[[dict[str, Any]], tuple[dict[str, Any], _Write] | None],
    ) -> tuple[dict[str, Any], bool]:
        """Apply ``change`` to the record atomically (compare-and-set, retried on a race).

        ``change`` returns the new record and how to write it, or None to write nothing.
        Returns the record as written (or as found, when nothing was written) and whether
        this call wrote it.
        """
        for _ in range(_MAX_CAS_ATTEMPTS):
            raw = self._read(job_id)
            if raw is None:
                raise JobNotFound(job_id)
            record: dict[str, Any] = json.loads(raw)
            decided = change(record)
            if decided is None:
                return record, False
            new, how = decided
            with _unavailable():
                outcome = self._cas_call(job_id, raw, record, new, how)
            if outcome == _WRITTEN:
                return new, True
            if outcome == _GONE:
                raise JobNotFound(job_id)
        raise RuntimeError(f"job {job_id!r} kept changing under {_MAX_CAS_ATTEMPTS} updates")

    def _transition_many(
        self,
        changes: builtins.list[
            tuple[str, Callable[[dict[str, Any]], tuple[dict[str, Any], _Write] | None]]
        ],
    ) -> builtins.list[tuple[dict[str, Any], bool] | None]:
        """``_transition`` for many jobs in two round trips (MGET, then one pipeline of
        compare-and-sets); a job that raced falls back to ``_transition``. None: gone."""
        if not changes:
            return []
        with _unavailable():
            raws = self._redis.mget([self._job_key(job_id) for job_id, _ in changes])
        results: builtins.list[tuple[dict[str, Any], bool] | None] = [None] * len(changes)
        pending: builtins.list[tuple[int, dict[str, Any]]] = []
        with _unavailable():
            pipe = self._redis.pipeline(transaction=False)
            for i, ((job_id, change), raw) in enumerate(zip(changes, raws, strict=True)):
                if raw is None:
                    continue
                record: dict[str, Any] = json.loads(raw)
                decided = change(record)
                if decided is None:
                    results[i] = (record, False)
                    continue
                new, how = decided
                self._cas_call(job_id, cast(bytes, raw), record, new, how, client=pipe)
                pending.append((i, new))
            outcomes = pipe.execute() if pending else []
        for (i, new), outcome in zip(pending, outcomes, strict=True):
            if outcome == _WRITTEN:
                results[i] = (new, True)
            elif outcome != _GONE:  # raced with another writer: do it the careful way
                job_id, change = changes[i]
                try:
                    results[i] = self._transition(job_id, change)
                except JobNotFound:
                    results[i] = None
        return results

    def start(self, job_id: str, worker: str, started_at: datetime) -> Job | None:
        """Mark the job running (from queued, or running on a redelivery); None if terminal."""
        record, written = self._transition(job_id, self._start_change(worker, started_at))
        return _job(record) if written else None

    def start_many(
        self, job_ids: builtins.list[str], worker: str, started_at: datetime
    ) -> builtins.list[Job | None]:
        """``start`` for a batch, in two round trips. A job that is gone is None too."""
        change = self._start_change(worker, started_at)
        results = self._transition_many([(job_id, change) for job_id in job_ids])
        return [_job(r[0]) if r is not None and r[1] else None for r in results]

    def _start_change(
        self, worker: str, started_at: datetime
    ) -> Callable[[dict[str, Any]], tuple[dict[str, Any], _Write] | None]:
        def change(record: dict[str, Any]) -> tuple[dict[str, Any], _Write] | None:
            if record["status"] not in _ACTIVE:
                return None
            new = record | {
                "status": JobStatus.RUNNING.value,
                "worker": worker,
                "started_at": _iso(started_at),
                "attempts": int(record.get("attempts") or 0) + 1,
            }
            how = _Write(
                self.pending_ttl_s, running="add", running_score=_epoch(started_at), active="add"
            )
            return new, how

        return change

    def requeue(self, job_id: str) -> bool:
        """Move a running job back to queued; False if it is not running (or gone)."""

        def change(record: dict[str, Any]) -> tuple[dict[str, Any], _Write] | None:
            if record["status"] != JobStatus.RUNNING.value:
                return None
            new = record | {"status": JobStatus.QUEUED.value, "started_at": None}
            return new, _Write(self.pending_ttl_s, running="rem", active="add")

        try:
            return self._transition(job_id, change)[1]
        except JobNotFound:
            return False

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        output: Any = None,
        error: JobError | None = None,
        metrics: JobMetrics | None = None,
        finished_at: datetime,
    ) -> bool:
        """Write the terminal state unless one is written already (first write wins).

        A finish after the terminal state only counts a duplicate execution (TTL kept, no
        announcement).
        """
        (result,) = self.finish_many([FinishItem(job_id, status, output=output, error=error,
                                                 metrics=metrics, finished_at=finished_at)])
        if result is None:
            raise JobNotFound(job_id)
        return result

    def finish_many(self, items: builtins.list[FinishItem]) -> builtins.list[bool | None]:
        """``finish`` for a batch, in two round trips. None: the job is gone."""
        for item in items:
            if item.status not in TERMINAL_STATUSES:
                raise ValueError(f"finish needs a terminal status, not {item.status!r}")
        # Each change notes whether it wrote the terminal state or only counted a duplicate
        # (the last decision counts: a raced compare-and-set decides again).
        terminal = [False] * len(items)
        results = self._transition_many(
            [(item.job_id, self._finish_change(item, terminal, n))
             for n, item in enumerate(items)])
        return [None if r is None else r[1] and terminal[n] for n, r in enumerate(results)]

    def _finish_change(
        self, item: FinishItem, terminal: builtins.list[bool], n: int
    ) -> Callable[[dict[str, Any]], tuple[dict[str, Any], _Write] | None]:
        def change(record: dict[str, Any]) -> tuple[dict[str, Any], _Write] | None:
            terminal[n] = record["status"] in _ACTIVE
            if not terminal[n]:
                duplicates = int(record.get("duplicate_executions") or 0) + 1
                return record | {"duplicate_executions": duplicates}, _Write(None, announce=False)
            new = record | {
                "status": item.status.value,
                "output": to_jsonable_python(item.output),
                "error": item.error.model_dump(mode="json") if item.error is not None else None,
                "finished_at": _iso(item.finished_at),
            }
            if item.metrics is not None:
                new["metrics"] = item.metrics.model_dump(mode="json")
            return new, _Write(self.result_ttl_s, running="rem", active="rem")

        return change

    def add_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> None:
        """Append a webhook delivery attempt (the last 50 are kept); the TTL stays as it is."""
        entry = attempt.model_dump(mode="json")

        def change(record: dict[str, Any]) -> tuple[dict[str, Any], _Write] | None:
            attempts = [*(record.get("webhook_attempts") or []), entry]
            new = record | {"webhook_attempts": attempts[-_MAX_WEBHOOK_ATTEMPTS:]}
            return new, _Write(None, announce=False)

        self._transition(job_id, change)

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel a queued or running job; JobConflict if it ended already."""

        def change(record: dict[str, Any]) -> tuple[dict[str, Any], _Write] | None:
            if owner is not None and record.get("owner") != owner:
                raise JobNotFound(job_id)
            if record["status"] not in _ACTIVE:
                raise JobConflict(f"job {job_id!r} is {record['status']} already")
            new = record | {
                "status": JobStatus.CANCELED.value,
                "finished_at": _iso(datetime.now(UTC)),
            }
            return new, _Write(self.result_ttl_s, running="rem", active="rem")

        return _job(self._transition(job_id, change)[0])

    def overdue(self, started_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Running jobs that started before ``started_before``, oldest first, from ``running``.

        Entries of jobs no longer running (or expired) are removed as they are met.
        """
        if limit < 1:
            return []
        cutoff = _epoch(started_before)
        index = self._running_index()
        found: builtins.list[Job] = []
        offset = 0
        for _ in range(_OVERDUE_ROUNDS):
            if len(found) >= limit:
                break
            with _unavailable():
                ids = [
                    _text(i)
                    for i in self._redis.zrangebyscore(
                        index, "-inf", f"({cutoff}", start=offset, num=max(limit, 100)
                    )
                ]
                if not ids:
                    break
                raws = self._redis.mget([self._job_key(i) for i in ids])
            stale: builtins.list[str] = []
            for job_id, raw in zip(ids, raws, strict=True):
                record = json.loads(raw) if raw is not None else None
                if record is None or record["status"] != JobStatus.RUNNING.value:
                    stale.append(job_id)
                    continue
                offset += 1
                job = _job(record)
                if job.started_at is not None and job.started_at < as_utc(started_before):
                    found.append(job)
                    if len(found) >= limit:
                        break
            if stale:
                # Only entries whose job is gone or moved on: a job that is running again
                # would have been re-added by its ``start`` after the read, with a new score.
                with _unavailable():
                    self._drop_running(stale)
        return found

    def _drop_running(self, job_ids: builtins.list[str]) -> None:
        """Remove ``running`` entries of jobs that are gone or not running, checked atomically."""
        with _unavailable():
            self._drop_running_script(
                keys=[self._running_index()],
                args=[f"{self.namespace}:job:", *job_ids],
            )

    def count_active(self, owner: str | None) -> int:
        """Queued and running jobs of ``owner``: expired entries go, then ZCARD."""
        index = self._active_index(owner)
        with _unavailable():
            pipe = self._redis.pipeline(transaction=True)
            pipe.zremrangebyscore(index, "-inf", time.time())
            pipe.zcard(index)
            return int(pipe.execute()[1])

    def delete(self, job_id: str) -> None:
        """Remove the record, its index entries and its idempotency key; nothing if gone."""
        raw = self._read(job_id)
        if raw is None:
            return
        record = json.loads(raw)
        model, owner = record["model"], record.get("owner")
        idem = record.get("idempotency_key")
        with _unavailable():
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(self._job_key(job_id))
            pipe.zrem(self._all_index(), self._all_member(job_id, model, owner))
            pipe.zrem(self._model_index(model), job_id)
            if owner is not None:
                pipe.zrem(self._owner_index(owner), job_id)
            pipe.zrem(self._running_index(), job_id)
            pipe.zrem(self._active_index(owner), job_id)
            pipe.execute()
            if idem:
                # Only while it still names this job (it always does: ids are unique).
                self._delete_if_script(keys=[idem], args=[job_id])

    # --- listing ----------------------------------------------------------------------------

    def list(
        self,
        *,
        model: str | None = None,
        status: JobStatus | None = None,
        error_type: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs newest first, filtered while scanning the narrowest index.

        At most ``_LIST_SCAN_BUDGET`` entries are examined per call, so a rare status may
        give a short (even empty) page whose ``next_cursor`` still goes on from where the
        scan stopped; ``next_cursor`` is None only when the index is exhausted.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if owner is not None:
            index = self._owner_index(owner)
        elif model is not None:
            index = self._model_index(model)
        else:
            index = self._all_index()
        batch_size = min(max(limit + 1, 100), _LIST_SCAN_BUDGET)
        upper = f"({cursor}" if cursor else "+"
        matches: builtins.list[Job] = []
        examined = 0
        last_examined: str | None = None
        while True:
            with _unavailable():
                members = [
                    _text(m) for m in self._redis.zrevrangebylex(index, upper, "-", 0, batch_size)
                ]
                if not members:
                    return JobPage(jobs=matches, next_cursor=None)
                ids = [m.split(" ", 1)[0] for m in members]
                raws = self._redis.mget([self._job_key(i) for i in ids])
            stale: builtins.list[str] = []
            for member, job_id, raw in zip(members, ids, raws, strict=True):
                examined += 1
                last_examined = job_id
                if raw is None:
                    stale.append(member)
                    continue
                record = json.loads(raw)
                if owner is not None and record.get("owner") != owner:
                    continue
                if model is not None and record["model"] != model:
                    continue
                if status is not None and record["status"] != status.value:
                    continue
                if error_type is not None and (
                    record["status"] != JobStatus.FAILED.value
                    or (record.get("error") or {}).get("type") != error_type
                ):
                    continue
                matches.append(_job(record))
                if len(matches) > limit:
                    break
            self._drop_stale(index, stale)
            if len(matches) > limit:
                return JobPage(jobs=matches[:limit], next_cursor=matches[limit - 1].id)
            if len(members) < batch_size:
                return JobPage(jobs=matches, next_cursor=None)
            if examined >= _LIST_SCAN_BUDGET:
                return JobPage(jobs=matches, next_cursor=last_examined)
            upper = f"({last_examined}"

    def _drop_stale(self, index: str, members: builtins.list[str]) -> None:
        """Remove index entries of expired jobs (from every index, when known)."""
        if not members:
            return
        with _unavailable():
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(index, *members)
            if index == self._all_index():
                for member in members:
                    job_id, tail = member.split(" ", 1)
                    model, owner = json.loads(tail)
                    pipe.zrem(self._model_index(model), job_id)
                    if owner is not None:
                        pipe.zrem(self._owner_index(owner), job_id)
            pipe.execute()

    def _sweep(self) -> None:
        """Drop index entries of expired jobs among the oldest, where expiry happens first."""
        with _unavailable():
            members = [
                _text(m)
                for m in self._redis.zrangebylex(self._all_index(), "-", "+", 0, _SWEEP_BATCH)
            ]
            if not members:
                return
            pipe = self._redis.pipeline(transaction=False)
            for member in members:
                pipe.exists(self._job_key(member.split(" ", 1)[0]))
            alive = pipe.execute()
        self._drop_stale(
            self._all_index(), [m for m, ok in zip(members, alive, strict=True) if not ok]
        )

    # --- workers ----------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerInfo, ttl_s: float) -> None:
        """Record the worker for ``ttl_s`` seconds (its key expires by itself)."""
        ttl_ms = max(1, int(ttl_s * 1000))
        with _unavailable():
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(f"{self.namespace}:worker:{worker.id}", worker.model_dump_json(), px=ttl_ms)
            pipe.zadd(f"{self.namespace}:workers", {worker.id: time.time() + ttl_s})
            pipe.execute()

    def workers(self) -> builtins.list[WorkerInfo]:
        """Workers whose heartbeat key has not expired."""
        roster = f"{self.namespace}:workers"
        with _unavailable():
            self._redis.zremrangebyscore(roster, "-inf", time.time())
            ids = [_text(i) for i in self._redis.zrange(roster, 0, -1)]
            if not ids:
                return []
            raws = self._redis.mget([f"{self.namespace}:worker:{i}" for i in ids])
        return [WorkerInfo.model_validate_json(raw) for raw in raws if raw is not None]

    # --- plumbing ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers within the socket timeout."""
        with _unavailable():
            self._redis.ping()

    def create_events(self) -> RedisJobEvents:
        """A pub/sub listener on this store's channel."""
        return RedisJobEvents(self.url, self.channel)

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.disconnect()


class RedisJobEvents(JobEvents):
    """Job announcements from Redis pub/sub, re-subscribing by itself after a Redis restart.

    Announcements published while the connection is down are lost: a waiter must not rely
    on one arriving, and re-reads the job after a timeout.
    """

    def __init__(self, url: str, channel: str) -> None:
        super().__init__()
        self._url = url
        self._channel = channel

    async def start(self) -> None:
        """Subscribe; returns once Redis confirmed it. StoreUnavailable if it cannot."""
        pubsub = await self._subscribe()
        self._task = asyncio.create_task(self._listen(pubsub), name="inferq-redis-events")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        await self._stop_task()

    async def _subscribe(self) -> aioredis.client.PubSub:
        client = aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=_SOCKET_TIMEOUT_S,
            health_check_interval=_HEALTH_CHECK_INTERVAL_S,
            client_name=f"inferq-events:{self._channel}",  # findable in CLIENT LIST
        )
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            deadline = time.monotonic() + 5 * _SOCKET_TIMEOUT_S
            while time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=_SOCKET_TIMEOUT_S)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
            raise StoreUnavailable("Redis did not confirm the subscription to job events")
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            await self._close(pubsub)
            raise StoreUnavailable(f"cannot subscribe to Redis job events: {exc}") from exc
        except BaseException:
            await self._close(pubsub)
            raise

    @staticmethod
    async def _close(pubsub: aioredis.client.PubSub) -> None:
        # The client behind it was made for this one subscription: close its pool too.
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await pubsub.connection_pool.disconnect()

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        backoff_s = 0.1
        try:
            while True:
                try:
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None and message["type"] == "message":
                            self.dispatch_message(message["data"])
                except (redis.RedisError, OSError) as exc:
                    log.warning("lost the Redis job-events subscription (%s); reconnecting", exc)
                await self._close(pubsub)
                # Reconnect with capped exponential backoff until Redis is back.
                while True:
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
                    try:
                        pubsub = await self._subscribe()
                    except StoreUnavailable:
                        continue
                    log.info("re-subscribed to Redis job events")
                    backoff_s = 0.1
                    break
        finally:
            await self._close(pubsub)
