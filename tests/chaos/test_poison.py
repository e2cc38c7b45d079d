"""Fault #2: one job kills its worker on every try, among 999 normal ones.

Model ``kill-worker`` (max_batch_size 8, max_deliveries 3, max_retries 3) calls
``os._exit(137)`` when its text is "kill". Two supervised workers serve it; the poison is
job 500 of 1,000, submitted in one go. Each try kills the worker holding it (and with it
the batch and the prefetched messages around it, which come back and run alone); the
supervisor starts a fresh worker. After max_deliveries + max_retries tries the next
delivery fails the job as ``DeadLetter`` instead of running it. The 999 others succeed.

Bounded: 1,000 jobs, at most ``BUDGET_S`` seconds (each kill costs a restart, with the
supervisor's backoff of 1, 2, 4, ... s when a worker dies young).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tests.chaos.chaoslib import Counts, Stack, env_int, tally, wait_terminal

pytestmark = pytest.mark.chaos

JOBS = env_int("INFERQ_CHAOS_POISON_JOBS", 1000)
MODEL = "kill-worker"
POISON_AT = JOBS // 2
BUDGET_S = 240.0


def test_a_poison_job_is_dead_lettered_and_the_rest_succeed(
    tmp_path: Path, shared_services: Callable[[str], dict[str, str]],
    record_property: Callable[[str, object], None],
) -> None:
    deadline = time.monotonic() + BUDGET_S
    counts = Counts("poison")
    with Stack(tmp_path, models=[MODEL], workers=2, **shared_services("poison")) as stack, \
            httpx.Client(base_url=stack.url, timeout=15) as http:
        t0 = time.monotonic()
        ids: list[str] = []
        poison = ""
        for n in range(JOBS):
            text = "kill" if n == POISON_AT else f"p{n}"
            r = http.post(f"/v1/models/{MODEL}/jobs", json={"input": {"text": text}})
            counts.submitted += 1
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
            if n == POISON_AT:
                poison = ids[-1]
        counts.accepted = len(ids)
        jobs = wait_terminal(stack.store, ids, deadline, stack)
        statuses = tally(counts, jobs)
        bad = jobs[poison]
        restarts = sum(p.log.read_text(errors="replace").count("exited with")
                       for p in stack.workers)
        # Through the API too: what a client sees of the poison job.
        seen = http.get(f"/v1/jobs/{poison}").json()
        dead = http.get("/v1/dead-letters", params={"model": MODEL}).json()
        counts.extra.update(
            statuses=statuses, poison_status=seen["status"],
            poison_error=(seen.get("error") or {}).get("type"),
            poison_attempts=seen["attempts"], worker_restarts=restarts,
            innocent_redelivered=sum(1 for i, j in jobs.items()
                                     if i != poison and j is not None and j.attempts > 1),
            dead_letters_listed=len(dead.get("jobs", [])),
            seconds=round(time.monotonic() - t0, 1),
        )
        counts.report(record_property)
        assert counts.lost == 0, f"{counts.lost} jobs not terminal: {statuses}"
        assert bad is not None and bad.status.value == "failed"
        assert bad.error is not None and bad.error.type == "DeadLetter", bad.error
        assert seen["status"] == "failed" and seen["error"]["type"] == "DeadLetter"
        assert statuses == {"succeeded": JOBS - 1, "failed": 1}, statuses
        assert [j["id"] for j in dead["jobs"]] == [poison]
        assert time.monotonic() < deadline, f"over the {BUDGET_S:g} s budget"
