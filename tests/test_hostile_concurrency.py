"""A hostile day without a power cut, the findings about concurrency (one test per finding): closing,
interrupting and forking; readers in other processes; and those found by review (lock order while
pruning snapshots, a forked child and the store's lock, readers across a growing index map, recover
and reindexes, a crash while recording the writer's durability, the map growing under reader
threads)."""

from __future__ import annotations

import errno
import os
import subprocess
import textwrap
import threading
import time

import pytest

import evstore
import evstore.tools as tools
from tests.conftest import PY, python_env
from tests.support import ev, segments


# -- closing, interrupting and forking -------------------------------------------------------------


def test_close_waits_for_an_append_under_way_and_refuses_later_ones(store_path: str, impl: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3: close() returned and released LOCK while another thread's append still wrote."""
    s = evstore.open(store_path, log_impl=impl)
    s.append("s", [ev()])
    entered, release = threading.Event(), threading.Event()
    log = s._c().log
    real_append = log.append

    def slow_append(buf: bytearray, first: int, n: int) -> object:
        entered.set()
        release.wait(5)
        return real_append(buf, first, n)

    monkeypatch.setattr(log, "append", slow_append)
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(s.append("s", [ev("Late")])))
    t.start()
    assert entered.wait(5)
    closed = threading.Event()
    c = threading.Thread(target=lambda: (s.close(), closed.set()))
    c.start()
    time.sleep(0.2)
    assert not closed.is_set(), "close() returned while an append was being written"
    release.set()
    t.join(5)
    c.join(5)
    assert closed.is_set() and results and results[0].last_version == 2  # type: ignore[attr-defined]
    with pytest.raises(evstore.StoreClosed):
        s.append("s", [ev()])
    with evstore.open(store_path, log_impl=impl) as s2:
        assert [e.type for e in s2.read_stream("s")] == ["Happened", "Late"]


def test_an_append_that_starts_while_close_runs_is_refused_with_store_closed(store_path: str, impl: str) -> None:
    s = evstore.open(store_path, log_impl=impl)
    core = s._c()
    extra = evstore.open(store_path)  # a second handle keeps the core alive while the first closes
    with core.wlock:
        core.writer.closing = True
    with pytest.raises(evstore.StoreClosed):
        extra.append("s", [ev()])
    core.writer.closing = False
    extra.close()
    s.close()


def test_after_close_raises_the_same_process_can_reopen(store_path: str, impl: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 14: after close() raised StoreFailed the process could never reopen (StoreLocked)."""
    s = evstore.open(store_path, log_impl=impl)
    s.append("s", [ev()])
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(evstore.StoreFailed):
        s.append("s", [ev()])
    try:
        s.close()
    except evstore.EvstoreError:
        pass
    monkeypatch.setattr(os, "fdatasync", real)
    with evstore.open(store_path, log_impl=impl) as s2:
        assert s2.stream_version("s") >= 1


def test_ctrl_c_during_an_append_does_not_fail_the_store(store_path: str, impl: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 16: a KeyboardInterrupt during the sync marked the store failed for every later write."""
    s = evstore.open(store_path, log_impl=impl)
    real = os.fdatasync
    calls = []

    def interrupted(fd: int) -> None:
        # Python runs a signal's handler in the main thread only: the store's own threads (the
        # zeros written ahead are synced by one) never see a KeyboardInterrupt.
        if threading.current_thread() is threading.main_thread():
            calls.append(fd)
            if len(calls) == 1:
                raise KeyboardInterrupt
        real(fd)

    monkeypatch.setattr(os, "fdatasync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.append("s", [ev("A")])
    r = s.append("s", [ev("B")])  # the store still writes; the interrupted commit is made durable too
    assert r.last_version == 2
    assert [e.type for e in s.read_stream("s")] == ["A", "B"]
    s.close()


def test_a_forked_child_cannot_use_the_parents_handle(store_path: str, impl: str) -> None:
    """Finding 4: after fork() parent and child were both writers and the store was corrupted."""
    s = evstore.open(store_path, log_impl=impl)
    s.append("s", [ev("Parent")])
    assert s.head() == 1  # indexed now, so that a reader process sees it
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it must never return into the test run
        try:
            _child_uses_parents_store(s, store_path, impl, r, w)
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    got = os.read(r, 1000).decode()
    os.close(r)
    assert status == 0 and got == "forked forked locked 1", got
    s.append("s", [ev("Parent again")])
    assert [e.type for e in s.read_stream("s")] == ["Parent", "Parent again"]
    s.close()
    assert tools.verify(store_path).ok


def _child_uses_parents_store(s: evstore.EventStore, store_path: str, impl: str, r: int, w: int) -> None:
    if True:
        os.close(r)
        out = []
        try:
            s.append("s", [ev("Child")])
            out.append("appended")
        except evstore.ForkedStore:
            out.append("forked")
        try:
            s.read_stream("s")
            out.append("read")
        except evstore.ForkedStore:
            out.append("forked")
        try:
            evstore.open(store_path, log_impl=impl)
            out.append("second writer")
        except evstore.StoreLocked:
            out.append("locked")
        try:
            with evstore.open(store_path, readonly=True) as ro:
                out.append(str(ro.head()))
        except BaseException as e:
            out.append(repr(e))
        s.close()  # closing the parent's handle in the child must not touch the parent's store
        os.write(w, " ".join(out).encode())


# -- readers in other processes ----------------------------------------------------------------------


READER = textwrap.dedent("""
    import sys, evstore
    s = evstore.open(sys.argv[1], readonly=True)
    sub = s.subscribe(gt=0, timeout=5.0)
    print("ready", s.head(), flush=True)
    for line in sys.stdin:
        want = int(line)
        got = []
        for e in sub:
            got.append(e.position)
            if e.position >= want:
                break
        n = sum(1 for _ in s.read_all())
        print("ok", n, got[-1] if got else 0, flush=True)
""")


def test_a_reader_process_keeps_reading_across_a_roll_of_the_segment_it_mapped(store_path: str,
                                                                               impl: str) -> None:
    """Finding 11: a reader got a false CorruptedError after the writer rolled a segment it had mapped
    while it was active; a live subscription in a reader died the same way."""
    w = evstore.open(store_path, log_impl=impl, segment_size=8192)
    w.append("s", [ev("T", b"first")])
    p = subprocess.Popen([PY, "-c", READER, store_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=python_env())
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().split()[0] == "ready"
        head = 1
        for rnd in range(4):
            for i in range(40):  # grows the mapped segment, then rolls past it
                head = w.append("s", [ev("T", b"%d-%d" % (rnd, i) + b"." * 100)]).last_position
            p.stdin.write(f"{head}\n")
            p.stdin.flush()
            line = p.stdout.readline().split()
            assert line == ["ok", str(head), str(head)], (line, p.stderr.read() if not line else "")
        assert len(segments(store_path)) > 2
    finally:
        p.kill()
        p.wait()
        w.close()


def test_reader_threads_listing_new_segments_at_once_list_each_once(store_path: str, impl: str) -> None:
    """Review: two reader threads could add the same new segment twice (no lock in load_segments)."""
    from evstore.format import codec as _impl
    from evstore.storage.segments import Log

    w = evstore.open(store_path, log_impl=impl, segment_size=4096)
    log = Log(os.path.join(store_path, "log"), _impl.load(impl), segment_size=1 << 40, writable=False)
    stop = threading.Event()

    def lister() -> None:
        while not stop.is_set():
            log.load_segments()

    threads = [threading.Thread(target=lister) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        w.append("s", [ev("T", b"x" * 300)])
    stop.set()
    for t in threads:
        t.join()
    log.load_segments()
    firsts = [s.first for s in log.segments]
    assert firsts == sorted(set(firsts)) and len(firsts) == len(segments(store_path))
    w.close()


# -- found by review ---------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_pruning_snapshots_while_appending_and_indexing_never_deadlocks(store_path: str, durability: str) -> None:
    """prune_snapshots took the writer lock then the index lock, the indexer the index lock then the
    writer lock: appends, snapshots and pruning together hung the store."""
    s = evstore.open(store_path, durability=durability)
    s.append("a", [ev()])
    stop = time.monotonic() + 2.0
    counts = {"append": 0, "prune": 0}

    def appender() -> None:
        while time.monotonic() < stop:
            r = s.append("a", [ev()])
            s.save_snapshot("a", r.last_version, b"snap", type="S")
            counts["append"] += 1

    def pruner() -> None:
        while time.monotonic() < stop:
            s.prune_snapshots(keep=0)
            counts["prune"] += 1

    threads = [threading.Thread(target=appender, daemon=True), threading.Thread(target=pruner, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), f"deadlocked after {counts}"
    assert counts["append"] > 0 and counts["prune"] > 0
    s.close()


def test_a_forked_child_does_not_keep_the_parents_store_locked(store_path: str) -> None:
    """The child inherited the flocked LOCK descriptor: after the parent closed, the store stayed
    locked for as long as the child lived."""
    s = evstore.open(store_path)
    s.append("a", [ev()])
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(go_w)
            os.read(go_r, 1)  # wait for the parent to close the store
            try:
                evstore.open(store_path).close()
                os.write(w, b"child-ok")
            except BaseException as e:
                os.write(w, f"child: {type(e).__name__}".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    s.close()
    try:
        evstore.open(store_path).close()  # the parent, while the child lives
        parent = "ok"
    except evstore.StoreLocked:
        parent = "locked"
    os.write(go_w, b"x")
    got = os.read(r, 100).decode()
    os.waitpid(pid, 0)
    assert (parent, got) == ("ok", "child-ok")


def test_a_reader_open_while_the_writer_grows_the_index_map_reads_on(store_path: str) -> None:
    """LMDB answers MDB_MAP_RESIZED to a reader once the writer grew the map; it was reported as a
    damaged index."""
    w = evstore.open(store_path, map_size=1 << 20)
    w.append("s-0", [ev()])
    code = textwrap.dedent(f"""
        import sys, evstore
        r = evstore.open({store_path!r}, readonly=True, map_size=1 << 20)
        print(r.head(), flush=True)
        sys.stdin.readline()
        print(r.head(), len(list(r.read_all())), flush=True)
    """)
    p = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=python_env())
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "1"
    for i in range(0, 20000, 500):
        w.append_many([(f"s-{j}", [ev()], evstore.ANY) for j in range(i, i + 500)])
    head = w.head()
    assert os.path.getsize(os.path.join(store_path, "index", "data.mdb")) > 1 << 20
    p.stdin.write("\n")
    p.stdin.flush()
    line = p.stdout.readline().split()
    p.wait(10)
    w.close()
    assert line == [str(head), str(head)], p.stderr.read() if p.stderr else ""


def test_a_reader_open_across_recover_reads_the_log_recover_left(store_path: str) -> None:
    """The reader followed the rebuilt index but kept its mapping of the segment recover replaced,
    and served the dropped events' bytes at the new index's offsets."""
    from evstore.recovery import recover

    with evstore.open(store_path) as w:
        for i in range(1, 6):
            w.append("a", [ev("T", f"old-{i}".encode())])
    code = textwrap.dedent(f"""
        import sys, time, evstore
        r = evstore.open({store_path!r}, readonly=True)
        r.read_stream("a", limit=1)  # maps the segment
        print("mapped", flush=True)
        sys.stdin.readline()
        time.sleep(0.3)
        r.head()
        print(" ".join(e.data.decode() for e in r.read_stream("a", gt=3)), flush=True)
    """)
    p = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=python_env())
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "mapped"
    seg = os.path.join(store_path, "log", segments(store_path)[0])
    data = open(seg, "rb").read()
    with open(seg, "r+b") as f:  # bit rot in commit 3: recover keeps commits 1 and 2
        f.seek(data.index(b"old-3"))
        f.write(b"OLD-3")
    recover(store_path)
    with evstore.open(store_path) as w:
        for i in range(3, 6):
            w.append("a", [ev("T", f"new-{i}".encode())])
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().split() == ["new-4", "new-5"]
    p.wait(10)


def test_a_reader_open_across_many_reindexes_does_not_leak_environments(store_path: str) -> None:
    with evstore.open(store_path) as w:
        w.append("a", [ev()])
    code = textwrap.dedent(f"""
        import os, sys, time, evstore
        r = evstore.open({store_path!r}, readonly=True)
        r.head()
        print(len(os.listdir("/proc/self/fd")), flush=True)
        for line in sys.stdin:
            time.sleep(0.15)
            r.head()
            print(len(os.listdir("/proc/self/fd")), flush=True)
    """)
    p = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=python_env())
    assert p.stdout is not None and p.stdin is not None
    counts = [int(p.stdout.readline())]
    for _ in range(12):
        tools.reindex(store_path)
        time.sleep(1.1)  # a retired environment is closed once no read can still be using it
        p.stdin.write("\n")
        p.stdin.flush()
        counts.append(int(p.stdout.readline()))
    p.stdin.close()
    p.wait(10)
    assert max(counts) - counts[0] <= 8, counts


def test_a_crash_while_recording_the_writers_durability_keeps_the_os_rule(store_path: str, impl: str) -> None:
    """The durability marker was rewritten in place (truncate, write): a crash in between lost the
    "os" word and the next open refused the store. It is now replaced atomically."""
    from tests.test_durability import _lose_a_page_after_the_checkpoint, _os_writer_killed_with_an_unsynced_tail

    _os_writer_killed_with_an_unsynced_tail(store_path, impl)
    _lose_a_page_after_the_checkpoint(store_path)
    with open(os.path.join(store_path, "evstore.writer.tmp"), "wb") as f:
        f.write(b"fs")  # a replacement cut off half-way: the marker itself is intact
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() >= 20


def test_the_index_map_grows_while_reader_threads_read(store_path: str, impl: str) -> None:
    """LMDB may resize its map only while no transaction of the process is open; the indexer thread
    grew it under readers of other threads (mdb_txn_begin: Invalid argument, reported as damage)."""
    s = evstore.open(store_path, log_impl=impl, map_size=1 << 20, durability="os")
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                s.head()
                s.read_stream("stream-1")
                s.stream_version("stream-7")
            except BaseException as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(4000):
            s.append(f"stream-{i}", [ev(f"T{i % 50}", b"x")])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert s.head() == 4000 and os.path.getsize(os.path.join(store_path, "index", "data.mdb")) > 1 << 20
    s.close()
