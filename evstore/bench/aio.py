"""The asyncio workloads (`evstore.aio`): 1-event durable appends from 100 concurrent tasks, the
event loop's lag while they run and while a task replays the read dataset, and the replay's rate.

Each is measured beside its peers in the same run: the eventsourcing SQLite recorder driven through
`asyncio.to_thread` from the same number of tasks, and as "reference" the threaded evstore API
doing the same work (8 threads for the appends, `read_all` for the replay) or, for the lag, a
ticker on an idle loop (the machine's own noise floor).

Lag is how late a task sleeping 1 ms at a time wakes, its 99th percentile, counted in the loop
thread's CPU time: the time the loop spent running other steps past the tick's due time. That
leaves out the time the thread was preempted by other processes, which on a shared machine is
milliseconds at a time and says nothing of how long evstore holds the loop; the note gives the
wall-clock p99 and maximum too (which also count waits for the GIL held by the store's threads),
and the reference row the same figures for an idle loop: the machine's own floor.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import evstore
import evstore.aio
from evstore.bench.appends import timed_threads
from evstore.bench.context import PAYLOAD, Ctx, Workload, best, count, events_row, sqlite_recorder, stored
from evstore.bench.results import BACKEND_NAME, REF, Peers, Row, Target

TASKS = 100
# The lag row appends this many times more: a p99 needs its ticks (one per millisecond of the run) to
# number several hundred, or it is the second-worst tick (~135 ticks at the throughput row's size,
# where the one turn that starts all 100 tasks at once decides it alone).
LAG_RUNS = 5


class Ticker:
    """A task that sleeps 1 ms at a time and records how late it wakes (wall clock and CPU time)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.done = False
        self.task: asyncio.Future[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.done:
            t, c = loop.time(), time.thread_time()
            await asyncio.sleep(0.001)
            self.wall.append(max(0.0, loop.time() - t - 0.001))
            self.cpu.append(max(0.0, time.thread_time() - c - 0.001))

    async def __aenter__(self) -> Ticker:
        self.task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.done = True
        if self.task is not None:
            await self.task


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else 0.0


def lag_row(workload: str, backend: str, n: int, t: Ticker, note: str) -> Row:
    """A row of the ticker's lag p99 in CPU time, in ms; the note adds the wall clock's p99 and max."""
    extra = (f"wall-clock p99 {p99(t.wall) * 1e3:.1f} ms, max {max(t.wall, default=0) * 1e3:.1f} ms; "
             f"{len(t.wall)} ticks")
    return Row(workload, backend, n, p99(t.cpu) * 1e3, "ms", note=f"{note}; {extra}" if note else extra)


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


# -- appends ---------------------------------------------------------------------------------


async def _evstore_tasks(path: str, impl: str, n: int, ticker: bool) -> tuple[float, Ticker | None]:
    async with evstore.aio.open(path, log_impl=impl) as store:
        await store.append("warm-up", [evstore.NewEvent("Ev", PAYLOAD)])
        per_task = n // TASKS
        go = asyncio.Event()

        async def task() -> None:
            sid = uuid.uuid4()
            events = [evstore.NewEvent("Ev", PAYLOAD)]
            await go.wait()
            for v in range(per_task):
                await store.append(sid, events, expected_version=v or evstore.NO_STREAM)

        tasks = [asyncio.ensure_future(task()) for _ in range(TASKS)]
        await asyncio.sleep(0)
        t = Ticker() if ticker else None
        if t is not None:
            await t.__aenter__()
        t0 = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        dt = time.perf_counter() - t0
        if t is not None:
            await t.__aexit__()
    return dt, t


async def _sqlite_tasks(rec: Any, n: int, ticker: bool) -> tuple[float, Ticker | None]:
    per_task = n // TASKS
    go = asyncio.Event()

    async def task() -> None:
        oid = uuid.uuid4()
        batches = [[stored(oid, v)] for v in range(1, per_task + 1)]
        await go.wait()
        for b in batches:
            await asyncio.to_thread(rec.insert_events, b)

    tasks = [asyncio.ensure_future(task()) for _ in range(TASKS)]
    await asyncio.sleep(0)
    t = Ticker() if ticker else None
    if t is not None:
        await t.__aenter__()
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    dt = time.perf_counter() - t0
    if t is not None:
        await t.__aexit__()
    return dt, t


def _threads_append(ctx: Ctx, n: int, threads: int) -> float:
    path = ctx.path("append-threads.evs")
    with evstore.open(path) as store:
        store.append("warm-up", [evstore.NewEvent("Ev", PAYLOAD)])
        per_thread = n // threads

        def work(ready: Callable[[], None]) -> None:
            sid = uuid.uuid4()
            events = [evstore.NewEvent("Ev", PAYLOAD)]
            ready()
            for v in range(per_thread):
                store.append(sid, events, expected_version=v or evstore.NO_STREAM)

        dt = timed_threads(threads, work)
    shutil.rmtree(path, ignore_errors=True)
    return dt


def _w_appends(ctx: Ctx, lag: bool) -> list[Row]:
    wl = "loop_lag_appends_100tasks" if lag else "append1_fsync_100tasks"
    n = max(TASKS, ctx.sizes.appends1_threads // TASKS * TASKS) * (LAG_RUNS if lag else 1)
    rows = []
    for b in ("c", "python"):
        if ctx.on(b):
            path = ctx.path(f"aio-append-{b}.evs")
            dt, t = run(lambda: _evstore_tasks(path, b, n, lag))
            shutil.rmtree(path, ignore_errors=True)
            note = f"{TASKS} tasks, evstore.aio"
            rows.append(lag_row(wl, BACKEND_NAME[b], n, t, note) if t is not None else
                        events_row(wl, b, n, dt, f"{note}; {dt / n * 1e6:.0f} us/commit"))
    if ctx.on("sqlite"):
        rec = sqlite_recorder(ctx.path("aio-append.sqlite"), pool_size=8)
        rec.insert_events([stored(uuid.uuid4(), 1)])
        dt, t = run(lambda: _sqlite_tasks(rec, n, lag))
        rec.datastore.close()
        note = f"{TASKS} tasks, insert_events via asyncio.to_thread"
        rows.append(lag_row(wl, BACKEND_NAME["sqlite"], n, t, note) if t is not None else
                    events_row(wl, "sqlite", n, dt, note))
    if ctx.on("ref"):
        if lag:
            rows.append(lag_row(wl, REF, 0, run(_idle), "an idle loop"))
        else:
            threads = ctx.sizes.threads
            dt = _threads_append(ctx, n, threads)
            rows.append(events_row(wl, "ref", n, dt, f"evstore threaded API, {threads} threads (append1_fsync_8threads)"))
    return rows


async def _idle() -> Ticker:
    async with Ticker() as t:
        await asyncio.sleep(0.5)
    return t


def w_append_tasks(ctx: Ctx) -> list[Row]:
    return _w_appends(ctx, False)


def w_lag_appends(ctx: Ctx) -> list[Row]:
    return _w_appends(ctx, True)


# -- the replay ------------------------------------------------------------------------------


async def _replay(path: str, impl: str, batches: bool, ticker: bool) -> tuple[float, int, Ticker | None]:
    async with evstore.aio.open(path, log_impl=impl) as store:
        best_dt = float("inf")
        got = 0
        t: Ticker | None = None
        for _ in range(1 if ticker else 3):
            t = Ticker() if ticker else None
            if t is not None:
                await t.__aenter__()
            t0 = time.perf_counter()
            got = 0
            if batches:
                async for page in store.read_all().batches():
                    got += len(page)
            else:
                async for _e in store.read_all():
                    got += 1
            best_dt = min(best_dt, time.perf_counter() - t0)
            if t is not None:
                await t.__aexit__()
    return best_dt, got, t


async def _sqlite_replay(rec: Any) -> tuple[float, int, Ticker]:
    async with Ticker() as t:
        t0 = time.perf_counter()
        start, n = 1, 0
        while True:
            ns = await asyncio.to_thread(rec.select_notifications, start, 1_000)
            if not ns:
                break
            n += len(ns)
            start = ns[-1].id + 1
        dt = time.perf_counter() - t0
    return dt, n, t


def w_replay_rate(ctx: Ctx) -> list[Row]:
    wl = "read_all_async"
    rows = []
    for b in ("c", "python"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        dt, got, _ = run(lambda: _replay(d.path, b, False, False))
        assert got == d.total, (b, got, d.total)
        rows.append(events_row(wl, b, got, dt, "async for event in store.read_all()"))
        dt, got, _ = run(lambda: _replay(d.path, b, True, False))
        rows.append(events_row(wl, b, got, dt, "async for page in store.read_all().batches()"))
    if ctx.on("sqlite"):
        d = ctx.dataset("sqlite")
        dt, got, _t = run(lambda: _sqlite_replay(d.recorder))
        rows.append(events_row(wl, "sqlite", got, dt, "select_notifications via asyncio.to_thread, pages of 1,000"))
    if ctx.on("ref") and ctx.on("c"):
        d = ctx.dataset("c")
        with evstore.open(d.path) as store:
            dt, got = best(lambda: count(store.read_all()), ctx.repeat)
        rows.append(events_row(wl, "ref", got, dt, "evstore threaded read_all (the read_all row)"))
    return rows


def w_lag_replay(ctx: Ctx) -> list[Row]:
    wl = "loop_lag_replay"
    rows = []
    if ctx.on("c"):
        d = ctx.dataset("c")
        _dt, got, t = run(lambda: _replay(d.path, "c", False, True))
        assert t is not None
        rows.append(lag_row(wl, BACKEND_NAME["c"], got, t, "async for over read_all()"))
    if ctx.on("sqlite"):
        d = ctx.dataset("sqlite")
        _dt, got, t = run(lambda: _sqlite_replay(d.recorder))
        rows.append(lag_row(wl, BACKEND_NAME["sqlite"], got, t, "select_notifications via asyncio.to_thread"))
    if ctx.on("ref"):
        rows.append(lag_row(wl, REF, 0, run(_idle), "an idle loop"))
    return rows


# -- targets ---------------------------------------------------------------------------------


def _vs_ref(p: Peers) -> float | None:
    return p.value / p.ref.value if p.ref is not None and p.ref.value else None


def beats_threads_and_sqlite(k: int) -> Target:
    """At least the threaded API's rate (the reference row) and k times SQLite."""

    def check(p: Peers) -> bool | None:
        r = _vs_ref(p)
        return None if r is None or p.x_sqlite is None else r >= 1 and p.x_sqlite >= k

    def remark(p: Peers) -> str:
        r = _vs_ref(p)
        return "" if r is None else f"{r:.2f}x the 8 threads"

    return Target(f">= 8 threads and >= {k}x SQLite", check, remark)


def share_of_ref(share: float) -> Target:
    def check(p: Peers) -> bool | None:
        r = _vs_ref(p)
        return None if r is None else r >= share

    def remark(p: Peers) -> str:
        r = _vs_ref(p)
        return "" if r is None else f"{r:.0%} of threaded read_all"

    return Target(f">= {share:.0%} of threaded read_all", check, remark)


def lag_at_most(ms: float) -> Target:
    return Target(f"p99 <= {ms:g} ms (CPU time)", lambda p: p.value <= ms)


WORKLOADS = (
    Workload("append1_fsync_100tasks", w_append_tasks, beats_threads_and_sqlite(5)),
    Workload("loop_lag_appends_100tasks", w_lag_appends, lag_at_most(2)),
    Workload("read_all_async", w_replay_rate, share_of_ref(0.8)),
    Workload("loop_lag_replay", w_lag_replay, lag_at_most(2)),
)
