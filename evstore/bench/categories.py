"""Consumption at scale: a read by category, a consumer group, and `copy --follow` into PostgreSQL.

The category dataset: `Sizes.total` events (1,000,000 at scale 1) in streams `cat<k>-<n>` of 100
events, ten categories, written in commits of 10 events that go round the streams so that every
category is spread over the whole log. The category read returns one category in ten; beside it, on
the same store, `read_all` (the per-event rate a category read is judged against) and the SQLite
recorder's `select_notifications`, paged, with the same selection done by the caller.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import evstore
from evstore.bench.context import PAYLOAD, TOPICS, Ctx, Workload, best, count, events_row, subprocess_env
from evstore.bench.results import BACKEND_NAME, Peers, Row, Target

CATEGORIES = 10
STREAM = 100  # events per stream
COMMIT = 10  # events per commit


@dataclass
class CategoryData:
    path: str
    total: int
    streams: int
    sqlite: str = ""


def _streams(total: int) -> int:
    return max(CATEGORIES, total // STREAM)


def build(ctx: Ctx, name: str, categories: int = CATEGORIES) -> CategoryData:
    """The category dataset (see the module docstring), in a store of its own; with `categories=1`
    every stream is of category `cat0`."""
    total = ctx.sizes.total
    n = _streams(total)
    path = ctx.path(name)
    ctx.say(f"building the category dataset ({n * STREAM:,} events)")
    with evstore.open(path, durability="os") as store:
        ev = [evstore.NewEvent(TOPICS[i % 4], PAYLOAD) for i in range(COMMIT)]
        for v0 in range(0, STREAM, COMMIT):
            for i in range(n):
                store.append(f"cat{i % categories}-{i}", ev)
    return CategoryData(path, n * STREAM, n)


def _sqlite(ctx: Ctx, data: CategoryData) -> str:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    path = ctx.path("category.sqlite")
    ds = SQLiteDatastore(path, pool_size=2, originator_id_type="text")
    rec = SQLiteApplicationRecorder(ds)
    rec.create_table()
    for v0 in range(1, STREAM + 1, COMMIT):
        for i in range(data.streams):
            oid = f"cat{i % CATEGORIES}-{i}"
            rec.insert_events([StoredEvent(originator_id=oid, originator_version=v,  # keywords: 10 takes only these
                                           topic=TOPICS[(v - 1) % 4], state=PAYLOAD) for v in range(v0, v0 + COMMIT)])
    ds.close()
    return path


def w_read_category(ctx: Ctx) -> list[Row]:
    wl = "read_category"
    rows: list[Row] = []
    data = build(ctx, "categories.evs")
    want = data.total // CATEGORIES
    if ctx.on("c"):
        with evstore.open(data.path, log_impl="c") as store:
            # the two reads alternate, so that both see the same machine (its load wanders)
            cat_dt = all_dt = float("inf")
            for _ in range(max(ctx.repeat, 3)):
                dt, got = best(lambda: count(store.read_all(category="cat0")), 1)
                assert got == want, (got, want)
                cat_dt = min(cat_dt, dt)
                dt, n_all = best(lambda: count(store.read_all()), 1)
                all_dt = min(all_dt, dt)
            rows.append(events_row(wl, "c", want, cat_dt, f"read_all(category=...): {want:,} of {data.total:,}"))
            rows.append(events_row(wl, "ref", n_all, all_dt, "read_all of the same store, per event"))
    if ctx.on("sqlite"):
        path = _sqlite(ctx, data)
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        ds = SQLiteDatastore(path, pool_size=2, originator_id_type="text")
        rec = SQLiteApplicationRecorder(ds)

        def go() -> int:
            start, n = 1, 0
            while True:
                page = rec.select_notifications(start, 1_000)
                if not page:
                    return n
                n += sum(1 for x in page if str(x.originator_id).startswith("cat0-"))
                start = page[-1].id + 1

        dt, got = best(go, ctx.repeat)
        ds.close()
        assert got == want, (got, want)
        rows.append(events_row(wl, "sqlite", got, dt, "select_notifications in pages of 1,000, the caller "
                               "keeping cat0-*"))
    return rows


def _run_consumers(path: str, size: int) -> tuple[float, int]:
    """(seconds, events handled) of `size` member processes (0: one single consumer) run together."""
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "evstore.bench.group_member", path, "cat0", str(m), str(size)],
                              stdout=subprocess.PIPE, env=subprocess_env(), text=True) for m in range(max(size, 1))]
    handled = 0
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a benchmark consumer failed (exit {p.returncode})")
        handled += int(out.split()[-1])
    return time.perf_counter() - t, handled


def w_consumer_group(ctx: Ctx) -> list[Row]:
    """A group of 4 member processes against one consumer process, a no-op handler, over the whole
    category dataset in one category; each run starts from nothing (new member stores)."""
    wl = "consumer_group_4"
    rows: list[Row] = []
    if not ctx.on("c"):
        return rows
    data = build(ctx, "group.evs", categories=1)
    groups_dir = os.path.join(data.path, "consumers")

    def run(size: int) -> Callable[[], int]:
        def go() -> int:
            shutil.rmtree(groups_dir, ignore_errors=True)
            dt, n = _run_consumers(data.path, size)
            times.append(dt)
            return n
        return go

    times: list[float] = []
    best(run(0), ctx.repeat)
    one = min(times)
    times.clear()
    best(run(4), ctx.repeat)
    four = min(times)
    rows.append(events_row(wl, "c", data.total, four, "4 member processes, no-op handler, checkpoint every "
                           "100,000, process start included"))
    rows.append(events_row(wl, "ref", data.total, one, "1 consumer process, the same"))
    return rows


def _group_target(p: Peers) -> bool | None:
    return None if p.ref is None or not p.ref.value else p.value >= 2 * p.ref.value


def _group_remark(p: Peers) -> str:
    return "" if p.ref is None or not p.ref.value else f"{p.value / p.ref.value:.2f}x one consumer; {os.cpu_count()} CPUs"


def w_copy_follow(ctx: Ctx) -> list[Row]:
    """`evstore copy --to-module eventsourcing.postgres`, one-shot over a filled store, and `--follow`
    (a process) beside a writer appending the same number of events in commits of 100: events/s
    from the writer's start until the follower's position is the head."""
    wl = "copy_follow_postgres"
    if not ctx.on("c"):
        return []
    from evstore.bench import pgserver
    from evstore.migrate import copy_to_module, followers

    n = max(5_000, ctx.sizes.total // 10)
    if pgserver.server_bin() is None:
        return [Row(wl, BACKEND_NAME["c"], n, None, "events/s", note="skipped: no PostgreSQL server binaries")]
    ev = [evstore.NewEvent(TOPICS[0], PAYLOAD)] * 100
    rows: list[Row] = []
    with pgserver.server() as pg:
        one = ctx.path("copy-once.evs")
        with evstore.open(one, durability="os") as store:
            for i in range(n // 100):
                store.append(f"cat{i % CATEGORIES}-{i}", ev)
        t = time.perf_counter()
        copied, _last = copy_to_module(one, "eventsourcing.postgres", env={**os.environ, **pg}, batch=1000,
                                       application="BenchOnce")
        dt_once = time.perf_counter() - t
        path = ctx.path("copy-follow.evs")
        with evstore.open(path, durability="os") as store:
            store.append("cat0-start", [ev[0]])
            p = subprocess.Popen([sys.executable, "-m", "evstore", "copy", path, "--to-module", "eventsourcing.postgres",
                                  "--follow", "--batch", "1000", "--application", "BenchFollow"],
                                 env={**subprocess_env(), **pg}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
            try:
                deadline = time.monotonic() + 120
                while not followers(path) and time.monotonic() < deadline:
                    time.sleep(0.02)  # caught up with the first event
                t = time.perf_counter()
                for i in range(n // 100):
                    store.append(f"cat{i % CATEGORIES}-{i}", ev)
                dt_write = time.perf_counter() - t
                head = store.head()
                while time.monotonic() < deadline:
                    f = followers(path)
                    if f and int(f[0]["position"]) >= head:  # type: ignore[call-overload]
                        break
                    time.sleep(0.005)
                dt_follow = time.perf_counter() - t
            finally:
                p.terminate()
                p.communicate(timeout=60)
    rows.append(events_row(wl, "c", n - n % 100, dt_follow, f"--follow beside a writer (the writer alone: "
                           f"{(n - n % 100) / dt_write:,.0f} events/s), until lag 0"))
    rows.append(events_row(wl, "ref", copied, dt_once, "one-shot copy of a filled store, batches of 1,000"))
    return rows


def _category_target(p: Peers) -> bool | None:
    if p.ref is None or p.ref.value is None or p.x_sqlite is None:
        return None
    return p.value >= 0.8 * p.ref.value and p.x_sqlite >= 5


def _category_remark(p: Peers) -> str:
    if p.ref is None or not p.ref.value:
        return ""
    return f"{p.value / p.ref.value:.0%} of read_all's rate"


WORKLOADS = (
    Workload("read_category", w_read_category,
             Target(">= 80% of read_all per event and >= 5x SQLite", _category_target, _category_remark)),
    Workload("consumer_group_4", w_consumer_group, Target(">= 2x one consumer", _group_target, _group_remark)),
    Workload("copy_follow_postgres", w_copy_follow),
)

__all__ = ["WORKLOADS", "build"]
