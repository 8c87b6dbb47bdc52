"""Written zeros ahead of the log's tail (evstore/storage/prepare.py): commits of a "fsync" store
land in space that holds written zeros, not unwritten extents; zeros never land on a commit, however
the zero writes and the appends and rolls interleave; a failed zero write only ends the preparing;
a failed sync of the zeros fails the store as any failed sync of the log does."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import struct
import threading
import time
from typing import Any

import pytest

import evstore
from evstore import tools
from evstore.storage import prepare
from tests.support import ev, run_threads

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 1
FIEMAP_EXTENT_UNWRITTEN = 0x800
_HDR = struct.Struct("=QQIIII")  # struct fiemap, without its extents
_EXT = struct.Struct("=QQQQQIIII")  # struct fiemap_extent


def extents(path: str, start: int, length: int) -> list[tuple[int, int, bool]]:
    """(offset, length, unwritten) of the file's extents over start..start+length (FIEMAP)."""
    n = 256
    buf = bytearray(_HDR.size + n * _EXT.size)
    _HDR.pack_into(buf, 0, start, length, FIEMAP_FLAG_SYNC, 0, n, 0)
    with open(path, "rb") as f:
        fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
    out = []
    for i in range(_HDR.unpack_from(buf)[3]):
        lo, _phys, ln, _r1, _r2, flags, _a, _b, _c = _EXT.unpack_from(buf, _HDR.size + i * _EXT.size)
        out.append((lo, ln, bool(flags & FIEMAP_EXTENT_UNWRITTEN)))
    return out


def unwritten(path: str, start: int, end: int) -> int:
    """Bytes of start..end held by unwritten extents."""
    total = 0
    for lo, ln, unw in extents(path, start, end - start):
        if unw:
            total += max(0, min(end, lo + ln) - max(start, lo))
    return total


def wait_for(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def caught_up(s: evstore.EventStore) -> bool:
    """Whether the preparer has zeroed all it will for now (whole chunks up to AHEAD past the tail)."""
    log = s._core.log
    p, seg = log.preparer, log.active
    with p.lock:
        return p.claim is None and p.zeroed >= min(seg.end + prepare.AHEAD - prepare.CHUNK, seg.allocated)


@pytest.fixture
def on_ext4_or_xfs(tmp_path: Any) -> None:
    if not prepare.worth_preparing(str(tmp_path)):
        pytest.skip("the zeros are written only on ext4 and XFS; this temporary folder is on neither")


def test_commits_land_in_written_zeros(tmp_path: Any, on_ext4_or_xfs: None) -> None:
    """With "fsync", the space after the tail is written zeros (no unwritten extent) up to where the
    preparer has got; with "os" it is unwritten, as fallocate left it."""
    found = {}
    for durability in ("fsync", "os"):
        path = str(tmp_path / durability)
        with evstore.open(path, durability=durability) as s:
            log = s._core.log
            assert (log.preparer is not None) == (durability == "fsync")
            for i in range(60):
                s.append("s", [ev("T", bytes([i % 251 + 1]) * 30000)])
            seg = log.active
            if durability == "fsync":
                wait_for(lambda: caught_up(s), "the preparer")
                zeroed = log.preparer.zeroed
            else:
                zeroed = min(seg.end + prepare.AHEAD - prepare.CHUNK, seg.allocated)
            start = -(-seg.end // 4096) * 4096
            assert zeroed - start >= prepare.CHUNK
            found[durability] = unwritten(seg.path, start, zeroed)
            # and every commit reads back
            assert [e.data[:1] for e in s.read_stream("s")] == [bytes([i % 251 + 1]) for i in range(60)]
    assert found["fsync"] == 0, "the space the preparer zeroed still holds unwritten extents"
    assert found["os"] > 0, "with 'os' the space ahead should be as fallocate left it (the check finds nothing)"


@pytest.mark.parametrize("seed", [1, 2])
def test_zeros_never_land_on_a_commit(tmp_path: Any, impl: str, seed: int, on_ext4_or_xfs: None,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks and steps, claims from the tail's next block, a slow preparer (each zero write waits
    before it writes, its claim held), small
    segments (many rolls), four threads appending commits of 100 B to 90 KB (larger than a chunk and
    than the distance kept zeroed): every acknowledged commit reads back byte for byte, the log
    verifies, and the writer did wait on claims under way (the race was run)."""
    monkeypatch.setattr(prepare, "CHUNK", 8192)
    monkeypatch.setattr(prepare, "AHEAD", 32768)
    monkeypatch.setattr(prepare, "STEP", 4096)
    monkeypatch.setattr(prepare, "GAP", 0)  # claims from the tail's next block on
    real_pwrite = os.pwrite
    waits = [0]

    def slow_pwrite(fd: int, data: Any, off: int) -> int:
        if threading.current_thread().name == "evstore-prepare":
            time.sleep(0.002)
        return real_pwrite(fd, data, off)

    real_reserve = prepare.Preparer.reserve

    def counted(self: prepare.Preparer, start: int, end: int) -> None:
        claim = self.claim  # (read without the lock: a count, not a decision)
        if claim is not None and claim[0] < end and start < claim[1]:
            waits[0] += 1
        real_reserve(self, start, end)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    monkeypatch.setattr(prepare.Preparer, "reserve", counted)
    path = str(tmp_path / "s")
    appended: dict[str, list[bytes]] = {}
    with evstore.open(path, durability="fsync", log_impl=impl, segment_size=512 << 10) as s:
        assert s._core.log.preparer is not None

        def work(k: int) -> None:
            rnd = random.Random(seed * 100 + k)
            name = f"t{k}"
            mine = appended[name] = []
            for i in range(60):
                n = rnd.choice([1, 1, 2, 5, 30])
                size = rnd.choice([100, 700, 3000])
                evs = [ev("T", bytes([(i * 7 + j) % 255 + 1]) * size) for j in range(n)]
                s.append(name, evs)
                mine.extend(e.data for e in evs)

        run_threads(work, 4)
        segments = len(os.listdir(os.path.join(path, "log")))
    assert segments >= 4, "the run should roll several segments"
    assert waits[0] > 0, "no append met a zero write under way: the race was not run"
    rep = tools.verify(path)
    assert rep.ok and not rep.problems, rep.problems
    with evstore.open(path, log_impl=impl) as s:
        for name, datas in appended.items():
            assert [e.data for e in s.read_stream(name)] == datas


def test_a_failed_zero_write_only_ends_the_preparing(tmp_path: Any, on_ext4_or_xfs: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def failing(fd: int, data: Any, off: int) -> int:
        if threading.current_thread().name == "evstore-prepare":
            raise OSError(errno.EIO, "injected")
        return real_pwrite(fd, data, off)

    monkeypatch.setattr(os, "pwrite", failing)
    path = str(tmp_path / "s")
    with evstore.open(path, durability="fsync") as s:
        s.append("s", [ev("T", b"a")])
        p = s._core.log.preparer
        wait_for(lambda: p.error is not None, "the failed zero write")
        assert p.error.errno == errno.EIO and p.claim is None
        for i in range(20):
            s.append("s", [ev("T", b"x" * 20000)])
    with evstore.open(path) as s:
        assert s.stream_version("s") == 21
    assert tools.verify(path).ok


def test_a_failed_sync_of_the_zeros_fails_the_store(tmp_path: Any, on_ext4_or_xfs: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The preparer's descriptor is the log's file: a failed fdatasync of it may have dropped
    pages of commits too. It is latched like any failed sync of the log: the next append is refused
    (StoreFailed), and nothing acknowledged before is lost."""
    real = os.fdatasync

    def failing(fd: int) -> None:
        if threading.current_thread().name == "evstore-prepare":
            raise OSError(errno.EIO, "injected")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    path = str(tmp_path / "s")
    acked = 0
    s = evstore.open(path, durability="fsync")
    try:
        p = s._core.log.preparer
        with pytest.raises(evstore.StoreFailed):
            for _ in range(50):
                s.append("s", [ev("T", b"y" * 1000)])
                acked += 1
                if p.error is not None:
                    s.append("s", [ev("T", b"after")])  # refused: raises
                    acked += 1
        assert p.error is not None and p.error.errno == errno.EIO
        assert s._core.log.sync_error() is not None
    finally:
        try:
            s.close()
        except evstore.EvstoreError:
            pass
    monkeypatch.undo()
    with evstore.open(path) as s:
        assert s.stream_version("s") >= acked


def test_only_fsync_writers_on_ext4_or_xfs_prepare(tmp_path: Any) -> None:
    mounts = tmp_path / "mountinfo"
    mounts.write_text(
        "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "30 22 0:40 / /mnt/cow rw - btrfs /dev/vdb rw\n"
        "31 22 0:41 / /mnt/with\\040space rw shared:1 - xfs /dev/vdc rw\n"
        "32 30 0:42 / /mnt/cow/fast rw - ext4 /dev/vdd rw\n"
        "garbage\n")
    m = str(mounts)
    assert prepare.worth_preparing("/var/lib/x", m)
    assert not prepare.worth_preparing("/mnt/cow/store", m)
    assert prepare.worth_preparing("/mnt/cow/fast/store", m)
    assert prepare.worth_preparing("/mnt/cowboy", m)  # a prefix of the path's text, not of its components
    assert prepare.worth_preparing("/mnt/with space/s", m)
    assert not prepare.worth_preparing("/x", str(tmp_path / "absent"))
    path = str(tmp_path / "s")
    expected = prepare.worth_preparing(path)
    with evstore.open(path, durability="os") as s:
        s.append("s", [ev()])
        assert s._core.log.preparer is None
    with evstore.open(path, durability="fsync") as s:
        s.append("s", [ev()])
        assert (s._core.log.preparer is not None) == expected
    with evstore.open(path, readonly=True) as r:
        assert r._core.log.preparer is None


def test_close_ends_the_thread(tmp_path: Any, on_ext4_or_xfs: None) -> None:
    with evstore.open(str(tmp_path / "s"), durability="fsync") as s:
        s.append("s", [ev()])
        thread = s._c().log.preparer.thread  # type: ignore[union-attr]
        assert thread is not None and thread.is_alive() and thread.name == "evstore-prepare"
    assert not thread.is_alive()
