"""Shared pieces of the fault-injection ("chaos") tests (``conftest.py`` holds the fixtures).

Each test starts real inferq processes (``Stack``: an API and N supervised workers in a
namespace of its own) on the real services of 127.0.0.1, injects one fault, and prints
one line of ``Counts`` -- submitted / accepted / terminal / lost / duplicate executions --
which ``pytest -s`` shows and the terminal summary repeats. docs/reliability.md records them.

The service fixtures (``amqp_url``, ``redis_url``, ``redis_namespace``, ``pg_url``) are the
integration tests' own: a missing service fails the test, and what a test writes under the
session's namespace is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from kombu import Connection
from tests.procs import Proc, free_port, inferq_env, wait_until, workers_online

from inferq.errors import JobNotFound
from inferq.queue.store import JobStore, create_store
from inferq.schemas import Job

#: Every ``Counts`` printed in this session, repeated in the terminal summary.
REPORTED: list[Counts] = []


@dataclass
class Counts:
    """What one chaos run did: the numbers docs/reliability.md quotes."""

    name: str
    submitted: int = 0
    accepted: int = 0
    terminal: int = 0
    lost: int = 0
    duplicate_executions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"[chaos {self.name}] submitted={self.submitted} accepted={self.accepted} "
                f"terminal={self.terminal} lost={self.lost} "
                f"duplicate_executions={self.duplicate_executions}"
                + (f" {extra}" if extra else ""))

    def report(self, record_property: Callable[[str, object], None] | None = None) -> None:
        """Print the line (``pytest -s``), keep it for the summary and the JUnit report."""
        print("\n" + self.line(), flush=True)
        REPORTED.append(self)
        if record_property is not None:
            record_property("chaos_counts", json.dumps(asdict(self), default=str))


# --- processes ------------------------------------------------------------------------


def queue_names(namespace: str, models: Iterable[str]) -> list[str]:
    """Every queue a stack in ``namespace`` may declare."""
    return [*(f"{namespace}.{m}" for m in models), f"{namespace}.dead",
            f"{namespace}.webhooks", f"{namespace}.default"]


def delete_queues(amqp_url: str, namespace: str, models: Iterable[str]) -> None:
    """Remove the namespace's queues and exchanges (missing ones are fine)."""
    with Connection(amqp_url, connect_timeout=5) as conn:
        channel = conn.channel()
        for name in queue_names(namespace, models):
            channel.queue_delete(name)
        channel.exchange_delete(namespace)
        channel.exchange_delete(f"{namespace}.dead")


def delete_keys(redis_url: str, namespace: str) -> None:
    """Remove the namespace's Redis keys now (the session fixture would, but later)."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=30)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}*", count=5000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


class Stack:
    """An API and supervised workers sharing one namespace. Use ``with Stack(...)``."""

    def __init__(
        self, tmp: Path, *, amqp_url: str, result_url: str, namespace: str,
        models: list[str], workers: int = 1, env: dict[str, str] | None = None,
        api_loglevel: str = "info",
    ) -> None:
        self.tmp = tmp
        self.amqp_url = amqp_url
        self.result_url = result_url
        self.namespace = namespace
        self.models = models
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = inferq_env(
            INFERQ_BROKER_URL=amqp_url, INFERQ_RESULT_URL=result_url,
            INFERQ_NAMESPACE=namespace, INFERQ_HOME=str(tmp / "home"),
            INFERQ_PORT=str(self.port), INFERQ_WORKER_HEARTBEAT_S="1", **(env or {}),
        )
        self.api_loglevel = api_loglevel
        self.initial_workers = workers
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self._store: JobStore | None = None

    # lifecycle

    def __enter__(self) -> Stack:
        try:
            self.start_api()
            for _ in range(self.initial_workers):
                self.start_worker()
            if self.initial_workers:
                self.wait_workers(self.initial_workers)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def procs(self) -> list[Proc]:
        return [p for p in [self.api, *self.workers] if p is not None]

    def start_api(self) -> Proc:
        self.api = Proc(["api", "--loglevel", self.api_loglevel], self.env,
                        self.tmp / "api.log")
        wait_until(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200,
                   60, "the API to answer", [self.api])
        return self.api

    def start_worker(self) -> Proc:
        i = len(self.workers)
        proc = Proc(["worker", "--models", ",".join(self.models), "--loglevel", "warning"],
                    self.env, self.tmp / f"worker{i}.log")
        self.workers.append(proc)
        return proc

    def wait_workers(self, n: int, timeout: float = 90) -> None:
        wait_until(lambda: workers_online(self.url, self.models[0]) >= n, timeout,
                   f"{n} workers online", self.procs())

    def close(self) -> None:
        for p in self.procs():
            with contextlib.suppress(Exception):
                p.stop()
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
        with contextlib.suppress(Exception):
            delete_queues(self.amqp_url, self.namespace, self.models)
        if self.result_url.startswith("redis"):
            with contextlib.suppress(Exception):
                delete_keys(self.result_url, self.namespace)

    # looking inside

    @property
    def store(self) -> JobStore:
        """The job store, opened directly (faster than the API for thousands of reads)."""
        if self._store is None:
            self._store = create_store(self.result_url, namespace=self.namespace,
                                       result_ttl_s=86_400)
        return self._store

    def worker_child(self, supervisor: Proc) -> psutil.Process | None:
        """The worker process a supervisor runs now (None between restarts)."""
        try:
            children = psutil.Process(supervisor.pid).children()
        except psutil.NoSuchProcess:
            return None
        for child in children:
            with contextlib.suppress(psutil.Error):
                if "--no-supervise" in child.cmdline() and child.is_running() \
                        and child.status() != psutil.STATUS_ZOMBIE:
                    return child
        return None

    def logs(self) -> str:
        return "\n\n".join(f"--- {p.args}\n{p.tail()}" for p in self.procs())


def kill_child(child: psutil.Process) -> bool:
    """SIGKILL one worker process; False if it was already gone."""
    try:
        child.send_signal(signal.SIGKILL)
        return True
    except psutil.NoSuchProcess:
        return False


def unique_namespace(redis_namespace: str, tag: str) -> str:
    """A namespace under the session's, so the ``redis_url`` fixture cleans it up."""
    return f"{redis_namespace}-{tag}{uuid.uuid4().hex[:6]}"


# --- jobs -----------------------------------------------------------------------------


def read_jobs(store: JobStore, ids: Iterable[str]) -> dict[str, Job | None]:
    """Each job as the store has it now (None: unknown -- lost)."""
    out: dict[str, Job | None] = {}
    for job_id in ids:
        try:
            out[job_id] = store.get(job_id)
        except JobNotFound:
            out[job_id] = None
    return out


def wait_terminal(store: JobStore, ids: list[str], deadline: float, stack: Stack | None = None
                  ) -> dict[str, Job | None]:
    """Poll the store until every job is terminal or ``deadline`` (monotonic) passes."""
    pending = set(ids)
    final: dict[str, Job | None] = {}
    while True:
        try:
            now = read_jobs(store, sorted(pending))
        except Exception:  # the store may be coming back: try again
            time.sleep(0.5)
            if time.monotonic() > deadline:
                break
            continue
        for job_id, job in now.items():
            if job is not None and job.status.is_terminal():
                final[job_id] = job
                pending.discard(job_id)
        if not pending or time.monotonic() > deadline:
            break
        if stack is not None:
            for p in stack.procs():
                assert p.alive(), f"{p.args} exited:\n{p.tail()}"
        time.sleep(0.5)
    final.update(read_jobs(store, sorted(pending)))
    return final


def tally(counts: Counts, jobs: dict[str, Job | None]) -> dict[str, int]:
    """Fill ``terminal``, ``lost`` and ``duplicate_executions``; return status counts."""
    statuses: dict[str, int] = {}
    for job in jobs.values():
        key = "missing" if job is None else job.status.value
        statuses[key] = statuses.get(key, 0) + 1
    counts.terminal = sum(1 for j in jobs.values() if j is not None and j.status.is_terminal())
    counts.lost = len(jobs) - counts.terminal
    counts.duplicate_executions = sum(j.duplicate_executions for j in jobs.values()
                                      if j is not None)
    return statuses


@dataclass
class Submission:
    """One POST and what came back."""

    sent: float  # monotonic
    done: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    job_id: str | None = None
    retry_after: str | None = None
    error: str = ""


class SteadyLoad:
    """Submits at a steady rate from a background thread; every answer is kept."""

    def __init__(self, url: str, model: str, rate_per_s: float, *, threads: int = 8,
                 timeout_s: float = 15.0) -> None:
        self.url = url
        self.model = model
        self.interval = 1.0 / rate_per_s
        self.timeout_s = timeout_s
        self.results: list[Submission] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads)
        self._http = httpx.Client(timeout=timeout_s,
                                  limits=httpx.Limits(max_connections=threads))
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)
        self._n = 0

    def start(self) -> SteadyLoad:
        self._thread.start()
        return self

    def stop(self) -> list[Submission]:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._http.close()
        with self._lock:
            return sorted(self.results, key=lambda s: s.sent)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one, self._n)
            self._n += 1
            self._stop.wait(max(0.0, t0 + self._n * self.interval - time.monotonic()))

    def _one(self, n: int) -> None:
        sent = time.monotonic()
        try:
            r = self._http.post(f"{self.url}/v1/models/{self.model}/jobs",
                                json={"input": {"text": f"steady-{n}"}})
            job_id = r.json().get("id") if r.status_code == 202 else None
            sub = Submission(sent, time.monotonic(), r.status_code, job_id,
                             r.headers.get("retry-after"),
                             "" if r.status_code == 202 else r.text[:300])
        except httpx.HTTPError as exc:
            sub = Submission(sent, time.monotonic(), 0, error=repr(exc))
        with self._lock:
            self.results.append(sub)


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (for running a chaos test small)."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default
