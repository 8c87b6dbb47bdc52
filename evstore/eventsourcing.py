"""Persistence module for the `eventsourcing` library, backed by evstore.

Switch an application over with two settings::

    PERSISTENCE_MODULE=evstore.eventsourcing
    EVSTORE_PATH=/var/lib/myapp/evstore

Every application (or projection) gets its own stores under ``<EVSTORE_PATH>/<application name>/``:
``events/`` holds the application sequence and its tracking records, ``snapshots/`` (or any other
``purpose`` given to `aggregate_recorder`) holds an aggregate sequence of its own. See
docs/eventsourcing.md for the settings, the version mapping and the guarantees.

Version mapping, in short: evstore numbers a stream's events 1, 2, 3... without gaps, while an
eventsourcing `originator_version` may start at 0 or 1 and may have gaps (snapshots). Each event keeps
its originator_version in its metadata (8 bytes, little-endian, signed). The first event's
originator_version (the stream's *base*) maps a contiguous stream's versions both ways by arithmetic,
so `select_events` reads exactly the asked range; a stream with gaps is searched by bisection on the
(strictly increasing) stored originator_versions. An insert's versions must be strictly increasing and
greater than the stream's last one, otherwise `IntegrityError` is raised and nothing is written.
"""

from __future__ import annotations

import os
import struct
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import evstore
from eventsourcing.dcb.api import (
    DCBAppendCondition,
    DCBEvent,
    DCBQuery,
    DCBQueryItem,
    DCBReadResponse,
    DCBRecorder,
    DCBSequencedEvent,
    DCBSubscription,
)
from eventsourcing.dcb.persistence import DCBInfrastructureFactory
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    InfrastructureFactoryError,
    IntegrityError,
    Notification,
    OperationalError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic
from evstore._format import FLAG_UUID_STREAM, HEADER, HEADER_SIZE
from evstore.records import NewEvent, RecordedEvent
from evstore.store import EventStore

__all__ = [
    "EvstoreAggregateRecorder",
    "EvstoreApplicationRecorder",
    "EvstoreDCBFactory",
    "EvstoreDCBRecorder",
    "EvstoreFactory",
    "EvstoreProcessRecorder",
    "EvstoreRecorder",
    "EvstoreSettingError",
    "EvstoreSubscription",
    "EvstoreTrackingRecorder",
]

_unpack = HEADER.unpack_from
_OV = struct.Struct("<q")
_pack_ov = _OV.pack
_unpack_ov = _OV.unpack_from
# The header fields the hot paths need (see HEADER in evstore/_format.py), without the 16-byte id:
# length, flags, type_len, stream_len, tags_len, position, version, meta_len.
_slim = struct.Struct("<4xIxBHHHQQ8x16x4xI").unpack_from
assert struct.calcsize("<4xIxBHHHQQ8x16x4xI") == HEADER_SIZE
_new = object.__new__
_set = object.__setattr__
_MAX_CACHE = 100_000
_RETRIES = 8


class EvstoreSettingError(InfrastructureFactoryError, ValueError):
    """A setting (an `EVSTORE_*` environment variable or the application name) is missing or invalid."""


# -- decoding records ---------------------------------------------------------------------------

_topics: dict[bytes, str] = {}


def _topic(raw: bytes) -> str:
    t = _topics.get(raw)
    if t is None:
        t = raw.decode("utf-8")
        if len(_topics) < _MAX_CACHE:
            _topics[raw] = t
    return t


def _ov_of(rec: RecordedEvent | tuple[Any, int]) -> int:
    """The originator_version kept in an event's metadata (of a record, or a (mapping, offset) pair)."""
    buf, o = rec[0], rec[1]
    h = _unpack(buf, o)
    if h[12] != 8:
        raise OperationalError(f"event at position {h[7]} was not written by evstore.eventsourcing")
    return int(_unpack_ov(buf, o + HEADER_SIZE + h[5] + h[4])[0])


def _check_name(value: str, what: str) -> str:
    """Refuse names that could leave the root folder."""
    if not isinstance(value, str) or not value:
        raise EvstoreSettingError(f"{what} must be a non-empty string, not {value!r}")
    bad = None
    if "\x00" in value:
        bad = "contains a NUL byte"
    elif value in (".", ".."):
        bad = "is a relative path component"
    elif "/" in value or "\\" in value or (os.altsep and os.altsep in value) or os.sep in value:
        bad = "contains a path separator"
    elif os.path.isabs(value):
        bad = "is an absolute path"
    if bad:
        raise EvstoreSettingError(f"{what} {value!r} {bad}; it must be a single folder name")
    return value


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
            return 0, -1
        return int(_unpack(recs[0][0], recs[0][1])[8]), _ov_of(recs[0])

    def _base(self, oid: uuid.UUID | str) -> int | None:
        """The originator_version of the stream's first event (cached), or None for an absent stream."""
        b = self._bases.get(oid)
        if b is None:
            recs = self.store.read_stream(oid, lte=1)
            if not recs:
                return None
            b = _ov_of(recs[0])
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
        groups: dict[uuid.UUID | str, list[int]] = {}
        for i, s in enumerate(stored_events):
            groups.setdefault(s.originator_id, []).append(i)
        parts: list[tuple[uuid.UUID | str, list[NewEvent], int]] = []
        for oid, idx in groups.items():
            prev = None
            events = []
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
                events.append(NewEvent(s.topic, s.state, _pack_ov(ov)))
            parts.append((oid, events, 0))
        trk = None if tracking is None else (tracking.application_name, tracking.notification_id)
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
                results = self.store.append_many(parts, tracking=trk)
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
        base = self._bases.get(oid)
        if base is None and gt is None and lte is None and not desc:
            chunks = read(oid, limit=limit)
            if not chunks:
                return []
            base = _ov_of((chunks[0][0], chunks[0][1][0]))
            self._remember_base(oid, base)
            top = (chunks[-1][0], chunks[-1][1][-1])
            contiguous = _ov_of(top) == _unpack(top[0], top[1])[8] + base - 1
            return self._build(oid, chunks, base - 1 if contiguous else None)
        if base is None:
            base = self._base(oid)
            if base is None:
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
            if _ov_of(top) == _unpack(top[0], top[1])[8] + off:
                return self._build(oid, chunks, off)  # contiguous up to the highest version read
        elif vgt is None:
            return []
        else:
            n = self.store.stream_version(oid)
            probe = min(n, vgt)
            if probe < 1 or self._ov_at(oid, probe) == probe + off:
                return []
        return self._select_gapped(oid, gt, lte, desc, limit)

    def _ov_at(self, oid: uuid.UUID | str, version: int) -> int:
        recs = self.store.read_stream(oid, gt=version - 1, lte=version)
        if not recs:
            raise OperationalError(f"stream {oid!r} has no event at version {version}")
        return _ov_of(recs[0])

    def _select_gapped(self, oid: uuid.UUID | str, gt: int | None, lte: int | None, desc: bool,
                       limit: int | None) -> list[StoredEvent]:
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
        return self._build(oid, self.store.stream_chunks(oid, gt=lo - 1, lte=hi, desc=desc, limit=limit), None)

    @staticmethod
    def _build(oid: uuid.UUID | str, chunks: list[tuple[Any, list[int]]], off: int | None) -> list[StoredEvent]:
        """StoredEvents of one stream's records, given as (mapping, offsets) chunks; originator_version
        = version + off, or from the metadata when off is None. (Hot path: one slim header unpack and
        two slices per event.)"""
        out: list[StoredEvent] = []
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
                topic = topics.get(tb) or _topic(tb)
                ev = new(cls)
                d = ev.__dict__
                d["originator_id"] = oid
                d["originator_version"] = ver + off if off is not None else _unpack_ov(buf, e)[0]
                d["topic"] = topic
                d["state"] = buf[e + ml + gl : o + ln]
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
                d["originator_version"] = unpack_ov(buf, e)[0]
                d["topic"] = topics.get(tb) or _topic(tb)
                d["state"] = buf[e + ml + gl : o + ln]
                d["id"] = pos
                append(n)
        return out

    def _stream_id(self, sb: bytes, flags: int) -> uuid.UUID | str:
        oid: uuid.UUID | str = uuid.UUID(bytes=sb) if flags & FLAG_UUID_STREAM else sb.decode("utf-8")
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

    def max_tracking_id(self, application_name: str) -> int | None:
        """The largest recorded notification id of the upstream application, or None."""
        return self.store.max_tracking(application_name)


class EvstoreProcessRecorder(EvstoreTrackingRecorder, EvstoreApplicationRecorder, ProcessRecorder):
    """Application recorder whose `insert_events(..., tracking=...)` records the tracking object in
    the same commit as the events (exactly-once processing)."""


# -- the factory --------------------------------------------------------------------------------

class _Settings:
    """The EVSTORE_* settings, read and checked once per factory."""

    def __init__(self, env: Environment) -> None:
        root = env.get(EvstoreFactory.EVSTORE_PATH)
        if not root:
            keys = ", ".join(env.create_keys(EvstoreFactory.EVSTORE_PATH))
            raise EvstoreSettingError(
                f"evstore root folder not set: set {EvstoreFactory.EVSTORE_PATH} (looked for {keys})"
            )
        if "\x00" in root:
            raise EvstoreSettingError(f"{EvstoreFactory.EVSTORE_PATH} must not contain NUL bytes")
        self.root = root
        self.durability = (env.get(EvstoreFactory.EVSTORE_DURABILITY) or "fsync").strip().lower()
        if self.durability not in ("fsync", "os"):
            raise EvstoreSettingError(
                f"{EvstoreFactory.EVSTORE_DURABILITY} must be 'fsync' or 'os', not {self.durability!r}"
            )
        self.options: dict[str, Any] = {}
        for key, opt in ((EvstoreFactory.EVSTORE_SEGMENT_SIZE, "segment_size"),
                         (EvstoreFactory.EVSTORE_MAP_SIZE, "map_size")):
            raw = (env.get(key) or "").strip()
            if raw:
                try:
                    self.options[opt] = int(raw)
                except ValueError:
                    raise EvstoreSettingError(f"{key} must be a number of bytes, not {raw!r}") from None


def _open_store(settings: _Settings, name: str, purpose: str) -> EventStore:
    """Open (creating) the store `<root>/<name>/<purpose>`."""
    _check_name(name, "the application name")
    _check_name(purpose, "the recorder purpose")
    path = os.path.join(settings.root, name, purpose)
    try:
        os.makedirs(os.path.join(settings.root, name), mode=0o700, exist_ok=True)
        return evstore.open(path, durability=settings.durability, **settings.options)
    except evstore.StoreLocked as e:
        raise OperationalError(str(e)) from e
    except (TypeError, ValueError) as e:
        raise EvstoreSettingError(f"cannot open the evstore store at {path}: {e}") from e


class _Stores:
    """The store handles one factory opened, by (name, purpose); closed together."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.handles: dict[tuple[str, str], EventStore] = {}
        self.lock = threading.Lock()

    def get(self, name: str, purpose: str) -> EventStore:
        with self.lock:
            s = self.handles.get((name, purpose))
            if s is None or s.closed:
                s = _open_store(self.settings, name, purpose)
                self.handles[(name, purpose)] = s
            return s

    def close(self) -> None:
        with self.lock:
            for s in self.handles.values():
                s.close()
            self.handles.clear()


class EvstoreFactory(InfrastructureFactory[EvstoreTrackingRecorder]):
    """Infrastructure factory for evstore. Settings (read through the application's Environment, so
    `<APP NAME>_EVSTORE_PATH` overrides `EVSTORE_PATH`): EVSTORE_PATH (required root folder),
    EVSTORE_DURABILITY ("fsync" default, or "os"), EVSTORE_SEGMENT_SIZE, EVSTORE_MAP_SIZE (bytes).

    Opens `<root>/<application name>/events` for the application, tracking and process recorders and
    `<root>/<application name>/<purpose>` for `aggregate_recorder(purpose)`. `close()` closes the
    handles it opened (the store stays open while another handle in the process uses it)."""

    EVSTORE_PATH = "EVSTORE_PATH"
    EVSTORE_DURABILITY = "EVSTORE_DURABILITY"
    EVSTORE_SEGMENT_SIZE = "EVSTORE_SEGMENT_SIZE"
    EVSTORE_MAP_SIZE = "EVSTORE_MAP_SIZE"

    aggregate_recorder_class = EvstoreAggregateRecorder
    application_recorder_class = EvstoreApplicationRecorder
    tracking_recorder_class = EvstoreTrackingRecorder
    process_recorder_class = EvstoreProcessRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        self._stores = _Stores(_Settings(self.env))

    def _store(self, purpose: str = "events") -> EventStore:
        return self._stores.get(self.env.name, purpose)

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return self.aggregate_recorder_class(self._store(purpose))

    def application_recorder(self) -> ApplicationRecorder:
        cls = self._recorder_class(self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class)
        rec: ApplicationRecorder = cls(self._store())
        return rec

    def tracking_recorder(
        self, tracking_recorder_class: type[EvstoreTrackingRecorder] | None = None
    ) -> EvstoreTrackingRecorder:
        cls = tracking_recorder_class or self._recorder_class(self.TRACKING_RECORDER_TOPIC,
                                                              self.tracking_recorder_class)
        return cls(self._store())

    def process_recorder(self) -> ProcessRecorder:
        cls = self._recorder_class(self.PROCESS_RECORDER_TOPIC, self.process_recorder_class)
        rec: ProcessRecorder = cls(self._store())
        return rec

    def _recorder_class(self, setting: str, default: type[Any]) -> type[Any]:
        topic = self.env.get(setting)
        cls = resolve_topic(topic) if topic else default
        if not (isinstance(cls, type) and issubclass(cls, EvstoreRecorder)):
            raise EvstoreSettingError(f"{setting}={topic!r} does not name an evstore recorder class")
        return cls

    def close(self) -> None:
        self._stores.close()
        super().close()


# -- DCB ----------------------------------------------------------------------------------------
#
# DCB events live in one stream of the store `<root>/<name>/dcb`, as evstore events with native tags:
# queries and append conditions are served by evstore's tag and type indexes (`EventStore.query`,
# `evstore.Condition`), and the condition is checked atomically with the write, under the store's
# writer lock.

_DCB_STREAM = "dcb"


def _items(query: DCBQuery | None) -> list[evstore.QueryItem]:
    """evstore query items of a DCB query (one item matching everything when it has none)."""
    if query is None or not query.items:
        return [evstore.QueryItem()]
    return [evstore.QueryItem(types=tuple(i.types), tags=tuple(i.tags)) for i in query.items]


def _sequenced(rec: RecordedEvent) -> DCBSequencedEvent:
    return DCBSequencedEvent(event=DCBEvent(type=rec.type, data=rec.data, tags=list(rec.tags)),
                             position=rec.position)


def _item_matches(item: DCBQueryItem, type_: str, tags: tuple[str, ...]) -> bool:
    return (not item.types or type_ in item.types) and (not item.tags or set(item.tags) <= set(tags))


class _DCBReadResponse(DCBReadResponse):
    def __init__(self, events: list[DCBSequencedEvent], head: int | None) -> None:
        self._events = iter(events)
        self._head = head

    @property
    def head(self) -> int | None:
        return self._head

    def __next__(self) -> DCBSequencedEvent:
        return next(self._events)


class EvstoreDCBRecorder(DCBRecorder):
    """DCB recorder on an evstore store. Positions are evstore positions (gapless from 1). An append
    with a condition fails with IntegrityError, writing nothing, when an event after
    `condition.after` matches `condition.fail_if_events_match`; the check and the append are atomic."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def read(self, query: DCBQuery | None = None, *, after: int | None = None,
             limit: int | None = None) -> DCBReadResponse:
        """Events after `after` matching any query item (all events without items), at most `limit`.
        `head` is the store's last position when no limit is given, else the last returned position."""
        if limit is not None and limit <= 0:
            return _DCBReadResponse([], None)
        head = self.store.head() or None
        recs = self.store.query(_items(query), gt=after or 0, lte=head, limit=limit)
        events = [_sequenced(r) for r in recs]
        if limit is not None:
            head = events[-1].position if events else None
        return _DCBReadResponse(events, head)

    def append(self, events: Sequence[DCBEvent], condition: DCBAppendCondition | None = None) -> int:
        """Append the events in one commit unless the condition fails; returns the last position."""
        if not events:
            raise ProgrammingError("a DCB append needs at least one event")
        try:
            new = [NewEvent(e.type, e.data, tags=tuple(e.tags)) for e in events]
            cond = None
            if condition is not None:
                cond = evstore.Condition(_items(condition.fail_if_events_match), after=condition.after or 0)
            return self.store.append(_DCB_STREAM, new, condition=cond).last_position
        except evstore.ConditionFailed as e:
            raise IntegrityError(condition) from e
        except (TypeError, ValueError) as e:
            raise ProgrammingError(str(e)) from e
        except (evstore.StoreClosed, evstore.StoreFailed, evstore.StorageError, evstore.ReadOnlyStore) as e:
            raise OperationalError(str(e)) from e

    def subscribe(self, query: DCBQuery | None = None, *, after: int | None = None) -> EvstoreDCBSubscription:
        """Matching events after `after`, then new ones as they are appended."""
        return EvstoreDCBSubscription(self, query=query, after=after)


class EvstoreDCBSubscription(DCBSubscription[EvstoreDCBRecorder]):
    """A DCB subscription on `EventStore.subscribe` (type-filtered by the store's type index when
    every query item names types, the tags checked here)."""

    def __init__(self, recorder: EvstoreDCBRecorder, query: DCBQuery | None = None,
                 after: int | None = None) -> None:
        super().__init__(recorder=recorder, query=query, after=after)
        items = query.items if query else []
        types = None
        if items and all(i.types for i in items):
            types = sorted({t for i in items for t in i.types})
        self._filter = bool(items) and any(i.tags for i in items)
        self._sub = recorder.store.subscribe(gt=after or 0, types=types)

    def stop(self) -> None:
        super().stop()
        self._sub.stop()

    def __next__(self) -> DCBSequencedEvent:
        while True:
            if self._has_been_stopped:
                raise StopIteration
            rec = next(self._sub)
            if self._has_been_stopped:
                raise StopIteration
            if self._filter and self._query is not None:
                type_, tags = rec.type, rec.tags
                if not any(_item_matches(i, type_, tags) for i in self._query.items):
                    continue
            self._last_position = rec.position
            return _sequenced(rec)


class EvstoreDCBFactory(DCBInfrastructureFactory[EvstoreTrackingRecorder]):
    """DCB infrastructure factory (found by `DCBInfrastructureFactory.construct` with
    PERSISTENCE_MODULE=evstore.eventsourcing). Same settings as `EvstoreFactory`; the recorder uses
    the store `<root>/<application name>/dcb`."""

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        self._stores = _Stores(_Settings(self.env))

    def dcb_recorder(self) -> DCBRecorder:
        return EvstoreDCBRecorder(self._stores.get(self.env.name, "dcb"))

    def close(self) -> None:
        self._stores.close()
        super().close()
