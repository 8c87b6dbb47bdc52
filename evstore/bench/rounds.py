"""Backends measured in interleaved rounds: the device-bound rows' way of comparing side by side.

The latency of `fdatasync` on a shared virtual disk drifts by 2x and more within minutes. Rows
measured one backend after another then compare moments, not backends. Here each backend is a
generator: its set-up, then one timed chunk of the work per `next()` (yielding the chunk's
seconds), its tear-down when closed. The chunks run in rounds, every backend once per round and
the order reversed every other round, so that a drift of the device meets every backend alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

ROUNDS = 4

Chunks = Callable[[], Iterator[float]]


def interleave(backends: Mapping[str, Chunks], rounds: int = ROUNDS) -> dict[str, float]:
    """{backend: total seconds of its `rounds` chunks}. Each value of `backends` makes a generator
    when called (nothing runs before its first chunk); every generator is closed at the end, also
    when one of them fails, and a generator that ends early is an error."""
    order = list(backends)
    gens: dict[str, Iterator[float]] = {}
    totals = dict.fromkeys(order, 0.0)
    try:
        for r in range(rounds):
            for name in order if r % 2 == 0 else reversed(order):
                gen = gens.get(name)
                if gen is None:
                    gen = gens[name] = backends[name]()
                try:
                    totals[name] += next(gen)
                except StopIteration:
                    raise RuntimeError(f"{name}: {r} chunks for {rounds} rounds") from None
    finally:
        for gen in gens.values():
            gen.close()  # type: ignore[attr-defined]
    return totals


def share(n: int, rounds: int = ROUNDS) -> list[int]:
    """n split into `rounds` parts as equal as they can be (the first ones larger)."""
    q, r = divmod(n, rounds)
    return [q + (i < r) for i in range(rounds)]
