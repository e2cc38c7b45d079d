"""Every error inferq raises on purpose, in one tree.

::

    InferqError
    ├── ConfigError              a setting or a model entry is wrong; raised at start-up
    ├── ModelNotFound            no model of that name is served
    ├── JobNotFound              no such job, or it expired
    ├── JobConflict              the job cannot make that move (cancel a terminal job)
    ├── InvalidInput             the input does not fit the model's Input schema
    │   └── UnsupportedMediaType an image field holds bytes that are not an image
    ├── ServiceUnavailable       something the API depends on is down; retry later
    │   ├── BrokerUnavailable
    │   └── StoreUnavailable
    ├── ModelError               the model broke its contract (e.g. wrong number of outputs)
    ├── RetryableError           raised by a model for a transient failure: retried with backoff
    ├── JobTimeout               the job ran past its model's time limit (soft, hard, reaper)
    └── DeadLetter               the job was delivered too often without finishing (poison)

Errors cross process boundaries as data -- ``{"type": ..., "message": ...}`` -- never as
exception objects of a web framework. HTTP status codes are chosen in one place:
``inferq.api.problems``.
"""

from __future__ import annotations

from typing import Any


class InferqError(Exception):
    """Base class of every error inferq raises on purpose."""


class ConfigError(InferqError):
    """A setting, a config file or a model entry is wrong."""


class ModelNotFound(InferqError):
    """No model of that name is served."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no model named {name!r}")
        self.name = name


class JobNotFound(InferqError):
    """No job has that id (or its result expired)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r} (unknown, or its result expired)")
        self.job_id = job_id


class JobConflict(InferqError):
    """The job cannot make the requested move, e.g. canceling a terminal job."""


class InvalidInput(InferqError):
    """The input does not fit the model's Input schema.

    ``errors`` is a list of ``{"field": "a.b", "message": "..."}`` a person can act on.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class UnsupportedMediaType(InvalidInput):
    """An image field holds bytes that are not an image of an allowed format."""


class ServiceUnavailable(InferqError):
    """A service the API depends on is unreachable; the client should retry."""

    retry_after_s: int = 5


class BrokerUnavailable(ServiceUnavailable):
    """The message broker is unreachable."""


class StoreUnavailable(ServiceUnavailable):
    """The job store is unreachable."""


class ModelError(InferqError):
    """A model broke its contract, e.g. ``predict`` returned the wrong number of outputs."""


class RetryableError(InferqError):
    """Raise it from ``predict`` for a transient failure (a download that timed out, ...).

    The jobs of that call are retried with exponential backoff, up to the model's
    ``max_retries``; then they fail with this error. Any other exception fails at once.
    """


class JobTimeout(InferqError):
    """The job ran past its model's time limit (``soft_time_limit_s``, ``time_limit_s``)."""


class DeadLetter(InferqError):
    """The job was delivered ``max_deliveries`` times and never finished: each try killed
    its worker or outran the hard time limit. It is failed and listed as a dead letter."""
