"""Who is calling: the API key behind ``Authorization: Bearer``, and what it may still do.

With ``INFERQ_AUTH=on`` (the default) every ``/v1/*`` route needs a live key; the key's id
is the *owner* passed to every job-store call, so a key sees and cancels only its own jobs
(another key's job is a 404, the same answer as an unknown id). Submits are counted per key
(rate limit) and refused while the key has ``max_in_flight`` jobs queued or running.

With ``INFERQ_AUTH=off`` (a trusted network, or ``inferq serve`` on 127.0.0.1) there is no
owner: every job is visible to every caller and nothing is counted.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from inferq.api import problems
from inferq.auth.keys import ApiKey, KeyStore, hash_key

if TYPE_CHECKING:
    from inferq.auth.ratelimit import RateLimiter
    from inferq.queue.store import JobStore

#: How long a key looked up stays trusted in one process: a revoked key is refused within this.
KEY_CACHE_TTL_S = 5.0
#: Lookups remembered at most (unknown keys included, so guessing cannot flood the store).
KEY_CACHE_MAX = 10_000
#: ``Retry-After`` when a key has too many jobs in flight: there is no telling when one ends.
IN_FLIGHT_RETRY_AFTER_S = 1


def auth_enabled(setting: str) -> bool:
    """True unless the ``auth`` setting says off. Anything unrecognised keeps auth on."""
    return setting.strip().lower() not in ("off", "false", "0", "no")


class Authenticator:
    """Maps a presented key to its live ``ApiKey``, remembering answers for a few seconds."""

    def __init__(self, keys: KeyStore, *, cache_ttl_s: float = KEY_CACHE_TTL_S) -> None:
        self.keys = keys
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def lookup(self, plaintext: str) -> ApiKey | None:
        """The live key, or None if it is unknown or revoked."""
        digest = hash_key(plaintext)  # the cache holds no plaintext keys
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await run_in_threadpool(self.keys.lookup, plaintext)
        if len(self._cache) >= KEY_CACHE_MAX:
            self._cache = {d: v for d, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= KEY_CACHE_MAX:
                self._cache.clear()
        self._cache[digest] = (now + self.cache_ttl_s, key)
        return key


class Admission:
    """The per-key limits on submitting: a rate, then a quota of jobs in flight."""

    def __init__(self, limiter: RateLimiter, store: JobStore, max_in_flight: int) -> None:
        self.limiter = limiter
        self.store = store
        self.max_in_flight = max_in_flight

    async def admit(self, owner: str) -> None:
        """Return if ``owner`` may submit one more job; else raise a 429 problem."""
        wait_s = await run_in_threadpool(self.limiter.check, owner)
        if wait_s is not None:
            raise problems.too_many_requests(
                f"this key submits faster than {self.limiter.rate_per_s:g} jobs per second",
                wait_s,
            )
        active = await run_in_threadpool(self.store.count_active, owner)
        if active >= self.max_in_flight:
            raise problems.too_many_requests(
                f"this key has {active} jobs queued or running (at most {self.max_in_flight})",
                IN_FLIGHT_RETRY_AFTER_S,
            )


_bearer = HTTPBearer(
    auto_error=False,
    description="An API key made by `inferq keys create` (not needed with INFERQ_AUTH=off).",
)


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The owner of this request: its key's id; None when auth is off. 401 otherwise."""
    auth: Authenticator | None = request.app.state.services.auth
    if auth is None:
        return None
    if credentials is None:
        raise problems.unauthorized("send an API key: 'Authorization: Bearer <key>'")
    key = await auth.lookup(credentials.credentials)
    if key is None:
        raise problems.unauthorized("the API key is unknown or revoked", invalid=True)
    return key.id


#: A route parameter: the caller's owner id (see ``authenticate``).
Owner = Annotated[str | None, Depends(authenticate)]
