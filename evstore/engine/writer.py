"""The writer: every check of a commit under the writer lock (idempotency, conditions, tracking,
expected versions and states, lifecycles, closed and tombstoned streams), then the write itself.

Nothing is written unless every check passed: a rejected append leaves no trace and consumes no
position. Checks read the in-memory heads (`Indexer.heads`, current with every written commit) and,
for conditions and caller ids, the index, which first indexes what is written (`NeedFlush`).

Requires: every method except `commit`/`write_marks` runs under the writer lock (`core.wlock`), which
also guards `next_position` and `closing`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from evstore.storage import index as ix
from evstore.format.encode import MAX_VERSION
from evstore.format.layout import KIND_MARK, KIND_TRACKING
from evstore.engine.combine import Combiner
from evstore.engine.checks import CheckedCondition, Part, check_expected, check_stream, type_names
from evstore.engine.indexer import MARK_STATE
from evstore.errors import (
    ConditionFailed,
    DuplicateEventId,
    EvstoreError,
    InvalidTransition,
    StoreClosed,
    StoreFailed,
    StreamClosed,
    StreamDeleted,
    TrackingConflict,
    WrongExpectedVersion,
)
from evstore.format.encode import (ControlRecord, EncodedCommit, PartToEncode, encode_commit, plain_events,
                                   plain_fields)
from evstore.storage.index import HEAD_CLOSED, HEAD_TOMBSTONE, Head, IndexBatch, stream_key
from evstore.lifecycle import Lifecycle
from evstore.records import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, Stream, encode_tags

if TYPE_CHECKING:
    from evstore.engine.core import Core

Binder = Callable[[Any], "Lifecycle | None"]
Fields = tuple[Sequence[object], Sequence[object], Sequence[object]]  # type names, data, metadata


MAX_STREAM_IDS = 65536  # checked stream ids the writer keeps (then it starts again)


class NeedFlush(Exception):
    """Raised under the writer lock when a check needs commits that are written but not yet indexed."""


class Writer:
    """Checks and writes the commits of one store (see the module docstring)."""

    def __init__(self, core: Core, next_position: int) -> None:
        self.core = core
        self.next_position = next_position  # GUARDED_BY(core.wlock): the next global position
        self.closing = False  # GUARDED_BY(core.wlock): close() has begun; appends are refused
        # GUARDED_BY(core.wlock): the results of the last commit written, set before it is recorded
        # (`GroupCommit.add_written`): what an interrupted caller's appends got (engine/combine.py)
        self.last_results: list[AppendResult] = []
        self.combiner = Combiner(self)  # the queue of fast-path appends waiting for a sync (its own lock)
        # Stream id -> (stored bytes, flags, index key), of ids checked before. Read and written with
        # no lock (dict operations are atomic under the GIL): an entry is a function of its id alone,
        # so an insert lost to a concurrent clear() only costs a check.
        self.stream_ids: dict[Stream, tuple[bytes, int, bytes]] = {}

    def commit(self, parts: list[Part], controls: Sequence[ControlRecord] = (), binder: Binder | None = None,
               ts: int | None = None, condition: CheckedCondition | None = None) -> list[AppendResult]:
        """Check, write and (per durability) sync one commit of several streams' events.

        `binder` gives each stream's lifecycle (None: no lifecycles): every event is checked against
        it and a `$state` mark is added to the commit when a stream's state changes. `ts` overrides
        the commit time (imports keep the original times)."""
        group = self.core.group
        for _attempt in range(100):
            try:
                results, seq = self.commit_once(parts, controls, binder, ts, condition)
                group.await_durable(seq)
                return results
            except NeedFlush:
                group.await_durable(group.written_seq)  # index what is written, then check again
                group.flush_index()
        try:
            results, seq = self.commit_once(parts, controls, binder, ts, condition)
            group.await_durable(seq)
            return results
        except NeedFlush:
            raise EvstoreError("other writers kept the index behind: the append's checks (condition or "
                               "lifecycle state) could not be made; retry") from None

    def commit_once(self, parts: list[Part], controls: Sequence[ControlRecord], binder: Binder | None,
                    ts: int | None, condition: CheckedCondition | None) -> tuple[list[AppendResult], int]:
        """One attempt at `commit` that does not wait for durability: (results, the commit's sequence
        number for `GroupCommit.await_durable`; 0 for an idempotent retry, durable already). Raises
        `NeedFlush` when a check needs the written commits indexed first, and whatever `commit` raises."""
        core = self.core
        group = core.group
        indexer = core.indexer
        group.check_writable()
        with core.wlock:
            if self.closing:
                raise StoreClosed(core.path)
            done = self.idempotent(parts)
            if done is not None:
                return done, 0
            if condition is not None:
                if group.indexed_seq < group.written_seq:
                    raise NeedFlush  # the check reads the index: index what is written first
                hit = core.reader.query(condition[0], condition[1], None, 1)
                if hit:
                    raise ConditionFailed(condition[2], hit[0].position)
            for x in controls:
                if x.kind == KIND_TRACKING and x.version <= indexer.tracking_max(x.stream):
                    raise TrackingConflict(x.stream.decode(), x.version, indexer.tracking_max(x.stream))
            for p in parts:
                h = indexer.head_of(p.key)
                p.head = h
                check_appendable(p.stream, h)
                check_version(p.stream, p.expected, 0 if h is None else h.version)
                if binder is not None or p.expected_state is not None:
                    mark = self.check_state(p, h, binder)
                    if mark is not None:
                        controls = [*controls, mark]
            if len({p.key for p in parts}) != len(parts):
                raise ValueError("append_many names a stream twice; put its events in one entry")
            return self.write(parts, controls, ts)

    def append_plain(self, stream: Stream, events: list[Any], expected: Any,
                     fields: Fields | None = None
                     ) -> AppendResult | None:
        """The fast path of an append to one stream of *plain* events (evstore.format.encode's
        `plain_events`: no ids, no tags) without lifecycles, expected state or condition: the checks
        of `commit` that apply, one encoder call and the write. None, with nothing written, when an
        event is not plain (or not valid): the caller then takes `commit`, which says what is wrong.
        `fields`: the events as (type names, data, metadata) instead (`events` is then ignored)."""
        if not self.core.group.os_mode:  # appends that wait for a sync are combined (engine/combine.py)
            return self.combiner.append(stream, events, expected, fields)
        done = self.append_plain_once(stream, events, expected, fields)
        if done is None:
            return None
        self.core.group.await_durable(done[1])
        return done[0]

    def append_plain_once(self, stream: Stream, events: list[Any], expected: Any,
                          fields: Fields | None = None
                          ) -> tuple[AppendResult, int] | None:
        """`append_plain` without the durable wait: (result, the commit's sequence number for
        `GroupCommit.await_durable`), or None as `append_plain`. Raises as `append_plain`."""
        args = self.plain_args(stream, events, expected, fields)
        if args is None:
            return None  # `commit` says what is wrong, in its order of checks
        sb, sflag, key, expected = args
        core = self.core
        core.group.check_writable()
        with core.wlock:
            checked = self.plain_head(stream, key, events, expected, fields)
            if checked is None:
                return None
            h, actual = checked
            if fields is None:
                enc = core.impl.encode_plain(stream, key, sb, sflag, actual, events, type_names,
                                             self.next_position, time.time_ns())
            else:
                enc = core.impl.encode_fields(stream, key, sb, sflag, actual, *fields, type_names,
                                              self.next_position, time.time_ns())
            if enc is None:
                return None
            results, seq = self.install(enc, (), {key: h})
        return results[0], seq

    def plain_part(self, stream: Stream, events: list[Any], expected: Any, fields: Fields | None
                   ) -> tuple[PartToEncode, Head | None] | None:
        """Under the writer lock: the checks `append_plain_once` makes, and the append as one part
        of a commit written with others (`write_parts`), with the stream's head; None, with nothing
        checked past the stream's head, when an event is not plain (or, on a refusal, carries an id).
        Raises as `append_plain_once`."""
        args = self.plain_args(stream, events, expected, fields)
        if args is None:
            return None
        sb, sflag, key, expected = args
        checked = self.plain_head(stream, key, events, expected, fields)
        if checked is None:
            return None
        h, actual = checked
        if fields is None:
            valid = plain_events(events, type_names)
        elif len(fields[0]) == len(fields[1]) == len(fields[2]):
            valid = plain_fields(*fields, type_names)
        else:
            valid = None
        if valid is None:
            return None
        return PartToEncode(stream, key, sb, sflag, actual, valid), h

    def plain_args(self, stream: Stream, events: list[Any], expected: Any, fields: Fields | None
                   ) -> tuple[bytes, int, bytes, Any] | None:
        """The fast path's checks of its arguments (no lock): (stored stream bytes, flags, key, the
        expected version checked), or None for no events given (`commit` says what is wrong)."""
        if fields is None:
            if not events:
                return None
        elif not fields[0]:
            raise ValueError("an append needs at least one event")
        sb, sflag, key = self.stream_ids_of(stream)
        if type(expected) is not int or not 0 <= expected <= MAX_VERSION:
            expected = check_expected(expected)
        return sb, sflag, key, expected

    def plain_head(self, stream: Stream, key: bytes, events: list[Any], expected: Any, fields: Fields | None
                   ) -> tuple[Head | None, int] | None:
        """Under the writer lock: the fast path's checks of the stream (open store, appendable,
        expected version); (its head, its version). None when refused but an event carries an id:
        perhaps a retry of a committed append, which `commit` answers."""
        if self.closing:
            raise StoreClosed(self.core.path)
        h = self.core.indexer.head_of(key)
        actual = 0 if h is None else h.version
        try:
            check_appendable(stream, h)
            check_version(stream, expected, actual)
        except (WrongExpectedVersion, StreamClosed, StreamDeleted):
            if fields is None and any(getattr(e, "id", None) is not None for e in events):
                return None
            raise
        return h, actual

    def write_parts(self, parts: list[tuple[PartToEncode, Head | None]]) -> tuple[list[AppendResult], int]:
        """Write checked parts (`plain_part`, each of another stream) as one commit; (their results,
        the commit's sequence number). Requires the writer lock. Raises ValueError, with nothing
        written, when they do not fit in one commit, and as `install`."""
        enc = encode_commit(self.core.impl, [p for p, _h in parts], (), self.next_position, time.time_ns())
        return self.install(enc, (), {p.key: h for p, h in parts})

    def stream_ids_of(self, stream: Stream) -> tuple[bytes, int, bytes]:
        """(stored bytes, flags, index key) of a stream id; TypeError/ValueError when malformed."""
        try:
            ids = self.stream_ids.get(stream)
        except TypeError:  # unhashable: not a stream id (check_stream says so)
            ids = None
        return ids if ids is not None else self.check_stream(stream)

    def check_stream(self, stream: Stream) -> tuple[bytes, int, bytes]:
        """`stream_ids_of` of an id not kept: checked, then kept for the next append to it."""
        sb, sflag = check_stream(stream)
        ids = (sb, sflag, stream_key(stream))
        if type(stream) is str or type(stream) is uuid.UUID:  # (not a subclass: its hash may differ)
            if len(self.stream_ids) >= MAX_STREAM_IDS:
                self.stream_ids.clear()
            self.stream_ids[stream] = ids
        return ids

    def check_state(self, p: Part, h: Head | None, binder: Binder | None) -> ControlRecord | None:
        """Check expected_state and the lifecycle of one part; the `$state` mark to write, if any."""
        lc = binder(p.stream) if binder is not None else None
        state = None if h is None else h.state
        if lc is not None and state is None:
            state = self.derive_state(p.stream, h, lc)
        es = p.expected_state
        if es is not None and state not in es:
            raise WrongExpectedVersion(p.stream, next(iter(es)) if len(es) == 1 else set(es), state, "state")
        if lc is None:
            return None
        f = lc.fold([e[0] for e in p.events], state)
        if f.refused_at is not None:
            raise InvalidTransition(p.stream, f.state, f.refused_type or "", lc.allowed(f.state), lc.name)
        if h is not None and f.state == h.state:
            return None
        return ControlRecord(KIND_MARK, p.sb, p.sflag, MARK_STATE, (0 if h is None else h.version) + len(p.events),
                             f.state.encode("utf-8"), 0)

    def derive_state(self, stream: Stream, h: Head | None, lc: Lifecycle) -> str:
        """The state that a stream's visible history leads to in `lc` (for streams with no recorded state).

        Raises `InvalidTransition` when the history does not fit the lifecycle, and `NeedFlush` when the
        stream has written events that are not indexed yet."""
        if h is None or h.version <= h.hidden:
            return lc.initial
        reader = self.core.reader
        records = reader.stream_records(reader.extents(h.num, h.hidden + 1, h.version), h.hidden + 1, h.version,
                                        stream)
        if not records or records[-1].version != h.version:
            raise NeedFlush()
        f = lc.fold(r.type for r in records)
        if f.refused_at is not None:
            raise InvalidTransition(stream, f.state, f.refused_type or "", lc.allowed(f.state), lc.name)
        return f.state

    def write_marks(self, key: bytes, make: Callable[[Head | None], list[ControlRecord]]) -> int:
        """Write, in a commit of their own, the records `make(head)` returns (none: nothing is written).

        `make` runs under the writer lock with the stream's current head and may raise to refuse.
        Returns the number of records written."""
        core = self.core
        core.group.check_writable()
        with core.wlock:
            if self.closing:
                raise StoreClosed(core.path)
            controls = make(core.indexer.head_of(key))
            if not controls:
                return 0
            _, seq = self.write([], controls)
        core.group.await_durable(seq)
        return len(controls)

    def idempotent(self, parts: list[Part]) -> list[AppendResult] | None:
        """The original results when every event id of this append is already committed, by the same
        events in the same shape; `DuplicateEventId` when some id is used otherwise."""
        if not any(getattr(e, "id", None) is not None for p in parts for e in p.raw):
            return None  # no caller ids: nothing to look up, and no need to encode the events yet
        ids = [e[3] for p in parts for e in p.events if e[3] is not None]
        if len(set(ids)) != len(ids):
            seen: set[bytes] = set()
            for i in ids:
                if i in seen:
                    raise DuplicateEventId(uuid.UUID(bytes=i))
                seen.add(i)
        core = self.core
        with core.group.ids_lock:
            unindexed = any(i in core.group.pending_ids for i in ids)
        if unindexed:
            raise NeedFlush  # a retry of a commit not indexed yet: index it, then compare
        found: dict[bytes, int] = {}
        index = core.index
        with index.begin() as txn:
            for i in ids:
                pos = ix.id_position(index, txn, i)
                if pos is not None:
                    found[i] = pos
        if not found:
            return None
        results = []
        if len(found) == len(ids) == sum(len(p.events) for p in parts):
            for p in parts:
                positions = [found[e[3]] for e in p.events]  # type: ignore[index]
                first = positions[0]
                if positions != list(range(first, first + len(positions))):
                    break
                rec = core.reader.record_at(first)
                if rec is None or stream_key(rec.stream) != p.key:
                    break
                if not self.same_events(p, positions):
                    break  # the ids are those of a committed append, the events are not
                v = rec.version
                results.append(AppendResult(p.stream, v, v + len(positions) - 1, first, positions[-1]))
            else:
                return results
        i, pos = next(iter(found.items()))
        raise DuplicateEventId(uuid.UUID(bytes=i), pos)

    def same_events(self, part: Part, positions: list[int]) -> bool:
        """Whether the committed events at `positions` are `part`'s events: same type, data, metadata,
        schema and tags (a retry must repeat the append, not reuse its ids for other events)."""
        record_at = self.core.reader.record_at
        for (tb, data, meta, _idb, schema, gb), pos in zip(part.events, positions):
            rec = record_at(pos)
            if (rec is None or stream_key(rec.stream) != part.key or rec.type.encode("utf-8") != tb
                    or rec.data != data or rec.metadata != meta or rec.schema != schema
                    or encode_tags(rec.tags) != gb):
                return False
        return True

    def write(self, parts: list[Part], controls: Sequence[ControlRecord],
              ts: int | None = None) -> tuple[list[AppendResult], int]:
        """Encode and write one checked commit, and install its effects (heads, index entries to come).
        Requires the writer lock. Returns the results and the commit's sequence number."""
        core = self.core
        enc = encode_commit(core.impl, [
            PartToEncode(p.stream, p.key, p.sb, p.sflag, 0 if p.head is None else p.head.version, p.events)
            for p in parts], controls, self.next_position, time.time_ns() if ts is None else ts)
        return self.install(enc, controls, {p.key: p.head for p in parts})

    def install(self, enc: EncodedCommit, controls: Sequence[ControlRecord],
                heads: dict[bytes, Head | None]) -> tuple[list[AppendResult], int]:
        """Write an encoded, checked commit and install its effects; `heads` are the heads of its
        streams as the checks read them (None: a new stream). Requires the writer lock."""
        core = self.core
        group = core.group
        recorded, appended = group.written_seq, core.log.appended
        try:
            seg, off = core.log.append(enc.buf, enc.first_position, enc.n_events)
            # The commit is in the log: from here on, state changes are installed.
            self.next_position = enc.first_position + enc.n_events
            self.last_results = enc.results
            batch = IndexBatch()
            if not controls and len(enc.runs) == 1 and not enc.ids and not enc.tagged:  # one stream's events
                core.indexer.index_run(batch, seg.first, off, enc, heads[enc.runs[0][0]])
            else:
                core.indexer.index_encoded(batch, seg.first, off, enc, controls, heads)
            seq = group.add_written(batch, enc.ids)
        except StoreFailed as e:  # a roll could not sync the segment it sealed: nothing more is written
            group.latch(e.__cause__ or e)
            raise
        except BaseException as e:
            # An interrupt (Ctrl-C) once the log took the commit (an event-less one too: a mark, a
            # snapshot), before it was recorded: the heads and the index miss it. (Interrupted before
            # the log counted it, the commit was not written, or its bytes lie past the log's end for
            # the next to overwrite.)
            if group.written_seq == recorded and core.log.appended != appended:
                group.latch_unrecorded(e)
            raise
        return enc.results, seq


def check_version(stream: Stream, expected: Any, actual: int) -> None:
    """Raise `WrongExpectedVersion` unless a stream at version `actual` (0: none) meets `expected`."""
    if expected is ANY:
        return
    if expected is NO_STREAM:
        if actual != 0:
            raise WrongExpectedVersion(stream, expected, actual)
    elif expected is STREAM_EXISTS:
        if actual == 0:
            raise WrongExpectedVersion(stream, expected, actual)
    elif expected != actual:
        raise WrongExpectedVersion(stream, expected, actual)


def check_appendable(stream: Stream, head: Head | None) -> None:
    """Refuse appends to streams that cannot take them: tombstoned or closed streams."""
    if head is not None and head.flags:
        if head.flags & HEAD_TOMBSTONE:
            raise StreamDeleted(stream)
        if head.flags & HEAD_CLOSED:
            raise StreamClosed(stream)
