"""The real services integration tests run against, on 127.0.0.1.

A missing service FAILS the test that needs it, with the command that starts it: CI must
never pass by skipping. Each service's address can be moved with an environment variable
(``INFERQ_TEST_REDIS_URL``, ``INFERQ_TEST_PG_URL``, ``INFERQ_TEST_AMQP_URL``).

Isolation, so that several test sessions can share the servers:

* Redis: database 13, and keys under a session namespace ``inferq-test-<8 hex>``
  (``redis_namespace``); every key starting with it is deleted at the end. Tests that build
  their own namespaces should start them with ``redis_namespace`` so they are cleaned up too.
* PostgreSQL: a schema ``inferq_test_<8 hex>`` in database ``test``, named in the URL
  (``?options=-csearch_path%3D<schema>``, a libpq option that psycopg passes on), dropped
  with everything in it at the end.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from psycopg import sql


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``integration``."""
    for item in items:
        if "/tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


def _missing(service: str, address: str, start: str, exc: BaseException) -> NoReturn:
    pytest.fail(
        f"{service} is not reachable at {address} ({exc}). Integration tests need it: "
        f"start it with `{start}` (or point {_ENV[service]} at one).",
        pytrace=False,
    )


_ENV = {
    "Redis": "INFERQ_TEST_REDIS_URL",
    "PostgreSQL": "INFERQ_TEST_PG_URL",
    "RabbitMQ": "INFERQ_TEST_AMQP_URL",
}


@pytest.fixture(scope="session")
def redis_namespace() -> str:
    """The prefix of every Redis key this test session writes."""
    return f"inferq-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_url(redis_namespace: str) -> Iterator[str]:
    """A Redis URL on database 13; the session's keys are deleted afterwards."""
    url = os.environ.get(_ENV["Redis"], "redis://127.0.0.1:6379/13")
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
        problem = None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        problem = exc
    if problem is not None:  # failed outside the except: no chained traceback in the report
        _missing("Redis", url, "sudo service redis-server start", problem)
    yield url
    # The namespace is hex and dashes: no glob characters to escape.
    keys = list(client.scan_iter(match=f"{redis_namespace}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose tables land in a fresh schema, dropped afterwards."""
    base = os.environ.get(_ENV["PostgreSQL"], "postgresql://postgres@127.0.0.1:5432/test")
    schema = f"inferq_test_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=2) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        problem = None
    except psycopg.OperationalError as exc:
        problem = exc
    if problem is not None:
        _missing("PostgreSQL", base, "sudo service postgresql start", problem)
    separator = "&" if urlsplit(base).query else "?"
    yield f"{base}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(base, autocommit=True, connect_timeout=2) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="session")
def pg_schema(pg_url: str) -> str:
    """The schema ``pg_url`` puts its tables in."""
    return pg_url.rsplit("%3D", 1)[1]


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """RabbitMQ's URL, once a plain TCP connect shows it listens."""
    url = os.environ.get(_ENV["RabbitMQ"], "amqp://guest:guest@127.0.0.1:5672//")
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 5672)
    try:
        socket.create_connection(address, timeout=2).close()
        problem = None
    except OSError as exc:
        problem = exc
    if problem is not None:
        _missing(
            "RabbitMQ", f"{address[0]}:{address[1]}", "sudo service rabbitmq-server start", problem
        )
    return url
