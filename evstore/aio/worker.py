"""The one thread of an asyncio handle: it waits for durability on behalf of the event loop's tasks
and runs the few operations that would block the loop (opening, closing, index flushes, marks).

Durable waits are group commit as threads do it: a task writes its commit on the loop and hands the
worker its sequence number; the worker takes every waiter queued so far and calls
`GroupCommit.await_durable` for the highest — as the group's leader (one `fdatasync` for all of
them, and for whatever threads wrote meanwhile) or as a follower of a thread already syncing — then
resolves their futures in one callback on the loop. Tasks that write during that sync are served
by the next one. No thread is started per call.

The woken tasks of one sync are resumed a few per turn of the loop (`SETTLE`), and most of them
write again at once. The worker does not start the next sync while that wake-up is still under way
(at most `GATHER` seconds): the futures queue in order, so a task whose commit a sooner sync made
durable would be woken no sooner, and a sync started half-way through the wake-up serves half the
tasks and costs the other half another one. The wait is at most one sync's time of latency; from
100 tasks on a loaded machine it keeps the syncs to a few per wake-up instead of one per turn.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from evstore.engine.groupcommit import GroupCommit
from evstore.errors import StoreClosed, StoreFailed

T = TypeVar("T")
SETTLE = 2  # tasks woken per turn of the loop when syncs complete
GATHER = 0.005  # seconds a sync waits at most for the tasks the last one woke to write again


class Worker:
    """The blocking side of one asyncio handle (see the module docstring).

    `lock` (a leaf: no other lock is taken under it; `wake` is its condition) guards `waiters`,
    `jobs`, `stopping`, `settled` and `draining`; `loop`, `path` and `thread` are constant after
    construction. Futures are created, resolved and awaited on the loop only.

    Resolved waits queue in `settled`, and one loop callback (`_drain`) resolves `SETTLE` of them
    per turn of the loop: each resolved future schedules its task, so that what else is due (a
    timer, I/O) runs between every few tasks instead of after all those of a sync. `draining` stays
    set one turn past the last of them, when their tasks have run (and written), and its clearing
    wakes the thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str) -> None:
        self.loop = loop
        self.path = path
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.waiters: list[tuple[GroupCommit, int, asyncio.Future[None]]] = []  # GUARDED_BY(lock)
        self.jobs: deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = deque()  # GUARDED_BY(lock)
        self.stopping = False  # GUARDED_BY(lock): no job or waiter is taken after the last job
        self.settled: deque[tuple[asyncio.Future[None], BaseException | None]] = deque()  # GUARDED_BY(lock)
        self.draining = False  # GUARDED_BY(lock): a `_drain` callback is scheduled on the loop
        self.thread = threading.Thread(target=self._main, name=f"evstore-aio {path}", daemon=True)
        self.thread.start()

    # -- the loop's side ---------------------------------------------------------------------

    def durable(self, group: GroupCommit, seq: int) -> asyncio.Future[None]:
        """A future that resolves once commit `seq` is durable (or fails with `StoreFailed`).

        Raises: StoreClosed once the worker stopped."""
        fut: asyncio.Future[None] = self.loop.create_future()
        with self.wake:
            if self.stopping:
                raise StoreClosed(self.path)
            self.waiters.append((group, seq, fut))
            self.wake.notify()
        return fut

    def run(self, fn: Callable[[], T], *, last: bool = False) -> asyncio.Future[T]:
        """A future of `fn()`'s result (or exception), run on the worker thread after the waiters
        queued so far. `last=True`: the worker stops after it (the handle's close).

        Raises: StoreClosed once the worker stopped."""
        fut: asyncio.Future[T] = self.loop.create_future()
        with self.wake:
            if self.stopping:
                raise StoreClosed(self.path)
            self.jobs.append((fn, fut))
            self.stopping = last
            self.wake.notify()
        return fut

    # -- the thread --------------------------------------------------------------------------

    def _main(self) -> None:
        while True:
            with self.wake:
                while not self.waiters and not self.jobs:
                    if self.stopping:
                        return
                    self.wake.wait()
                if self.waiters and self.draining and not self.stopping:
                    # The tasks of the last sync are still being woken: let them write first.
                    self.wake.wait_for(lambda: not self.draining or self.stopping, GATHER)
                waiters, self.waiters = self.waiters, []
                job = self.jobs.popleft() if self.jobs else None
            if waiters:
                self._sync(waiters)
            if job is not None:
                self._job(*job)

    def _sync(self, waiters: list[tuple[GroupCommit, int, asyncio.Future[None]]]) -> None:
        group = waiters[0][0]  # one handle, one store
        err: BaseException | None = None
        try:
            group.await_durable(max(seq for _g, seq, _f in waiters))
        except BaseException as e:  # StoreFailed; the commits up to durable_seq are durable still
            err = e
        durable = group.durable_seq
        with self.lock:
            self.settled.extend((fut, None if err is None or seq <= durable else err) for _g, seq, fut in waiters)
            post = not self.draining
            self.draining = True
        if post:
            self._post(self._drain)

    def _drain(self) -> None:
        """On the loop: resolve the next `SETTLE` durable waits; again on the next turn if more wait."""
        with self.wake:
            n = min(SETTLE, len(self.settled))
            batch = [self.settled.popleft() for _ in range(n)]
            if not batch:  # the tasks woken last turn have run: the thread may sync
                self.draining = False
                self.wake.notify()
                return
        try:
            for fut, err in batch:
                if fut.done():  # the task was cancelled: its commit is written and now durable (or not)
                    continue
                if err is None:
                    fut.set_result(None)
                else:
                    e = StoreFailed(str(err))  # one exception object per task: tracebacks do not pile up
                    e.__cause__ = err
                    fut.set_exception(e)
        finally:
            self.loop.call_soon(self._drain)  # queued after the tasks these futures woke

    def _job(self, fn: Callable[[], Any], fut: asyncio.Future[Any]) -> None:
        try:
            result = fn()
        except BaseException as e:
            self._post(_fail, fut, e)
        else:
            self._post(_succeed, fut, result)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _succeed(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)
