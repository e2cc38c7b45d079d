"""The API's one door to the broker: publish a job, check the broker is there."""

from __future__ import annotations

import logging
from typing import Any

from kombu.exceptions import KombuError, OperationalError

from inferq.config import Settings
from inferq.errors import BrokerUnavailable
from inferq.queue.celery_app import PREDICT_TASK, create_celery, queue_name

log = logging.getLogger(__name__)


class Broker:
    """Publishes jobs to the per-model queues. Synchronous: call it from a thread pool."""

    def __init__(self, settings: Settings, models: list[str]) -> None:
        self._settings = settings
        self._app = create_celery(settings, models)
        self._webhooks: Any = None

    def publish(self, job_id: str, model: str, input: Any, *, batch: bool = False) -> None:
        """Send one job; returns once the broker has it (confirmed on RabbitMQ).

        ``input`` is the job's input as JSON, or for a batch job the list of inputs.
        """
        try:
            self._app.send_task(
                PREDICT_TASK,
                args=[job_id, model, input],
                kwargs={"batch": batch},
                queue=queue_name(self._settings.namespace, model),
                task_id=job_id,
                retry=True,
                retry_policy={
                    "max_retries": 2,
                    "interval_start": 0.1,
                    "interval_step": 0.2,
                    "interval_max": 0.5,
                },
            )
        except (OperationalError, KombuError, OSError, TimeoutError) as exc:
            log.warning("publish of job %s failed: %s", job_id, exc)
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc

    def publish_webhook(self, job_id: str, event: str, owner: str | None = None) -> None:
        """Queue a webhook delivery (e.g. ``completed`` for a job canceled before it ran).

        Never raises: a delivery that cannot be queued is logged by the publisher.
        """
        if self._webhooks is None:
            from inferq.webhooks.publisher import WebhookPublisher

            self._webhooks = WebhookPublisher(self._settings)
        self._webhooks.publish(job_id, event, owner=owner)

    def ping(self) -> None:
        """Raise BrokerUnavailable unless a connection to the broker can be made."""
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=self._settings.broker_timeout_s)
        except (OperationalError, KombuError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc

    def close(self) -> None:
        """Release the broker connections."""
        if self._webhooks is not None:
            self._webhooks.close()
        self._app.close()
