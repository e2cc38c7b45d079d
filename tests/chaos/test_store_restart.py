"""Fault #4: the job store (Redis) goes away for ~5 s under a steady load, then comes back.

The test runs its OWN ``redis-server`` on a free port with an append-only file fsynced on
every write (``--appendonly yes --appendfsync always``) as the job store; the broker is
the shared RabbitMQ. An API and two supervised ``echo`` workers use them.

Submits go at ~20/s. After ``UP_BEFORE_S`` s the test reads every accepted job, keeps the
terminal ones as they are, and shuts Redis down (``SHUTDOWN``: the AOF is on disk); after
``DOWN_S`` s it starts Redis again on the same port and folder. Expected:

* 0 lost: every 202'd job terminal (succeeded) at the end;
* 0 terminal states changed: each job terminal before the restart reads the same after
  (status, output, error, finished_at);
* while Redis is down, 503 with ``Retry-After`` (never 202, never 500);
* waiting through the API (``Prefer: wait``) works again afterwards: its listener
  re-subscribed.

Bounded: ~35 s of load, at most ``BUDGET_S`` seconds in all.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from tests.chaos.chaoslib import Counts, Stack, SteadyLoad, read_jobs, tally, wait_terminal
from tests.procs import free_port

pytestmark = pytest.mark.chaos

MODEL = "echo"
RATE_PER_S = 20.0
UP_BEFORE_S = 10.0
DOWN_S = 5.0
UP_AFTER_S = 20.0
BUDGET_S = 180.0


class PrivateRedis:
    """A redis-server of this test's own, persisting every write to ``folder``."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("test_store_restart needs the redis-server binary", pytrace=False)
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
                if client.ping():
                    client.close()
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((self.folder / "redis.log").read_text()[-2000:])
            time.sleep(0.1)

    def shutdown(self) -> None:
        """``SHUTDOWN`` (the append-only file is flushed), then wait for the process."""
        assert self.proc is not None
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(self.url, socket_connect_timeout=2).shutdown()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _terminal_view(job: object) -> tuple[object, ...]:
    return (job.status, job.output, job.error, job.finished_at)  # type: ignore[attr-defined]


def test_store_restart_loses_nothing_and_changes_no_result(
    tmp_path: Path, own_redis: PrivateRedis, shared_services: Callable[[str], dict[str, str]],
    record_property: Callable[[str, object], None],
) -> None:
    deadline = time.monotonic() + BUDGET_S
    counts = Counts("store-restart")
    services = {**shared_services("store"), "result_url": own_redis.url}
    with Stack(tmp_path, models=[MODEL], workers=2, **services) as stack:
        load = SteadyLoad(stack.url, MODEL, RATE_PER_S).start()
        try:
            time.sleep(UP_BEFORE_S)
            accepted = [s.job_id for s in list(load.results) if s.job_id]
            before = {i: j for i, j in read_jobs(stack.store, accepted).items()
                      if j is not None and j.status.is_terminal()}
            down_begin = time.monotonic()
            own_redis.shutdown()
            down_done = time.monotonic()
            time.sleep(DOWN_S)
            up_begin = time.monotonic()
            own_redis.start()
            up_done = time.monotonic()
            time.sleep(UP_AFTER_S)
        finally:
            results = load.stop()
        # A job through the API, waited for by its store listener (re-subscribed?).
        t = time.monotonic()
        r = httpx.post(f"{stack.url}/v1/models/{MODEL}/jobs", json={"input": {"text": "w"}},
                       headers={"Prefer": "wait=20"}, timeout=30)
        wait_ms = round((time.monotonic() - t) * 1000)
        codes: dict[int, int] = {}
        for s in results:
            codes[s.status] = codes.get(s.status, 0) + 1
        down = [s for s in results if s.sent >= down_done and s.done <= up_begin]
        ids = [s.job_id for s in results if s.status == 202 and s.job_id]
        counts.submitted, counts.accepted = len(results), len(ids)
        jobs = wait_terminal(stack.store, ids, min(deadline, time.monotonic() + 60), stack)
        statuses = tally(counts, jobs)
        changed = [i for i, j in before.items()
                   if jobs.get(i) is None or _terminal_view(jobs[i]) != _terminal_view(j)]
        counts.extra.update(
            codes=codes, down_answers={c: sum(1 for s in down if s.status == c)
                                       for c in {s.status for s in down}},
            terminal_before_restart=len(before), terminal_changed=len(changed),
            shutdown_s=round(down_done - down_begin, 1), restart_s=round(up_done - up_begin, 1),
            wait_after_restart_ms=wait_ms, statuses=statuses,
        )
        counts.report(record_property)
        odd = [s for s in results if s.status not in (202, 503)]
        assert not odd, f"answers other than 202/503: {odd[:5]}\n{stack.logs()}"
        assert down and all(s.status == 503 for s in down), [s for s in down][:5]
        assert all(s.retry_after for s in results if s.status == 503), "503 without Retry-After"
        assert before, "no job was terminal before the restart"
        assert not changed, f"terminal states changed: {changed[:5]}"
        assert counts.lost == 0, f"{counts.lost} accepted jobs not terminal: {statuses}"
        assert statuses == {"succeeded": counts.accepted}, statuses
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        assert time.monotonic() < deadline, f"over the {BUDGET_S:g} s budget"
