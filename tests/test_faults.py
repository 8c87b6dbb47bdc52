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


def test_a_failed_fsync_in_a_group_wakes_every_waiter_with_an_error(store_path: str, impl: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads append while each sync is slow; the tenth sync fails. Every append returns or
    raises StoreFailed (none hangs), and every one that returned is in the store when it is reopened."""
    import threading
    import time

    from evstore import store as store_mod

    real = store_mod.os.fdatasync
    syncs = [0]

    def slow_then_broken(fd: int) -> None:
        syncs[0] += 1
        time.sleep(0.002)
        if syncs[0] >= 10:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    done: dict[str, list[int]] = {}
    failed: list[str] = []
    with evstore.open(store_path, log_impl=impl) as s:
        monkeypatch.setattr(store_mod.os, "fdatasync", slow_then_broken)

        def work(name: str) -> None:
            done[name] = []
            for i in range(50):
                try:
                    s.append(name, [NewEvent("T", b"%d" % i)])
                except evstore.StoreFailed:
                    failed.append(name)
                    return
                done[name].append(i)

        threads = [threading.Thread(target=work, args=(f"s-{k}",)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a waiter was never woken"
        assert sorted(failed) == sorted(done)  # every thread met the failure
        monkeypatch.undo()
    with evstore.open(store_path, log_impl=impl) as s:
        for name, acked in done.items():
            got = [int(e.data) for e in s.read_stream(name)]
            assert got[: len(acked)] == acked


def test_full_lmdb_map_grows(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, map_size=1 << 20, durability="os") as s:
        for i in range(3000):
            s.append(f"stream-{i}", [NewEvent(f"T{i % 50}", b"x")])
        assert s.head() == 3000
        assert s.stream_version("stream-2999") == 1
