"""Hostile checks of what a failed sync of the log leaves behind (evstore/storage/segments.py's
`checked_sync` and its `sync_failed` latch, evstore/engine/groupcommit.py's `sync_log`): syncs that
overlap a failing one, close() after one, and a roll that must not wait for another thread's sync."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from typing import Any

import pytest

import evstore
import evstore.aio
from tests.support import ev


def _racing_syncs(monkeypatch: pytest.MonkeyPatch, user: str) -> tuple[threading.Event, threading.Event]:
    """Once `armed`, the indexer thread's next fdatasync of the log blocks until the thread named
    `user` has completed an fdatasync of its own (which succeeds), and then fails with EIO: the
    kernel reported the write-back error to the indexer's sync, and the user's sync that overlapped
    it succeeded although the pages are gone. Returns (armed, entered)."""
    real = os.fdatasync
    armed, entered, user_synced = threading.Event(), threading.Event(), threading.Event()

    def fdatasync(fd: int) -> None:
        name = threading.current_thread().name
        if armed.is_set() and name.startswith("evstore-indexer"):
            armed.clear()
            entered.set()
            user_synced.wait(5)
            time.sleep(0.05)  # the user's sync is past its fdatasync, asking whether it vouches
            raise OSError(errno.EIO, "Input/output error")
        real(fd)
        if name == user:
            user_synced.set()

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return armed, entered


def _in_thread(name: str, fn: Any) -> dict[str, BaseException | None]:
    outcome: dict[str, BaseException | None] = {}

    def run() -> None:
        try:
            fn()
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join(10)
    assert not t.is_alive()
    return outcome


def test_sync_does_not_succeed_when_a_sync_it_overlapped_failed(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="os": `store.sync()`'s fdatasync of the log succeeds while the indexer thread's,
    under way at the same time, fails (EIO): the error was the indexer's to see, and the pages of the
    commits since the last good sync may be gone. `sync()` must raise, not return as if they were
    durable."""
    store = evstore.open(store_path, log_impl=impl, durability="os")
    group = store._w().group
    v = store.append("s", [ev("T")]).last_version
    time.sleep(0.1)  # the indexer thread has synced and indexed it
    armed, entered = _racing_syncs(monkeypatch, "user-sync")
    armed.set()
    v = store.append("s", [ev("T")], expected_version=v).last_version  # kicks the indexer thread
    assert entered.wait(5)
    outcome = _in_thread("user-sync", store.sync)
    assert group.log_synced_seq < v  # the failed sync covered the last commit; no later one vouches
    assert isinstance(outcome["error"], evstore.StoreFailed), outcome["error"]
    with pytest.raises(evstore.StoreFailed):
        store.close()


def test_close_does_not_succeed_when_its_final_log_sync_vouches_for_nothing(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="os": close()'s final fdatasync of the log succeeds while the indexer thread's,
    under way at the same time, fails (EIO). close() must not return as if its final sync had made
    every acknowledged commit durable."""
    store = evstore.open(store_path, log_impl=impl, durability="os")
    group = store._w().group
    v = store.append("s", [ev("T")]).last_version
    time.sleep(0.1)
    armed, entered = _racing_syncs(monkeypatch, "user-close")
    armed.set()
    v = store.append("s", [ev("T")], expected_version=v).last_version
    assert entered.wait(5)
    outcome = _in_thread("user-close", store.close)
    assert group.log_synced_seq < v and group.failed is not None
    assert isinstance(outcome["error"], evstore.StoreFailed), outcome["error"]
    with evstore.open(store_path, log_impl=impl) as again:  # the log still holds both (nothing was lost here)
        assert again.stream_version("s") == v


def test_close_reports_acknowledged_commits_no_sync_vouched_for(store_path: str, impl: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="os": the indexer thread's fdatasync fails (EIO) after appends that were
    acknowledged; nothing else is appended. close() raises StoreFailed: those commits may be lost,
    and close is the last place their writer can learn it."""
    store = evstore.open(store_path, log_impl=impl, durability="os")
    v = store.append("s", [ev("T")]).last_version
    time.sleep(0.1)
    real = os.fdatasync
    failed = threading.Event()

    def fdatasync(fd: int) -> None:
        if threading.current_thread().name.startswith("evstore-indexer") and not failed.is_set():
            failed.set()
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    store.append("s", [ev("T")], expected_version=v)
    assert failed.wait(5)
    with pytest.raises(evstore.StoreFailed, match="may not be durable"):
        store.close()


def test_a_roll_on_the_event_loop_does_not_wait_for_the_indexers_fdatasync(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """evstore.aio, durability="os": the indexer thread's fdatasync of the log is slow (a loaded
    disk: held here for 2 s). An append on the loop that rolls the segment must not wait for it:
    a seal fsync that waited for it (as when both ran under `fd_lock`) would stall the event loop
    (and the writer lock, and with it every other appender)
    stalls for another thread's I/O. (Measured with a 100 ms fdatasync while the seal waited for it
    under that lock: the worst append on the loop took 95 ms, against 4 ms.)"""
    real = os.fdatasync
    armed, entered, release = threading.Event(), threading.Event(), threading.Event()

    def fdatasync(fd: int) -> None:
        if armed.is_set() and threading.current_thread().name.startswith("evstore-indexer"):
            armed.clear()
            entered.set()
            release.wait(5)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    seg_size = 64 * 1024

    async def main() -> float:
        async with evstore.aio.open(store_path, log_impl=impl, durability="os", segment_size=seg_size) as store:
            log = store._c().log
            v = 0
            while log.active is None or log.active.end + 3000 < seg_size:
                v = (await store.append("s", [ev("T", b"x" * 1000)], expected_version=v)).last_version
            await asyncio.sleep(0.1)  # the indexer thread is idle
            first = log.active.first
            armed.set()
            v = (await store.append("s", [ev("T")], expected_version=v)).last_version  # kicks it
            for _ in range(500):
                if entered.is_set():
                    break
                await asyncio.sleep(0.01)
            assert entered.is_set()
            timer = threading.Timer(2.0, release.set)  # the slow fdatasync ends after 2 s
            timer.start()
            try:
                t0 = time.monotonic()
                v = (await store.append("s", [ev("T", b"y" * 8000)], expected_version=v)).last_version
                took = time.monotonic() - t0
            finally:
                release.set()
                timer.cancel()
            assert log.active.first != first  # that append rolled
            return took

    took = asyncio.run(main())
    assert took < 1.0, f"the append that rolled blocked the event loop for {took:.2f} s"


def test_close_syncs_the_log_of_a_store_failed_by_damage(store_path: str, impl: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="os": a read found damage and latched the store failed (no sync failed). close()
    still makes the acknowledged commits durable (it skipped the log's final sync, and returned as if
    they were), and raises nothing: every one of them was synced."""
    store = evstore.open(store_path, log_impl=impl, durability="os")
    group = store._w().group
    v = 0
    for _ in range(20):
        v = store.append("s", [ev("T")], expected_version=v).last_version
    group.log_damage(store_path, 0, "a damaged record met by a read")
    real = os.fdatasync
    closing: list[int] = []

    def fdatasync(fd: int) -> None:
        if threading.current_thread().name == "MainThread":
            closing.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    store.close()
    assert closing, "close() made no sync of the log"
    assert group.log_synced_seq == group.written_seq == v
