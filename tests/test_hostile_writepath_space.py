"""Attacks on the write path, the space allocated ahead of the tail and written with pwrite: the
allocation within the segment size, commits larger than the segment and the allocation, a store
written without allocated space, the tools on a store with allocated space, the undo of a failed write
(by zeros; by a hole: tests/test_hostile_undo.py), a failed roll, odd segment sizes filled exactly."""

from __future__ import annotations

import errno
import io
import os
import subprocess
from typing import Any

import pytest

import evstore
from evstore import tools
from evstore.storage import segments as segmod

from tests.conftest import PY, python_env
from tests.support import commits_end, ev
from tests.writepath_helpers import COMMIT_SIZE, PwriteOf, commit_ends, content, seg_files


# -- bugs ---------------------------------------------------------------------------------------------


def test_allocation_stays_within_the_segment_size(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=8192) as s:
        for i in range(40):
            s.append("s", [ev("T", b"x" * 300)])
        for seg in seg_files(store_path):
            assert os.path.getsize(seg) <= 8192, (seg, os.path.getsize(seg))


# -- what held --------------------------------------------------------------------------------------


SIZES = [10, 5000, 100, 6 << 20, 50, 4000, 9 << 20, 1, 4070, 4000, 0]


def test_commits_larger_than_the_segment_and_the_allocation(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=4096, durability="os") as s:
        for k, n in enumerate(SIZES):
            s.append("a", [ev("T", bytes([k]) * n)])
            s.save_snapshot("a", k + 1, b"s" * (k * 300), type="S")
            s.append_fields("f", ["T", "T"], [bytes([k]) * n, b""], [b"m", b""])
        assert [len(e.data) for e in s.read_stream("a")] == SIZES
    for seg in seg_files(store_path):  # zeros after the commits (a sealed one's after its seal marker)
        with open(seg, "rb") as f:
            f.seek(commits_end(seg))
            rest = f.read()
            assert not any(rest) or (not any(rest[:8]) and rest[8:16] == b"EVSEALED" and not any(rest[64:]))
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert [len(e.data) for e in r.read_stream("a")] == SIZES
        assert [e.data[:1] for e in r.read_stream("f")][::2] == [bytes([k])[: n] for k, n in enumerate(SIZES)]


def test_a_store_written_without_allocated_space_reads_and_appends(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        for k, n in enumerate(SIZES):
            s.append("a", [ev("T", bytes([k]) * n)])
        s.save_snapshot("a", 3, b"snap", type="S")
        before = content(s)
    for seg in seg_files(store_path):  # as written before the space after the commits
        os.truncate(seg, commits_end(seg))
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert content(r) == before
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        assert content(s) == before
        for k, n in enumerate(SIZES):
            s.append("a", [ev("T", bytes([k]) * n)])
        after = content(s)
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert content(r) == after and len(after) == 2 * len(SIZES)
        snap = r.load_snapshot("a")
        assert snap is not None and snap.version == 3
    assert tools.verify(store_path).ok


def test_tools_on_a_store_with_allocated_space(store_path: str, impl: str, tmp_path: Any) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=8192) as s:
        for i in range(60):
            s.append(f"s{i % 3}", [ev("T", bytes([i]) * 300)])
        s.save_snapshot("s0", 5, b"snap", type="S")
        before = content(s)
    assert all(os.path.getsize(f) > commits_end(f) for f in seg_files(store_path))
    info = tools.info(store_path)
    assert info["head"] == 60 and info["index_lag"] == 0 and "corruption" not in info
    out = io.StringIO()
    assert tools.export(store_path, out) == 60
    rep = tools.recover(store_path)
    assert rep.head_after == 60 and rep.dropped_bytes == 0 and not rep.damaged
    dest = str(tmp_path / "copy")
    assert tools.backup(store_path, dest) == 60
    with evstore.open(dest, log_impl=impl, segment_size=8192) as b:
        assert content(b) == before
        b.append("s0", [ev("T", b"after")])
    assert tools.verify(dest).ok
    cli = subprocess.run([PY, "-m", "evstore", "verify", store_path], capture_output=True, text=True, env=python_env())
    assert cli.returncode == 0, cli.stderr
    with evstore.open(store_path, log_impl=impl) as s:
        assert content(s) == before


def test_a_failed_write_is_zeroed_and_the_next_commit_takes_its_place(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("T", b"before")])
        core = s._core
        assert core is not None
        real_impl = core.log.impl
        seg = seg_files(store_path)[-1]
        end = commits_end(seg)

        def pwrite(fd: int, buf: Any, off: int) -> None:
            os.pwrite(fd, bytes(buf), off)
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        core.log.impl = PwriteOf(real_impl, pwrite)  # type: ignore[assignment]
        with pytest.raises(evstore.StorageError):
            s.append("s", [ev("T", b"lost" * 3000)], expected_version=1)
        core.log.impl = real_impl
        with open(seg, "rb") as f:
            f.seek(end)
            assert not any(f.read(20000))
        s.append("s", [ev("T", b"short")], expected_version=1)  # shorter than the undone one
    with open(seg, "rb") as f:
        f.seek(commits_end(seg))
        assert not any(f.read())
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.data for e in s.read_stream("s")] == [b"before", b"short"]


def test_a_failed_roll_leaves_the_log_appendable(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_link = os.link
    fails = [errno.EIO]

    def link(a: str, b: str) -> None:
        if fails:
            raise OSError(fails.pop(), "injected")
        real_link(a, b)

    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        for _ in range(5):
            s.append("a", [ev("T", b"x" * 500)])
        monkeypatch.setattr(segmod.os, "link", link)
        outcomes = []
        for _ in range(10):
            try:
                outcomes.append(s.append("a", [ev("T", b"y" * 500)]).first_position)
            except evstore.StorageError:
                outcomes.append(None)
        monkeypatch.undo()
        assert outcomes.count(None) == 1 and [p for p in outcomes if p] == list(range(6, 15))
        before = content(s)
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl) as s:
        assert content(s) == before


@pytest.mark.parametrize("size", [4096, 4097, 4099, 5001, 65537])
def test_odd_segment_sizes_and_commits_that_fill_them_exactly(store_path: str, impl: str, size: int) -> None:
    over = 64 + 1 + 1 + COMMIT_SIZE  # an event's record and the COMMIT record, with no data
    sizes = []
    with evstore.open(store_path, log_impl=impl, segment_size=size) as s:
        for k in range(12):
            end = commits_end(seg_files(store_path)[-1]) if seg_files(store_path) else 32
            room = size - end - over
            n = [room, room - 1, room + 1, max(0, room // 2), size, 0][k % 6]
            n = max(0, n)
            s.append("a", [ev("T", bytes([k]) * n)])
            sizes.append(n)
        for seg in seg_files(store_path)[:-1]:
            ends = commit_ends(seg)
            assert ends[-1][0] <= size or len(ends) == 1  # a commit larger than a segment is alone
        assert [len(e.data) for e in s.read_stream("a")] == sizes
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, segment_size=size) as s:
        assert [len(e.data) for e in s.read_stream("a")] == sizes
        s.append("a", [ev("T", b"last")])
    assert tools.verify(store_path).ok


def _fill_to_a_roll(s: evstore.EventStore) -> None:
    """Appends to "a" until the next 500-byte event no longer fits the 4,096-byte segment."""
    for _ in range(6):
        s.append("a", [ev("T", b"x" * 500)])
    assert len(seg_files(s.path)) == 1  # (6 commits of 638 bytes fit; the next one rolls)


@pytest.mark.parametrize("written", [False, True], ids=["refused", "torn"])
def test_a_roll_whose_seal_marker_cannot_be_written(store_path: str, impl: str, written: bool) -> None:
    """The seal marker past the allocated space on a full disk (or a write that fails half-way): the
    append that rolls gets `StorageError`, nothing of it is written, and the next one rolls."""
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        _fill_to_a_roll(s)
        core = s._core
        assert core is not None
        real_impl = core.log.impl
        first_seg = seg_files(store_path)[-1]
        with open(first_seg, "rb") as f:
            raw_before = f.read()

        def pwrite(fd: int, buf: Any, off: int) -> None:
            if len(buf) != 64:  # (commits are longer than the 64-byte marker)
                return real_impl.pwrite(fd, buf, off)  # type: ignore[no-any-return]
            if written:
                os.pwrite(fd, bytes(buf)[:40], off)
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        before = content(s)
        core.log.impl = PwriteOf(real_impl, pwrite)  # type: ignore[assignment]
        with pytest.raises(evstore.StorageError, match="cannot seal"):
            s.append("a", [ev("T", b"y" * 500)], expected_version=6)
        core.log.impl = real_impl
        assert content(s) == before and len(seg_files(store_path)) == 1
        with open(first_seg, "rb") as f:
            assert f.read() == raw_before  # the torn marker's bytes are zeros again
        assert s.append("a", [ev("T", b"y" * 500)], expected_version=6).first_position == 7
        assert len(seg_files(store_path)) == 2
        after = content(s)
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl) as s:
        assert content(s) == after


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_a_roll_whose_fsync_fails_latches_the_store(store_path: str, impl: str, durability: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync of the segment a roll seals fails: its commits may not be durable, so the store
    refuses every later write (`StoreFailed`) rather than go on past them; a reopen finds every
    commit acknowledged before."""
    real_fsync = os.fsync
    fails: list[int] = []

    def fsync(fd: int) -> None:
        if fails:
            raise OSError(fails.pop(), "injected")
        real_fsync(fd)

    with evstore.open(store_path, log_impl=impl, segment_size=4096, durability=durability) as s:
        _fill_to_a_roll(s)
        before = content(s)
        monkeypatch.setattr(segmod.os, "fsync", fsync)
        fails.append(errno.EIO)
        with pytest.raises(evstore.StoreFailed, match="could not be synced when it was sealed"):
            s.append("a", [ev("T", b"y" * 500)], expected_version=6)
        monkeypatch.undo()
        assert not fails
        for _ in range(2):
            with pytest.raises(evstore.StoreFailed, match="I/O failure"):
                s.append("b", [ev("T", b"z")])
        assert content(s) == before
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        assert content(s) == before
        assert s.append("a", [ev("T", b"y" * 500)], expected_version=6).first_position == 7


def test_a_roll_whose_seal_marker_finds_no_space(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer than the marker's 64 bytes allocated after the commits, and a full disk: the roll
    reserves the marker's space as a commit does, fails cleanly (`StorageError`, nothing written, the
    file not cut), and the next append rolls."""
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        _fill_to_a_roll(s)
        core = s._core
        assert core is not None
        seg = core.log.active
        assert seg is not None
        seg.allocated = seg.end + 16  # (what the log believes: the marker needs more)
        path = seg_files(store_path)[-1]
        size, before = os.path.getsize(path), content(s)

        def no_space(fd: int, off: int, n: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(segmod.os, "posix_fallocate", no_space)
        with pytest.raises(evstore.StorageError, match="cannot seal"):
            s.append("a", [ev("T", b"y" * 500)], expected_version=6)
        monkeypatch.undo()
        assert content(s) == before and os.path.getsize(path) == size and len(seg_files(store_path)) == 1
        assert s.append("a", [ev("T", b"y" * 500)], expected_version=6).first_position == 7
        after = content(s)
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl) as s:
        assert content(s) == after
