"""The job store on SQL (SQLAlchemy Core): SQLite embedded, PostgreSQL in production.

One row per job in ``{namespace}_jobs``; heartbeats in ``{namespace}_workers``. Both are
created on first use. Every transition is one conditional UPDATE (``WHERE id = :id AND
status IN ('queued', 'running')``), so the first terminal write wins without a
read-modify-write race, and every read is one SELECT of one row.

Idempotency keys: ``idempotency_key`` holds ``json.dumps([owner, key])`` under a unique index,
so the owner is part of the key with no sentinel standing for "no owner" (NULLs never clash
in a unique index, so rows without a key don't either). A create that hits the index reads
the row that holds it; an expired holder is deleted and the insert tried again.

Schema: tables are created on first use; columns added since (and their indexes) are added to
a table an older version made, by ``ALTER TABLE ... ADD COLUMN`` (``_upgrade_schema``).

Expiry: ``expires_at`` is ``result_ttl_s`` after a job ends, and ``result_ttl_s +
PENDING_TTL_MARGIN_S`` after it was created or started while it is queued or running. A row
past it reads as JobNotFound; a DELETE sweeps such rows every ``_SWEEP_EVERY`` creates.

Announcements: PostgreSQL gets ``pg_notify('{namespace}_jobs', '{id} {status}')`` inside the
transaction of the UPDATE, so it is delivered only on commit (``PgJobEvents`` LISTENs).
SQLite has no server to notify through: every API process binds a Unix datagram socket in a
folder beside the database (``SqliteJobEvents``), and after each committed transition the
store sends ``"{id} {status}"`` to every socket there.

PostgreSQL URLs may carry libpq options, e.g. ``?options=-csearch_path%3Dmyschema`` to keep
the tables in their own schema (the integration tests do exactly that).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql
from pydantic_core import to_jsonable_python
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.schema import CreateColumn

from inferq.errors import ConfigError, JobConflict, JobNotFound, StoreUnavailable
from inferq.queue.store import PENDING_TTL_MARGIN_S, JobEvents, JobStore, as_utc
from inferq.schemas import (
    TERMINAL_STATUSES,
    Job,
    JobError,
    JobMetrics,
    JobPage,
    JobStatus,
    WebhookAttempt,
    WorkerInfo,
)

log = logging.getLogger(__name__)

#: Seconds to connect to PostgreSQL; a store that takes longer is "down".
_CONNECT_TIMEOUT_S = 2
#: Milliseconds SQLite waits for another process's write lock before giving up.
_SQLITE_BUSY_TIMEOUT_MS = 5000
#: Delete expired rows once every this many creates in one process.
_SWEEP_EVERY = 100
#: How long a store waits for room in a listener's socket queue (Linux keeps only
#: ``net.unix.max_dgram_qlen``, often 10, datagrams per socket) before dropping one.
_ANNOUNCE_TIMEOUT_S = 0.2
#: Longest socket path a Unix socket takes (sun_path is 108 bytes with its NUL), with room.
_UNIX_PATH_MAX = 100
#: Longest name ``SqliteJobEvents`` gives its socket: "{pid}-{8 hex}.sock".
_SOCKET_NAME_MAX = 30
#: PostgreSQL truncates identifiers, channel names included, to 63 bytes.
_PG_NAME_MAX = 63

_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
#: Webhook attempts kept per job: the latest ones.
_MAX_WEBHOOK_ATTEMPTS = 50
#: Tries of ``create_all`` while other processes create the same tables.
_SCHEMA_ATTEMPTS = 5
#: Tries of a create whose idempotency key is held by a row that then goes away.
_CREATE_ATTEMPTS = 5


class _UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back aware (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def _tables(namespace: str) -> tuple[MetaData, Table, Table]:
    metadata = MetaData()
    jobs = Table(
        f"{namespace}_jobs",
        metadata,
        Column("id", String, primary_key=True),
        Column("model", String, nullable=False),
        Column("status", String(16), nullable=False),
        Column("owner", String),
        Column("created_at", _UtcDateTime, nullable=False),
        Column("started_at", _UtcDateTime),
        Column("finished_at", _UtcDateTime),
        Column("expires_at", _UtcDateTime, nullable=False),
        Column("worker", String),
        Column("input", JSON(none_as_null=True)),
        Column("output", JSON(none_as_null=True)),
        Column("error", JSON(none_as_null=True)),
        Column("metrics", JSON(none_as_null=True)),
        Column("webhook", String),
        Column("webhook_events", JSON(none_as_null=True)),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("duplicate_executions", Integer, nullable=False, server_default="0"),
        Column("webhook_attempts", JSON(none_as_null=True)),
        Column("idempotency_key", String),
        Column("request_hash", String),
        Index(f"ix_{namespace}_jobs_model_id", "model", "id"),
        Index(f"ix_{namespace}_jobs_owner_id", "owner", "id"),
        Index(f"ix_{namespace}_jobs_expires_at", "expires_at"),
        Index(f"ix_{namespace}_jobs_status_started_at", "status", "started_at"),
        Index(f"ix_{namespace}_jobs_owner_status", "owner", "status"),
        # A constraint, not an index: it is made with the table, so no insert can come
        # between the two (an index made after the table could be skipped by a racing
        # process that then writes duplicates).
        UniqueConstraint("idempotency_key", name=f"uq_{namespace}_jobs_idempotency_key"),
    )
    workers = Table(
        f"{namespace}_workers",
        metadata,
        Column("id", String, primary_key=True),
        Column("info", JSON, nullable=False),
        Column("expires_at", _UtcDateTime, nullable=False),
    )
    return metadata, jobs, workers


def _row_job(row: Row[Any]) -> Job:
    return Job(
        id=row.id,
        model=row.model,
        status=JobStatus(row.status),
        input=row.input or {},
        output=row.output,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        worker=row.worker,
        metrics=row.metrics or {},
        webhook=row.webhook,
        webhook_events=row.webhook_events or [],
        attempts=row.attempts or 0,
        duplicate_executions=row.duplicate_executions or 0,
        webhook_attempts=row.webhook_attempts or [],
    )


def _now() -> datetime:
    return datetime.now(UTC)


def sqlite_events_dir(database: Path) -> Path:
    """The folder where the API processes of one SQLite database bind their sockets.

    Beside the database when the socket paths fit a Unix socket's limit, else a folder
    under the temp dir named by a hash of the database's path (the same in every process).
    """
    database = database.resolve()
    folder = Path(f"{database}.events")
    if len(os.fsencode(folder)) + 1 + _SOCKET_NAME_MAX > _UNIX_PATH_MAX:
        digest = hashlib.sha256(os.fsencode(database)).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"inferq-events-{digest}"
    return folder


def normalise_url(url: URL) -> URL:
    """``postgresql://`` with the psycopg 3 driver; an SQLite URL must name a file."""
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        return url
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ConfigError(
                "an SQLite store needs a file (sqlite:///path/jobs.sqlite): API and workers "
                "share it across processes"
            )
        return url
    raise ConfigError(f"unsupported SQL store {url.drivername!r}")


def create_sql_engine(url: str | URL) -> Engine:
    """An engine for inferq's SQL stores (jobs, keys, rate limits, webhook schedule).

    PostgreSQL: psycopg 3, pre-ping, a short connect timeout. SQLite: WAL, so the API
    reads while a worker writes, and a busy timeout, so a second writer waits for the
    lock instead of failing at once.
    """
    url = normalise_url(make_url(url) if isinstance(url, str) else url)
    if url.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    assert url.database is not None
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


class SqlJobStore(JobStore):
    """Jobs in an SQL database through SQLAlchemy Core."""

    def __init__(self, url: str, *, namespace: str, result_ttl_s: int) -> None:
        self.namespace = namespace
        self.result_ttl = timedelta(seconds=result_ttl_s)
        self.pending_ttl = timedelta(seconds=result_ttl_s + PENDING_TTL_MARGIN_S)
        self.channel = f"{namespace}_jobs"
        self._url = self._normalise(make_url(url))
        self._metadata, self._jobs, self._workers = _tables(namespace)
        self._engine = self._make_engine(self._url)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._creates = itertools.count(1)
        self._sender: socket.socket | None = None
        self._sender_lock = threading.Lock()

    # --- connections ------------------------------------------------------------------------

    @property
    def is_postgres(self) -> bool:
        """True on PostgreSQL (NOTIFY), False on SQLite (datagram sockets)."""
        return self._url.get_backend_name() == "postgresql"

    def _normalise(self, url: URL) -> URL:
        url = normalise_url(url)
        if url.get_backend_name() == "postgresql" and len(self.channel.encode()) > _PG_NAME_MAX:
            raise ConfigError(f"namespace {self.namespace!r} is too long for PostgreSQL")
        return url

    def _make_engine(self, url: URL) -> Engine:
        return create_sql_engine(url)

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Turn every way of not reaching the database into StoreUnavailable."""
        try:
            yield
        except (
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.DisconnectionError,
            sa_exc.TimeoutError,
        ) as exc:
            raise StoreUnavailable(f"the SQL job store is unreachable: {exc}") from exc

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            # Processes starting at once can both see no table (or index) and both CREATE it;
            # the loser fails, and a later look finds it. Each look gets further.
            for attempt in range(_SCHEMA_ATTEMPTS):
                try:
                    with self._unavailable():
                        self._metadata.create_all(self._engine)
                    break
                except (sa_exc.IntegrityError, sa_exc.ProgrammingError, StoreUnavailable) as exc:
                    lost_race = "already exists" in str(exc) or isinstance(
                        exc, sa_exc.IntegrityError
                    )
                    if not lost_race or attempt == _SCHEMA_ATTEMPTS - 1:
                        raise
            with self._unavailable():
                self._upgrade_schema()
            self._schema_ready = True

    def _upgrade_schema(self) -> None:
        """Add the columns (and indexes) a jobs table made by an older version lacks."""
        jobs = self._jobs
        have = {c["name"] for c in inspect(self._engine).get_columns(jobs.name)}
        missing = [c for c in jobs.columns if c.name not in have]
        if not missing:
            return
        dialect = self._engine.dialect
        table = dialect.identifier_preparer.format_table(jobs)
        for column in missing:
            ddl = f"ALTER TABLE {table} ADD COLUMN {CreateColumn(column).compile(dialect=dialect)}"
            try:
                with self._engine.begin() as conn:
                    conn.execute(text(ddl))
            except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
                # Another process added it first.
                if "duplicate column" not in str(exc) and "already exists" not in str(exc):
                    raise
            log.info("added column %s to %s", column.name, jobs.name)
        for index in jobs.indexes:
            try:
                index.create(self._engine, checkfirst=True)
            except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
                if "already exists" not in str(exc):
                    raise
        # SQLite cannot add a constraint to a table: a unique index does the same.
        preparer = dialect.identifier_preparer
        name = preparer.quote(f"uq_{self.namespace}_jobs_idempotency_key")
        with self._engine.begin() as conn:
            conn.execute(
                text(f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {table} (idempotency_key)")
            )

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A connection in a transaction that commits on leaving (rolls back on error)."""
        self._ensure_schema()
        with self._unavailable(), self._engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        self._ensure_schema()
        with self._unavailable(), self._engine.connect() as conn:
            yield conn

    # --- announcements ----------------------------------------------------------------------

    def _notify(self, conn: Connection, job_id: str, status: str) -> None:
        """On PostgreSQL: NOTIFY inside the transaction, so it goes out on commit only."""
        if self.is_postgres:
            conn.execute(select(func.pg_notify(self.channel, f"{job_id} {status}")))

    def _announce(self, job_id: str, status: str) -> None:
        """On SQLite: after the commit, a datagram to every listening API process."""
        if self.is_postgres:
            return
        assert self._url.database is not None
        folder = sqlite_events_dir(Path(self._url.database))
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return  # nobody listens yet
        message = f"{job_id} {status}".encode()
        with self._sender_lock:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.settimeout(_ANNOUNCE_TIMEOUT_S)
            for name in names:
                if not name.endswith(".sock"):
                    continue
                path = folder / name
                try:
                    self._sender.sendto(message, os.fsencode(path))
                except (ConnectionRefusedError, FileNotFoundError):
                    # Its process is gone and left the socket file behind.
                    with contextlib.suppress(OSError):
                        path.unlink()
                except (TimeoutError, BlockingIOError):
                    log.warning("job event %s dropped: listener %s is not reading", job_id, name)
                except OSError as exc:
                    if exc.errno != errno.ENOTSOCK:
                        log.warning("job event for %s not sent to %s: %s", job_id, name, exc)

    # --- jobs -------------------------------------------------------------------------------

    def create(
        self,
        job: Job,
        owner: str | None = None,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> Job:
        """Insert a new queued job, or return the one ``idempotency_key`` made.

        The unique index on ``idempotency_key`` makes check and write one step: of two
        racing inserts one commits, the other fails and reads the winner's row.
        """
        data = job.model_dump(mode="json")
        scoped_key = json.dumps([owner, idempotency_key]) if idempotency_key is not None else None
        stmt = insert(self._jobs).values(
            id=job.id,
            model=job.model,
            status=JobStatus.QUEUED.value,
            owner=owner,
            created_at=job.created_at,
            expires_at=_now() + self.pending_ttl,
            input=data["input"],
            output=None,
            error=None,
            metrics=data["metrics"],
            webhook=job.webhook,
            webhook_events=data["webhook_events"],
            attempts=job.attempts,
            duplicate_executions=job.duplicate_executions,
            webhook_attempts=data["webhook_attempts"],
            idempotency_key=scoped_key,
            request_hash=request_hash if scoped_key is not None else None,
        )
        jobs = self._jobs
        for _ in range(_CREATE_ATTEMPTS):
            try:
                with self._begin() as conn:
                    row = conn.execute(stmt.returning(*jobs.c)).one()
            except sa_exc.IntegrityError as exc:
                if scoped_key is None:
                    raise JobConflict(f"a job with id {job.id!r} exists already") from exc
                existing = self._replay(job.id, scoped_key)
                if existing is None:
                    continue  # the key's holder expired and is gone now: insert again
                if existing.request_hash != request_hash:
                    raise JobConflict(
                        f"Idempotency-Key {idempotency_key!r} was used with a different request"
                    ) from exc
                return _row_job(existing)
            if next(self._creates) % _SWEEP_EVERY == 0:
                self._sweep()
            return _row_job(row)
        raise RuntimeError(f"Idempotency-Key {idempotency_key!r} kept naming expiring jobs")

    def _replay(self, job_id: str, scoped_key: str) -> Row[Any] | None:
        """After a failed insert: the live row holding ``scoped_key``, None to try again.

        An expired holder is deleted (as a sweep would) so the key is free; JobConflict when
        it was the id, not the key, that clashed.
        """
        jobs = self._jobs
        with self._begin() as conn:
            row = conn.execute(select(jobs).where(jobs.c.idempotency_key == scoped_key)).first()
            if row is not None and as_utc(row.expires_at) > _now():
                return row
            if row is not None:
                conn.execute(delete(jobs).where(jobs.c.id == row.id, jobs.c.expires_at <= _now()))
                return None
            if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None:
                raise JobConflict(f"a job with id {job_id!r} exists already")
        return None

    def _sweep(self) -> None:
        with self._begin() as conn:
            conn.execute(delete(self._jobs).where(self._jobs.c.expires_at <= _now()))

    def _alive(self, job_id: str) -> Any:
        """WHERE clause: this job, not expired."""
        return (self._jobs.c.id == job_id) & (self._jobs.c.expires_at > _now())

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, from one SELECT of one row."""
        with self._read() as conn:
            row = conn.execute(select(self._jobs).where(self._alive(job_id))).first()
        if row is None or (owner is not None and row.owner != owner):
            raise JobNotFound(job_id)
        return _row_job(row)

    def owner_of(self, job_id: str) -> str | None:
        """The owner column of the job's row."""
        with self._read() as conn:
            row = conn.execute(
                select(self._jobs.c.owner).where(self._alive(job_id))).first()
        if row is None:
            raise JobNotFound(job_id)
        return str(row.owner) if row.owner is not None else None

    def start(self, job_id: str, worker: str, started_at: datetime) -> Job | None:
        """Mark the job running (from queued, or running on a redelivery); None if terminal."""
        jobs = self._jobs
        with self._begin() as conn:
            row = conn.execute(
                update(jobs)
                .where(self._alive(job_id), jobs.c.status.in_(_ACTIVE))
                .values(
                    status=JobStatus.RUNNING.value,
                    worker=worker,
                    started_at=started_at,
                    expires_at=_now() + self.pending_ttl,
                    attempts=jobs.c.attempts + 1,
                )
                .returning(*jobs.c)
            ).first()
            if row is None:
                if conn.execute(select(jobs.c.id).where(self._alive(job_id))).first() is None:
                    raise JobNotFound(job_id)
                return None
            self._notify(conn, job_id, JobStatus.RUNNING.value)
        self._announce(job_id, JobStatus.RUNNING.value)
        return _row_job(row)

    def requeue(self, job_id: str) -> bool:
        """Move a running job back to queued; False if it is not running (or gone)."""
        jobs = self._jobs
        with self._begin() as conn:
            result = conn.execute(
                update(jobs)
                .where(self._alive(job_id), jobs.c.status == JobStatus.RUNNING.value)
                .values(
                    status=JobStatus.QUEUED.value,
                    started_at=None,
                    expires_at=_now() + self.pending_ttl,
                )
            )
            if result.rowcount != 1:
                return False
            self._notify(conn, job_id, JobStatus.QUEUED.value)
        self._announce(job_id, JobStatus.QUEUED.value)
        return True

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
        """Write the terminal state unless one is written already (first write wins)."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"finish needs a terminal status, not {status!r}")
        jobs = self._jobs
        values: dict[str, Any] = {
            "status": status.value,
            "output": to_jsonable_python(output),
            "error": error.model_dump(mode="json") if error is not None else None,
            "finished_at": finished_at,
            "expires_at": _now() + self.result_ttl,
        }
        if metrics is not None:
            values["metrics"] = metrics.model_dump(mode="json")
        with self._begin() as conn:
            result = conn.execute(
                update(jobs).where(self._alive(job_id), jobs.c.status.in_(_ACTIVE)).values(values)
            )
            if result.rowcount != 1:
                # Terminal already (a terminal job never leaves that state): count the run.
                counted = conn.execute(
                    update(jobs)
                    .where(self._alive(job_id), jobs.c.status.not_in(_ACTIVE))
                    .values(duplicate_executions=jobs.c.duplicate_executions + 1)
                )
                if counted.rowcount != 1:
                    raise JobNotFound(job_id)
                return False
            self._notify(conn, job_id, status.value)
        self._announce(job_id, status.value)
        return True

    def add_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> None:
        """Append a webhook delivery attempt (the last 50 are kept); ``expires_at`` stays."""
        jobs = self._jobs
        with self._begin() as conn:
            # A no-op UPDATE first: it locks the row on PostgreSQL and takes the write lock
            # on SQLite, so the read-modify-write below loses no concurrent append.
            locked = conn.execute(
                update(jobs).where(self._alive(job_id)).values(attempts=jobs.c.attempts)
            )
            if locked.rowcount != 1:
                raise JobNotFound(job_id)
            current = conn.execute(
                select(jobs.c.webhook_attempts).where(jobs.c.id == job_id)
            ).scalar_one()
            attempts = [*(current or []), attempt.model_dump(mode="json")]
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(webhook_attempts=attempts[-_MAX_WEBHOOK_ATTEMPTS:])
            )

    def overdue(self, started_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Running jobs that started before ``started_before``, oldest first."""
        if limit < 1:
            return []
        jobs = self._jobs
        query = (
            select(jobs)
            .where(
                jobs.c.status == JobStatus.RUNNING.value,
                jobs.c.started_at < started_before,
                jobs.c.expires_at > _now(),
            )
            .order_by(jobs.c.started_at)
            .limit(limit)
        )
        with self._read() as conn:
            return [_row_job(row) for row in conn.execute(query).all()]

    def count_active(self, owner: str | None) -> int:
        """Queued and running jobs of ``owner`` (None: the jobs without one)."""
        jobs = self._jobs
        owned = jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner
        query = (
            select(func.count())
            .select_from(jobs)
            .where(owned, jobs.c.status.in_(_ACTIVE), jobs.c.expires_at > _now())
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel a queued or running job; JobConflict if it ended already."""
        jobs = self._jobs
        where = [self._alive(job_id), jobs.c.status.in_(_ACTIVE)]
        if owner is not None:
            where.append(jobs.c.owner == owner)
        now = _now()
        with self._begin() as conn:
            row = conn.execute(
                update(jobs)
                .where(*where)
                .values(
                    status=JobStatus.CANCELED.value,
                    finished_at=now,
                    expires_at=now + self.result_ttl,
                )
                .returning(*jobs.c)
            ).first()
            if row is None:
                found = conn.execute(
                    select(jobs.c.status, jobs.c.owner).where(self._alive(job_id))
                ).first()
                if found is None or (owner is not None and found.owner != owner):
                    raise JobNotFound(job_id)
                raise JobConflict(f"job {job_id!r} is {found.status} already")
            self._notify(conn, job_id, JobStatus.CANCELED.value)
        self._announce(job_id, JobStatus.CANCELED.value)
        return _row_job(row)

    def delete(self, job_id: str) -> None:
        """Remove the row; nothing happens if it is gone."""
        with self._begin() as conn:
            conn.execute(delete(self._jobs).where(self._jobs.c.id == job_id))

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
        """Jobs newest first (ids are UUIDv7, so by id descending); keyset pagination."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        jobs = self._jobs
        query = select(jobs).where(jobs.c.expires_at > _now())
        if model is not None:
            query = query.where(jobs.c.model == model)
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if error_type is not None:
            query = query.where(
                jobs.c.status == JobStatus.FAILED.value,
                jobs.c.error["type"].as_string() == error_type,
            )
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if cursor:
            query = query.where(jobs.c.id < cursor)
        query = query.order_by(jobs.c.id.desc()).limit(limit + 1)
        with self._read() as conn:
            rows = conn.execute(query).all()
        page = [_row_job(row) for row in rows[:limit]]
        return JobPage(jobs=page, next_cursor=page[-1].id if len(rows) > limit else None)

    # --- workers ----------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerInfo, ttl_s: float) -> None:
        """Upsert the worker's row, alive for ``ttl_s`` seconds; drop the ones that ran out."""
        workers = self._workers
        # Both dialects spell an upsert the same way, each with its own insert().
        upsert: Any = postgresql_insert if self.is_postgres else sqlite_insert
        now = _now()
        stmt = upsert(workers).values(
            id=worker.id,
            info=worker.model_dump(mode="json"),
            expires_at=now + timedelta(seconds=ttl_s),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[workers.c.id],
            set_={"info": stmt.excluded.info, "expires_at": stmt.excluded.expires_at},
        )
        with self._begin() as conn:
            conn.execute(stmt)
            conn.execute(delete(workers).where(workers.c.expires_at <= now))

    def workers(self) -> builtins.list[WorkerInfo]:
        """Workers whose heartbeat has not run out."""
        workers = self._workers
        with self._read() as conn:
            rows = conn.execute(
                select(workers.c.info).where(workers.c.expires_at > _now()).order_by(workers.c.id)
            ).all()
        return [WorkerInfo.model_validate(row.info) for row in rows]

    # --- plumbing ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        with self._read() as conn:
            conn.execute(select(1))

    def create_events(self) -> JobEvents:
        """LISTEN on PostgreSQL; a datagram socket beside the database on SQLite."""
        if self.is_postgres:
            conninfo = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
            return PgJobEvents(conninfo, self.channel)
        assert self._url.database is not None
        return SqliteJobEvents(sqlite_events_dir(Path(self._url.database)))

    def close(self) -> None:
        """Close pooled connections and the announcement socket."""
        self._engine.dispose()
        with self._sender_lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None


class PgJobEvents(JobEvents):
    """Job announcements by PostgreSQL LISTEN, reconnecting by itself after a restart.

    Announcements sent while the connection is down are lost: a waiter must not rely on
    one arriving, and re-reads the job after a timeout.
    """

    #: How long to wait for a notification before checking the connection is alive.
    idle_check_s = 30.0

    def __init__(self, conninfo: str, channel: str) -> None:
        super().__init__()
        self._conninfo = conninfo
        self._channel = channel

    async def start(self) -> None:
        """LISTEN; returns once PostgreSQL has registered it. StoreUnavailable if it cannot."""
        conn = await self._listen()
        self._task = asyncio.create_task(self._run(conn), name="inferq-pg-events")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        await self._stop_task()

    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot LISTEN for job events: {exc}") from exc
        try:
            await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self._channel)))
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, psycopg.OperationalError):
                raise StoreUnavailable(f"cannot LISTEN for job events: {exc}") from exc
            raise
        return conn

    async def _run(self, conn: psycopg.AsyncConnection[Any]) -> None:
        backoff_s = 0.1
        try:
            while True:
                try:
                    while True:
                        async for notify in conn.notifies(timeout=self.idle_check_s):
                            self.dispatch_message(notify.payload)
                        # Quiet for a while: make sure the connection is still there.
                        await conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    log.warning("lost the PostgreSQL job-events connection (%s); reconnecting", exc)
                with contextlib.suppress(Exception):
                    await conn.close()
                while True:
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
                    try:
                        conn = await self._listen()
                    except StoreUnavailable:
                        continue
                    log.info("listening for PostgreSQL job events again")
                    backoff_s = 0.1
                    break
        finally:
            with contextlib.suppress(Exception):
                await conn.close()


class SqliteJobEvents(JobEvents):
    """Job announcements for SQLite: datagrams on a Unix socket this process binds.

    The socket lives in ``sqlite_events_dir(database)``; a store sends every committed
    transition to each socket there. A burst larger than the socket queue may drop an
    announcement, so a waiter re-reads the job after a timeout.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Bind the socket; announcements are received from the moment this returns."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        for attempt in range(3):
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                sock.bind(os.fsencode(path))
                break
            except FileNotFoundError:
                # Another process's stop() removed the empty folder just now: make it again.
                if attempt == 2:
                    sock.close()
                    raise
        self._sock, self._path = sock, path
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            self.dispatch_message(data)

    async def stop(self) -> None:
        """Close and remove the socket."""
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when no other listener is left in it
        self._sock = self._path = self._loop = None
