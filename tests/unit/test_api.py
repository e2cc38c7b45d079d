"""The HTTP API with a real SQLite job store and an in-process stand-in for the broker."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import FIXTURE_CONFIG, png_bytes

from inferq.api import create_app
from inferq.config import Settings
from inferq.errors import BrokerUnavailable, StoreUnavailable
from inferq.queue.store import create_store
from inferq.registry import discover
from inferq.worker.runtime import WorkerRuntime, WorkItem


class FakeBroker:
    """Collects published jobs; ``run`` hands them to a real WorkerRuntime."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Any, bool]] = []
        self.down = False
        self.runtime: WorkerRuntime | None = None
        self.webhooks: list[tuple[str, str]] = []

    def publish(self, job_id: str, model: str, input: Any, *, batch: bool = False) -> None:
        if self.down:
            raise BrokerUnavailable("the broker is unreachable: test")
        self.published.append((job_id, model, input, batch))

    def publish_webhook(self, job_id: str, event: str, owner: str | None = None) -> None:
        self.webhooks.append((job_id, event))

    def ping(self) -> None:
        if self.down:
            raise BrokerUnavailable("the broker is unreachable: test")

    def run(self) -> None:
        """Run every published job, as a worker would."""
        assert self.runtime is not None
        while self.published:
            job_id, model, input, batch = self.published.pop(0)
            self.runtime.run_batch(model, [WorkItem(job_id, input, batch)])

    def close(self) -> None:
        pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, config_file=FIXTURE_CONFIG, max_body_bytes=64 * 1024,
                    auth="off")


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def client(settings: Settings, broker: FakeBroker) -> Iterator[TestClient]:
    specs = discover(settings.config_file)
    store = create_store(settings.result_url, namespace="t", result_ttl_s=3600)
    broker.runtime = WorkerRuntime(specs, store, "test-worker", device="cpu")
    app = create_app(settings, specs=specs, store=store, broker=broker)  # type: ignore[arg-type]
    with TestClient(app) as c:
        yield c


def submit(client: TestClient, model: str, input: dict[str, Any], **kw: Any) -> Any:
    return client.post(f"/v1/models/{model}/jobs", json={"input": input}, **kw)


def test_submit_answers_202_with_location_and_enqueues(client: TestClient,
                                                        broker: FakeBroker) -> None:
    r = submit(client, "echo", {"text": "hi"})
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert broker.published == [(job["id"], "echo", {"text": "hi", "repeat": 1}, False)]
    assert client.get(r.headers["location"]).json()["status"] == "queued"


def test_finished_job_has_output_worker_and_metrics(client: TestClient,
                                                    broker: FakeBroker) -> None:
    job_id = submit(client, "echo", {"text": "ab", "repeat": 2}).json()["id"]
    broker.run()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["output"] == {"text": "abab", "batch_size": 1}
    assert job["worker"] == "test-worker"
    assert job["metrics"]["batch_size"] == 1
    assert job["metrics"]["inference_ms"] >= 0
    assert job["started_at"] and job["finished_at"]


def test_unknown_model_is_404_problem(client: TestClient, broker: FakeBroker) -> None:
    r = submit(client, "nope", {"text": "x"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == "urn:inferq:problem:model-not-found"
    assert broker.published == []


def test_unknown_job_is_404(client: TestClient) -> None:
    for path in ("/v1/jobs/00000000-0000-7000-8000-000000000000",
                 "/v1/jobs/not-a-job/events"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["type"] == "urn:inferq:problem:job-not-found"
    r = client.post("/v1/jobs/not-a-job/cancel")
    assert r.status_code == 404


def test_missing_field_is_422_naming_it_and_never_enqueued(client: TestClient,
                                                           broker: FakeBroker) -> None:
    r = submit(client, "echo", {"repeat": 2})
    assert r.status_code == 422
    body = r.json()
    assert body["errors"][0]["field"] == "input.text"
    assert "input.text" in body["detail"]
    assert broker.published == []
    assert client.get("/v1/jobs").json()["jobs"] == []


@pytest.mark.parametrize("body, field", [
    ({"input": {"text": "x", "repeat": 99}}, "input.repeat"),
    ({"input": "text"}, "input"),
    ({"inputs": {"text": "x"}}, "inputs"),
    ({"input": {"text": "x"}, "webhook": "ftp://x"}, "webhook"),
])
def test_bad_bodies_are_4xx_naming_the_field(client: TestClient, broker: FakeBroker,
                                             body: Any, field: str) -> None:
    r = client.post("/v1/models/echo/jobs", json=body)
    assert 400 <= r.status_code < 500
    assert any(e["field"].startswith(field) for e in r.json()["errors"]), r.json()
    assert broker.published == []


def test_body_that_is_not_json_is_422(client: TestClient, broker: FakeBroker) -> None:
    r = client.post("/v1/models/echo/jobs", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert broker.published == []


def test_unsupported_content_type_is_415(client: TestClient, broker: FakeBroker) -> None:
    r = client.post("/v1/models/echo/jobs", content=b"text=x",
                    headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert broker.published == []


def test_multipart_upload_of_an_image_runs(client: TestClient, broker: FakeBroker) -> None:
    r = client.post("/v1/models/image-size/jobs",
                    files={"image": ("d.png", png_bytes((40, 20)), "image/png")},
                    data={"label": "hello"})
    assert r.status_code == 202, r.text
    assert r.json()["input"]["image"]["media_type"] == "image/png"
    broker.run()
    out = client.get(r.headers["location"]).json()["output"]
    assert out == {"width": 40, "height": 20, "label": "hello"}


def test_image_as_data_uri_in_json_runs(client: TestClient, broker: FakeBroker) -> None:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes((7, 9))).decode()
    r = submit(client, "image-size", {"image": uri})
    assert r.status_code == 202, r.text
    broker.run()
    assert client.get(r.headers["location"]).json()["output"]["width"] == 7


def test_a_file_that_is_not_an_image_is_415_even_if_labelled_png(
        client: TestClient, broker: FakeBroker) -> None:
    r = client.post("/v1/models/image-size/jobs",
                    files={"image": ("evil.png", b"%PDF-1.4 not an image", "image/png")})
    assert r.status_code == 415
    assert r.json()["errors"][0]["field"] == "input.image"
    assert broker.published == []


def test_body_over_the_limit_is_413(client: TestClient, broker: FakeBroker) -> None:
    r = submit(client, "echo", {"text": "x" * (100 * 1024)})
    assert r.status_code == 413
    assert broker.published == []


def test_broker_down_is_503_with_retry_after_and_nothing_kept(
        client: TestClient, broker: FakeBroker) -> None:
    broker.down = True
    r = submit(client, "echo", {"text": "x"})
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0
    assert client.get("/v1/jobs").json()["jobs"] == []
    assert client.get("/readyz").status_code == 503
    broker.down = False
    assert client.get("/readyz").status_code == 200


def test_store_down_is_503(client: TestClient, broker: FakeBroker,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app.state.services.store  # type: ignore[attr-defined]

    def down(*a: Any, **k: Any) -> None:
        raise StoreUnavailable("the job store is unreachable: test")

    monkeypatch.setattr(store, "create", down)
    r = submit(client, "echo", {"text": "x"})
    assert r.status_code == 503
    assert "retry-after" in r.headers
    assert broker.published == []


def test_cancel_queued_job_then_it_never_runs_and_second_cancel_is_409(
        client: TestClient, broker: FakeBroker) -> None:
    job_id = submit(client, "echo", {"text": "x"}).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "canceled"
    broker.run()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["output"] is None and job["worker"] is None
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 409
    assert r.json()["type"] == "urn:inferq:problem:job-conflict"


def test_canceling_a_job_with_a_webhook_announces_its_end(
        client: TestClient, broker: FakeBroker, settings: Settings) -> None:
    settings.webhook_allow_nets = "127.0.0.1/32"
    r = client.post("/v1/models/echo/jobs", json={
        "input": {"text": "x"}, "webhook": "http://127.0.0.1:9/hook"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert broker.webhooks == [(job_id, "completed")]


def test_model_that_raises_fails_its_job_with_type_and_message(
        client: TestClient, broker: FakeBroker) -> None:
    bad = submit(client, "exc-in-predict", {"text": "boom"}).json()["id"]
    good = submit(client, "exc-in-predict", {"text": "fine"}).json()["id"]
    broker.run()
    job = client.get(f"/v1/jobs/{bad}").json()
    assert job["status"] == "failed"
    assert job["error"] == {"type": "ValueError", "message": "the model exploded on 'boom'"}
    assert client.get(f"/v1/jobs/{good}").json()["status"] == "succeeded"


def test_predict_returning_wrong_count_fails_with_model_error(
        client: TestClient, broker: FakeBroker) -> None:
    job_id = submit(client, "wrong-count", {"x": 1}).json()["id"]
    broker.run()
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"]["type"] == "ModelError"
    assert "returned 0 outputs for 1 inputs" in job["error"]["message"]


def _run_later(broker: FakeBroker, delay_s: float) -> threading.Thread:
    def go() -> None:
        time.sleep(delay_s)
        broker.run()

    t = threading.Thread(target=go)
    t.start()
    return t


def test_prefer_wait_answers_200_with_the_finished_job(client: TestClient,
                                                       broker: FakeBroker) -> None:
    t = _run_later(broker, 0.3)
    r = submit(client, "echo", {"text": "w"}, headers={"Prefer": "wait=10"})
    t.join()
    assert r.status_code == 200
    assert r.json()["status"] == "succeeded"
    assert r.headers["preference-applied"] == "wait=10"


def test_prefer_wait_that_runs_out_answers_202(client: TestClient) -> None:
    r = submit(client, "echo", {"text": "w"}, headers={"Prefer": "wait=0.2"})
    assert r.status_code == 202
    assert r.json()["status"] == "queued"


def test_get_with_wait_is_woken_by_the_announcement(client: TestClient,
                                                    broker: FakeBroker) -> None:
    job_id = submit(client, "echo", {"text": "w"}).json()["id"]
    t = _run_later(broker, 0.3)
    started = time.monotonic()
    job = client.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
    elapsed = time.monotonic() - started
    t.join()
    assert job["status"] == "succeeded"
    # Woken by the store's announcement, long before the 5 s safety re-read.
    assert elapsed < 4.0


def test_wait_over_60_is_rejected(client: TestClient) -> None:
    job_id = submit(client, "echo", {"text": "w"}).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", params={"wait": 61}).status_code == 422


def test_sse_streams_each_state_and_ends_with_the_terminal_one(
        client: TestClient, broker: FakeBroker) -> None:
    job_id = submit(client, "echo", {"text": "s"}).json()["id"]
    t = _run_later(broker, 0.3)
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            if line.startswith("data: "):
                last = json.loads(line.removeprefix("data: "))
    t.join()
    assert events[0] == "queued" and events[-1] == "succeeded"
    assert last["output"]["text"] == "s"


def test_list_is_newest_first_and_paginates_with_a_cursor(client: TestClient) -> None:
    ids = [submit(client, "echo", {"text": str(i)}).json()["id"] for i in range(7)]
    submit(client, "exc-in-predict", {"text": "other"})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"model": "echo", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["jobs"]
    assert len(queued) == 8


def test_models_show_schemas_and_batching_knobs(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert {"echo", "image-size", "exc-in-predict"} <= set(models)
    echo = client.get("/v1/models/echo").json()
    assert echo["input_schema"]["required"] == ["text"]
    assert echo["max_batch_size"] == 1 and echo["batch_timeout_s"] == 0
    assert echo["workers_online"] == 0
    image = models["image-size"]["input_schema"]["properties"]["image"]
    assert image["x-inferq-image"] is True
    assert client.get("/v1/models/nope").status_code == 404


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_openapi_document_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/models/{model}/jobs" in spec["paths"]


def test_api_process_imports_no_ml_framework(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from inferq.api import create_app\n"
        "from inferq.config import Settings\n"
        f"app = create_app(Settings(home={str(tmp_path)!r}, auth='off'))\n"
        "with TestClient(app) as c:\n"
        "    assert 'mnist' in [m['name'] for m in c.get('/v1/models').json()['models']]\n"
        "heavy = [m for m in ('torch', 'jax', 'tensorflow', 'lightgbm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
