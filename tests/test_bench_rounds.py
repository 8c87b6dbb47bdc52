"""The interleaved rounds of the device-bound bench rows (evstore.bench.rounds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from evstore.bench.rounds import interleave, share


def test_rounds_alternate_their_order_and_sum_each_backend() -> None:
    ran: list[str] = []
    closed: list[str] = []

    def backend(name: str, seconds: float) -> Iterator[float]:
        ran.append(f"{name} set-up")
        try:
            for _ in range(3):
                ran.append(name)
                yield seconds
        finally:
            closed.append(name)

    totals = interleave({"a": lambda: backend("a", 1.0), "b": lambda: backend("b", 0.5)}, rounds=3)
    assert totals == {"a": 3.0, "b": 1.5}
    assert ran == ["a set-up", "a", "b set-up", "b", "b", "a", "a", "b"]
    assert sorted(closed) == ["a", "b"]


def test_a_failing_backend_closes_the_others() -> None:
    closed: list[str] = []

    def good() -> Iterator[float]:
        try:
            while True:
                yield 1.0
        finally:
            closed.append("good")

    def bad() -> Iterator[float]:
        yield 1.0
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        interleave({"good": good, "bad": bad}, rounds=4)
    assert closed == ["good"]


def test_a_backend_with_too_few_chunks_is_an_error() -> None:
    def short() -> Iterator[float]:
        yield 1.0

    with pytest.raises(RuntimeError, match="short: 1 chunks for 2 rounds"):
        interleave({"short": short}, rounds=2)


def test_share() -> None:
    assert share(10, 4) == [3, 3, 2, 2]
    assert share(3, 4) == [1, 1, 1, 0]
    assert sum(share(12345, 4)) == 12345
