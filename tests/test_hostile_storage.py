"""A hostile day without a power cut, the storage findings (one test per finding): segment names
chosen once, index writes that fail (also on a really full disk), missing or damaged log files."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import textwrap

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
