"""The evstore recorders for the `eventsourcing` library: aggregate, application, tracking and process
recorders, the application subscription, and the decoding of evstore records into StoredEvents and
Notifications (the version mapping is described in `evstore.eventsourcing`)."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import evstore
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    Subscription,
    TrackingRecorder,
)
from evstore.eventsourcing import meta
from evstore.eventsourcing.columns import Part, one_stream, per_stream
from evstore.eventsourcing.compat import (
    ES10,
    EVENT_EXTRAS,
    NIL_UUID,
    IntegrityError,
    Notification,
    OperationalError,
    StoredEvent,
    Tracking,
    oid_of,
    stream_of,
    tracking_name,
)
from evstore.format.layout import FLAG_UUID_STREAM, HEADER, HEADER_SIZE
from evstore.records import NewEvent, RecordedEvent
from evstore.store import EventStore

__all__ = [
    "EvstoreAggregateRecorder",
    "EvstoreApplicationRecorder",
    "EvstoreProcessRecorder",
    "EvstoreRecorder",
    "EvstoreSubscription",
    "EvstoreTrackingRecorder",
    "originator_version_of",
    "topic_of",
]

_unpack = HEADER.unpack_from
_unpack_ov = struct.Struct("<q").unpack_from
_decode_extras = meta.decode_extras
# The header fields the hot paths need (see HEADER, the record layout), without the 16-byte id:
# length, flags, type_len, stream_len, tags_len, position, version, meta_len.
_slim = struct.Struct("<4xIxBHHHQQ8x16x4xI").unpack_from
assert struct.calcsize("<4xIxBHHHQQ8x16x4xI") == HEADER_SIZE
_new = object.__new__
_MAX_CACHE = 100_000
_RETRIES = 8
# the store's errors an insert reports as the library's: a conflict as IntegrityError, the rest as
# OperationalError (no event ids are given, so DuplicateEventId cannot happen)
_STORE_ERRORS = (evstore.TrackingConflict, evstore.DuplicateEventId, evstore.StoreClosed, evstore.StoreFailed,
                 evstore.StorageError, evstore.ReadOnlyStore)


def _translated(e: Exception) -> Exception:
    if isinstance(e, (evstore.TrackingConflict, evstore.DuplicateEventId)):
        return IntegrityError(str(e))
    return OperationalError(str(e))


def _stale(part: Part, head: tuple[int, int]) -> IntegrityError:
    return IntegrityError(
        f"stored event {part.stream!r} version {part.first} is not after the recorded version {head[1]}"
    )


# -- decoding records ---------------------------------------------------------------------------

_topics: dict[bytes, str] = {}


def topic_of(raw: bytes) -> str:
    """The topic of an event's raw type bytes (decoded once, then cached)."""
    t = _topics.get(raw)
    if t is None:
        t = raw.decode("utf-8")
        if len(_topics) < _MAX_CACHE:
            _topics[raw] = t
    return t


def originator_version_of(rec: RecordedEvent | tuple[Any, int]) -> int:
    """The originator_version kept in an event's metadata (of a record, or a (mapping, offset) pair)."""
    buf, o = rec[0], rec[1]
    h = _unpack(buf, o)
    m = o + HEADER_SIZE + h[5] + h[4]
    at = meta.version_offset(buf, m, h[12])
    if at is None:
        raise OperationalError(f"event at position {h[7]} was not written by evstore.eventsourcing")
    return int(_unpack_ov(buf, m + at)[0])


# -- recorders ----------------------------------------------------------------------------------

class EvstoreRecorder:
    """Base of the evstore recorders: holds the open `EventStore` (owned by the factory, which closes
    it) and per-stream caches that are safe across writers because evstore events are immutable
    (a stream's base never changes; a stale head is detected by the expected-version check)."""

    def __init__(self, store: EventStore, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self._bases: dict[uuid.UUID | str, int] = {}
        self._heads: dict[uuid.UUID | str, tuple[int, int]] = {}
        self._streams: dict[bytes, uuid.UUID | str] = {}

    # -- stream heads and bases ------------------------------------------------------------

    def _read_head(self, oid: uuid.UUID | str) -> tuple[int, int]:
        """(evstore version, last originator_version) of a stream, read from the store; (0, -1) when
        the stream is absent."""
        recs = self.store.read_stream(oid, desc=True, limit=1)
        if not recs:
            self._absent(oid)
            return 0, -1
        return int(_unpack(recs[0][0], recs[0][1])[8]), originator_version_of(recs[0])

    def _absent(self, oid: uuid.UUID | str) -> None:
        """Called for a stream found empty. Under eventsourcing 10 an id in canonical UUID form names
        the UUID stream; a store written under 9.5 may hold that same text as a str id's stream, which
        10 would silently miss (and a first insert would start a second stream beside it): refuse."""
        if ES10 and type(oid) is uuid.UUID and self.store.stream_version(str(oid)):
            raise OperationalError(
                f"originator id {str(oid)!r}: this store keeps its events under a str id, as eventsourcing 9.5 "
                f"writes one, but under eventsourcing 10 an id in canonical UUID form names the UUID stream, "
                f"which is empty; read this aggregate under eventsourcing 9.5, or give it an id not in UUID form"
            )

    def _base(self, oid: uuid.UUID | str) -> int | None:
        """The originator_version of the stream's first event (cached), or None for an absent stream."""
        b = self._bases.get(oid)
        if b is None:
            recs = self.store.read_stream(oid, lte=1)
            if not recs:
                return None
            b = originator_version_of(recs[0])
            self._remember_base(oid, b)
        return b

    def _remember_base(self, oid: uuid.UUID | str, base: int) -> None:
        if len(self._bases) >= _MAX_CACHE:
            self._bases.clear()
        self._bases[oid] = base

    # -- writing -----------------------------------------------------------------------------

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        """Append the events (grouped per originator, each group after its stream's last version) and
        the optional tracking record in one atomic commit; returns each event's position, in the
        order given. Raises IntegrityError, writing nothing, on any version or tracking conflict."""
        part = one_stream(stored_events)
        if part is not None and tracking is None:  # one aggregate's new events (the usual call)
            return self._insert_part(part)
        parts = per_stream(stored_events) if part is None else [part]
        trk = None if tracking is None else (tracking_name(tracking), tracking.notification_id)
        if not parts and trk is None:
            return []
        heads = self._heads
        expected = [0] * len(parts)
        for attempt in range(_RETRIES):
            for n, p in enumerate(parts):
                head = heads.get(p.stream) if attempt == 0 else None
                if head is None:
                    head = self._read_head(p.stream)
                if head[0] and p.first <= head[1]:
                    raise _stale(p, head)
                expected[n] = head[0]
            try:
                if trk is None and len(parts) == 1:
                    p = parts[0]
                    results = [self.store.append_fields(p.stream, p.topics, p.states, p.metas,
                                                        expected_version=expected[0])]
                else:
                    results = self.store.append_many(
                        [(p.stream, list(map(NewEvent, p.topics, p.states, p.metas)), x)
                         for p, x in zip(parts, expected)], tracking=trk)
            except evstore.WrongExpectedVersion:
                continue  # a stale cached head, or a concurrent writer: re-read and re-check
            except _STORE_ERRORS as e:
                raise _translated(e) from e
            break
        else:
            raise IntegrityError(f"could not append after {_RETRIES} attempts: the streams kept changing")
        positions = [0] * len(stored_events)
        for p, x, r in zip(parts, expected, results, strict=True):
            self._remember_head(p, x, r.last_version)
            q = r.first_position
            for i in range(len(stored_events)) if p.at is None else p.at:
                positions[i] = q
                q += 1
        return positions

    def _insert_part(self, part: Part) -> list[int]:
        """`_insert` of one stream's events (all of the batch, in order) without tracking: one
        `append_fields` call, after the cached head (or, for a stream not cached, the stream's head as
        read, or none at all for a new aggregate's first events)."""
        oid = part.stream
        head = self._heads.get(oid)
        if head is None and part.first <= 1 and not (ES10 and type(oid) is uuid.UUID):
            # An aggregate's first events (versions start at 1, or 0): try them as a new stream
            # without reading first; if the stream has events, the store refuses the append and
            # the head is read below. (10 reads first: `_absent` looks for a str stream of that id.)
            head = (0, -1)
        for _ in range(_RETRIES):
            if head is None:
                head = self._read_head(oid)
            expected = head[0]
            if expected and part.first <= head[1]:
                raise _stale(part, head)
            try:
                r = self.store.append_fields(oid, part.topics, part.states, part.metas, expected_version=expected)
            except evstore.WrongExpectedVersion:
                head = None  # a stale cached head, or a concurrent writer: re-read and re-check
                continue
            except _STORE_ERRORS as e:
                raise _translated(e) from e
            self._remember_head(part, expected, r.last_version)
            p = r.first_position
            return list(range(p, p + len(part.topics)))
        raise IntegrityError(f"could not append after {_RETRIES} attempts: the stream kept changing")

    def _remember_head(self, part: Part, expected: int, version: int) -> None:
        """Cache a stream's head after appending `part` at `expected` (and its base, for a new stream)."""
        heads = self._heads
        if len(heads) >= _MAX_CACHE:
            heads.clear()
        heads[part.stream] = (version, part.last)
        if not expected:
            self._remember_base(part.stream, part.first)

    # -- reading -----------------------------------------------------------------------------

    def _select(self, oid: uuid.UUID | str, gt: int | None, lte: int | None, desc: bool,
                limit: int | None) -> list[StoredEvent]:
        if limit is not None and limit <= 0:
            return []
        read = self.store.stream_chunks  # (mapping, offsets) pairs: no record objects in between
        given, oid = oid, stream_of(oid)
        base = self._bases.get(oid)
        if base is None and gt is None and lte is None and not desc:
            chunks = read(oid, limit=limit)
            if not chunks:
                self._absent(oid)
                return []
            base = originator_version_of((chunks[0][0], chunks[0][1][0]))
            self._remember_base(oid, base)
            top = (chunks[-1][0], chunks[-1][1][-1])
            contiguous = originator_version_of(top) == _unpack(top[0], top[1])[8] + base - 1
            return self._build(given, chunks, base - 1 if contiguous else None)
        if base is None:
            base = self._base(oid)
            if base is None:
                self._absent(oid)
                return []
        off = base - 1  # for a contiguous stream, originator_version = evstore version + off
        vgt = None if gt is None or gt - off < 1 else gt - off
        vlte = None
        if lte is not None:
            vlte = lte - off
            if vlte < 1:  # every originator_version is >= version + off
                return []
        if limit is not None:
            # Narrow the range to `limit` versions so that only those records are materialised
            # (exact while the stream is contiguous; checked below).
            if desc:
                hi = self.store.stream_version(oid)
                if vlte is not None and vlte < hi:
                    hi = vlte
                if hi - limit > (vgt or 0):
                    vgt = hi - limit
            elif vlte is None or vlte > (vgt or 0) + limit:
                vlte = (vgt or 0) + limit
        chunks = read(oid, gt=vgt, lte=vlte, desc=desc, limit=limit)
        if chunks:
            top = (chunks[0][0], chunks[0][1][0]) if desc else (chunks[-1][0], chunks[-1][1][-1])
            if originator_version_of(top) == _unpack(top[0], top[1])[8] + off:
                return self._build(given, chunks, off)  # contiguous up to the highest version read
        elif vgt is None:
            return []
        else:
            n = self.store.stream_version(oid)
            probe = min(n, vgt)
            if probe < 1:
                return []
            cached = self._heads.get(oid)  # (version, originator_version) of the stream's last event
            if cached is not None and cached[0] == probe:
                ov = cached[1]
            else:
                ov = self._ov_at(oid, probe)
                if probe == n and len(self._heads) < _MAX_CACHE:
                    self._heads[oid] = (n, ov)
            if ov == probe + off:
                return []
        return self._select_gapped(oid, given, gt, lte, desc, limit)

    def _ov_at(self, oid: uuid.UUID | str, version: int) -> int:
        recs = self.store.read_stream(oid, gt=version - 1, lte=version)
        if not recs:
            raise OperationalError(f"stream {oid!r} has no event at version {version}")
        return originator_version_of(recs[0])

    def _select_gapped(self, oid: uuid.UUID | str, given: uuid.UUID | str, gt: int | None, lte: int | None,
                       desc: bool, limit: int | None) -> list[StoredEvent]:
        """Select from a stream whose originator_versions have gaps: bisect on the stored versions
        (strictly increasing), then read the range."""
        n = self.store.stream_version(oid)
        lo = 1
        if gt is not None:  # first version with ov > gt
            a, b = 1, n + 1
            while a < b:
                m = (a + b) // 2
                if self._ov_at(oid, m) > gt:
                    b = m
                else:
                    a = m + 1
            lo = a
        hi = n
        if lte is not None:  # last version with ov <= lte
            a, b = 0, n
            while a < b:
                m = (a + b + 1) // 2
                if self._ov_at(oid, m) <= lte:
                    a = m
                else:
                    b = m - 1
            hi = a
        if lo > hi:
            return []
        return self._build(given, self.store.stream_chunks(oid, gt=lo - 1, lte=hi, desc=desc, limit=limit), None)

    @staticmethod
    def _build(oid: uuid.UUID | str, chunks: list[tuple[Any, list[int]]], off: int | None) -> list[StoredEvent]:
        """StoredEvents of one stream's records, given as (mapping, offsets) chunks; originator_version
        = version + off, or from the metadata when off is None. (Hot path: one slim header unpack and
        two slices per event; under eventsourcing 10 the uuid and metadata dict are decoded too.)"""
        out: list[StoredEvent] = []
        extras = EVENT_EXTRAS
        nil = NIL_UUID
        append = out.append
        topics = _topics
        unpack = _slim
        new = _new
        cls = StoredEvent
        for buf, offsets in chunks:
            for o in offsets:
                ln, _fl, tl, sl, gl, _pos, ver, ml = unpack(buf, o)
                t = o + HEADER_SIZE + sl
                e = t + tl
                tb = buf[t:e]
                topic = topics.get(tb) or topic_of(tb)
                ev = new(cls)
                d = ev.__dict__
                d["originator_id"] = oid
                d["originator_version"] = ver + off if off is not None else _unpack_ov(buf, e if ml == 8 else e + 2)[0]
                d["topic"] = topic
                d["state"] = buf[e + ml + gl : o + ln]
                if extras:
                    if ml == 8:
                        d["uuid"] = nil
                        d["metadata"] = {}
                    else:
                        d["uuid"], d["metadata"] = _decode_extras(buf, e, ml)
                append(ev)
        return out

    def _notifications(self, chunks: Iterable[tuple[Any, list[int]]]) -> list[Notification]:
        """Notifications of records read from the log (any streams), as (mapping, offsets) chunks."""
        out: list[Notification] = []
        append = out.append
        topics = _topics
        streams = self._streams
        unpack = _slim
        unpack_ov = _unpack_ov
        new = _new
        cls = Notification
        extras = EVENT_EXTRAS
        nil = NIL_UUID
        for buf, offsets in chunks:
            for o in offsets:
                ln, fl, tl, sl, gl, pos, _ver, ml = unpack(buf, o)
                s = o + HEADER_SIZE
                t = s + sl
                sb = buf[s:t]
                oid = streams.get(sb)
                if oid is None:
                    oid = self._stream_id(sb, fl)
                e = t + tl
                tb = buf[t:e]
                n = new(cls)
                d = n.__dict__
                d["originator_id"] = oid
                d["originator_version"] = unpack_ov(buf, e if ml == 8 else e + 2)[0]
                d["topic"] = topics.get(tb) or topic_of(tb)
                d["state"] = buf[e + ml + gl : o + ln]
                if extras:
                    if ml == 8:
                        d["uuid"] = nil
                        d["metadata"] = {}
                    else:
                        d["uuid"], d["metadata"] = _decode_extras(buf, e, ml)
                d["id"] = pos
                append(n)
        return out

    def _stream_id(self, sb: bytes, flags: int) -> uuid.UUID | str:
        oid = oid_of(uuid.UUID(bytes=sb) if flags & FLAG_UUID_STREAM else sb.decode("utf-8"))
        if len(self._streams) >= _MAX_CACHE:
            self._streams.clear()
        self._streams[sb] = oid
        return oid


class EvstoreAggregateRecorder(EvstoreRecorder, AggregateRecorder):
    """Aggregate sequences in an evstore store: one stream per originator id (UUID or str)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Record the events atomically; IntegrityError (nothing written) on a duplicate or stale
        version. Returns None (an aggregate recorder has no notification ids)."""
        self._insert(stored_events, kwargs.get("tracking"))
        return None

    def select_events(self, originator_id: uuid.UUID | str, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> Sequence[StoredEvent]:
        """The originator's events with gt < originator_version <= lte, in version order (reversed
        with desc), at most `limit`."""
        return self._select(originator_id, gt, lte, desc, limit)


class EvstoreApplicationRecorder(EvstoreAggregateRecorder, ApplicationRecorder):
    """Aggregate sequences plus the application sequence: notification ids are evstore's gapless
    positions."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Record the events atomically and return their notification ids (in the order given)."""
        return self._insert(stored_events, kwargs.get("tracking"))

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *, inclusive_of_start: bool = True) -> Sequence[Notification]:
        """Notifications with start <= id (or start < id) <= stop, of the given topics (served by
        evstore's type index), at most `limit`, in id order."""
        if start is None:
            gt = 0
        else:
            gt = start - 1 if inclusive_of_start else start
            gt = max(gt, 0)
        if limit is None or limit <= 0 or (stop is not None and stop <= gt):
            return []
        types = list(topics) if topics else None
        return self._notifications(self.store.all_chunks(gt=gt, lte=stop, limit=limit, types=types))

    def max_notification_id(self) -> int | None:
        """The last notification id, or None when nothing is recorded."""
        return self.store.head() or None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        """Notifications with id > gt (of the given topics), then new ones as they are recorded."""
        return EvstoreSubscription(self, gt=gt, topics=topics)


class EvstoreSubscription(Subscription[EvstoreApplicationRecorder]):
    """An application recorder's subscription, on `EventStore.subscribe`: no polling thread, new
    commits of this process wake it at once."""

    def __init__(self, recorder: EvstoreApplicationRecorder, gt: int | None = None,
                 topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._sub = recorder.store.subscribe(gt=gt or 0, types=list(topics) if topics else None)
        self._buffer: list[Notification] = []

    def stop(self) -> None:
        super().stop()
        self._sub.stop()

    def __next__(self) -> Notification:
        if self._has_been_stopped:
            raise StopIteration
        rec = next(self._sub)
        if self._has_been_stopped:
            raise StopIteration
        n = self._recorder._notifications([(rec[0], [rec[1]])])[0]
        self._last_notification_id = n.id
        return n


class EvstoreTrackingRecorder(EvstoreRecorder, TrackingRecorder):
    """Tracking records in an evstore store (in the store's own tracking index, not as events).
    Subclass it to write materialised views whose updates commit with their tracking record:
    call `self._insert(...)` / `self.store.append_many(..., tracking=...)`."""

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record the tracking object; IntegrityError unless its id is above the recorded maximum."""
        self._insert((), tracking)

    # The library's runners pass the upstream's name by keyword, and 10 renamed the keyword. (mypy
    # checks both variants and wants them identical: they differ in that name only.)
    if ES10:
        def max_tracking_id(self, context_name: str) -> int | None:
            """The largest recorded notification id of the upstream context, or None."""
            return self.store.max_tracking(context_name)
    else:
        def max_tracking_id(self, application_name: str) -> int | None:  # type: ignore[misc]
            """The largest recorded notification id of the upstream application, or None."""
            return self.store.max_tracking(application_name)


class EvstoreProcessRecorder(EvstoreTrackingRecorder, EvstoreApplicationRecorder, ProcessRecorder):
    """Application recorder whose `insert_events(..., tracking=...)` records the tracking object in
    the same commit as the events (exactly-once processing)."""

