"""The one-task-per-request baseline, worker side: the design of the FastAPI + Celery
tutorials, written minimally so that inferq has something honest to be compared with.

One Celery task per request; the image travels base64-encoded inside the task message;
the result goes to Celery's Redis result backend. Run as the tutorials do, with Celery's
default pool (prefork) and its default concurrency (one child per CPU: 2 here)::

    cd benchmarks && celery -A baseline.tasks worker --concurrency 2 -Q $BASELINE_QUEUE

Prefork, not solo: it is what the tutorials run, and with 2 children the baseline uses
both cores (inferq's solo worker is one process). Each child loads the model once, in
``worker_process_init``, after the fork -- PyTorch's thread pools do not survive a fork.

The model is ``inferq.models.mnist.MnistModel``, so the per-image work is identical to
inferq's; ``predict`` is called with a batch of one, as a one-task-per-request design does.

Settings come from the environment (``benchmarks/run_all.py`` sets unique ones):
``BASELINE_BROKER_URL`` (RabbitMQ), ``BASELINE_RESULT_URL`` (Redis, DB 14 by default),
``BASELINE_QUEUE`` and ``BASELINE_KEY_PREFIX`` (prefix of the result keys in Redis).
"""

from __future__ import annotations

import base64
import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from inferq.models.mnist import MnistModel

BROKER_URL = os.environ.get("BASELINE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
RESULT_URL = os.environ.get("BASELINE_RESULT_URL", "redis://127.0.0.1:6379/14")
QUEUE = os.environ.get("BASELINE_QUEUE", "baseline.predict")
KEY_PREFIX = os.environ.get("BASELINE_KEY_PREFIX", "baseline:")
TASK_NAME = "baseline.predict"

celery_app = Celery("baseline", broker=BROKER_URL, backend=RESULT_URL)
celery_app.conf.update(
    task_default_queue=QUEUE,
    # Only so that a run can delete exactly its own keys afterwards.
    result_backend_transport_options={"global_keyprefix": KEY_PREFIX},
    result_expires=3600,
)

_model: MnistModel | None = None


def _load() -> MnistModel:
    global _model
    if _model is None:
        model = MnistModel()
        model.setup()
        _model = model
    return _model


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    _load()


@celery_app.task(name=TASK_NAME)
def predict(image_b64: str) -> dict[str, Any]:
    """Read the digit in one base64-encoded image."""
    item = MnistModel.Input(image=base64.b64decode(image_b64))
    output = _load().predict([item])[0]
    return output.model_dump()
