"""Fault #1: SIGKILL worker processes again and again while 1,000 jobs run.

Two supervised workers serve ``echo-batched`` (max_batch_size 8, so prefetch 8). Jobs are
submitted at a steady ~70/s; about once a second the worker process of one supervisor
(the child, not the supervisor) gets SIGKILL while it holds unacknowledged messages, and
its supervisor starts a fresh one. At least 5 kills. In the end every job must be terminal
and succeeded (none lost), and the duplicate executions -- runs that finished after the
job already had its terminal state -- at most kills x prefetch: a killed worker can only
have held ``prefetch`` messages.

Bounded: 1,000 jobs, at most ``BUDGET_S`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.chaos.chaoslib import Counts, Stack, env_int, kill_child, tally, wait_terminal

pytestmark = pytest.mark.chaos

JOBS = env_int("INFERQ_CHAOS_KILL_JOBS", 1000)
MODEL = "echo-batched"
PREFETCH = 8  # max_batch_size of echo-batched (tests/models/inferq.toml)
SUBMIT_RATE = 70.0  # jobs/s: 1,000 jobs take ~15 s, long enough for the kills
KILL_EVERY_S = 1.0
MIN_CHILD_AGE_S = 1.0  # kill a worker only once it has had time to take messages
MIN_KILLS = 5
BUDGET_S = 150.0


def test_sigkilled_workers_lose_no_job(
    tmp_path: Path, shared_services: Callable[[str], dict[str, str]],
    record_property: Callable[[str, object], None],
) -> None:
    deadline = time.monotonic() + BUDGET_S
    counts = Counts("worker-kill")
    kills = 0
    with Stack(tmp_path, models=[MODEL], workers=2, **shared_services("kill")) as stack, \
            httpx.Client(base_url=stack.url, timeout=15) as http:
        ids: list[str] = []
        t0 = time.monotonic()
        last_kill = t0
        target = 0
        for n in range(JOBS):
            # Steady submitting, with a kill about every KILL_EVERY_S in between.
            time.sleep(max(0.0, t0 + n / SUBMIT_RATE - time.monotonic()))
            r = http.post(f"/v1/models/{MODEL}/jobs", json={"input": {"text": f"k{n}"}})
            counts.submitted += 1
            if r.status_code == 202:
                ids.append(r.json()["id"])
            if time.monotonic() - last_kill >= KILL_EVERY_S:
                for i in (target, 1 - target):  # prefer alternating; take whichever is up
                    child = stack.worker_child(stack.workers[i])
                    if child is not None and time.time() - child.create_time() \
                            >= MIN_CHILD_AGE_S and kill_child(child):
                        kills += 1
                        last_kill = time.monotonic()
                        target = 1 - i
                        break
        # Keep killing after the last submit until MIN_KILLS, while work remains.
        while kills < MIN_KILLS and time.monotonic() < deadline - 60:
            time.sleep(0.2)
            child = stack.worker_child(stack.workers[target])
            if child is not None and time.time() - child.create_time() >= MIN_CHILD_AGE_S \
                    and kill_child(child):
                kills += 1
                target = 1 - target
        counts.accepted = len(ids)
        jobs = wait_terminal(stack.store, ids, deadline, stack)
        statuses = tally(counts, jobs)
        restarts = sum(p.log.read_text(errors="replace").count("exited with")
                       for p in stack.workers)
        counts.extra.update(kills=kills, supervisor_restarts=restarts,
                            max_duplicates=kills * PREFETCH,
                            redelivered=sum(1 for j in jobs.values()
                                            if j is not None and j.attempts > 1),
                            statuses=statuses, seconds=round(time.monotonic() - t0, 1))
        counts.report(record_property)
        assert time.monotonic() < deadline, f"over the {BUDGET_S:g} s budget"
        assert kills >= MIN_KILLS, f"only {kills} kills"
        assert counts.accepted == counts.submitted == JOBS
        assert counts.lost == 0, f"{counts.lost} jobs not terminal: {statuses}"
        assert statuses == {"succeeded": JOBS}, statuses
        assert counts.duplicate_executions <= kills * PREFETCH
