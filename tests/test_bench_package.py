"""The `evstore.bench` package: only `evstore bench` imports it, its public API, its targets, and its
helper processes run as real modules."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import evstore
from evstore import bench
from evstore.bench.results import Row, judge

from conftest import python_env


def _evstore(*args: str, importtime: bool = False) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -m evstore ARGS`; with importtime, also the names of the modules it imported."""
    flags = ["-X", "importtime"] if importtime else []
    out = subprocess.run([sys.executable, *flags, "-m", "evstore", *args], env=python_env(), capture_output=True,
                         text=True, timeout=120)
    mods = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}
    return out, mods


def _heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m == "evstore.bench" or m.startswith("evstore.bench.")
                  or m == "eventsourcing" or m.startswith("eventsourcing."))


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    path = str(tmp_path / "s.evs")
    with evstore.open(path) as s:
        s.append("order-1", [evstore.NewEvent("Placed", b'{"n": 1}')])
    return path


def test_help_imports_neither_the_bench_nor_eventsourcing() -> None:
    out, mods = _evstore("--help", importtime=True)
    assert out.returncode == 0 and "bench" in out.stdout, out.stderr[-2000:]
    assert "evstore.cli" in mods  # the parse of -X importtime works
    assert _heavy(mods) == []


def test_info_imports_neither_the_bench_nor_eventsourcing(store_path: str) -> None:
    out, mods = _evstore("info", store_path, importtime=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "evstore.cli" in mods
    assert _heavy(mods) == []


def test_bench_list() -> None:
    out, mods = _evstore("bench", "--list", importtime=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == list(bench.WORKLOADS)
    assert "evstore.bench.runner" in mods


def test_bench_help_is_complete() -> None:
    out, _ = _evstore("bench", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: evstore bench [-h] [--quick]")
    assert "physical floor" in out.stdout  # the description
    for opt in ("--quick", "--scale", "--repeat", "--json", "--workloads", "--backends", "--dir", "--no-progress",
                "--list", "--total", "--stream", "--aggregate", "--appends1", "--appends100", "--conflicts",
                "--crash"):
        assert opt in out.stdout


def test_bench_errors_are_one_line() -> None:
    out, _ = _evstore("bench", "--workloads", "nope", "--no-progress")
    assert out.returncode == 1
    assert out.stderr.startswith("evstore: unknown workload 'nope'") and out.stderr.count("\n") == 1
    out, _ = _evstore("bench", "--no-such-option")
    assert out.returncode == 2 and "usage: evstore bench" in out.stderr


def test_importing_the_package_loads_nothing_else() -> None:
    code = ("import sys, evstore.bench; "
            "print(sorted(m for m in sys.modules if m.startswith(('evstore.bench.', 'eventsourcing'))))")
    out = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_api() -> None:
    for name in ("run", "format_table", "Row", "Sizes", "Target", "Workload", "WORKLOADS", "TARGETS", "BACKENDS",
                 "machine", "add_parser", "add_arguments", "main", "Ctx", "Dataset", "PAYLOAD", "TOPICS",
                 "BenchAggregate"):
        assert getattr(bench, name) is not None, name
    assert set(bench.__all__) <= set(dir(bench))
    with pytest.raises(AttributeError):
        bench.no_such_name  # noqa: B018


def test_every_target_is_one_definition() -> None:
    assert {name: t.text for name, t in bench.TARGETS.items()} == {
        "append1_fsync": ">= 90% of pwrite+fdatasync and >= 1.2x SQLite",
        "append1_fsync_8threads": ">= 5x SQLite (group commit)",
        "append100_fsync": ">= 80% of pwrite+fdatasync and >= 3x SQLite",
        "append1_os": ">= 0.5x in-memory",
        "es_append1_fsync_8threads": ">= 4x SQLite (through the recorder)",
        "es_append100_fsync": ">= 2.5x SQLite (through the recorder)",
        "commit_cpu_100": "<= 40 us/commit",
        "aggregate_load_10": ">= 15x SQLite (SQLite: select_events)",
        "es_aggregate_load_10": ">= 6x SQLite",
        "repository_get_snapshot": "faster than SQLite",
        "append_conflict": ">= 5x SQLite",
        "read_stream_100k": ">= 5x SQLite select_events",
        "read_all": ">= 2,000,000 events/s",
        "append1_fsync_100tasks": ">= 8 threads and >= 5x SQLite",
        "loop_lag_appends_100tasks": "p99 <= 2 ms (CPU time)",
        "read_all_async": ">= 80% of threaded read_all",
        "loop_lag_replay": "p99 <= 2 ms (CPU time)",
        "es_select_events": ">= 3x SQLite",
        "es_select_notifications": ">= 3x SQLite",
        "repository_get": "faster than SQLite",
        "verify": ">= 1 GB/s (C scan)",
        "open_clean": "< 50 ms",
        "open_after_crash": ">= 200 MB/s of log",
        "bytes_per_event": "<= SQLite",
        "replay_memory": "< 100 MB above baseline",
        "read_category": ">= 80% of read_all per event and >= 5x SQLite",
        "consumer_group_4": ">= 2x one consumer",
    }
    assert all(bench.WORKLOADS[name].target is t for name, t in bench.TARGETS.items()
               if name != "repository_get_snapshot")  # rows of the repository_get workload


def _row(wl: str, backend: str, value: float | None, unit: str = "events/s") -> Row:
    return Row(wl, backend, 1, value, unit)


def test_judge() -> None:
    rows = [
        _row("append1_os", bench.C, 40.0), _row("append1_os", bench.SQLITE, 10.0),
        _row("append100_fsync", bench.C, 70.0), _row("append100_fsync", bench.SQLITE, 30.0),
        _row("append100_fsync", bench.REF, 100.0),
        _row("open_clean", bench.C, 60.0, "ms"), _row("open_clean", bench.SQLITE, 30.0, "ms"),
        _row("read_all", bench.C, None),
        _row("read_1000_streams", bench.C, 5.0),
    ]
    judge(rows, bench.TARGETS)
    os_c, os_sq, a100, _, _, open_c, _, read_all, streams = rows
    assert (os_c.target, os_c.met, os_c.note, os_c.vs_sqlite) == (">= 0.5x in-memory", None, "", 4.0)  # no peer
    assert os_sq.met is None and os_sq.target == "" and os_sq.vs_sqlite == 1.0
    assert (a100.met, a100.note) == (False, "0.70x pwrite+fdatasync")  # 2.3x SQLite, 70% of the device
    assert (open_c.met, open_c.vs_sqlite) == (False, 0.5)  # lower is better in ms
    assert (read_all.target, read_all.met) == (">= 2,000,000 events/s", None)
    assert (streams.target, streams.met) == ("", None)
    rows = [_row("append1_os", bench.C, 60.0), _row("append1_os", bench.POPO, 100.0)]
    judge(rows, bench.TARGETS)
    assert (rows[0].met, rows[0].note) == (True, "0.60x in-memory")
    rows = [_row("append100_fsync", bench.C, 90.0), _row("append100_fsync", bench.SQLITE, 30.0),
            _row("append100_fsync", bench.REF, 100.0), _row("append100_fsync", bench.REF, 300.0)]
    judge(rows, bench.TARGETS)  # judged on the first reference (pwrite into allocated space)
    assert (rows[0].met, rows[0].note) == (True, "0.90x pwrite+fdatasync")
    rows = [_row("commit_cpu_100", bench.C, 39.0, "us/commit"), _row("commit_cpu_100", bench.SQLITE, 390.0, "us/commit")]
    judge(rows, bench.TARGETS)
    assert (rows[0].met, rows[0].vs_sqlite) == (True, 10.0)


def test_a_small_run() -> None:
    rows = bench.run(scale=0.001, repeat=1, workloads=["read_all", "verify", "bytes_per_event"],
                     backends=("c", "sqlite", "ref"), progress=False)
    assert [(r.workload, r.backend) for r in rows] == [
        ("read_all", bench.C), ("read_all", bench.SQLITE), ("read_all", bench.REF),
        ("verify", bench.C), ("verify", bench.SQLITE), ("verify", bench.REF),
        ("bytes_per_event", bench.C), ("bytes_per_event", bench.SQLITE)]
    judged = {r.workload: r.met for r in rows if r.target}
    assert set(judged) == {"read_all", "verify", "bytes_per_event"} and None not in judged.values()
    table = bench.format_table(rows)
    assert table.splitlines()[0].startswith("| workload") and len(table.splitlines()) == 2 + len(rows)
    with pytest.raises(ValueError, match="unknown workload"):
        bench.run(workloads=["nope"])


def test_the_eventsourcing_workloads_run() -> None:
    """The recorder and application workloads, under whichever eventsourcing version is installed
    (.ci/run runs this file under 9.5 and 10)."""
    rows = bench.run(scale=0.001, repeat=1, workloads=["es_select_events", "es_select_notifications", "repository_get"],
                     backends=("c", "sqlite", "popo"), progress=False)
    got: dict[str, dict[str, int]] = {}
    for r in rows:
        got.setdefault(r.workload, {})[r.backend] = r.n
    assert sorted(got) == ["es_select_events", "es_select_notifications", "repository_get", "repository_get_snapshot"]
    for workload, ns in got.items():  # every backend read the same events
        assert sorted(ns) == sorted((bench.C, bench.SQLITE, bench.POPO)) and len(set(ns.values())) == 1, workload
    assert all(r.value and r.value > 0 for r in rows)


def test_a_small_run_of_the_asyncio_workloads() -> None:
    names = ["append1_fsync_100tasks", "loop_lag_appends_100tasks", "read_all_async", "loop_lag_replay"]
    rows = bench.run(scale=0.001, repeat=1, workloads=names, backends=("c", "sqlite", "ref"), progress=False)
    assert [r.workload for r in rows if r.backend == bench.C] == [names[0], names[1], names[2], names[2], names[3]]
    assert {r.workload for r in rows if r.backend == bench.SQLITE} == set(names)
    assert {r.workload for r in rows if r.backend == bench.REF} == set(names)
    judged = {r.workload: r for r in rows if r.target}
    assert set(judged) == set(names) and all(r.met is not None for r in judged.values())
    assert "the 8 threads" in judged[names[0]].note and "of threaded read_all" in judged[names[2]].note
    assert all(r.unit == "ms" and "wall-clock p99" in r.note for r in rows if "lag" in r.workload)


def test_memory_reader_is_a_module(store_path: str) -> None:
    out = subprocess.run([sys.executable, "-m", "evstore.bench.memory_reader", store_path, "c"], env=python_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)
    assert m["n"] == 1 and m["hwm"] >= m["base_rss"] > 0


def test_crash_writer_is_a_module(tmp_path: Path) -> None:
    path = str(tmp_path / "c.evs")
    p = subprocess.Popen([sys.executable, "-m", "evstore.bench.crash_writer", path, "python", "200"],
                         env=python_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "done"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        if p.stdout:
            p.stdout.close()
    with evstore.open(path) as s:
        assert s.head() == 200


def test_timed_threads_times_from_the_release_only() -> None:
    """What the workers do before `ready()` (building their batches) is not part of the figure."""
    import time

    from evstore.bench.appends import timed_threads

    def work(ready: Callable[[], None]) -> None:
        time.sleep(0.3)  # set-up, not timed
        ready()
        time.sleep(0.05)  # the timed work

    dt = timed_threads(3, work)
    assert 0.05 <= dt < 0.25, dt


def test_timed_threads_raises_a_worker_error() -> None:
    from evstore.bench.appends import timed_threads

    def work(ready: Callable[[], None]) -> None:
        raise ValueError("before ready")

    with pytest.raises(ValueError, match="before ready"):
        timed_threads(2, work)
