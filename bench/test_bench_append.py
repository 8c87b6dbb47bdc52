"""Appends: evstore (C and Python log) against the eventsourcing SQLite and in-memory recorders."""

from __future__ import annotations

import threading
from typing import Any

import pytest

BACKENDS = ["c", "python", "sqlite", "popo"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_append1_fsync(benchmark: Any, make_writer: Any, backend: str) -> None:
    w = make_writer(backend)
    benchmark.group = "append 1 event, fsync"
    benchmark.pedantic(w.append, args=(1,), rounds=200, warmup_rounds=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_append100_fsync(benchmark: Any, make_writer: Any, backend: str) -> None:
    w = make_writer(backend)
    benchmark.group = "append 100 events, fsync"
    benchmark.extra_info["events_per_round"] = 100
    benchmark.pedantic(w.append, args=(100,), rounds=100, warmup_rounds=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_append1_os(benchmark: Any, make_writer: Any, backend: str) -> None:
    w = make_writer(backend, durability="os")
    benchmark.group = "append 1 event, durability=os (recorders: their default)"
    benchmark.pedantic(w.append, args=(1,), rounds=2000, warmup_rounds=20)


@pytest.mark.parametrize("backend", BACKENDS)
def test_append1_fsync_8threads(benchmark: Any, make_writer: Any, backend: str) -> None:
    """One round = 8 threads x 25 one-event appends (group commit for evstore)."""
    w = make_writer(backend)
    per_thread = 25
    benchmark.group = "append 1 event, fsync, 8 threads (200 appends per round)"
    benchmark.extra_info["events_per_round"] = 8 * per_thread

    def round_() -> None:
        writers = [w.stream() for _ in range(8)]

        def work(x: Any) -> None:
            for _ in range(per_thread):
                x.append(1)

        ts = [threading.Thread(target=work, args=(x,)) for x in writers]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(x.version == per_thread for x in writers)

    benchmark.pedantic(round_, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_append_conflict(benchmark: Any, make_writer: Any, backend: str) -> None:
    w = make_writer(backend)
    w.append(1)
    benchmark.group = "rejected append (wrong expected version)"
    benchmark(w.conflict)
