"""A worker process: load the models once, heartbeat, and run the batching consume loop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from datetime import UTC, datetime
from types import FrameType

from inferq.config import Settings
from inferq.queue.celery_app import model_queue, transport_options
from inferq.queue.consumer import BatchingConsumer
from inferq.queue.store import JobStore, create_store
from inferq.registry import ModelSpec
from inferq.schemas import WorkerInfo
from inferq.worker.runtime import WorkerRuntime, pick_device

log = logging.getLogger(__name__)


def _heartbeat_loop(
    store: JobStore, info: WorkerInfo, every_s: float, stop: threading.Event
) -> None:
    while not stop.is_set():
        try:
            store.heartbeat(info.model_copy(update={"last_seen": datetime.now(UTC)}), every_s * 3)
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not stop the worker
            log.warning("heartbeat failed: %s", exc)
        stop.wait(every_s)


def run_worker(settings: Settings, specs: dict[str, ModelSpec], *, device: str = "auto") -> None:
    """Load the models, then consume their queues until SIGTERM/SIGINT.

    On the first signal the worker finishes the batch in hand and stops; messages it
    held but had not run go back to the broker. The model runs in this process's main
    thread: one process holds one copy of each model; run more processes to scale out
    (one per GPU -- CUDA and JAX do not survive ``fork``).
    """
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
    consumer = BatchingConsumer(
        settings.broker_url,
        {m: model_queue(settings.namespace, m) for m in specs},
        specs,
        runtime,
        transport_options=transport_options(settings.broker_url),
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        if consumer.stop_event.is_set():
            raise SystemExit(1)  # a second signal: stop now
        log.info("signal %d: finishing the batch in hand, then stopping", signum)
        consumer.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

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
    knobs = ", ".join(f"{s.name} (max_batch_size={s.max_batch_size}, "
                      f"batch_timeout_s={s.batch_timeout_s:g})" for s in specs.values())
    log.info("worker %s on %s serving %s", worker_id, device, knobs)
    try:
        consumer.run()
    finally:
        stop.set()
        store.close()
        log.info("worker %s stopped", worker_id)
