"""Time limits around a ``predict`` call: a soft one raised inside it, a hard one enforced
from outside.

A soft limit raises ``JobTimeout`` in the worker's main thread (``SIGALRM``): Python code
stops, a blocking C call does not. The hard limit is a watchdog thread: if ``predict``
is still running when it fires, the watchdog fails the call's jobs itself and then ends
the process (its supervisor starts a new one), because no Python mechanism can stop a
C call that does not return.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from inferq.errors import JobTimeout


@contextlib.contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``JobTimeout`` inside the block after ``seconds`` (main thread only)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: FrameType | None) -> None:
        raise JobTimeout(f"soft time limit of {seconds:g} s exceeded")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Watchdog:
    """One thread that calls ``on_expire`` if an armed deadline passes before ``disarm``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._on_expire: Callable[[], None] | None = None
        self._generation = 0
        self._thread = threading.Thread(target=self._run, name="inferq-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def armed(self, seconds: float, on_expire: Callable[[], None]) -> Iterator[None]:
        """Within the block, ``on_expire`` runs (on the watchdog thread) after ``seconds``."""
        import time

        with self._cond:
            self._generation += 1
            self._deadline = time.monotonic() + seconds
            self._on_expire = on_expire
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._generation += 1
                self._deadline = None
                self._on_expire = None
                self._cond.notify()

    def _run(self) -> None:
        import time

        while True:
            with self._cond:
                while self._deadline is None:
                    self._cond.wait()
                generation, deadline = self._generation, self._deadline
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                if generation != self._generation:
                    continue
                action, self._deadline = self._on_expire, None
            if action is not None:
                action()
