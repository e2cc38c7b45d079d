"""Running models: ``setup()`` once per process, ``predict`` on batches, results recorded.

This module knows nothing of brokers or HTTP. The consume loop (``inferq.queue.consumer``)
hands it batches of ``WorkItem``; it records each job's start and terminal state through
a ``JobRecorder`` (the job store) and returns once every job of the batch has a terminal
state written (or was put back for a retry) -- only then may the messages be acknowledged.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from inferq.errors import (
    DeadLetter,
    InvalidInput,
    JobNotFound,
    JobTimeout,
    ModelError,
    RetryableError,
)
from inferq.model import Model
from inferq.registry import ModelSpec
from inferq.schemas import FinishItem, Job, JobError, JobMetrics, JobStatus
from inferq.worker.limits import Watchdog, soft_time_limit

log = logging.getLogger(__name__)


class JobRecorder(Protocol):
    """The part of the job store a worker writes to."""

    def start(self, job_id: str, worker: str, started_at: datetime) -> Job | None: ...

    def requeue(self, job_id: str) -> bool: ...

    def start_many(
        self, job_ids: list[str], worker: str, started_at: datetime
    ) -> list[Job | None]: ...

    def finish_many(self, items: list[FinishItem]) -> list[bool | None]: ...

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        output: Any = None,
        error: JobError | None = None,
        metrics: JobMetrics | None = None,
        finished_at: datetime,
    ) -> bool: ...


@dataclass
class WorkItem:
    """One job handed to the runtime: its id and its input as JSON.

    A batch job (``{"inputs": [...]}`` on the API) has ``batch=True`` and a list of inputs;
    its output is the list of outputs, in order.
    """

    job_id: str
    input: dict[str, Any] | list[dict[str, Any]]
    batch: bool = False


@dataclass
class Outcome:
    """What became of one job in a ``run_batch`` call.

    ``status`` is the terminal state written, or ``queued`` when the job is to be retried
    (its ``attempts`` so far are in ``job``).
    """

    job_id: str
    status: JobStatus
    error: JobError | None = None
    job: Job | None = None

    @property
    def retry(self) -> bool:
        """True when the job was put back to be run again after a backoff."""
        return self.status == JobStatus.QUEUED


@dataclass
class _Unit:
    """One input item on its way through ``predict``."""

    job: int
    index: int
    value: BaseModel
    output: Any = None
    error: JobError | None = None
    batch_size: int = 0
    inference_ms: float = 0.0
    call: int = -1  # which predict call produced the output
    retryable: bool = False


def pick_device(requested: str = "auto") -> str:
    """``cuda`` when asked for or when PyTorch sees a GPU (``auto``), else ``cpu``.

    Imports torch only if it is installed; a worker for a scikit-learn model pays nothing.
    """
    if requested != "auto":
        return requested
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch  # noqa: TID251 - only to ask whether a GPU is there

    return "cuda" if torch.cuda.is_available() else "cpu"


def error_of(exc: BaseException) -> JobError:
    """An exception as data: its type name and message (never the object)."""
    message = str(exc) or repr(exc)
    return JobError(type=type(exc).__name__, message=message[:2000])


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class WorkerRuntime:
    """The loaded models of one worker process, and the code that runs jobs on them."""

    def __init__(
        self,
        specs: dict[str, ModelSpec],
        recorder: JobRecorder,
        worker_id: str,
        device: str = "auto",
        *,
        on_started: Callable[[Job], None] | None = None,
        on_hard_timeout: Callable[[], None] | None = None,
    ) -> None:
        self.specs = specs
        self.recorder = recorder
        self.worker_id = worker_id
        self.device = device
        #: Called with each job marked running (webhook "start" events, monitoring).
        self.on_started = on_started
        #: Called after a hard time limit failed a call's jobs; the worker process ends
        #: there (``os._exit``), tests pass a stand-in.
        self.on_hard_timeout = on_hard_timeout
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()
        self._call_ids = itertools.count()
        self._watchdog: Watchdog | None = None

    def setup(self) -> None:
        """Load every model now (once per process), so the first job does not pay for it."""
        for name in self.specs:
            self.model(name)

    def model(self, name: str) -> Model:
        """The loaded instance of ``name``; runs its ``setup()`` on first use, once."""
        model = self._models.get(name)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(name)
            if model is None:
                spec = self.specs[name]
                model = spec.cls()
                model.device = pick_device(self.device)
                started = time.perf_counter()
                model.setup()
                log.info(
                    "model %s ready on %s in %.2f s", name, model.device,
                    time.perf_counter() - started,
                )
                self._models[name] = model
        return model

    def run_batch(self, model_name: str, items: Sequence[WorkItem]) -> list[Outcome]:
        """Run ``items`` through ``predict`` and write every job's terminal state.

        Items are cut into calls of at most ``max_batch_size``. If a call raises, its
        items are bisected and run again until the culprits are alone: one bad item fails
        only its own job. A ``predict`` that breaks the contract (wrong number of outputs,
        outputs that do not fit ``Output``) fails every job of that call with ModelError.
        Returns what became of each job it ran (skipped jobs are left out).
        """
        spec = self.specs[model_name]
        started_at = _now()
        outcomes: list[Outcome] = []
        jobs: list[Job] = []
        units: list[_Unit] = []
        # One round trip for the batch where the store can (Redis pipelines it).
        started = self.recorder.start_many([i.job_id for i in items], self.worker_id,
                                           started_at)
        for item, job in zip(items, started, strict=True):
            if job is None:
                continue  # canceled before it ran, finished by an earlier delivery, or gone
            # Retries count as attempts too; beyond them, every delivery that came back
            # without a result means a worker died (or hit the hard limit) running it.
            if job.attempts > spec.max_deliveries + spec.max_retries:
                error = error_of(DeadLetter(
                    f"started {job.attempts - 1} times without finishing (each try killed "
                    f"its worker or outran the time limit); dead-lettered"))
                self._fail(job, error, started_at, 0)
                outcomes.append(Outcome(job.id, JobStatus.FAILED, error, job))
                continue
            if self.on_started is not None:
                self.on_started(job)
            raw = item.input if isinstance(item.input, list) else [item.input]
            parsed: list[BaseModel] = []
            for index, value in enumerate(raw):
                try:
                    parsed.append(spec.input_type.model_validate(value))
                except ValidationError as exc:
                    where = f"inputs[{index}]: " if item.batch else ""
                    error = error_of(InvalidInput(f"{where}{exc}"))
                    self._fail(job, error, started_at, 0)
                    outcomes.append(Outcome(job.id, JobStatus.FAILED, error, job))
                    break
            else:
                jobs.append(job.model_copy(update={"input": {"batch": item.batch}}))
                units += [_Unit(len(jobs) - 1, i, v) for i, v in enumerate(parsed)]
        if not units:
            return outcomes
        model = self.model(model_name)
        for start in range(0, len(units), spec.max_batch_size):
            self._predict(model, spec, units[start : start + spec.max_batch_size], jobs)
        return outcomes + self._record(spec, jobs, units, started_at)

    def _predict(
        self, model: Model, spec: ModelSpec, units: list[_Unit], jobs: list[Job]
    ) -> None:
        if self._watchdog is None:
            self._watchdog = Watchdog()
        doomed = sorted({jobs[u.job].id for u in units})
        t0 = time.perf_counter()
        try:
            with self._watchdog.armed(spec.time_limit_s,
                                      lambda: self._hard_timeout(spec, doomed)):
                with soft_time_limit(spec.soft_time_limit_s):
                    outputs = model.predict([u.value for u in units])
            checked = self._check_outputs(spec, outputs, len(units))
        except (ModelError, JobTimeout, RetryableError) as exc:
            # A broken contract, a timeout or a transient failure is about the call, not
            # one item: no bisecting.
            log.error("predict of %s on %d items: %r", spec.name, len(units), exc)
            for u in units:
                u.error, u.retryable = error_of(exc), isinstance(exc, RetryableError)
            return
        except Exception as exc:  # a model error fails its jobs, never the worker
            if len(units) == 1:
                log.warning("predict of %s failed on one item: %r", spec.name, exc)
                units[0].error = error_of(exc)
                return
            half = len(units) // 2
            log.warning("predict of %s failed on a batch of %d (%r); bisecting",
                        spec.name, len(units), exc)
            self._predict(model, spec, units[:half], jobs)
            self._predict(model, spec, units[half:], jobs)
            return
        inference_ms = _ms(time.perf_counter() - t0)
        call = next(self._call_ids)
        for u, output in zip(units, checked, strict=True):
            u.output, u.batch_size, u.inference_ms, u.call = output, len(units), inference_ms, call

    def _hard_timeout(self, spec: ModelSpec, job_ids: list[str]) -> None:
        # Runs on the watchdog thread while predict is stuck: record the verdict, then end
        # the process -- the messages, never acknowledged, come back and are skipped as
        # terminal.
        log.error("hard time limit of %g s hit by %s on %d jobs; failing them and exiting",
                  spec.time_limit_s, spec.name, len(job_ids))
        error = JobError(type="JobTimeout",
                         message=f"hard time limit of {spec.time_limit_s:g} s exceeded")
        for job_id in job_ids:
            self._finish(job_id, JobStatus.FAILED, error=error, finished_at=_now())
        if self.on_hard_timeout is not None:
            self.on_hard_timeout()

    def _record(
        self, spec: ModelSpec, jobs: list[Job], units: list[_Unit], started_at: datetime
    ) -> list[Outcome]:
        finished_at = _now()
        outcomes: list[Outcome] = []
        writes: list[FinishItem] = []
        by_job: dict[int, list[_Unit]] = {}
        for u in units:
            by_job.setdefault(u.job, []).append(u)
        for j, job in enumerate(jobs):
            mine = by_job[j]
            batch = bool(job.input.get("batch"))
            metrics = JobMetrics(
                queue_ms=max(_ms((started_at - job.created_at).total_seconds()), 0.0),
                inference_ms=round(sum({u.call: u.inference_ms for u in mine}.values()), 3),
                batch_size=max(u.batch_size for u in mine) or len(mine),
            )
            failed = next((u for u in mine if u.error is not None), None)
            if failed is not None and failed.error is not None:
                error = failed.error
                if failed.retryable and job.attempts <= spec.max_retries:
                    if self.recorder.requeue(job.id):
                        outcomes.append(Outcome(job.id, JobStatus.QUEUED, error, job))
                        continue
                if failed.retryable:
                    error = JobError(type=error.type, message=f"{error.message} (gave up "
                                     f"after {job.attempts} attempts)")
                if batch:
                    error = JobError(type=error.type,
                                     message=f"inputs[{failed.index}]: {error.message}")
                writes.append(FinishItem(job.id, JobStatus.FAILED, error=error, metrics=metrics,
                                         finished_at=finished_at))
                outcomes.append(Outcome(job.id, JobStatus.FAILED, error, job))
                continue
            output = [u.output for u in mine] if batch else mine[0].output
            writes.append(FinishItem(job.id, JobStatus.SUCCEEDED, output=output,
                                     metrics=metrics, finished_at=finished_at))
            outcomes.append(Outcome(job.id, JobStatus.SUCCEEDED, None, job))
        for item, written in zip(writes, self.recorder.finish_many(writes), strict=True):
            if written is None:
                log.warning("job %s vanished from the store before it finished", item.job_id)
        return outcomes

    @staticmethod
    def _check_outputs(spec: ModelSpec, outputs: Any, expected: int) -> list[Any]:
        if not isinstance(outputs, list | tuple):
            raise ModelError(
                f"{spec.name}.predict must return a list, got {type(outputs).__name__}"
            )
        if len(outputs) != expected:
            raise ModelError(
                f"{spec.name}.predict returned {len(outputs)} outputs for {expected} inputs"
            )
        try:
            return [
                spec.output_type.model_validate(o, from_attributes=True).model_dump(mode="json")
                for o in outputs
            ]
        except ValidationError as exc:
            raise ModelError(f"{spec.name}.predict returned an invalid output: {exc}") from exc

    @staticmethod
    def _metrics(
        job: Job, started_at: datetime, inference_ms: float | None, size: int
    ) -> JobMetrics:
        queue_ms = _ms((started_at - job.created_at).total_seconds())
        return JobMetrics(queue_ms=max(queue_ms, 0.0), inference_ms=inference_ms, batch_size=size)

    def _finish(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        try:
            self.recorder.finish(job_id, status, **fields)
        except JobNotFound:
            log.warning("job %s vanished from the store before it finished", job_id)

    def _fail(self, job: Job, error: JobError, started_at: datetime, size: int) -> None:
        self._finish(
            job.id,
            JobStatus.FAILED,
            error=error,
            metrics=self._metrics(job, started_at, None, size),
            finished_at=_now(),
        )
