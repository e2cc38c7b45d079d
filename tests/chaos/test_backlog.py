"""Fault #5: 100,000 jobs queued before any worker starts.

An API on the shared RabbitMQ and Redis, no worker. 16 concurrent clients submit
``echo-batched`` jobs as JSON:

1. ``BASELINE`` jobs on an empty queue: the API's submit rate there;
2. ``INFERQ_CHAOS_BACKLOG`` (default 100,000) more: the submit rate over the last
   ``WINDOW`` of them (10,000 at full size) must be at least half the empty-queue rate
   -- a deep queue must not slow down accepting work;
3. two supervised workers start; every job must end ``succeeded`` (counted from the job
   store directly: ``count_active`` until 0, then every record read once).

Bounded: at most ``BUDGET_S`` (20 min). ``INFERQ_CHAOS_BACKLOG=5000`` runs it small;
CI runs the full size.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.chaos.chaoslib import Counts, Stack, env_int, read_jobs, tally

pytestmark = pytest.mark.chaos

MODEL = "echo-batched"
BACKLOG = env_int("INFERQ_CHAOS_BACKLOG", 100_000)
BASELINE = min(2_000, max(BACKLOG // 5, 200))
WINDOW = min(10_000, max(BACKLOG // 10, 100))
CLIENTS = 16
BUDGET_S = 1200.0


async def _submit_many(url: str, n: int, tag: str, deadline: float
                       ) -> tuple[list[str], list[float], dict[int, int]]:
    """Submit ``n`` jobs from CLIENTS coroutines; the ids, each 202's time, other codes."""
    ids: list[str] = []
    done_at: list[float] = []
    others: dict[int, int] = {}
    retried = [0]
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

        async def client() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    return
                # A connection the server dropped may or may not have carried the job:
                # a client retries with the same Idempotency-Key, which cannot make two.
                for attempt in range(3):
                    try:
                        r = await http.post(f"/v1/models/{MODEL}/jobs",
                                            json={"input": {"text": f"{tag}{i}"}},
                                            headers={"Idempotency-Key": f"{tag}{i}"})
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                        retried[0] += 1
                if r.status_code == 202:
                    ids.append(r.json()["id"])
                    done_at.append(time.monotonic())
                else:
                    others[r.status_code] = others.get(r.status_code, 0) + 1

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    if retried[0]:
        print(f"\n[chaos backlog] {retried[0]} submits retried after a dropped connection",
              flush=True)
    return ids, done_at, others


def _rate(done_at: list[float], start: float, last: int | None = None) -> float:
    """Accepted jobs per second: over all (from ``start``), or over the ``last`` ones."""
    if last is None:
        return len(done_at) / (done_at[-1] - start)
    return last / (done_at[-1] - done_at[-last - 1])


@pytest.mark.timeout(BUDGET_S + 300)
def test_a_deep_backlog_keeps_the_submit_rate_and_drains(
    tmp_path: Path, shared_services: Callable[[str], dict[str, str]],
    record_property: Callable[[str, object], None],
) -> None:
    deadline = time.monotonic() + BUDGET_S
    counts = Counts("backlog")
    with Stack(tmp_path, models=[MODEL], workers=0, api_loglevel="warning",
               **shared_services("backlog")) as stack:
        assert stack.store.count_active(None) == 0  # opened now: fails early, not after submits
        t0 = time.monotonic()
        base_ids, base_done, base_other = asyncio.run(
            _submit_many(stack.url, BASELINE, "b", deadline))
        empty_rate = _rate(base_done, t0)
        t1 = time.monotonic()
        ids, done_at, other = asyncio.run(_submit_many(stack.url, BACKLOG, "q", deadline))
        submit_s = time.monotonic() - t1
        deep_rate = _rate(done_at, t1, WINDOW) if len(done_at) > WINDOW else 0.0
        all_ids = base_ids + ids
        counts.submitted = BASELINE + BACKLOG
        counts.accepted = len(all_ids)
        print(f"\n[chaos backlog] submit phase: {counts.accepted}/{counts.submitted} accepted "
              f"in {submit_s:.0f} s; empty queue {empty_rate:.0f}/s, last {WINDOW} "
              f"{deep_rate:.0f}/s", flush=True)
        # Now the workers: drain the backlog.
        t2 = time.monotonic()
        for _ in range(2):
            stack.start_worker()
        active = -1
        while time.monotonic() < deadline:
            active = stack.store.count_active(None)
            if active == 0:
                break
            for p in stack.procs():
                assert p.alive(), f"{p.args} exited:\n{p.tail()}"
            time.sleep(2)
        drain_s = time.monotonic() - t2
        jobs = read_jobs(stack.store, all_ids)
        statuses = tally(counts, jobs)
        sample = random.sample(all_ids, min(200, len(all_ids)))
        sampled_ok = sum(1 for i in sample
                         if httpx.get(f"{stack.url}/v1/jobs/{i}", timeout=10)
                         .json().get("status") == "succeeded")
        counts.extra.update(
            empty_queue_rate_per_s=round(empty_rate), deep_queue_rate_per_s=round(deep_rate),
            window=WINDOW, ratio=round(empty_rate / deep_rate, 2) if deep_rate else None,
            submit_s=round(submit_s), drain_s=round(drain_s),
            drain_rate_per_s=round(len(all_ids) / drain_s) if drain_s else None,
            other_codes={**base_other, **other}, statuses=statuses,
            api_sample_succeeded=f"{sampled_ok}/{len(sample)}",
        )
        counts.report(record_property)
        assert counts.accepted == counts.submitted, f"not all 202: {other} {base_other}"
        assert active == 0, f"{active} jobs still active after {BUDGET_S:g} s"
        assert counts.lost == 0, statuses
        assert statuses == {"succeeded": counts.accepted}, statuses
        assert sampled_ok == len(sample)
        assert deep_rate * 2 >= empty_rate, (
            f"submit rate fell from {empty_rate:.0f}/s (empty queue) to {deep_rate:.0f}/s "
            f"over the last {WINDOW} of {BACKLOG} queued jobs")
        assert time.monotonic() < deadline, f"over the {BUDGET_S:g} s budget"
