"""What a run produces: the rows, the sizes that made them, the targets they are judged against, and
the table / JSON they are printed as."""

from __future__ import annotations

import collections
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import evstore

C = "evstore (C log)"
PY = "evstore (Python log)"
SQLITE = "SQLite recorder"
POPO = "in-memory recorder"
REF = "reference"
BACKENDS = ("c", "python", "sqlite", "popo", "ref")
BACKEND_NAME = {"c": C, "python": PY, "sqlite": SQLITE, "popo": POPO, "ref": REF}

HIGHER_IS_BETTER = {"events/s": True, "GB/s": True, "MB/s": True, "ms": False, "B/event": False, "MB": False,
                    "us/commit": False}


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


# -- targets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peers:
    """What a target is judged on: the evstore (C log) row of a workload and, of the same workload,
    the first SQLite and in-memory rows and the first reference row with a value."""

    c: Row
    value: float  # c.value
    x_sqlite: float | None  # c.vs_sqlite
    sqlite: Row | None
    popo: Row | None
    ref: Row | None


@dataclass(frozen=True)
class Target:
    """A workload's goal for the evstore (C log) row: the text the table shows, the predicate that
    decides "met" (None: cannot be judged, e.g. a missing peer), and optionally a remark for the
    row's note (empty: none)."""

    text: str
    check: Callable[[Peers], bool | None]
    remark: Callable[[Peers], str] | None = None


def times_sqlite(k: float, what: str = "") -> Target:
    """At least k times better than SQLite: ">= {k}x SQLite {what}"."""
    return Target(f">= {k}x SQLite" + (f" {what}" if what else ""),
                  lambda p: p.x_sqlite is not None and p.x_sqlite >= k)


def at_least(v: int, unit: str) -> Target:
    """A value of at least v: ">= {v} {unit}"."""
    return Target(f">= {v:,} {unit}", lambda p: p.value >= v)


def below(v: int, unit: str) -> Target:
    """A value under v: "< {v} {unit}"."""
    return Target(f"< {v:,} {unit}", lambda p: p.value < v)


def judge(rows: list[Row], targets: Mapping[str, Target]) -> None:
    """Fill in vs_sqlite, and target / met on the rows a target is about."""
    by: dict[str, dict[str, list[Row]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        by[r.workload][r.backend].append(r)
    for wl, backends in by.items():
        sq = backends.get(SQLITE, [None])[0]
        for rs in backends.values():
            for r in rs:
                if sq is not None and sq.value and r.value:
                    hb = HIGHER_IS_BETTER.get(r.unit, True)
                    r.vs_sqlite = r.value / sq.value if hb else sq.value / r.value
        target = targets.get(wl)
        c = backends.get(C, [None])[0]
        if target is None or c is None:
            continue
        c.target = target.text
        if c.value is None:
            continue
        peers = Peers(c, c.value, c.vs_sqlite, sq, backends.get(POPO, [None])[0],
                      next((r for r in backends.get(REF, []) if r.value), None))
        c.met = target.check(peers)
        remark = target.remark(peers) if target.remark is not None else ""
        if remark:
            c.note = (c.note + "; " if c.note else "") + remark


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


def summary(rows: Sequence[Row], m: Mapping[str, Any], elapsed: float) -> str:
    """The line under the table: targets met, the machine, the time taken."""
    met = [r for r in rows if r.met is not None]
    return (f"targets met: {sum(1 for r in met if r.met)} of {len(met)}; "
            f"{m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, SQLite {m['sqlite']}; {elapsed:.0f} s")


def json_doc(rows: Sequence[Row], m: Mapping[str, Any], argv: Sequence[str], scale: float,
             elapsed: float) -> dict[str, Any]:
    """The figures of a run, with the machine, as one JSON-ready object (`evstore bench --json`)."""
    return {"machine": dict(m), "argv": list(argv), "scale": scale, "elapsed_s": elapsed,
            "rows": [asdict(r) for r in rows]}


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
