"""The durable retry schedule: failed webhook deliveries wait here until they are due.

A delivery that failed is not put back on the broker with a delay (RabbitMQ has no native
delayed delivery, and a TTL-and-dead-letter queue per delay is fragile); it is written into
the job store's database with the time it is due, and any sender process claims it then:

* Redis (``redis://``): the sorted set ``{ns}:webhooks:due``; member = the delivery as JSON,
  score = the Unix time it is due.
* SQL (``postgresql://``, ``sqlite:///``): the table ``{ns}_webhook_due`` (id, due, delivery).

Claiming is a *lease*, not a removal: one atomic step (a Lua script; an ``UPDATE ... WHERE id
IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` on PostgreSQL, the same statement without
the row locks on SQLite, whose writers are serialised anyway) moves every claimed entry's due
time ``lease_s`` into the future. The sender removes the entry (or replaces it by the next
retry, in one transaction) once the attempt is recorded. A sender that dies mid-attempt loses
nothing: its entries come due again when the lease runs out, and another sender retries them
with the same ``webhook-id`` (receivers dedupe by it). Two senders never claim one entry at
the same time.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from inferq.config import Settings
from inferq.errors import ConfigError, StoreUnavailable


@dataclass(frozen=True)
class Delivery:
    """One webhook to send: which job, which event, its stable message id.

    ``attempt`` counts the attempts already made (0 for the first); ``owner`` is the API
    key's owner whose secret signs it (None: the server secret).
    """

    job_id: str
    event: str
    message_id: str
    attempt: int = 0
    owner: str | None = None

    def to_json(self) -> str:
        """Compact JSON with sorted keys: equal deliveries are equal strings."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Delivery:
        """Parse a delivery (a queue message or a schedule entry). ValueError if malformed."""
        if not isinstance(data, dict):
            raise ValueError("a webhook delivery must be a JSON object")
        job_id, event, msg_id = data.get("job_id"), data.get("event"), data.get("message_id")
        if not (isinstance(job_id, str) and isinstance(event, str) and isinstance(msg_id, str)):
            raise ValueError("a webhook delivery needs string job_id, event and message_id")
        attempt = data.get("attempt", 0)
        owner = data.get("owner")
        if not isinstance(attempt, int) or attempt < 0:
            raise ValueError("attempt must be a non-negative integer")
        if owner is not None and not isinstance(owner, str):
            raise ValueError("owner must be a string or null")
        return cls(job_id, event, msg_id, attempt, owner)


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed from the schedule; ``token`` names its entry (member or row id)."""

    delivery: Delivery
    token: Any = field(compare=False)


class RetrySchedule(ABC):
    """Deliveries waiting for their next attempt, claimable by any sender process."""

    @abstractmethod
    def add(self, delivery: Delivery, due: float) -> None:
        """Schedule ``delivery`` for Unix time ``due``."""

    @abstractmethod
    def claim(self, now: float, limit: int, lease_s: float) -> list[Claimed]:
        """Claim up to ``limit`` entries due at ``now``, hiding them for ``lease_s`` seconds."""

    @abstractmethod
    def done(self, claimed: Claimed, retry: tuple[Delivery, float] | None = None) -> None:
        """Remove a claimed entry; with ``retry``, add ``(delivery, due)`` in the same step."""

    @abstractmethod
    def release(self, claimed: Claimed, due: float) -> None:
        """Give a claimed entry back unattempted, due at ``due`` (a sender stopping)."""

    @abstractmethod
    def pending(self) -> int:
        """How many entries wait (claimed ones included)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


#: What an unreachable SQL database raises.
_SA_DOWN = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)

# --- Redis ---------------------------------------------------------------------------------

# KEYS[1] the sorted set; ARGV: now, limit, lease-until. Due entries get the lease time as
# their new score in the same atomic step, so no two callers get the same entry.
_CLAIM_LUA = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(items) do
  redis.call('ZADD', KEYS[1], ARGV[3], member)
end
return items
"""


class RedisRetrySchedule(RetrySchedule):
    """The schedule as a Redis sorted set scored by due time."""

    def __init__(self, url: str, namespace: str) -> None:
        self.key = f"{namespace}:webhooks:due"
        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._claim = self._client.register_script(_CLAIM_LUA)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"the webhook schedule (Redis) is unreachable: {exc}") from exc

    def add(self, delivery: Delivery, due: float) -> None:
        """Schedule ``delivery`` for ``due`` (ZADD)."""
        self._call(self._client.zadd, self.key, {delivery.to_json(): due})

    def claim(self, now: float, limit: int, lease_s: float) -> list[Claimed]:
        """Claim due entries with one Lua call (atomic across processes)."""
        if limit <= 0:
            return []
        members = self._call(self._claim, [self.key], [now, limit, now + lease_s])
        out = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            try:
                delivery = Delivery.from_dict(json.loads(text))
            except ValueError:
                self._call(self._client.zrem, self.key, member)  # garbage: drop it
                continue
            out.append(Claimed(delivery, member))
        return out

    def done(self, claimed: Claimed, retry: tuple[Delivery, float] | None = None) -> None:
        """ZREM the entry, and ZADD the retry, in one MULTI/EXEC."""

        def write() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(self.key, claimed.token)
            if retry is not None:
                pipe.zadd(self.key, {retry[0].to_json(): retry[1]})
            pipe.execute()

        self._call(write)

    def release(self, claimed: Claimed, due: float) -> None:
        """Set the entry's score back to ``due`` (only if it is still there)."""
        self._call(lambda: self._client.zadd(self.key, {claimed.token: due}, xx=True))

    def pending(self) -> int:
        """ZCARD of the set."""
        return int(self._call(self._client.zcard, self.key))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


# --- SQL -----------------------------------------------------------------------------------


class SqlRetrySchedule(RetrySchedule):
    """The schedule as a table ``{ns}_webhook_due`` (PostgreSQL or SQLite)."""

    def __init__(self, url: str, namespace: str) -> None:
        from inferq.queue.sql_store import create_sql_engine

        self.is_postgres = make_url(url).get_backend_name() in ("postgresql", "postgres")
        self._metadata = MetaData()
        self.table = Table(
            f"{namespace}_webhook_due",
            self._metadata,
            # BIGINT on PostgreSQL; SQLite needs INTEGER PRIMARY KEY to autoincrement.
            Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                   autoincrement=True),
            Column("due", Float, nullable=False),
            Column("delivery", Text, nullable=False),
            Index(f"{namespace}_webhook_due_due", "due"),
        )
        self._engine = create_sql_engine(url)
        self._ready = False
        self._ready_lock = threading.Lock()

    def _ensure_table(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            try:
                self._metadata.create_all(self._engine)
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
                # Two processes starting at once can both see no table and both CREATE it;
                # the loser fails, and its second look finds the table.
                self._metadata.create_all(self._engine)
            self._ready = True

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction, committed on leaving; an unreachable database is StoreUnavailable."""
        try:
            self._ensure_table()
            with self._engine.begin() as conn:
                yield conn
        except _SA_DOWN as exc:
            raise StoreUnavailable(f"the webhook schedule (SQL) is unreachable: {exc}") from exc

    def add(self, delivery: Delivery, due: float) -> None:
        """INSERT one entry."""
        with self._begin() as conn:
            conn.execute(insert(self.table).values(due=due, delivery=delivery.to_json()))

    def claim(self, now: float, limit: int, lease_s: float) -> list[Claimed]:
        """One ``UPDATE ... RETURNING`` that pushes the due entries ``lease_s`` ahead."""
        if limit <= 0:
            return []
        t = self.table
        due_ids = select(t.c.id).where(t.c.due <= now).order_by(t.c.due).limit(limit)
        if self.is_postgres:
            # Two senders claiming at once skip each other's rows instead of waiting.
            due_ids = due_ids.with_for_update(skip_locked=True)
        stmt = (
            update(t)
            .where(t.c.id.in_(due_ids.scalar_subquery()))
            .values(due=now + lease_s)
            .returning(t.c.id, t.c.delivery)
        )
        with self._begin() as conn:
            rows = conn.execute(stmt).all()
        out = []
        for row_id, text in rows:
            try:
                delivery = Delivery.from_dict(json.loads(text))
            except ValueError:
                with self._begin() as conn:  # garbage: drop it
                    conn.execute(delete(t).where(t.c.id == row_id))
                continue
            out.append(Claimed(delivery, row_id))
        return out

    def done(self, claimed: Claimed, retry: tuple[Delivery, float] | None = None) -> None:
        """DELETE the row, and INSERT the retry, in one transaction."""
        with self._begin() as conn:
            conn.execute(delete(self.table).where(self.table.c.id == claimed.token))
            if retry is not None:
                conn.execute(
                    insert(self.table).values(due=retry[1], delivery=retry[0].to_json())
                )

    def release(self, claimed: Claimed, due: float) -> None:
        """Set the row's due time back."""
        with self._begin() as conn:
            conn.execute(
                update(self.table).where(self.table.c.id == claimed.token).values(due=due)
            )

    def pending(self) -> int:
        """COUNT(*) of the table."""
        with self._begin() as conn:
            return int(conn.execute(select(func.count()).select_from(self.table)).scalar_one())

    def close(self) -> None:
        """Dispose of the engine's pool."""
        self._engine.dispose()


def create_schedule(settings: Settings) -> RetrySchedule:
    """The schedule beside the job store: same database as ``settings.result_url``."""
    url = settings.result_url
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisRetrySchedule(url, settings.namespace)
    if scheme.startswith("postgres") or scheme.startswith("sqlite"):
        return SqlRetrySchedule(url, settings.namespace)
    raise ConfigError(f"unsupported result store URL {url!r} for the webhook schedule")


def parse_retry_schedule(text: str) -> list[float]:
    """The delays of ``INFERQ_WEBHOOK_RETRY_SCHEDULE_S`` ("5,300,..."). ConfigError if bad."""
    delays: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError as exc:
            raise ConfigError(f"INFERQ_WEBHOOK_RETRY_SCHEDULE_S: {part!r} is not a number") from exc
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"INFERQ_WEBHOOK_RETRY_SCHEDULE_S: {part!r} must be >= 0")
        delays.append(value)
    return delays


def now() -> float:
    """Unix time, the clock of every due time (shared across machines, unlike monotonic)."""
    return time.time()
