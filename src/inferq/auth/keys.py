"""API keys: made and revoked by ``inferq keys``, stored hashed, looked up by the API.

A key is ``iq_`` + 32 random bytes in url-safe base64. Only its SHA-256 (hex) is stored, so
a copy of the store gives nobody a working key; ``prefix`` (its first characters) is kept
so that ``inferq keys list`` can show which key is which. Each key also gets a webhook
signing secret (``whsec_`` + base64 of 24 random bytes), stored as is because it signs.

Two stores, chosen by URL like the job store (``create_key_store``):

* ``redis://``                  -- ``RedisKeyStore``: ``{ns}:apikey:{id}`` holds the key as
  JSON, ``{ns}:apikey:hash:{sha256}`` its id, ``{ns}:apikeys`` every id;
* ``postgresql://``/``sqlite:///`` -- ``SqlKeyStore``: table ``{ns}_api_keys``.

A revoked key stays in the store (``list`` shows when it was revoked); ``lookup`` answers
None for it.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import hmac
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from inferq.errors import ConfigError, StoreUnavailable

#: Every key starts with this, so a leaked one is recognisable (secret scanners, logs).
KEY_PREFIX = "iq_"
#: Characters of the key kept in clear and shown by ``inferq keys list``.
PREFIX_CHARS = 12
_KEY_BYTES = 32
_WEBHOOK_SECRET_BYTES = 24
#: Seconds to connect to a store; one that takes longer is "down".
_CONNECT_TIMEOUT_S = 2


class AmbiguousKey(ValueError):
    """A prefix given to ``revoke`` matches more than one key."""


class ApiKey(BaseModel):
    """One API key as stored: never the key itself, only its hash."""

    id: str
    name: str
    prefix: str
    key_hash: str
    webhook_secret: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        """True once ``inferq keys revoke`` was run for it."""
        return self.revoked_at is not None


def hash_key(plaintext: str) -> str:
    """The stored form of a key: SHA-256, hex. (A key has 256 random bits: no salt needed.)"""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A new random key, ``iq_...``."""
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def new_webhook_secret() -> str:
    """A new webhook signing secret, ``whsec_...`` (Standard Webhooks)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_WEBHOOK_SECRET_BYTES)).decode()


def _new_api_key(name: str) -> tuple[ApiKey, str]:
    if not name.strip():
        raise ValueError("a key needs a name")
    plaintext = new_key()
    key = ApiKey(
        id="key_" + secrets.token_hex(8),
        name=name.strip(),
        prefix=plaintext[:PREFIX_CHARS],
        key_hash=hash_key(plaintext),
        webhook_secret=new_webhook_secret(),
        created_at=datetime.now(UTC),
    )
    return key, plaintext


def _pick(keys: builtins.list[ApiKey], id_or_prefix: str) -> ApiKey | None:
    """The key named by its id, its whole plaintext, or a unique prefix of the plaintext."""
    for key in keys:
        if key.id == id_or_prefix:
            return key
    if id_or_prefix.startswith(KEY_PREFIX) and len(id_or_prefix) > PREFIX_CHARS:
        digest = hash_key(id_or_prefix)
        return next((k for k in keys if hmac.compare_digest(k.key_hash, digest)), None)
    matches = [k for k in keys if len(id_or_prefix) >= 4 and k.prefix.startswith(id_or_prefix)]
    if len(matches) > 1:
        raise AmbiguousKey(f"{id_or_prefix!r} matches {len(matches)} keys: give the key's id")
    return matches[0] if matches else None


class KeyStore(ABC):
    """Where API keys live. Synchronous: the API calls it from a thread pool."""

    def create(self, name: str) -> tuple[ApiKey, str]:
        """Make a key named ``name``: the stored record, and the key itself (shown once)."""
        key, plaintext = _new_api_key(name)
        self._insert(key)
        return key, plaintext

    @abstractmethod
    def _insert(self, key: ApiKey) -> None:
        """Store a new key."""

    @abstractmethod
    def _by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with that hash, revoked or not."""

    @abstractmethod
    def get(self, key_id: str) -> ApiKey | None:
        """The key with that id, revoked or not."""

    @abstractmethod
    def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""

    @abstractmethod
    def _mark_revoked(self, key_id: str, at: datetime) -> bool:
        """Set ``revoked_at`` unless it is set. True if this call set it."""

    def lookup(self, plaintext: str) -> ApiKey | None:
        """The live key ``plaintext`` is, or None (unknown or revoked)."""
        if not plaintext.startswith(KEY_PREFIX):
            return None
        key = self._by_hash(hash_key(plaintext))
        return None if key is None or key.revoked else key

    def revoke(self, id_or_prefix: str) -> bool:
        """Revoke the key named by its id (or its prefix, or itself). False if none is live.

        AmbiguousKey when a prefix matches several keys.
        """
        key = _pick(self.list(), id_or_prefix)
        if key is None or key.revoked:
            return False
        return self._mark_revoked(key.id, datetime.now(UTC))

    def webhook_secret(self, key_id: str) -> str | None:
        """The secret that signs the webhooks of jobs submitted with key ``key_id``."""
        key = self.get(key_id)
        return None if key is None else key.webhook_secret

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# --- Redis ----------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisKeyStore(KeyStore):
    """Keys in Redis: one JSON value per key, an index by hash, a set of every id."""

    def __init__(self, url: str, *, namespace: str) -> None:
        import redis

        self._redis_errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError, redis.TimeoutError, OSError,
        )
        self.prefix = f"{namespace}:apikey"
        self._all = f"{namespace}:apikeys"
        self._redis = redis.Redis.from_url(
            url, socket_timeout=_CONNECT_TIMEOUT_S, socket_connect_timeout=_CONNECT_TIMEOUT_S
        )

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except self._redis_errors as exc:
            raise StoreUnavailable(f"the Redis key store is unreachable: {exc}") from exc

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:{key_id}"

    def _hash_key(self, key_hash: str) -> str:
        return f"{self.prefix}:hash:{key_hash}"

    def _insert(self, key: ApiKey) -> None:
        with self._unavailable(), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(key.id), key.model_dump_json())
            pipe.set(self._hash_key(key.key_hash), key.id)
            pipe.sadd(self._all, key.id)
            pipe.execute()

    def get(self, key_id: str) -> ApiKey | None:
        """The key with that id, revoked or not."""
        with self._unavailable():
            raw = self._redis.get(self._key(key_id))
        return None if raw is None else ApiKey.model_validate_json(raw)

    def _by_hash(self, key_hash: str) -> ApiKey | None:
        with self._unavailable():
            key_id = self._redis.get(self._hash_key(key_hash))
        return None if key_id is None else self.get(_text(key_id))

    def list(self) -> builtins.list[ApiKey]:
        """Every key, oldest first."""
        with self._unavailable():
            ids = sorted(_text(i) for i in self._redis.smembers(self._all))
            raws = self._redis.mget([self._key(i) for i in ids]) if ids else []
        keys = [ApiKey.model_validate_json(r) for r in raws if r is not None]
        return sorted(keys, key=lambda k: k.created_at)

    def _mark_revoked(self, key_id: str, at: datetime) -> bool:
        import redis

        name = self._key(key_id)
        with self._unavailable(), self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(name)  # type: ignore[no-untyped-call]
                    raw = pipe.get(name)
                    if raw is None:
                        return False
                    key = ApiKey.model_validate_json(raw)
                    if key.revoked:
                        return False
                    pipe.multi()
                    pipe.set(name, key.model_copy(update={"revoked_at": at}).model_dump_json())
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def close(self) -> None:
        """Release connections."""
        self._redis.close()


# --- SQL ------------------------------------------------------------------------------------


def sql_engine(url: str) -> Any:
    """An SQLAlchemy engine for ``url`` set up like the SQL job store's."""
    from inferq.queue.sql_store import create_sql_engine

    return create_sql_engine(url)


@contextlib.contextmanager
def sql_unavailable(what: str) -> Iterator[None]:
    """Turn every way of not reaching the database into StoreUnavailable."""
    from sqlalchemy import exc as sa_exc

    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError,
            sa_exc.TimeoutError) as exc:
        raise StoreUnavailable(f"the SQL {what} is unreachable: {exc}") from exc


def create_tables(engine: Any, metadata: Any, what: str) -> None:
    """``CREATE TABLE IF NOT EXISTS``, tolerating another process doing it at the same time."""
    from sqlalchemy import exc as sa_exc

    try:
        with sql_unavailable(what):
            metadata.create_all(engine)
    except (sa_exc.IntegrityError, sa_exc.ProgrammingError, StoreUnavailable) as exc:
        if "already exists" not in str(exc) and not isinstance(exc, sa_exc.IntegrityError):
            raise
        with sql_unavailable(what):
            metadata.create_all(engine)


class SqlKeyStore(KeyStore):
    """Keys in table ``{namespace}_api_keys`` (PostgreSQL or SQLite)."""

    def __init__(self, url: str, *, namespace: str) -> None:
        from sqlalchemy import Column, Index, MetaData, String, Table

        from inferq.queue.sql_store import _UtcDateTime

        self._metadata = MetaData()
        self._table = Table(
            f"{namespace}_api_keys",
            self._metadata,
            Column("id", String, primary_key=True),
            Column("name", String, nullable=False),
            Column("prefix", String, nullable=False),
            Column("key_hash", String(64), nullable=False, unique=True),
            Column("webhook_secret", String, nullable=False),
            Column("created_at", _UtcDateTime, nullable=False),
            Column("revoked_at", _UtcDateTime),
            Index(f"ix_{namespace}_api_keys_prefix", "prefix"),
        )
        self._engine = sql_engine(url)
        self._ready = False
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    create_tables(self._engine, self._metadata, "key store")
                    self._ready = True
        with sql_unavailable("key store"), self._engine.begin() as conn:
            yield conn

    @staticmethod
    def _key(row: Any) -> ApiKey:
        return ApiKey.model_validate(dict(row._mapping))

    def _insert(self, key: ApiKey) -> None:
        from sqlalchemy import insert

        with self._conn() as conn:
            conn.execute(insert(self._table).values(**key.model_dump()))

    def get(self, key_id: str) -> ApiKey | None:
        """The key with that id, revoked or not."""
        from sqlalchemy import select

        with self._conn() as conn:
            row = conn.execute(select(self._table).where(self._table.c.id == key_id)).first()
        return None if row is None else self._key(row)

    def _by_hash(self, key_hash: str) -> ApiKey | None:
        from sqlalchemy import select

        with self._conn() as conn:
            row = conn.execute(
                select(self._table).where(self._table.c.key_hash == key_hash)
            ).first()
        return None if row is None else self._key(row)

    def list(self) -> builtins.list[ApiKey]:
        """Every key, oldest first."""
        from sqlalchemy import select

        with self._conn() as conn:
            rows = conn.execute(
                select(self._table).order_by(self._table.c.created_at, self._table.c.id)
            ).all()
        return [self._key(r) for r in rows]

    def _mark_revoked(self, key_id: str, at: datetime) -> bool:
        from sqlalchemy import update

        with self._conn() as conn:
            result = conn.execute(
                update(self._table)
                .where(self._table.c.id == key_id, self._table.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
        return bool(result.rowcount)

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()


def create_key_store(url: str, namespace: str) -> KeyStore:
    """The key store for ``url`` (the job store's URL): Redis, PostgreSQL or SQLite."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisKeyStore(url, namespace=namespace)
    if scheme.startswith("postgres") or scheme.startswith("sqlite"):
        return SqlKeyStore(url, namespace=namespace)
    raise ConfigError(f"unsupported key store URL {url!r}: use redis://, postgresql:// or sqlite:///")
