"""The load generator (``inferq.bench``) against ``httpx.MockTransport``: no server.

No assertion here depends on timing: the loops' shapes are checked by what the fake
service sees (how many requests are in flight, whether submits wait for results).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from inferq.bench import Outcome, latency_summary, percentile, run_bench, run_load
from inferq.cli import app

BASE = "http://inferq.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
REPORT_KEYS = {
    "config", "jobs", "submitted", "succeeded", "failed", "errors", "duration_s",
    "submitted_per_s", "completed_per_s", "latency_ms", "batch_sizes",
}


def job(job_id: str, status: str, batch_size: int | None = None) -> dict[str, Any]:
    return {"id": job_id, "model": "mnist", "status": status,
            "created_at": "2025-01-01T00:00:00Z", "metrics": {"batch_size": batch_size}}


class FakeService:
    """A fake inferq API: a submit answers ``submit_status``; a GET answers ``get_status``.

    Records the bodies submitted and the most requests it ever held at once.
    """

    def __init__(self, submit_status: str = "succeeded", get_status: str = "succeeded",
                 batch_size: int | None = 4) -> None:
        self.submit_status = submit_status
        self.get_status = get_status
        self.batch_size = batch_size
        self.submits: list[httpx.Request] = []
        self.gets = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # let the other clients run while this one is "held"
            return self.respond(request)
        finally:
            self.in_flight -= 1

    def respond(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            request.read()
            self.submits.append(request)
            job_id = f"j{len(self.submits)}"
            return httpx.Response(202, json=job(job_id, self.submit_status, self.batch_size))
        self.gets += 1
        job_id = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json=job(job_id, self.get_status, self.batch_size))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


def form_field(request: httpx.Request, name: str) -> str:
    """The value of the plain form field ``name`` in a multipart request."""
    body = request.content.decode("latin-1")
    return body.split(f'name="{name}"\r\n\r\n', 1)[1].split("\r\n", 1)[0]


def bench(service: FakeService, **kw: Any) -> dict[str, Any]:
    kw.setdefault("inputs", [{"image": PNG}])
    kw.setdefault("jobs", 10)
    return run_bench(BASE, "mnist", kw.pop("inputs"), progress=False,
                     transport=service.transport(), **kw)


# --- percentile ------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 100) == 4.0


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("values, q", [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_rejects_no_values_and_q_outside_0_to_100(values: list[float],
                                                             q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_latency_summary_of_no_latencies_is_all_none() -> None:
    assert latency_summary([]) == dict.fromkeys(("p50", "p90", "p99", "mean", "max"))


def test_latency_summary_gives_percentiles_mean_and_max() -> None:
    summary = latency_summary([10.0, 20.0, 30.0])
    assert summary == {"p50": 20.0, "p90": 28.0, "p99": 29.8, "mean": 20.0, "max": 30.0}


# --- closed loop -----------------------------------------------------------------------------


def test_closed_loop_report_has_every_key_and_counts_each_job_once() -> None:
    service = FakeService()
    report = bench(service, jobs=12, concurrency=3)
    assert REPORT_KEYS <= report.keys()
    assert report["config"]["mode"] == "closed"
    assert report["config"]["concurrency"] == 3
    assert report["config"]["model"] == "mnist"
    assert (report["jobs"], report["submitted"], report["succeeded"]) == (12, 12, 12)
    assert report["failed"] == 0 and report["errors"] == {}
    assert len(service.submits) == 12
    assert report["batch_sizes"] == {4: 12}
    assert set(report["latency_ms"]) == {"p50", "p90", "p99", "mean", "max"}
    json.dumps(report)  # the report is JSON as it is


def test_closed_loop_never_holds_more_jobs_than_clients() -> None:
    service = FakeService()
    bench(service, jobs=40, concurrency=4)
    assert service.max_in_flight == 4


def test_submit_asks_the_server_to_wait_and_long_polls_only_unfinished_jobs() -> None:
    service = FakeService(submit_status="queued")
    report = bench(service, jobs=5, concurrency=2, wait_s=20)
    assert all(r.headers["prefer"] == "wait=20" for r in service.submits)
    assert service.gets == 5  # one ?wait= GET per job that the submit left queued
    assert report["succeeded"] == 5

    finished = FakeService(submit_status="succeeded")
    bench(finished, jobs=5, concurrency=2)
    assert finished.gets == 0


def test_inputs_are_cycled_and_bytes_go_as_multipart() -> None:
    service = FakeService()
    inputs = [{"image": PNG, "tag": "a"}, {"image": PNG, "tag": "b"}]
    bench(service, inputs=inputs, jobs=6, concurrency=1)
    assert all(r.headers["content-type"].startswith("multipart/form-data")
               for r in service.submits)
    tags = Counter(form_field(r, "tag") for r in service.submits)
    assert tags == {"a": 3, "b": 3}


def test_failed_jobs_are_counted_apart_from_errors() -> None:
    service = FakeService(submit_status="failed", batch_size=None)
    report = bench(service, jobs=4, concurrency=2)
    assert (report["succeeded"], report["failed"], report["errors"]) == (0, 4, {})
    assert report["batch_sizes"] == {}


def test_errors_are_counted_by_exception_type() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    report = run_bench(BASE, "mnist", [{"x": 1}], jobs=3, concurrency=2, progress=False,
                       transport=httpx.MockTransport(refuse))
    assert report["errors"] == {"ServiceUnavailable": 3}
    assert report["succeeded"] == report["failed"] == 0
    assert report["latency_ms"]["p50"] is None


def test_a_job_unfinished_after_wait_s_is_a_timeout_error() -> None:
    service = FakeService(submit_status="queued", get_status="running")
    report = bench(service, jobs=2, concurrency=2, wait_s=0)
    assert report["errors"] == {"TimeoutError": 2}


# --- open loop -------------------------------------------------------------------------------


def test_open_loop_submits_every_job_before_any_result_comes_back() -> None:
    jobs = 8
    service = FakeService(submit_status="queued")
    all_submitted = asyncio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            response = service.respond(request)
            if len(service.submits) == jobs:
                all_submitted.set()
            return response
        # Results are held back until every submit has arrived: a closed loop would
        # deadlock here; an open loop does not wait for results to submit.
        await asyncio.wait_for(all_submitted.wait(), timeout=30)
        return service.respond(request)

    report = run_bench(BASE, "mnist", [{"x": 1}], jobs=jobs, rate=1000, progress=False,
                       transport=httpx.MockTransport(handle))
    assert report["config"]["mode"] == "open"
    assert report["config"]["rate"] == 1000
    assert (report["submitted"], report["succeeded"], report["errors"]) == (jobs, jobs, {})


# --- the generic driver ----------------------------------------------------------------------


def test_run_load_takes_any_job_function_and_reports_the_same_keys() -> None:
    async def one(i: int) -> Outcome:
        if i % 3 == 0:
            raise KeyError(i)
        return Outcome("succeeded", None if i % 2 else 8)

    report = asyncio.run(run_load(one, jobs=9, concurrency=2, progress=False,
                                  config={"system": "fake"}))
    assert REPORT_KEYS <= report.keys()
    assert report["config"]["system"] == "fake"
    assert report["errors"] == {"KeyError": 3}
    assert report["succeeded"] == 6
    assert report["batch_sizes"] == {8: 3}


def test_run_load_with_neither_concurrency_nor_rate_is_one_client() -> None:
    async def one(i: int) -> Outcome:
        return Outcome("succeeded")

    report = asyncio.run(run_load(one, jobs=2, progress=False))
    assert report["config"]["mode"] == "closed" and report["config"]["concurrency"] == 1


@pytest.mark.parametrize("kw", [
    {"jobs": 1, "concurrency": 2, "rate": 1.0},
    {"jobs": 0, "concurrency": 1},
    {"jobs": 1, "concurrency": 0},
    {"jobs": 1, "rate": 0.0},
])
def test_run_load_rejects_impossible_settings(kw: dict[str, Any]) -> None:
    async def one(i: int) -> Outcome:
        return Outcome("succeeded")

    with pytest.raises(ValueError):
        asyncio.run(run_load(one, progress=False, **kw))


# --- boundaries ------------------------------------------------------------------------------


def test_bench_imports_no_server_code() -> None:
    code = ("import sys, inferq.bench; "
            "bad = [m for m in ('fastapi', 'celery', 'kombu', 'redis', 'torch', 'inferq.api',"
            " 'inferq.queue') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_bench_refuses_both_concurrency_and_rate() -> None:
    result = CliRunner().invoke(app, ["bench", "mnist", "--concurrency", "2", "--rate", "5",
                                      "--url", BASE])
    assert result.exit_code == 2
