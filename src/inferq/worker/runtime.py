"""Running models: ``setup()`` once per process, ``predict`` on batches, results recorded.

This module knows nothing of Celery or HTTP. The Celery glue (``inferq.queue.tasks``)
hands it batches of ``(job_id, input)``; it records each job's start and terminal state
through a ``JobRecorder`` (the job store) and returns once every job of the batch has
a terminal state written -- only then may the messages be acknowledged.
"""

from __future__ import annotations

import importlib.util
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
    """One job handed to the runtime: its id and its input as JSON."""

    job_id: str
    input: dict[str, Any]


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

    def run_batch(self, model_name: str, items: Sequence[WorkItem]) -> None:
        """Run ``items`` through one ``predict`` call and write every job's terminal state."""
        spec = self.specs[model_name]
        started_at = _now()
        runnable: list[tuple[Job, BaseModel]] = []
        for item in items:
            try:
                job = self.recorder.start(item.job_id, self.worker_id, started_at)
            except JobNotFound:
                log.warning("job %s is not in the store (expired?); skipped", item.job_id)
                continue
            if job is None:
                continue  # canceled before it ran, or finished by an earlier delivery
            try:
                parsed = spec.input_type.model_validate(item.input)
            except ValidationError as exc:
                self._fail(job, error_of(InvalidInput(str(exc))), started_at, len(items))
                continue
            runnable.append((job, parsed))
        if not runnable:
            return
        model = self.model(model_name)
        t0 = time.perf_counter()
        try:
            outputs = model.predict([parsed for _, parsed in runnable])
            outputs = self._check_outputs(spec, outputs, len(runnable))
        except Exception as exc:  # a model error fails its jobs, never the worker
            log.exception("predict of %s failed on a batch of %d", model_name, len(runnable))
            error = error_of(exc)
            for job, _ in runnable:
                self._fail(job, error, started_at, len(runnable))
            return
        inference_ms = _ms(time.perf_counter() - t0)
        finished_at = _now()
        for (job, _), output in zip(runnable, outputs, strict=True):
            self._finish(
                job.id,
                JobStatus.SUCCEEDED,
                output=output,
                metrics=self._metrics(job, started_at, inference_ms, len(runnable)),
                finished_at=finished_at,
            )

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
