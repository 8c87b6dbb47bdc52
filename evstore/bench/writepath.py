"""The write path as the `eventsourcing` library's users meet it (appends through the application
recorder, from eight threads and in commits of 100), the CPU one commit costs, and loading a small
aggregate natively and through the recorder; beside the library's SQLite and in-memory recorders."""

from __future__ import annotations

import functools
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import evstore
from evstore.bench.appends import recorder_chunks
from evstore.bench.context import PAYLOAD, Ctx, Workload, best, events_row, popo_recorder, sqlite_recorder, stored
from evstore.bench.results import BACKEND_NAME, Peers, Row, Target, times_sqlite
from evstore.bench.rounds import ROUNDS, interleave


def _recorder_rows(ctx: Ctx, wl: str, n: int, per_commit: int, threads: int) -> list[Row]:
    """insert_events through each backend's recorder, the backends in interleaved rounds
    (evstore.bench.rounds)."""
    unit = per_commit * threads * ROUNDS
    n = max(1, n // unit) * unit
    runs = {b: functools.partial(_recorder_run, ctx, b, n, per_commit, threads)
            for b in ("c", "python", "sqlite", "popo") if ctx.on(b)}
    rows = []
    for b, dt in interleave(runs).items():
        rows.append(events_row(wl, b, n, dt, f"insert_events, {dt / (n // per_commit) * 1e6:.0f} us/commit"))
    return rows


def _recorder_run(ctx: Ctx, b: str, n: int, per_commit: int, threads: int) -> Iterator[float]:
    if b in ("c", "python"):
        path = ctx.path(f"es-append-{b}.evs")
        try:
            with evstore.open(path, log_impl=b) as store:
                yield from recorder_chunks(ctx.es.EvstoreApplicationRecorder(store), n, per_commit, threads)
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    rec = sqlite_recorder(ctx.path("es-append.sqlite"), pool_size=max(5, threads + 1)) if b == "sqlite" \
        else popo_recorder()
    try:
        yield from recorder_chunks(rec, n, per_commit, threads)
    finally:
        if b == "sqlite":
            rec.datastore.close()


def w_es_append1_threads(ctx: Ctx) -> list[Row]:
    return _recorder_rows(ctx, "es_append1_fsync_8threads", ctx.sizes.appends1_threads, 1, ctx.sizes.threads)


def w_es_append100(ctx: Ctx) -> list[Row]:
    return _recorder_rows(ctx, "es_append100_fsync", ctx.sizes.appends100, 100, 1)


def w_commit_cpu(ctx: Ctx) -> list[Row]:
    """Process time (every thread: the appender's and the indexer's) per commit of 100 events with
    durability="os", over many commits, the store's close (the last index write) included."""
    wl = "commit_cpu_100"
    commits = max(50, ctx.sizes.appends100 // 100 * 5)
    rows = []
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b):
            continue
        if b in ("c", "python"):
            path = ctx.path(f"cpu-{b}.evs")
            store = evstore.open(path, durability="os", log_impl=b)
            events = [evstore.NewEvent("Ev", PAYLOAD) for _ in range(100)]
            store.append("warm-up", events)
            sid = uuid.uuid4()
            t = time.process_time()
            for i in range(commits):
                store.append(sid, events, expected_version=i * 100 if i else evstore.NO_STREAM)
            store.close()
            cpu = time.process_time() - t
            shutil.rmtree(path, ignore_errors=True)
            note = "append of 100 NewEvents"
        else:
            rec = sqlite_recorder(ctx.path("cpu.sqlite")) if b == "sqlite" else popo_recorder()
            oid = uuid.uuid4()
            batches = [[stored(oid, v) for v in range(i * 100 + 1, i * 100 + 101)] for i in range(commits)]
            t = time.process_time()
            for batch in batches:
                rec.insert_events(batch)
            cpu = time.process_time() - t
            if b == "sqlite":
                rec.datastore.close()
            note = "insert_events of 100 StoredEvents" + (" (synchronous=FULL)" if b == "sqlite" else "")
        rows.append(Row(wl, BACKEND_NAME[b], commits * 100, cpu / commits * 1e6, "us/commit", note=note,
                        seconds=cpu))
    return rows


def _load_rows(ctx: Ctx, wl: str, native: bool) -> list[Row]:
    """Loading 10-event aggregates one after another: `read_stream` (native) or the recorder's
    `select_events` (also for the library's recorders), each the first time it is read."""
    n_aggs = max(200, ctx.sizes.appends1)
    rows = []
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b) or (native and b == "popo"):
            continue
        ids = [uuid.uuid4() for _ in range(n_aggs)]
        batches = [[stored(oid, v) for v in range(1, 11)] for oid in ids]
        store: Any = None
        if b in ("c", "python"):
            path = ctx.path(f"load-{b}.evs")
            store = evstore.open(path, durability="os", log_impl=b)
            rec = ctx.es.EvstoreApplicationRecorder(store)
        else:
            rec = sqlite_recorder(ctx.path("load.sqlite")) if b == "sqlite" else popo_recorder()
        for batch in batches:
            rec.insert_events(batch)
        if store is not None:
            store.sync()
        if native and store is not None:
            read = store.read_stream

            def go() -> int:
                return sum(len(read(oid)) for oid in ids)
            what = "read_stream"
        else:
            sel = rec.select_events

            def go() -> int:
                return sum(len(sel(oid)) for oid in ids)
            what = "select_events"
        # The row is the first load of each aggregate after it was written (what a cache of this
        # process cannot have seen); loading them all again, best of `repeat`, is in the note.
        t0 = time.perf_counter()
        got = go()
        dt = time.perf_counter() - t0
        again, got2 = best(go, ctx.repeat)
        assert got == got2 == 10 * n_aggs, (b, got, got2)
        rows.append(events_row(wl, b, got, dt, f"{what}, {dt / n_aggs * 1e6:.1f} us per aggregate the first "
                               f"time, {again / n_aggs * 1e6:.1f} us again"))
        if store is not None:
            store.close()
        elif b == "sqlite":
            rec.datastore.close()
    return rows


def w_load10(ctx: Ctx) -> list[Row]:
    return _load_rows(ctx, "aggregate_load_10", True)


def w_es_load10(ctx: Ctx) -> list[Row]:
    return _load_rows(ctx, "es_aggregate_load_10", False)


def _cpu_under(us: float) -> Target:
    def check(p: Peers) -> bool:
        return p.value <= us

    return Target(f"<= {us:.0f} us/commit", check)


WORKLOADS = (
    Workload("es_append1_fsync_8threads", w_es_append1_threads, times_sqlite(4, "(through the recorder)")),
    Workload("es_append100_fsync", w_es_append100, times_sqlite(2.5, "(through the recorder)")),
    Workload("commit_cpu_100", w_commit_cpu, _cpu_under(40)),
    Workload("aggregate_load_10", w_load10, times_sqlite(15, "(SQLite: select_events)")),
    Workload("es_aggregate_load_10", w_es_load10, times_sqlite(6)),
)
