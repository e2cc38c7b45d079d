"""Fault #3: RabbitMQ goes away for 10 s under a steady submit load, then comes back.

The test runs its OWN RabbitMQ node (same binaries as the shared one, another node name,
ports and data folder under the test's tmp dir), so that stopping it disturbs nobody else
using the shared broker. An API and two supervised ``echo`` workers use it; the job store is
the shared Redis.

Submits go at ~20/s for the whole run. After ``UP_BEFORE_S`` s: ``rabbitmqctl stop_app``;
``DOWN_S`` s later ``rabbitmqctl start_app``. Every answer is recorded. Expected:

* never a 500 (nor any 5xx but 503), never a lost connection to the API;
* while the broker is down: 503 with ``Retry-After`` -- never 202 (a 202 would be a job the
  broker never confirmed);
* the first 202 within ``RECOVER_S`` (60 s) of ``start_app``; then 202 again, every time;
* every 202'd job terminal (succeeded) at the end.

Bounded: ~50 s of load, at most ``BUDGET_S`` seconds in all.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.chaos.chaoslib import Counts, Stack, SteadyLoad, tally, wait_terminal
from tests.procs import free_port

pytestmark = pytest.mark.chaos

MODEL = "echo"
RATE_PER_S = 20.0
UP_BEFORE_S = 10.0
DOWN_S = 10.0
UP_AFTER_S = 25.0  # load after start_app (longer if the API is not back yet)
RECOVER_S = 60.0
BUDGET_S = 240.0


def _sbin() -> Path:
    """The folder of RabbitMQ's own scripts (not the Debian wrappers, which ``su``)."""
    found = os.environ.get("INFERQ_CHAOS_RABBITMQ_SBIN") or next(
        iter(sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"))), "")
    if not found or not (Path(found) / "rabbitmq-server").exists():
        pytest.fail("test_broker_restart needs RabbitMQ's scripts (rabbitmq-server, "
                    "rabbitmqctl): install rabbitmq-server or set INFERQ_CHAOS_RABBITMQ_SBIN",
                    pytrace=False)
    return Path(found)


class PrivateRabbit:
    """A RabbitMQ node of this test's own, on free ports, with its data under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.sbin = _sbin()
        self.folder = folder
        self.port = free_port()
        dist = free_port()
        self.node = f"inferq-chaos-{uuid.uuid4().hex[:6]}@localhost"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (folder / "enabled_plugins").write_text("[].\n")
        (folder / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(folder),  # its own Erlang cookie, read by rabbitmqctl too
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "rabbit.pid"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self._log = open(folder / "server.out", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(self.sbin / "rabbitmq-server")], env=self.env, stdout=self._log,
            stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)

    def listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "server.out").read_text(errors="replace")[-3000:]
                raise AssertionError(f"private RabbitMQ did not start:\n{tail}")
            time.sleep(0.25)

    def ctl(self, *args: str) -> None:
        subprocess.run([str(self.sbin / "rabbitmqctl"), "-n", self.node, *args],
                       env=self.env, check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ctl("stop")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[PrivateRabbit]:
    node = PrivateRabbit(tmp_path / "rabbit")
    try:
        node.wait_listening(90)
        yield node
    finally:
        node.stop()


def test_broker_restart_answers_503_then_recovers(
    tmp_path: Path, rabbit: PrivateRabbit, shared_services: Callable[[str], dict[str, str]],
    record_property: Callable[[str, object], None],
) -> None:
    deadline = time.monotonic() + BUDGET_S
    counts = Counts("broker-restart")
    services = {**shared_services("brk"), "amqp_url": rabbit.url}
    with Stack(tmp_path, models=[MODEL], workers=2, **services) as stack:
        load = SteadyLoad(stack.url, MODEL, RATE_PER_S).start()
        try:
            time.sleep(UP_BEFORE_S)
            stop_begin = time.monotonic()
            rabbit.ctl("stop_app")
            stop_done = time.monotonic()
            time.sleep(DOWN_S)
            start_begin = time.monotonic()
            rabbit.ctl("start_app")
            rabbit.wait_listening(60)
            start_done = time.monotonic()
            # Keep the load on for UP_AFTER_S, and until the API accepts again (or 60 s).
            while time.monotonic() < start_begin + UP_AFTER_S or (
                    not any(s.status == 202 and s.sent >= start_begin for s in load.results)
                    and time.monotonic() < start_begin + RECOVER_S + 5):
                time.sleep(0.5)
        finally:
            results = load.stop()
        codes: dict[int, int] = {}
        for s in results:
            codes[s.status] = codes.get(s.status, 0) + 1
        down = [s for s in results if s.sent >= stop_done and s.done <= start_begin]
        first_back = next((s for s in results if s.status == 202 and s.sent >= start_begin),
                          None)
        recover_s = None if first_back is None else first_back.done - start_begin
        after = [s for s in results if first_back is not None and s.sent >= first_back.done + 5]
        ids = [s.job_id for s in results if s.status == 202 and s.job_id]
        counts.submitted, counts.accepted = len(results), len(ids)
        jobs = wait_terminal(stack.store, ids, min(deadline, time.monotonic() + 90), stack)
        statuses = tally(counts, jobs)
        counts.extra.update(
            codes=codes, down_answers={c: sum(1 for s in down if s.status == c)
                                       for c in {s.status for s in down}},
            recover_s=None if recover_s is None else round(recover_s, 1),
            stop_app_s=round(stop_done - stop_begin, 1),
            start_app_s=round(start_done - start_begin, 1), statuses=statuses,
        )
        counts.report(record_property)
        odd = [s for s in results if s.status not in (202, 503)]
        assert not odd, f"answers other than 202/503: {odd[:5]}\n{stack.logs()}"
        assert down, "no submission fell inside the outage"
        assert all(s.status == 503 for s in down), [s for s in down if s.status != 503][:5]
        assert all(s.retry_after for s in results if s.status == 503), "503 without Retry-After"
        assert recover_s is not None and recover_s <= RECOVER_S, f"not back: {recover_s}"
        assert after and all(s.status == 202 for s in after), \
            [s for s in after if s.status != 202][:5]
        assert counts.lost == 0, f"{counts.lost} accepted jobs not terminal: {statuses}"
        assert statuses == {"succeeded": counts.accepted}, statuses
        assert time.monotonic() < deadline, f"over the {BUDGET_S:g} s budget"
