"""Reads over shared datasets (one long stream plus streams of 100 events), per backend."""

from __future__ import annotations

from typing import Any

import pytest

import evstore
from evstore import bench as B
from evstore.bench.context import Ctx, count, page_notifications

BACKENDS = ["c", "python", "sqlite", "popo"]


def _open(ctx: Ctx, backend: str) -> tuple[B.Dataset, Any]:
    d = ctx.dataset(backend)
    store = evstore.open(d.path, log_impl=backend) if backend in ("c", "python") else None
    return d, store


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_stream(benchmark: Any, ctx: Ctx, backend: str) -> None:
    """evstore: read_stream (native records); recorders: select_events."""
    d, store = _open(ctx, backend)
    benchmark.group = "read one long stream"
    benchmark.extra_info["events"] = d.stream
    try:
        fn = (lambda: store.read_stream(d.big)) if store else (lambda: d.recorder.select_events(d.big))
        got = benchmark(fn)
        assert len(got) == d.stream
    finally:
        if store:
            store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_streams(benchmark: Any, ctx: Ctx, backend: str) -> None:
    d, store = _open(ctx, backend)
    ids = d.small[: ctx.sizes.streams]
    benchmark.group = f"read {len(ids)} streams of 100 events"
    try:
        rs = store.read_stream if store else d.recorder.select_events
        got = benchmark(lambda: sum(len(rs(i)) for i in ids))
        assert got == 100 * len(ids)
    finally:
        if store:
            store.close()


@pytest.mark.parametrize("filtered", [False, True], ids=["all", "one-type"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_read_all(benchmark: Any, ctx: Ctx, backend: str, filtered: bool) -> None:
    """evstore: read_all (records); recorders: select_notifications in pages of 1,000."""
    d, store = _open(ctx, backend)
    benchmark.group = "read_all" + (" of one type (a quarter)" if filtered else "")
    benchmark.extra_info["events"] = d.filtered if filtered else d.total
    try:
        if store:
            types = [B.TOPICS[0]] if filtered else None
            got = benchmark(lambda: count(store.read_all(types=types)))
        else:
            topics = (B.TOPICS[0],) if filtered else ()
            got = benchmark(lambda: page_notifications(d.recorder, topics))
        assert got == (d.filtered if filtered else d.total)
    finally:
        if store:
            store.close()


def _es_recorder(ctx: Ctx, backend: str) -> tuple[B.Dataset, Any, Any]:
    d = ctx.dataset(backend)
    if backend not in ("c", "python"):
        return d, d.recorder, None
    store = evstore.open(d.path, log_impl=backend)
    return d, ctx.es.EvstoreApplicationRecorder(store), store


@pytest.mark.parametrize("backend", BACKENDS)
def test_es_select_events(benchmark: Any, ctx: Ctx, backend: str) -> None:
    d, rec, store = _es_recorder(ctx, backend)
    benchmark.group = "eventsourcing select_events, long stream"
    try:
        got = benchmark(lambda: rec.select_events(d.big))
        assert len(got) == d.stream
    finally:
        if store:
            store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_es_select_notifications(benchmark: Any, ctx: Ctx, backend: str) -> None:
    d, rec, store = _es_recorder(ctx, backend)
    benchmark.group = "eventsourcing select_notifications, pages of 1,000"
    try:
        got = benchmark(lambda: page_notifications(rec))
        assert got == d.total
    finally:
        if store:
            store.close()
