"""The Model base class: what a user writes to serve a model with inferq.

A model is a class with a ``name``, typed ``Input`` and ``Output`` (pydantic models),
``setup()`` -- called once per worker process, to load weights -- and
``predict(batch)``, which takes a list of ``Input`` and returns a list of ``Output`` of
the same length, always a list, even for a batch of one.

Keep heavy imports (torch, jax, ...) inside ``setup()``/``predict()``: the API process
imports the class to validate inputs and must never load an ML framework.

Example::

    class Doubler(Model):
        name = "doubler"

        class Input(BaseModel):
            x: float

        class Output(BaseModel):
            y: float

        def predict(self, batch):
            return [self.Output(y=2 * item.x) for item in batch]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel


class Model:
    """Base class of a servable model. Subclass it; see the module docstring."""

    #: The name the model is served under (``/v1/models/{name}``): lowercase, ``[a-z0-9_-]``.
    name: ClassVar[str]
    #: One line shown by ``GET /v1/models`` and ``inferq models``.
    description: ClassVar[str] = ""
    #: The pydantic model of one input item.
    Input: ClassVar[type[BaseModel]]
    #: The pydantic model of one output item.
    Output: ClassVar[type[BaseModel]]
    #: The most items a worker passes to one ``predict`` call.
    max_batch_size: ClassVar[int] = 1
    #: How long a worker waits, after the first item of a batch arrived, for more.
    batch_timeout_s: ClassVar[float] = 0.0
    #: Retries of a job whose ``predict`` raised ``inferq.errors.RetryableError``.
    max_retries: ClassVar[int] = 3
    #: A ``predict`` call running longer raises ``JobTimeout`` inside it (Python code only:
    #: a blocking C call is not interrupted -- that is what the hard limit is for).
    soft_time_limit_s: ClassVar[float | None] = None
    #: A ``predict`` call running longer fails its jobs with ``JobTimeout`` and the worker
    #: process is replaced. Must stay below RabbitMQ's consumer timeout (30 min).
    time_limit_s: ClassVar[float] = 600.0
    #: Deliveries without a result (the worker died each time), beyond ``max_retries``,
    #: before a job is dead-lettered.
    max_deliveries: ClassVar[int] = 5

    def __init__(self) -> None:
        #: Set by the worker before ``setup()``: ``"cuda"`` when a GPU is there, else ``"cpu"``.
        self.device: str = "cpu"

    def setup(self) -> None:
        """Load weights and anything expensive. Called once per worker process."""

    def predict(self, batch: list[Any]) -> Sequence[Any]:
        """Run the model on ``batch`` (a list of ``Input``) and return one ``Output`` each."""
        raise NotImplementedError(f"{type(self).__name__}.predict is not written")
