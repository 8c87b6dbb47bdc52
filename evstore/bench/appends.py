"""The append workloads: one event or 100 per commit, fsync or durability="os", one thread or eight,
and rejected appends; against the recorders' insert_events, pwrite + fdatasync into a preallocated
file (the device's best) and an appending write (+ fdatasync)."""

from __future__ import annotations

import shutil
import threading
import functools
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import evstore
from evstore.bench.context import (PAYLOAD, Ctx, Workload, best, events_row, log_bytes, popo_recorder,
                                   sqlite_recorder, stored)
from evstore.bench.references import raw_pwrite, raw_pwrite_zeroed, raw_write
from evstore.bench.results import Peers, Row, Target, times_sqlite
from evstore.bench.rounds import ROUNDS, Chunks, interleave, share


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


def _evstore_chunks(ctx: Ctx, impl: str, n: int, per_commit: int, threads: int, durability: str,
                    written: list[int]) -> Iterator[float]:
    """Chunks (see evstore.bench.rounds) of n events in commits of per_commit from `threads` threads,
    a stream per thread and chunk; after each chunk, `written` holds [log bytes, commits] of the chunks so far."""
    path = ctx.path(f"append-{impl}.evs")
    try:
        with evstore.open(path, durability=durability, log_impl=impl) as store:
            events = [evstore.NewEvent("Ev", PAYLOAD) for _ in range(per_commit)]
            store.append("warm-up", events)
            before = log_bytes(path)
            done = 0
            for part in share(n // per_commit // threads):

                def work(ready: Callable[[], None], part: int = part) -> None:
                    sid = uuid.uuid4()
                    v = 0
                    ready()
                    for _ in range(part):
                        store.append(sid, events, expected_version=v if v else evstore.NO_STREAM)
                        v += per_commit

                dt = timed_threads(threads, work)
                done += part * threads
                written[:] = [log_bytes(path) - before, done]
                yield dt
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _recorder_chunks(ctx: Ctx, backend: str, n: int, per_commit: int, threads: int) -> Iterator[float]:
    if backend == "sqlite":
        rec = sqlite_recorder(ctx.path("append.sqlite"), pool_size=max(5, threads + 1))
    else:
        rec = popo_recorder()
    try:
        yield from recorder_chunks(rec, n, per_commit, threads)
    finally:
        if backend == "sqlite":
            rec.datastore.close()


def recorder_chunks(rec: Any, n: int, per_commit: int, threads: int) -> Iterator[float]:
    """Chunks (see evstore.bench.rounds) of `threads` threads inserting n events in all through an
    eventsourcing recorder's insert_events, per_commit StoredEvents a call, each thread to an
    aggregate of its own per chunk (its batches built before the clock starts)."""
    rec.insert_events([stored(uuid.uuid4(), v) for v in range(1, per_commit + 1)])
    for part in share(n // per_commit // threads):

        def work(ready: Callable[[], None], part: int = part) -> None:
            oid = uuid.uuid4()
            batches = [[stored(oid, v) for v in range(i * per_commit + 1, (i + 1) * per_commit + 1)]
                       for i in range(part)]
            ready()
            for b in batches:
                rec.insert_events(b)

        yield timed_threads(threads, work)


def _w_append(ctx: Ctx, workload: str, n: int, per_commit: int, threads: int, durability: str) -> list[Row]:
    """The backends in interleaved rounds (evstore.bench.rounds): evstore's logs, the recorders and,
    with one thread, the references (of the bytes per commit evstore's first chunk wrote)."""
    unit = per_commit * threads * ROUNDS
    n = max(1, n // unit) * unit
    commits = n // per_commit
    written: list[int] = []
    sync = durability == "fsync"
    runs: dict[str, Chunks] = {}
    notes: dict[str, str] = {}
    for b in ("c", "python"):
        if ctx.on(b):
            runs[b] = functools.partial(_evstore_chunks, ctx, b, n, per_commit, threads, durability, written)
    for b in ("sqlite", "popo"):
        if ctx.on(b):
            runs[b] = functools.partial(_recorder_chunks, ctx, b, n, per_commit, threads)
            notes[b] = "insert_events" + (" (no durability)" if b == "popo" else "")
    refs = ctx.on("ref") and threads == 1 and bool(runs.keys() & {"c", "python"})
    if refs:
        def commit_bytes() -> int:  # an evstore run comes first in the first round
            return max(1, round(written[0] / written[1]))

        if sync:  # the references the targets are judged against (the faster of the two)
            runs["ref-pwrite"] = lambda: _ref_chunks(lambda k: raw_pwrite(ctx, k, commit_bytes()), commits)
            runs["ref-zeroed"] = lambda: _ref_chunks(lambda k: raw_pwrite_zeroed(ctx, k, commit_bytes()), commits)
        runs["ref-write"] = lambda: _ref_chunks(lambda k: raw_write(ctx, k, commit_bytes(), sync), commits)
    totals = interleave(runs)
    rows = []
    for b, dt in totals.items():
        if b in ("c", "python"):
            rows.append(events_row(workload, b, n, dt, f"{dt / commits * 1e6:.0f} us/commit"))
        elif b in notes:
            rows.append(events_row(workload, b, n, dt, notes[b]))
    if refs:
        size = commit_bytes()
        if sync:  # the faster first: the row the targets are judged against
            prealloc = [
                (totals["ref-pwrite"], f"pwrite+fdatasync of the same {size} B per commit into a preallocated "
                 "(fallocated) file"),
                (totals["ref-zeroed"], f"pwrite+fdatasync of the same {size} B per commit into preallocated space "
                 "zeroed ahead by a second thread (timed too)")]
            for dt, note in sorted(prealloc, key=lambda r: r[0]):
                rows.append(events_row(workload, "ref", n, dt, note))
        what = "write+fdatasync" if sync else "write, no sync"
        rows.append(events_row(workload, "ref", n, totals["ref-write"],
                               f"{what} of the same {size} B per commit, appending"))
    return rows


def _ref_chunks(run: Callable[[int], float], commits: int) -> Iterator[float]:
    for part in share(commits):
        yield run(part)


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
