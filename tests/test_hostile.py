"""A hostile day without a power cut: the combinations that broke the store, one test per finding,
grouped by the mechanism they exercise (segment naming, index writes that fail, closing and forking,
missing or damaged log files, readers in other processes, arguments)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import textwrap
import threading
import time
import uuid

import pytest

import evstore
import evstore.tools as tools
from evstore.storage.index import Index
from tests.conftest import PY, python_env
from tests.support import ev, segments


# -- segment names are chosen once ---------------------------------------------------------------


@pytest.mark.parametrize("mark", ["snapshot", "close", "soft delete", "tombstone", "tracking"])
def test_an_event_less_commit_that_rolls_never_has_its_segment_replaced(store_path: str, impl: str,
                                                                        mark: str) -> None:
    """Finding 1: a mark, snapshot or tracking commit that needs a new segment, then an event commit
    that does not fit either: the second roll used to take the same name and replace the first."""
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        s.append("big-1", [ev("A", b"x" * 3800)])
        if mark == "snapshot":
            s.save_snapshot("big-1", 1, b"S" * 200, type="snap")
        elif mark == "close":
            s.close_stream("big-1")
        elif mark == "soft delete":
            s.delete_stream("big-1")
        elif mark == "tombstone":
            s.delete_stream("big-1", tombstone=True)
        else:
            s.append_many([], tracking=("upstream", 7))
        s.append("other-1", [ev("B", b"y" * 5000)])
        s.append("other-1", [ev("C", b"z" * 10)])
    before = segments(store_path)
    assert len(before) == len(set(before))
    for rebuild in (False, True):
        if rebuild:
            tools.reindex(store_path)
        with evstore.open(store_path, log_impl=impl) as s:
            assert [e.type for e in s.read_all()] == ["A", "B", "C"]
            assert [e.data for e in s.read_stream("other-1")] == [b"y" * 5000, b"z" * 10]
            info = s.stream_info("big-1")
            assert info is not None
            if mark == "snapshot":
                snap = s.load_snapshot("big-1")
                assert snap is not None and snap.data == b"S" * 200 and snap.version == 1
            elif mark == "close":
                assert info.closed
            elif mark == "soft delete":
                assert info.deleted and s.read_stream("big-1") == []
            elif mark == "tombstone":
                assert info.tombstoned
            else:
                assert s.max_tracking("upstream") == 7
    assert tools.verify(store_path).ok


def test_a_roll_to_an_existing_segment_name_is_refused(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        s.append("a", [ev("A", b"x" * 3000)])
        log = s._c().log
        with pytest.raises(evstore.StorageError):
            log._new_segment(1)
        assert s.read_stream("a")[0].data == b"x" * 3000


# -- index writes that fail ----------------------------------------------------------------------


class FailingIndex:
    """Makes the next index writes raise ENOSPC, as a full disk does, until `heal()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = True
        self.failures = 0
        real = Index._write

        def _write(index: Index, batch: object) -> None:
            if self.failing:
                self.failures += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            real(index, batch)  # type: ignore[arg-type]

        monkeypatch.setattr(Index, "_write", _write)

    def heal(self) -> None:
        self.failing = False


def test_a_failed_index_write_leaves_no_holes_and_the_next_append_gets_the_next_version(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Findings 2 and 15: a failed index write dropped its batch and a later flush moved the
    checkpoint past it; the append was durable but raised StoreFailed and the handle refused writes."""
    s = evstore.open(store_path, log_impl=impl, durability="os")
    s.append("s", [ev("A")], expected_version=evstore.NO_STREAM)
    failing = FailingIndex(monkeypatch)
    r2 = s.append("s", [ev("B")], expected_version=1)  # acknowledged: the index is not the log
    assert r2.last_version == 2
    assert s.stream_version("s") == 2  # a stream read is served from the overlay of durable commits
    assert [e.type for e in s.read_stream("s")] == ["A", "B"]
    with pytest.raises(evstore.IndexUnavailable):
        s.head()  # a read that needs the index says why it cannot have it
    r3 = s.append("s", [ev("C")], expected_version=2)  # the writer's own state is right
    assert failing.failures >= 1
    failing.heal()
    assert s.stream_version("s") == 3
    assert [e.type for e in s.read_stream("s")] == ["A", "B", "C"]
    assert [e.type for e in s.read_all(types=["B"])] == ["B"]
    s.close()
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.version for e in s.read_stream("s")] == [1, 2, 3]
        assert r3.last_position == s.head() == 3
        assert s.append("s", [ev("D")], expected_version=3).last_version == 4


def test_an_index_failing_at_close_is_caught_up_by_the_next_open(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = evstore.open(store_path, log_impl=impl, durability="os")
    s.append("s", [ev("A")])
    failing = FailingIndex(monkeypatch)
    s.append("s", [ev("B")])
    with pytest.raises(evstore.IndexUnavailable):
        s.close()  # the log is synced; the index is not written: said, and the handle is closed regardless
    assert s.closed
    failing.heal()
    with evstore.open(store_path, log_impl=impl) as s2:  # same process: the lock was released
        assert [e.type for e in s2.read_stream("s")] == ["A", "B"]


def _tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True)
    return p.returncode == 0


@pytest.fixture
def small_disk(tmp_path: object) -> object:
    path = os.path.join(str(tmp_path), "disk")
    if not _tmpfs(path, "3M"):
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield path
    subprocess.run(["umount", "-l", path], check=False)


def _fill_disk(disk: str) -> str:
    filler = os.path.join(disk, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\1" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_really_full_disk_in_the_index_loses_nothing_and_space_returning_heals(small_disk: str,
                                                                                 impl: str) -> None:
    """Findings 2 and 15 on a real full disk: appends either fail cleanly or are kept, reads say the
    index is unavailable instead of raising raw LMDB errors, and nothing is lost once space returns."""
    path = os.path.join(small_disk, "s.evs")
    acked: list[bytes] = []
    s = evstore.open(path, log_impl=impl, durability="os", map_size=1 << 20)
    for i in range(20):
        s.append(f"s-{i % 3}", [ev("T", b"%04d" % i)])
        acked.append(b"%04d" % i)
    s.sync()
    filler = _fill_disk(small_disk)
    errors = set()
    for i in range(20, 400):
        try:
            s.append(f"s-{i % 3}", [ev("T", b"%04d" % i + b"." * 300)])
            acked.append(b"%04d" % i + b"." * 300)
        except evstore.StorageError as e:
            errors.add(type(e).__name__)
        try:
            s.head()
        except evstore.IndexUnavailable:
            errors.add("IndexUnavailable")
    assert errors, "the disk never filled"
    os.unlink(filler)
    assert [e.data for e in s.read_all()] == acked
    s.close()
    with evstore.open(path, log_impl=impl) as s:
        assert [e.data for e in s.read_all()] == acked
        for k in range(3):
            versions = [e.version for e in s.read_stream(f"s-{k}")]
            assert versions == list(range(1, len(versions) + 1))
    assert tools.verify(path).ok


def test_opening_with_the_index_deleted_on_a_full_disk_fails_cleanly(small_disk: str, impl: str) -> None:
    """Finding 15: with index/ deleted and no space, opening for writing was killed by SIGBUS."""
    path = os.path.join(small_disk, "s.evs")
    with evstore.open(path, log_impl=impl) as s:
        for i in range(50):
            s.append("s", [ev("T", b"x" * 100)])
    shutil.rmtree(os.path.join(path, "index"))
    filler = _fill_disk(small_disk)
    code = textwrap.dedent(f"""
        import evstore
        try:
            evstore.open({path!r}, log_impl={impl!r})
        except evstore.EvstoreError as e:
            print("refused:", type(e).__name__)
        else:
            print("opened")
    """)
    p = subprocess.run([PY, "-c", code], env=python_env(), capture_output=True, text=True)
    assert p.returncode == 0, (p.returncode, p.stderr[-1500:])
    os.unlink(filler)
    with evstore.open(path, log_impl=impl) as s:
        assert s.head() == 50


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


# -- missing and damaged log files -----------------------------------------------------------------


def _three_segments(path: str, impl: str) -> list[str]:
    with evstore.open(path, log_impl=impl, segment_size=4096) as s:
        for i in range(120):
            s.append(f"s-{i % 4}", [ev("T", b"%03d" % i + b"." * 80)])
    names = segments(path)
    assert len(names) >= 3
    return names


@pytest.mark.parametrize("index", ["kept", "deleted"])
def test_a_lost_first_segment_is_corruption_not_a_shorter_log(store_path: str, impl: str, index: str) -> None:
    """Finding 5: with the first segment lost, head() said 120 while read_all yielded 94 events from 27."""
    names = _three_segments(store_path, impl)
    os.unlink(os.path.join(store_path, "log", names[0]))
    if index == "deleted":
        shutil.rmtree(os.path.join(store_path, "index"))
    with pytest.raises(evstore.CorruptedError, match="first segment"):
        evstore.open(store_path, log_impl=impl)
    with pytest.raises(evstore.CorruptedError):
        evstore.open(store_path, log_impl=impl, readonly=True)


def test_a_lost_middle_segment_is_corruption_when_the_index_is_rebuilt(store_path: str, impl: str) -> None:
    names = _three_segments(store_path, impl)
    os.unlink(os.path.join(store_path, "log", names[1]))
    shutil.rmtree(os.path.join(store_path, "index"))
    with pytest.raises(evstore.CorruptedError, match="missing"):
        evstore.open(store_path, log_impl=impl)


def test_a_bad_byte_in_a_sealed_segment_stops_the_writer_once_a_read_meets_it(store_path: str, impl: str) -> None:
    """Finding 8: the store served reads past the damage and acknowledged appends recover then drops."""
    names = _three_segments(store_path, impl)
    seg = os.path.join(store_path, "log", names[0])
    with open(seg, "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0x40]))
    with evstore.open(store_path, log_impl=impl) as s:
        with pytest.raises(evstore.CorruptedError):
            list(s.read_all())
        with pytest.raises(evstore.StoreFailed, match="damaged"):
            s.append("s-0", [ev()])


def test_the_log_directory_turned_into_a_file_or_a_segment_turned_into_a_directory(store_path: str,
                                                                                    impl: str) -> None:
    """Finding 23: IsADirectoryError and FileNotFoundError escaped from a damaged log/."""
    names = _three_segments(store_path, impl)
    bad = os.path.join(store_path, "log", "00000000000000099999.seg")
    os.mkdir(bad)
    with pytest.raises(evstore.CorruptedError):
        evstore.open(store_path, log_impl=impl)
    os.rmdir(bad)
    shutil.rmtree(os.path.join(store_path, "log"))
    with pytest.raises(evstore.CorruptedError, match="no log"):
        evstore.open(store_path, log_impl=impl)
    assert names


def test_opening_a_directory_holding_only_an_unrelated_index_dir_deletes_nothing(tmp_path: object) -> None:
    """Finding 10: a directory whose only entry was index/ lost every file in it."""
    p = os.path.join(str(tmp_path), "d")
    os.makedirs(os.path.join(p, "index"))
    with open(os.path.join(p, "index", "notes.txt"), "w") as f:
        f.write("keep me")
    with pytest.raises(evstore.EvstoreError, match="not an evstore store"):
        evstore.open(p)
    with open(os.path.join(p, "index", "notes.txt")) as f:
        assert f.read() == "keep me"
    assert sorted(os.listdir(p)) == ["index"]


def test_create_false_on_an_empty_directory_creates_nothing(tmp_path: object) -> None:
    """Finding 19: an existing empty directory (an unmounted mount point) became a store."""
    p = os.path.join(str(tmp_path), "mnt")
    os.mkdir(p)
    with pytest.raises(evstore.EvstoreError, match="no store"):
        evstore.open(p, create=False)
    with pytest.raises(evstore.EvstoreError, match="no store"):
        evstore.open(p, readonly=True)
    assert os.listdir(p) == []


def test_a_commit_of_more_than_65536_records_survives_a_lost_index(store_path: str, impl: str) -> None:
    """Review: recovery scanned with a fixed 65,536-record array, so such a store would not open."""
    n = 70_000
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("big", [evstore.NewEvent("T", b"") for _ in range(n)])
    shutil.rmtree(os.path.join(store_path, "index"))
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() == n and s.stream_version("big") == n


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


# -- arguments and options ---------------------------------------------------------------------------


def test_a_second_open_with_other_options_is_refused(store_path: str, impl: str) -> None:
    """Review: a second open() of an open path with other options silently got the first one's."""
    with evstore.open(store_path, log_impl=impl, durability="os"):
        with pytest.raises(evstore.EvstoreError, match="durability"):
            evstore.open(store_path, durability="fsync")
        other = "python" if impl == "c" else "c"
        with pytest.raises(evstore.EvstoreError, match="log_impl"):
            evstore.open(store_path, log_impl=other)
        with evstore.open(store_path) as same:  # no options: the open store's
            assert same.durability == "os"


def test_sync_failing_latches_the_store(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: EventStore.sync() raised a bare OSError and bypassed the failure latch."""
    s = evstore.open(store_path, log_impl=impl, durability="os")
    s.append("s", [ev()])

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(evstore.StoreFailed):
        s.sync()
    monkeypatch.undo()
    with pytest.raises(evstore.StoreFailed):
        s.append("s", [ev()])
    s.close()


def test_a_retried_event_id_with_other_content_is_refused(store: evstore.EventStore) -> None:
    """Finding 25: a retry with the same id but other data or type returned the original result."""
    eid = uuid.uuid4()
    r = store.append("s", [ev("A", b"1", id=eid)])
    assert store.append("s", [ev("A", b"1", id=eid)]) == r  # a true retry: the original result
    for other in (ev("A", b"2", id=eid), ev("B", b"1", id=eid), ev("A", b"1", id=eid, schema=2),
                  ev("A", b"1", id=eid, metadata=b"m"), ev("A", b"1", id=eid, tags=("t",))):
        with pytest.raises(evstore.DuplicateEventId):
            store.append("s", [other])
    assert store.head() == 1


@pytest.mark.parametrize("call, exc", [
    (lambda s: s.delete_stream("s", tombstone="false"), TypeError),  # finding 18
    (lambda s: s.delete_stream("s", tombstone=1), TypeError),
    (lambda s: list(s.subscribe(timeout=float("nan"))), ValueError),  # finding 22
    (lambda s: list(s.subscribe(timeout=True)), TypeError),
    (lambda s: s.consume("c", lambda e, ctx: None, limit=-1), ValueError),  # finding 21
    (lambda s: s.consume("c", lambda e, ctx: None, checkpoint_every=0), ValueError),
    (lambda s: s.save_snapshot("s", 1, b"", type="t", schema=True), TypeError),  # finding 24
    (lambda s: list(s.streams(prefix=5)), TypeError),  # finding 23
])
def test_bad_arguments_are_refused_and_write_nothing(store: evstore.EventStore, call: object, exc: type) -> None:
    store.append("s", [ev()])
    before = store.head()
    with pytest.raises(exc):
        call(store)  # type: ignore[operator]
    assert store.head() == before
    info = store.stream_info("s")
    assert info is not None and not info.deleted and not info.tombstoned


def test_consume_with_limit_zero_handles_nothing(store: evstore.EventStore) -> None:
    store.append("s", [ev(), ev()])
    seen: list[int] = []
    stats = store.consume("c", lambda e, ctx: seen.append(e.position), limit=0, timeout=0.1)
    assert seen == [] and stats.handled == 0


def test_a_subscription_with_an_infinite_timeout_and_none_arguments(store: evstore.EventStore) -> None:
    store.append("s", [ev()])
    with store.subscribe(gt=0, timeout=float("inf")) as sub:
        assert next(sub).position == 1
    assert list(store.streams(prefix=None)) == [("s", 1)]
    assert [e.position for e in store.read_all(gt=None)] == [1]


def test_an_event_of_exactly_16_mib_is_accepted_and_one_byte_more_is_refused_clearly(store_path: str,
                                                                                     impl: str) -> None:
    """Finding 24: 16 MiB - 1000 B was refused though the docs say 16 MiB, with a confusing message."""
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("s", [ev("T", b"x" * (16 << 20))])
        with pytest.raises(ValueError, match="16,777,217 bytes; the limit is 16,777,216"):
            s.append("s", [ev("T", b"x" * (16 << 20), metadata=b"m")])
        assert len(s.read_stream("s")[0].data) == 16 << 20


def test_stream_info_deleted_follows_the_visible_history(store: evstore.EventStore) -> None:
    store.append("s", [ev()])
    store.delete_stream("s")
    assert store.stream_info("s").deleted  # type: ignore[union-attr]
    store.append("s", [ev()])
    assert not store.stream_info("s").deleted  # type: ignore[union-attr]


def test_reads_racing_close_raise_store_closed(store_path: str, impl: str) -> None:
    """Finding 23: lmdb.Error when query/subscribe/read_all raced close()."""
    s = evstore.open(store_path, log_impl=impl)
    for i in range(50):
        s.append("s", [ev("T", tags=("t",))])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                s.query([evstore.QueryItem(tags=["t"])])
                list(s.read_all(types=["T"]))
                s.read_stream("s")
            except evstore.StoreClosed:
                return
            except BaseException as e:  # anything else is the bug
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    s.close()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


# -- found by the interaction test (tests/test_interactions.py) ----------------------------------


def test_a_reader_left_open_across_a_reindex_follows_the_new_index(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as w:
        w.append("s", [ev()])
    code = textwrap.dedent(f"""
        import sys, time, evstore
        r = evstore.open({store_path!r}, readonly=True)
        print(r.head(), flush=True)
        sys.stdin.readline()
        time.sleep(0.15)
        print(r.head(), len(list(r.read_all())), flush=True)
    """)
    p = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=python_env())
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().split() == ["1"]
    tools.reindex(store_path)
    with evstore.open(store_path, log_impl=impl) as w:
        w.append("s", [ev()])
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().split() == ["2", "2"]
    p.wait(10)


def test_a_consumer_whose_handler_append_is_refused_does_not_checkpoint_that_event(store: evstore.EventStore) -> None:
    store.append("in", [ev("A"), ev("B"), ev("C")])
    store.close_stream("out")

    def handler(e: evstore.RecordedEvent, ctx: object) -> None:
        if e.type == "B":
            ctx.append("out", [ev("Effect")])  # type: ignore[attr-defined]

    with pytest.raises(evstore.StreamClosed):
        store.consume("c", handler, timeout=0.2, checkpoint_every=10)
    assert store.max_tracking("$consumer:c") == 1  # A was handled; B's effect was not committed


def test_close_from_another_thread_while_appends_run_never_raises_or_hangs(store_path: str, impl: str) -> None:
    for _round in range(20):
        s = evstore.open(store_path, log_impl=impl, durability="os")
        errors: list[BaseException] = []

        def appender() -> None:
            try:
                while True:
                    s.append("s", [ev()])
            except evstore.StoreClosed:
                return
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=appender) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.005)
        s.close()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert errors == []
    with evstore.open(store_path, log_impl=impl) as s:
        versions = [e.version for e in s.read_stream("s")]
        assert versions == list(range(1, len(versions) + 1))


def test_ids_of_several_streams_retried_in_one_stream_are_refused(store: evstore.EventStore) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    store.append_many([("s1", [ev(id=a)], evstore.ANY), ("s2", [ev(id=b)], evstore.ANY)])
    with pytest.raises(evstore.DuplicateEventId):
        store.append("s1", [ev(id=a), ev(id=b)])
    assert store.head() == 2


@pytest.mark.parametrize("delay", [0.05, 0.5])
def test_ctrl_c_during_evstore_demo_exits_130_with_one_line(delay: float) -> None:
    """Finding 16: an interrupted `evstore demo` exited 1 (the interrupt had failed the store)."""
    import signal

    p = subprocess.Popen([PY, "-m", "evstore", "demo", "--events", "5000000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=python_env())
    assert p.stdout is not None
    p.stdout.readline()  # the demo has started writing (not still importing)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err[-1500:])
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err


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
