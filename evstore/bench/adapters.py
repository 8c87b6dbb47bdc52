"""The eventsourcing-library workloads: the recorders' select_events / select_notifications on
evstore (`evstore.eventsourcing`) and on the library's own recorders, and an application's
repository.get of one long aggregate, with and without a snapshot."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import evstore
from evstore.bench.context import Ctx, Dataset, Workload, best, events_row, page_notifications
from evstore.bench.results import Peers, Row, Target, times_sqlite


def _es_rows(ctx: Ctx, wl: str, fn_rec: Callable[[Any, Dataset], int], what: str) -> list[Row]:
    """One row per backend of `fn_rec(recorder, dataset)` (how many events it read), timed."""
    rows = []
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        if b in ("c", "python"):
            with evstore.open(d.path, log_impl=b) as store:
                rec = ctx.es.EvstoreApplicationRecorder(store)
                dt, got = best(lambda: fn_rec(rec, d), ctx.repeat)
        else:
            dt, got = best(lambda: fn_rec(d.recorder, d), ctx.repeat)
        rows.append(events_row(wl, b, got, dt, what + ("" if got in (ctx.sizes.stream, ctx.sizes.total)
                                                       else f"; smaller: {got:,} events")))
    return rows


def w_es_select_events(ctx: Ctx) -> list[Row]:
    def rec(r: Any, d: Dataset) -> int:
        return len(r.select_events(d.big))

    return _es_rows(ctx, "es_select_events", rec, "select_events of the long stream")


def w_es_select_notifications(ctx: Ctx) -> list[Row]:
    def rec(r: Any, d: Dataset) -> int:
        return page_notifications(r)

    return _es_rows(ctx, "es_select_notifications", rec, "pages of 1,000")


# -- repository.get -------------------------------------------------------------------------------


BenchAggregate: Any = None  # the aggregate repository.get rebuilds (None without eventsourcing)
BenchApplication: Any = None  # its application class
try:  # eventsourcing is an optional dependency: the application workloads need it
    from evstore.eventsourcing import compat as _compat
except ImportError:  # pragma: no cover
    _compat = None  # type: ignore[assignment]
# eventsourcing 10's aggregates are made of decisions, and its repository.get takes the class.
ES10 = _compat is not None and _compat.ES10

if _compat is not None:
    if ES10:
        from eventsourcing.domain import triggers as _triggers
        from eventsourcing.msgspec import (  # type: ignore[import-not-found,unused-ignore]
            Aggregate as _Aggregate10,
            AggregatesApplication as _Application10,
            AggregateSnapshot as _Snapshot10,
            AggregateState as _State10,
            Decision as _Decision10,
        )

        class _BenchState(_State10):  # type: ignore[misc,unused-ignore]
            count: int
            note: str

        class _BenchAggregate10(_Aggregate10):  # type: ignore[misc,unused-ignore]
            """The aggregate that repository.get rebuilds (eventsourcing 10)."""

            class Snapshot(_Snapshot10):  # type: ignore[misc,unused-ignore]
                state: _BenchState

            class Started(_Decision10):  # type: ignore[misc,unused-ignore]
                pass

            class Noted(_Decision10):  # type: ignore[misc,unused-ignore]
                note: str

            @_triggers(Started)  # type: ignore[untyped-decorator,unused-ignore]
            def __init__(self) -> None:
                self.count = 0
                self.note = ""

            @_triggers(Noted)  # type: ignore[untyped-decorator,unused-ignore]
            def add(self, note: str) -> None:
                self.count += 1
                self.note = note

        BenchAggregate, BenchApplication = _BenchAggregate10, _Application10
    else:
        from eventsourcing.application import Application as _Application95  # type: ignore[attr-defined,unused-ignore]
        from eventsourcing.domain import Aggregate as _Aggregate95
        from eventsourcing.domain import event as _event

        class _BenchAggregate95(_Aggregate95):  # type: ignore[type-arg,unused-ignore]
            """The aggregate that repository.get rebuilds (eventsourcing 9.5)."""

            @_event("Started")
            def __init__(self) -> None:
                self.count = 0
                self.note = ""

            @_event("Noted")
            def add(self, note: str) -> None:
                self.count += 1
                self.note = note

        BenchAggregate, BenchApplication = _BenchAggregate95, _Application95


def w_repository_get(ctx: Ctx) -> list[Row]:
    """repository.get of an aggregate of `aggregate` events (rows "repository_get"), then of the same
    aggregate after a snapshot (rows "repository_get_snapshot")."""
    cls = BenchAggregate
    by_class = (cls,) if ES10 else ()  # 10's repository.get and take_snapshot take the aggregate class
    n = ctx.sizes.aggregate
    note_text = "x" * 150
    rows_plain = []
    rows_snap = []
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b):
            continue
        env = {"IS_SNAPSHOTTING_ENABLED": "y"}
        saved_pure = os.environ.get("EVSTORE_PURE")
        if b in ("c", "python"):
            env.update(PERSISTENCE_MODULE="evstore.eventsourcing", EVSTORE_PATH=ctx.path(f"app-{b}"),
                       EVSTORE_DURABILITY="os")
            os.environ["EVSTORE_PURE"] = "1" if b == "python" else "0"
        elif b == "sqlite":
            env.update(PERSISTENCE_MODULE="eventsourcing.sqlite", SQLITE_DBNAME=ctx.path("app.sqlite"))
        try:
            app = BenchApplication(env=env)
        finally:
            if saved_pure is None:
                os.environ.pop("EVSTORE_PURE", None)
            else:
                os.environ["EVSTORE_PURE"] = saved_pure
        try:
            agg = cls()
            for _ in range(n - 1):
                agg.add(note_text)
            app.save(agg)
            aid = agg.id
            dt, got = best(lambda: app.repository.get(aid, *by_class), ctx.repeat)
            assert got.version == n
            ds, _ = best(lambda: app.recorder.select_events(aid), ctx.repeat)
            share = ds / dt
            rows_plain.append(events_row("repository_get", b, n, dt,
                                         f"{dt * 1e3:.1f} ms/get; storage (select_events) {share:.0%} of it"))
            app.take_snapshot(aid, *by_class)
            dt2, got = best(lambda: app.repository.get(aid, *by_class), max(ctx.repeat, 5))
            assert got.version == n
            rows_snap.append(events_row("repository_get_snapshot", b, n, dt2,
                                        f"{dt2 * 1e3:.2f} ms/get (events/s = {n:,} / time)"))
        finally:
            app.close()
    return rows_plain + rows_snap


def _faster_than_sqlite(p: Peers) -> bool:
    return p.x_sqlite is not None and p.x_sqlite > 1


WORKLOADS = (
    Workload("es_select_events", w_es_select_events, times_sqlite(3)),
    Workload("es_select_notifications", w_es_select_notifications, times_sqlite(3)),
    # also gives the rows of repository_get_snapshot, which has no target
    Workload("repository_get", w_repository_get, Target("faster than SQLite", _faster_than_sqlite)),
)
# judged, but measured by repository_get
SNAPSHOT_TARGET = Target("faster than SQLite", _faster_than_sqlite)
