"""The ``inferq`` command: run the service (``serve``, ``api``, ``worker``) and use it
(``submit``, ``get``, ``cancel``, ``jobs``, ``models``).

Server commands import the server stack lazily, so the client commands start fast and
work with only the client installed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from inferq.auth.cli import keys_app

app = typer.Typer(
    name="inferq",
    help="Serve machine-learning models asynchronously.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(keys_app, name="keys")

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="INFERQ_URL", help="The API's base URL.", show_default=False),
]
ModelsOption = Annotated[
    str | None,
    typer.Option("--models", help="Comma-separated model names (default: every model found)."),
]


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_settings(port: int | None, host: str | None) -> Any:
    """Settings from the environment, with ``--port``/``--host`` over them when given."""
    from inferq.config import Settings

    overrides: dict[str, Any] = {
        k: v for k, v in (("port", port), ("host", host)) if v is not None
    }
    return Settings(**overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _names(models: str | None) -> list[str]:
    return [m.strip() for m in (models or "").split(",") if m.strip()]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default: $INFERQ_PORT or 8000).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    models: ModelsOption = None,
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 1,
    loglevel: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run everything in one command: the HTTP API and worker processes.

    With no INFERQ_BROKER_URL / INFERQ_RESULT_URL it is fully embedded (SQLite broker and
    store, blobs in a folder under INFERQ_HOME) and needs no server.
    """
    import uvicorn

    from inferq.api import create_app
    from inferq.errors import InferqError
    from inferq.registry import discover, select

    _setup_logging(loglevel)
    settings = _server_settings(port, host)
    if "INFERQ_AUTH" not in os.environ and _is_loopback(settings.host):
        # The one-command embedded service on this machine runs open, and says so below.
        settings.auth = "off"
    home = settings.ensure_home()
    try:
        specs = select(discover(settings.config_file), _names(models))
    except InferqError as exc:
        raise _fail(str(exc)) from exc
    env = {
        **os.environ,
        "INFERQ_HOME": str(home),
        "INFERQ_BROKER_URL": settings.broker_url,
        "INFERQ_RESULT_URL": settings.result_url,
        "INFERQ_BLOB_URL": settings.blob_url,
        "INFERQ_NAMESPACE": settings.namespace,
        "INFERQ_AUTH": settings.auth,
        # serve's children end with it, even if serve is killed without a chance to stop them.
        "INFERQ_DIE_WITH_PARENT": "1",
    }
    if settings.config_file is not None:
        env["INFERQ_CONFIG_FILE"] = str(Path(settings.config_file).resolve())
    # serve supervises its workers itself.
    worker_cmd = [sys.executable, "-m", "inferq", "worker", "--no-supervise",
                  "--models", ",".join(specs), "--loglevel", loglevel]
    sender_cmd = [sys.executable, "-m", "inferq", "webhooks", "--loglevel", loglevel]
    supervisor = _Supervisor([worker_cmd] * workers + [sender_cmd], env)
    supervisor.start()
    url = f"http://{settings.host}:{settings.port}"
    typer.echo(f"inferq is serving {', '.join(specs)} at {url}")
    typer.echo(f"  web UI {url}/ui/   API docs {url}/docs   home {home}")
    if settings.embedded:
        typer.echo("  embedded mode: SQLite broker and job store")
    if settings.auth == "off":
        typer.echo(f"  open: no API key needed (INFERQ_AUTH=off) -- anyone who can reach "
                   f"{settings.host} can use it")
    try:
        uvicorn.run(create_app(settings, specs=specs), host=settings.host, port=settings.port,
                    log_level=loglevel.lower(), timeout_graceful_shutdown=5)
    finally:
        supervisor.stop()


class _Supervisor:
    """Keeps ``inferq serve``'s child processes (workers, the webhook sender) running."""

    def __init__(self, cmds: list[list[str]], env: dict[str, str]) -> None:
        self.cmds, self.env = cmds, env
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="inferq-supervisor",
                                        daemon=True)

    def start(self) -> None:
        self.procs = [subprocess.Popen(cmd, env=self.env) for cmd in self.cmds]
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stop.is_set():
                    logging.getLogger("inferq.serve").warning(
                        "%s (pid %d) exited with %s; restarting it", self.cmds[i][3],
                        proc.pid, proc.returncode)
                    self.procs[i] = subprocess.Popen(self.cmds[i], env=self.env)

    def stop(self) -> None:
        self._stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port (default: $INFERQ_PORT or 8000).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    loglevel: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run the HTTP API alone (production: run workers as separate processes)."""
    import uvicorn

    from inferq.api import create_app

    _setup_logging(loglevel)
    settings = _server_settings(port, host)
    typer.echo(f"inferq API at http://{settings.host}:{settings.port}")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=loglevel.lower(), timeout_graceful_shutdown=5)


@app.command()
def worker(
    models: ModelsOption = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    loglevel: Annotated[str, typer.Option()] = "info",
    supervise: Annotated[bool, typer.Option(
        help="Keep a worker process running: start a new one when it dies.")] = True,
) -> None:
    """Run a worker: load the models once, then consume their queues in batches."""
    from inferq.config import Settings
    from inferq.errors import InferqError
    from inferq.registry import discover, select

    _setup_logging(loglevel)
    settings = Settings()
    try:
        specs = select(discover(settings.config_file), _names(models))
    except InferqError as exc:
        raise _fail(str(exc)) from exc
    if supervise:
        from inferq.queue.worker_main import supervise as run_supervised

        args = ["--models", ",".join(specs), "--device", device, "--loglevel", loglevel]
        raise typer.Exit(run_supervised(args))
    from inferq.queue.worker_main import die_with_parent, run_worker

    die_with_parent()
    try:
        run_worker(settings, specs, device=device)
    except (InferqError, ValueError) as exc:
        raise _fail(str(exc)) from exc


@app.command()
def webhooks(loglevel: Annotated[str, typer.Option()] = "info") -> None:
    """Run a webhook sender: deliver queued webhooks, sign them, retry them."""
    from inferq.auth.keys import create_key_store
    from inferq.config import Settings
    from inferq.webhooks.sender import run_webhook_sender, server_secret

    _setup_logging(loglevel)
    if os.environ.get("INFERQ_DIE_WITH_PARENT") == "1":
        from inferq.queue.worker_main import die_with_parent

        die_with_parent()
    settings = Settings()
    keys = create_key_store(settings.result_url, settings.namespace)
    fallback = server_secret(settings)

    def secret_for(owner: str | None) -> str:
        # A key's jobs are signed with that key's secret; keyless jobs with the server's.
        return (keys.webhook_secret(owner) if owner else None) or fallback

    run_webhook_sender(settings, secret_for=secret_for)


def _client(url: str | None) -> Any:
    from inferq.client import Client

    return Client(base_url=url) if url else Client()


def _input_option(value: str | None) -> dict[str, Any]:
    """``--input``: a JSON object, or exit 2 saying what is wrong with it."""
    try:
        data = json.loads(value) if value else {}
    except ValueError as exc:
        raise _fail(f"--input is not JSON: {exc}", 2) from exc
    if not isinstance(data, dict):
        raise _fail("--input must be a JSON object", 2)
    return data


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _image_fields(client: Any, model: str) -> list[str]:
    schema = client.model(model).input_schema
    return [name for name, prop in schema.get("properties", {}).items()
            if isinstance(prop, dict) and prop.get("x-inferq-image")]


@app.command()
def submit(
    model: Annotated[str, typer.Argument(help="The model's name.")],
    file: Annotated[list[str] | None, typer.Option(
        "--file", "-f", help="Upload a file: PATH, or FIELD=PATH (repeatable).")] = None,
    input: Annotated[str | None, typer.Option(
        "--input", "-i", help="Input fields as a JSON object.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the result and print the output.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait at most.")] = None,
    url: UrlOption = None,
) -> None:
    """Submit a job. Prints its id, or with --wait its output (exit 1 if it failed)."""
    from inferq.errors import InferqError

    data = _input_option(input)
    try:
        with _client(url) as client:
            for spec in file or []:
                field, sep, path = spec.partition("=")
                if not sep:
                    path, fields = spec, _image_fields(client, model)
                    if len(fields) != 1:
                        raise _fail(f"say which field the file is for: --file FIELD={spec} "
                                    f"(image fields: {', '.join(fields) or 'none'})", 2)
                    field = fields[0]
                if not Path(path).is_file():
                    raise _fail(f"no such file: {path}", 2)
                data[field] = Path(path)
            job = client.submit(model, data, wait=min(timeout or 60, 60) if wait else None)
            if not wait:
                typer.echo(job.id)
                return
            if not job.status.is_terminal():
                job = client.wait(job.id, timeout=timeout)
    except TimeoutError as exc:
        raise _fail(f"the job did not finish within {timeout} s") from exc
    except InferqError as exc:
        raise _fail(str(exc)) from exc
    _report(job)


def _report(job: Any) -> None:
    if job.status.value == "succeeded":
        _print_json(job.output)
        return
    if job.error is not None:
        raise _fail(f"job {job.id} {job.status.value}: {job.error.type}: {job.error.message}")
    raise _fail(f"job {job.id} {job.status.value}")


@app.command()
def get(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    wait: Annotated[float, typer.Option(help="Wait up to this many seconds to finish.")] = 0,
    url: UrlOption = None,
) -> None:
    """Print a job as JSON."""
    from inferq.errors import InferqError

    try:
        with _client(url) as client:
            job = client.wait(job_id, timeout=wait) if wait else client.get(job_id)
    except TimeoutError:
        with _client(url) as client:
            job = client.get(job_id)
    except InferqError as exc:
        raise _fail(str(exc)) from exc
    _print_json(job.model_dump(mode="json"))


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOption = None,
) -> None:
    """Cancel a queued job."""
    from inferq.errors import InferqError

    try:
        with _client(url) as client:
            job = client.cancel(job_id)
    except InferqError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{job.id} {job.status.value}")


@app.command()
def jobs(
    model: Annotated[str | None, typer.Option(help="Only this model's jobs.")] = None,
    status: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    url: UrlOption = None,
) -> None:
    """List jobs, newest first."""
    from inferq.errors import InferqError

    try:
        with _client(url) as client:
            page = client.list(model=model, status=status, limit=limit)
    except InferqError as exc:
        raise _fail(str(exc)) from exc
    for job in page.jobs:
        created = f"{job.created_at:%Y-%m-%d %H:%M:%S}"
        typer.echo(f"{job.id}  {job.model:<12} {job.status.value:<10} {created}")


@app.command()
def models(url: UrlOption = None) -> None:
    """List the served models, their batching knobs and workers online."""
    from inferq.errors import InferqError

    try:
        with _client(url) as client:
            infos = client.models()
    except InferqError as exc:
        raise _fail(str(exc)) from exc
    for info in infos:
        typer.echo(f"{info.name:<14} workers={info.workers_online} "
                   f"max_batch_size={info.max_batch_size} batch_timeout_s={info.batch_timeout_s:g}"
                   f"  {info.description}")


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="The model's name.")],
    jobs: Annotated[int, typer.Option(help="How many jobs to run.")] = 1000,
    concurrency: Annotated[int | None, typer.Option(
        help="Closed loop: this many clients, each waiting for its job before the next "
        "(default 1).")] = None,
    rate: Annotated[float | None, typer.Option(
        help="Open loop: submit this many jobs per second whatever the service does.")] = None,
    file: Annotated[list[str] | None, typer.Option(
        "--file", "-f", help="An input file: PATH or FIELD=PATH (repeatable; jobs cycle "
        "through them). Default for mnist: tests/data/digits/*.png.")] = None,
    input: Annotated[str | None, typer.Option(
        "--input", "-i", help="Input fields as a JSON object (merged into each input).")] = None,
    wait: Annotated[float, typer.Option(
        help="Seconds a job may take, from submit, before it counts as a timeout.")] = 30,
    out: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    url: UrlOption = None,
) -> None:
    """Load-test a running service: throughput, latency percentiles, batch sizes, errors."""
    from rich.console import Console
    from rich.table import Table

    from inferq.bench import run_bench
    from inferq.errors import InferqError

    base = _input_option(input)
    if concurrency is not None and rate is not None:
        raise _fail("give --concurrency (closed loop) or --rate (open loop), not both", 2)
    specs = list(file or [])
    digits = Path("tests/data/digits")
    if not specs and model == "mnist" and digits.is_dir():
        specs = [str(p) for p in sorted(digits.glob("*.png"))]
    inputs: list[dict[str, Any]] = []
    try:
        if specs:
            with _client(url) as client:
                fields = _image_fields(client, model)
            for spec in specs:
                field, sep, path = spec.partition("=")
                if not sep:
                    path = spec
                    if len(fields) != 1:
                        raise _fail(f"say which field the file is for: --file FIELD={spec} "
                                    f"(image fields: {', '.join(fields) or 'none'})", 2)
                    field = fields[0]
                if not Path(path).is_file():
                    raise _fail(f"no such file: {path}", 2)
                inputs.append({**base, field: Path(path).read_bytes()})
        else:
            inputs.append(base)
        with _client(url) as client:
            base_url = client.base_url
        report = run_bench(base_url, model, inputs, jobs=jobs, concurrency=concurrency,
                           rate=rate, wait_s=wait, progress=progress)
    except (InferqError, ValueError) as exc:
        raise _fail(str(exc)) from exc

    lat = report["latency_ms"]
    table = Table(title=f"inferq bench {model}: {report['config']['mode']} loop, "
                  f"{jobs} jobs", show_header=False)
    rows = [
        ("succeeded / failed", f"{report['succeeded']} / {report['failed']}"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"),
        ("duration", f"{report['duration_s']:.2f} s"),
        ("submitted/s", f"{report['submitted_per_s']}"),
        ("completed/s", f"{report['completed_per_s']}"),
        ("latency p50 / p90 / p99",
         " / ".join("-" if lat[k] is None else f"{lat[k]:.1f}" for k in ("p50", "p90", "p99"))
         + " ms"),
        ("batch sizes", ", ".join(f"{k}: {v}" for k, v in report["batch_sizes"].items())
         or "not reported"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"figures written to {out}")
    if report["succeeded"] == 0:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``inferq`` command."""
    app()
