"""The native read workloads over the shared datasets: one long stream, many streams of 100, the
whole log with and without a type filter; against the recorders' select_events /
select_notifications, an LMDB cursor scan and a memcpy."""

from __future__ import annotations

import evstore
from evstore.bench.context import TOPICS, Ctx, Workload, best, count, events_row, log_bytes, page_notifications
from evstore.bench.references import lmdb_scan, memcpy
from evstore.bench.results import Row, at_least, times_sqlite


def w_read_stream(ctx: Ctx) -> list[Row]:
    wl = "read_stream_100k"
    rows = []
    rec_bytes = 0
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        if b in ("c", "python"):
            with evstore.open(d.path, log_impl=b) as store:
                dt, got = best(lambda: store.read_stream(d.big), ctx.repeat)
                rec_bytes = rec_bytes or log_bytes(d.path) // d.total
            note = "list of RecordedEvent"
        else:
            dt, got = best(lambda: d.recorder.select_events(d.big), ctx.repeat)
            note = "select_events (StoredEvent)"
        assert len(got) == d.stream, (b, len(got), d.stream)
        extra = f"smaller: {d.stream:,} events" if d.stream != ctx.sizes.stream else ""
        rows.append(events_row(wl, b, d.stream, dt, "; ".join(x for x in (note, extra) if x)))
    if ctx.on("ref"):
        n = ctx.sizes.stream
        rows.append(events_row(wl, "ref", n, lmdb_scan(ctx, n), "LMDB cursor scan, 200 B values"))
        if rec_bytes:
            rows.append(events_row(wl, "ref", n, memcpy(ctx, n * rec_bytes), f"memcpy of {rec_bytes} B/event"))
    return rows


def w_read_streams(ctx: Ctx) -> list[Row]:
    wl = "read_1000_streams"
    rows = []
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        ids = d.small[: ctx.sizes.streams]
        n = len(ids) * 100
        if b in ("c", "python"):
            with evstore.open(d.path, log_impl=b) as store:
                rs = store.read_stream

                def go() -> int:
                    return sum(len(rs(i)) for i in ids)

                dt, got = best(go, ctx.repeat)
            note = f"{len(ids)} x read_stream"
        else:
            se = d.recorder.select_events

            def go() -> int:
                return sum(len(se(i)) for i in ids)

            dt, got = best(go, ctx.repeat)
            note = f"{len(ids)} x select_events"
        assert got == n
        rows.append(events_row(wl, b, n, dt, note))
    if ctx.on("ref"):
        n = ctx.sizes.streams * 100
        rows.append(events_row(wl, "ref", n, lmdb_scan(ctx, n), "LMDB cursor scan, 200 B values"))
    return rows


def _w_read_all(ctx: Ctx, filtered: bool) -> list[Row]:
    wl = "read_all_type_filter" if filtered else "read_all"
    rows = []
    rec_bytes = 0
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        expect = d.filtered if filtered else d.total
        if b in ("c", "python"):
            with evstore.open(d.path, log_impl=b) as store:
                types = [TOPICS[0]] if filtered else None
                dt, got = best(lambda: count(store.read_all(types=types)), ctx.repeat)
                rec_bytes = rec_bytes or log_bytes(d.path) // d.total
            note = "RecordedEvent stream"
        else:
            topics = (TOPICS[0],) if filtered else ()
            dt, got = best(lambda: page_notifications(d.recorder, topics), ctx.repeat)
            note = "select_notifications, pages of 1,000"
        assert got == expect, (b, got, expect)
        sel = f"{expect:,} of {d.total:,} delivered" if filtered else (
            f"smaller: {d.total:,} events" if d.total != ctx.sizes.total else "")
        rows.append(events_row(wl, b, got, dt, "; ".join(x for x in (note, sel) if x)))
    if ctx.on("ref") and rec_bytes and not filtered:
        n = ctx.sizes.total
        rows.append(events_row(wl, "ref", n, memcpy(ctx, n * rec_bytes), f"memcpy of {rec_bytes} B/event"))
    return rows


def w_read_all(ctx: Ctx) -> list[Row]:
    return _w_read_all(ctx, False)


def w_read_all_filtered(ctx: Ctx) -> list[Row]:
    return _w_read_all(ctx, True)


WORKLOADS = (
    Workload("read_stream_100k", w_read_stream, times_sqlite(5, "select_events")),
    Workload("read_1000_streams", w_read_streams),
    Workload("read_all", w_read_all, at_least(2_000_000, "events/s")),
    Workload("read_all_type_filter", w_read_all_filtered),
)
