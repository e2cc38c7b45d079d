"""Webhooks: signed (Standard Webhooks), SSRF-checked, delivered off the inference path.

* ``signing``   -- ``sign`` the three ``webhook-*`` headers; ``new_secret`` makes a ``whsec_``.
* ``ssrf``      -- ``check_webhook_url``: refuse URLs that resolve to internal addresses.
* ``publisher`` -- ``WebhookPublisher``: the worker hands a job's event to the webhook queue.
* ``schedule``  -- ``RetrySchedule``: failed deliveries wait here (Redis or SQL) until due.
* ``sender``    -- ``run_webhook_sender``: consumes the queue and the schedule, sends, records.

Nothing here is imported by the API's request path except ``ssrf`` (at submit).
"""

from __future__ import annotations

from inferq.webhooks.signing import new_secret, sign
from inferq.webhooks.ssrf import UnsafeWebhookURL, check_webhook_url

__all__ = ["UnsafeWebhookURL", "check_webhook_url", "new_secret", "sign"]
