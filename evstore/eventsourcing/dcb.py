"""DCB (dynamic consistency boundary) persistence for the `eventsourcing` library on evstore: the
recorder, its subscription and `EvstoreDCBFactory`.

DCB events live in one stream of the store `<root>/<name>/dcb`, as evstore events with native tags:
queries and append conditions are served by evstore's tag and type indexes (`EventStore.query`,
`evstore.Condition`), and the condition is checked atomically with the write, under the store's
writer lock."""

from __future__ import annotations

from collections.abc import Sequence

import evstore
from evstore.eventsourcing import meta
from evstore.eventsourcing.compat import (
    ES10,
    DcbAppendCondition,
    DcbEvent,
    DcbInfrastructureFactory,
    DcbQuery,
    DcbQueryItem,
    DcbReadResponse,
    DcbRecorder,
    DcbSequencedEvent,
    DcbSubscription,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    dcb_event,
    dcb_event_extras,
)
from eventsourcing.utils import Environment, EnvType
from evstore.eventsourcing.factory import Settings, Stores
from evstore.eventsourcing.recorders import EvstoreTrackingRecorder
from evstore.records import NewEvent, RecordedEvent
from evstore.store import EventStore

__all__ = ["EvstoreDCBFactory", "EvstoreDCBRecorder", "EvstoreDCBSubscription"]

_DCB_STREAM = "dcb"


def _items(query: DcbQuery | None) -> list[evstore.QueryItem]:
    """evstore query items of a DCB query (one item matching everything when it has none)."""
    if query is None or not query.items:
        return [evstore.QueryItem()]
    return [evstore.QueryItem(types=tuple(i.types), tags=tuple(i.tags)) for i in query.items]


def _sequenced(rec: RecordedEvent) -> DcbSequencedEvent:
    md = rec.metadata
    u, d = meta.decode_extras(md, 0, len(md)) if ES10 else (None, None)
    return DcbSequencedEvent(event=dcb_event(rec.type, rec.data, list(rec.tags), u, d), position=rec.position)


def _new_event(e: DcbEvent) -> NewEvent:
    u, d = dcb_event_extras(e)
    return NewEvent(e.type, e.data, meta.encode(None, u, d), tags=tuple(e.tags))


def _item_matches(item: DcbQueryItem, type_: str, tags: tuple[str, ...]) -> bool:
    return (not item.types or type_ in item.types) and (not item.tags or set(item.tags) <= set(tags))


class _DCBReadResponse(DcbReadResponse):
    def __init__(self, events: list[DcbSequencedEvent], head: int | None) -> None:
        self._events = iter(events)
        self._head = head

    @property
    def head(self) -> int | None:
        return self._head

    def __next__(self) -> DcbSequencedEvent:
        return next(self._events)


class EvstoreDCBRecorder(DcbRecorder):
    """DCB recorder on an evstore store. Positions are evstore positions (gapless from 1). An append
    with a condition fails with IntegrityError, writing nothing, when an event after
    `condition.after` matches `condition.fail_if_events_match`; the check and the append are atomic."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def head(self) -> int | None:
        """The last recorded position, or None when nothing is recorded."""
        return self.store.head() or None

    def read(self, query: DcbQuery | None = None, *, after: int | None = None,
             limit: int | None = None) -> DcbReadResponse:
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

    def append(self, events: Sequence[DcbEvent], condition: DcbAppendCondition | None = None) -> int:
        """Append the events in one commit unless the condition fails; returns the last position."""
        if not events:
            raise ProgrammingError("a DCB append needs at least one event")
        try:
            new = [_new_event(e) for e in events]
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

    def subscribe(self, query: DcbQuery | None = None, *, after: int | None = None) -> EvstoreDCBSubscription:
        """Matching events after `after`, then new ones as they are appended."""
        return EvstoreDCBSubscription(self, query=query, after=after)


class EvstoreDCBSubscription(DcbSubscription[EvstoreDCBRecorder]):
    """A DCB subscription on `EventStore.subscribe` (type-filtered by the store's type index when
    every query item names types, the tags checked here)."""

    def __init__(self, recorder: EvstoreDCBRecorder, query: DcbQuery | None = None,
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

    def __next__(self) -> DcbSequencedEvent:
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


class EvstoreDCBFactory(DcbInfrastructureFactory[EvstoreTrackingRecorder]):
    """DCB infrastructure factory (found by `DcbInfrastructureFactory.construct` with
    PERSISTENCE_MODULE=evstore.eventsourcing). Same settings as `EvstoreFactory`; the recorder uses
    the store `<root>/<application name>/dcb`."""

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        self._stores = Stores(Settings(self.env))

    def dcb_recorder(self) -> DcbRecorder:
        return EvstoreDCBRecorder(self._stores.get(self.env.name, "dcb"))

    def close(self) -> None:
        self._stores.close()
        super().close()
