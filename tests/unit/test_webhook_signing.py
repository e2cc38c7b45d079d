"""Webhook signatures verify with the Standard Webhooks reference package."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from inferq.webhooks.signing import new_secret, secret_key, sign


def test_new_secret_is_whsec_and_32_random_bytes() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and b.startswith("whsec_")
    assert a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32


def test_signature_verifies_with_reference_package() -> None:
    secret = new_secret()
    body = json.dumps({"type": "job.completed", "data": {"id": "j1", "output": [1.5, "ü"]}})
    headers = sign(secret, "msg_j1_completed", int(time.time()), body.encode())
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body.encode(), headers) == json.loads(body)


def test_known_vector_from_the_spec_libraries() -> None:
    # The example of the Standard Webhooks reference implementations' test suites.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                   b'{"test": 2432232314}')
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_tampered_body_id_or_secret_fails() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    headers = sign(secret, "msg_x_completed", int(time.time()), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_y_completed"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_old_timestamp_is_refused_by_receivers() -> None:
    secret = new_secret()
    headers = sign(secret, "msg_x_completed", int(time.time()) - 3600, b"{}")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b"{}", headers)


def test_same_id_on_every_attempt_signature_changes_with_time() -> None:
    secret = new_secret()
    first = sign(secret, "msg_j_completed", 1_700_000_000, b"{}")
    second = sign(secret, "msg_j_completed", 1_700_000_060, b"{}")
    assert first["webhook-id"] == second["webhook-id"]
    assert first["webhook-signature"] != second["webhook-signature"]


@pytest.mark.parametrize("bad_id", ["a.b", "a b", "a\nb"])
def test_ids_that_would_make_the_signed_string_ambiguous_are_refused(bad_id: str) -> None:
    with pytest.raises(ValueError):
        sign(new_secret(), bad_id, 1, b"{}")


def test_secret_without_prefix_and_unpadded_is_accepted() -> None:
    secret = new_secret()
    raw = secret.removeprefix("whsec_").rstrip("=")
    assert secret_key(raw) == secret_key(secret)
