"""The log: verifying it whole (C scan, kinds=0) and opening a store after a clean close."""

from __future__ import annotations

from typing import Any

import pytest

import evstore
from evstore.bench.context import Ctx
from evstore.bench.maintenance import verify_log


@pytest.mark.parametrize("backend", ["c", "python"])
def test_verify(benchmark: Any, ctx: Ctx, backend: str) -> None:
    d = ctx.dataset(backend)
    benchmark.group = "verify the whole log"
    _dt, nbytes = verify_log(d.path, backend)
    benchmark.extra_info["bytes"] = nbytes
    benchmark(verify_log, d.path, backend)


@pytest.mark.parametrize("backend", ["c", "python", "sqlite"])
def test_open_clean(benchmark: Any, ctx: Ctx, backend: str) -> None:
    """evstore: open+close of the dataset store; SQLite: connect + max_notification_id."""
    d = ctx.dataset(backend)
    benchmark.group = "open after a clean close"
    if backend == "sqlite":
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        def go() -> None:
            ds = SQLiteDatastore(d.path)
            SQLiteApplicationRecorder(ds).max_notification_id()
            ds.close()
    else:
        def go() -> None:
            evstore.open(d.path, log_impl=backend).close()

    benchmark(go)
