"""Load generator: drive a running inferq service over HTTP and measure it.

``inferq bench`` and ``benchmarks/`` use this module. It talks to the service only
through ``inferq.client.AsyncClient`` (httpx), so it imports no server code and can run
on any machine that reaches the API.

Two shapes of load:

- **closed loop** (``concurrency=C``): C clients, each submitting one job, waiting for
  its result, then submitting the next. Throughput is what the service can sustain.
- **open loop** (``rate=R``): submits start at R per second whatever the service does,
  each in its own task that then waits for the result. Latency is what a client sees
  at that arrival rate (a saturated service shows it as growing latency, not as a
  slower generator).

Each job is one submit with ``Prefer: wait`` and, if the answer is not yet terminal,
long-poll ``GET /v1/jobs/{id}?wait=`` -- never a sleep loop. A job's latency runs from
just before its submit to the moment the client holds the terminal job.

:func:`run_load` is the generic driver: it takes any coroutine function that runs one
job, so other systems (``benchmarks/baseline``) are measured with the same loops and
report the same keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from inferq.client import AsyncClient
from inferq.schemas import JobStatus

__all__ = ["Outcome", "percentile", "latency_summary", "run_bench", "arun_bench", "run_load"]

#: The most connections the bench client opens; an open loop against a saturated
#: service would otherwise open one per outstanding job without bound.
#: Connections per httpx pool when the load generator shards its clients.
CONNECTIONS_PER_SHARD = 4
MAX_CONNECTIONS = 1000


@dataclass(frozen=True)
class Outcome:
    """How one job ended, as the client saw it.

    ``status`` is the terminal status (``"succeeded"``, ``"failed"``, ``"canceled"``);
    ``batch_size`` the size of the batch the worker ran it in, when the system says.
    """

    status: str
    batch_size: int | None = None


#: Runs job number ``i`` (submit, then wait until terminal) and returns its outcome.
#: An exception counts as an error of that exception's type.
JobFn = Callable[[int], Awaitable[Outcome]]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between ranks.

    The same definition as ``numpy.percentile``'s default. Raises ``ValueError`` on no
    values or ``q`` outside 0-100.
    """
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0-100, not {q}")
    rank = (len(data) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """``{p50, p90, p99, mean, max}`` of ``latencies_ms``, each None when there are none."""
    keys = ("p50", "p90", "p99", "mean", "max")
    if not latencies_ms:
        return dict.fromkeys(keys)
    return {
        "p50": round(percentile(latencies_ms, 50), 3),
        "p90": round(percentile(latencies_ms, 90), 3),
        "p99": round(percentile(latencies_ms, 99), 3),
        "mean": round(sum(latencies_ms) / len(latencies_ms), 3),
        "max": round(max(latencies_ms), 3),
    }


class _Tally:
    """What the loops record while they run; :meth:`report` turns it into the figures."""

    def __init__(self, jobs: int, progress: Progress | None) -> None:
        self.jobs = jobs
        self.sent = 0
        self.last_sent = 0.0
        self.last_done = 0.0
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self.latencies_ms: list[float] = []
        self.progress = progress
        self.task = progress.add_task("jobs", total=jobs) if progress is not None else None

    async def one(self, fn: JobFn, i: int, start: float) -> None:
        self.sent += 1
        t0 = time.perf_counter()
        self.last_sent = t0 - start
        try:
            outcome = await fn(i)
        except Exception as exc:  # noqa: BLE001 - every failure is a figure, not a crash
            self.errors[type(exc).__name__] += 1
        else:
            t1 = time.perf_counter()
            self.latencies_ms.append((t1 - t0) * 1000)
            self.statuses[outcome.status] += 1
            if outcome.batch_size is not None:
                self.batch_sizes[outcome.batch_size] += 1
        self.last_done = time.perf_counter() - start
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def report(self, duration_s: float, config: Mapping[str, Any]) -> dict[str, Any]:
        completed = sum(self.statuses.values())
        succeeded = self.statuses.get(JobStatus.SUCCEEDED.value, 0)
        return {
            "config": dict(config),
            "jobs": self.jobs,
            "submitted": self.sent,
            "succeeded": succeeded,
            "failed": completed - succeeded,
            "errors": dict(sorted(self.errors.items())),
            "duration_s": round(duration_s, 3),
            # n sends span n - 1 intervals: at a steady rate r this gives r exactly.
            "submitted_per_s": (round((self.sent - 1) / self.last_sent, 2)
                                if self.sent > 1 and self.last_sent > 0 else None),
            "completed_per_s": round(completed / duration_s, 2) if duration_s > 0 else None,
            "latency_ms": latency_summary(self.latencies_ms),
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
        }


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def _mode(concurrency: int | None, rate: float | None) -> tuple[int | None, float | None]:
    if concurrency is not None and rate is not None:
        raise ValueError("give concurrency (closed loop) or rate (open loop), not both")
    if rate is not None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 jobs/s, not {rate}")
        return None, rate
    concurrency = 1 if concurrency is None else concurrency
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    return concurrency, None


async def run_load(
    fn: JobFn,
    *,
    jobs: int,
    concurrency: int | None = None,
    rate: float | None = None,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``jobs`` calls of ``fn`` as a closed loop (``concurrency`` clients) or an open
    loop (``rate`` starts per second), and return the report (see :func:`run_bench`).

    With neither ``concurrency`` nor ``rate`` it is a closed loop of one client.
    ``config`` is copied into the report's ``config``, after the loop's own settings.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, not {jobs}")
    concurrency, rate = _mode(concurrency, rate)
    bar = _progress_bar() if progress else None
    tally = _Tally(jobs, bar)
    full_config = {
        "mode": "open" if rate is not None else "closed",
        "jobs": jobs,
        "concurrency": concurrency,
        "rate": rate,
        **(config or {}),
    }
    if bar is not None:
        bar.start()
    start = time.perf_counter()
    try:
        if rate is not None:
            await _open_loop(fn, tally, jobs, rate, start)
        else:
            assert concurrency is not None
            await _closed_loop(fn, tally, jobs, concurrency, start)
    finally:
        if bar is not None:
            bar.stop()
    return tally.report(time.perf_counter() - start, full_config)


async def _closed_loop(fn: JobFn, tally: _Tally, jobs: int, concurrency: int,
                       start: float) -> None:
    counter = iter(range(jobs))

    async def client() -> None:
        for i in counter:  # one shared iterator: each job number is taken once
            await tally.one(fn, i, start)

    await asyncio.gather(*(client() for _ in range(min(concurrency, jobs))))


async def _open_loop(fn: JobFn, tally: _Tally, jobs: int, rate: float, start: float) -> None:
    tasks: list[asyncio.Task[None]] = []
    for i in range(jobs):
        # Absolute schedule: a late start does not push back the ones after it.
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(tally.one(fn, i, start)))
    await asyncio.gather(*tasks)


async def arun_bench(
    url: str,
    model: str,
    inputs: Sequence[Mapping[str, Any]],
    *,
    jobs: int,
    concurrency: int | None = None,
    rate: float | None = None,
    wait_s: float = 30,
    progress: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """:func:`run_bench` as a coroutine; ``transport`` replaces httpx's (for tests)."""
    if not inputs:
        raise ValueError("give at least one input")
    concurrency, rate = _mode(concurrency, rate)
    if transport is not None:
        transports: list[httpx.AsyncBaseTransport] = [transport]
    else:
        # httpcore scans its whole pool on every request: with one pool of 64 connections
        # the load generator, not the service, ran out of CPU first. Small pools, sharded.
        total = MAX_CONNECTIONS if rate is not None else max(concurrency or 1, 1)
        shards = max(1, -(-total // CONNECTIONS_PER_SHARD))
        per_shard = -(-total // shards) + 1
        transports = [
            httpx.AsyncHTTPTransport(limits=httpx.Limits(
                max_connections=per_shard, max_keepalive_connections=per_shard))
            for _ in range(shards)
        ]

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(AsyncClient(url, transport=t))
                   for t in transports]

        async def one_job(i: int) -> Outcome:
            client = clients[i % len(clients)]
            deadline = time.monotonic() + wait_s
            job = await client.submit(model, inputs[i % len(inputs)], wait=wait_s)
            if not job.status.is_terminal():
                job = await client.wait(job.id, timeout=max(0.0, deadline - time.monotonic()))
            return Outcome(job.status.value, job.metrics.batch_size)

        config = {"url": clients[0].base_url, "model": model, "inputs": len(inputs),
                  "wait_s": wait_s}
        return await run_load(one_job, jobs=jobs, concurrency=concurrency, rate=rate,
                              progress=progress, config=config)


def run_bench(
    url: str,
    model: str,
    inputs: Sequence[Mapping[str, Any]],
    *,
    jobs: int,
    concurrency: int | None = None,
    rate: float | None = None,
    wait_s: float = 30,
    progress: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Drive the inferq API at ``url`` with ``jobs`` jobs of ``model`` and measure it.

    ``inputs`` (input dicts; ``bytes`` values are uploaded as files) are cycled through.
    Closed loop with ``concurrency`` clients, or open loop at ``rate`` submits per second
    (one of the two; neither means one client). A job not terminal ``wait_s`` seconds
    after its submit counts as a ``TimeoutError``.

    The report::

        config          mode, jobs, concurrency, rate, url, model, inputs, wait_s
        jobs            jobs asked for
        submitted       submits sent
        succeeded       jobs that ended succeeded
        failed          jobs that ended failed or canceled
        errors          {exception type: count}: no terminal job seen (HTTP errors,
                        timeouts, refused connections)
        duration_s      first submit to last terminal job seen
        submitted_per_s (submits sent - 1) / time from the first send to the last
        completed_per_s terminal jobs seen (succeeded + failed) / duration_s
        latency_ms      p50, p90, p99, mean, max over the terminal jobs seen
        batch_sizes     {batch size: jobs} from each finished job's metrics.batch_size
    """
    return asyncio.run(arun_bench(
        url, model, inputs, jobs=jobs, concurrency=concurrency, rate=rate, wait_s=wait_s,
        progress=progress, transport=transport,
    ))
