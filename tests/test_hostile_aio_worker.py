"""Hostile tests of the asyncio handle's worker thread (evstore/aio/worker.py): the GATHER wait while
the loop resumes the tasks a sync woke, close, cancellation, a blocked loop, failing syncs."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
import time
from typing import Any

import pytest

import evstore
from evstore import NO_STREAM, NewEvent, aio
from evstore.aio import store as aio_store
from evstore.aio import worker as worker_module
from evstore.engine import groupcommit


def ev(data: bytes = b"x") -> NewEvent:
    return NewEvent("T", data)


class Watch:
    """Instrumentation: counts fdatasyncs; records every durable wait resolved (or an append
    returned) before its commit was durable; collects the loop's unhandled callback errors."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> None:
        self.syncs = 0
        self.early: list[tuple[int, int, str]] = []
        self.loop_errors: list[Any] = []
        self.fail_after = fail_after
        self.seq_of: dict[int, tuple[Any, int]] = {}
        real = os.fdatasync

        def counting(fd: int) -> None:
            self.syncs += 1
            if self.fail_after is not None and self.syncs > self.fail_after:
                raise OSError(errno.EIO, "Input/output error")
            real(fd)

        monkeypatch.setattr(groupcommit.os, "fdatasync", counting)
        real_durable = worker_module.Worker.durable
        real_drain = worker_module.Worker._drain
        watch = self

        def durable(self: worker_module.Worker, group: Any, seq: int) -> asyncio.Future[None]:
            fut = real_durable(self, group, seq)
            watch.seq_of[id(fut)] = (group, seq)
            return fut

        def drain(self: worker_module.Worker) -> None:
            with self.wake:
                head = list(self.settled)[: worker_module.SETTLE]
            for fut, err in head:
                if err is None and not fut.done():
                    group, seq = watch.seq_of.get(id(fut), (None, 0))
                    if group is not None and group.durable_seq < seq:
                        watch.early.append((seq, group.durable_seq, "drain"))
            real_drain(self)

        real_sd = aio_store.AsyncEventStore._durable

        async def _durable(self: Any, core: Any, seq: int) -> None:
            await real_sd(self, core, seq)
            if seq and core.group.durable_seq < seq:
                watch.early.append((seq, core.group.durable_seq, "append"))

        monkeypatch.setattr(worker_module.Worker, "durable", durable)
        monkeypatch.setattr(worker_module.Worker, "_drain", drain)
        monkeypatch.setattr(aio_store.AsyncEventStore, "_durable", _durable)

    def install_loop_handler(self) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: self.loop_errors.append(ctx))


def run(coro: Any, timeout: float = 20) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def check_reopened(path: str, impl: str, acked: dict[bytes, tuple[str, int]], maybe: set[bytes] = frozenset()) -> None:
    """After a reopen: every acknowledged payload is there once at its (stream, version); anything
    else is in `maybe`."""
    with evstore.open(path, log_impl=impl) as s:
        evs = [(str(e.stream), e.version, bytes(e.data)) for e in s.read_all()]
    datas = [d for _s, _v, d in evs]
    assert len(set(datas)) == len(datas), "duplicates"
    where = {d: (st, v) for st, v, d in evs}
    missing = [d for d in acked if where.get(d) != acked[d]]
    assert not missing, (missing[:5], [where.get(d) for d in missing[:5]])
    extra = set(where) - set(acked) - set(maybe)
    assert not extra, sorted(extra)[:5]


# -- many tasks ------------------------------------------------------------------------------

@pytest.mark.parametrize("n_tasks", [500])
def test_many_tasks_all_durable_when_woken_and_few_syncs(store_path: str, impl: str, n_tasks: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    w = Watch(monkeypatch)
    acked: dict[bytes, tuple[str, int]] = {}

    async def main() -> None:
        w.install_loop_handler()
        async with aio.open(store_path, log_impl=impl) as s:
            await s.append("warm", [ev(b"warm")])
            acked[b"warm"] = ("warm", 1)

            async def task(n: int) -> None:
                for i in range(4):
                    d = b"%d:%d" % (n, i)
                    r = await s.append(f"t{n}", [ev(d)], expected_version=i or NO_STREAM)
                    assert r.first_version == i + 1
                    acked[d] = (f"t{n}", i + 1)

            before = w.syncs
            await asyncio.gather(*(task(n) for n in range(n_tasks)))
            nsyncs = w.syncs - before
            assert await s.head() == n_tasks * 4 + 1
            for n in (0, n_tasks // 2, n_tasks - 1):
                assert [e.data async for e in s.read_stream(f"t{n}")] == [b"%d:%d" % (n, i) for i in range(4)]
            assert nsyncs < n_tasks * 4 / 10, nsyncs

    run(main())
    assert not w.early, w.early[:5]
    assert not w.loop_errors, w.loop_errors[:3]
    check_reopened(store_path, impl, acked)


def test_a_sync_wakes_tasks_while_gather_is_long(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """GATHER = 30 s: only the end of each wake-up (draining cleared) may start the next sync. 100
    tasks x 10 appends must still finish in seconds (no lost wake of the worker)."""
    monkeypatch.setattr(worker_module, "GATHER", 30.0)
    w = Watch(monkeypatch)

    async def main() -> None:
        async with aio.open(store_path, log_impl=impl) as s:
            async def task(n: int) -> None:
                for i in range(10):
                    await s.append(f"g{n}", [ev()], expected_version=i or NO_STREAM)

            t0 = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(task(n) for n in range(100))), 10)
            assert time.monotonic() - t0 < 10
            assert await s.head() == 1000

    run(main())
    assert not w.early


def test_a_lone_task_after_a_wake_up_is_not_held_for_gather(store_path: str, impl: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With GATHER = 30 s, a lone task appending in a loop (each wake-up resumes one task) must not
    wait out GATHER on each append."""
    monkeypatch.setattr(worker_module, "GATHER", 30.0)

    async def main() -> None:
        async with aio.open(store_path, log_impl=impl) as s:
            t0 = time.monotonic()
            for i in range(30):
                await asyncio.wait_for(s.append("lone", [ev()]), 5)
            assert time.monotonic() - t0 < 10

    run(main())


# -- close -----------------------------------------------------------------------------------

def test_close_while_hundreds_of_tasks_append(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """300 tasks append in a loop; the handle closes mid-flight: each append returns (then it was
    durable when it returned, and is there after reopen) or raises StoreClosed (and is not there)."""
    w = Watch(monkeypatch)
    acked: dict[bytes, tuple[str, int]] = {}
    closed: set[bytes] = set()

    async def main() -> None:
        w.install_loop_handler()
        s = await aio.open(store_path, log_impl=impl)

        async def task(n: int) -> None:
            v = 0
            for i in range(1000):
                d = b"%d:%d" % (n, i)
                try:
                    r = await s.append(f"c{n}", [ev(d)], expected_version=v or NO_STREAM)
                except evstore.StoreClosed:
                    closed.add(d)
                    return
                v = r.last_version
                acked[d] = (f"c{n}", v)

        tasks = [asyncio.ensure_future(task(n)) for n in range(300)]
        await asyncio.sleep(0.15)
        await asyncio.wait_for(s.close(), 10)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert len(closed) == 300  # every task ended on StoreClosed

    run(main())
    assert acked
    assert not w.early, w.early[:5]
    assert not w.loop_errors, w.loop_errors[:3]
    check_reopened(store_path, impl, acked)


def test_close_during_the_gather_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker is in the GATHER wait (draining set, GATHER 30 s) when the handle closes: the close
    must not wait out GATHER; the waiting future resolves first."""
    monkeypatch.setattr(worker_module, "GATHER", 30.0)

    class Group:
        durable_seq = 0
        asked: list[int] = []

        def await_durable(self, seq: int) -> None:
            self.asked.append(seq)
            self.durable_seq = max(self.durable_seq, seq)

    async def main() -> None:
        wk = worker_module.Worker(asyncio.get_running_loop(), "mem")
        g: Any = Group()
        with wk.wake:
            wk.draining = True  # a wake-up that never ends
        fut = wk.durable(g, 7)
        await asyncio.sleep(0.05)
        assert not fut.done()
        t0 = time.monotonic()
        closing = wk.run(lambda: "closed", last=True)
        assert await asyncio.wait_for(closing, 5) == "closed"
        assert time.monotonic() - t0 < 5 and g.asked == [7]
        # (draining was set by hand, with no `_drain` scheduled: schedule the one a real wake-up has)
        asyncio.get_running_loop().call_soon(wk._drain)
        await asyncio.wait_for(fut, 5)
        wk.thread.join(5)
        assert not wk.thread.is_alive()
        with pytest.raises(evstore.StoreClosed):
            wk.durable(g, 8)

    run(main())


def test_async_with_exit_while_tasks_wait_on_a_real_store(store_path: str, impl: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaving `async with` with appends waiting on their sync (the loop blocked so the worker is in
    its GATHER wait): every append written before the close resolves with a result, durable."""
    w = Watch(monkeypatch)
    acked: dict[bytes, tuple[str, int]] = {}

    async def main() -> None:
        w.install_loop_handler()
        async with aio.open(store_path, log_impl=impl) as s:
            await s.append("warm", [ev(b"warm")])
            acked[b"warm"] = ("warm", 1)

            async def one(n: int) -> None:
                r = await s.append(f"x{n}", [ev(b"x%d" % n)])
                acked[b"x%d" % n] = (f"x{n}", r.first_version)

            # first wave: its sync wakes them 2 per turn; the second wave is written during that
            first = [asyncio.ensure_future(one(n)) for n in range(50)]
            await asyncio.sleep(0)
            second = [asyncio.ensure_future(one(n)) for n in range(50, 100)]
            await asyncio.sleep(0)
        # exit closed the handle; every task must now finish with a result
        outcomes = await asyncio.wait_for(asyncio.gather(*first, *second, return_exceptions=True), 10)
        bad = [o for o in outcomes if o is not None]
        assert not bad, bad[:3]

    run(main())
    assert not w.early, w.early[:5]
    assert not w.loop_errors
    check_reopened(store_path, impl, acked)


# -- cancellation ----------------------------------------------------------------------------

def test_cancelling_tasks_at_random_moments(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """400 tasks append with caller-free plain events; random ones are cancelled at random turns of
    the loop: no loop callback error, no hang, every returned append durable and there after reopen;
    a cancelled one is there or not, once."""
    w = Watch(monkeypatch)
    acked: dict[bytes, tuple[str, int]] = {}
    maybe: set[bytes] = set()

    async def main() -> None:
        w.install_loop_handler()
        async with aio.open(store_path, log_impl=impl) as s:
            async def task(n: int) -> None:
                for i in range(10):
                    d = b"%d:%d" % (n, i)
                    maybe.add(d)
                    r = await s.append(f"k{n}", [ev(d)])
                    maybe.discard(d)
                    acked[d] = (f"k{n}", r.first_version)

            tasks = [asyncio.ensure_future(task(n)) for n in range(400)]
            rnd = random.Random(7)
            for _turn in range(200):
                for t in rnd.sample(tasks, 3):
                    t.cancel()
                await asyncio.sleep(0 if rnd.random() < 0.8 else 0.001)
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
            assert any(isinstance(o, asyncio.CancelledError) for o in outcomes)
            assert all(o is None or isinstance(o, asyncio.CancelledError) for o in outcomes), \
                [o for o in outcomes if o is not None and not isinstance(o, asyncio.CancelledError)][:3]
            await s.append("after", [ev(b"after")])
            acked[b"after"] = ("after", 1)

    run(main())
    assert not w.early, w.early[:5]
    assert not w.loop_errors, w.loop_errors[:3]
    check_reopened(store_path, impl, acked, maybe)


# -- a blocked loop --------------------------------------------------------------------------

def test_a_loop_blocked_longer_than_gather(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task blocks the loop (time.sleep 20 ms, 4x GATHER) every few turns while 200 tasks append:
    all finish, durable when woken."""
    w = Watch(monkeypatch)
    acked: dict[bytes, tuple[str, int]] = {}

    async def main() -> None:
        w.install_loop_handler()
        async with aio.open(store_path, log_impl=impl) as s:
            done = False

            async def blocker() -> None:
                while not done:
                    time.sleep(0.02)
                    for _ in range(3):
                        await asyncio.sleep(0)

            async def task(n: int) -> None:
                for i in range(5):
                    d = b"%d:%d" % (n, i)
                    r = await s.append(f"b{n}", [ev(d)], expected_version=i or NO_STREAM)
                    acked[d] = (f"b{n}", r.first_version)

            b = asyncio.ensure_future(blocker())
            await asyncio.wait_for(asyncio.gather(*(task(n) for n in range(200))), 15)
            done = True
            await b
            assert await s.head() == 1000

    run(main())
    assert not w.early, w.early[:5]
    assert not w.loop_errors
    check_reopened(store_path, impl, acked)


# -- failing syncs ---------------------------------------------------------------------------

@pytest.mark.parametrize("fail_after", [1, 2, 3, 5])
def test_fdatasync_fails_during_a_wake_up(store_path: str, impl: str, fail_after: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The n-th sync fails (EIO) while the tasks the previous one woke are still resuming: every append
    returns durably or raises StoreFailed; none hangs; appends after the failure raise StoreFailed;
    what was acknowledged is there after reopen."""
    w = Watch(monkeypatch)
    acked: dict[bytes, tuple[str, int]] = {}
    maybe: set[bytes] = set()
    failed = [0]

    async def main() -> None:
        w.install_loop_handler()
        s = await aio.open(store_path, log_impl=impl)
        w.syncs = 0
        w.fail_after = fail_after

        async def task(n: int) -> None:
            for i in range(20):
                d = b"%d:%d" % (n, i)
                maybe.add(d)
                try:
                    r = await s.append(f"e{n}", [ev(d)])
                except evstore.StoreFailed:
                    failed[0] += 1
                    return
                maybe.discard(d)
                acked[d] = (f"e{n}", r.first_version)

        await asyncio.wait_for(asyncio.gather(*(task(n) for n in range(120))), 15)
        assert failed[0] == 120
        with pytest.raises(evstore.StoreFailed):
            await s.append("late", [ev(b"late")])
        try:
            await asyncio.wait_for(s.close(), 10)
        except evstore.EvstoreError:
            pass

    run(main())
    assert not w.early, w.early[:5]
    assert not w.loop_errors, w.loop_errors[:3]
    monkeypatch.undo()
    check_reopened(store_path, impl, acked, maybe)


# -- threads and tasks together --------------------------------------------------------------

def test_threads_and_many_tasks_on_one_store(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """6 threads (threaded handle, combined appends) and 300 tasks append to the same store, some to
    the same streams with expected versions: every acknowledged append durable when it returned,
    there once after reopen; the syncs are shared."""
    w = Watch(monkeypatch)
    acked: dict[bytes, tuple[str, int]] = {}
    lock = threading.Lock()

    async def main() -> None:
        w.install_loop_handler()
        async with aio.open(store_path, log_impl=impl) as s:
            sync = evstore.open(store_path)
            group = sync._core.group  # type: ignore[union-attr]

            def thread(n: int) -> None:
                for i in range(60):
                    d = b"T%d:%d" % (n, i)
                    st = f"shared-{(n + i) % 4}"
                    try:
                        r = sync.append(st, [ev(d)], expected_version=sync.stream_version(st))
                    except evstore.WrongExpectedVersion:
                        continue
                    assert group.durable_seq >= 1
                    with lock:
                        acked[d] = (st, r.first_version)

            ts = [threading.Thread(target=thread, args=(n,)) for n in range(6)]
            for t in ts:
                t.start()

            async def task(n: int) -> None:
                for i in range(6):
                    d = b"A%d:%d" % (n, i)
                    st = f"shared-{n % 4}" if n % 5 == 0 else f"a{n}"
                    try:
                        r = await s.append(st, [ev(d)], expected_version=await s.stream_version(st))
                    except evstore.WrongExpectedVersion:
                        continue
                    with lock:
                        acked[d] = (st, r.first_version)

            before = w.syncs
            await asyncio.wait_for(asyncio.gather(*(task(n) for n in range(300))), 15)
            for t in ts:
                await asyncio.get_running_loop().run_in_executor(None, t.join, 15)
            assert not any(t.is_alive() for t in ts)
            n = w.syncs - before
            assert n < len(acked) / 3, (n, len(acked))
            sync.close()

    run(main())
    assert not w.early, w.early[:5]
    assert not w.loop_errors, w.loop_errors[:3]
    check_reopened(store_path, impl, acked)


def test_two_handles_on_one_loop_share_a_store(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two asyncio handles (two workers) of one store on one loop, 200 tasks each: nothing lost, all
    durable when woken; closing one mid-flight leaves the other working."""
    w = Watch(monkeypatch)
    acked: dict[bytes, tuple[str, int]] = {}
    maybe: set[bytes] = set()

    async def main() -> None:
        w.install_loop_handler()
        a = await aio.open(store_path, log_impl=impl)
        b = await aio.open(store_path, log_impl=impl)

        async def task(h: Any, tag: bytes, n: int) -> None:
            for i in range(8):
                d = b"%s%d:%d" % (tag, n, i)
                maybe.add(d)
                try:
                    r = await h.append(f"{tag.decode()}{n}", [ev(d)])
                except evstore.StoreClosed:
                    maybe.discard(d)
                    return
                maybe.discard(d)
                acked[d] = (f"{tag.decode()}{n}", r.first_version)

        ta = [asyncio.ensure_future(task(a, b"a", n)) for n in range(200)]
        tb = [asyncio.ensure_future(task(b, b"b", n)) for n in range(200)]
        await asyncio.sleep(0.05)
        await asyncio.wait_for(a.close(), 10)
        await asyncio.wait_for(asyncio.gather(*ta, *tb), 15)
        assert sum(1 for d in acked if d.startswith(b"b")) == 1600
        await b.append("end", [ev(b"end")])
        acked[b"end"] = ("end", 1)
        await b.close()

    run(main())
    assert not w.early, w.early[:5]
    assert not w.loop_errors, w.loop_errors[:3]
    check_reopened(store_path, impl, acked, maybe)


def test_appends_written_before_close_are_complete_when_close_returns(store_path: str, impl: str) -> None:
    """`close()`: "appends already written complete (they are made durable first)". 100 appends are
    written (each task past its write, waiting for its sync) when close is awaited: once it returns,
    every one of those tasks has its result."""
    async def main() -> None:
        s = await aio.open(store_path, log_impl=impl)
        await s.append("warm", [ev()])
        tasks = [asyncio.ensure_future(s.append(f"w{n}", [ev()])) for n in range(100)]
        await asyncio.sleep(0)  # every task has written its commit and waits on the worker
        assert s._core.group.written_seq == 101  # type: ignore[attr-defined]
        await asyncio.wait_for(s.close(), 10)
        pending = [n for n, t in enumerate(tasks) if not t.done()]
        assert not pending, f"{len(pending)} appends written before close() still pending after it returned"
        assert all(isinstance(t.result(), evstore.AppendResult) for t in tasks)

    run(main())
