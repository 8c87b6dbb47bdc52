"""Fixtures of the pytest-benchmark suite: `pytest bench/ --benchmark-only`.

These are measurements, not tests: they never run in the default `pytest` run (testpaths is tests/),
and when bench/ is collected without --benchmark-only they are skipped (set EVSTORE_BENCH=1 to run
them once each as a smoke test, e.g. with --benchmark-disable). Each benchmark is parametrized over
backends, so that evstore and its baselines are measured side by side in one session; compare with
`--benchmark-group-by=func` (the default grouping here). Sizes are a tenth of `evstore bench`'s
(`EVSTORE_BENCH_SCALE` changes that).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import evstore
from evstore import bench as B
from evstore.bench.context import Ctx, popo_recorder, sqlite_recorder, stored

SCALE = float(os.environ.get("EVSTORE_BENCH_SCALE", "0.1"))
STORE_BACKENDS = ["c", "python"]
RECORDER_BACKENDS = ["c", "python", "sqlite", "popo"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if config.getoption("benchmark_only", False) or os.environ.get("EVSTORE_BENCH", "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="a benchmark: run with `pytest bench/ --benchmark-only` (or EVSTORE_BENCH=1)")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    machine_info["evstore"] = B.machine()


@pytest.fixture(scope="session")
def sizes() -> B.Sizes:
    return B.Sizes().scaled(SCALE)


@pytest.fixture(scope="session")
def ctx(sizes: B.Sizes) -> Iterator[Ctx]:
    """The shared read datasets (built once per backend, on first use) in a session folder."""
    tmp = tempfile.mkdtemp(prefix="evstore-pytest-bench-")
    c = Ctx(tmp, sizes, 1, B.BACKENDS, lambda msg: None)
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)


class Writer:
    """One backend's append path, on a fresh store/database: evstore's native append, or the
    eventsourcing recorder's insert_events."""

    def __init__(self, backend: str, path: str, durability: str = "fsync") -> None:
        self.backend = backend
        self.oid = uuid.uuid4()
        self.version = 0
        self.store: Any = None
        self.recorder: Any = None
        if backend in STORE_BACKENDS:
            self.store = evstore.open(path, durability=durability, log_impl=backend)
        elif backend == "sqlite":
            self.recorder = sqlite_recorder(path + ".sqlite", pool_size=10)
        else:
            self.recorder = popo_recorder()

    def stream(self) -> Writer:
        """A writer on a new stream of the same store (for threads)."""
        w = object.__new__(Writer)
        w.__dict__.update(self.__dict__)
        w.oid = uuid.uuid4()
        w.version = 0
        return w

    def append(self, k: int) -> None:
        v = self.version
        if self.store is not None:
            self.store.append(self.oid, [evstore.NewEvent("Ev", B.PAYLOAD) for _ in range(k)],
                              expected_version=v if v else evstore.NO_STREAM)
        else:
            self.recorder.insert_events([stored(self.oid, i) for i in range(v + 1, v + k + 1)])
        self.version = v + k

    def conflict(self) -> None:
        """One rejected append (the stream must have events)."""
        from eventsourcing.persistence import IntegrityError

        try:
            if self.store is not None:
                self.store.append(self.oid, [evstore.NewEvent("Ev", B.PAYLOAD)], expected_version=self.version + 5)
            else:
                self.recorder.insert_events([stored(self.oid, 1)])
        except (evstore.WrongExpectedVersion, IntegrityError):
            return
        raise AssertionError("the append was not rejected")

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        elif self.backend == "sqlite":
            self.recorder.datastore.close()


_n = itertools.count()


@pytest.fixture
def make_writer(tmp_path: Any) -> Iterator[Any]:
    made: list[Writer] = []

    def make(backend: str, durability: str = "fsync") -> Writer:
        w = Writer(backend, str(tmp_path / f"w{next(_n)}"), durability)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
