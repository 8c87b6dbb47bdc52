"""Benchmarks: the cost of lifecycle validation at append, and of upcasting on reads.

Run: pytest bench/test_bench_lifecycle.py --benchmark-only --benchmark-group-by=group -s
Each group compares the feature off and on in the same run (durability="os" to keep noise down).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

import evstore
from evstore import NewEvent

ORDER = evstore.Lifecycle(
    "order", initial="new",
    transitions={("new", "Placed"): "open", ("open", "ItemAdded"): "open", ("open", "Paid"): "paid",
                 ("paid", "Shipped"): "shipped", ("open", "Cancelled"): "cancelled"},
    final={"shipped", "cancelled"},
)
EVENTS = [NewEvent("ItemAdded", b'{"sku": 7, "qty": 1, "note": "' + b"x" * 100 + b'"}') for _ in range(100)]


def _open(path: str, with_lifecycle: bool) -> evstore.EventStore:
    return evstore.open(path, durability="os", lifecycles={"order": ORDER} if with_lifecycle else None)


@pytest.fixture
def tmp_store_dir(tmp_path: object) -> Iterator[str]:
    yield str(tmp_path)


@pytest.mark.benchmark(group="append-100-events")
@pytest.mark.parametrize("lifecycle", [False, True], ids=["no-lifecycle", "lifecycle"])
def test_append_100(benchmark, tmp_store_dir: str, lifecycle: bool) -> None:  # type: ignore[no-untyped-def]
    with _open(os.path.join(tmp_store_dir, "s"), lifecycle) as s:
        s.append("order-1", [NewEvent("Placed", b"")])
        benchmark(s.append, "order-1", EVENTS)
        if lifecycle:
            assert s.stream_state("order-1") == "open"


@pytest.mark.benchmark(group="append-100-events")
def test_validation_overhead_is_small(benchmark, tmp_store_dir: str) -> None:  # type: ignore[no-untyped-def]
    """Interleaved timing of the same appends with and without a lifecycle (prints ns per event);
    the benchmark itself is the validating append, with the overhead in extra_info."""
    stores = [_open(os.path.join(tmp_store_dir, name), lc) for name, lc in (("a", False), ("b", True))]
    try:
        for s in stores:
            s.append("order-1", [NewEvent("Placed", b"")])
        best = [float("inf"), float("inf")]
        for _ in range(7):
            for i, s in enumerate(stores):
                t = time.perf_counter()
                for _ in range(30):
                    s.append("order-1", EVENTS)
                best[i] = min(best[i], (time.perf_counter() - t) / 30)
        extra_ns = (best[1] - best[0]) / 100 * 1e9
        print(f"\nappend of 100 events: {best[0] * 1e6:.0f} us without, {best[1] * 1e6:.0f} us with a lifecycle "
              f"({(best[1] / best[0] - 1) * 100:+.1f}%, {extra_ns:+.0f} ns per event)")
        benchmark.extra_info["overhead_pct"] = round((best[1] / best[0] - 1) * 100, 1)
        benchmark.extra_info["overhead_ns_per_event"] = round(extra_ns)
        benchmark.pedantic(stores[1].append, args=("order-1", EVENTS), rounds=50, warmup_rounds=2)
    finally:
        for s in stores:
            s.close()


@pytest.fixture(scope="module")
def read_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("up") / "s")
    with evstore.open(path, durability="os") as s:
        for _ in range(100):
            s.append("cart-1", [NewEvent("ItemAdded", b"{}", schema=2) for _ in range(100)])
    yield path


def _up(e: evstore.RecordedEvent) -> tuple[str, bytes, bytes]:
    return e.type, e.data, e.metadata


@pytest.mark.benchmark(group="read-10000-events")
@pytest.mark.parametrize("mode", ["none", "other-type", "other-schema", "all"])
def test_read_stream_upcasting(benchmark, read_store: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    with evstore.open(read_store) as s:
        s._up = None  # handles share nothing but the core; this one starts clean
        if mode == "other-type":
            s.register_upcaster("SomethingElse", 1, _up)
        elif mode == "other-schema":
            s.register_upcaster("ItemAdded", 1, _up)  # the stored events are schema 2: no upcast
        elif mode == "all":
            s.register_upcaster("ItemAdded", 2, _up)
        out = benchmark(s.read_stream, "cart-1")
        assert len(out) == 10_000
