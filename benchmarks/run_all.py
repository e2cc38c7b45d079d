"""Every benchmark in one run, on this machine: start, measure, clean up, report.

    .venv/bin/python benchmarks/run_all.py                         # the full run
    .venv/bin/python benchmarks/run_all.py --jobs 300 --repeats 1  # a quick one (~1-2 min)

Needs RabbitMQ (127.0.0.1:5672, guest/guest) and Redis (127.0.0.1:6379). It starts every
process itself on free ports, with a namespace, queue names and Redis key prefixes unique
to the run, and removes them all at the end (also on Ctrl-C).

The systems, in this order:

1. ``bare``: ``bare_model.py`` in a subprocess -- MnistModel.predict in-process on
   batches of 1..256 images: the ceiling on this hardware.
2. ``baseline``: FastAPI + Celery (prefork, 2 children) + RabbitMQ + Redis result
   backend, one task per request, the client polling every 0.1 s (``baseline/``).
3. ``inferq_off``: ``inferq api`` + ``inferq worker --models mnist`` on RabbitMQ + Redis,
   ``max_batch_size = 1``.
4. ``inferq_on``: the same with ``max_batch_size = 64``, ``batch_timeout_s = 0.005``.

For each of 2-4: a warmup (not counted), then ``--repeats`` times a closed loop of 64
clients x ``--jobs`` jobs (the baseline: ``--baseline-jobs``, by default at most 2,000, so
that the default run stays near 20 minutes) and an open loop at 5 jobs/s. The API
process's RSS is sampled (psutil) during every measured run. Medians over the repeats
go into the summary.

Writes ``benchmarks/results/<UTC timestamp>.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from inferq.bench import arun_bench
from inferq.client import Client

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DIGITS = ROOT / "tests" / "data" / "digits"
RESULTS = HERE / "results"
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379"
INFERQ_REDIS_DB = 11  # integration tests use 13
BASELINE_REDIS_DB = 14
CLOSED_CLIENTS = 64
OPEN_RATE = 5.0
BATCH_TIMEOUT_S = 0.005
#: Images in one batch job ({"inputs": [...]}), compared with the bare model at that size.
BATCH_JOB_SIZE = 256
SYSTEMS = ("baseline", "inferq_off", "inferq_on")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------


class Proc:
    """A child process in its own session (so its whole group can be stopped), logging
    to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path,
                 cwd: Path = ROOT) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self._fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._fh,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        # Prefork children left behind by a killed parent are in the same group.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._fh.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str, procs: list[Proc]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited while waiting for {what}:\n{p.tail()}")
        with suppress(httpx.HTTPError, ValueError, KeyError):
            if check():
                return
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    raise RuntimeError(f"timed out waiting for {what}\n{logs}")


class RssSampler:
    """The most resident memory of a process (and its children) while active, in MB."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.proc = psutil.Process(pid)
        self.every_s = every_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        total = 0
        for p in procs:
            with suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(psutil.Error):
                self.peak_bytes = max(self.peak_bytes, self._rss())
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)


# --- the systems ----------------------------------------------------------------------------


class System:
    """One system under test, started; :meth:`measure` runs one scenario against it."""

    name: str
    api: Proc
    procs: list[Proc]

    def measure(self, *, jobs: int, concurrency: int | None = None, rate: float | None = None,
                progress: bool = True) -> dict[str, Any]:
        with RssSampler(self.api.popen.pid) as rss:
            report = asyncio.run(self._drive(jobs=jobs, concurrency=concurrency, rate=rate,
                                             progress=progress))
        report["api_rss_mb_max"] = rss.peak_mb
        report["system"] = self.name
        return report

    async def _drive(self, **kw: Any) -> dict[str, Any]:
        raise NotImplementedError

    def ready(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def cleanup(self) -> None:
        raise NotImplementedError


def _images() -> list[bytes]:
    images = [p.read_bytes() for p in sorted(DIGITS.glob("*.png"))]
    if not images:
        raise SystemExit(f"no sample digits in {DIGITS}")
    return images


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERQ_", "BASELINE_"))}
    env.update(extra)
    return env


class Inferq(System):
    """``inferq api`` + one ``inferq worker --models mnist`` on RabbitMQ + Redis."""

    def __init__(self, name: str, max_batch_size: int, run_id: str, workdir: Path) -> None:
        self.name = name
        self.namespace = f"bench-{run_id}-{name}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / f"{name}.toml"
        config.write_text(f"[models.mnist]\nmax_batch_size = {max_batch_size}\n"
                          f"batch_timeout_s = {BATCH_TIMEOUT_S}\n")
        home = workdir / f"{name}-home"
        env = _child_env(
            INFERQ_BROKER_URL=BROKER_URL,
            INFERQ_RESULT_URL=f"{REDIS}/{INFERQ_REDIS_DB}",
            INFERQ_NAMESPACE=self.namespace,
            INFERQ_PORT=str(self.port),
            INFERQ_CONFIG_FILE=str(config),
            INFERQ_HOME=str(home),
            INFERQ_AUTH="off",
        )
        py = [sys.executable, "-m", "inferq"]
        self.procs = []
        self.api = Proc(f"{name}-api", [*py, "api", "--loglevel", "warning"], env, workdir)
        self.procs.append(self.api)
        self.procs.append(Proc(f"{name}-worker", [*py, "worker", "--models", "mnist",
                                                  "--loglevel", "warning"], env, workdir))
        self.images = _images()

    def ready(self) -> None:
        def online() -> bool:
            r = httpx.get(f"{self.url}/v1/models/mnist", timeout=5)
            return r.status_code == 200 and r.json()["workers_online"] >= 1

        wait_until(online, 120, f"{self.name}: a worker online", self.procs)

    async def _drive(self, **kw: Any) -> dict[str, Any]:
        inputs = [{"image": image} for image in self.images]
        return await arun_bench(self.url, "mnist", inputs, **kw)

    def measure_batch_jobs(self, *, jobs: int = 6, size: int = BATCH_JOB_SIZE
                           ) -> dict[str, Any]:
        """One job of ``size`` images at a time (``{"inputs": [...]}``): images/s end to end.

        From just before each submit to the client holding its finished job, jobs one
        after another (the bulk-scoring path: no concurrency needed to fill the batch).
        """
        import base64

        uris = ["data:image/png;base64," + base64.b64encode(img).decode()
                for img in self.images]
        body = {"inputs": [{"image": uris[i % len(uris)]} for i in range(size)]}
        with Client(self.url, timeout=120) as client:
            job = client.submit("mnist", {"image": self.images[0]}, wait=30)  # warm
            started = time.perf_counter()
            for _ in range(jobs):
                r = httpx.post(f"{self.url}/v1/models/mnist/jobs", json=body,
                               headers={"Prefer": "wait=60"}, timeout=120)
                r.raise_for_status()
                job = client.wait(r.json()["id"], timeout=120)
                if job.status.value != "succeeded" or len(job.output) != size:
                    raise RuntimeError(f"batch job ended {job.status.value}: {job.error}")
            elapsed = time.perf_counter() - started
        return {"jobs": jobs, "size": size, "elapsed_s": round(elapsed, 3),
                "images_per_s": round(jobs * size / elapsed, 1)}

    def cleanup(self) -> None:
        delete_amqp(queues=[f"{self.namespace}.mnist", f"{self.namespace}.default",
                            f"{self.namespace}.dead"],
                    exchanges=[self.namespace, f"{self.namespace}.dead"])
        delete_redis_keys(INFERQ_REDIS_DB, f"{self.namespace}:*")


class Baseline(System):
    """``benchmarks/baseline``: FastAPI + Celery prefork (2 children), one task a request."""

    def __init__(self, run_id: str, workdir: Path) -> None:
        from baseline.client import run_baseline  # benchmarks/ is on sys.path

        self._run = run_baseline
        self.name = "baseline"
        self.queue = f"bench-{run_id}-baseline"
        self.key_prefix = f"bench-{run_id}-baseline:"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = _child_env(
            BASELINE_BROKER_URL=BROKER_URL,
            BASELINE_RESULT_URL=f"{REDIS}/{BASELINE_REDIS_DB}",
            BASELINE_QUEUE=self.queue,
            BASELINE_KEY_PREFIX=self.key_prefix,
            PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        )
        self.procs = []
        self.api = Proc("baseline-api", [
            sys.executable, "-m", "uvicorn", "baseline.app:app", "--host", "127.0.0.1",
            "--port", str(self.port), "--log-level", "warning"], env, workdir, cwd=HERE)
        self.procs.append(self.api)
        self.procs.append(Proc("baseline-worker", [
            sys.executable, "-m", "celery", "-A", "baseline.tasks", "worker",
            "--pool", "prefork", "--concurrency", "2", "-Q", self.queue,
            "--loglevel", "warning"], env, workdir, cwd=HERE))
        self.images = _images()

    def ready(self) -> None:
        task: dict[str, str] = {}

        def answered() -> bool:
            if "id" not in task:
                r = httpx.post(f"{self.url}/predict", timeout=5,
                               files={"image": ("d.png", self.images[0], "image/png")})
                task["id"] = r.json()["task_id"]
            r = httpx.get(f"{self.url}/result/{task['id']}", timeout=5)
            return bool(r.json()["status"] == "SUCCESS")

        wait_until(answered, 120, "baseline: a task answered", self.procs)

    async def _drive(self, **kw: Any) -> dict[str, Any]:
        return await self._run(self.url, self.images, **kw)

    def cleanup(self) -> None:
        delete_amqp(queues=[self.queue], exchanges=[self.queue])
        delete_redis_keys(BASELINE_REDIS_DB, f"{self.key_prefix}*")


def delete_amqp(queues: list[str], exchanges: list[str]) -> None:
    """Delete the run's queues and exchanges from RabbitMQ (missing ones are fine)."""
    from kombu import Connection

    with Connection(BROKER_URL, connect_timeout=5) as conn:
        for queue in queues:
            with suppress(Exception):
                conn.default_channel.queue_delete(queue)
        for exchange in exchanges:
            with suppress(Exception):
                conn.default_channel.exchange_delete(exchange)


def delete_redis_keys(db: int, pattern: str) -> int:
    """Delete the keys matching ``pattern`` in Redis ``db``; how many there were."""
    import redis

    client = redis.Redis.from_url(f"{REDIS}/{db}")
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


@contextmanager
def started(make: Callable[[], System]) -> Iterator[System]:
    """Start a system, wait until it answers, and always stop it and delete its state."""
    system = make()
    try:
        system.ready()
        yield system
    finally:
        system.stop()
        system.cleanup()


# --- figures ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where the figures were taken: CPU, memory, software versions."""
    import importlib.metadata as md

    import redis
    from kombu import Connection

    cpu = platform.processor() or ""
    with suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("inferq", "torch", "celery", "kombu", "fastapi", "uvicorn", "redis", "httpx"):
        with suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    with suppress(Exception):
        versions["redis-server"] = redis.Redis.from_url(REDIS).info("server")["redis_version"]
    with suppress(Exception), Connection(BROKER_URL, connect_timeout=5) as conn:
        conn.connect()
        props = conn.connection.server_properties
        versions["rabbitmq"] = props.get("version")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of each system and scenario."""
    summary: dict[str, Any] = {}
    for system, scenarios in runs.items():
        closed, open_ = scenarios.get("closed", []), scenarios.get("open", [])
        summary[system] = {
            "closed_completed_per_s": _median([r["completed_per_s"] for r in closed]),
            "closed_p50_ms": _median([r["latency_ms"]["p50"] for r in closed]),
            "closed_p99_ms": _median([r["latency_ms"]["p99"] for r in closed]),
            "open_p50_ms": _median([r["latency_ms"]["p50"] for r in open_]),
            "open_p99_ms": _median([r["latency_ms"]["p99"] for r in open_]),
            "errors": sum(sum(r["errors"].values()) + r["failed"] for r in closed + open_),
            "api_rss_mb_max": max((r["api_rss_mb_max"] for r in closed + open_), default=None),
            "batch_sizes_closed": _merge_batches(closed),
            "batch_job_images_per_s": _median(
                [r["images_per_s"] for r in scenarios.get("batch_jobs", [])]),
        }
    return summary


def _merge_batches(reports: list[dict[str, Any]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for r in reports:
        for size, count in r["batch_sizes"].items():
            total[int(size)] = total.get(int(size), 0) + count
    return dict(sorted(total.items()))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def targets(summary: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured figure and whether it is met."""
    on, off, base = (summary.get(s, {}) for s in SYSTEMS[::-1])
    vs_base = _ratio(on.get("closed_completed_per_s"), base.get("closed_completed_per_s"))
    vs_off = _ratio(on.get("closed_completed_per_s"), off.get("closed_completed_per_s"))
    single = bare.get("single_image_ms", {}).get("p50")
    limit = round(single + 15 + BATCH_TIMEOUT_S * 1000, 2) if single is not None else None
    p50 = on.get("open_p50_ms")
    rss = on.get("api_rss_mb_max")
    bare256 = bare.get("batches", {}).get(str(BATCH_JOB_SIZE), {}).get("images_per_s")
    vs_bare256 = _ratio(on.get("batch_job_images_per_s"), bare256)
    return {
        "on_vs_baseline_completed_per_s": {"value": vs_base, "target": ">= 3",
                                           "met": vs_base is not None and vs_base >= 3},
        "on_vs_off_completed_per_s": {"value": vs_off, "target": ">= 1.5",
                                      "met": vs_off is not None and vs_off >= 1.5},
        "open_loop_p50_ms": {"value": p50, "target": f"<= {limit} (bare single p50 + 15 "
                             f"+ {BATCH_TIMEOUT_S * 1000:g})",
                             "met": p50 is not None and limit is not None and p50 <= limit},
        "api_rss_mb": {"value": rss, "target": "< 150", "met": rss is not None and rss < 150},
        "batch256_vs_bare": {"value": vs_bare256, "target": ">= 0.7",
                             "met": vs_bare256 is not None and vs_bare256 >= 0.7},
    }


def markdown(result: dict[str, Any]) -> str:
    """The summary as a markdown table, then the targets."""
    s, a = result["summary"], result["args"]
    lines = [
        f"Closed loop: {CLOSED_CLIENTS} clients x {a['jobs']} jobs (baseline: "
        f"{a['baseline_jobs']}); open loop: {OPEN_RATE:g} "
        f"jobs/s x {a['open_jobs']} jobs; median of {a['repeats']} run(s).",
        "",
        "| system | closed completed/s | closed p50 / p99 ms | open p50 / p99 ms "
        "| API RSS max MB | errors | batch sizes (closed) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in SYSTEMS:
        row = s.get(name)
        if row is None:
            continue
        batches = ", ".join(f"{k}: {v}" for k, v in row["batch_sizes_closed"].items()) or "-"
        lines.append(
            f"| {name} | {row['closed_completed_per_s']} | {row['closed_p50_ms']} / "
            f"{row['closed_p99_ms']} | {row['open_p50_ms']} / {row['open_p99_ms']} | "
            f"{row['api_rss_mb_max']} | {row['errors']} | {batches} |")
    bare = result.get("bare", {})
    if bare:
        rates = ", ".join(f"{k}: {v['images_per_s']}" for k, v in bare["batches"].items())
        lines += ["", f"Bare model images/s by batch size: {rates}; single image p50 "
                  f"{bare['single_image_ms']['p50']} ms."]
    on = s.get("inferq_on", {})
    if on.get("batch_job_images_per_s"):
        lines += ["", f"inferq batch jobs of {BATCH_JOB_SIZE} images: "
                  f"{on['batch_job_images_per_s']} images/s end to end."]
    lines += ["", "| target | value | wanted | met |", "|---|---:|---|---|"]
    for name, t in result["targets"].items():
        met = "TODO" if t.get("todo") else ("yes" if t["met"] else "no")
        lines.append(f"| {name} | {t['value']} | {t['target']} | {met} |")
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------


def run_bare(workdir: Path) -> dict[str, Any]:
    out = workdir / "bare.json"
    log("bare model: in-process predict on batches")
    subprocess.run([sys.executable, str(HERE / "bare_model.py"), "--json", str(out)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return dict(json.loads(out.read_text()))


def run_system(make: Callable[[], System], args: argparse.Namespace) -> dict[str, Any]:
    scenarios: dict[str, Any] = {"closed": [], "open": []}
    with started(make) as system:
        jobs = args.baseline_jobs if system.name == "baseline" else args.jobs
        log(f"{system.name}: up; warmup")
        system.measure(jobs=min(jobs, 200), concurrency=CLOSED_CLIENTS, progress=False)
        for r in range(args.repeats):
            if isinstance(system, Inferq) and system.name == "inferq_on":
                log(f"{system.name}: batch jobs of {BATCH_JOB_SIZE} images "
                    f"({r + 1}/{args.repeats})")
                report = system.measure_batch_jobs()
                log(f"  {report['images_per_s']} images/s")
                scenarios.setdefault("batch_jobs", []).append(report)
            log(f"{system.name}: closed loop {CLOSED_CLIENTS} x {jobs} "
                f"({r + 1}/{args.repeats})")
            report = system.measure(jobs=jobs, concurrency=CLOSED_CLIENTS,
                                    progress=args.progress)
            log(f"  {report['completed_per_s']} completed/s, p50 "
                f"{report['latency_ms']['p50']} ms, errors {report['errors']}")
            scenarios["closed"].append(report)
            log(f"{system.name}: open loop {OPEN_RATE:g}/s x {args.open_jobs} "
                f"({r + 1}/{args.repeats})")
            report = system.measure(jobs=args.open_jobs, rate=OPEN_RATE,
                                    progress=args.progress)
            log(f"  p50 {report['latency_ms']['p50']} ms, errors {report['errors']}")
            scenarios["open"].append(report)
    return scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description="Run every benchmark; see the docstring.")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per closed-loop run")
    parser.add_argument("--baseline-jobs", type=int, default=None,
                        help="jobs per closed-loop run of the baseline (default: jobs, at "
                        "most 2000: it runs ~16 jobs/s here, and 3 x 5000 would take 15 min)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each scenario")
    parser.add_argument("--open-jobs", type=int, default=None,
                        help="jobs per open-loop run (default: jobs/10, within 25-100)")
    parser.add_argument("--systems", default=",".join(("bare", *SYSTEMS)),
                        help="comma-separated subset of bare,baseline,inferq_off,inferq_on")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()
    if args.baseline_jobs is None:
        args.baseline_jobs = min(args.jobs, 2000)
    if args.open_jobs is None:
        args.open_jobs = max(25, min(100, args.jobs // 10))
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    run_id = uuid.uuid4().hex[:8]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result: dict[str, Any] = {
        "started_at": stamp, "run_id": run_id,
        "args": {"jobs": args.jobs, "baseline_jobs": args.baseline_jobs,
                 "repeats": args.repeats, "open_jobs": args.open_jobs,
                 "closed_clients": CLOSED_CLIENTS, "open_rate": OPEN_RATE,
                 "batch_timeout_s": BATCH_TIMEOUT_S, "systems": chosen},
        "machine": machine(),
    }
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="inferq-bench-") as tmp:
        workdir = Path(tmp)
        if "bare" in chosen:
            result["bare"] = run_bare(workdir)
        runs: dict[str, dict[str, Any]] = {}
        factories: dict[str, Callable[[], System]] = {
            "baseline": lambda: Baseline(run_id, workdir),
            "inferq_off": lambda: Inferq("inferq_off", 1, run_id, workdir),
            "inferq_on": lambda: Inferq("inferq_on", 64, run_id, workdir),
        }
        for name in SYSTEMS:
            if name not in chosen:
                continue
            try:
                runs[name] = run_system(factories[name], args)
            except RuntimeError as exc:  # one broken system must not lose the others
                log(f"{name} failed: {exc}")
                runs[name] = {"closed": [], "open": [], "error": str(exc)}
        result["runs"] = runs
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["summary"] = summarize(runs)
    result["targets"] = targets(result["summary"], result.get("bare", {}))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nfigures: {path.relative_to(ROOT)} (took {result['elapsed_s']} s)")


if __name__ == "__main__":
    main()
