"""A worker process: load the models once, heartbeat, reap, and run the consume loop.

``inferq worker`` runs ``supervise()``: a small parent that imports no model framework
and keeps one worker process (``run_worker``) alive -- a job that kills its worker
(segfault, OOM, ``os._exit``) or a hard time limit ends that process, and the parent
starts a fresh one, with backoff if it keeps dying at start-up.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from types import FrameType

from inferq.config import Settings
from inferq.errors import StoreUnavailable
from inferq.queue.celery_app import (
    dead_letter_queue,
    is_rabbitmq,
    model_queue,
    transport_options,
)
from inferq.queue.consumer import BatchingConsumer, WebhookSink
from inferq.queue.monitor import BackgroundEvents, WorkerEvents
from inferq.queue.store import JobStore, create_store
from inferq.registry import ModelSpec
from inferq.schemas import JobError, JobStatus, WorkerInfo
from inferq.worker.runtime import WorkerRuntime, pick_device

log = logging.getLogger(__name__)

#: Exit status of a worker that ended itself after a hard time limit.
EXIT_HARD_TIMEOUT = 70
#: How often the reaper looks for jobs still "running" past their deadline.
REAP_EVERY_S = 15.0
#: Slack past a model's hard time limit before its running job counts as abandoned.
REAP_GRACE_S = 60.0


def reap(store: JobStore, specs: dict[str, ModelSpec], now: datetime) -> int:
    """Fail the jobs still ``running`` past their model's hard limit: their worker is gone.

    Several workers may reap at once; the first terminal write wins. Returns how many
    this call failed.
    """
    limits = {name: s.time_limit_s for name, s in specs.items()}
    default = max(limits.values(), default=600.0)
    shortest = min(limits.values(), default=default)
    reaped = 0
    for job in store.overdue(now - timedelta(seconds=shortest + REAP_GRACE_S)):
        limit = limits.get(job.model, default)
        if job.started_at is None or job.started_at > now - timedelta(
                seconds=limit + REAP_GRACE_S):
            continue
        error = JobError(type="JobTimeout", message=(
            f"still running {limit + REAP_GRACE_S:g} s after it started (time_limit_s="
            f"{limit:g}); its worker was lost"))
        if store.finish(job.id, JobStatus.FAILED, error=error, finished_at=now):
            reaped += 1
            log.warning("reaped job %s (%s): running past its deadline", job.id, job.model)
    return reaped


def _background(
    store: JobStore, specs: dict[str, ModelSpec], info: WorkerInfo,
    events: WorkerEvents | BackgroundEvents,
    every_s: float, stop: threading.Event,
) -> None:
    last_reap = 0.0
    while not stop.is_set():
        try:
            store.heartbeat(info.model_copy(update={"last_seen": datetime.now(UTC)}), every_s * 3)
            if time.monotonic() - last_reap >= REAP_EVERY_S:
                last_reap = time.monotonic()
                reap(store, specs, datetime.now(UTC))
        except StoreUnavailable as exc:
            log.warning("heartbeat/reaper: job store unreachable: %s", exc)
        except Exception:  # a failed beat must never stop the worker
            log.exception("heartbeat/reaper failed")
        # Flower marks a worker offline after two missed beats: beat from this thread, so
        # a long batch in the main thread does not make the worker look dead.
        events.maybe_heartbeat()
        stop.wait(min(every_s, events.freq))


def declare_dead_letters(settings: Settings) -> None:
    """Declare the dead-letter exchange and queue the model queues point at."""
    from kombu import Connection  # type: ignore[attr-defined]

    with Connection(settings.broker_url) as conn:
        dead_letter_queue(settings.namespace)(conn.default_channel).declare()


def _webhook_sink(settings: Settings) -> WebhookSink | None:
    try:
        from inferq.webhooks.publisher import WebhookPublisher
    except ImportError:
        return None
    sink: WebhookSink = WebhookPublisher(settings)
    return sink


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
    runtime = WorkerRuntime(specs, store, worker_id, device,
                            on_hard_timeout=lambda: os._exit(EXIT_HARD_TIMEOUT))
    runtime.setup()  # before consuming: the first job must not pay for loading
    if is_rabbitmq(settings.broker_url):
        declare_dead_letters(settings)
    events = BackgroundEvents(WorkerEvents.for_settings(settings, list(specs)))
    consumer = BatchingConsumer(
        settings.broker_url,
        {m: model_queue(settings.namespace, m, settings.broker_url) for m in specs},
        specs,
        runtime,
        transport_options=transport_options(settings.broker_url),
        events=events,
        webhooks=_webhook_sink(settings),
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
    events.online()
    beat = threading.Thread(
        target=_background,
        args=(store, specs, info, events, settings.worker_heartbeat_s, stop),
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
        events.offline()
        events.close()
        store.close()
        log.info("worker %s stopped", worker_id)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no orphaned workers)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def supervise(child_args: list[str]) -> int:
    """Run ``python -m inferq worker --no-supervise ...`` and start it again when it dies.

    A clean exit (status 0, after SIGTERM/SIGINT) ends supervision. Restarts back off
    from 1 s to 30 s while the child keeps dying within 10 s of starting.
    """
    cmd = [sys.executable, "-m", "inferq", "worker", "--no-supervise", *child_args]
    stopping = threading.Event()
    proc: subprocess.Popen[bytes] | None = None

    def _forward(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    backoff = 1.0
    while True:
        started = time.monotonic()
        proc = subprocess.Popen(cmd)
        code = proc.wait()
        if stopping.is_set() or code == 0:
            return 0 if stopping.is_set() else code
        lived = time.monotonic() - started
        backoff = 1.0 if lived > 10 else min(backoff * 2, 30.0)
        log.warning("worker process %d exited with %s after %.1f s; starting a new one in "
                    "%.0f s", proc.pid, code, lived, backoff if lived <= 10 else 0)
        if lived <= 10 and stopping.wait(backoff):
            return 0
