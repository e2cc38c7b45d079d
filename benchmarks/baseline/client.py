"""The baseline's client: submit, then poll ``GET /result/{id}`` every 0.1 s.

The same loops (closed and open), the same latency definition and the same report keys
as ``inferq bench``: it hands one job's coroutine to ``inferq.bench.run_load``. The
baseline reports no batch size (there is no batching), so ``batch_sizes`` stays empty.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx

from inferq.bench import MAX_CONNECTIONS, Outcome, run_load

POLL_INTERVAL_S = 0.1
#: Celery's states that end a task, and the job status each is reported as.
TERMINAL = {"SUCCESS": "succeeded", "FAILURE": "failed", "REVOKED": "canceled"}


class PollTimeout(TimeoutError):
    """The task was not ready within the wait."""


async def run_baseline(
    url: str,
    images: Sequence[bytes],
    *,
    jobs: int,
    concurrency: int | None = None,
    rate: float | None = None,
    wait_s: float = 30,
    progress: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Drive the baseline API at ``url``; the report has ``inferq.bench.run_bench``'s keys."""
    if transport is None:
        limit = MAX_CONNECTIONS if rate is not None else max(concurrency or 1, 10)
        transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
        )
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=30) as http:

        async def one_job(i: int) -> Outcome:
            deadline = time.monotonic() + wait_s
            files = {"image": ("digit.png", images[i % len(images)], "image/png")}
            response = await http.post("/predict", files=files)
            response.raise_for_status()
            task_id = response.json()["task_id"]
            while True:
                response = await http.get(f"/result/{task_id}")
                response.raise_for_status()
                state = response.json()["status"]
                if state in TERMINAL:
                    return Outcome(TERMINAL[state])
                if time.monotonic() >= deadline:
                    raise PollTimeout(f"task {task_id} still {state} after {wait_s} s")
                await asyncio.sleep(POLL_INTERVAL_S)

        config = {"url": url, "model": "mnist (baseline)", "inputs": len(images),
                  "wait_s": wait_s, "poll_interval_s": POLL_INTERVAL_S}
        return await run_load(one_job, jobs=jobs, concurrency=concurrency, rate=rate,
                              progress=progress, config=config)
