"""The Celery glue of a worker: the ``inferq.predict`` task and the worker's main loop."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task

from inferq.config import Settings
from inferq.errors import StoreUnavailable
from inferq.queue.celery_app import PREDICT_TASK, create_celery, queue_name
from inferq.queue.store import JobStore, create_store
from inferq.registry import ModelSpec
from inferq.schemas import WorkerInfo
from inferq.worker.runtime import WorkerRuntime, WorkItem, pick_device

log = logging.getLogger(__name__)

#: Pools that keep the model in the worker's own process. Prefork is left out on purpose:
#: CUDA cannot be initialised in a forked child and JAX deadlocks after fork; scale out
#: with more worker processes instead (one per GPU).
POOLS = ("solo", "threads")


def register_tasks(app: Celery, runtime: WorkerRuntime) -> None:
    """Bind the ``inferq.predict`` task of ``app`` to ``runtime``."""

    @app.task(  # type: ignore[untyped-decorator]
        name=PREDICT_TASK, bind=True, acks_late=True, reject_on_worker_lost=True
    )
    def predict(self: Task, job_id: str, model: str, input: dict[str, Any]) -> None:
        if model not in runtime.specs:
            log.error("job %s is for model %s, which this worker does not serve", job_id, model)
            return
        try:
            runtime.run_batch(model, [WorkItem(job_id, input)])
        except StoreUnavailable as exc:
            # Nothing was recorded; run it again once the store is back.
            log.warning("job store unreachable while running %s: %s; retrying", job_id, exc)
            raise self.retry(countdown=2.0, max_retries=None) from exc


def _heartbeat_loop(
    store: JobStore, info: WorkerInfo, every_s: float, stop: threading.Event
) -> None:
    while not stop.is_set():
        try:
            store.heartbeat(info.model_copy(update={"last_seen": datetime.now(UTC)}), every_s * 3)
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not stop the worker
            log.warning("heartbeat failed: %s", exc)
        stop.wait(every_s)


def run_worker(
    settings: Settings,
    specs: dict[str, ModelSpec],
    *,
    pool: str = "solo",
    concurrency: int = 1,
    device: str = "auto",
    loglevel: str = "INFO",
) -> None:
    """Load the models, then consume their queues until stopped (SIGTERM: warm shutdown)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}")
    if settings.embedded:
        settings.ensure_home()
    store = create_store(
        settings.result_url, namespace=settings.namespace, result_ttl_s=settings.result_ttl_s
    )
    hostname = socket.gethostname()
    worker_id = f"{hostname}:{os.getpid()}"
    device = pick_device(device)
    runtime = WorkerRuntime(specs, store, worker_id, device)
    runtime.setup()  # before consuming: the first job must not pay for loading

    app = create_celery(settings, specs)
    if settings.embedded:
        # kombu's SQLAlchemy transport has no fanout exchanges for events.
        app.conf.worker_send_task_events = False
    register_tasks(app, runtime)

    info = WorkerInfo(
        id=worker_id, models=sorted(specs), hostname=hostname, pid=os.getpid(),
        device=device, last_seen=datetime.now(UTC),
    )
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat_loop, args=(store, info, settings.worker_heartbeat_s, stop),
        name="inferq-heartbeat", daemon=True,
    )
    beat.start()
    queues = ",".join(queue_name(settings.namespace, m) for m in specs)
    argv = [
        "worker", "--pool", pool, "--concurrency", str(concurrency), "--queues", queues,
        "--hostname", f"inferq-{os.getpid()}@{hostname}", "--loglevel", loglevel,
        "--without-gossip", "--without-mingle",
    ]
    if settings.embedded:
        argv.append("--without-heartbeat")
    try:
        app.worker_main(argv)
    finally:
        stop.set()
        store.close()
