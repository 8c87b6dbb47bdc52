"""An eventsourcing application's repository.get of one long aggregate, per persistence module."""

from __future__ import annotations

import os
from typing import Any

import pytest

from evstore import bench as B
from evstore.bench.context import es_module

BACKENDS = ["c", "python", "sqlite", "popo"]


def _app(tmp_path: Any, backend: str) -> Any:
    from eventsourcing.application import Application

    env = {"IS_SNAPSHOTTING_ENABLED": "y"}
    if backend in ("c", "python"):
        es_module()  # a clear error when the eventsourcing library is missing
        env.update(PERSISTENCE_MODULE="evstore.eventsourcing", EVSTORE_PATH=str(tmp_path / "app"),
                   EVSTORE_DURABILITY="os")
    elif backend == "sqlite":
        env.update(PERSISTENCE_MODULE="eventsourcing.sqlite", SQLITE_DBNAME=str(tmp_path / "app.sqlite"))
    saved = os.environ.get("EVSTORE_PURE")
    os.environ["EVSTORE_PURE"] = "1" if backend == "python" else "0"
    try:
        return Application(env=env)
    finally:
        if saved is None:
            os.environ.pop("EVSTORE_PURE", None)
        else:
            os.environ["EVSTORE_PURE"] = saved


@pytest.mark.parametrize("snapshot", [False, True], ids=["events", "snapshot"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_repository_get(benchmark: Any, tmp_path: Any, sizes: B.Sizes, backend: str, snapshot: bool) -> None:
    app = _app(tmp_path, backend)
    try:
        agg = B.BenchAggregate()
        for _ in range(sizes.aggregate - 1):
            agg.add("x" * 150)
        app.save(agg)
        if snapshot:
            app.take_snapshot(agg.id)
        benchmark.group = f"repository.get, {sizes.aggregate:,} events" + (", snapshot" if snapshot else "")
        got = benchmark(app.repository.get, agg.id)
        assert got.version == sizes.aggregate
    finally:
        app.close()
