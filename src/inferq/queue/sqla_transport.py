"""kombu's SQLAlchemy transport, tuned for the embedded SQLite broker.

Two fixes over the stock transport: the ``polling_interval`` transport option is not
passed on to ``create_engine`` (the stock one passes every option there and fails), and
SQLite runs in WAL mode with a busy timeout, because the API and the worker processes
write to the same file.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as _Channel
from kombu.transport.sqlalchemy import Transport as _Transport
from sqlalchemy import create_engine, event

_ENGINE_IGNORED = {
    "queue_tablename", "message_tablename", "callback", "errback", "max_retries",
    "interval_start", "interval_step", "interval_max", "retry_errors", "polling_interval",
    "confirm_publish", "visibility_timeout",
}


class Channel(_Channel):
    """A channel whose engine gets only engine options, and WAL mode on SQLite."""

    def _engine_from_config(self) -> Any:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items()
                   if k not in _ENGINE_IGNORED}
        url = conninfo.hostname
        if url.startswith("sqlite"):
            options.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **options)
        if url.startswith("sqlite"):

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

        return engine


class Transport(_Transport):
    """The SQLAlchemy transport with ``Channel`` above."""

    Channel = Channel


def install() -> None:
    """Make ``sqla+...`` broker URLs use this transport."""
    TRANSPORT_ALIASES["sqla"] = "inferq.queue.sqla_transport:Transport"
    TRANSPORT_ALIASES["sqlalchemy"] = "inferq.queue.sqla_transport:Transport"
