"""The undo of a failed write when its zeros cannot be written either (a full disk, a failing
device): a hole is punched over what the write may have left, the file keeping its size, so that
another process reading the segment through a mapping never faults; when the hole cannot be punched
either, the store refuses writes until reopened and leaves the bytes to the next open's recovery."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import evstore
from evstore import tools
from evstore.storage import holes
from evstore.storage import segments as segmod

from tests.support import commits_end, ev
from tests.writepath_helpers import PwriteOf, seg_files

# A process that maps a segment whole, says so, then (told to go on) touches every page of the
# mapping and prints what it read past `off`: a page cut off under the mapping kills it (SIGBUS).
MAPPER = textwrap.dedent("""
    import mmap, sys
    path, off = sys.argv[1], int(sys.argv[2])
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    print(len(m), flush=True)
    sys.stdin.readline()
    total = sum(m[i] for i in range(0, len(m), 4096))
    print(total, any(m[off:]), flush=True)
""")


REAL_PWRITE = os.pwrite  # (the tests replace os.pwrite, the undo's zero write, for segments.py)


def written_then_eio(real: Any) -> PwriteOf:
    """The log implementation whose writes reach the file whole, then report EIO."""
    def pwrite(fd: int, buf: Any, off: int) -> None:
        assert REAL_PWRITE(fd, bytes(buf), off) == len(buf)
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    return PwriteOf(real, pwrite)


def no_zeros(fd: int, data: Any, off: int) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_the_undo_punches_a_hole_and_a_reader_mapping_the_segment_never_faults(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("T", b"before")])
        core = s._core
        assert core is not None
        real = core.log.impl
        seg = seg_files(store_path)[-1]
        end, size = commits_end(seg), os.path.getsize(seg)
        assert size > end + 4096 * 4  # allocated space follows the tail
        punched: list[tuple[int, int]] = []
        real_punch = holes.punch_zeros

        def punch(fd: int, off: int, n: int) -> None:
            with open(seg, "rb") as f:  # the failed write had put the whole commit there
                f.seek(off)
                assert b"lost" * 100 in f.read(n)
            punched.append((off, n))
            real_punch(fd, off, n)

        monkeypatch.setattr(holes, "punch_zeros", punch)
        reader = subprocess.Popen([sys.executable, "-c", MAPPER, seg, str(end)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert int(reader.stdout.readline()) == size  # type: ignore[union-attr]
            core.log.impl = written_then_eio(real)  # type: ignore[assignment]
            monkeypatch.setattr(segmod.os, "pwrite", no_zeros)
            with pytest.raises(evstore.StorageError):
                s.append("s", [ev("T", b"lost" * 3000)], expected_version=1)
            monkeypatch.undo()
            assert len(punched) == 1 and punched[0][0] == end and punched[0][1] > 12000  # the commit's bytes
            core.log.impl = real
            assert os.path.getsize(seg) == size and s.head() == 1  # not cut: the size it had
            with open(seg, "rb") as f:
                f.seek(end)
                assert not any(f.read())  # zeros where the failed write had put the whole commit
            out, _ = reader.communicate("go\n", timeout=60)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        assert reader.returncode == 0, f"the reader died ({reader.returncode}): a page was cut off under its mapping"
        assert out.split()[-1] == "False"  # it read zeros past the tail
        for i in range(5):
            s.append("s", [ev("T", b"after%d" % i)])
        assert os.path.getsize(seg) >= size  # (the hole's space allocated again, and more ahead)
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.data for e in s.read_stream("s")] == [b"before"] + [b"after%d" % i for i in range(5)]
    assert tools.verify(store_path).ok


def test_no_hole_either_refuses_writes_until_reopened_and_keeps_every_acknowledged_commit(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("T", b"before")])
        core = s._core
        assert core is not None
        real = core.log.impl
        seg = seg_files(store_path)[-1]
        size = os.path.getsize(seg)
        core.log.impl = written_then_eio(real)  # type: ignore[assignment]
        monkeypatch.setattr(segmod.os, "pwrite", no_zeros)

        def no_hole(fd: int, off: int, n: int) -> None:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        monkeypatch.setattr(holes, "punch_zeros", no_hole)
        with pytest.raises(evstore.StoreFailed, match="could not be undone"):
            s.append("s", [ev("T", b"unknown")], expected_version=1)
        monkeypatch.undo()
        core.log.impl = real
        assert os.path.getsize(seg) == size
        with pytest.raises(evstore.StoreFailed):
            s.append("s", [ev("T", b"refused")])
        assert [e.data for e in s.read_stream("s")] == [b"before"]
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl) as s:  # the write had reached the file whole
        assert [e.data for e in s.read_stream("s")] == [b"before", b"unknown"]
        s.append("s", [ev("T", b"after")], expected_version=2)
    assert tools.verify(store_path).ok


def test_punch_zeros_makes_a_range_read_zeros_and_keeps_the_size(tmp_path: Any) -> None:
    p = str(tmp_path / "f")
    with open(p, "wb") as f:
        f.write(b"\xff" * 20000)
    fd = os.open(p, os.O_RDWR)
    try:
        holes.punch_zeros(fd, 1000, 9000)  # partial blocks at both ends, whole ones between
        holes.punch_zeros(fd, 0, 0)
        with pytest.raises(OSError) as info:
            holes.punch_zeros(fd, -1, 10)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    with open(p, "rb") as f:
        got = f.read()
    assert got == b"\xff" * 1000 + bytes(9000) + b"\xff" * 10000


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_the_undo_is_synced_before_the_append_raises(store_path: str, impl: str, durability: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the kernel wrote back of the failed write before its zeros must not come back after a
    power cut: the appending thread syncs the zeros before it says nothing was written."""
    with evstore.open(store_path, log_impl=impl, durability=durability) as s:
        s.append("s", [ev("T", b"before")])
        core = s._core
        assert core is not None
        real = core.log.impl
        me = threading.get_ident()
        seen: list[str] = []
        real_sync = os.fdatasync

        def pwrite(fd: int, buf: Any, off: int) -> None:
            seen.append("write")
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def zeros(fd: int, data: Any, off: int) -> int:
            if threading.get_ident() == me:
                seen.append("zeros")
            return REAL_PWRITE(fd, data, off)

        def sync(fd: int) -> None:
            if threading.get_ident() == me:
                seen.append("sync")
            real_sync(fd)

        core.log.impl = PwriteOf(real, pwrite)  # type: ignore[assignment]
        monkeypatch.setattr(segmod.os, "pwrite", zeros)
        monkeypatch.setattr(segmod.os, "fdatasync", sync)
        with pytest.raises(evstore.StorageError, match="nothing was"):
            s.append("s", [ev("T", b"lost")], expected_version=1)
        monkeypatch.undo()
        core.log.impl = real
        assert seen == ["write", "zeros", "sync"]
        s.append("s", [ev("T", b"after")], expected_version=1)
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.data for e in s.read_stream("s")] == [b"before", b"after"]


def test_an_undo_whose_sync_fails_refuses_writes_until_reopened(store_path: str, impl: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("s", [ev("T", b"before")])
        s.sync()
        core = s._core
        assert core is not None
        real = core.log.impl

        def pwrite(fd: int, buf: Any, off: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def sync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        core.log.impl = PwriteOf(real, pwrite)  # type: ignore[assignment]
        monkeypatch.setattr(segmod.os, "fdatasync", sync)
        with pytest.raises(evstore.StoreFailed, match="could not be undone"):
            s.append("s", [ev("T", b"lost")], expected_version=1)
        monkeypatch.undo()
        core.log.impl = real
        with pytest.raises(evstore.StoreFailed):
            s.append("s", [ev("T", b"refused")])
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.data for e in s.read_stream("s")] == [b"before"]
        s.append("s", [ev("T", b"after")], expected_version=1)
    assert tools.verify(store_path).ok
