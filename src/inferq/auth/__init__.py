"""Access control: API keys (``keys``), per-key rate limits (``ratelimit``), ``inferq keys``.

A key is ``iq_`` + 32 random bytes (url-safe base64), shown once when it is made and
stored only as its SHA-256. The API maps ``Authorization: Bearer <key>`` to the key's id,
and that id owns the jobs submitted with it: another key's job is a 404.
"""

from inferq.auth.keys import ApiKey, KeyStore, create_key_store, hash_key
from inferq.auth.ratelimit import RateLimiter, create_rate_limiter

__all__ = [
    "ApiKey",
    "KeyStore",
    "RateLimiter",
    "create_key_store",
    "create_rate_limiter",
    "hash_key",
]
