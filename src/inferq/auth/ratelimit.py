"""Per-key rate limits shared by every API replica: the count lives in the store, not in RAM.

* Redis: GCRA (the generic cell rate algorithm) in one Lua script on the server's clock: a
  key may send a burst of ``ceil(rate)`` submits, then one every ``1/rate`` s. One small
  value per key, expiring by itself once the key is idle.
* SQL (PostgreSQL, SQLite): a fixed window, one counter row per key per window, bumped by
  one upsert (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``). Windows are one second
  long (longer when the rate is below one per second); old rows are swept now and then.

``check(owner)`` counts one submit and answers None (go ahead) or the seconds to wait.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from inferq.auth.keys import create_tables, sql_engine, sql_unavailable
from inferq.errors import ConfigError, StoreUnavailable

#: Sweep expired SQL windows once every this many checks in one process.
_SWEEP_EVERY = 200

# GCRA. KEYS[1] the key's "theoretical arrival time" (microseconds since the epoch, on the
# Redis server's clock so that replicas agree); ARGV[1] the emission interval and ARGV[2]
# the burst tolerance, both in microseconds. Returns -1 when allowed, else microseconds to
# wait. Numbers are written with %.0f: Lua's tostring keeps 14 digits, too few for them.
_GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return math.max(1, math.ceil(allow_at - now)) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
           math.ceil((new_tat - now) / 1000) + 1)
return -1
"""


class RateLimiter(ABC):
    """Counts submits per key across every API replica."""

    def __init__(self, rate_per_s: float) -> None:
        if rate_per_s <= 0:
            raise ConfigError("the rate limit must be above 0 per second")
        self.rate_per_s = rate_per_s

    @abstractmethod
    def check(self, owner: str) -> float | None:
        """Count one submit by ``owner``: None if allowed, else seconds until one would be."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class RedisRateLimiter(RateLimiter):
    """GCRA on Redis: a burst of ``ceil(rate)``, then one submit every ``1/rate`` s."""

    def __init__(self, url: str, *, namespace: str, rate_per_s: float) -> None:
        import redis

        super().__init__(rate_per_s)
        self.prefix = f"{namespace}:ratelimit"
        self._errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError, redis.TimeoutError, OSError,
        )
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._script = self._redis.register_script(_GCRA_SCRIPT)
        interval_us = 1_000_000 / rate_per_s
        burst = max(1, math.ceil(rate_per_s))
        self._args = [f"{interval_us:.0f}", f"{interval_us * (burst - 1):.0f}"]

    def check(self, owner: str) -> float | None:
        """Count one submit by ``owner``: None if allowed, else seconds to wait."""
        try:
            wait_us = int(self._script(keys=[f"{self.prefix}:{owner}"], args=self._args))
        except self._errors as exc:
            raise StoreUnavailable(f"the Redis rate limiter is unreachable: {exc}") from exc
        return None if wait_us < 0 else wait_us / 1_000_000

    def close(self) -> None:
        """Release connections."""
        self._redis.close()


class SqlRateLimiter(RateLimiter):
    """A fixed window on SQL: one ``{namespace}_rate_limits`` row per key per window."""

    def __init__(self, url: str, *, namespace: str, rate_per_s: float) -> None:
        from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table

        super().__init__(rate_per_s)
        self.window_s = max(1.0, 1.0 / rate_per_s)
        self.limit = max(1, math.floor(rate_per_s * self.window_s))
        self._metadata = MetaData()
        self._table = Table(
            f"{namespace}_rate_limits",
            self._metadata,
            Column("owner", String, primary_key=True),
            Column("window_start", BigInteger, primary_key=True, autoincrement=False),
            Column("hits", Integer, nullable=False),
        )
        self._engine = sql_engine(url)
        self._ready = False
        self._lock = threading.Lock()
        self._checks = itertools.count(1)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    create_tables(self._engine, self._metadata, "rate limiter")
                    self._ready = True
        with sql_unavailable("rate limiter"), self._engine.begin() as conn:
            yield conn

    def check(self, owner: str) -> float | None:
        """Count one submit by ``owner``: None if allowed, else seconds to wait."""
        now = time.time()
        window = math.floor(now / self.window_s)
        table = self._table
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)
        stmt = (
            stmt.values(owner=owner, window_start=window, hits=1)
            .on_conflict_do_update(
                index_elements=[table.c.owner, table.c.window_start],
                set_={"hits": table.c.hits + 1},
            )
            .returning(table.c.hits)
        )
        with self._conn() as conn:
            hits = int(conn.execute(stmt).scalar_one())
        if next(self._checks) % _SWEEP_EVERY == 0:
            self._sweep(window)
        if hits <= self.limit:
            return None
        return max(0.001, (window + 1) * self.window_s - now)

    def _sweep(self, window: int) -> None:
        from sqlalchemy import delete

        with contextlib.suppress(StoreUnavailable), self._conn() as conn:
            conn.execute(delete(self._table).where(self._table.c.window_start < window))

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()


def create_rate_limiter(url: str, namespace: str, rate_per_s: float) -> RateLimiter:
    """The rate limiter for ``url`` (the job store's URL): Redis, PostgreSQL or SQLite."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisRateLimiter(url, namespace=namespace, rate_per_s=rate_per_s)
    if scheme.startswith("postgres") or scheme.startswith("sqlite"):
        return SqlRateLimiter(url, namespace=namespace, rate_per_s=rate_per_s)
    raise ConfigError(
        f"unsupported rate limiter URL {url!r}: use redis://, postgresql:// or sqlite:///"
    )
