"""The append workloads: one event or 100 per commit, fsync or durability="os", one thread or eight,
and rejected appends; against the recorders' insert_events, pwrite + fdatasync into a preallocated
file (the device's best) and an appending write (+ fdatasync)."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import evstore
from evstore.bench.context import (PAYLOAD, Ctx, Workload, best, events_row, log_bytes, popo_recorder,
                                   sqlite_recorder, stored)
from evstore.bench.references import raw_pwrite, raw_write
from evstore.bench.results import Peers, Row, Target, times_sqlite


def _ev() -> list[evstore.NewEvent]:
    return [evstore.NewEvent("Ev", PAYLOAD)]


def timed_threads(threads: int, work: Callable[[Callable[[], None]], None]) -> float:
    """Seconds for `threads` threads to run `work(ready)` from the moment all have called `ready()`
    (what a worker builds before it is not timed); the first error of any thread is raised."""
    started: list[float] = []
    # The barrier's action runs in the last party to arrive, before any is released: the clock
    # starts at the release itself, so neither the workers' set-up nor our own scheduling counts.
    barrier = threading.Barrier(threads + 1, action=lambda: started.append(time.perf_counter()))
    errors: list[BaseException] = []

    def ready() -> None:
        barrier.wait()

    def run() -> None:
        try:
            work(ready)
        except BaseException as e:  # reported below
            errors.append(e)
            barrier.abort()  # nobody waits for a worker that failed before it was ready

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in ts:
        t.join()
    dt = time.perf_counter() - started[0] if started else 0.0
    if errors:
        raise errors[0]
    return dt


def _append_evstore(ctx: Ctx, impl: str, n: int, per_commit: int, threads: int,
                    durability: str) -> tuple[float, int]:
    """(seconds, log bytes written) for n events in commits of per_commit, spread over threads."""
    path = ctx.path(f"append-{impl}.evs")
    with evstore.open(path, durability=durability, log_impl=impl) as store:
        events = [evstore.NewEvent("Ev", PAYLOAD) for _ in range(per_commit)]
        store.append("warm-up", events)
        before = log_bytes(path)
        per_thread = n // per_commit // threads

        def work(ready: Callable[[], None]) -> None:
            sid = uuid.uuid4()
            v = 0
            ready()
            for _ in range(per_thread):
                store.append(sid, events, expected_version=v if v else evstore.NO_STREAM)
                v += per_commit

        dt = timed_threads(threads, work)
        written = log_bytes(path) - before
    shutil.rmtree(path, ignore_errors=True)
    return dt, written


def _append_recorder(ctx: Ctx, backend: str, n: int, per_commit: int, threads: int) -> float:
    if backend == "sqlite":
        rec = sqlite_recorder(ctx.path("append.sqlite"), pool_size=max(5, threads + 1))
    else:
        rec = popo_recorder()
    dt = recorder_appends(rec, n, per_commit, threads)
    if backend == "sqlite":
        rec.datastore.close()
    return dt


def recorder_appends(rec: Any, n: int, per_commit: int, threads: int) -> float:
    """Seconds for `threads` threads to insert n events through an eventsourcing recorder's
    insert_events, per_commit StoredEvents a call, each thread to an aggregate of its own."""
    rec.insert_events([stored(uuid.uuid4(), v) for v in range(1, per_commit + 1)])
    per_thread = n // per_commit // threads

    def work(ready: Callable[[], None]) -> None:
        oid = uuid.uuid4()
        batches = [[stored(oid, v) for v in range(i * per_commit + 1, (i + 1) * per_commit + 1)]
                   for i in range(per_thread)]
        ready()
        for b in batches:
            rec.insert_events(b)

    return timed_threads(threads, work)


def _w_append(ctx: Ctx, workload: str, n: int, per_commit: int, threads: int, durability: str) -> list[Row]:
    rows = []
    n = (n // (per_commit * threads)) * per_commit * threads
    commit_bytes = 0
    for b in ("c", "python"):
        if ctx.on(b):
            dt, written = _append_evstore(ctx, b, n, per_commit, threads, durability)
            commit_bytes = commit_bytes or written // max(1, n // per_commit)
            rows.append(events_row(workload, b, n, dt, f"{dt / (n // per_commit) * 1e6:.0f} us/commit"))
    for b in ("sqlite", "popo"):
        if ctx.on(b):
            dt = _append_recorder(ctx, b, n, per_commit, threads)
            rows.append(events_row(workload, b, n, dt, "insert_events" + (" (no durability)" if b == "popo" else "")))
    if ctx.on("ref") and threads == 1 and commit_bytes:
        sync = durability == "fsync"
        if sync:  # first: the reference the targets are judged against
            dt = raw_pwrite(ctx, n // per_commit, commit_bytes)
            rows.append(events_row(workload, "ref", n, dt, f"pwrite+fdatasync of the same {commit_bytes} B per "
                                   "commit into a preallocated file"))
        dt = raw_write(ctx, n // per_commit, commit_bytes, sync)
        what = "write+fdatasync" if sync else "write, no sync"
        rows.append(events_row(workload, "ref", n, dt, f"{what} of the same {commit_bytes} B per commit, appending"))
    return rows


def w_append1_fsync(ctx: Ctx) -> list[Row]:
    return _w_append(ctx, "append1_fsync", ctx.sizes.appends1, 1, 1, "fsync")


def w_append1_fsync_threads(ctx: Ctx) -> list[Row]:
    return _w_append(ctx, "append1_fsync_8threads", ctx.sizes.appends1_threads, 1, ctx.sizes.threads, "fsync")


def w_append100_fsync(ctx: Ctx) -> list[Row]:
    return _w_append(ctx, "append100_fsync", ctx.sizes.appends100, 100, 1, "fsync")


def w_append1_os(ctx: Ctx) -> list[Row]:
    return _w_append(ctx, "append1_os", ctx.sizes.appends_os, 1, 1, "os")


def w_conflict(ctx: Ctx) -> list[Row]:
    n = ctx.sizes.conflicts
    wl = "append_conflict"
    rows = []
    for b in ("c", "python"):
        if not ctx.on(b):
            continue
        path = ctx.path(f"conflict-{b}.evs")
        with evstore.open(path, log_impl=b) as store:
            sid = uuid.uuid4()
            store.append(sid, _ev(), expected_version=evstore.NO_STREAM)
            evs = _ev()

            def go() -> None:
                for _ in range(n):
                    try:
                        store.append(sid, evs, expected_version=7)
                    except evstore.WrongExpectedVersion:
                        pass

            dt, _ = best(go, ctx.repeat)
        rows.append(events_row(wl, b, n, dt, "WrongExpectedVersion"))
    for b in ("sqlite", "popo"):
        if not ctx.on(b):
            continue
        from eventsourcing.persistence import IntegrityError

        rec = sqlite_recorder(ctx.path("conflict.sqlite")) if b == "sqlite" else popo_recorder()
        oid = uuid.uuid4()
        rec.insert_events([stored(oid, 1)])
        dup = [stored(oid, 1)]

        def go2() -> None:
            for _ in range(n):
                try:
                    rec.insert_events(dup)
                except IntegrityError:
                    pass

        dt, _ = best(go2, ctx.repeat)
        if b == "sqlite":
            rec.datastore.close()
        rows.append(events_row(wl, b, n, dt, "IntegrityError"))
    return rows


# -- targets -------------------------------------------------------------------------------------


def share_of_device(k: float, share: float) -> Target:
    """At least k times SQLite and `share` of the pwrite+fdatasync reference (into a preallocated
    file); the note says the share."""

    def check(p: Peers) -> bool:
        ok_ref = p.ref is not None and p.ref.value is not None and p.value >= share * p.ref.value
        return p.x_sqlite is not None and p.x_sqlite >= k and ok_ref

    def remark(p: Peers) -> str:
        if p.ref is None or not p.ref.value:
            return "no reference"
        return f"{p.value / p.ref.value:.2f}x pwrite+fdatasync"

    return Target(f">= {share:.0%} of pwrite+fdatasync and >= {k}x SQLite", check, remark)


def times_in_memory(k: float) -> Target:
    """At least k times the in-memory recorder (not judged without it); the note says the ratio."""

    def check(p: Peers) -> bool | None:
        return p.value >= k * p.popo.value if p.popo is not None and p.popo.value else None

    def remark(p: Peers) -> str:
        return f"{p.value / p.popo.value:.2f}x in-memory" if p.popo is not None and p.popo.value else ""

    return Target(f">= {k}x in-memory", check, remark)


WORKLOADS = (
    Workload("append1_fsync", w_append1_fsync, share_of_device(1.2, 0.9)),
    Workload("append1_fsync_8threads", w_append1_fsync_threads, times_sqlite(5, "(group commit)")),
    Workload("append100_fsync", w_append100_fsync, share_of_device(3, 0.8)),
    Workload("append1_os", w_append1_os, times_in_memory(0.5)),
    Workload("append_conflict", w_conflict, times_sqlite(5)),
)
