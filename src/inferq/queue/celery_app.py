"""The Celery app: JSON only, late acks, one durable queue per model.

Celery moves the messages; inferq's own job store (not Celery's result backend) holds
every job's state -- ``PENDING`` in Celery means "waiting or unknown", which a client
must never be told.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from inferq.config import Settings
from inferq.queue import sqla_transport

sqla_transport.install()

#: The one task name. Its arguments: ``(job_id, model, input)`` with ``input`` as JSON.
PREDICT_TASK = "inferq.predict"


def queue_name(namespace: str, model: str) -> str:
    """The broker queue that carries the jobs of ``model``."""
    return f"{namespace}.{model}"


#: RabbitMQ's own bound on deliveries of one message, a last resort behind inferq's count
#: of attempts in the job store (``Model.max_deliveries``), which acts first. Quorum
#: queues in RabbitMQ 3.x have no default limit.
RABBITMQ_DELIVERY_LIMIT = 20


def dead_letter_queue(namespace: str) -> Queue:
    """Where RabbitMQ puts rejected messages (malformed, not JSON) and over-delivered ones."""
    name = f"{namespace}.dead"
    return Queue(name, Exchange(name, type="fanout", durable=True), routing_key=name,
                 durable=True, queue_arguments={"x-queue-type": "quorum"})


def model_queue(namespace: str, model: str, broker_url: str = "") -> Queue:
    """The durable queue of ``model``, bound to the namespace's direct exchange by its name.

    With one shared routing key, RabbitMQ would copy every job into every model's queue.
    On RabbitMQ it is a quorum queue (replicated, with a delivery limit) that dead-letters
    to ``dead_letter_queue``.
    """
    name = queue_name(namespace, model)
    exchange = Exchange(namespace, type="direct", durable=True)
    arguments: dict[str, Any] = {}
    if is_rabbitmq(broker_url):
        arguments = {
            "x-queue-type": "quorum",
            "x-delivery-limit": RABBITMQ_DELIVERY_LIMIT,
            "x-dead-letter-exchange": f"{namespace}.dead",
        }
    return Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments)


def is_rabbitmq(broker_url: str) -> bool:
    """True for ``amqp://``/``amqps://``/``pyamqp://`` URLs."""
    return broker_url.split(":", 1)[0] in ("amqp", "amqps", "pyamqp")


def transport_options(broker_url: str) -> dict[str, Any]:
    scheme = broker_url.split(":", 1)[0]
    if scheme.startswith("amqp") or scheme == "pyamqp":
        # Without publisher confirms a message can vanish after the API answered 202.
        return {"confirm_publish": True}
    if scheme.startswith("sqla"):
        # The SQLAlchemy transport polls: the default of 1 s would add up to 1 s of
        # latency; 50 ms keeps an idle embedded worker at a few % of a core.
        return {"polling_interval": 0.05}
    if scheme.startswith("redis"):
        # Unacked messages come back after this long even while still running; keep it
        # far above any hard time limit (PITFALLS: Redis visibility timeout).
        return {"visibility_timeout": 6 * 3600}
    return {}


def create_celery(settings: Settings, models: Iterable[str] = ()) -> Celery:
    """A Celery app for ``settings``, declaring a queue for each model named."""
    app = Celery("inferq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # Ack only after the result is stored; a killed worker's job comes back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.broker_timeout_s,
        broker_transport_options=transport_options(settings.broker_url),
        task_default_queue=f"{settings.namespace}.default",
        task_queues=[model_queue(settings.namespace, m, settings.broker_url) for m in models],
        task_default_exchange=settings.namespace,
        task_create_missing_queues=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
