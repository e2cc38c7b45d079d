"""``inferq serve`` as a user runs it: one subprocess, embedded, real HTTP, the real MNIST model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from tests.procs import ROOT, Proc, free_port, inferq_env, wait_until, workers_online

from inferq.client import Client

pytestmark = pytest.mark.e2e

DIGITS = ROOT / "tests" / "data" / "digits"
MANIFEST: dict[str, int] = json.loads((DIGITS / "manifest.json").read_text())


@dataclass
class Served:
    url: str
    proc: Proc
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = inferq_env(INFERQ_HOME=str(tmp / "home"), INFERQ_PORT=str(port))
    proc = Proc(["serve", "--models", "mnist,slow-predict,echo"], env, tmp / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: workers_online(url, "mnist") >= 1, 120, "inferq serve ready", [proc])
        yield Served(url, proc, env)
    finally:
        proc.stop()


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    with Client(served.url) as c:
        yield c


def test_serve_prints_its_url(served: Served) -> None:
    assert f"serving mnist, slow-predict, echo at {served.url}" in served.proc.tail(200)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_digit_images_are_recognised(client: Client, name: str) -> None:
    job = client.submit("mnist", {"image": DIGITS / name}, wait=30)
    assert job.status.value == "succeeded", job.error
    assert job.output["digit"] == MANIFEST[name]
    assert len(job.output["probabilities"]) == 10
    assert abs(sum(job.output["probabilities"]) - 1) < 1e-5
    assert job.input["image"]["type"] == "image"


def test_image_as_data_uri_in_json(client: Client, served: Served) -> None:
    import base64

    uri = "data:image/png;base64," + base64.b64encode((DIGITS / "drawn_3.png").read_bytes()
                                                      ).decode()
    r = httpx.post(f"{served.url}/v1/models/mnist/jobs", json={"input": {"image": uri}},
                   headers={"Prefer": "wait=30"}, timeout=40)
    assert r.status_code == 200
    assert r.json()["output"]["digit"] == 3


@pytest.mark.parametrize("files, json_body, status, field", [
    ({"image": ("x.png", b"this is text", "image/png")}, None, 415, "input.image"),
    ({"other": ("x.png", b"\x89PNG\r\n\x1a\n", "image/png")}, None, 422, "input.image"),
    (None, {"input": {}}, 422, "input.image"),
    (None, {"input": {"image": "not a data uri"}}, 422, "input.image"),
])
def test_bad_inputs_get_4xx_naming_the_field_and_are_not_enqueued(
        served: Served, files: dict | None, json_body: dict | None, status: int, field: str
) -> None:
    before = httpx.get(f"{served.url}/v1/jobs", params={"model": "mnist", "limit": 500}
                       ).json()["jobs"]
    r = httpx.post(f"{served.url}/v1/models/mnist/jobs", files=files, json=json_body, timeout=10)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"] == field for e in r.json()["errors"])
    after = httpx.get(f"{served.url}/v1/jobs", params={"model": "mnist", "limit": 500}
                      ).json()["jobs"]
    assert len(after) == len(before)


def test_unknown_model_and_job_are_404(served: Served) -> None:
    assert httpx.post(f"{served.url}/v1/models/nope/jobs", json={"input": {}}).status_code == 404
    assert httpx.get(f"{served.url}/v1/jobs/01a20b00-0000-7000-8000-000000000000"
                     ).status_code == 404


def test_cancel_a_queued_job(client: Client) -> None:
    busy = client.submit("slow-predict", {"seconds": 2})
    victim = client.submit("echo", {"text": "never"})
    assert client.cancel(victim.id).status.value == "canceled"
    client.wait(busy.id, timeout=30)
    assert client.submit("echo", {"text": "after"}, wait=20).status.value == "succeeded"
    assert client.get(victim.id).status.value == "canceled"
    r = httpx.post(f"{client.base_url}/v1/jobs/{victim.id}/cancel")
    assert r.status_code == 409


def test_long_poll_returns_when_the_job_ends(served: Served, client: Client) -> None:
    job = client.submit("slow-predict", {"seconds": 1})
    started = time.monotonic()
    r = httpx.get(f"{served.url}/v1/jobs/{job.id}", params={"wait": 30}, timeout=40)
    assert r.json()["status"] == "succeeded"
    assert time.monotonic() - started < 15


def test_sse_stream_ends_with_the_terminal_event(served: Served, client: Client) -> None:
    job = client.submit("slow-predict", {"seconds": 1})
    events = []
    with httpx.stream("GET", f"{served.url}/v1/jobs/{job.id}/events", timeout=40) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
    assert events[0] in ("queued", "running")
    assert events[-1] == "succeeded"
    assert len(events) == len(set(events))


def test_cli_submit_wait_prints_the_output(served: Served) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "submit", "mnist", "--file",
         str(DIGITS / "drawn_7.png"), "--wait", "--url", served.url],
        capture_output=True, text=True, timeout=60, env=served.env, check=True,
    )
    assert json.loads(out.stdout)["digit"] == 7


def test_cli_models_lists_mnist_with_its_knobs(served: Served) -> None:
    out = subprocess.run([sys.executable, "-m", "inferq", "models", "--url", served.url],
                         capture_output=True, text=True, timeout=30, env=served.env, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("mnist"))
    assert "workers=1" in line and "max_batch_size=" in line


def test_models_describe_mnist_schemas(served: Served) -> None:
    info = httpx.get(f"{served.url}/v1/models/mnist").json()
    assert info["input_schema"]["properties"]["image"]["x-inferq-image"] is True
    assert set(info["output_schema"]["properties"]) == {"digit", "probabilities"}
    assert info["workers_online"] == 1


def test_health_endpoints(served: Served) -> None:
    assert httpx.get(f"{served.url}/healthz").status_code == 200
    assert httpx.get(f"{served.url}/readyz").status_code == 200


def test_worker_killed_by_a_crash_is_restarted_by_serve(served: Served, client: Client) -> None:
    import os
    import signal

    import psutil

    def workers() -> list[int]:
        pids = []
        for child in psutil.Process(served.proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "worker" in child.cmdline():
                    pids.append(child.pid)
            except psutil.Error:
                pass
        return pids

    (old,) = workers()
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: bool(workers()) and old not in workers(), 20, "a new worker",
               [served.proc])
    job = client.submit("echo", {"text": "back"}, wait=60)
    if not job.status.is_terminal():
        job = client.wait(job.id, timeout=60)
    assert job.status.value == "succeeded"
