"""When to run a batch: the pure rule, with no I/O, no Celery, no clock of its own.

A batch runs as soon as it holds ``max_batch_size`` items, or ``batch_timeout_s`` after
its **first** item arrived, whichever comes first (Triton's ``max_queue_delay``, Ray's
``batch_wait_timeout_s``). A lone item therefore waits at most ``batch_timeout_s``.
``batch_timeout_s = 0`` means "run whatever is there now": no waiting, but items that
arrived together still run together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items of one model and says when they form a batch."""

    def __init__(
        self, max_batch_size: int, batch_timeout_s: float, clock: Callable[[], float]
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if batch_timeout_s < 0:
            raise ValueError("batch_timeout_s must not be negative")
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self._clock = clock
        self._items: list[T] = []
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        """Hold ``item``; the first item of a batch starts its timeout."""
        if not self._items:
            self._first_at = self._clock()
        self._items.append(item)

    def ready(self) -> bool:
        """True when a batch should run now."""
        if not self._items:
            return False
        return len(self._items) >= self.max_batch_size or self.time_left() <= 0

    def time_left(self) -> float:
        """Seconds until the batch must run (``inf`` when empty)."""
        if self._first_at is None:
            return float("inf")
        return self._first_at + self.batch_timeout_s - self._clock()

    def take(self) -> list[T]:
        """Remove and return up to ``max_batch_size`` items, oldest first."""
        batch = self._items[: self.max_batch_size]
        self._items = self._items[self.max_batch_size :]
        # Items left over already waited: they start a batch that is due at once.
        self._first_at = self._first_at if self._items else None
        return batch

    def drain(self) -> list[T]:
        """Remove and return everything held (e.g. when the connection is lost)."""
        items, self._items, self._first_at = self._items, [], None
        return items
