"""What only the asyncio API has: the loop is never held for long, concurrent tasks share syncs on one
worker thread, cancellation and close are clean, and subscriptions are woken by descriptors — commits
of another process included. (The behaviour it shares with the threaded API is checked once, over
the `api` fixture, in test_store.py, test_query.py, test_subscribe.py and test_consumer.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import evstore
from evstore import NO_STREAM, NewEvent, aio
from evstore.engine import groupcommit

from conftest import PY, python_env


def ev(t: str = "T", data: bytes = b"x", **kw: Any) -> NewEvent:
    return NewEvent(t, data, **kw)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def lags_during(work: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    """(how late each tick of a 1 ms ticker task was while `work()` ran, its result).

    Lateness is counted in the loop thread's CPU time (the time the loop spent running other steps
    past the tick's due time), not the wall clock: on a shared machine the thread is preempted
    for milliseconds at a time, which says nothing about how long evstore holds the loop. (`evstore
    bench` reports the wall-clock lag.)

    The interpreter's garbage collections on the loop thread are left out too: they are the
    interpreter's pause, not the store's (a young collection takes 0.1 to 0.5 ms here, a middle
    one 1 to 3 ms, whoever allocated last), and they would set the tail of the figure."""
    lags: list[float] = []
    done = False
    loop_thread = threading.get_ident()
    in_gc = [0.0, 0.0]  # CPU seconds the loop thread spent collecting; when its collection began

    def collecting(phase: str, _info: dict[str, Any]) -> None:
        if threading.get_ident() == loop_thread:
            if phase == "start":
                in_gc[1] = time.thread_time()
            else:
                in_gc[0] += time.thread_time() - in_gc[1]

    async def ticker() -> None:
        while not done:
            t, g = time.thread_time(), in_gc[0]
            await asyncio.sleep(0.001)
            lags.append(max(0.0, time.thread_time() - t - (in_gc[0] - g) - 0.001))

    gc.collect()
    gc.freeze()  # a full collection walks every live object: the interpreter's pause, not the store's
    gc.callbacks.append(collecting)
    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    try:
        result = await work()
    finally:
        done = True
        await task
        gc.callbacks.remove(collecting)
        gc.unfreeze()
    return lags, result


def p99(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.99)] if xs else 0.0


# The loop-lag checks use the C log: the pure-Python twin verifies a commit's checksums in Python,
# so one commit of 100 events alone takes milliseconds there (its steps are bounded by one commit).


@pytest.fixture
def big_store(store_path: str) -> str:
    """A store of 100,000 events (1,000 commits of 100, four types, tags on every tenth commit)."""
    with evstore.open(store_path, log_impl="c", durability="os") as s:
        for c in range(1_000):
            tags = ("k:%d" % (c % 7),) if c % 10 == 0 else ()
            s.append(f"s-{c % 50}", [ev(f"T{i % 4}", bytes(200), tags=tags) for i in range(100)])
    return store_path


def test_replays_never_hold_the_loop_for_more_than_about_a_millisecond(big_store: str) -> None:
    async def main() -> None:
        async with aio.open(big_store, log_impl="c") as s:
            async def count(events: aio.AsyncEvents) -> int:
                n = 0
                async for _e in events:
                    n += 1
                return n

            for make, expect in [(lambda: s.read_all(), 100_000), (lambda: s.read_all(types=["T1"]), 25_000),
                                 (lambda: s.read_stream("s-3"), 2_000),
                                 (lambda: s.read_stream("s-3", desc=True), 2_000),
                                 (lambda: s.query([evstore.QueryItem(tags=["k:3"])]), 1_500)]:
                lags: list[float] = []
                for _ in range(50):  # until there are enough ticks for a percentile
                    more, n = await lags_during(lambda: count(make()))
                    assert n == expect
                    lags += more
                    if len(lags) >= 300:
                        break
                assert p99(lags) < 0.002, (n, len(lags), p99(lags), max(lags))

    run(main())


def test_a_hundred_tasks_share_syncs_on_one_thread(store_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = 0
    real = os.fdatasync

    def counting(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real(fd)

    monkeypatch.setattr(groupcommit.os, "fdatasync", counting)

    async def main() -> None:
        async with aio.open(store_path, log_impl="c") as s:
            await s.append("warm", [ev()])
            threads = threading.active_count()
            seen_threads: list[int] = []

            async def task(n: int) -> None:
                for i in range(20):
                    await s.append(f"w{n}", [ev(data=f"{n}:{i}".encode())], expected_version=i or NO_STREAM)
                    seen_threads.append(threading.active_count())

            before = syncs
            lags, _ = await lags_during(lambda: asyncio.gather(*(task(n) for n in range(100))))
            # Shared: a sync waits for the tasks the last one woke, so that each serves most of the
            # hundred (about 30 syncs for 2,000 commits here, loaded or not; 120 to 540 without it).
            assert syncs - before < 2000 / 10, syncs - before
            assert max(seen_threads) <= threads  # no thread per call
            # Each woken task does ~0.1 ms of the commit's work on the loop, two tasks per turn of the
            # loop: a tick waits about half a millisecond, a few at the tail (page faults, a loaded
            # machine) longer.
            # The first tick spans the gather's start, where the loop runs each of the hundred tasks
            # to its first await: a hundred commits in one turn, by this test's own making (5 to 10
            # ms here, the largest tick of every run). The store's share begins with the wake-ups.
            lags = sorted(lags[1:])
            assert lags[len(lags) // 2] < 0.001 and p99(lags) < 0.003, (lags[len(lags) // 2], p99(lags), lags[-1])
            assert await s.head() == 2001
            for n in (0, 57, 99):
                assert [e.data async for e in s.read_stream(f"w{n}")] == [f"{n}:{i}".encode() for i in range(20)]

    run(main())


class CountingGroup:
    """A stand-in for the store's GroupCommit: it records the sequence numbers it was asked to
    make durable and makes them so at once."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.durable_seq = 0

    def await_durable(self, seq: int) -> None:
        self.asked.append(seq)
        self.durable_seq = max(self.durable_seq, seq)


def test_a_sync_waits_for_the_woken_tasks_to_write_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from evstore.aio import worker as worker_module

    monkeypatch.setattr(worker_module, "GATHER", 30.0)  # only the end of the wake-up starts the sync

    async def main() -> None:
        w = worker_module.Worker(asyncio.get_running_loop(), "mem")
        group: Any = CountingGroup()
        with w.wake:
            w.draining = True  # the tasks a sync woke are still being resumed
        first = w.durable(group, 1)
        await asyncio.sleep(0.1)
        assert group.asked == [] and not first.done()  # held back while the wake-up runs
        second = w.durable(group, 2)
        with w.wake:
            w.draining = False
            w.wake.notify()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert group.asked == [2]  # one sync for both
        await w.run(lambda: None, last=True)

    run(main())


def test_a_sync_held_back_by_a_slow_wake_up_still_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from evstore.aio import worker as worker_module

    monkeypatch.setattr(worker_module, "GATHER", 0.05)

    async def main() -> None:
        w = worker_module.Worker(asyncio.get_running_loop(), "mem")
        group: Any = CountingGroup()
        with w.wake:
            w.draining = True  # and it never ends: a loop too busy to resume the tasks
        start = time.monotonic()
        w.durable(group, 1)
        while not group.asked:
            assert time.monotonic() - start < 5
            await asyncio.sleep(0.005)
        assert group.asked == [1] and time.monotonic() - start >= 0.04
        with w.wake:
            w.draining = False
        await w.run(lambda: None, last=True)

    run(main())


def test_threads_and_tasks_appending_together_lose_nothing(store_path: str, impl: str) -> None:
    async def main() -> None:
        async with aio.open(store_path, log_impl=impl) as s:
            sync = evstore.open(store_path)  # the same store: a durable wait may be served by a thread's sync

            def thread(n: int) -> None:
                for i in range(30):
                    sync.append(f"t{n}", [ev()])

            ts = [threading.Thread(target=thread, args=(n,)) for n in range(4)]
            for t in ts:
                t.start()

            async def task(n: int) -> None:
                for i in range(30):
                    await s.append(f"a{n}", [ev()], expected_version=i or NO_STREAM)

            await asyncio.gather(*(task(n) for n in range(20)))
            for t in ts:
                await asyncio.get_running_loop().run_in_executor(None, t.join)
            assert await s.head() == 24 * 30
            assert [e.position async for e in s.read_all()] == list(range(1, 721))
            assert sync.stream_version("a7") == 30 and await s.stream_version("t3") == 30
            sync.close()
            assert await s.head() == 720  # the asyncio handle keeps the store open

    run(main())


def test_cancelled_appends_committed_or_not_and_retries_are_idempotent(store_path: str, impl: str) -> None:
    async def main() -> None:
        async with aio.open(store_path, log_impl=impl) as s:
            n = 120
            ids = [uuid.uuid4() for _ in range(n)]

            def attempt(i: int) -> Awaitable[evstore.AppendResult]:
                return s.append(f"c{i}", [ev(id=ids[i])], expected_version=NO_STREAM)

            tasks = [asyncio.ensure_future(attempt(i)) for i in range(n)]
            rnd = random.Random(5)
            for turn in range(4):  # cancel some before they run, some while they wait for the sync
                for i, t in enumerate(tasks):
                    if rnd.random() < 0.2:
                        t.cancel()
                await asyncio.sleep(0)
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            cancelled = [i for i, o in enumerate(outcomes) if isinstance(o, asyncio.CancelledError)]
            assert cancelled and len(cancelled) < n
            written = {i for i in cancelled if await s.stream_version(f"c{i}") == 1}
            assert written  # some were cancelled after their commit was written...
            for i in cancelled:
                again = await attempt(i)  # ...and a retry with the same id answers either way
                assert (again.stream, again.first_version) == (f"c{i}", 1)
            assert await s.head() == n
            for i in range(n):
                (e,) = [e async for e in s.read_stream(f"c{i}")]
                assert e.id == ids[i]

    run(main())


def test_closing_while_tasks_wait_gives_each_a_clean_outcome(store_path: str, impl: str) -> None:
    async def main() -> dict[int, Any]:
        s = await aio.open(store_path, log_impl=impl)
        await s.append("x", [ev()])

        async def drain() -> list[int]:
            return [e.position async for e in s.subscribe(gt=1)]

        async def late(i: int) -> evstore.AppendResult:
            await asyncio.sleep(0.001 * (i % 10))
            return await s.append(f"a{i}", [ev()])

        subs = [asyncio.ensure_future(drain()) for _ in range(3)]
        appends = [asyncio.ensure_future(late(i)) for i in range(60)]
        await asyncio.sleep(0.004)
        await s.close()
        for sub in subs:
            with pytest.raises(evstore.StoreClosed):
                await sub
        outcomes = dict(enumerate(await asyncio.gather(*appends, return_exceptions=True)))
        assert all(isinstance(o, (evstore.AppendResult, evstore.StoreClosed)) for o in outcomes.values())
        with pytest.raises(evstore.StoreClosed):
            await s.append("x", [ev()])
        with pytest.raises(evstore.StoreClosed):
            await s.head()
        with pytest.raises(evstore.StoreClosed):
            s.read_all()
        await s.close()  # idempotent
        return outcomes

    outcomes = run(main())
    done = {i for i, o in outcomes.items() if isinstance(o, evstore.AppendResult)}
    assert done and len(done) < 60
    with evstore.open(store_path, log_impl=impl) as s:
        for i in range(60):
            assert s.stream_version(f"a{i}") == (1 if i in done else 0)


def test_a_failed_sync_fails_every_waiting_task(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with aio.open(store_path, log_impl=impl) as s:
            await s.append("s", [ev()])

            def broken(fd: int) -> None:
                raise OSError(errno.EIO, "Input/output error")

            monkeypatch.setattr(groupcommit.os, "fdatasync", broken)
            outcomes = await asyncio.gather(*(s.append(f"f{i}", [ev()]) for i in range(10)), return_exceptions=True)
            assert all(isinstance(o, evstore.StoreFailed) for o in outcomes)
            assert len({id(o) for o in outcomes}) == 10  # one exception object per task
            monkeypatch.undo()
            with pytest.raises(evstore.StoreFailed):
                await s.append("s", [ev()])

    run(main())


def test_sync_and_async_handles_share_one_store(store_path: str, impl: str) -> None:
    async def main() -> None:
        with evstore.open(store_path, log_impl=impl) as sync:
            sync.append("s", [ev()])
            async with aio.open(store_path) as a:
                assert await a.append("s", [ev()], expected_version=1)
                assert sync.stream_version("s") == 2 and await a.stream_version("s") == 2
                assert a.log_implementation == sync.log_implementation and a.durability == "fsync"
                with pytest.raises(evstore.EvstoreError):
                    await aio.open(store_path, durability="os")
            sync.append("s", [ev()], expected_version=2)  # closing the asyncio handle kept the store open
        async with aio.open(store_path, readonly=True) as r:
            assert await r.head() == 3 and "read-only" in repr(r)
            with pytest.raises(evstore.ReadOnlyStore):
                await r.append("s", [ev()])

    run(main())


def test_live_subscription_is_woken_by_this_process_at_once(store_path: str, impl: str) -> None:
    async def main() -> None:
        async with aio.open(store_path, log_impl=impl) as s:
            got: list[Any] = []
            sub = s.subscribe(caught_up=True)
            await s.append("s", [ev()])

            async def follow() -> None:
                async for e in sub:
                    got.append((e, time.monotonic()))
                    if isinstance(e, evstore.RecordedEvent) and e.position == 2:
                        return

            task = asyncio.ensure_future(follow())
            await asyncio.sleep(0.05)
            assert [e for e, _t in got] == [got[0][0], aio.CaughtUp(1)] and got[0][0].position == 1
            t0 = time.monotonic()
            await s.append("s", [ev()])
            await asyncio.wait_for(task, 5)
            assert got[-1][1] - t0 < 0.05  # woken by the doorbell, not a poll
            assert sub.position == 2
            sub.stop()
            assert [e async for e in sub] == []

    run(main())


def test_subscription_follows_a_writer_process(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev()])
    code = (
        "import evstore, sys, time\n"
        f"with evstore.open({store_path!r}, log_impl={impl!r}, segment_size=4096) as s:\n"
        "    print('ready', flush=True)\n"
        "    sys.stdin.readline()\n"
        "    for i in range(200):\n"
        "        s.append('w', [evstore.NewEvent('T', bytes(100))])\n"
        "    print('done', flush=True)\n"
        "    sys.stdin.readline()\n"  # still open: the commits reach the reader without a close
        "    s.append('w', [evstore.NewEvent('T', b'last')])\n"
    )
    proc = subprocess.Popen([PY, "-c", code], env=python_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"

        async def main() -> list[Any]:
            got: list[Any] = []
            async with aio.open(store_path, readonly=True, log_impl=impl) as r:
                async with r.subscribe(caught_up=True, timeout=20) as sub:
                    async for e in sub:
                        got.append(e)
                        if isinstance(e, aio.CaughtUp):
                            waker = sub._waker
                            assert waker.watch is not None and waker.poll is None  # inotify, no polling
                            proc.stdin.write("go\n")  # type: ignore[union-attr]
                            proc.stdin.flush()  # type: ignore[union-attr]
                        elif e.position == 201:
                            assert proc.stdout.readline().strip() == "done"  # type: ignore[union-attr]
                            t0 = time.monotonic()
                            proc.stdin.write("go\n")  # type: ignore[union-attr]
                            proc.stdin.flush()  # type: ignore[union-attr]
                        elif e.position == 202:
                            assert time.monotonic() - t0 < 1.0  # seen as its index transaction lands
                            break
            return got

        got = run(main())
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    assert got[1] == aio.CaughtUp(1)
    assert [e.position for e in got if isinstance(e, evstore.RecordedEvent)] == list(range(1, 203))


def test_async_consumer_is_exactly_once_across_cancellations(store_path: str, impl: str) -> None:
    async def main() -> None:
        async with aio.open(store_path, log_impl=impl) as s:
            for c in range(10):
                await s.append("in", [ev(data=str(c * 30 + i + 1).encode()) for i in range(30)])

            async def handler(e: evstore.RecordedEvent, ctx: Any) -> None:
                if e.stream != "in":
                    return
                await asyncio.sleep(0)
                ctx.append("out", [ev("Copied", e.data)])

            rnd = random.Random(7)
            for _ in range(6):
                task = asyncio.ensure_future(s.consume("copier", handler, timeout=0.5, checkpoint_every=7))
                await asyncio.sleep(rnd.uniform(0.005, 0.05))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await s.consume("copier", handler, timeout=0.2)
            copied = [int(e.data) async for e in s.read_stream("out")]
            assert copied == list(range(1, 301))  # every input once, in order, none twice

    run(main())


def test_reads_are_pages_and_errors_come_at_the_call(store_path: str, impl: str) -> None:
    async def main() -> None:
        async with aio.open(store_path, log_impl=impl) as s:
            await s.append("s", [ev() for _ in range(aio.PAGE * 2 + 5)])
            pages = [len(p) async for p in s.read_all().batches()]
            assert sum(pages) == aio.PAGE * 2 + 5 and max(pages) <= aio.MAX_PAGE
            assert [len(p) async for p in s.read_all(limit=7).batches()] == [7]
            assert len(await s.read_stream("s", gt=3, limit=aio.PAGE + 1).to_list()) == aio.PAGE + 1
            for bad in (lambda: s.read_stream(""), lambda: s.read_all(gt=-1), lambda: s.read_all(types="T"),
                        lambda: s.query("x"), lambda: s.subscribe(timeout=-1)):  # type: ignore[arg-type]
                with pytest.raises((TypeError, ValueError)):
                    bad()
            await s.delete_stream("s", tombstone=True)
            with pytest.raises(evstore.StreamDeleted):
                await s.read_stream("s").to_list()

    run(main())


def test_a_failed_open_stops_its_worker(tmp_path: Any) -> None:
    before = threading.active_count()

    async def main() -> None:
        with pytest.raises(evstore.EvstoreError):
            await aio.open(os.path.join(str(tmp_path), "absent"), create=False)

    run(main())
    time.sleep(0.1)
    assert threading.active_count() <= before


def test_the_documented_web_service_example_runs(tmp_path: Any) -> None:
    import re

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "asyncio.md")) as f:
        example = re.findall(r"```python\n(.*?)```", f.read(), re.S)[-1]
    out = subprocess.run([PY, "-c", example], cwd=str(tmp_path), env=python_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["{'status': 201, 'position': 1}", "[{'version': 1, 'type': 'Placed'}]"]


def test_every_public_method_says_what_it_raises() -> None:
    import inspect

    missing = []
    for cls in (aio.AsyncEventStore, aio.AsyncEvents, aio.AsyncSubscription):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") and name not in ("__anext__",):
                continue
            fn = member.fget if isinstance(member, property) else member
            if callable(fn) or isinstance(member, property):
                if "Raises" not in (inspect.getdoc(fn) or "") and "raises" not in (inspect.getdoc(fn) or ""):
                    missing.append(f"{cls.__name__}.{name}")
    assert missing == []
