"""API keys and per-key rate limits on the real Redis and PostgreSQL (and SQLite).

Two store objects on one URL stand for two API replicas: what one writes, the other sees.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferq.auth.keys import (
    AmbiguousKey,
    KeyStore,
    RedisKeyStore,
    SqlKeyStore,
    create_key_store,
    hash_key,
)
from inferq.auth.ratelimit import (
    RateLimiter,
    RedisRateLimiter,
    SqlRateLimiter,
    create_rate_limiter,
)


@pytest.fixture(params=["redis", "postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(URL, a namespace of this test's own) for each store."""
    if request.param == "redis":
        prefix: str = request.getfixturevalue("redis_namespace")
        return request.getfixturevalue("redis_url"), f"{prefix}-auth-{uuid.uuid4().hex[:6]}"
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url"), f"auth{uuid.uuid4().hex[:6]}"
    return f"sqlite:///{tmp_path}/jobs.sqlite", "auth"


@pytest.fixture
def key_stores(backend: tuple[str, str]) -> Iterator[tuple[KeyStore, KeyStore]]:
    url, namespace = backend
    stores = create_key_store(url, namespace), create_key_store(url, namespace)
    yield stores
    for store in stores:
        store.close()


def test_create_key_store_picks_the_store_by_url(backend: tuple[str, str]) -> None:
    url, namespace = backend
    store = create_key_store(url, namespace)
    expected = RedisKeyStore if url.startswith("redis") else SqlKeyStore
    assert isinstance(store, expected)
    store.close()
    limiter = create_rate_limiter(url, namespace, 5)
    assert isinstance(limiter, RedisRateLimiter if url.startswith("redis") else SqlRateLimiter)
    limiter.close()


def test_a_key_made_on_one_replica_is_found_on_another_and_stored_hashed(
        key_stores: tuple[KeyStore, KeyStore]) -> None:
    one, two = key_stores
    key, plaintext = one.create("ci")
    found = two.lookup(plaintext)
    assert found is not None and found.id == key.id and found.name == "ci"
    assert found.key_hash == hash_key(plaintext) != plaintext
    assert found.created_at == key.created_at
    assert two.webhook_secret(key.id) == key.webhook_secret
    assert two.lookup(plaintext + "x") is None
    assert two.lookup("not-a-key") is None
    assert two.webhook_secret("key_nope") is None
    assert [k.id for k in two.list()] == [key.id]


def test_revoke_by_id_or_prefix_and_a_revoked_key_is_not_found(
        key_stores: tuple[KeyStore, KeyStore]) -> None:
    one, two = key_stores
    first, first_plain = one.create("first")
    second, second_plain = one.create("second")
    assert two.revoke(first.id) is True
    assert one.lookup(first_plain) is None
    assert one.revoke(first.id) is False  # already revoked
    assert one.revoke(second.prefix) is True
    assert two.lookup(second_plain) is None
    assert one.revoke("key_nope") is False
    listed = {k.id: k for k in two.list()}
    assert listed[first.id].revoked_at is not None and listed[second.id].revoked_at is not None
    assert [k.name for k in two.list()] == ["first", "second"]  # oldest first


def test_a_prefix_of_several_keys_is_ambiguous(key_stores: tuple[KeyStore, KeyStore]) -> None:
    one, _ = key_stores
    seen: set[str] = set()
    while True:  # 64 url-safe characters: two keys share 4 first characters soon
        shared = one.create(f"k{len(seen)}")[0].prefix[:4]
        if shared in seen:
            break
        seen.add(shared)
    with pytest.raises(AmbiguousKey):
        one.revoke(shared)
    assert all(not k.revoked for k in one.list())


def _window_start(window_s: float) -> None:
    """Sleep to just after a fixed window begins, so a short burst stays inside one."""
    while time.time() % window_s > 0.05:
        time.sleep(0.01)


@pytest.fixture
def limiters(backend: tuple[str, str]) -> Iterator[tuple[RateLimiter, RateLimiter]]:
    url, namespace = backend
    pair = (create_rate_limiter(url, namespace, 5), create_rate_limiter(url, namespace, 5))
    yield pair
    for limiter in pair:
        limiter.close()


def test_rate_limit_is_shared_by_replicas_and_per_key(
        limiters: tuple[RateLimiter, RateLimiter]) -> None:
    one, two = limiters
    _window_start(1.0)
    answers = [(one if i % 2 else two).check("alice") for i in range(10)]
    assert answers[:5] == [None] * 5
    waits = [a for a in answers[5:] if a is not None]
    assert len(waits) == 5
    assert all(0 < w <= 1.0 for w in waits)
    assert one.check("bob") is None  # another key has its own budget


def test_rate_limit_lets_a_key_go_on_after_the_wait(
        limiters: tuple[RateLimiter, RateLimiter]) -> None:
    one, _ = limiters
    _window_start(1.0)
    while (wait := one.check("carol")) is None:
        pass
    time.sleep(wait + 0.05)
    assert one.check("carol") is None
