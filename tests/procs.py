"""Starting and stopping real inferq processes in tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from inferq.errors import InferqError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT / "tests" / "models"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inferq_env(**extra: str) -> dict[str, str]:
    """The environment for an inferq child process: fixture models importable, API keys
    off (pass ``INFERQ_AUTH="on"`` to test them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FIXTURE_MODELS),
                                                      env.get("PYTHONPATH")]))
    env["INFERQ_CONFIG_FILE"] = str(FIXTURE_MODELS / "inferq.toml")
    env["INFERQ_AUTH"] = "off"
    env.update(extra)
    return env


class Proc:
    """A child process whose output goes to a log file, shown when a test fails."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        self._fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "inferq", *args], env=env, stdout=self._fh,
            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._fh.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               procs: list[Proc] = ()) -> None:  # type: ignore[assignment]
    """Poll ``check`` until true; fail with the processes' logs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, InferqError):
            pass
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.args} exited early:\n{p.tail()}")
        time.sleep(0.2)
    logs = "\n\n".join(f"--- {p.args}\n{p.tail()}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def workers_online(base_url: str, model: str) -> int:
    """How many workers the API sees for ``model``."""
    r = httpx.get(f"{base_url}/v1/models/{model}", timeout=5)
    return int(r.json()["workers_online"]) if r.status_code == 200 else 0
