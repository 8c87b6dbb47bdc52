"""The workloads around the log rather than through it: verifying it whole, the bytes per event on
disk, the memory a full replay takes, opening after a clean close and after a crash."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import evstore
from evstore.bench.context import Ctx, Workload, best, dir_bytes, log_bytes, sqlite_recorder, subprocess_env
from evstore.bench.references import memcpy
from evstore.bench.results import BACKEND_NAME, REF, SQLITE, Peers, Row, Target, at_least, below


def verify_log(path: str, impl_name: str) -> tuple[float, int]:
    """(seconds, bytes): every segment scanned and verified by the store's scan loop, nothing
    reported (kinds=0); the mappings are made before the clock starts."""
    from evstore.format.codec import load as load_codec
    from evstore.storage.segments import Log
    from evstore.storage.scan import SegmentScanner, raise_unless_torn

    impl = load_codec(impl_name)
    log = Log(os.path.join(path, "log"), impl, segment_size=1 << 40, writable=False)
    scans = []
    for seg in log.segments:
        size = os.path.getsize(seg.path)
        scans.append(SegmentScanner(impl, seg.path, seg.buffer(size), size, 32, seg.first,
                                    last=seg is log.segments[-1], kinds=0, report=raise_unless_torn))
    t = time.perf_counter()
    total = 0
    for sc in scans:
        for _ in sc:
            pass
        total += sc.size
    return time.perf_counter() - t, total


def w_verify(ctx: Ctx) -> list[Row]:
    wl = "verify"
    rows = []
    nbytes = 0
    for b in ("c", "python"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        lo = float("inf")
        for _ in range(ctx.repeat):
            dt, size = verify_log(d.path, b)
            lo = min(lo, dt)
        nbytes = nbytes or size
        rows.append(Row(wl, BACKEND_NAME[b], d.total, size / lo / 1e9, "GB/s", seconds=lo,
                        note=f"{size / 1e6:,.0f} MB, {d.total / lo:,.0f} events/s; scan kinds=0"))
    if ctx.on("sqlite"):
        import sqlite3

        d = ctx.dataset("sqlite")
        size = os.path.getsize(d.path)
        con = sqlite3.connect(d.path)
        try:
            dt, res = best(lambda: con.execute("PRAGMA quick_check").fetchall(), 1)
        finally:
            con.close()
        rows.append(Row(wl, SQLITE, d.total, size / dt / 1e9, "GB/s", seconds=dt,
                        note=f"PRAGMA quick_check of {size / 1e6:,.0f} MB ({res[0][0]})"))
    if ctx.on("ref") and nbytes:
        dt = memcpy(ctx, nbytes)
        rows.append(Row(wl, REF, 0, nbytes / dt / 1e9, "GB/s", seconds=dt, note="memcpy of the same bytes"))
    return rows


def w_open_clean(ctx: Ctx) -> list[Row]:
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

        dt, _ = best(go, max(ctx.repeat, 5))
        rows.append(Row(wl, BACKEND_NAME[b], d.total, dt * 1e3, "ms", seconds=dt,
                        note=f"open+close, {d.total:,} events"))
    if ctx.on("sqlite"):
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        d = ctx.dataset("sqlite")

        def go2() -> None:
            ds = SQLiteDatastore(d.path)
            SQLiteApplicationRecorder(ds).max_notification_id()
            ds.close()

        dt, _ = best(go2, max(ctx.repeat, 5))
        rows.append(Row(wl, SQLITE, d.total, dt * 1e3, "ms", seconds=dt, note="connect + max_notification_id"))
    return rows


def w_open_after_crash(ctx: Ctx) -> list[Row]:
    """Copy the index, let a writer (`evstore.bench.crash_writer`) append `crash` events, SIGKILL it,
    put the old index back: the reopen must catch the index up with every byte written since the copy."""
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
        before = log_bytes(d.path)
        p = subprocess.Popen([sys.executable, "-m", "evstore.bench.crash_writer", d.path, b, str(n)],
                             stdout=subprocess.PIPE, env=subprocess_env(), text=True)
        try:
            line = p.stdout.readline() if p.stdout else ""
            if line.strip() != "done":
                raise RuntimeError(f"the crash writer failed (exit {p.poll()})")
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            if p.stdout:
                p.stdout.close()
        grown = log_bytes(d.path) - before
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
        rows.append(Row(wl, BACKEND_NAME[b], n, grown / dt / 1e6, "MB/s", seconds=dt,
                        note=f"{grown / 1e6:.1f} MB / {n:,} events caught up in {dt * 1e3:.0f} ms"))
    return rows


def w_bytes(ctx: Ctx) -> list[Row]:
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
            d.recorder = sqlite_recorder(d.path)
        else:
            log = log_bytes(d.path)
            index = dir_bytes(os.path.join(d.path, "index"))
            size = log + index
            note = f"log {log / d.total:.0f} + index {index / d.total:.0f} (8 B originator_version metadata per event)"
        rows.append(Row(wl, BACKEND_NAME[b], d.total, size / d.total, "B/event", note=note))
    return rows


def w_memory(ctx: Ctx) -> list[Row]:
    """A full replay in a fresh process (`evstore.bench.memory_reader`): its peak RSS over its start."""
    wl = "replay_memory"
    rows = []
    for b in ("c", "python", "sqlite"):
        if not ctx.on(b):
            continue
        d = ctx.dataset(b)
        out = subprocess.run([sys.executable, "-m", "evstore.bench.memory_reader", d.path, b], capture_output=True,
                             text=True, env=subprocess_env(), check=False)
        if out.returncode != 0:
            raise RuntimeError(f"the replay-memory reader failed for {b}: {out.stderr.strip()[-2000:]}")
        m = json.loads(out.stdout)
        over = (m["hwm"] - m["base_rss"]) / 1024
        anon = (m["peak_anon"] - m["base_anon"]) / 1024
        rows.append(Row(wl, BACKEND_NAME[b], m["n"], over, "MB",
                        note=f"VmHWM - VmRSS at start; anonymous memory +{anon:.0f} MB, "
                             f"file pages mapped at end {m['end_file'] / 1024:.0f} MB"))
    return rows


def _not_above_sqlite(p: Peers) -> bool:
    return p.x_sqlite is not None and p.x_sqlite >= 1


WORKLOADS = (
    Workload("verify", w_verify, at_least(1, "GB/s (C scan)")),
    Workload("bytes_per_event", w_bytes, Target("<= SQLite", _not_above_sqlite)),
    Workload("replay_memory", w_memory, below(100, "MB above baseline")),
    Workload("open_clean", w_open_clean, below(50, "ms")),
    Workload("open_after_crash", w_open_after_crash, at_least(200, "MB/s of log")),  # last: it appends to the datasets
)
