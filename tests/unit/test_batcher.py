"""The batching rule, on a fake clock."""

from __future__ import annotations

import pytest

from inferq.worker.batcher import Batcher


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_full_batch_is_ready_at_once() -> None:
    clock = Clock()
    b: Batcher[int] = Batcher(4, 10.0, clock)
    for i in range(4):
        assert not b.ready()
        b.add(i)
    assert b.ready()
    assert b.take() == [0, 1, 2, 3]
    assert not b.ready() and len(b) == 0


def test_lone_item_is_ready_after_timeout_from_its_arrival() -> None:
    clock = Clock()
    b: Batcher[str] = Batcher(8, 0.5, clock)
    b.add("a")
    clock.now += 0.3
    b.add("b")  # does not restart the timeout
    assert not b.ready()
    assert b.time_left() == pytest.approx(0.2)
    clock.now += 0.2
    assert b.ready()
    assert b.take() == ["a", "b"]


def test_take_returns_at_most_max_and_leftovers_are_due() -> None:
    clock = Clock()
    b: Batcher[int] = Batcher(3, 1.0, clock)
    for i in range(7):
        b.add(i)
    assert b.take() == [0, 1, 2]
    assert b.take() == [3, 4, 5]
    assert len(b) == 1
    clock.now += 1.0
    assert b.ready() and b.take() == [6]


def test_zero_timeout_runs_whatever_is_there() -> None:
    b: Batcher[int] = Batcher(8, 0.0, Clock())
    b.add(1)
    b.add(2)
    assert b.ready() and b.take() == [1, 2]


def test_empty_batcher_never_ready_and_waits_forever() -> None:
    b: Batcher[int] = Batcher(8, 0.1, Clock())
    assert not b.ready()
    assert b.time_left() == float("inf")


def test_drain_empties_it() -> None:
    b: Batcher[int] = Batcher(8, 0.1, Clock())
    b.add(1)
    assert b.drain() == [1] and len(b) == 0 and b.time_left() == float("inf")


@pytest.mark.parametrize("size, timeout", [(0, 0.1), (1, -1.0)])
def test_bad_knobs_are_refused(size: int, timeout: float) -> None:
    with pytest.raises(ValueError):
        Batcher(size, timeout, Clock())
