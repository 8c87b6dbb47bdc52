"""Hostile checks of the vouching syncs of the log (evstore/storage/segments.py's `checked_sync` and
`vouched`, evstore/engine/groupcommit.py's `await_durable` and `sync_log`): two syncs of the log
that fail at the same time, and a group sync with no active segment to sync while another thread's
sync of the log is still under way."""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

import pytest

import evstore
from evstore.storage.segments import Log
from tests.support import ev


def _in_thread(name: str, fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e

    t = threading.Thread(target=run, name=name)
    t.start()
    return t, outcome


def _both_fail(monkeypatch: pytest.MonkeyPatch, log: Log, user: str) -> tuple[threading.Event, threading.Event]:
    """Once `armed`, the indexer thread's next fdatasync of the log and the next one of the thread
    named `user` both fail with EIO (a device that keeps failing write-backs): the indexer's, under
    way first, fails first; the user's, under way meanwhile, fails just after. Returns (armed,
    indexer_entered)."""
    real = os.fdatasync
    armed, entered, user_in = threading.Event(), threading.Event(), threading.Event()
    state = {"user": False}

    def fdatasync(fd: int) -> None:
        name = threading.current_thread().name
        if armed.is_set() and name.startswith("evstore-indexer"):
            armed.clear()
            entered.set()
            user_in.wait(5)  # the user's sync has its ticket and is in its fdatasync
            raise OSError(errno.EIO, "Input/output error")
        if name == user and not state["user"]:
            state["user"] = True
            user_in.set()
            deadline = time.monotonic() + 5
            while log.sync_failed is None and time.monotonic() < deadline:  # the indexer's failed
                time.sleep(0.005)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return armed, entered


def test_sync_raises_store_failed_when_its_own_sync_fails_after_another_did(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="os": `store.sync()`'s fdatasync of the log fails (EIO) just after the indexer
    thread's, which overlapped it, failed. sync() must raise StoreFailed (its documented error, and
    the one a single failure gives), not the bare OSError: `sync_log` takes any failed sync whose
    error is not the one latched first for a failure to duplicate the descriptor, and re-raises it
    as is."""
    store = evstore.open(store_path, log_impl=impl, durability="os")
    log = store._w().log
    v = store.append("s", [ev("T")]).last_version
    time.sleep(0.1)  # the indexer thread has synced and indexed it
    armed, entered = _both_fail(monkeypatch, log, "user-sync")
    armed.set()
    store.append("s", [ev("T")], expected_version=v)  # kicks the indexer thread
    assert entered.wait(5)
    t, outcome = _in_thread("user-sync", store.sync)
    t.join(10)
    assert not t.is_alive()
    assert log.sync_failed is not None
    try:
        assert isinstance(outcome["error"], evstore.StoreFailed), repr(outcome["error"])
    finally:
        with pytest.raises(evstore.EvstoreError):
            store.close()


def test_close_says_commits_may_be_lost_when_its_sync_fails_after_another_did(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="os": close()'s final fdatasync of the log fails (EIO) just after the indexer
    thread's, which overlapped it, failed. close() must raise StoreFailed (the last acknowledged
    commit may not be durable), not IndexUnavailable saying "every acknowledged commit is in the
    log": the second failure is taken for an index write's and the first never reaches close()."""
    store = evstore.open(store_path, log_impl=impl, durability="os")
    log = store._w().log
    v = store.append("s", [ev("T")]).last_version
    time.sleep(0.1)
    armed, entered = _both_fail(monkeypatch, log, "user-close")
    armed.set()
    store.append("s", [ev("T")], expected_version=v)
    assert entered.wait(5)
    t, outcome = _in_thread("user-close", store.close)
    t.join(10)
    assert not t.is_alive()
    assert log.sync_failed is not None
    err = outcome["error"]
    assert isinstance(err, evstore.StoreFailed), repr(err)


def test_a_group_sync_with_no_active_segment_waits_for_a_sync_under_way(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="fsync". `sync()`'s fdatasync of the log is under way (it fails, EIO, late); an
    append writes a commit to the active segment; before its group sync takes the descriptor, another
    append's roll seals the segment (its fsync succeeds: the error was the other sync's to see) and
    cannot make the next (ENOSPC). The group sync finds no active segment and acknowledges the commit
    without asking whether a sync of the log begun before it failed (the seal vouches for nothing:
    "the syncs that acknowledge commits wait for it"). The append must not succeed."""
    seg_size = 64 * 1024
    store = evstore.open(store_path, log_impl=impl, durability="fsync", segment_size=seg_size)
    core = store._w()
    log, group = core.log, core.group
    v = 0
    while log.active is None or log.active.end + 3000 < seg_size:
        v = store.append("s", [ev("T", b"x" * 1000)], expected_version=v).last_version
    first = log.active.first

    real_sync, real_new, real_await = os.fdatasync, Log._new_segment, group.await_durable
    user_in, release_user, rolled = threading.Event(), threading.Event(), threading.Event()

    def fdatasync(fd: int) -> None:
        if threading.current_thread().name == "user-sync":
            user_in.set()
            release_user.wait(5)
            raise OSError(errno.EIO, "Input/output error")
        real_sync(fd)

    def new_segment(self: Log, first_position: int) -> None:
        if threading.current_thread().name == "roller":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_new(self, first_position)

    def await_durable(seq: int, index: bool = True) -> None:
        if threading.current_thread().name == "appender":
            rolled.wait(5)  # descheduled between its write and its group sync
        real_await(seq, index)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(Log, "_new_segment", new_segment)
    monkeypatch.setattr(group, "await_durable", await_durable)

    tu, user = _in_thread("user-sync", store.sync)
    assert user_in.wait(5)  # sync()'s fdatasync of the log is under way
    # (append_many: an append of its own, not queued in the combiner behind the roller's)
    ta, appended = _in_thread("appender", lambda: store.append_many([("s", [ev("T")], v)]))
    deadline = time.monotonic() + 5
    while group.written_seq == group.durable_seq and time.monotonic() < deadline:  # its commit is written
        time.sleep(0.001)
    assert group.written_seq == group.durable_seq + 1
    tr, roller = _in_thread("roller", lambda: store.append("r", [ev("T", b"y" * 8000)]))
    tr.join(5)
    assert isinstance(roller["error"], evstore.StorageError), repr(roller.get("error"))
    assert log.sync_fd() < 0 and log.active.first == first  # sealed, no next segment
    rolled.set()
    ta.join(0.5)  # a fixed group sync waits for the sync under way: released below
    release_user.set()
    ta.join(5)
    tu.join(5)
    assert not ta.is_alive() and not tu.is_alive()
    assert isinstance(user["error"], evstore.StoreFailed), repr(user["error"])
    try:
        assert isinstance(appended["error"], evstore.StoreFailed), (
            f"the append was acknowledged ({appended}) although a sync of the log under way as its commit "
            "was written failed")
    finally:
        store.close()


class _InterruptedOnce(set):  # type: ignore[type-arg]
    """A stand-in for the log's set of syncs under way whose first `discard` raises KeyboardInterrupt
    first: a Ctrl-C delivered inside the bookkeeping that ends a sync."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.interrupts = 0

    def discard(self, item: Any) -> None:
        if self.interrupts == 0:
            self.interrupts += 1
            raise KeyboardInterrupt
        super().discard(item)


def test_an_interrupt_inside_a_syncs_bookkeeping_leaves_no_ticket_behind(
        store_path: str, impl: str) -> None:
    """durability="os": Ctrl-C lands as `store.sync()`'s sync of the log gives its ticket back. The
    interrupt reaches the caller, but the ticket must not stay behind: every later sync of the handle
    waits for the syncs begun before it, and would wait for that one for ever (a store whose next
    sync, and so its next durable append and its close, never returns)."""
    store = evstore.open(store_path, log_impl=impl, durability="os")
    log = store._w().log
    store.append("s", [ev("T")])
    with log.fd_lock:
        log.syncing = _InterruptedOnce(log.syncing)
    with pytest.raises(KeyboardInterrupt):
        store.sync()
    assert log.syncing.interrupts == 1
    assert not log.syncing, f"tickets left behind: {sorted(log.syncing)}"
    store.append("s", [ev("T")])
    t, outcome = _in_thread("later-sync", store.sync)
    t.join(5)
    alive = t.is_alive()
    if alive:  # let the stuck sync go, so that the test run ends
        with log.fd_lock:
            log.syncing.clear()
            log.syncs_done.notify_all()
        t.join(5)
    assert not alive, "a later sync waited for the interrupted one's ticket"
    assert outcome["error"] is None, repr(outcome["error"])
    store.close()
    with evstore.open(store_path, log_impl=impl) as again:
        assert again.stream_version("s") == 2
