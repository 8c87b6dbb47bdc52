"""Reading on an event loop: paged reads (`AsyncEvents`) and subscriptions (`AsyncSubscription`),
woken by descriptors the loop watches (`Waker`).

Every read is cut into pages, each made in one step on the loop, with a turn of the loop between
two pages. `read_all` and subscriptions scan the log in small batches (`SCAN_BATCH` events) from one
plan and gather batches into a page until it took `STEP` seconds of the loop thread's CPU time (its
own time: a thread preempted by others does not shrink its pages) or holds `MAX_PAGE` events. Reads
served by the index (`read_stream`, `query`) fetch pages whose size is resized after each fetch
towards the same `STEP`; queries fetch windows of positions whose width adapts to how many events
they find, so that no step walks more of the index than a page's worth. Either way no step holds
the loop much longer than `STEP` (or one commit's events, when a commit holds more), on a fast
machine or a slow one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from evstore.engine.core import Core
from evstore.errors import StoreClosed
from evstore.records import RecordedEvent
from evstore.storage.watch import REPLACED, DirectoryWatch, Doorbell

PAGE = 512  # events of the first page of a read served by the index
MIN_PAGE, MAX_PAGE = 8, 4096
SCAN_BATCH = 128  # events per batch of a scan of the log
STEP = 0.0002  # seconds of the loop thread's CPU a page aims at
POLL = 0.05  # seconds between looks at the index where commits of other processes cannot be watched
RECHECK = 0.15  # after an index file is replaced: look again once a reader may switch to it (100 ms)

Fetch = Callable[[int, int, int], list[RecordedEvent]]  # (after, up to, at most) -> events by position
Batches = Iterator[list[RecordedEvent]]  # a scan of the log, in batches, its snapshot fixed when made
Scan = Callable[[int, int], Awaitable[Batches]]  # (after, up to) -> the scan of that range
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """Yielded once by `subscribe(caught_up=True)`: every event up to `position` (the head when the
    subscription first found nothing new) has been delivered; what follows is live."""

    position: int


class PageSize:
    """The size of the next page: resized after each fetch towards `STEP` seconds of CPU (the loop
    thread's own time, so that a thread preempted by others does not shrink its pages)."""

    __slots__ = ("n",)

    def __init__(self, first: int = PAGE) -> None:
        self.n = first

    def timed(self, fetch: Callable[[int], list[RecordedEvent]], limit: int | None) -> list[RecordedEvent]:
        """`fetch(n)` for this page's size n (at most `limit`), then resize for the next one."""
        want = self.n if limit is None else min(self.n, limit)
        t = time.thread_time()
        got = fetch(want)
        spent = time.thread_time() - t
        if spent > 1.5 * STEP and got:  # from what an event cost, whether the page was full or not
            self.n = max(MIN_PAGE, min(self.n, int(len(got) * STEP / spent)))
        elif spent < 0.5 * STEP and len(got) >= want:
            self.n = min(MAX_PAGE, self.n * 2)
        return got


class Pager:
    """Reads positions (after, stop] a page at a time. `windowed`: each fetch covers a window of
    positions (for reads served by postings, whose cost grows with the range asked for), widened
    while windows come back sparse and set to twice the span of a page when one fills. Touched on
    the loop only."""

    __slots__ = ("fetch", "windowed", "window", "size")

    def __init__(self, fetch: Fetch, windowed: bool) -> None:
        self.fetch = fetch
        self.windowed = windowed
        self.window = 4 * PAGE
        self.size = PageSize(64 if windowed else PAGE)  # a match of a query costs more than a read

    def page(self, after: int, stop: int, limit: int | None) -> tuple[list[RecordedEvent], int]:
        """(the next page of events after `after`, at most `limit`; the position up to which the log
        was looked at)."""
        hi = min(stop, after + self.window) if self.windowed else stop
        want = self.size.n if limit is None else min(self.size.n, limit)
        got = self.size.timed(lambda n: self.fetch(after, hi, n), limit)
        if len(got) >= want:
            if self.windowed:  # the next window: about twice the span that filled this page
                self.window = max(want, 2 * (got[-1].position - after))
            return got, got[-1].position
        if self.windowed and 2 * len(got) < want:
            self.window = min(self.window * 2, 1 << 40)
        return got, hi


class AsyncEvents:
    """The result of an asyncio read: `async for event in ...`, or `async for page in
    ....batches()` (lists of at most `MAX_PAGE` events, or one commit's). Pages are read as they
    are needed; the range is fixed at the first step (a consistent view, as the threaded reads)."""

    __slots__ = ("_pages",)

    def __init__(self, pages: Callable[[], AsyncIterator[list[RecordedEvent]]]) -> None:
        self._pages = pages

    def __aiter__(self) -> AsyncIterator[RecordedEvent]:
        return self._each()

    async def _each(self) -> AsyncIterator[RecordedEvent]:
        async for page in self._pages():
            for e in page:
                yield e

    def batches(self) -> AsyncIterator[list[RecordedEvent]]:
        """The events in the pages they are read in (cheaper per event than one at a time).

        Raises (while iterating): StoreClosed, StreamDeleted, CorruptedError, as the read does."""
        return self._pages()

    async def to_list(self) -> list[RecordedEvent]:
        """Every event, in one list (for small reads).

        Raises: StoreClosed, StreamDeleted, CorruptedError, as the read does."""
        out: list[RecordedEvent] = []
        async for page in self._pages():
            out.extend(page)
        return out


def take_page(batches: Batches) -> list[RecordedEvent]:
    """The next page of a scan: batches gathered until `STEP` seconds of CPU or `MAX_PAGE` events
    (empty: the scan is over)."""
    page: list[RecordedEvent] = []
    t = time.thread_time()
    for batch in batches:
        page += batch
        if len(page) >= MAX_PAGE or time.thread_time() - t >= STEP:
            break
    return page


async def scan_pages(scan: Scan, gt: int, stop: int | None, limit: int | None) -> AsyncIterator[list[RecordedEvent]]:
    """Pages of a scan of the log after `gt` (up to `stop`, or the head: -1), at most `limit` events."""
    batches = await scan(gt, -1 if stop is None else stop)
    left = limit
    while left is None or left > 0:
        page = take_page(batches)
        if not page:
            return
        if left is not None:
            if len(page) >= left:
                yield page[:left]
                return
            left -= len(page)
        yield page
        await asyncio.sleep(0)  # a turn of the loop between two pages


async def position_pages(ready: Callable[[], Awaitable[Any]], head: Callable[[], int], fetch: Fetch, gt: int,
                         lte: int | None, limit: int | None, windowed: bool) -> AsyncIterator[list[RecordedEvent]]:
    """Pages of the events with gt < position <= min(lte, head at the first step), at most `limit`."""
    await ready()
    stop = head() if lte is None else min(lte, head())
    pager = Pager(fetch, windowed)
    after = gt
    left = limit
    while after < stop and (left is None or left > 0):
        page, after = pager.page(after, stop, left)
        if page:
            if left is not None:
                left -= len(page)
            yield page
        await asyncio.sleep(0)  # a turn of the loop between two pages


async def version_pages(ready: Callable[[], Awaitable[Any]], version: Callable[[], int],
                        fetch: Callable[[int, int, int], list[RecordedEvent]], gt: int, lte: int | None,
                        desc: bool, limit: int | None) -> AsyncIterator[list[RecordedEvent]]:
    """Pages of a stream's events with gt < version <= min(lte, its version at the first step),
    oldest first (newest first with desc); `fetch(gt, lte, n)` reads n events from the near end."""
    await ready()
    lo, hi = gt, version() if lte is None else min(lte, version())
    left = limit
    size = PageSize()
    while lo < hi and (left is None or left > 0):
        page = size.timed(lambda n: fetch(lo, hi, n), left)
        if not page:
            return
        if left is not None:
            left -= len(page)
        if desc:
            hi = page[-1].version - 1
        else:
            lo = page[-1].version
        yield page
        await asyncio.sleep(0)


class Waker:
    """What wakes the subscriptions of one asyncio handle: a `Doorbell` the core's commit notifier
    rings (this process's commits, durable or indexed) and, for a read-only handle, an inotify watch
    of the index directory (commits of the writing process: LMDB writes data.mdb). Both are read by
    the loop (`add_reader`); no thread waits for them. Without inotify a read-only handle polls
    every `POLL` seconds. Touched on the loop only, except `bell.ring` (any thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, core: Core, index_dir: str | None) -> None:
        self.loop = loop
        self.core = core
        self.generation = 0  # bumped at every wake: a waiter compares it with the one it saw
        self.waiting: set[asyncio.Future[None]] = set()
        self.closed = False
        self.bell = Doorbell()
        self.watch = DirectoryWatch.open(index_dir) if index_dir is not None else None
        self.poll = POLL if index_dir is not None and self.watch is None else None
        loop.add_reader(self.bell.fileno(), self._rung)
        if self.watch is not None:
            loop.add_reader(self.watch.fileno(), self._changed)
        self.ring = self.bell.ring  # one bound method: the listener removed is the one added
        core.add_commit_listener(self.ring)

    def _rung(self) -> None:
        self.bell.drain()
        self.wake()

    def _changed(self) -> None:
        assert self.watch is not None
        if self.watch.drain() & REPLACED:
            self.loop.call_later(RECHECK, self.wake)
        self.wake()

    def wake(self) -> None:
        """Wake every waiter: something may have been committed."""
        self.generation += 1
        waiting, self.waiting = self.waiting, set()
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, seen: int, timeout: float | None) -> None:
        """Return at the first wake after generation `seen` (at once if there was one), after
        `timeout` seconds, or every `POLL` seconds where commits cannot be watched.

        Raises: StoreClosed when the handle closes meanwhile."""
        if self.closed:
            raise StoreClosed(self.core.path)
        if seen != self.generation:
            return
        if self.poll is not None:
            timeout = self.poll if timeout is None else min(timeout, self.poll)
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiting.add(fut)
        timer = None if timeout is None else self.loop.call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            self.waiting.discard(fut)
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        """Stop watching; every waiter raises `StoreClosed`."""
        if self.closed:
            return
        self.closed = True
        self.core.remove_commit_listener(self.ring)  # no ring is under way once this returns
        self.loop.remove_reader(self.bell.fileno())
        self.bell.close()
        if self.watch is not None:
            self.loop.remove_reader(self.watch.fileno())
            self.watch.close()
        for fut in self.waiting:
            if not fut.done():
                fut.set_exception(StoreClosed(self.core.path))
        self.waiting.clear()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncSubscription(Generic[T]):
    """`async for` over the store's events after a position, in position order, waiting for new
    ones: catch-up, then live. Never skips or repeats an event.

    Commits of this process wake it at once (the core's notifier rings a descriptor the loop
    watches), commits of a writer in another process as soon as their index transaction is
    written (inotify on the index directory). `timeout` (seconds) ends the iteration when no event
    arrives for that long; `stop()` ends it. With `caught_up=True` a `CaughtUp` marker is yielded
    once, when the catch-up is done. Use as an async context manager to stop on exit. Belongs to
    the loop of its store; closing the store makes a waiting `__anext__` raise `StoreClosed`.
    """

    def __init__(self, ready: Callable[[], Awaitable[Any]], head: Callable[[], int], scan: Scan,
                 waker: Waker, gt: int, timeout: float | None, caught_up: bool) -> None:
        self._ready_fn = ready
        self._head = head
        self._scan = scan
        self._batches: Batches | None = None  # the scan under way, of (_last, _upto]
        self._upto = gt
        self._waker = waker
        self._last = gt  # every event up to here was fetched
        self._timeout = timeout
        self._ready: deque[RecordedEvent] = deque()
        self._marker = caught_up  # a CaughtUp is still to be yielded
        self._stopped = False

    @property
    def position(self) -> int:
        """The position up to which the log has been looked at (every event up to it was delivered).
        Never raises."""
        return self._last - (len(self._ready) and self._last - self._ready[0].position + 1)

    def stop(self) -> None:
        """End the iteration (a waiting `__anext__` returns at once). Call it on the store's loop.

        Raises: nothing; stopping twice does nothing."""
        self._stopped = True
        self._waker.wake()

    async def __aenter__(self) -> AsyncSubscription[T]:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.stop()

    def __aiter__(self) -> AsyncSubscription[T]:
        return self

    async def __anext__(self) -> T:
        """The next event (or the `CaughtUp` marker).

        Raises: StopAsyncIteration after `stop()` or the timeout; StoreClosed when the store
        closes; CorruptedError when the log is damaged."""
        loop = self._waker.loop
        deadline = None if self._timeout is None else loop.time() + self._timeout
        while True:
            if self._stopped:
                raise StopAsyncIteration
            if self._ready:
                return self._ready.popleft()  # type: ignore[return-value]
            seen = self._waker.generation
            if await self._fill():
                await asyncio.sleep(0)  # a turn of the loop between two pages
                continue
            if self._marker:
                self._marker = False
                return CaughtUp(self._last)  # type: ignore[return-value]
            left = None
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise StopAsyncIteration
            await self._waker.wait(seen, left)

    async def _fill(self) -> bool:
        """Read the next page after the last position seen; False when there is nothing new."""
        if self._batches is None:
            await self._ready_fn()
            head = self._head()
            if head <= self._last:
                return False
            self._batches = await self._scan(self._last, head)
            self._upto = head
        page = take_page(self._batches)
        if page:
            self._last = page[-1].position
            self._ready.extend(page)
        else:
            self._batches = None
            self._last = self._upto  # everything up to there was looked at
        return True
