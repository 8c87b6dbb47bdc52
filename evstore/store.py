"""The public handle: `evstore.open()` and `EventStore`, argument checks, upcasting, marks and
snapshots, `load`. The work is the engine's (evstore/engine/): this module checks what the caller
hands it, delegates, and applies the handle's upcasters to what comes back."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import lmdb

from evstore.storage import index as ix
from evstore.format.layout import FLAG_UUID_STREAM
from evstore import groups
from evstore.consumer import ConsumerStats, consume
from evstore.engine import marks
from evstore.engine.checks import (
    MAX_EVENT_BYTES,
    MAX_NAME_BYTES,
    Condition,
    Part,
    QueryItem,
    category_filter,
    check_condition,
    check_fields,
    check_group,
    check_position,
    check_snapshot,
    check_stream,
    checked_stream_key,
    check_timeout,
    query_items,
    tracking_name,
    tracking_record,
    type_filter,
)
from evstore.engine.core import Core, lmdb_error, open_core, registry
from evstore.engine.maintenance import Maintenance
from evstore.engine.reader import Chunk, StreamChunk, new_record
from evstore.errors import (
    ReadOnlyStore,
    StoreClosed,
    StreamDeleted,
)
from evstore.format.encode import MAX_COMMIT_BYTES, ControlRecord
from evstore.storage.index import HEAD_CLOSED, HEAD_TOMBSTONE, Head, max_tracking
from evstore.lifecycle import Binding, Lifecycle, LifecycleViolation, bound_histories, find_violations
from evstore.records import ANY, AppendResult, NewEvent, RecordedEvent, Stream, StreamInfo, decode_stream
from evstore.snapshots import Loaded, Snapshot
from evstore.subscription import Subscription
from evstore.upcasting import Upcasters

DEFAULT_SEGMENT_SIZE = 128 << 20
DEFAULT_MAP_SIZE = 1 << 30

__all__ = ["EventStore", "open", "Condition", "QueryItem", "MAX_COMMIT_BYTES", "MAX_EVENT_BYTES",
           "MAX_NAME_BYTES", "DEFAULT_SEGMENT_SIZE", "DEFAULT_MAP_SIZE"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _index_errors(fn: _F) -> _F:
    """Translate an LMDB error escaping a public method (see `engine.core.lmdb_error`)."""

    @functools.wraps(fn)
    def wrapper(self: EventStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except lmdb.MapResizedError:  # the writer process grew the map: take the new size, once
            core = self._core
            if core is None:
                raise StoreClosed(self.path) from None
            core.index.adopt_map_size()
        except lmdb.Error as e:
            raise lmdb_error(self._core, self.path, e) from e
        try:
            return fn(self, *args, **kwargs)
        except lmdb.Error as e:
            raise lmdb_error(self._core, self.path, e) from e

    return wrapper  # type: ignore[return-value]


class EventStore:
    """An open store. Use as a context manager, or call `close()`.

    Thread-safe: any number of threads may append and read through one handle. Every method raises
    `StoreClosed` once the handle is closed and `ForkedStore` in a process forked after it was opened.
    """

    def __init__(self, core: Core, readonly: bool, binder: Callable[[Any], Lifecycle | None] | None = None,
                 *, index_on_read: bool = True) -> None:
        self._core: Core | None = core
        self.index_on_read = index_on_read  # constant; False: reads leave indexing to the caller (evstore.aio)
        self.path = core.path
        self.readonly = readonly
        self._binder = binder
        self._up: Upcasters | None = None

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._core is None else ("read-only" if self.readonly else "open")
        return f"<evstore.EventStore {self.path!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._core is None

    def close(self) -> None:
        """Close this handle; the store closes when the last handle in the process does (waiting for
        the appends under way, then syncing the log and the index). Idempotent. Raises: StoreFailed
        when, with "os", commits acknowledged after a failed sync of the log may be lost."""
        core = self._core
        if core is None:
            return
        self._core = None
        registry.release(core)

    def _c(self) -> Core:
        core = self._core
        if core is None:
            raise StoreClosed(self.path)
        if core.forked or core.closed:
            core.check_usable()  # raises
        return core

    def _r(self, streams_only: bool = False) -> Core:
        """The core, for a read: durable commits are indexed first (`streams_only`: the overlay has them)."""
        core = self._c()
        group = core.group
        if self.index_on_read and (not streams_only or not group.overlay.valid) and group.indexed_seq < group.durable_seq:
            group.flush_index()
        elif core.readonly:
            core.follow_rebuilt_index()
        return core

    def _w(self) -> Core:
        core = self._c()
        if self.readonly:
            raise ReadOnlyStore(f"{self.path} was opened with readonly=True")
        return core

    @property
    def durability(self) -> str:
        return self._c().durability

    @property
    def log_implementation(self) -> str:
        """"c" or "python": which implementation of the log format this store uses."""
        return str(self._c().impl.IMPL)

    # -- writing ---------------------------------------------------------------------------

    @_index_errors
    def append(self, stream: Stream, events: Sequence[NewEvent], *, expected_version: Any = ANY,
               expected_state: str | Iterable[str] | None = None, condition: Condition | None = None) -> AppendResult:
        """Append events to one stream in one atomic commit. With durability="fsync" the events are on
        disk when this returns. A retry of a committed append with the same event ids returns the
        original result. Nothing is written on any error.

        Raises:
            WrongExpectedVersion: the stream's version is not `expected_version` (or its lifecycle
                state is not `expected_state`, a state name or a set of them).
            InvalidTransition: an event is not allowed by the stream's lifecycle.
            StreamClosed, StreamDeleted: the stream is closed or tombstoned.
            DuplicateEventId: an event id is already used by other events, or twice here.
            ConditionFailed: an event matching `condition` was committed after its position.
            StorageError: the log could not be written (e.g. a full disk); StoreFailed: a sync failed.
            TypeError, ValueError: malformed arguments.
        """
        core = self._w()
        if type(events) is list and expected_state is None and condition is None and self._binder is None:
            done = core.writer.append_plain(stream, events, expected_version)
            if done is not None:
                return done
        return core.writer.commit([Part(stream, events, expected_version, expected_state)], (), self._binder,
                                  condition=check_condition(condition))[0]

    @_index_errors
    def append_many(self, appends: Iterable[tuple[Stream, Sequence[NewEvent], Any]], *,
                    tracking: tuple[str, int] | None = None,
                    condition: Condition | None = None) -> list[AppendResult]:
        """Append to several streams in one atomic commit: every part is written, or none is.

        Each item is `(stream, events, expected_version)`; the results are in the same order.
        `tracking=(upstream, position)` records, in the same commit, how far this store has processed
        another log (exactly-once processing). With tracking, `appends` may be empty.

        Raises: as `append`, and `TrackingConflict` unless the tracking position is above every
        position recorded for that upstream.
        """
        core = self._w()
        parts = []
        for item in appends:
            if not isinstance(item, tuple) or len(item) != 3:
                raise TypeError("append_many takes (stream, events, expected_version) tuples")
            parts.append(Part(*item))
        controls = [] if tracking is None else [tracking_record(tracking)]
        if not parts and not controls:
            raise ValueError("append_many needs at least one (stream, events, expected_version)")
        return core.writer.commit(parts, controls, self._binder, condition=check_condition(condition))

    @_index_errors
    def append_fields(self, stream: Stream, types: Sequence[str], datas: Sequence[bytes],
                      metadatas: Sequence[bytes], *, expected_version: Any = ANY) -> AppendResult:
        """For adapters: `append` of events as parallel sequences of their fields (type, data, metadata;
        schema 1, no id, no tags): no `NewEvent` is made but for a new type or bad input. Raises: as `append`."""
        core = self._w()
        check_fields(types, datas, metadatas)
        if self._binder is None:
            done = core.writer.append_plain(stream, [], expected_version, (types, datas, metadatas))
            if done is not None:
                return done
        return self.append(stream, list(map(NewEvent, types, datas, metadatas)), expected_version=expected_version)

    def import_commit(self, parts: list[tuple[Stream, Sequence[NewEvent], Any]], recorded_at_ns: int,
                      controls: Sequence[ControlRecord] = ()) -> list[AppendResult]:
        """For `evstore import`: one commit of imported records keeping their original commit time,
        the events of `parts` then the control records (marks, snapshots, tracking, aux) as exported.
        No lifecycle applies: the `$state` marks come from the file. Raises as `append_many`."""
        core = self._w()
        if not parts and not controls:
            raise ValueError("an imported commit needs at least one record")
        return core.writer.commit([Part(*p) for p in parts], list(controls), None, recorded_at_ns)

    def sync(self) -> None:
        """Make everything written so far durable, the index included (useful with durability="os").

        Raises:
            StoreFailed: the log cannot be synced (the store then refuses writes until reopened).
            IndexUnavailable: the index cannot be written (the log is durable).
        """
        self._w().group.sync()

    # -- tracking and consumers ------------------------------------------------------------

    @_index_errors
    def max_tracking(self, upstream: str) -> int | None:
        """The largest position recorded with `tracking=(upstream, ...)`, or None."""
        core = self._r()
        name = tracking_name(upstream)
        with core.index.begin() as txn:
            return max_tracking(core.index, txn, name)

    @_index_errors
    def has_tracking(self, upstream: str, position: int) -> bool:
        """Whether a tracking record for exactly (`upstream`, `position`) was committed."""
        core = self._r()
        name = tracking_name(upstream)
        check_position(position, "position", allow_none=False)
        with core.index.begin() as txn:
            return ix.has_tracking(core.index, txn, name, position)

    def consume(self, name: str, handler: Callable[..., None], *, types: Iterable[str] | None = None,
                timeout: float | None = None, limit: int | None = None, checkpoint_every: int = 100,
                category: str | None = None, group: tuple[int, int] | None = None) -> ConsumerStats:
        """Run `handler(event, ctx)` for each event (of `types`, of `category`) after consumer `name`'s
        position, following new commits; what the handler appends with `ctx.append(...)` commits
        together with the consumer's new position (exactly once within the store). With `group=(i,
        n)`, as member i of a group of n (in any process, this handle may be read-only), committing
        to the member's own store: see `evstore.groups`. Raises: see `evstore.consumer.consume`."""
        kw: Any = dict(types=types, timeout=timeout, limit=limit, checkpoint_every=checkpoint_every, category=category)
        if group is not None:
            return groups.consume_member(self, name, handler, group, open, **kw)
        return consume(self, name, handler, **kw)

    def subscribe(self, *, gt: int = 0, types: Iterable[str] | None = None, timeout: float | None = None,
                  category: str | None = None, group: tuple[int, int] | None = None) -> Subscription:
        """Events after position `gt` (of the given types, of streams of `category`, of the streams of
        member i of a group of n for `group=(i, n)`: those whose `stream_hash` modulo n is i), then new
        ones as they commit, from this process or another; never skips or repeats one. See `Subscription`.

        Raises: TypeError, ValueError for a bad position, types, category, group or timeout (None, or
        seconds >= 0)."""
        core = self._r()
        start = check_position(gt, "gt") or 0
        seconds = check_timeout(timeout)
        tfilter, cat, part = type_filter(types), category_filter(category), check_group(group)

        def fetch(after: int, upto: int, limit: int) -> list[RecordedEvent]:
            return list(self._read_all(after, upto, limit, tfilter, cat, part))

        return Subscription(fetch, self.head, core.commit_cond, start, seconds)

    # -- reading ---------------------------------------------------------------------------

    @_index_errors
    def stream_version(self, stream: Stream) -> int:
        """The stream's last version (0 when it has no events)."""
        core = self._r(True)
        check_stream(stream)
        h = core.reader.head_of(stream)
        return 0 if h is None else h.version

    @_index_errors
    def head(self) -> int:
        """The position of the last committed event (0 when the store is empty)."""
        return self._r().reader.last_position()

    @_index_errors
    def read_stream(self, stream: Stream, *, gt: int | None = None, lte: int | None = None, desc: bool = False,
                    limit: int | None = None) -> list[RecordedEvent]:
        """The stream's events with `gt < version <= lte`, oldest first (newest first with desc=True),
        at most `limit` of them. An absent stream reads as empty.

        Raises: StreamDeleted for a tombstoned stream; CorruptedError when a record is damaged."""
        chunks = self._stream_regions(stream, gt, lte, desc, limit)
        up = self._up
        if len(chunks) == 1 and up is None and not desc:  # the common read: one extent, no upcasters
            buf, offsets, _s, _e = chunks[0]
            return [RecordedEvent((buf, o, stream)) for o in offsets]
        out: list[RecordedEvent] = []
        for buf, offsets, start, end in chunks:
            recs = [RecordedEvent((buf, o, stream)) for o in offsets]
            if up is not None and up.region_needs(buf, start, end):
                recs = up.apply_list(recs)
            out.extend(recs)
        if desc:
            out.reverse()
        return out

    @_index_errors
    def stream_chunks(self, stream: Stream, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> list[tuple[Any, list[int]]]:
        """`read_stream` in raw form, for adapters that build their own objects (zero-copy): (mapping,
        record offsets) pairs in read order. Records are as stored (upcasters are not applied); the
        layout is docs/log_format.md's."""
        chunks = [(buf, list(offs)) for buf, offs, _s, _e in self._stream_regions(stream, gt, lte, desc, limit)]
        if desc:
            chunks = [(buf, offs[::-1]) for buf, offs in reversed(chunks)]
        return chunks

    def _stream_regions(self, stream: Stream, gt: int | None, lte: int | None, desc: bool,
                        limit: int | None) -> list[StreamChunk]:
        core = self._r(True)
        key = checked_stream_key(stream)
        if gt is not None or lte is not None or limit is not None:
            gt, lte, limit = check_position(gt, "gt"), check_position(lte, "lte"), check_position(limit, "limit")
        return core.reader.stream_chunks(key, stream, gt, lte, desc, limit)

    @_index_errors
    def read_all(self, *, gt: int | None = 0, lte: int | None = None, limit: int | None = None,
                 types: Iterable[str] | None = None, category: str | None = None) -> Iterator[RecordedEvent]:
        """Every event with `gt < position <= lte` in position order (of the given types, and of the
        streams of `category` — the ids whose text before the first "-" it is — if given), as of the
        moment of the call; at most `limit`. Streams the log: memory stays flat. A category read is
        served by the category postings: it costs what it returns.

        Raises: TypeError, ValueError for bad arguments; CorruptedError (while iterating) when the
        log is damaged."""
        self._r()
        start = check_position(gt, "gt")
        return self._read_all(start or 0, check_position(lte, "lte"), check_position(limit, "limit"),
                              type_filter(types), category_filter(category))

    @_index_errors
    def _read_all(self, gt: int, lte: int | None, limit: int | None,
                  tfilter: tuple[bytes, ...] | None, cat: bytes | None = None,
                  part: tuple[int, int] | None = None) -> Iterator[RecordedEvent]:
        """Fix the snapshot (the head and where to start) now; the returned iterator scans lazily."""
        reader = self._r().reader
        plan = reader.all_plan(gt, lte, tfilter, cat, limit if part is None or limit is None else limit * part[1])
        if plan is None:
            return iter(())
        return self._records(reader.plan_chunks(plan, gt, limit, tfilter, part))

    def _records(self, chunks: Iterator[Chunk]) -> Iterator[RecordedEvent]:
        up = self._up
        for buf, offs, start, end in chunks:
            batch = [new_record(RecordedEvent, (buf, o, None)) for o in offs]
            if up is not None and up.region_needs(buf, start, end):
                batch = up.apply_list(batch)
            yield from batch

    @_index_errors
    def all_chunks(self, *, gt: int = 0, lte: int | None = None, limit: int | None = None,
                   types: Iterable[str] | None = None, category: str | None = None) -> Iterator[tuple[Any, list[int]]]:
        """`read_all` in raw form, for adapters that build their own objects (zero-copy): (mapping,
        record offsets) pairs in position order. Records are as stored (upcasters are not applied).
        Raises: as `read_all`."""
        reader = self._r().reader
        tfilter = type_filter(types)
        plan = reader.all_plan(gt, lte, tfilter, category_filter(category), limit)
        if plan is None:
            return iter(())
        return ((buf, offs) for buf, offs, _s, _e in reader.plan_chunks(plan, gt, limit, tfilter))

    @_index_errors
    def query(self, items: Sequence[QueryItem], *, gt: int = 0, lte: int | None = None,
              limit: int | None = None, category: str | None = None) -> list[RecordedEvent]:
        """Events with `gt < position <= lte` that match any of `items` (an event matches an item when
        its type is one of the item's types, or the item names none, and it carries every tag of the
        item), of streams of `category` if given, in position order, at most `limit`. Served by the
        tag, type and category indexes. Raises: TypeError, ValueError for bad arguments."""
        core = self._r()
        start = check_position(gt, "gt", allow_none=False)
        out = core.reader.query(query_items(items), start or 0, check_position(lte, "lte"),
                                check_position(limit, "limit"), category_filter(category))
        return out if self._up is None else self._up.apply_list(out)

    @_index_errors
    def event_at(self, position: int) -> RecordedEvent | None:
        """The event at a global position, or None. Raises CorruptedError when it is damaged."""
        core = self._r()
        check_position(position, "position", allow_none=False)
        r = core.reader.record_at(position) if position > 0 else None
        if r is not None and self._up is not None:
            r = self._up.upcast(r)
        return r

    def streams(self, *, prefix: str | None = "") -> Iterator[tuple[Stream, int]]:
        """(stream, version) of every stream, string ids in UTF-8 order (those starting with `prefix`),
        then UUID ids when no prefix is given (None or "")."""
        if prefix is None:
            prefix = ""
        elif not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str or None, not {type(prefix).__name__}")
        return iter(self._streams(prefix))

    @_index_errors
    def _streams(self, prefix: str) -> list[tuple[Stream, int]]:
        core = self._r()
        with core.index.begin() as txn:
            rows = ix.heads_from(core.index, txn, b"s" + prefix.encode("utf-8") if prefix else b"")
        return [(decode_stream(k[1:], FLAG_UUID_STREAM if k[:1] == b"u" else 0), h.version) for k, h in rows]

    # -- stream states: lifecycles and marks ------------------------------------------------

    def _head(self, core: Core, stream: Stream) -> Head | None:
        check_stream(stream)
        return core.reader.head_of(stream)

    def lifecycle_of(self, stream: Stream) -> Lifecycle | None:
        """The lifecycle this handle binds to `stream` (from `open(lifecycles=...)`), or None."""
        check_stream(stream)
        return None if self._binder is None else self._binder(stream)

    @_index_errors
    def stream_state(self, stream: Stream) -> str | None:
        """The stream's lifecycle state: the recorded one, else (for a stream bound to a lifecycle) the
        state its visible history leads to (the initial state for a new stream), else None."""
        core = self._r()
        h = self._head(core, stream)
        if h is not None and h.state is not None:
            return h.state
        lc = self.lifecycle_of(stream)
        if lc is None:
            return None
        if h is None or h.version <= h.hidden:
            return lc.initial
        return lc.replay(e.type for e in self.read_stream(stream))

    @_index_errors
    def stream_info(self, stream: Stream) -> StreamInfo | None:
        """What the index holds on the stream's head (version, marks, recorded state), or None."""
        core = self._r()
        h = self._head(core, stream)
        if h is None:
            return None
        tombstoned = bool(h.flags & HEAD_TOMBSTONE)
        deleted = tombstoned or (h.hidden > 0 and h.version <= h.hidden)  # nothing visible since the delete
        return StreamInfo(stream, h.version, bool(h.flags & HEAD_CLOSED), deleted, tombstoned, h.state)

    @_index_errors
    def close_stream(self, stream: Stream) -> None:
        """Close the stream: it stays readable, and further appends raise `StreamClosed`.

        Written to the log as a `$closed` mark in a commit of its own (closing a closed stream writes
        nothing). A stream with no events can be closed too. Raises `StreamDeleted` when tombstoned."""
        core = self._w()
        marks.close_stream(core, stream, *check_stream(stream))

    @_index_errors
    def delete_stream(self, stream: Stream, *, tombstone: bool = False) -> None:
        """Delete the stream, softly (default) or for ever (`tombstone=True`).

        Soft: `read_stream` returns nothing up to the current version, `stream_version` still returns
        it, and an append continues after it (its lifecycle starts again at the initial state).
        `read_all` still yields the old events. Tombstone: `read_stream` and `append` raise
        `StreamDeleted` and the name can never be used again. Either is a mark in a commit of its own,
        so it survives crashes and index rebuilds. Soft-deleting a stream with nothing visible writes
        nothing; any operation on a tombstoned stream raises `StreamDeleted`. Raises TypeError unless
        `tombstone` is a bool."""
        core = self._w()
        stored, flags = check_stream(stream)
        if type(tombstone) is not bool:
            raise TypeError(f"tombstone must be True or False, not {tombstone!r}")
        marks.delete_stream(core, stream, stored, flags, tombstone)

    def check_lifecycles(self) -> list[LifecycleViolation]:
        """Replay the event types of every stream bound to a lifecycle and list each event it refuses.

        For lifecycles introduced after data exists. A refused event is skipped (the state stays) so
        that later violations are found too. Only the visible history is checked (after a soft delete)."""
        self._r()
        if self._binder is None:
            return []
        return find_violations(bound_histories(self.streams(), self._binder, self.read_stream, StreamDeleted))

    # -- snapshots ---------------------------------------------------------------------------

    @_index_errors
    def save_snapshot(self, stream: Stream, version: int, data: bytes, *, type: str, schema: int = 1) -> None:
        """Save `data` as the stream's state at `version` (1 .. the stream's version).

        Stored as a SNAPSHOT record in a commit of its own and indexed, so it survives a rebuild of the
        index. `type` and `schema` describe the data; `load` uses only snapshots of its schema.

        Raises: ValueError for a version that is not visible or data over 16 MiB; TypeError for a
        schema that is not an int; StreamDeleted when tombstoned."""
        core = self._w()
        stored, flags = check_stream(stream)
        check_position(version, "version", allow_none=False)
        marks.save_snapshot(core, stream, stored, flags, version, *check_snapshot(type, data, schema))

    @_index_errors
    def load_snapshot(self, stream: Stream, *, lte: int | None = None) -> Snapshot | None:
        """The latest snapshot of the stream at or below version `lte`, or None.

        Snapshots at or below a soft delete are not returned; a tombstoned stream raises `StreamDeleted`."""
        core = self._r()
        lte = check_position(lte, "lte")
        h = self._head(core, stream)
        if h is None:
            return None
        if h.flags & HEAD_TOMBSTONE:
            raise StreamDeleted(stream)
        return next(core.reader.snapshots(stream, h, lte), None)

    @_index_errors
    def prune_snapshots(self, stream: Stream | None = None, *, keep: int = 1) -> int:
        """Drop the index entries of all but the newest `keep` snapshots of `stream` (of every stream
        when None); returns how many were dropped. The log keeps their bytes: a rebuild of the index
        from the log brings them back. Raises ValueError unless keep is an int >= 0."""
        core = self._w()
        core.group.refresh()
        if type(keep) is not int or keep < 0:
            raise ValueError("keep must be an int >= 0")
        num = None
        if stream is not None:
            h = self._head(core, stream)
            if h is None:
                return 0
            num = h.num
        return marks.prune_snapshots(core, num, keep)

    @_index_errors
    def load(self, stream: Stream, *, apply: Callable[[Any, RecordedEvent], Any], initial: Any,
             decode_snapshot: Callable[[Snapshot], Any] | None = None, schema: int = 1,
             snapshot_every: int | None = None, encode_snapshot: Callable[[Any], bytes] | None = None,
             snapshot_type: str = "snapshot") -> Loaded[Any]:
        """Fold the stream into a state: `state = apply(state, event)` over its (upcast) events.

        Starts from `decode_snapshot(snapshot)` of the latest snapshot of `schema` (older schemas are
        ignored; no decoder: no snapshot is used) or from `initial`. With `snapshot_every=N` and
        `encode_snapshot`, saves a new snapshot (`encode_snapshot(state)`, of `snapshot_type` and
        `schema`) when more than N events were replayed (not on a read-only handle). The returned
        `version` is what the next append expects. Raises StreamDeleted when tombstoned."""
        core = self._r()
        h = self._head(core, stream)
        return marks.load(core, stream, h, self.read_stream, None if self.readonly else self.save_snapshot, apply,
                          initial, decode_snapshot, schema, snapshot_every, encode_snapshot, snapshot_type)

    # -- upcasting ---------------------------------------------------------------------------

    def register_upcaster(self, event_type: str, from_schema: int,
                          fn: Callable[[RecordedEvent], tuple[str, bytes, bytes]]) -> None:
        """Read events of `event_type` with schema `from_schema` as `fn(event) -> (type, data, metadata)`
        of schema from_schema + 1, on every read path of this handle (read_stream, read_all, event_at,
        load, subscriptions). Steps chain; the stored bytes never change.

        A type's chain must be contiguous: a new step goes right above the highest (or below the lowest)
        registered from_schema; anything else raises `InvalidUpcaster`. `types=` filters of read_all and
        subscribe match the stored type."""
        self._c()
        up = self._up or Upcasters()
        up.register(event_type, from_schema, fn)
        self._up = up

    # -- for tools ---------------------------------------------------------------------------

    @property
    def maintenance(self) -> Maintenance:
        """For maintenance tools (evstore's CLI, import, backup): index lookups that are not part of
        the event store's API — see `evstore.engine.maintenance.Maintenance`."""
        return Maintenance(self._r)


def open(path: str | os.PathLike[str], *, create: bool = True, readonly: bool = False,
         durability: str | None = None, segment_size: int = DEFAULT_SEGMENT_SIZE,
         map_size: int = DEFAULT_MAP_SIZE, log_impl: str | None = None,
         lifecycles: Binding | None = None) -> EventStore:
    """Open (and by default create) the store in directory `path`.

    One process may write a store at a time; any number may open it with readonly=True. On open, a
    torn tail left by a crash is cut off (and synced) and the index catches up with the log; a lost
    or damaged index is rebuilt from the log.

    `durability`: "fsync" (the default: an append returns once its bytes are on disk) or "os" (handed
    to the OS: survives a killed process, not a power cut; the last commits may be lost, never a part
    of one). None takes the default, or the options of the store if it is already open in this
    process. `log_impl`: "c" or "python" (default: C unless EVSTORE_PURE=1). `lifecycles`: a
    {category: Lifecycle} mapping (a stream's category is its id up to the first "-") or a function
    stream -> Lifecycle | None; appends through this handle are checked against them.

    Raises:
        StoreLocked: another process writes the store (its pid is in the error).
        EvstoreError: no store at `path` (with create=False or readonly=True), a path that is not a
            store, or a second open in this process with other options.
        CorruptedError: the log is damaged (run `evstore verify` / `evstore recover`);
            IndexAheadOfLog: the log ends before what the index covers.
        UnsupportedFormat, StorageError, IndexUnavailable: a newer format; the OS refused (a full disk).

    Caveats: one store per path per process — opening it again shares the open store (handles are
    reference-counted; the last `close()` closes it). A process forked after `open()` must open the
    store itself: the parent's handles raise `ForkedStore` in the child, which may open the store
    read-only while the parent writes. Records read from the store hold memory mappings of its
    segments: keeping many of them alive keeps those mappings (and their pages) alive.
    """
    core, binder = open_core(path, create=create, readonly=readonly, durability=durability,
                             segment_size=segment_size, map_size=map_size, log_impl=log_impl, lifecycles=lifecycles)
    return EventStore(core, readonly, binder)

