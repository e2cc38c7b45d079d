"""API keys, per-key limits, idempotency and input limits, through the HTTP API.

The job store, key store and rate limiter are real (SQLite); the broker is the in-process
stand-in of ``test_api``.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import FIXTURE_CONFIG, png_bytes
from tests.procs import inferq_env
from tests.unit.test_api import FakeBroker

from inferq.api import create_app
from inferq.api.inputs import check_json_depth
from inferq.auth.keys import KeyStore, create_key_store
from inferq.config import Settings
from inferq.errors import InvalidInput
from inferq.queue.store import JobStore, create_store
from inferq.registry import discover
from inferq.schemas import JobError, JobStatus
from inferq.worker.runtime import WorkerRuntime

Factory = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Factory]:
    """``make_client(**settings)``: a TestClient on an app with auth on, plus its parts."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {"home": tmp_path, "config_file": FIXTURE_CONFIG,
                                  "max_body_bytes": 4 * 1024 * 1024, "namespace": "t"}
        values.update(overrides)
        settings = Settings(**values)
        specs = discover(settings.config_file)
        store = create_store(settings.result_url, namespace="t", result_ttl_s=3600)
        broker = FakeBroker()
        broker.runtime = WorkerRuntime(specs, store, "test-worker", device="cpu")
        app = create_app(settings, specs=specs, store=store, broker=broker)  # type: ignore[arg-type]
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Factory) -> TestClient:
    return make_client()


def keys_of(client: TestClient) -> KeyStore:
    keys: KeyStore = client.app.state.services.auth.keys  # type: ignore[attr-defined]
    return keys


def broker_of(client: TestClient) -> FakeBroker:
    broker: FakeBroker = client.app.state.services.broker  # type: ignore[attr-defined]
    return broker


def store_of(client: TestClient) -> JobStore:
    store: JobStore = client.app.state.services.store  # type: ignore[attr-defined]
    return store


def bearer(client: TestClient, name: str = "k") -> dict[str, str]:
    _, plaintext = keys_of(client).create(name)
    return {"Authorization": f"Bearer {plaintext}"}


def submit(client: TestClient, headers: dict[str, str], input: Any = None,
           model: str = "echo", **kw: Any) -> Any:
    return client.post(f"/v1/models/{model}/jobs", json={"input": input or {"text": "hi"}},
                       headers=headers, **kw)


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# --- keys ---------------------------------------------------------------------------------


def test_every_v1_route_answers_401_without_a_key_and_open_routes_stay_open(
        client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = {path: next(iter(methods)).upper() for path, methods in spec["paths"].items()
             if path.startswith("/v1/")}
    assert "/v1/dead-letters" in paths and "/v1/models/{model}/jobs" in paths
    for path, method in paths.items():
        url = path.replace("{model}", "echo").replace("{job_id}", "x")
        r = client.request(method, url, json={"input": {"text": "x"}})
        assert r.status_code == 401, (method, url, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"] == "urn:inferq:problem:unauthorized"
    for url in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert client.get(url).status_code == 200, url
    assert broker_of(client).published == []


@pytest.mark.parametrize("header", [
    "Bearer iq_not-a-real-key", "Bearer nonsense", "Basic dXNlcjpwYXNz", "iq_no-scheme",
])
def test_unknown_or_malformed_keys_are_401(client: TestClient, header: str) -> None:
    r = submit(client, {"Authorization": header})
    assert r.status_code == 401
    assert "Bearer" in r.headers["www-authenticate"]
    assert broker_of(client).published == []


def test_a_valid_key_submits_and_its_id_owns_the_job(client: TestClient) -> None:
    r = submit(client, bearer(client))
    assert r.status_code == 202, r.text
    assert broker_of(client).published[0][0] == r.json()["id"]


def test_a_revoked_key_is_401_once_the_lookup_cache_runs_out(client: TestClient) -> None:
    client.app.state.services.auth.cache_ttl_s = 0.2  # type: ignore[attr-defined]
    key, plaintext = keys_of(client).create("soon revoked")
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert keys_of(client).revoke(key.id) is True
    time.sleep(0.3)
    r = client.get("/v1/jobs", headers=headers)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_keys_are_stored_hashed_with_a_webhook_secret(client: TestClient) -> None:
    key, plaintext = keys_of(client).create("stored")
    assert plaintext.startswith("iq_") and len(plaintext) >= 43
    assert plaintext not in key.model_dump_json()
    assert key.prefix == plaintext[:len(key.prefix)]
    assert key.webhook_secret.startswith("whsec_")
    assert len(base64.b64decode(key.webhook_secret.removeprefix("whsec_"))) == 24
    assert keys_of(client).webhook_secret(key.id) == key.webhook_secret


def test_auth_off_needs_no_key(make_client: Factory) -> None:
    client = make_client(auth="off")
    assert submit(client, {}).status_code == 202
    assert client.get("/v1/jobs").status_code == 200


# --- owners -------------------------------------------------------------------------------


def test_a_key_cannot_see_cancel_or_list_another_keys_job(client: TestClient) -> None:
    alice, bob = bearer(client, "alice"), bearer(client, "bob")
    job_id = submit(client, alice).json()["id"]
    for method, url in (("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}?wait=1"),
                        ("GET", f"/v1/jobs/{job_id}/events"),
                        ("POST", f"/v1/jobs/{job_id}/cancel")):
        r = client.request(method, url, headers=bob)
        assert r.status_code == 404, (method, url)
        assert r.json()["type"] == "urn:inferq:problem:job-not-found"
    assert client.get("/v1/jobs", headers=bob).json()["jobs"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=alice).json()["jobs"]] == [job_id]
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == "queued"
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "canceled"


# --- limits per key -----------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_per_key(make_client: Factory) -> None:
    client = make_client(rate_limit_per_s=1)
    alice, bob = bearer(client, "alice"), bearer(client, "bob")
    assert submit(client, alice).status_code == 202
    r = submit(client, alice)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["type"] == "urn:inferq:problem:too-many-requests"
    assert len(broker_of(client).published) == 1
    assert submit(client, bob).status_code == 202  # bob has his own budget


def test_in_flight_quota_answers_429_until_jobs_finish(make_client: Factory) -> None:
    client = make_client(max_in_flight=2)
    alice, bob = bearer(client, "alice"), bearer(client, "bob")
    assert submit(client, alice).status_code == 202
    assert submit(client, alice).status_code == 202
    r = submit(client, alice)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert "2 jobs queued or running" in r.json()["detail"]
    assert submit(client, bob).status_code == 202
    broker_of(client).run()
    assert submit(client, alice).status_code == 202


# --- idempotency --------------------------------------------------------------------------


def test_idempotent_replay_returns_the_same_job_and_publishes_once(client: TestClient) -> None:
    alice = bearer(client, "alice")
    headers = {**alice, "Idempotency-Key": "order-42"}
    first = submit(client, headers, {"text": "once"})
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    again = submit(client, headers, {"text": "once"})
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert len(broker_of(client).published) == 1
    broker_of(client).run()
    done = submit(client, headers, {"text": "once"})
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    assert done.json()["id"] == first.json()["id"]


def test_same_idempotency_key_with_a_different_body_is_409(client: TestClient) -> None:
    headers = {**bearer(client), "Idempotency-Key": "k1"}
    assert submit(client, headers, {"text": "a"}).status_code == 202
    r = submit(client, headers, {"text": "b"})
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert len(broker_of(client).published) == 1


def test_idempotency_keys_are_per_api_key(client: TestClient) -> None:
    a = submit(client, {**bearer(client, "a"), "Idempotency-Key": "same"})
    b = submit(client, {**bearer(client, "b"), "Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_json_and_multipart_of_the_same_input_replay_alike(client: TestClient) -> None:
    headers = {**bearer(client), "Idempotency-Key": "img-1"}
    image = png_bytes((12, 8))
    first = submit(client, headers, {"image": data_uri(image), "label": "x"},
                   model="image-size")
    assert first.status_code == 202, first.text
    again = client.post("/v1/models/image-size/jobs", headers=headers,
                        files={"image": ("a.png", image, "image/png")}, data={"label": "x"})
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/models/image-size/jobs", headers=headers,
                        files={"image": ("a.png", png_bytes((12, 9)), "image/png")},
                        data={"label": "x"})
    assert other.status_code == 409
    assert len(broker_of(client).published) == 1


def test_an_unprintable_idempotency_key_is_422(client: TestClient) -> None:
    r = submit(client, {**bearer(client), "Idempotency-Key": "x" * 300})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "Idempotency-Key"


# --- input limits -------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_json_nested_too_deep_is_422_naming_the_body(make_client: Factory) -> None:
    client = make_client(max_json_depth=8)
    headers = bearer(client)
    assert submit(client, headers, {"text": "x", "extra": _nested(3)}).status_code == 202
    r = submit(client, headers, {"text": "x", "extra": _nested(20)})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "(body)"
    assert "deeper than 8" in r.json()["detail"]
    assert len(broker_of(client).published) == 1  # the shallow one only


def test_json_deep_enough_to_exhaust_the_parser_is_422_not_500(client: TestClient) -> None:
    body = b'{"input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    r = client.post("/v1/models/echo/jobs", content=body,
                    headers={**bearer(client), "content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "(body)"


def test_json_depth_is_measured_without_recursion() -> None:
    check_json_depth({"a": [{"b": 1}]}, 3)
    with pytest.raises(InvalidInput) as info:
        check_json_depth({"a": [{"b": []}]}, 3, "input.extra")
    assert info.value.errors == [{"field": "input.extra", "message": "nested deeper than 3 levels"}]
    with pytest.raises(InvalidInput):
        check_json_depth(_nested(100_000), 64)


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A one-colour 20000x20000 PNG: 400 megapixels, tens of KiB on disk."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_decompression_bomb_is_413_naming_the_field(client: TestClient,
                                                    bomb_png: bytes) -> None:
    assert len(bomb_png) < 1024 * 1024
    headers = bearer(client)
    r = client.post("/v1/models/image-size/jobs", headers=headers,
                    files={"image": ("bomb.png", bomb_png, "image/png")})
    assert r.status_code == 413, r.text
    assert r.json()["errors"][0]["field"] == "input.image"
    r = submit(client, headers, {"image": data_uri(bomb_png)}, model="image-size")
    assert r.status_code == 413
    assert broker_of(client).published == []


def test_image_just_over_the_pixel_limit_is_413_although_pillow_only_warns(
        make_client: Factory) -> None:
    # Pillow raises only above twice MAX_IMAGE_PIXELS; below that it merely warns.
    client = make_client(max_image_pixels=10_000)
    headers = bearer(client)
    r = submit(client, headers, {"image": data_uri(png_bytes((120, 100)))}, model="image-size")
    assert r.status_code == 413, r.text
    assert r.json()["errors"][0]["field"] == "input.image"
    r = submit(client, headers, {"image": data_uri(png_bytes((100, 100)))}, model="image-size")
    assert r.status_code == 202


def test_image_in_a_batch_job_is_named_by_its_index(make_client: Factory) -> None:
    client = make_client(max_image_pixels=10_000)
    r = client.post("/v1/models/image-size/jobs", headers=bearer(client), json={"inputs": [
        {"image": data_uri(png_bytes((10, 10)))}, {"image": data_uri(png_bytes((200, 100)))},
    ]})
    assert r.status_code == 413
    assert r.json()["errors"][0]["field"] == "inputs.1.image"


def test_truncated_png_is_415_naming_the_field(client: TestClient) -> None:
    whole = png_bytes((64, 64), color=7)
    r = client.post("/v1/models/image-size/jobs", headers=bearer(client),
                    files={"image": ("cut.png", whole[: len(whole) // 2], "image/png")})
    assert r.status_code == 415, r.text
    assert r.json()["errors"][0]["field"] == "input.image"
    assert broker_of(client).published == []


def test_webhook_to_an_internal_address_is_422_naming_it(make_client: Factory) -> None:
    client = make_client()
    r = client.post("/v1/models/echo/jobs", headers=bearer(client),
                    json={"input": {"text": "x"}, "webhook": "http://127.0.0.1:9/hook"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "webhook"
    allowed = make_client(webhook_allow_nets="127.0.0.1/32")
    r = allowed.post("/v1/models/echo/jobs", headers=bearer(allowed),
                     json={"input": {"text": "x"}, "webhook": "http://127.0.0.1:9/hook"})
    assert r.status_code == 202, r.text


# --- dead letters -------------------------------------------------------------------------


def test_dead_letters_lists_only_dead_letter_failures_of_the_callers_key(
        client: TestClient) -> None:
    alice, bob = bearer(client, "alice"), bearer(client, "bob")
    dead, failed, queued = (submit(client, alice, {"text": t}).json()["id"]
                            for t in ("dead", "failed", "queued"))
    store = store_of(client)
    now = datetime.now(UTC)
    store.finish(dead, JobStatus.FAILED, finished_at=now,
                 error=JobError(type="DeadLetter", message="delivered 3 times"))
    store.finish(failed, JobStatus.FAILED, finished_at=now,
                 error=JobError(type="ValueError", message="bad"))
    r = client.get("/v1/dead-letters", headers=alice)
    assert r.status_code == 200
    assert [j["id"] for j in r.json()["jobs"]] == [dead]
    assert client.get("/v1/dead-letters", headers=bob).json()["jobs"] == []
    assert client.get("/v1/dead-letters").status_code == 401
    assert queued


# --- the CLI ------------------------------------------------------------------------------


def _inferq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferq", *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def test_cli_keys_create_prints_the_key_last_and_revoke_makes_it_401(
        tmp_path: Path) -> None:
    env = inferq_env(INFERQ_HOME=str(tmp_path), INFERQ_AUTH="on",
                     INFERQ_RESULT_URL=f"sqlite:///{tmp_path}/jobs.sqlite")
    created = _inferq("keys", "create", "--name", "ci", env=env)
    assert created.returncode == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    key = lines[-1]
    assert key.startswith("iq_") and " " not in key
    assert any("whsec_" in line for line in lines[:-1])
    listed = _inferq("keys", "list", env=env)
    assert "ci" in listed.stdout and key[:12] in listed.stdout and key not in listed.stdout

    settings = Settings(home=tmp_path, config_file=FIXTURE_CONFIG, auth="on",
                        result_url=f"sqlite:///{tmp_path}/jobs.sqlite")
    app = create_app(settings, broker=FakeBroker())  # type: ignore[arg-type]
    with TestClient(app) as client:
        client.app.state.services.auth.cache_ttl_s = 0  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        key_id = create_key_store(settings.result_url, settings.namespace).list()[0].id
        revoked = _inferq("keys", "revoke", key_id, env=env)
        assert revoked.returncode == 0, revoked.stderr
        assert client.get("/v1/jobs", headers=headers).status_code == 401
    again = _inferq("keys", "revoke", key_id, env=env)
    assert again.returncode != 0


def test_cli_keys_create_needs_a_name(tmp_path: Path) -> None:
    env = inferq_env(INFERQ_RESULT_URL=f"sqlite:///{tmp_path}/jobs.sqlite")
    result = _inferq("keys", "create", env=env)
    assert result.returncode != 0
    assert "--name" in result.stderr
    assert not list(tmp_path.glob("*.sqlite"))
