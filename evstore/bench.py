"""`evstore bench`: evstore against the `eventsourcing` library's SQLite and in-memory recorders and
against the physical floor (raw write+fdatasync, an LMDB cursor scan, a memcpy of the same bytes).

Every workload runs each backend side by side in one process, in one temporary folder, so that the
ratios hold on a noisy machine even when the absolute rates move. Each figure is the best of
`repeat` timed runs (reads) or one timed run over fresh events (appends).

Use from Python::

    from evstore import bench
    rows = bench.run(scale=0.1)
    print(bench.format_table(rows))

or from the command line (`evstore bench --quick`, `evstore bench --json out.json`).
"""

from __future__ import annotations

import argparse
import collections
import gc
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import evstore
from evstore._progress import Progress

# -- results -------------------------------------------------------------------------------------

C = "evstore (C log)"
PY = "evstore (Python log)"
SQLITE = "SQLite recorder"
POPO = "in-memory recorder"
REF = "reference"
BACKENDS = ("c", "python", "sqlite", "popo", "ref")
_BACKEND_NAME = {"c": C, "python": PY, "sqlite": SQLITE, "popo": POPO, "ref": REF}

_HIGHER_IS_BETTER = {"events/s": True, "GB/s": True, "MB/s": True, "ms": False, "B/event": False, "MB": False}


@dataclass
class Row:
    """One backend's figure for one workload."""

    workload: str
    backend: str
    n: int  # events (or operations) measured
    value: float | None  # in `unit`; None when not available
    unit: str
    vs_sqlite: float | None = None  # how many times better than SQLite (>1: better), either unit sense
    target: str = ""
    met: bool | None = None  # None: no target on this row
    note: str = ""
    seconds: float | None = None


@dataclass
class Sizes:
    """How much each workload does; `scaled` multiplies every size (with floors)."""

    appends1: int = 2_000  # 1-event appends, fsync, one thread
    appends1_threads: int = 2_000  # 1-event appends, fsync, 8 threads together
    threads: int = 8
    appends100: int = 20_000  # events, in commits of 100
    appends_os: int = 20_000  # 1-event appends, durability="os"
    conflicts: int = 5_000  # rejected appends
    stream: int = 100_000  # events of the one long stream
    streams: int = 1_000  # streams of 100 events read one by one
    total: int = 1_000_000  # events in the read dataset (the long stream + streams of 100)
    aggregate: int = 10_000  # events of the aggregate that repository.get rebuilds
    crash: int = 100_000  # events written after the index copy, caught up on reopen
    python_fraction: float = 0.1  # the pure-Python log's datasets are this fraction of the C log's
    popo_total: int = 200_000  # cap of the in-memory recorder's dataset (it holds every event in RAM)

    def scaled(self, f: float) -> Sizes:
        def s(v: int, lo: int) -> int:
            return max(lo, int(v * f))

        stream = s(self.stream, 1_000)
        streams = s(self.streams, 20)
        return replace(
            self,
            appends1=s(self.appends1, 50), appends1_threads=s(self.appends1_threads, 80),
            appends100=s(self.appends100, 1_000), appends_os=s(self.appends_os, 1_000),
            conflicts=s(self.conflicts, 200), stream=stream, streams=streams,
            total=max(s(self.total, 5_000), stream + streams * 100), aggregate=s(self.aggregate, 500),
            crash=s(self.crash, 5_000), popo_total=max(s(self.popo_total, 5_000), stream + streams * 100),
        )


PAYLOAD = (b'{"note": "' + b"x" * 180 + b'", "n": 1}')  # 200 bytes
assert len(PAYLOAD) == 200
TOPICS = tuple(f"evstore.bench:Ev{i}" for i in range(4))  # the type filter selects TOPICS[0]: a quarter


# -- the workloads' targets -----------------------------------------------------------------------

TARGETS = {
    "append1_fsync": "",
    "append1_fsync_8threads": ">= 5x SQLite (group commit)",
    "append100_fsync": ">= 2x SQLite and >= 60% of write+fdatasync",
    "append1_os": ">= 0.3x in-memory",
    "append_conflict": ">= 5x SQLite",
    "read_stream_100k": ">= 5x SQLite select_events",
    "read_1000_streams": "",
    "read_all": ">= 2,000,000 events/s",
    "read_all_type_filter": "",
    "es_select_events": ">= 3x SQLite",
    "es_select_notifications": ">= 3x SQLite",
    "repository_get": "faster than SQLite",
    "repository_get_snapshot": "",
    "verify": ">= 1 GB/s (C scan)",
    "open_clean": "< 50 ms",
    "open_after_crash": ">= 200 MB/s of log",
    "bytes_per_event": "<= SQLite",
    "replay_memory": "< 100 MB above baseline",
}


# -- helpers -------------------------------------------------------------------------------------


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """(smallest time of `repeat` calls, the last result)."""
    best = float("inf")
    out = None
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best = min(best, dt)
    return best, out


def _count(it: Iterable[Any]) -> int:
    """Consume an iterator at C speed and return how many items it gave."""
    last = collections.deque(zip(it, itertools.count(1)), maxlen=1)
    return last[0][1] if last else 0


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _log_bytes(path: str) -> int:
    return _dir_bytes(os.path.join(path, "log"))


def _es_module() -> Any:
    """evstore.eventsourcing; the benchmark compares with the eventsourcing library, so it needs it."""
    try:
        from evstore import eventsourcing as mod
    except ModuleNotFoundError as e:
        if e.name != "eventsourcing" and not (e.name or "").startswith("eventsourcing."):
            raise
        raise evstore.EvstoreError("evstore bench compares evstore with the eventsourcing library: "
                                   "pip install 'evstore[eventsourcing]'") from e
    return mod


def _stored(oid: uuid.UUID, v: int) -> Any:
    from eventsourcing.persistence import StoredEvent

    return StoredEvent(oid, v, TOPICS[v % 4], PAYLOAD)


def _sqlite_recorder(path: str, pool_size: int = 5) -> Any:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    ds = SQLiteDatastore(path, pool_size=pool_size, max_overflow=16)
    rec = SQLiteApplicationRecorder(ds)
    rec.create_table()
    return rec


def _popo_recorder() -> Any:
    from eventsourcing.popo import POPOApplicationRecorder

    return POPOApplicationRecorder()


def _page_notifications(rec: Any, topics: Sequence[str] = (), page: int = 1_000) -> int:
    """Read every notification in pages of `page`; returns how many."""
    start = 1
    n = 0
    while True:
        ns = rec.select_notifications(start, page, topics=topics)
        if not ns:
            return n
        n += len(ns)
        start = ns[-1].id + 1


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0])
    return out


# -- the datasets the read workloads share -------------------------------------------------------


@dataclass
class Dataset:
    """One backend's read dataset: a long stream plus streams of 100 events."""

    backend: str
    path: str  # "" for the in-memory recorder
    big: uuid.UUID
    small: list[uuid.UUID]
    total: int
    stream: int
    recorder: Any = None  # sqlite / popo
    filtered: int = 0  # events of TOPICS[0]
    build_seconds: float = 0.0


class _Ctx:
    """State of one `run`: the folder, the sizes, the datasets built so far."""

    def __init__(self, tmp: str, sizes: Sizes, repeat: int, backends: Sequence[str],
                 say: Callable[[str], None]) -> None:
        self.tmp = tmp
        self.sizes = sizes
        self.repeat = repeat
        self.backends = tuple(backends)
        self.say = say
        self.datasets: dict[str, Dataset] = {}
        self.es = _es_module()
        self._n = 0

    def path(self, name: str) -> str:
        self._n += 1
        return os.path.join(self.tmp, f"{self._n:03d}-{name}")

    def on(self, backend: str) -> bool:
        return backend in self.backends

    def dataset_sizes(self, backend: str) -> tuple[int, int]:
        """(long stream, total) of a backend's dataset."""
        s = self.sizes
        if backend == "python":
            f = s.python_fraction
            stream = max(1_000, int(s.stream * f))
            return stream, max(stream + s.streams * 100, int(s.total * f))
        if backend == "popo":
            return s.stream, min(s.total, s.popo_total)
        return s.stream, s.total

    def dataset(self, backend: str) -> Dataset:
        d = self.datasets.get(backend)
        if d is None:
            self.say(f"building the {_BACKEND_NAME[backend]} dataset")
            t = time.perf_counter()
            d = self._build(backend)
            d.build_seconds = time.perf_counter() - t
            self.datasets[backend] = d
            # The datasets (the in-memory recorder's above all) are long-lived objects: keep them out
            # of the cyclic GC's way, so that a later timing does not pay for traversing them.
            gc.collect()
            gc.freeze()
        return d

    def _build(self, backend: str) -> Dataset:
        stream, total = self.dataset_sizes(backend)
        n_small = (total - stream) // 100
        big = uuid.uuid4()
        small = [uuid.uuid4() for _ in range(n_small)]
        total = stream + n_small * 100
        filtered = sum(1 for v in range(1, stream + 1) if v % 4 == 0) + n_small * 25
        if backend in ("c", "python"):
            path = self.path(f"dataset-{backend}.evs")
            # written through the eventsourcing recorder, so that one store serves the native reads
            # and select_events / select_notifications
            with evstore.open(path, durability="os", log_impl=backend) as store:
                rec = self.es.EvstoreApplicationRecorder(store)
                for v0 in range(1, stream + 1, 100):
                    rec.insert_events([_stored(big, v) for v in range(v0, min(v0 + 100, stream + 1))])
                for oid in small:
                    rec.insert_events([_stored(oid, v) for v in range(1, 101)])
            return Dataset(backend, path, big, small, total, stream, filtered=filtered)
        if backend == "sqlite":
            path = self.path("dataset.sqlite")
            rec = _sqlite_recorder(path)
        else:
            path = ""
            rec = _popo_recorder()
        for v0 in range(1, stream + 1, 100):
            rec.insert_events([_stored(big, v) for v in range(v0, min(v0 + 100, stream + 1))])
        for oid in small:
            rec.insert_events([_stored(oid, v) for v in range(1, 101)])
        return Dataset(backend, path, big, small, total, stream, recorder=rec, filtered=filtered)

    def close(self) -> None:
        for d in self.datasets.values():
            if d.backend == "sqlite" and d.recorder is not None:
                d.recorder.datastore.close()
        self.datasets.clear()


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _row(ctx: _Ctx, workload: str, backend: str, n: int, seconds: float, note: str = "") -> Row:
    return Row(workload, _BACKEND_NAME[backend], n, _rate(n, seconds), "events/s", note=note, seconds=seconds)


# -- writes --------------------------------------------------------------------------------------


def _ev() -> list[evstore.NewEvent]:
    return [evstore.NewEvent("Ev", PAYLOAD)]


def _append_evstore(ctx: _Ctx, impl: str, n: int, per_commit: int, threads: int,
                    durability: str) -> tuple[float, int]:
    """(seconds, log bytes written) for n events in commits of per_commit, spread over threads."""
    path = ctx.path(f"append-{impl}.evs")
    with evstore.open(path, durability=durability, log_impl=impl) as store:
        events = [evstore.NewEvent("Ev", PAYLOAD) for _ in range(per_commit)]
        store.append("warm-up", events)
        before = _log_bytes(path)
        per_thread = n // per_commit // threads

        def work(ready: Callable[[], None]) -> None:
            sid = uuid.uuid4()
            v = 0
            ready()
            for _ in range(per_thread):
                store.append(sid, events, expected_version=v if v else evstore.NO_STREAM)
                v += per_commit

        dt = _timed_threads(threads, work)
        written = _log_bytes(path) - before
    shutil.rmtree(path, ignore_errors=True)
    return dt, written


def _append_recorder(ctx: _Ctx, backend: str, n: int, per_commit: int, threads: int) -> float:
    if backend == "sqlite":
        rec = _sqlite_recorder(ctx.path("append.sqlite"), pool_size=max(5, threads + 1))
    else:
        rec = _popo_recorder()
    rec.insert_events([_stored(uuid.uuid4(), v) for v in range(1, per_commit + 1)])
    per_thread = n // per_commit // threads

    def work(ready: Callable[[], None]) -> None:
        oid = uuid.uuid4()
        batches = [[_stored(oid, v) for v in range(i * per_commit + 1, (i + 1) * per_commit + 1)]
                   for i in range(per_thread)]
        ready()
        for b in batches:
            rec.insert_events(b)

    dt = _timed_threads(threads, work)
    if backend == "sqlite":
        rec.datastore.close()
    return dt


def _timed_threads(threads: int, work: Callable[[Callable[[], None]], None]) -> float:
    """Seconds for `threads` threads to run `work(ready)` from the moment all have called `ready()`;
    the first error of any thread is raised."""
    barrier = threading.Barrier(threads + 1)
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
    t0 = time.perf_counter()  # before the release: a worker may run to the end before we are scheduled
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return dt


def _raw_write(ctx: _Ctx, commits: int, commit_bytes: int, sync: bool) -> float:
    """write (+ fdatasync) of `commits` buffers of `commit_bytes`, appending to a file."""
    path = ctx.path("raw.log")
    buf = b"r" * commit_bytes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, buf)
        os.fdatasync(fd)
        t = time.perf_counter()
        for _ in range(commits):
            os.write(fd, buf)
            if sync:
                os.fdatasync(fd)
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(path)
    return dt


def _w_append(ctx: _Ctx, workload: str, n: int, per_commit: int, threads: int, durability: str) -> list[Row]:
    rows = []
    n = (n // (per_commit * threads)) * per_commit * threads
    commit_bytes = 0
    for b in ("c", "python"):
        if ctx.on(b):
            dt, written = _append_evstore(ctx, b, n, per_commit, threads, durability)
            commit_bytes = commit_bytes or written // max(1, n // per_commit)
            rows.append(_row(ctx, workload, b, n, dt, f"{dt / (n // per_commit) * 1e6:.0f} us/commit"))
    for b in ("sqlite", "popo"):
        if ctx.on(b):
            dt = _append_recorder(ctx, b, n, per_commit, threads)
            rows.append(_row(ctx, workload, b, n, dt, "insert_events" + (" (no durability)" if b == "popo" else "")))
    if ctx.on("ref") and threads == 1 and commit_bytes:
        sync = durability == "fsync"
        dt = _raw_write(ctx, n // per_commit, commit_bytes, sync)
        what = "write+fdatasync" if sync else "write, no sync"
        rows.append(_row(ctx, workload, "ref", n, dt, f"{what} of the same {commit_bytes} B per commit"))
    return rows


def w_append1_fsync(ctx: _Ctx) -> list[Row]:
    return _w_append(ctx, "append1_fsync", ctx.sizes.appends1, 1, 1, "fsync")


def w_append1_fsync_threads(ctx: _Ctx) -> list[Row]:
    return _w_append(ctx, "append1_fsync_8threads", ctx.sizes.appends1_threads, 1, ctx.sizes.threads, "fsync")


def w_append100_fsync(ctx: _Ctx) -> list[Row]:
    return _w_append(ctx, "append100_fsync", ctx.sizes.appends100, 100, 1, "fsync")


def w_append1_os(ctx: _Ctx) -> list[Row]:
    return _w_append(ctx, "append1_os", ctx.sizes.appends_os, 1, 1, "os")


def w_conflict(ctx: _Ctx) -> list[Row]:
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

            dt, _ = _best(go, ctx.repeat)
        rows.append(_row(ctx, wl, b, n, dt, "WrongExpectedVersion"))
    for b in ("sqlite", "popo"):
        if not ctx.on(b):
            continue
        from eventsourcing.persistence import IntegrityError

        rec = _sqlite_recorder(ctx.path("conflict.sqlite")) if b == "sqlite" else _popo_recorder()
        oid = uuid.uuid4()
        rec.insert_events([_stored(oid, 1)])
        dup = [_stored(oid, 1)]

        def go2() -> None:
            for _ in range(n):
                try:
                    rec.insert_events(dup)
                except IntegrityError:
                    pass

        dt, _ = _best(go2, ctx.repeat)
        if b == "sqlite":
            rec.datastore.close()
        rows.append(_row(ctx, wl, b, n, dt, "IntegrityError"))
    return rows


# -- reads ---------------------------------------------------------------------------------------


def _lmdb_scan(ctx: _Ctx, n: int) -> float:
    """Best time of a py-lmdb cursor scan over n entries (16-byte keys, 200-byte values)."""
    import lmdb

    path = ctx.path("ref.lmdb")
    env = lmdb.open(path, map_size=1 << 30, sync=False, metasync=False)
    try:
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(i.to_bytes(16, "big"), PAYLOAD, append=True)

        def scan() -> int:
            with env.begin() as txn:
                return _count(txn.cursor().iternext(keys=True, values=True))

        dt, _ = _best(scan, ctx.repeat)
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)
    return dt


def _memcpy(ctx: _Ctx, nbytes: int) -> float:
    """Best time of copying nbytes into an existing buffer (memcpy through a memoryview)."""
    src = bytearray(b"m" * nbytes)
    dst = bytearray(nbytes)  # an existing, already faulted-in buffer: the copy alone is timed
    view = memoryview(dst)

    def cp() -> None:
        view[:] = src

    dt, _ = _best(cp, ctx.repeat)
    return dt


def _size_note(ctx: _Ctx, b: str, n: int, full: int) -> str:
    return f"smaller: {n:,} events" if n != full else ""


def w_read_stream(ctx: _Ctx) -> list[Row]:
    wl = "read_stream_100k"
    rows = []
    rec_bytes = 0
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        if b in ("c", "python"):
            with evstore.open(d.path, log_impl=b) as store:
                dt, got = _best(lambda: store.read_stream(d.big), ctx.repeat)
                rec_bytes = rec_bytes or _log_bytes(d.path) // d.total
            note = "list of RecordedEvent"
        else:
            dt, got = _best(lambda: d.recorder.select_events(d.big), ctx.repeat)
            note = "select_events (StoredEvent)"
        assert len(got) == d.stream, (b, len(got), d.stream)
        extra = _size_note(ctx, b, d.stream, ctx.sizes.stream)
        rows.append(_row(ctx, wl, b, d.stream, dt, "; ".join(x for x in (note, extra) if x)))
    if ctx.on("ref"):
        n = ctx.sizes.stream
        rows.append(_row(ctx, wl, "ref", n, _lmdb_scan(ctx, n), "LMDB cursor scan, 200 B values"))
        if rec_bytes:
            rows.append(_row(ctx, wl, "ref", n, _memcpy(ctx, n * rec_bytes), f"memcpy of {rec_bytes} B/event"))
    return rows


def w_read_streams(ctx: _Ctx) -> list[Row]:
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

                dt, got = _best(go, ctx.repeat)
            note = f"{len(ids)} x read_stream"
        else:
            se = d.recorder.select_events

            def go() -> int:
                return sum(len(se(i)) for i in ids)

            dt, got = _best(go, ctx.repeat)
            note = f"{len(ids)} x select_events"
        assert got == n
        rows.append(_row(ctx, wl, b, n, dt, note))
    if ctx.on("ref"):
        n = ctx.sizes.streams * 100
        rows.append(_row(ctx, wl, "ref", n, _lmdb_scan(ctx, n), "LMDB cursor scan, 200 B values"))
    return rows


def _w_read_all(ctx: _Ctx, filtered: bool) -> list[Row]:
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
                dt, got = _best(lambda: _count(store.read_all(types=types)), ctx.repeat)
                rec_bytes = rec_bytes or _log_bytes(d.path) // d.total
            note = "RecordedEvent stream"
        else:
            topics = (TOPICS[0],) if filtered else ()
            dt, got = _best(lambda: _page_notifications(d.recorder, topics), ctx.repeat)
            note = "select_notifications, pages of 1,000"
        assert got == expect, (b, got, expect)
        sel = f"{expect:,} of {d.total:,} delivered" if filtered else (
            f"smaller: {d.total:,} events" if d.total != ctx.sizes.total else "")
        rows.append(_row(ctx, wl, b, got, dt, "; ".join(x for x in (note, sel) if x)))
    if ctx.on("ref") and rec_bytes and not filtered:
        n = ctx.sizes.total
        rows.append(_row(ctx, wl, "ref", n, _memcpy(ctx, n * rec_bytes), f"memcpy of {rec_bytes} B/event"))
    return rows


def w_read_all(ctx: _Ctx) -> list[Row]:
    return _w_read_all(ctx, False)


def w_read_all_filtered(ctx: _Ctx) -> list[Row]:
    return _w_read_all(ctx, True)


def _es_rows(ctx: _Ctx, wl: str, fn_ev: Callable[[Any, Dataset], int], fn_rec: Callable[[Any, Dataset], int],
             what: str) -> list[Row]:
    rows = []
    for b in ("c", "python", "sqlite", "popo"):
        if not ctx.on(b):
            continue
        if b in ("c", "python"):
            d = ctx.dataset(b)
            with evstore.open(d.path, log_impl=b) as store:
                rec = ctx.es.EvstoreApplicationRecorder(store)
                dt, got = _best(lambda: fn_rec(rec, d), ctx.repeat)
        else:
            d = ctx.dataset(b)
            dt, got = _best(lambda: fn_rec(d.recorder, d), ctx.repeat)
        rows.append(_row(ctx, wl, b, got, dt, what + ("" if got in (ctx.sizes.stream, ctx.sizes.total)
                                                         else f"; smaller: {got:,} events")))
    return rows


def w_es_select_events(ctx: _Ctx) -> list[Row]:
    def rec(r: Any, d: Dataset) -> int:
        return len(r.select_events(d.big))

    return _es_rows(ctx, "es_select_events", rec, rec, "select_events of the long stream")


def w_es_select_notifications(ctx: _Ctx) -> list[Row]:
    def rec(r: Any, d: Dataset) -> int:
        return _page_notifications(r)

    return _es_rows(ctx, "es_select_notifications", rec, rec, "pages of 1,000")


# -- repository.get -------------------------------------------------------------------------------


try:  # eventsourcing is an optional dependency: the application workloads need it
    from eventsourcing.domain import Aggregate as _Aggregate
    from eventsourcing.domain import event as _event

    class BenchAggregate(_Aggregate):
        """The aggregate that repository.get rebuilds."""

        @_event("Started")
        def __init__(self) -> None:
            self.count = 0
            self.note = ""

        @_event("Noted")
        def add(self, note: str) -> None:
            self.count += 1
            self.note = note

except ImportError:  # pragma: no cover
    BenchAggregate = None  # type: ignore[assignment,misc]


def w_repository_get(ctx: _Ctx) -> list[Row]:
    from eventsourcing.application import Application

    cls = BenchAggregate
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
            app: Application[uuid.UUID] = Application(env=env)
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
            dt, got = _best(lambda: app.repository.get(aid), ctx.repeat)
            assert got.version == n
            ds, _ = _best(lambda: app.recorder.select_events(aid), ctx.repeat)
            share = ds / dt
            rows_plain.append(_row(ctx, "repository_get", b, n, dt,
                                   f"{dt * 1e3:.1f} ms/get; storage (select_events) {share:.0%} of it"))
            app.take_snapshot(aid)
            dt2, got = _best(lambda: app.repository.get(aid), max(ctx.repeat, 5))
            assert got.version == n
            rows_snap.append(_row(ctx, "repository_get_snapshot", b, n, dt2,
                                  f"{dt2 * 1e3:.2f} ms/get (events/s = {n:,} / time)"))
        finally:
            app.close()
    return rows_plain + rows_snap


# -- verify, open, disk, memory --------------------------------------------------------------------


def _verify_log(path: str, impl_name: str) -> tuple[float, int]:
    """(seconds, bytes): every segment scanned and verified, nothing reported (kinds=0)."""
    from evstore import _impl
    from evstore._format import SEGMENT_HEADER_SIZE
    from evstore.log import Log

    impl = _impl.load(impl_name)
    log = Log(os.path.join(path, "log"), impl, segment_size=1 << 40, writable=False)
    bufs = []
    for seg in log.segments:
        size = os.path.getsize(seg.path)
        bufs.append((seg, seg.buffer(size), size))
    t = time.perf_counter()
    total = 0
    for seg, buf, size in bufs:
        off, pos = SEGMENT_HEADER_SIZE, seg.first
        while off < size:
            r = impl.scan(buf, off, size, next_position=pos, kinds=0, max_out=16)
            if r.code != 0:
                raise evstore.CorruptedError(seg.path, r.err_off, f"verify failed ({r.code})")
            if r.commits == 0:
                break
            off, pos = r.end, r.next_position
        total += size
    return time.perf_counter() - t, total


def w_verify(ctx: _Ctx) -> list[Row]:
    wl = "verify"
    rows = []
    nbytes = 0
    for b in ("c", "python"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        best = float("inf")
        for _ in range(ctx.repeat):
            dt, size = _verify_log(d.path, b)
            best = min(best, dt)
        nbytes = nbytes or size
        rows.append(Row(wl, _BACKEND_NAME[b], d.total, size / best / 1e9, "GB/s", seconds=best,
                        note=f"{size / 1e6:,.0f} MB, {d.total / best:,.0f} events/s; scan kinds=0"))
    if ctx.on("sqlite"):
        import sqlite3

        d = ctx.dataset("sqlite")
        size = os.path.getsize(d.path)
        con = sqlite3.connect(d.path)
        try:
            dt, res = _best(lambda: con.execute("PRAGMA quick_check").fetchall(), 1)
        finally:
            con.close()
        rows.append(Row(wl, SQLITE, d.total, size / dt / 1e9, "GB/s", seconds=dt,
                        note=f"PRAGMA quick_check of {size / 1e6:,.0f} MB ({res[0][0]})"))
    if ctx.on("ref") and nbytes:
        dt = _memcpy(ctx, nbytes)
        rows.append(Row(wl, REF, 0, nbytes / dt / 1e9, "GB/s", seconds=dt, note="memcpy of the same bytes"))
    return rows


def w_open_clean(ctx: _Ctx) -> list[Row]:
    wl = "open_clean"
    rows = []
    for b in ("c", "python"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        with evstore.open(d.path, log_impl=b):
            pass

        def go() -> None:
            evstore.open(d.path, log_impl=b).close()

        dt, _ = _best(go, max(ctx.repeat, 5))
        rows.append(Row(wl, _BACKEND_NAME[b], d.total, dt * 1e3, "ms", seconds=dt,
                        note=f"open+close, {d.total:,} events"))
    if ctx.on("sqlite"):
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        d = ctx.dataset("sqlite")

        def go2() -> None:
            ds = SQLiteDatastore(d.path)
            SQLiteApplicationRecorder(ds).max_notification_id()
            ds.close()

        dt, _ = _best(go2, max(ctx.repeat, 5))
        rows.append(Row(wl, SQLITE, d.total, dt * 1e3, "ms", seconds=dt, note="connect + max_notification_id"))
    return rows


_CRASH_WRITER = r"""
import sys, time, uuid
import evstore
from evstore._progress import Progress
path, impl, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = evstore.open(path, log_impl=impl, durability="os")
events = [evstore.NewEvent("Crash", b"c" * 200) for _ in range(100)]
sid = uuid.uuid4()
v = 0
for _ in range(max(1, n // 100)):
    store.append(sid, events, expected_version=v if v else evstore.NO_STREAM)
    v += 100
print("done", flush=True)
time.sleep(600)
"""


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(evstore.__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def w_open_after_crash(ctx: _Ctx) -> list[Row]:
    """Copy the index, let a writer append `crash` events, SIGKILL it, put the old index back: the
    reopen must catch the index up with every byte written since the copy."""
    wl = "open_after_crash"
    rows = []
    for b in ("c", "python"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        n = ctx.sizes.crash if b == "c" else max(1_000, int(ctx.sizes.crash * ctx.sizes.python_fraction))
        idx = os.path.join(d.path, "index")
        saved = ctx.path("index-copy")
        shutil.copytree(idx, saved)
        before = _log_bytes(d.path)
        p = subprocess.Popen([sys.executable, "-c", _CRASH_WRITER, d.path, b, str(n)], stdout=subprocess.PIPE,
                             env=_subprocess_env(), text=True)
        try:
            line = p.stdout.readline() if p.stdout else ""
            if line.strip() != "done":
                raise RuntimeError(f"the crash writer failed (exit {p.poll()})")
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            if p.stdout:
                p.stdout.close()
        grown = _log_bytes(d.path) - before
        dt = float("inf")
        for _ in range(max(1, ctx.repeat)):  # the same catch-up each time: put the old index back, reopen
            shutil.rmtree(idx)
            shutil.copytree(saved, idx)
            t = time.perf_counter()
            store = evstore.open(d.path, log_impl=b)
            dt = min(dt, time.perf_counter() - t)
            head = store.head()
            store.close()
            assert head >= d.total + n, (head, d.total, n)
        shutil.rmtree(saved)
        rows.append(Row(wl, _BACKEND_NAME[b], n, grown / dt / 1e6, "MB/s", seconds=dt,
                        note=f"{grown / 1e6:.1f} MB / {n:,} events caught up in {dt * 1e3:.0f} ms"))
    return rows


def w_bytes(ctx: _Ctx) -> list[Row]:
    wl = "bytes_per_event"
    rows = []
    for b in ("c", "python", "sqlite"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        if b == "sqlite":
            d.recorder.datastore.close()
            size = sum(os.path.getsize(d.path + s) for s in ("", "-wal", "-shm") if os.path.exists(d.path + s))
            note = "database file (+ WAL), 200 B state"
            d.recorder = _sqlite_recorder(d.path)
        else:
            log = _log_bytes(d.path)
            index = _dir_bytes(os.path.join(d.path, "index"))
            size = log + index
            note = f"log {log / d.total:.0f} + index {index / d.total:.0f} (8 B originator_version metadata per event)"
        rows.append(Row(wl, _BACKEND_NAME[b], d.total, size / d.total, "B/event", note=note))
    return rows


_MEMORY_READER = r"""
import json, sys
path, backend = sys.argv[1], sys.argv[2]
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0])
    return out
if backend == "sqlite":
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
    rec = SQLiteApplicationRecorder(SQLiteDatastore(path))
    def items():
        start = 1
        while True:
            ns = rec.select_notifications(start, 1000)
            if not ns:
                return
            yield from ns
            start = ns[-1].id + 1
    get = lambda e: e.state
else:
    import evstore
    store = evstore.open(path, log_impl=backend)
    items = store.read_all
    get = lambda e: e.data
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
except OSError:
    pass
base = status()
n = 0
peak_anon = base.get("RssAnon", 0)
for e in items():
    get(e)
    n += 1
    if n % 20000 == 0:
        peak_anon = max(peak_anon, status().get("RssAnon", 0))
end = status()
print(json.dumps({"n": n, "base_rss": base["VmRSS"], "hwm": end["VmHWM"], "end_rss": end["VmRSS"],
                  "base_anon": base.get("RssAnon", 0), "peak_anon": peak_anon, "end_file": end.get("RssFile", 0)}))
"""


def w_memory(ctx: _Ctx) -> list[Row]:
    wl = "replay_memory"
    rows = []
    for b in ("c", "python", "sqlite"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        out = subprocess.run([sys.executable, "-c", _MEMORY_READER, d.path, b], capture_output=True, text=True,
                             env=_subprocess_env(), check=False)
        if out.returncode != 0:
            raise RuntimeError(f"the replay-memory reader failed for {b}: {out.stderr.strip()[-2000:]}")
        m = json.loads(out.stdout)
        over = (m["hwm"] - m["base_rss"]) / 1024
        anon = (m["peak_anon"] - m["base_anon"]) / 1024
        rows.append(Row(wl, _BACKEND_NAME[b], m["n"], over, "MB",
                        note=f"VmHWM - VmRSS at start; anonymous memory +{anon:.0f} MB, "
                             f"file pages mapped at end {m['end_file'] / 1024:.0f} MB"))
    return rows


# -- the run -------------------------------------------------------------------------------------

WORKLOADS: dict[str, Callable[[_Ctx], list[Row]]] = {
    "append1_fsync": w_append1_fsync,
    "append1_fsync_8threads": w_append1_fsync_threads,
    "append100_fsync": w_append100_fsync,
    "append1_os": w_append1_os,
    "append_conflict": w_conflict,
    "read_stream_100k": w_read_stream,
    "read_1000_streams": w_read_streams,
    "read_all": w_read_all,
    "read_all_type_filter": w_read_all_filtered,
    "es_select_events": w_es_select_events,
    "es_select_notifications": w_es_select_notifications,
    "repository_get": w_repository_get,  # also gives repository_get_snapshot
    "verify": w_verify,
    "bytes_per_event": w_bytes,
    "replay_memory": w_memory,
    "open_clean": w_open_clean,
    "open_after_crash": w_open_after_crash,  # last: it appends to the datasets
}


def _judge(rows: list[Row]) -> None:
    """Fill in vs_sqlite, and target / met on the rows a target is about."""
    by: dict[str, dict[str, list[Row]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        by[r.workload][r.backend].append(r)
    for wl, backends in by.items():
        sq = backends.get(SQLITE, [None])[0]
        for rs in backends.values():
            for r in rs:
                if sq is not None and sq.value and r.value:
                    hb = _HIGHER_IS_BETTER.get(r.unit, True)
                    r.vs_sqlite = r.value / sq.value if hb else sq.value / r.value
        target = TARGETS.get(wl, "")
        c = backends.get(C, [None])[0]
        if not target or c is None:
            continue
        c.target = target
        if c.value is None:
            continue
        ref = next((r for r in backends.get(REF, []) if r.value), None)
        popo = backends.get(POPO, [None])[0]
        v = c.value
        met: bool | None = None
        if wl == "append100_fsync":
            ok_sq = c.vs_sqlite is not None and c.vs_sqlite >= 2
            ok_ref = ref is not None and ref.value is not None and v >= 0.6 * ref.value
            met = ok_sq and ok_ref
            c.note = (c.note + "; " if c.note else "") + (
                f"{v / ref.value:.0%} of write+fdatasync" if ref is not None and ref.value else "no reference")
        elif wl in ("append1_fsync_8threads", "append_conflict", "read_stream_100k"):
            met = c.vs_sqlite is not None and c.vs_sqlite >= 5
        elif wl in ("es_select_events", "es_select_notifications"):
            met = c.vs_sqlite is not None and c.vs_sqlite >= 3
        elif wl == "append1_os":
            if popo is not None and popo.value:
                met = v >= 0.3 * popo.value
                c.note = (c.note + "; " if c.note else "") + f"{v / popo.value:.2f}x in-memory"
        elif wl == "read_all":
            met = v >= 2_000_000
        elif wl == "repository_get":
            met = c.vs_sqlite is not None and c.vs_sqlite > 1
        elif wl == "verify":
            met = v >= 1.0
        elif wl == "open_clean":
            met = v < 50
        elif wl == "open_after_crash":
            met = v >= 200
        elif wl == "bytes_per_event":
            met = c.vs_sqlite is not None and c.vs_sqlite >= 1
        elif wl == "replay_memory":
            met = v < 100
        c.met = met


def run(*, scale: float = 1.0, quick: bool = False, sizes: Sizes | None = None,
        workloads: Sequence[str] | None = None, backends: Sequence[str] = BACKENDS, repeat: int = 3,
        directory: str | None = None, progress: bool | None = None,
        say: Callable[[str], None] | None = None) -> list[Row]:
    """Run the workloads and return their rows (see `Row`, `format_table`).

    `scale` multiplies every size of `sizes` (default `Sizes()`); `quick` is scale 0.02 and one
    repetition. `backends` picks among "c", "python", "sqlite", "popo", "ref". `progress`: a one-line progress report
    on stderr (default: only when stderr is a terminal). The stores live in a temporary folder under
    `directory` (default: the system's), removed at the end.
    """
    if quick:
        scale = min(scale, 0.02)
        repeat = 1
    sz = (sizes or Sizes()).scaled(scale)
    for n in workloads or ():
        if n not in WORKLOADS:
            raise ValueError(f"unknown workload {n!r}; choose from {', '.join(WORKLOADS)}")
    # Always in the canonical order: open_after_crash, last, appends to the shared datasets.
    names = [n for n in WORKLOADS if not workloads or n in workloads]
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    bar = Progress("evstore bench", "workloads", len(names), enabled=progress)

    def _say(msg: str) -> None:
        bar.set_note(msg[:60])
        if say is not None:
            say(msg)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="evstore-bench-", dir=directory) as tmp:
        ctx = _Ctx(tmp, sz, repeat, backends, _say)
        try:
            for name in names:
                _say(name)
                rows.extend(WORKLOADS[name](ctx))
                bar.update(1)
        finally:
            ctx.close()
            bar.close()
    _judge(rows)
    return rows


# -- output --------------------------------------------------------------------------------------


def _fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "events/s":
        return f"{v:,.0f}"
    if unit in ("GB/s",):
        return f"{v:.2f}"
    if unit in ("ms",):
        return f"{v:.1f}" if v >= 1 else f"{v:.2f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def format_table(rows: Sequence[Row], markdown: bool = True) -> str:
    """The rows as one Markdown table."""
    head = ["workload", "backend", "n", "value", "unit", "x SQLite", "target", "met", "note"]
    lines = []
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        lines.append([r.workload, r.backend, f"{r.n:,}" if r.n else "", _fmt_value(r.value, r.unit), r.unit,
                      "" if r.vs_sqlite is None else f"{r.vs_sqlite:.2f}", r.target, met, r.note])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    right = {2, 3, 5}

    def fmt(cells: list[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(head), sep, *(fmt(line) for line in lines)])


def machine() -> dict[str, Any]:
    """The facts a figure needs next to it."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import sqlite3

    import lmdb

    try:
        from importlib.metadata import version

        es_version = version("eventsourcing")
    except Exception:
        es_version = "?"
    return {"nproc": os.cpu_count(), "cpu": cpu or platform.processor(), "python": platform.python_version(),
            "platform": platform.platform(), "sqlite": sqlite3.sqlite_version, "lmdb": lmdb.version(),
            "eventsourcing": es_version, "evstore": evstore.__version__}


def _cmd(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(WORKLOADS))
        return 0
    sizes = Sizes()
    for f in ("stream", "total", "aggregate", "appends1", "appends100", "conflicts", "crash"):
        v = getattr(args, f, None)
        if v is not None:
            sizes = replace(sizes, **{f: v})
    backends = tuple(args.backends.split(",")) if args.backends else BACKENDS
    workloads = args.workloads.split(",") if args.workloads else None
    t = time.perf_counter()
    rows = run(scale=args.scale, quick=args.quick, sizes=sizes, workloads=workloads, backends=backends,
               repeat=args.repeat, directory=args.dir, progress=None if not args.no_progress else False)
    elapsed = time.perf_counter() - t
    m = machine()
    print(format_table(rows))
    met = [r for r in rows if r.met is not None]
    print(f"\ntargets met: {sum(1 for r in met if r.met)} of {len(met)}; "
          f"{m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, SQLite {m['sqlite']}; {elapsed:.0f} s")
    if args.json:
        doc = {"machine": m, "argv": sys.argv, "scale": 0.02 if args.quick else args.scale,
               "elapsed_s": elapsed, "rows": [asdict(r) for r in rows]}
        with open(args.json, "w") as out:
            json.dump(doc, out, indent=1)
        print(f"figures written to {args.json}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a short run (scale 0.02, one repetition)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every size (default 1.0)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions of each read; best is kept (default 3)")
    p.add_argument("--json", metavar="PATH", help="also write the figures (and the machine) as JSON")
    p.add_argument("--workloads", metavar="A,B", help="run only these workloads (see --list)")
    p.add_argument("--backends", metavar="A,B", help=f"only these backends, of {','.join(BACKENDS)}")
    p.add_argument("--dir", metavar="DIR", help="where to make the temporary folder (default: the system's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    g = p.add_argument_group("sizes (before --scale)")
    g.add_argument("--total", type=int, help="events of the read dataset (default 1,000,000)")
    g.add_argument("--stream", type=int, help="events of the long stream (default 100,000)")
    g.add_argument("--aggregate", type=int, help="events of the aggregate for repository.get (default 10,000)")
    g.add_argument("--appends1", type=int, help="1-event fsync appends (default 2,000)")
    g.add_argument("--appends100", type=int, help="events appended in commits of 100 (default 20,000)")
    g.add_argument("--conflicts", type=int, help="rejected appends (default 5,000)")
    g.add_argument("--crash", type=int, help="events written after the index copy in open_after_crash (default 100,000)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `bench` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench", help="compare evstore with the eventsourcing SQLite and in-memory recorders",
        description="Run evstore's workloads side by side with the eventsourcing library's SQLite (file) and "
                    "in-memory recorders and the physical floor, in a temporary folder, and print one table.")
    add_arguments(p)
    p.set_defaults(func=_cmd)
    return p  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m evstore.bench`: the bench subcommand on its own."""
    parser = argparse.ArgumentParser(prog="evstore bench")
    add_arguments(parser)
    return _cmd(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
