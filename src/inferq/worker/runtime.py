"""Running models: ``setup()`` once per process, ``predict`` on batches, results recorded.

This module knows nothing of Celery or HTTP. The Celery glue (``inferq.queue.tasks``)
hands it batches of ``(job_id, input)``; it records each job's start and terminal state
through a ``JobRecorder`` (the job store) and returns once every job of the batch has
a terminal state written -- only then may the messages be acknowledged.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from inferq.errors import InvalidInput, JobNotFound, ModelError
from inferq.model import Model
from inferq.registry import ModelSpec
from inferq.schemas import Job, JobError, JobMetrics, JobStatus

log = logging.getLogger(__name__)


class JobRecorder(Protocol):
    """The part of the job store a worker writes to."""

    def start(self, job_id: str, worker: str, started_at: datetime) -> Job | None: ...

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
    """What became of one job in a ``run_batch`` call (for monitoring events)."""

    job_id: str
    status: JobStatus
    error: JobError | None = None


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
    ) -> None:
        self.specs = specs
        self.recorder = recorder
        self.worker_id = worker_id
        self.device = device
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()
        self._call_ids = itertools.count()

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
        for item in items:
            try:
                job = self.recorder.start(item.job_id, self.worker_id, started_at)
            except JobNotFound:
                log.warning("job %s is not in the store (expired?); skipped", item.job_id)
                continue
            if job is None:
                continue  # canceled before it ran, or finished by an earlier delivery
            raw = item.input if isinstance(item.input, list) else [item.input]
            parsed: list[BaseModel] = []
            for index, value in enumerate(raw):
                try:
                    parsed.append(spec.input_type.model_validate(value))
                except ValidationError as exc:
                    where = f"inputs[{index}]: " if item.batch else ""
                    error = error_of(InvalidInput(f"{where}{exc}"))
                    self._fail(job, error, started_at, 0)
                    outcomes.append(Outcome(job.id, JobStatus.FAILED, error))
                    break
            else:
                jobs.append(job.model_copy(update={"input": {"batch": item.batch}}))
                units += [_Unit(len(jobs) - 1, i, v) for i, v in enumerate(parsed)]
        if not units:
            return outcomes
        model = self.model(model_name)
        for start in range(0, len(units), spec.max_batch_size):
            self._predict(model, spec, units[start : start + spec.max_batch_size])
        return outcomes + self._record(jobs, units, started_at)

    def _predict(self, model: Model, spec: ModelSpec, units: list[_Unit]) -> None:
        t0 = time.perf_counter()
        try:
            outputs = model.predict([u.value for u in units])
            checked = self._check_outputs(spec, outputs, len(units))
        except ModelError as exc:
            log.error("model %s broke its contract: %s", spec.name, exc)
            for u in units:
                u.error = error_of(exc)
            return
        except Exception as exc:  # a model error fails its jobs, never the worker
            if len(units) == 1:
                log.warning("predict of %s failed on one item: %r", spec.name, exc)
                units[0].error = error_of(exc)
                return
            half = len(units) // 2
            log.warning("predict of %s failed on a batch of %d (%r); bisecting",
                        spec.name, len(units), exc)
            self._predict(model, spec, units[:half])
            self._predict(model, spec, units[half:])
            return
        inference_ms = _ms(time.perf_counter() - t0)
        call = next(self._call_ids)
        for u, output in zip(units, checked, strict=True):
            u.output, u.batch_size, u.inference_ms, u.call = output, len(units), inference_ms, call

    def _record(
        self, jobs: list[Job], units: list[_Unit], started_at: datetime
    ) -> list[Outcome]:
        finished_at = _now()
        outcomes: list[Outcome] = []
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
                if batch:
                    error = JobError(type=error.type,
                                     message=f"inputs[{failed.index}]: {error.message}")
                self._finish(job.id, JobStatus.FAILED, error=error, metrics=metrics,
                             finished_at=finished_at)
                outcomes.append(Outcome(job.id, JobStatus.FAILED, error))
                continue
            output = [u.output for u in mine] if batch else mine[0].output
            self._finish(job.id, JobStatus.SUCCEEDED, output=output, metrics=metrics,
                         finished_at=finished_at)
            outcomes.append(Outcome(job.id, JobStatus.SUCCEEDED))
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
