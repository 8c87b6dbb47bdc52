"""The asyncio handle: `evstore.aio.open()` and `AsyncEventStore`.

An `AsyncEventStore` is a handle on the same open store as `evstore.open()` gives (one store per
path per process: the threaded and asyncio handles of a path share it). Its methods never block the
event loop on I/O: a commit is checked and written on the loop (a `write` into the page cache, no
sync), its durability is awaited from the handle's worker thread (`evstore.aio.worker`), reads are
cut into pages (`evstore.aio.reading`), and the rest (opening, closing, index writes, marks) runs on
the worker.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Literal, overload

import lmdb

from evstore.consumer import ConsumerContext, ConsumerStats, start_consumer
from evstore.engine.checks import (Condition, Part, QueryItem, check_condition, check_position, check_stream,
                                   check_timeout, query_items, tracking_record, type_filter)
from evstore.engine.core import Core, lmdb_error, open_core
from evstore.engine.groupcommit import GroupCommit
from evstore.engine.reader import Chunk, new_record
from evstore.engine.writer import NeedFlush
from evstore.errors import EvstoreError, ReadOnlyStore, StoreClosed, TrackingConflict
from evstore.format.encode import ControlRecord
from evstore.lifecycle import Binding, Lifecycle
from evstore.records import ANY, AppendResult, NewEvent, RecordedEvent, Stream, StreamInfo
from evstore.snapshots import Snapshot
from evstore.upcasting import Upcasters
from evstore.store import DEFAULT_MAP_SIZE, DEFAULT_SEGMENT_SIZE, EventStore
from evstore.aio.reading import (SCAN_BATCH, AsyncEvents, AsyncSubscription, Batches, CaughtUp, Scan, Waker,
                                 position_pages, scan_pages, version_pages)
from evstore.aio.worker import Worker

Handler = Callable[[RecordedEvent, ConsumerContext], "Awaitable[None] | None"]

# durability="os": the loop's thread never writes the index, and the indexer thread that does is
# starved of the GIL by a loop that appends without pause (it fell behind without bound: 21-34K
# commits after 4 s). Past INDEX_SOFT unindexed commits the worker thread is given the catch-up
# (a sync of the log and one index transaction); past INDEX_HARD an append awaits it, so that the
# backlog, the overlay that serves it and the lag other processes see stay bounded.
INDEX_SOFT = 512
INDEX_HARD = 2048


class AsyncEventStore:
    """An open store for asyncio. Use as an async context manager, or `await close()`.

    Belongs to the event loop that opened it; any number of its tasks may append and read at once
    (concurrent appends share syncs as threads do). Every method raises `StoreClosed` once the handle
    is closed, and `ForkedStore` in a process forked after it was opened.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, worker: Worker, core: Core, handle: EventStore,
                 binder: Callable[[Any], Lifecycle | None] | None) -> None:
        self._loop = loop  # constant after construction, as are the fields below but the loop-only ones
        self._worker = worker
        self._core = core
        self._binder = binder
        self._h = handle  # reads do not index on the loop: `_ready` has the worker do it
        self.path = core.path
        self.readonly = handle.readonly
        self._closing: asyncio.Future[None] | None = None  # loop only: set once close() began
        self._waker: Waker | None = None  # loop only: made by the first subscription
        self._up: Upcasters | None = None  # loop only: the upcasters, as the threaded handle holds them
        self._catch_up: asyncio.Future[None] | None = None  # loop only: the worker's index catch-up ("os")

    async def __aenter__(self) -> AsyncEventStore:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("read-only" if self.readonly else "open")
        return f"<evstore.aio.AsyncEventStore {self.path!r} {state}>"

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (never raises)."""
        return self._closing is not None

    @property
    def durability(self) -> str:
        """"fsync" or "os" (see `evstore.open`). Raises: StoreClosed, ForkedStore."""
        return self._c().durability

    @property
    def log_implementation(self) -> str:
        """"c" or "python": which implementation of the log format this store uses.

        Raises: StoreClosed, ForkedStore."""
        return self._h.log_implementation

    async def close(self) -> None:
        """Close this handle; tasks waiting in a subscription raise `StoreClosed`, appends already
        written complete (they are made durable first), and the store closes when its last handle in
        the process does (on the worker thread: the loop does not wait for the final syncs).
        Idempotent; concurrent calls wait for the same close.

        Raises: StorageError, IndexUnavailable: the final sync failed (the log holds every
        acknowledged commit; the next open catches the index up)."""
        if self._closing is None:
            if self._waker is not None:
                self._waker.close()
            self._closing = self._worker.run(self._h.close, last=True)
        await asyncio.shield(self._closing)

    aclose = close  # for contextlib.aclosing

    def _c(self) -> Core:
        core = self._core
        if self._closing is not None:
            raise StoreClosed(self.path)
        if core.forked or core.closed:
            core.check_usable()  # raises
        return core

    def _w(self) -> Core:
        core = self._c()
        if self.readonly:
            raise ReadOnlyStore(f"{self.path} was opened with readonly=True")
        return core

    async def _ready(self, streams_only: bool = False) -> EventStore:
        """The threaded handle, for a read: every durable commit of this process is indexed first
        (read-your-writes), by the worker; `streams_only`: a read of streams, which the engine's
        overlay of durable commits serves without the index."""
        core = self._c()
        group = core.group
        if (not streams_only or not group.overlay.valid) and group.indexed_seq < group.durable_seq:
            await self._worker.run(group.flush_index)
            self._c()
        elif core.readonly:
            core.follow_rebuilt_index()
        return self._h

    async def _blocking(self, fn: Callable[[], Any]) -> Any:
        self._c()
        return await self._worker.run(fn)

    # -- writing ---------------------------------------------------------------------------

    async def append(self, stream: Stream, events: Sequence[NewEvent], *, expected_version: Any = ANY,
                     expected_state: str | Iterable[str] | None = None,
                     condition: Condition | None = None) -> AppendResult:
        """Append events to one stream in one atomic commit; as `EventStore.append`.

        The commit is checked and written on the loop; with durability="fsync" the call resolves once
        it is on disk (one sync shared by every commit written meanwhile). Cancelled, it either
        committed or did not, never partly: a retry with the same event ids returns the original
        result when it did.

        Raises: as `EventStore.append` (WrongExpectedVersion, InvalidTransition, StreamClosed,
            StreamDeleted, DuplicateEventId, ConditionFailed, StorageError, StoreFailed, TypeError,
            ValueError); StoreClosed when the handle closes before the commit was written.
        """
        core = self._w()
        if type(events) is list and expected_state is None and condition is None and self._binder is None:
            done = self._plain_once(core, stream, events, expected_version)  # the fast path
            if done is not None:
                await self._durable(core, done[1])
                return done[0]
        parts = [Part(stream, events, expected_version, expected_state)]
        return (await self._commit(core, parts, (), check_condition(condition)))[0]

    async def append_many(self, appends: Iterable[tuple[Stream, Sequence[NewEvent], Any]], *,
                          tracking: tuple[str, int] | None = None,
                          condition: Condition | None = None) -> list[AppendResult]:
        """Append to several streams in one atomic commit; as `EventStore.append_many`.

        Raises: as `append`, and `TrackingConflict` unless the tracking position is above every
        position recorded for that upstream."""
        core = self._w()
        parts = []
        for item in appends:
            if not isinstance(item, tuple) or len(item) != 3:
                raise TypeError("append_many takes (stream, events, expected_version) tuples")
            parts.append(Part(*item))
        controls = [] if tracking is None else [tracking_record(tracking)]
        if not parts and not controls:
            raise ValueError("append_many needs at least one (stream, events, expected_version)")
        return await self._commit(core, parts, controls, check_condition(condition))

    async def _commit(self, core: Core, parts: list[Part], controls: Sequence[ControlRecord],
                      condition: Any) -> list[AppendResult]:
        group = core.group
        for _attempt in range(101):
            try:
                results, seq = self._commit_once(core, parts, controls, condition)
            except NeedFlush:  # a check reads the index: have the worker index what is written
                await self._worker.run(lambda: _index_written(group))
                core = self._w()
                continue
            await self._durable(core, seq)
            return results
        raise EvstoreError("other writers kept the index behind: the append's checks (condition or "
                           "lifecycle state) could not be made; retry")

    async def _durable(self, core: Core, seq: int) -> None:
        """Wait until commit `seq` (written: from here a cancellation leaves a commit that becomes
        durable by itself) is durable; 0: nothing to wait for."""
        group = core.group
        if not seq:
            return
        if core.durability == "os":
            # no sync: only the bookkeeping (subscribers told, indexer kicked); the loop's thread
            # never writes the index (the indexer thread does, or the worker past INDEX_SOFT)
            group.await_durable(seq, index=False)
            behind = group.written_seq - group.indexed_seq
            if behind > INDEX_SOFT:
                await self._index_behind(group, behind > INDEX_HARD)
        elif group.durable_seq < seq:
            await self._worker.durable(group, seq)

    async def _index_behind(self, group: GroupCommit, wait: bool) -> None:
        """durability="os", with INDEX_SOFT commits unindexed: have the worker catch the index up
        (one job at a time); with `wait`, await it, and a second one if the first had begun before
        the commits that keep the backlog over INDEX_HARD. The commit that called is durable
        already: a failed catch-up is the indexer thread's to retry, and a cancelled wait cancels
        only the wait."""
        for _round in range(2):
            fut = self._catch_up
            if fut is None or fut.done():
                try:
                    fut = self._catch_up = self._worker.run(lambda: _catch_up_index(group))
                except StoreClosed:  # closing: the close indexes what is left
                    return
            if not wait:
                return
            await asyncio.shield(fut)
            if group.written_seq - group.indexed_seq <= INDEX_HARD:
                return

    def _plain_once(self, core: Core, stream: Stream, events: list[Any],
                    expected: Any) -> tuple[AppendResult, int] | None:
        try:
            return core.writer.append_plain_once(stream, events, expected)
        except lmdb.Error as e:
            raise lmdb_error(core, self.path, e) from e

    def _commit_once(self, core: Core, parts: list[Part], controls: Sequence[ControlRecord],
                     condition: Any) -> tuple[list[AppendResult], int]:
        try:
            try:
                return core.writer.commit_once(parts, controls, self._binder, None, condition)
            except lmdb.MapResizedError:  # the map grew: take the new size, once
                core.index.adopt_map_size()
                return core.writer.commit_once(parts, controls, self._binder, None, condition)
        except lmdb.Error as e:
            raise lmdb_error(core, self.path, e) from e

    async def sync(self) -> None:
        """Make everything written so far durable, the index included; as `EventStore.sync`.

        Raises: StoreFailed, IndexUnavailable (see `EventStore.sync`)."""
        self._w()
        await self._blocking(self._h.sync)

    # -- reading ---------------------------------------------------------------------------

    async def head(self) -> int:
        """The position of the last committed event (0 when the store is empty).

        Raises: StoreClosed; IndexUnavailable when this process's commits cannot be indexed."""
        return (await self._ready()).head()

    async def stream_version(self, stream: Stream) -> int:
        """The stream's last version (0 when it has no events).

        Raises: TypeError, ValueError for a malformed stream id; StoreClosed."""
        return (await self._ready(True)).stream_version(stream)

    async def stream_info(self, stream: Stream) -> StreamInfo | None:
        """As `EventStore.stream_info`.

        Raises: TypeError, ValueError for a malformed stream id; StoreClosed."""
        return (await self._ready()).stream_info(stream)

    async def stream_state(self, stream: Stream) -> str | None:
        """As `EventStore.stream_state` (a stream with no recorded state replays its types on the
        loop).

        Raises: TypeError, ValueError for a malformed stream id; StoreClosed."""
        return (await self._ready()).stream_state(stream)

    async def event_at(self, position: int) -> RecordedEvent | None:
        """The event at a global position, or None.

        Raises: CorruptedError when it is damaged; TypeError, ValueError for a bad position."""
        return (await self._ready()).event_at(position)

    async def max_tracking(self, upstream: str) -> int | None:
        """The largest position recorded with `tracking=(upstream, ...)`, or None.

        Raises: TypeError, ValueError for a malformed upstream name."""
        return (await self._ready()).max_tracking(upstream)

    async def has_tracking(self, upstream: str, position: int) -> bool:
        """Whether a tracking record for exactly (`upstream`, `position`) was committed.

        Raises: TypeError, ValueError for a malformed name or position."""
        return (await self._ready()).has_tracking(upstream, position)

    async def load_snapshot(self, stream: Stream, *, lte: int | None = None) -> Snapshot | None:
        """As `EventStore.load_snapshot`.

        Raises: StreamDeleted when the stream is tombstoned; StoreClosed."""
        return (await self._ready()).load_snapshot(stream, lte=lte)

    def read_stream(self, stream: Stream, *, gt: int | None = None, lte: int | None = None, desc: bool = False,
                    limit: int | None = None) -> AsyncEvents:
        """`async for` over the stream's events with `gt < version <= lte` (at most `limit`, newest
        first with desc=True), in pages. The range is fixed at the first step.

        Raises: TypeError, ValueError for malformed arguments (at once); StreamDeleted for a
        tombstoned stream and CorruptedError for a damaged record (while iterating)."""
        self._c()
        check_stream(stream)
        lo = check_position(gt, "gt") or 0
        hi = check_position(lte, "lte")
        n = check_position(limit, "limit")
        if type(desc) is not bool:
            raise TypeError("desc must be True or False")

        def fetch(a: int, b: int, k: int) -> list[RecordedEvent]:
            return self._h.read_stream(stream, gt=a, lte=b, desc=desc, limit=k)

        return AsyncEvents(lambda: version_pages(lambda: self._ready(True), lambda: self._h.stream_version(stream),
                                                 fetch, lo, hi, desc, n))

    def read_all(self, *, gt: int | None = 0, lte: int | None = None, limit: int | None = None,
                 types: Iterable[str] | None = None) -> AsyncEvents:
        """`async for` over every event with `gt < position <= lte` (of the given types), in pages;
        as of the first step (the head then). Memory stays flat.

        Raises: TypeError, ValueError for malformed arguments (at once); CorruptedError when the log
        is damaged (while iterating)."""
        self._c()
        lo = check_position(gt, "gt") or 0
        hi = check_position(lte, "lte")
        n = check_position(limit, "limit")
        tf = type_filter(types)

        return AsyncEvents(lambda: scan_pages(self._scanner(tf), lo, hi, n))

    def query(self, items: Sequence[QueryItem], *, gt: int = 0, lte: int | None = None,
              limit: int | None = None) -> AsyncEvents:
        """`async for` over the events matching any of `items` (see `EventStore.query`), in pages.

        Raises: TypeError, ValueError for malformed items or positions (at once)."""
        self._c()
        query_items(items)
        lo = check_position(gt, "gt", allow_none=False) or 0
        hi = check_position(lte, "lte")
        n = check_position(limit, "limit")

        def fetch(a: int, b: int, k: int) -> list[RecordedEvent]:
            return self._h.query(items, gt=a, lte=b, limit=k)

        return AsyncEvents(lambda: position_pages(self._ready, self._h.head, fetch, lo, hi, n, True))

    @overload
    def subscribe(self, *, gt: int = 0, types: Iterable[str] | None = None, timeout: float | None = None,
                  caught_up: Literal[False] = False) -> AsyncSubscription[RecordedEvent]: ...

    @overload
    def subscribe(self, *, gt: int = 0, types: Iterable[str] | None = None, timeout: float | None = None,
                  caught_up: Literal[True]) -> AsyncSubscription[RecordedEvent | CaughtUp]: ...

    def subscribe(self, *, gt: int = 0, types: Iterable[str] | None = None, timeout: float | None = None,
                  caught_up: bool = False) -> AsyncSubscription[Any]:
        """`async for` over the events after position `gt` (of the given types), then new ones as they
        commit, from this process or another; never skips or repeats one. See `AsyncSubscription`.

        Raises: TypeError, ValueError for a bad position, types or timeout (None, or seconds >= 0)."""
        self._c()
        start = check_position(gt, "gt") or 0
        seconds = check_timeout(timeout)
        tf = type_filter(types)
        if self._waker is None:
            index_dir = os.path.join(self.path, "index") if self.readonly else None
            self._waker = Waker(self._loop, self._core, index_dir)
        return AsyncSubscription(self._ready, self._h.head, self._scanner(tf), self._waker, start, seconds,
                                 bool(caught_up))

    def _scanner(self, tfilter: tuple[bytes, ...] | None) -> Scan:
        """`scan(after, upto)`: the log's events in (after, upto] (upto -1: the head), of the types
        in `tfilter`, as batches of records (upcast). The plan is made on the loop for a plain scan
        (a lookup) and on the worker for a filtered one (it reads the type postings of the range)."""

        def plan(after: int, upto: int) -> Batches:
            core = self._c()
            try:
                p = core.reader.all_plan(after, None if upto < 0 else upto, tfilter)
            except lmdb.Error as e:
                raise lmdb_error(core, self.path, e) from e
            if p is None:
                return iter(())
            return self._records(core.reader.plan_chunks(p, after, None, tfilter, batch=SCAN_BATCH))

        async def scan(after: int, upto: int) -> Batches:
            await self._ready()
            if tfilter is None:
                return plan(after, upto)
            return await self._worker.run(lambda: plan(after, upto))

        return scan

    def _records(self, chunks: Iterator[Chunk]) -> Batches:
        up = self._up
        for buf, offs, start, end in chunks:
            batch = [new_record(RecordedEvent, (buf, o, None)) for o in offs]
            if up is not None and up.region_needs(buf, start, end):
                batch = up.apply_list(batch)
            yield batch

    # -- consumers -------------------------------------------------------------------------

    async def consume(self, name: str, handler: Handler, *, types: Iterable[str] | None = None,
                      timeout: float | None = None, limit: int | None = None,
                      checkpoint_every: int = 100) -> ConsumerStats:
        """Run `handler(event, ctx)` (a coroutine function, or a plain one) for each event after
        consumer `name`'s position, following new commits; what it appends with `ctx.append(...)`
        commits together with the consumer's new position (exactly once within the store). As
        `evstore.consumer.consume`; a cancelled consumer keeps every effect it committed, and resumes
        after the last of them.

        Raises: ValueError for bad arguments; what the handler raises; what `append_many` raises."""
        group = self._w().group
        if group.indexed_seq < group.written_seq:
            # A cancelled commit of a consumer is written, maybe not yet durable: resume after it.
            await self._worker.run(lambda: _index_written(group))
        run = start_consumer(await self._ready(), name, limit, checkpoint_every)
        if limit == 0:
            return run.stats()
        sub = self.subscribe(gt=run.position, types=types, timeout=timeout)
        try:
            async for event in sub:
                ctx = ConsumerContext()
                done = handler(event, ctx)
                if inspect.isawaitable(done):
                    await done
                if ctx.parts:
                    await self.append_many(ctx.parts, tracking=run.effects_tracking(event))
                due = run.handled_one(event, bool(ctx.parts))
                if due is not None:
                    await self.append_many([], tracking=due)
                    run.checkpointed()
                if run.done:
                    break
        finally:
            sub.stop()
            last = run.final()
            if last is not None and not self.closed:
                try:
                    await self.append_many([], tracking=last)
                except TrackingConflict:  # a cancelled commit of effects did commit: it is further
                    pass
        return run.stats()

    # -- stream states, snapshots, upcasters (on the worker) --------------------------------

    async def close_stream(self, stream: Stream) -> None:
        """As `EventStore.close_stream` (on the worker thread).

        Raises: StreamDeleted when tombstoned; ReadOnlyStore; StoreClosed."""
        self._w()
        await self._blocking(lambda: self._h.close_stream(stream))

    async def delete_stream(self, stream: Stream, *, tombstone: bool = False) -> None:
        """As `EventStore.delete_stream` (on the worker thread).

        Raises: TypeError unless `tombstone` is a bool; StreamDeleted; ReadOnlyStore; StoreClosed."""
        self._w()
        await self._blocking(lambda: self._h.delete_stream(stream, tombstone=tombstone))

    async def save_snapshot(self, stream: Stream, version: int, data: bytes, *, type: str, schema: int = 1) -> None:
        """As `EventStore.save_snapshot` (on the worker thread).

        Raises: ValueError, TypeError, StreamDeleted as it does; ReadOnlyStore; StoreClosed."""
        self._w()
        await self._blocking(lambda: self._h.save_snapshot(stream, version, data, type=type, schema=schema))

    async def prune_snapshots(self, stream: Stream | None = None, *, keep: int = 1) -> int:
        """As `EventStore.prune_snapshots` (on the worker thread).

        Raises: ValueError unless keep is an int >= 0; ReadOnlyStore; StoreClosed."""
        self._w()
        return int(await self._blocking(lambda: self._h.prune_snapshots(stream, keep=keep)))

    def register_upcaster(self, event_type: str, from_schema: int,
                          fn: Callable[[RecordedEvent], tuple[str, bytes, bytes]]) -> None:
        """As `EventStore.register_upcaster`, for this handle's reads.

        Raises: InvalidUpcaster for a step that does not extend the type's chain; StoreClosed."""
        self._c()
        self._h.register_upcaster(event_type, from_schema, fn)  # read_stream, query, event_at
        up = self._up or Upcasters()
        up.register(event_type, from_schema, fn)  # read_all and subscriptions, read here
        self._up = up


def _index_written(group: GroupCommit) -> None:
    """On the worker: make every written commit durable and indexed (a check needs the index)."""
    group.await_durable(group.written_seq)
    group.flush_index()


def _catch_up_index(group: GroupCommit) -> None:
    """On the worker, durability="os": sync the log and index every commit that sync covered. A
    failure (a full disk) is left to the indexer thread, which retries it."""
    try:
        group.flush_index()
    except (EvstoreError, OSError):  # the entries stay queued; StoreFailed: the next append raises it
        group.kick_indexer()


class Opening:
    """What `open()` returns: `async with` it, or `await` it for the store."""

    __slots__ = ("_args", "_store")

    def __init__(self, args: dict[str, Any]) -> None:
        self._args = args
        self._store: AsyncEventStore | None = None

    def __await__(self) -> Generator[Any, None, AsyncEventStore]:
        return _open(self._args).__await__()

    async def __aenter__(self) -> AsyncEventStore:
        self._store = await _open(self._args)
        return self._store

    async def __aexit__(self, *exc: Any) -> None:
        if self._store is not None:
            await self._store.close()


async def _open(args: dict[str, Any]) -> AsyncEventStore:
    loop = asyncio.get_running_loop()
    worker = Worker(loop, str(args["path"]))
    fut = worker.run(lambda: open_core(**args))
    try:
        core, binder = await asyncio.shield(fut)
    except BaseException:
        # Cancelled while the worker opens: release what it opens, then let the worker go.
        def release(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None:
                c, b = f.result()
                worker.run(EventStore(c, args["readonly"], b).close, last=True)
            else:
                worker.run(lambda: None, last=True)

        if fut.done():
            release(fut)
        else:
            fut.add_done_callback(release)
        raise
    handle = EventStore(core, args["readonly"], binder, index_on_read=False)
    return AsyncEventStore(loop, worker, core, handle, binder)


def open(path: str | os.PathLike[str], *, create: bool = True, readonly: bool = False,
         durability: str | None = None, segment_size: int = DEFAULT_SEGMENT_SIZE,
         map_size: int = DEFAULT_MAP_SIZE, log_impl: str | None = None,
         lifecycles: Binding | None = None) -> Opening:
    """Open (and by default create) the store in directory `path` for asyncio: `async with
    evstore.aio.open(path) as store:` or `store = await evstore.aio.open(path)`.

    The options and their meaning are `evstore.open`'s; the store is shared with every other handle
    of the path in this process (threaded or asyncio). The opening (recovery, index catch-up) runs on
    the handle's worker thread. Call it from a running event loop; the handle belongs to that loop.

    Raises (when awaited): as `evstore.open` (StoreLocked, EvstoreError, CorruptedError,
    IndexAheadOfLog, UnsupportedFormat, StorageError, IndexUnavailable, TypeError, ValueError);
    RuntimeError outside a running event loop.
    """
    return Opening(dict(path=path, create=create, readonly=readonly, durability=durability,
                        segment_size=segment_size, map_size=map_size, log_impl=log_impl, lifecycles=lifecycles))
