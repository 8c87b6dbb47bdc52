"""durability="os": how the index keeps up with the log (evstore/engine/groupcommit.py).

The indexer thread fdatasyncs the log every `INDEX_DELAY`; the appending thread writes what that
sync covered to the index at its next append, and the thread itself when no append came. These
tests hold the index to three promises: it never covers a commit that no completed fdatasync of
the log covered (a power cut could take it); it keeps up with one thread of small appends (an
index thread writing during the appends fell behind without bound); and a failed index write in
the appending thread fails no append.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
import time
from typing import Any

import pytest

import evstore
import evstore.aio
from evstore.storage.index import CHECKPOINT, Index
from evstore.storage.segments import Log
from tests.conftest import PY, python_env
from tests.support import ev


def other_process_version(path: str, stream: str) -> int:
    code = f"import evstore; print(evstore.open({path!r}, readonly=True).stream_version({stream!r}))"
    return int(subprocess.run([PY, "-c", code], env=python_env(), capture_output=True, text=True,
                              check=True).stdout)


class SyncedLog:
    """Records, at each completed `os.fdatasync` or `os.fsync`, where the active log segment ended when it began;
    checks every index write's checkpoint against them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: evstore.EventStore) -> None:
        self.log = store._w().log
        self.synced: list[tuple[int, int]] = []  # (segment's first position, its end), in sync order
        self.checked = 0
        self.bad: list[str] = []
        real_write = Index.write

        def recording(real: Any) -> Any:
            def sync(fd: int) -> None:  # the log's syncs: the indexer's fdatasync, a roll's fsync
                seg = self.log.active
                at = (seg.first, seg.end) if seg is not None else (0, 0)
                real(fd)
                self.synced.append(at)
            return sync

        def write(index: Index, batch: Any) -> None:
            if batch.checkpoint is not None:
                seg, end, _next = CHECKPOINT.unpack(batch.checkpoint)
                top = max(self.synced, default=(0, 0))
                if not (top[0] > seg or (top[0] == seg and top[1] >= end)):
                    self.bad.append(f"checkpoint {(seg, end)} beyond the last synced log end {top}")
                self.checked += 1
            real_write(index, batch)

        monkeypatch.setattr(os, "fdatasync", recording(os.fdatasync))
        monkeypatch.setattr(os, "fsync", recording(os.fsync))
        monkeypatch.setattr(Index, "write", write)


def test_the_index_never_covers_a_commit_no_log_sync_covered(store_path: str, impl: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = evstore.open(store_path, log_impl=impl, durability="os", segment_size=64 * 1024)
    watch = SyncedLog(monkeypatch, store)
    group = store._w().group
    v = 0
    # Bursts and pauses: the appending thread indexes what a sync covered during a burst, the
    # indexer thread during a pause; the small segments roll under both.
    for burst in range(12):
        for _ in range(150):
            v = store.append("s", [ev("T", b"x" * 100)], expected_version=v).last_version
        if burst % 3 == 2:
            time.sleep(0.05)
    store.close()
    assert not watch.bad, watch.bad[:3]
    assert watch.checked >= 4, watch.checked  # index writes during the run, not only at close
    assert group.indexed_seq == group.written_seq
    with evstore.open(store_path, log_impl=impl) as again:
        assert again.stream_version("s") == v == 1800
        assert sum(1 for _ in again.read_all()) == 1800


def test_the_index_keeps_up_with_one_thread_of_small_appends(store_path: str, impl: str) -> None:
    """A thread of 1-event appends: the backlog of unindexed commits stays bounded. (With the index
    written by the indexer thread during the appends, the two threads handed the GIL to each other at
    every LMDB put and the backlog grew with every append: 39,000 of 60,000 commits, 3.5 s.) Judged on
    the median of the second half's samples, so that one slow fdatasync of a busy machine does not
    decide it; the backlog that grows is a third of the appends or more there."""
    n = 16_000  # the steady backlog is a lag in time (here 300-600 commits; 2,000 on a loaded machine)
    store = evstore.open(store_path, log_impl=impl, durability="os")
    group = store._w().group
    backlog = []
    for i in range(n):
        store.append("hot", [ev("T", b"x" * 200)], expected_version=i)
        if i % 100 == 0:
            backlog.append(group.written_seq - group.indexed_seq)
    late = sorted(backlog[len(backlog) // 2 :])
    assert late[len(late) // 2] < n // 6, (late[len(late) // 2], max(backlog), n)
    store.close()


def test_an_idle_appender_leaves_its_commits_to_the_indexer_thread(store_path: str, impl: str) -> None:
    store = evstore.open(store_path, log_impl=impl, durability="os")
    group = store._w().group
    for i in range(50):
        store.append("s", [ev("T")], expected_version=i)
    deadline = time.monotonic() + 5
    while group.indexed_seq < group.written_seq and time.monotonic() < deadline:
        time.sleep(0.01)
    assert group.indexed_seq == group.written_seq == 50
    with evstore.open(store_path, readonly=True, log_impl=impl) as other:  # as another process sees it
        assert other.stream_version("s") == 50
    store.close()


def test_a_failed_index_write_in_the_appending_thread_fails_no_append(store_path: str, impl: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = evstore.open(store_path, log_impl=impl, durability="os")
    group = store._w().group
    failing = {"on": True, "n": 0, "threads": set()}
    real = Index._write

    def _write(index: Index, batch: Any) -> None:
        failing["threads"].add(threading.current_thread().name)  # type: ignore[attr-defined]
        if failing["on"]:
            failing["n"] += 1  # type: ignore[operator]
            raise OSError(errno.ENOSPC, "No space left on device")
        real(index, batch)

    monkeypatch.setattr(Index, "_write", _write)
    v = 0
    t_end = time.monotonic() + 0.6
    while time.monotonic() < t_end:  # long enough for several log syncs and index attempts
        v = store.append("s", [ev("T")], expected_version=v).last_version
    assert failing["n"] >= 1
    assert store.stream_version("s") == v  # served from the overlay of durable commits
    failing["on"] = False
    deadline = time.monotonic() + 5
    while group.indexed_seq < group.written_seq and time.monotonic() < deadline:
        time.sleep(0.02)
    assert group.indexed_seq == group.written_seq
    assert sum(1 for _ in store.read_all()) == v
    store.close()


def test_the_event_loop_thread_never_writes_the_index(store_path: str, impl: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """evstore.aio with durability="os": an index write (an LMDB transaction and its fdatasync)
    would stall the loop; the indexer thread makes them all while the loop appends."""
    writers: set[int] = set()
    real = Index.write

    def write(index: Index, batch: Any) -> None:
        writers.add(threading.get_ident())
        real(index, batch)

    monkeypatch.setattr(Index, "write", write)

    async def main() -> int:
        loop_thread = threading.get_ident()
        async with evstore.aio.open(store_path, log_impl=impl, durability="os") as store:
            v = 0
            t_end = time.monotonic() + 0.4
            while time.monotonic() < t_end:
                v = (await store.append("s", [ev("T")], expected_version=v)).last_version
            await asyncio.sleep(0.1)  # the indexer thread writes what the appends left
            assert writers and loop_thread not in writers  # (closing may write the rest in any thread)
        return v

    v = asyncio.run(main())
    assert v > 0
    with evstore.open(store_path, log_impl=impl) as store:
        assert store.stream_version("s") == v


class TrustedSyncs(SyncedLog):
    """SyncedLog for a failing disk: a sync that fails (EIO, once, when `fail` is set) and every sync
    after it vouch for nothing, as a later fdatasync on Linux succeeds after the kernel dropped the
    pages whose write-back failed. Every index write is checked against the syncs before it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: evstore.EventStore, which: str) -> None:
        super().__init__(monkeypatch, store)
        self.fail = False
        self.failed_at: list[tuple[int, int]] = []
        real = getattr(os, which)
        recording = getattr(os, which)  # SyncedLog's recorder

        def sync(fd: int) -> None:
            if self.fail and not self.failed_at:
                seg = self.log.active
                self.failed_at.append((seg.first, seg.end) if seg is not None else (0, 0))
                raise OSError(errno.EIO, "Input/output error")
            if self.failed_at:
                real(fd)  # succeeds, and vouches for nothing
                return
            recording(fd)

        monkeypatch.setattr(os, which, sync)


def test_no_sync_after_a_failed_one_lets_the_index_cover_more(store_path: str, impl: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The indexer thread's fdatasync of the log fails once (EIO) and every later one succeeds: the
    store refuses appends, the indexer thread lives on, and no index transaction covers a commit
    written after the last sync that succeeded (the later syncs advanced it before)."""
    store = evstore.open(store_path, log_impl=impl, durability="os")
    group = store._w().group
    syncs = TrustedSyncs(monkeypatch, store, "fdatasync")
    v = 0
    for _ in range(50):
        v = store.append("s", [ev("T")], expected_version=v).last_version
    time.sleep(0.1)
    syncs.fail = True
    with pytest.raises(evstore.StoreFailed):
        for _ in range(2000):
            v = store.append("s", [ev("T")], expected_version=v).last_version
            time.sleep(0.001)
    assert syncs.failed_at
    good = group.log_synced_seq
    time.sleep(0.2)  # the indexer thread's next rounds: a sync that succeeds, an index write
    with pytest.raises(evstore.StoreFailed):
        store.sync()
    sum(1 for _ in store.read_all())  # a read indexes what is durable first
    assert group.log_synced_seq == good and group.indexed_seq <= good < v
    assert group.indexer is not None and group.indexer.is_alive()
    assert syncs.checked > 0 and syncs.bad == [], syncs.bad
    with pytest.raises(evstore.StoreFailed, match="may not be durable"):  # the commits since `good`
        store.close()


def test_a_failed_seal_fsync_stops_the_index_where_the_last_good_sync_left_it(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="os": a roll's fsync of the segment it seals fails (EIO). The later fdatasyncs of
    the indexer and of a read's flush succeed, and vouch for nothing: the index holds only commits
    synced before the failure."""
    store = evstore.open(store_path, log_impl=impl, durability="os", segment_size=64 * 1024)
    group = store._w().group
    syncs = TrustedSyncs(monkeypatch, store, "fsync")
    v = store.append("s", [ev("T", b"x" * 1000)]).last_version
    time.sleep(0.1)
    syncs.fail = True
    with pytest.raises(evstore.StoreFailed):
        for _ in range(200):
            v = store.append("s", [ev("T", b"x" * 1000)], expected_version=v).last_version
    assert syncs.failed_at
    good = group.log_synced_seq
    time.sleep(0.2)
    sum(1 for _ in store.read_all())
    assert group.log_synced_seq == good and group.indexed_seq <= good < v
    assert syncs.bad == [], syncs.bad
    with pytest.raises(evstore.StoreFailed, match="may not be durable"):
        store.close()
    with evstore.open(store_path, log_impl=impl) as again:  # recovery reads what the log holds
        assert again.stream_version("s") == v


def test_a_group_sync_after_a_seal_took_the_error_fails_its_commit(store_path: str, impl: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """durability="fsync": thread A's commit is written and its fdatasync under way when thread B's
    commit (append_many: not combined with A's) rolls the segment and the seal's fsync meets the
    write-back error (EIO). A's fdatasync
    then succeeds (the error was reported once, to the seal): A's append must fail, not be
    acknowledged."""
    store = evstore.open(store_path, log_impl=impl, durability="fsync", segment_size=64 * 1024)
    group = store._w().group
    store.append("a", [ev("T", b"x" * 30_000)])
    real_datasync, real_fsync = os.fdatasync, os.fsync
    b_done = threading.Event()
    a_syncing = threading.Event()

    def fdatasync(fd: int) -> None:
        if threading.current_thread().name == "A":
            a_syncing.set()
            b_done.wait(5)
        real_datasync(fd)

    def fsync(fd: int) -> None:
        if threading.current_thread().name == "B":
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    outcome: dict[str, BaseException | None] = {}

    def run(name: str, fn: Any) -> None:
        try:
            fn()
            outcome[name] = None
        except BaseException as e:
            outcome[name] = e
        finally:
            if name == "B":
                b_done.set()

    a = threading.Thread(name="A", target=run, args=("A", lambda: store.append("a", [ev("T")], expected_version=1)))
    b = threading.Thread(name="B", target=run,
                         args=("B", lambda: (a_syncing.wait(5), store.append_many([("b", [ev("T", b"y" * 40_000)], evstore.ANY)]))))
    a.start()
    b.start()
    a.join(10)
    b.join(10)
    assert isinstance(outcome["B"], evstore.StoreFailed)
    assert isinstance(outcome["A"], evstore.StoreFailed), outcome["A"]
    assert group.durable_seq < group.written_seq
    store.close()


def test_a_failed_dup_of_the_log_descriptor_does_not_stop_the_indexer(store_path: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE when the indexer thread duplicates the log's descriptor to sync it: the thread retries
    (it had ended on the OSError, and with it the log syncs and the index writes until a reopen)."""
    store = evstore.open(store_path, durability="os")
    group = store._w().group
    real_dup, real_sync = os.dup, os.fdatasync
    state = {"failed": 0, "syncs_after": 0}

    def dup(fd: int) -> int:
        if threading.current_thread().name.startswith("evstore-indexer") and not state["failed"]:
            state["failed"] = 1
            raise OSError(errno.EMFILE, "Too many open files")
        return real_dup(fd)

    def fdatasync(fd: int) -> None:
        if state["failed"]:
            state["syncs_after"] += 1
        real_sync(fd)

    monkeypatch.setattr(os, "dup", dup)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    v = 0
    for _ in range(100):
        v = store.append("s", [ev("T")], expected_version=v).last_version
        time.sleep(0.002)
    deadline = time.monotonic() + 5
    while other_process_version(store_path, "s") != v and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state["failed"]
    assert group.indexer is not None and group.indexer.is_alive()
    assert state["syncs_after"] > 0  # the log is still fdatasynced every INDEX_DELAY
    assert other_process_version(store_path, "s") == v
    store.close()


def test_commits_sealed_by_a_failed_roll_are_indexed_while_the_writer_is_idle(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A roll that sealed and synced its segment but could not make the next (ENOSPC): no segment is
    active to sync, and every commit written is in a synced one; the indexer indexes them."""
    store = evstore.open(store_path, log_impl=impl, durability="os", segment_size=64 * 1024)
    real_new = Log._new_segment
    fail = {"on": False}

    def new_segment(self: Log, first: int) -> None:
        if fail["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_new(self, first)

    monkeypatch.setattr(Log, "_new_segment", new_segment)
    v = store.append("s", [ev("T", b"x" * 1000)]).last_version
    time.sleep(0.2)
    fail["on"] = True
    with pytest.raises(evstore.StorageError):
        while True:
            v = store.append("s", [ev("T", b"x" * 1000)], expected_version=v).last_version
    deadline = time.monotonic() + 5
    while other_process_version(store_path, "s") != v and time.monotonic() < deadline:
        time.sleep(0.1)
    assert other_process_version(store_path, "s") == v > 40
    fail["on"] = False
    store.close()


def test_a_loop_of_small_appends_keeps_the_index_within_its_bound(store_path: str, impl: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """evstore.aio with durability="os": one task of 1-event appends, which starved the indexer thread
    of the GIL (21-34K commits unindexed after 4 s, and growing). Past INDEX_SOFT the worker thread
    catches the index up, and past INDEX_HARD the append awaits it: after every append the backlog is
    within INDEX_HARD; the loop's thread writes no index transaction, and none covers a commit no
    completed log sync covered."""
    from evstore.aio import store as aio_store

    logs: list[SyncedLog] = []
    writers: set[str] = set()
    real = Index.write

    def write(index: Index, batch: Any) -> None:
        writers.add(threading.current_thread().name)
        real(index, batch)

    monkeypatch.setattr(Index, "write", write)
    n = 12_000 if impl == "c" else 4_000

    async def main() -> tuple[int, int]:
        async with evstore.aio.open(store_path, log_impl=impl, durability="os") as store:
            logs.append(SyncedLog(monkeypatch, store))  # type: ignore[arg-type]  # (its `_w` is the same)
            group = store._c().group
            worst = 0
            v = 0
            for _ in range(n):
                v = (await store.append("s", [ev("T", b"x" * 200)], expected_version=v)).last_version
                worst = max(worst, group.written_seq - group.indexed_seq)
            return v, worst

    v, worst = asyncio.run(main())
    assert v == n
    assert worst <= aio_store.INDEX_HARD, worst
    assert "MainThread" not in writers and any(w.startswith("evstore-aio") for w in writers), writers
    assert logs[0].checked > 0 and logs[0].bad == []
    with evstore.open(store_path, log_impl=impl) as store:
        assert store.stream_version("s") == n


def test_a_failing_index_under_a_loop_of_appends_fails_no_append(store_path: str, impl: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's catch-up meets a full disk: the appends go on (each past INDEX_HARD awaits a
    catch-up that fails), and once the disk has room the index takes every commit."""
    from evstore.aio import store as aio_store

    monkeypatch.setattr(aio_store, "INDEX_SOFT", 20)
    monkeypatch.setattr(aio_store, "INDEX_HARD", 50)
    failing = {"on": True, "n": 0}
    real = Index._write

    def _write(index: Index, batch: Any) -> None:
        if failing["on"]:
            failing["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(index, batch)

    monkeypatch.setattr(Index, "_write", _write)

    async def main() -> int:
        async with evstore.aio.open(store_path, log_impl=impl, durability="os") as store:
            group = store._c().group
            v = 0
            for _ in range(400):
                v = (await store.append("s", [ev("T")], expected_version=v)).last_version
            assert failing["n"] >= 2 and group.indexed_seq < 400
            assert await store.stream_version("s") == v  # the overlay serves what is unindexed
            failing["on"] = False
            for _ in range(100):
                v = (await store.append("s", [ev("T")], expected_version=v)).last_version
            deadline = time.monotonic() + 5
            while group.indexed_seq < group.written_seq and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert group.indexed_seq == group.written_seq
            return v

    v = asyncio.run(main())
    assert v == 500
    with evstore.open(store_path, log_impl=impl) as store:
        assert sum(1 for _ in store.read_all()) == 500
