"""Webhook signatures per the Standard Webhooks specification (standardwebhooks.com).

The receiver gets three headers:

* ``webhook-id``        -- the message id, the same on every retry (receivers dedupe by it);
* ``webhook-timestamp`` -- integer Unix seconds of this attempt (receivers refuse old ones);
* ``webhook-signature`` -- ``v1,<base64 HMAC-SHA256>`` of ``"{id}.{timestamp}.{body}"``,
  keyed with the base64-decoded part of the ``whsec_...`` secret.

Written with ``hmac``/``hashlib`` so the server needs no extra dependency; the tests verify
the result with the ``standardwebhooks`` reference package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"
#: 32 random bytes: the spec allows 24 to 64; HMAC-SHA256 gains nothing beyond its block.
_SECRET_BYTES = 32


def new_secret() -> str:
    """A new random signing secret, ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(_SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret. ValueError if it is not valid base64."""
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        # The reference libraries accept unpadded base64; so do we (extra '=' are ignored).
        key = base64.b64decode(raw + "==", validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret must be whsec_ followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """``v1,<base64>``: the signature of one message (no other versions exist yet)."""
    payload = body.encode() if isinstance(body, str) else body
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` sent as ``msg_id`` at ``timestamp``.

    ``timestamp`` is integer Unix seconds; it must be the time of this attempt (receivers
    refuse messages more than a few minutes old), while ``msg_id`` stays the same across
    retries.
    """
    if any(c in msg_id for c in ".\r\n "):
        # The id is part of the signed string and of a header: a '.' would make the
        # signed content ambiguous, CR/LF would split the header.
        raise ValueError(f"webhook id {msg_id!r} must not contain '.', spaces or newlines")
    ts = int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature(secret, msg_id, ts, body),
    }
