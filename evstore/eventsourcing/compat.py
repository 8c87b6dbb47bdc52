"""The differences between the supported `eventsourcing` versions (9.5.x and 10.0), in one place.

Everything else in `evstore.eventsourcing` imports the library's names that moved or were renamed
from here, and asks `ES10` (or the helpers below) where the behaviour differs:

- 10 keeps the errors in `eventsourcing.errors` (9.5: `eventsourcing.persistence`);
- 10's `StoredEvent`/`Notification` are keyword-only, have `originator_id: str` and carry `uuid` and
  `metadata` (`EVENT_EXTRAS`);
- 10's `Tracking` names its upstream `context_name` (9.5: `application_name`), and so do the tracking
  recorder's methods' parameters (the library's runners pass it by keyword);
- 10 spells the DCB names `Dcb*` (9.5: `DCB*`), its `DcbEvent` requires `uuid` and `metadata`, and its
  `DcbRecorder` has an abstract `head()`;
- 10's event-sourced application class is `AggregatesApplication` (9.5: `Application`).
"""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.persistence import IntegrityError, Notification, StoredEvent, Tracking

__all__ = [
    "ES10", "EVENT_EXTRAS", "NIL_UUID", "Application", "DcbAppendCondition", "DcbEvent",
    "DcbInfrastructureFactory", "DcbQuery", "DcbQueryItem", "DcbReadResponse", "DcbRecorder",
    "DcbSequencedEvent", "DcbSubscription", "InfrastructureFactoryError", "IntegrityError",
    "Notification", "OperationalError", "ProgrammingError", "StoredEvent", "Tracking", "dcb_event",
    "dcb_event_extras", "new_stored_event", "new_tracking", "oid_of", "stream_of", "tracking_name",
]

NIL_UUID = uuid.UUID(int=0)

#: Whether the installed library is eventsourcing 10 (its `Tracking` has `context_name`).
ES10: bool = "context_name" in getattr(Tracking, "__dataclass_fields__", {})

#: Whether stored events and notifications carry `uuid` and `metadata` (10).
EVENT_EXTRAS: bool = "uuid" in getattr(StoredEvent, "__dataclass_fields__", {})

# The 9.5 names come first: mypy (run against 9.5) types them from their first definition.
if not ES10:
    from eventsourcing.application import Application  # type: ignore[attr-defined,unused-ignore]
    from eventsourcing.dcb.api import (  # type: ignore[attr-defined,unused-ignore]
        DCBAppendCondition as DcbAppendCondition,
        DCBEvent as DcbEvent,
        DCBQuery as DcbQuery,
        DCBQueryItem as DcbQueryItem,
        DCBReadResponse as DcbReadResponse,
        DCBRecorder as DcbRecorder,
        DCBSequencedEvent as DcbSequencedEvent,
        DCBSubscription as DcbSubscription,
    )
    from eventsourcing.dcb.persistence import (  # type: ignore[attr-defined,unused-ignore]
        DCBInfrastructureFactory as DcbInfrastructureFactory,
    )
    from eventsourcing.persistence import (  # type: ignore[attr-defined,unused-ignore]
        InfrastructureFactoryError,
        OperationalError,
        ProgrammingError,
    )
else:
    from eventsourcing.application import (  # type: ignore[attr-defined,no-redef,unused-ignore]
        AggregatesApplication as Application,
    )
    from eventsourcing.dcb.api import (  # type: ignore[attr-defined,no-redef,unused-ignore]
        DcbAppendCondition,
        DcbEvent,
        DcbQuery,
        DcbQueryItem,
        DcbReadResponse,
        DcbRecorder,
        DcbSequencedEvent,
        DcbSubscription,
    )
    from eventsourcing.dcb.persistence import (  # type: ignore[attr-defined,no-redef,unused-ignore]
        DcbInfrastructureFactory,
    )
    from eventsourcing.errors import (  # type: ignore[import-not-found,no-redef,unused-ignore]
        InfrastructureFactoryError,
        OperationalError,
        ProgrammingError,
    )


def tracking_name(tracking: Tracking) -> str:
    """The upstream name of a tracking record (`context_name` in 10, `application_name` in 9.5)."""
    return tracking.context_name if ES10 else tracking.application_name  # type: ignore[attr-defined,unused-ignore]


def new_tracking(name: str, notification_id: int) -> Tracking:
    """A tracking record of the upstream `name` (10's keyword is `context_name`, 9.5's `application_name`)."""
    return Tracking(name, notification_id)


def dcb_event(type_: str, data: bytes, tags: list[str], uuid_: uuid.UUID | None,
              metadata: dict[str, str] | None) -> Any:
    """A DCB event (10 requires `uuid` and `metadata`; 9.5 has neither)."""
    if ES10:
        return DcbEvent(type=type_, data=data, tags=tags,  # type: ignore[call-arg,unused-ignore]
                        uuid=uuid_ or NIL_UUID, metadata=metadata or {})
    return DcbEvent(type=type_, data=data, tags=tags)  # type: ignore[call-arg,unused-ignore]


def dcb_event_extras(event: Any) -> tuple[uuid.UUID, dict[str, str]]:
    """(uuid, metadata) of a DCB event (nil and empty in 9.5)."""
    return getattr(event, "uuid", None) or NIL_UUID, getattr(event, "metadata", None) or {}


# -- originator ids and streams ------------------------------------------------------------------
# 9.5 aggregates have UUID ids (or str ids), stored as UUID streams (or str streams). 10's ids are
# strs: a canonical UUID string (as `str(uuid)` writes it) maps to the UUID stream, so that a 9.5
# store's aggregates keep their streams (and the stream key stays 16 bytes); any other str is a str
# stream. Reading, 10 gets every id as a str.

_streams: dict[str, uuid.UUID | str] = {}
_MAX_CACHE = 100_000


def stream_of(oid: uuid.UUID | str) -> uuid.UUID | str:
    """The evstore stream of an originator id."""
    if not ES10 or type(oid) is not str:
        return oid
    s = _streams.get(oid)
    if s is None:
        s = oid
        if len(oid) == 36 and oid[8] == "-":
            try:
                u = uuid.UUID(oid)
            except ValueError:
                pass
            else:
                if str(u) == oid:
                    s = u
        if len(_streams) >= _MAX_CACHE:
            _streams.clear()
        _streams[oid] = s
    return s


def oid_of(stream: uuid.UUID | str) -> uuid.UUID | str:
    """The originator id of an evstore stream, as the library version has it."""
    return str(stream) if ES10 else stream


def new_stored_event(stream: uuid.UUID | str, originator_version: int, topic: str, state: bytes) -> StoredEvent:
    """A StoredEvent of an evstore stream's event (the id as the library version has it; no uuid and no
    metadata). 9.5 types `originator_id` as `UUID | str`, 10 as `str`."""
    return StoredEvent(originator_id=oid_of(stream),  # type: ignore[arg-type,unused-ignore]
                       originator_version=originator_version, topic=topic, state=state)
