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
from evstore.eventsourcing.compat import (
    ES10,
    EVENT_EXTRAS,
    NIL_UUID,
    IntegrityError,
    Notification,
    OperationalError,
    ProgrammingError,
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
_pack_ov = struct.Struct("<q").pack
_encode_meta = meta.encode
_decode_extras = meta.decode_extras
# The header fields the hot paths need (see HEADER, the record layout), without the 16-byte id:
# length, flags, type_len, stream_len, tags_len, position, version, meta_len.
_slim = struct.Struct("<4xIxBHHHQQ8x16x4xI").unpack_from
assert struct.calcsize("<4xIxBHHHQQ8x16x4xI") == HEADER_SIZE
_new = object.__new__
_MAX_CACHE = 100_000
_RETRIES = 8


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
        # each part's events as their fields (topics, states, metadata): one stream without tracking
        # goes to append_fields, which makes no event object (the store's fast path)
        parts: list[tuple[uuid.UUID | str, tuple[list[str], list[bytes], list[bytes]], int]] = []
        extras = EVENT_EXTRAS
        first_id = stored_events[0].originator_id if stored_events else None
        if first_id is not None and all(s.originator_id is first_id for s in stored_events):
            # one aggregate's events (the usual call): its fields column by column, no per-event grouping
            ovs = [s.originator_version for s in stored_events]
            if set(map(type, ovs)) == {int} and all(a < b for a, b in zip(ovs, ovs[1:])):
                oid = stream_of(first_id)
                if extras:  # eventsourcing 10: the uuid and metadata dict too
                    mds = [_encode_meta(s.originator_version, s.uuid, s.metadata)  # type: ignore[attr-defined,unused-ignore]
                           for s in stored_events]
                else:
                    mds = list(map(_pack_ov, ovs))
                groups = {oid: list(range(len(stored_events)))}
                parts.append((oid, ([s.topic for s in stored_events], [s.state for s in stored_events], mds), 0))
        if not parts:
            groups = {}
            for i, s in enumerate(stored_events):
                groups.setdefault(stream_of(s.originator_id), []).append(i)
        for oid, idx in groups.items() if not parts else ():
            prev = None
            topics: list[str] = []
            states: list[bytes] = []
            metas: list[bytes] = []
            for i in idx:
                s = stored_events[i]
                ov = s.originator_version
                if type(ov) is not int:
                    raise ProgrammingError(f"originator_version must be an int, not {type(ov).__name__}")
                if prev is not None and ov <= prev:
                    raise IntegrityError(
                        f"stored events of {oid!r} do not have strictly increasing versions ({prev}, then {ov})"
                    )
                prev = ov
                if extras:  # eventsourcing 10: the uuid and metadata dict too
                    md = _encode_meta(ov, s.uuid, s.metadata)  # type: ignore[attr-defined,unused-ignore]
                else:
                    md = _pack_ov(ov)
                topics.append(s.topic)
                states.append(s.state)
                metas.append(md)
            parts.append((oid, (topics, states, metas), 0))
        trk = None if tracking is None else (tracking_name(tracking), tracking.notification_id)
        if not parts and trk is None:
            return []
        heads = self._heads
        for attempt in range(_RETRIES):
            for n, (oid, events, _) in enumerate(parts):
                head = heads.get(oid) if attempt == 0 else None
                if head is None:
                    head = self._read_head(oid)
                first = stored_events[groups[oid][0]].originator_version
                if head[0] and first <= head[1]:
                    raise IntegrityError(
                        f"stored event {oid!r} version {first} is not after the recorded version {head[1]}"
                    )
                parts[n] = (oid, events, head[0])
            try:
                if trk is None and len(parts) == 1:
                    oid, (t, d, m), expected = parts[0]
                    results = [self.store.append_fields(oid, t, d, m, expected_version=expected)]
                else:
                    results = self.store.append_many(
                        [(oid, [NewEvent(*e) for e in zip(*f)], x) for oid, f, x in parts], tracking=trk)
            except evstore.WrongExpectedVersion:
                continue  # a stale cached head, or a concurrent writer: re-read and re-check
            except evstore.TrackingConflict as e:
                raise IntegrityError(str(e)) from e
            except evstore.DuplicateEventId as e:  # pragma: no cover - no ids are given
                raise IntegrityError(str(e)) from e
            except (evstore.StoreClosed, evstore.StoreFailed, evstore.StorageError, evstore.ReadOnlyStore) as e:
                raise OperationalError(str(e)) from e
            break
        else:
            raise IntegrityError(f"could not append after {_RETRIES} attempts: the streams kept changing")
        positions = [0] * len(stored_events)
        if len(heads) >= _MAX_CACHE:
            heads.clear()
        for (oid, _events, expected), r in zip(parts, results, strict=True):
            idx = groups[oid]
            heads[oid] = (r.last_version, stored_events[idx[-1]].originator_version)
            if expected == 0:
                self._remember_base(oid, stored_events[idx[0]].originator_version)
            p = r.first_position
            for i in idx:
                positions[i] = p
                p += 1
        return positions

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

