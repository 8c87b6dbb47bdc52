"""Injected faults: a full disk mid-write, a failing fsync, an LMDB map that fills up."""

from __future__ import annotations

import errno
import os
import types

import pytest

import evstore
from evstore import NewEvent


class FaultyLog(types.ModuleType):
    """The log implementation with a pwrite that writes half the bytes and then fails."""

    def __init__(self, real: types.ModuleType, err: int) -> None:
        super().__init__("faulty")
        self.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__") and k != "pwrite"})
        self._real = real
        self._err = err

    def pwrite(self, fd: int, buf: bytes, offset: int) -> None:  # type: ignore[override]
        os.pwrite(fd, bytes(buf[: len(buf) // 2]), offset)
        raise OSError(self._err, os.strerror(self._err))


def log_size(path: str) -> int:
    d = os.path.join(path, "log")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_failed_write_leaves_the_store_consistent_and_usable(store_path: str, impl: str, err: int) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [NewEvent("T", b"before")])
        core = s._core
        assert core is not None
        real = core.log.impl
        before = (log_size(store_path), s.head())
        core.log.impl = FaultyLog(real, err)
        with pytest.raises(evstore.StorageError) as info:
            s.append("s", [NewEvent("T", b"x" * 1000)], expected_version=1)
        assert info.value.errno == err and "nothing was written" in str(info.value)
        assert (log_size(store_path), s.head()) == before  # the half-written commit was cut back
        assert [e.data for e in s.read_stream("s")] == [b"before"]
        core.log.impl = real  # space returns
        r = s.append("s", [NewEvent("T", b"after")], expected_version=1)
        assert (r.first_version, r.first_position) == (2, 2)
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.data for e in s.read_stream("s")] == [b"before", b"after"]
    from evstore import tools

    assert tools.verify(store_path).ok


def test_failed_fsync_stops_writes_until_reopen(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from evstore import store as store_mod

    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [NewEvent("T", b"1")])

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(store_mod.os, "fdatasync", broken)
        with pytest.raises(evstore.StoreFailed):
            s.append("s", [NewEvent("T", b"2")])
        monkeypatch.undo()
        with pytest.raises(evstore.StoreFailed):
            s.append("s", [NewEvent("T", b"3")])
        assert [e.data for e in s.read_stream("s")] == [b"1"]  # reads go on
    with evstore.open(store_path, log_impl=impl) as s:
        # the unacknowledged commit may or may not be there; whatever is there is whole and consistent
        data = [e.data for e in s.read_stream("s")]
        assert data in ([b"1"], [b"1", b"2"])
        s.append("s", [NewEvent("T", b"4")])
        assert [e.position for e in s.read_all()] == list(range(1, len(data) + 2))


def test_full_lmdb_map_grows(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, map_size=1 << 20, durability="os") as s:
        for i in range(3000):
            s.append(f"stream-{i}", [NewEvent(f"T{i % 50}", b"x")])
        assert s.head() == 3000
        assert s.stream_version("stream-2999") == 1
