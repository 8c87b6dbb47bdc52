"""Tracking records in commits, and subscriptions that never skip or repeat an event."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

import evstore
from evstore import NewEvent

from conftest import PY, python_env
from facade import AsyncApi, SyncApi

Api = SyncApi | AsyncApi  # the threaded or the asyncio API (the `api` fixture)


def ev(t: str = "T") -> NewEvent:
    return NewEvent(t, b"x")


def test_tracking_is_written_with_the_events_and_must_advance(api: Api) -> None:
    assert api.max_tracking("up") is None
    api.append_many([("s", [ev()], evstore.NO_STREAM)], tracking=("up", 5))
    assert api.max_tracking("up") == 5 and api.has_tracking("up", 5) and not api.has_tracking("up", 4)
    api.append_many([], tracking=("up", 9))  # tracking alone
    assert api.max_tracking("up") == 9 and api.head() == 1
    before = api.head()
    with pytest.raises(evstore.TrackingConflict) as info:
        api.append_many([("s", [ev()], 1)], tracking=("up", 9))
    assert (info.value.position, info.value.current) == (9, 9)
    assert api.head() == before and api.stream_version("s") == 1  # the events were not written either
    assert api.max_tracking("up2") is None and api.max_tracking("u") is None  # names do not bleed
    api.append_many([], tracking=("up2", 1))
    assert api.max_tracking("up") == 9
    for bad, exc in [(("up", 0), ValueError), (("up", "1"), TypeError), (("a\x00b", 1), ValueError),
                     ("up", TypeError), (("", 1), ValueError)]:
        with pytest.raises(exc):
            api.append_many([], tracking=bad)  # type: ignore[arg-type]


def test_tracking_survives_reopen_and_index_rebuild(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append_many([("s", [ev()], 0)], tracking=("up", 3))
        s.append_many([], tracking=("up", 7))
    shutil.rmtree(os.path.join(store_path, "index"))
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.max_tracking("up") == 7 and s.has_tracking("up", 3)
        with pytest.raises(evstore.TrackingConflict):
            s.append_many([], tracking=("up", 7))


def test_subscription_catches_up_then_follows_new_commits(api: Api) -> None:
    for i in range(5):
        api.append("s", [ev("A"), ev("B")])
    got = api.follow(gt=3, timeout=5, until=40, appends=[("t", [ev("A")])] * 30)
    assert got == list(range(4, 41))


def test_subscription_type_filter_and_timeout(api: Api) -> None:
    for c in range(15):  # more than one internal batch
        api.append("s", [ev("A" if i % 3 else "B") for i in range(c * 100, c * 100 + 100)])
    t0 = time.monotonic()
    positions = api.follow(types=["B"], timeout=0.2)
    assert positions == [i + 1 for i in range(1500) if i % 3 == 0]
    assert time.monotonic() - t0 >= 0.2


def test_subscription_stop_from_another_thread(store: evstore.EventStore) -> None:
    sub = store.subscribe()
    threading.Timer(0.2, sub.stop).start()
    assert list(sub) == []


def test_subscription_sees_commits_of_a_writer_process(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev()])
    with evstore.open(store_path, readonly=True, log_impl=impl) as reader:
        code = (
            "import evstore\n"
            f"with evstore.open({store_path!r}, log_impl={impl!r}, segment_size=4096) as s:\n"
            "    for i in range(200):\n"
            "        s.append('w', [evstore.NewEvent('T', bytes(100))])\n"
        )
        proc = subprocess.Popen([PY, "-c", code], env=python_env())
        positions = []
        for e in reader.subscribe(timeout=10):
            positions.append(e.position)
            if e.position == 201:
                break
        assert proc.wait(timeout=60) == 0
    assert positions == list(range(1, 202))


@pytest.mark.parametrize("durability", ["os", "fsync"])
def test_commits_are_seen_by_other_processes_while_the_writer_stays_open(store_path: str, impl: str,
                                                                         durability: str) -> None:
    """The writer's indexer, woken by the commits (a wake already pending is not renewed), indexes
    them all with nobody reading or closing in the writer: 4 threads x 50 appends."""
    code = (
        "import evstore, threading, time\n"
        f"s = evstore.open({store_path!r}, log_impl={impl!r}, durability={durability!r})\n"
        "def work(k):\n"
        "    for i in range(50):\n"
        "        s.append(f'w{k}', [evstore.NewEvent('T', b'x')])\n"
        "ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print('written', flush=True)\n"
        "time.sleep(30)\n"  # still open: the commits must reach readers without a close
    )
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("init", [NewEvent("T", b"")])
    proc = subprocess.Popen([PY, "-c", code], env=python_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        with evstore.open(store_path, readonly=True, log_impl=impl) as r:
            deadline = time.monotonic() + 5
            while r.head() < 201 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert r.head() == 201  # indexed by the writer's timer, well within a second
            assert [r.stream_version(f"w{k}") for k in range(4)] == [50] * 4
    finally:
        proc.kill()
        proc.wait()


def test_os_durability_reads_see_own_and_other_threads_writes(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        seen = []

        def reader() -> None:
            seen.append(s.stream_version("x"))

        for i in range(1, 20):
            s.append("x", [NewEvent("T", b"")])
            assert s.stream_version("x") == i and s.head() == i
            t = threading.Thread(target=reader)
            t.start()
            t.join()
        assert seen == list(range(1, 20))
