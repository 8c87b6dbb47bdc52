"""What a power cut depends on, call by call: directory entries synced, the log synced before the
index that describes it, an index LMDB cannot tear, and a damaged index rebuilt rather than served.

The power-loss harness (tests/test_powerloss.py) checks the outcome over thousands of crash states;
these tests pin each mechanism to the call that provides it.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import textwrap

import lmdb
import pytest

import evstore
import evstore.tools as tools
from evstore.storage.index import Index
from tests.conftest import PY, python_env
from tests.support import commits_end, ev


class SyncRecorder:
    """Records, in order, every fsync/fdatasync made through the os module (by path) and every
    index write, so a test can say what was durable before what."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        real_fsync, real_fdatasync = os.fsync, os.fdatasync
        real_write = Index.write
        real_replace = os.rename

        def path_of(fd: int) -> str:
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return f"fd{fd}"

        def fsync(fd: int) -> None:
            self.calls.append(("fsync", path_of(fd)))
            real_fsync(fd)

        def fdatasync(fd: int) -> None:
            self.calls.append(("fsync", path_of(fd)))
            real_fdatasync(fd)

        def write(index: Index, batch: object) -> None:
            self.calls.append(("index", index.path))
            real_write(index, batch)  # type: ignore[arg-type]

        def rename(a: str, b: str) -> None:
            self.calls.append(("rename", os.path.realpath(b)))
            real_replace(a, b)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(Index, "write", write)

    def index_of(self, kind: str, path: str, start: int = 0) -> int:
        for i, c in enumerate(self.calls[start:], start):
            if c == (kind, path):
                return i
        raise AssertionError(f"no {kind} of {path} in {self.calls}")


# -- finding 1: directory entries ----------------------------------------------------------------


def test_creating_a_store_syncs_every_entry_it_makes(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = os.path.join(str(tmp_path), "apps")
    path = os.path.join(parent, "orders.evs")
    rec = SyncRecorder(monkeypatch)
    with evstore.open(path) as s:
        s.append("a", [ev()])
    real = os.path.realpath(path)
    synced = {p for k, p in rec.calls if k == "fsync"}
    # the store's entry in its (new) parent, the parent's in its own parent, log/ and index/ in the store
    assert os.path.realpath(str(tmp_path)) in synced
    assert os.path.realpath(parent) in synced
    assert real in synced and os.path.join(real, "log") in synced and os.path.join(real, "index") in synced
    # evstore.meta: renamed into place, then its directory synced
    r = rec.index_of("rename", os.path.join(real, "evstore.meta"))
    rec.index_of("fsync", real, r)


# -- finding 2: the log is durable before the index that covers it ---------------------------------


def _killed_writer(path: str, impl: str, durability: str, n: int) -> None:
    code = textwrap.dedent(f"""
        import os, signal, evstore
        s = evstore.open({path!r}, log_impl={impl!r}, durability={durability!r})
        for i in range({n}):
            s.append("s-%d" % (i % 3), [evstore.NewEvent("T", b"x" * 50)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([PY, "-c", code], env=python_env(), capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr


def test_reopening_after_a_killed_writer_syncs_the_adopted_tail_before_indexing_it(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("base", [ev()])
    _killed_writer(store_path, impl, "os", 40)
    seg = os.path.join(os.path.realpath(store_path), "log", "00000000000000000001.seg")
    rec = SyncRecorder(monkeypatch)
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() == 41
    first_index_write = rec.index_of("index", os.path.join(os.path.realpath(store_path), "index"))
    assert ("fsync", seg) in rec.calls[:first_index_write], rec.calls


def test_close_with_durability_os_syncs_the_log_before_the_index(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = evstore.open(store_path, log_impl=impl, durability="os")
    for i in range(20):
        s.append("s", [ev()])
    seg = os.path.join(os.path.realpath(store_path), "log", "00000000000000000001.seg")
    rec = SyncRecorder(monkeypatch)
    s.close()
    writes = [i for i, c in enumerate(rec.calls) if c[0] == "index"]
    assert writes, "close() indexed nothing"
    assert ("fsync", seg) in rec.calls[: writes[0]], rec.calls


def test_a_read_after_an_os_append_never_makes_the_index_durable_ahead_of_the_log(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("s", [ev()])
        seg = os.path.join(os.path.realpath(store_path), "log", "00000000000000000001.seg")
        rec = SyncRecorder(monkeypatch)
        s.append("s", [ev()])
        assert s.head() == 2  # a read of the index indexes the new commit first, durably
        w = rec.index_of("index", os.path.join(os.path.realpath(store_path), "index"))
        assert ("fsync", seg) in rec.calls[:w], rec.calls


# -- finding 3: an index a power cut cannot make lie ------------------------------------------------


def test_the_index_is_opened_with_durable_transactions(store: evstore.EventStore) -> None:
    store.append("s", [ev()])
    idx = store._c().index
    flags = idx.env.flags()
    assert flags["sync"] is True and flags["metasync"] is False


def _fill(path: str, impl: str, n: int = 300) -> None:
    with evstore.open(path, log_impl=impl, durability="os") as s:
        for i in range(n):
            s.append(f"s-{i % 7}", [evstore.NewEvent("T", b"%d" % i, tags=("t%d" % (i % 3),))])


def _check_reads(path: str, impl: str, n: int = 300) -> None:
    with evstore.open(path, log_impl=impl) as s:
        assert s.head() == n
        assert [e.data for e in s.read_all()] == [b"%d" % i for i in range(n)]
        for k in range(7):
            assert [e.data for e in s.read_stream(f"s-{k}")] == [b"%d" % i for i in range(k, n, 7)]
        assert len(s.query([evstore.QueryItem(tags=["t1"])])) == len(range(1, n, 3))


def _open_in_subprocess(path: str, impl: str, n: int) -> None:
    """Open and read the store in a child, so that a SIGBUS inside LMDB fails the test, not the run."""
    code = f"from tests.test_durability import _check_reads; _check_reads({path!r}, {impl!r}, {n})"
    p = subprocess.run([PY, "-c", code], env=python_env(), capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])


@pytest.mark.parametrize("damage", ["truncated", "zero meta pages", "garbage meta", "garbage pages", "empty"])
def test_a_damaged_data_mdb_is_rebuilt_from_the_log(store_path: str, impl: str, damage: str) -> None:
    _fill(store_path, impl)
    data = os.path.join(store_path, "index", "data.mdb")
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        if damage == "truncated":  # shorter than its meta pages say: mapping it would SIGBUS
            f.truncate(size // 2)
        elif damage == "zero meta pages":
            f.write(bytes(8192))
        elif damage == "garbage meta":
            f.seek(16)
            f.write(os.urandom(200))
            f.seek(4096 + 16)
            f.write(os.urandom(200))
        elif damage == "garbage pages":  # every page but the meta pages
            f.seek(8192)
            f.write(os.urandom(size - 8192))
        else:
            f.truncate(0)
    _open_in_subprocess(store_path, impl, 300)


def test_an_index_checkpoint_that_is_not_a_commit_boundary_is_rebuilt(store_path: str, impl: str) -> None:
    _fill(store_path, impl)
    env = lmdb.open(os.path.join(store_path, "index"), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        seg, end, nxt = struct.unpack("<QQQ", txn.get(b"checkpoint", db=meta))
        txn.put(b"checkpoint", struct.pack("<QQQ", seg, end - 10, nxt), db=meta)
    env.close()
    _check_reads(store_path, impl)


def test_an_index_that_claims_a_different_next_position_is_rebuilt(store_path: str, impl: str) -> None:
    _fill(store_path, impl)
    env = lmdb.open(os.path.join(store_path, "index"), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        seg, end, nxt = struct.unpack("<QQQ", txn.get(b"checkpoint", db=meta))
        txn.put(b"checkpoint", struct.pack("<QQQ", seg, end, nxt + 5), db=meta)
    env.close()
    _check_reads(store_path, impl)


def test_an_index_ahead_of_the_log_is_still_reported(store_path: str, impl: str) -> None:
    _fill(store_path, impl)
    seg = os.path.join(store_path, "log", "00000000000000000001.seg")
    with open(seg, "r+b") as f:
        f.truncate(commits_end(seg) - 200)
    with pytest.raises(evstore.IndexAheadOfLog):
        evstore.open(store_path, log_impl=impl)
    with pytest.raises(evstore.IndexAheadOfLog):  # a failed open leaves nothing open behind it
        evstore.open(store_path, log_impl=impl)


# -- finding 6: the torn-tail rule, whichever pages of the last commit survived --------------------


def _three_page_commit(path: str, impl: str) -> tuple[str, int, int]:
    """A store whose last commit spans three pages; returns (segment, commit offset, commit end)."""
    with evstore.open(path, log_impl=impl) as s:
        s.append("a", [ev("A", b"a" * 100)])
        r = s.append("b", [ev("B", b"b" * 3000) for _ in range(4)])
        assert r.first_position == 2
    seg = os.path.join(path, "log", "00000000000000000001.seg")
    size = commits_end(seg)
    with open(seg, "rb") as f:
        raw = f.read()
    # the second commit starts after the first one's COMMIT record: walk the records by their lengths
    o = 32
    while raw[o + 8] != 2:  # kind 2: COMMIT
        o += int.from_bytes(raw[o + 4 : o + 8], "little")
    start = o + 72
    assert raw[start + 8] == 1 and raw[start + 64 : start + 65] == b"b"
    return seg, start, size


@pytest.mark.parametrize("lost", ["middle page", "first page"])
def test_a_last_commit_that_lost_an_earlier_page_but_kept_its_commit_record_is_a_torn_tail(
        store_path: str, impl: str, lost: str) -> None:
    seg, start, end = _three_page_commit(store_path, impl)
    assert end - start > 3 * 4096 - 4096  # spans at least three pages
    page = (start // 4096 + 1) * 4096 if lost == "middle page" else start // 4096 * 4096
    if lost == "first page":
        page = max(page, start)  # keep the first commit: lose the rest of its page only
    with open(seg, "r+b") as f:
        f.seek(page)
        f.write(bytes(min(4096 - page % 4096, end - page)))
    # The commit was never synced, so a durable index cannot hold it: the index is one from before it.
    os.unlink(os.path.join(store_path, "index", "data.mdb"))
    rep = tools.verify(store_path)
    assert rep.ok and rep.problems and rep.problems[0].torn_tail
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() == 1 and [e.type for e in s.read_all()] == ["A"]
        s.append("c", [ev()])
    assert commits_end(seg) < end


def test_damage_followed_by_a_later_whole_commit_is_still_corruption(store_path: str, impl: str) -> None:
    seg, start, end = _three_page_commit(store_path, impl)
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("d", [ev("D")])
    with open(seg, "r+b") as f:
        f.seek(start + 5000)
        f.write(b"\xff" * 16)
    os.unlink(os.path.join(store_path, "index", "data.mdb"))
    with pytest.raises(evstore.CorruptedError):
        evstore.open(store_path, log_impl=impl)


# -- durability="os": what a power cut leaves after the last checkpoint is an unsynced tail ---------


def _os_writer_killed_with_an_unsynced_tail(path: str, impl: str) -> None:
    code = textwrap.dedent(f"""
        import os, signal, evstore
        from evstore.engine import groupcommit
        groupcommit.INDEX_DELAY["os"] = 600  # the indexer never checkpoints during this run
        s = evstore.open({path!r}, log_impl={impl!r}, durability="os")
        for i in range(20):
            s.append("s", [evstore.NewEvent("T", b"%04d" % i + b"." * 200)])
        s.sync()  # the checkpoint: everything up to here is durable
        for i in range(20, 80):
            s.append("s", [evstore.NewEvent("T", b"%04d" % i + b"." * 200)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([PY, "-c", code], env=python_env(), capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr


def _lose_a_page_after_the_checkpoint(path: str) -> tuple[int, int]:
    env = lmdb.open(os.path.join(path, "index"), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin() as txn:
        _seg, end, nxt = struct.unpack("<QQQ", txn.get(b"checkpoint", db=meta))
    env.close()
    seg = os.path.join(path, "log", "00000000000000000001.seg")
    size = os.path.getsize(seg)
    page = (end // 4096 + 2) * 4096  # a page of the unsynced region with whole commits after it
    assert page + 4096 < size, (end, size)
    with open(seg, "r+b") as f:
        f.seek(page)
        f.write(bytes(4096))  # the page never reached the disk
    return nxt - 1, page


def test_an_os_writers_unsynced_tail_that_lost_a_middle_page_is_cut_and_the_store_opens(
        store_path: str, impl: str) -> None:
    _os_writer_killed_with_an_unsynced_tail(store_path, impl)
    synced, _page = _lose_a_page_after_the_checkpoint(store_path)
    assert synced == 20
    with evstore.open(store_path, log_impl=impl) as s:  # the promise of "os": a prefix, and it opens
        data = [e.data[:4] for e in s.read_all()]
        assert 20 <= len(data) < 80 and data == [b"%04d" % i for i in range(len(data))]
        s.append("s", [ev()])
    assert tools.verify(store_path).ok


def test_the_same_damage_after_an_fsync_writer_is_corruption(store_path: str, impl: str) -> None:
    _os_writer_killed_with_an_unsynced_tail(store_path, impl)
    _lose_a_page_after_the_checkpoint(store_path)
    with open(os.path.join(store_path, "evstore.writer"), "w") as f:
        f.write("fsync\n")  # an fsync writer synced every commit it acknowledged: this is damage
    with pytest.raises(evstore.CorruptedError):
        evstore.open(store_path, log_impl=impl)
