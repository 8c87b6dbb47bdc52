"""A batch of StoredEvents as the columns `EventStore.append_fields` takes: per stream, the topics,
the states and the metadata bytes (`evstore.eventsourcing.meta`'s layouts), with the first and last
originator_version.

The usual batch is one aggregate's new events, in version order: `one_stream` makes its columns with
whole-column operations (list comprehensions, `map` over C functions, set and count checks), so the
per-event work stays in C. Any other batch, and any event the whole-column checks do not vouch for, goes
through `per_stream`, which looks at each event and raises what the library's recorders raise.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from itertools import repeat
from operator import lt
from typing import Any, Literal, NamedTuple

from evstore.eventsourcing import meta
from evstore.eventsourcing.compat import EVENT_EXTRAS, IntegrityError, ProgrammingError, StoredEvent, stream_of

__all__ = ["Part", "one_stream", "per_stream"]

_pack_ov = struct.Struct("<q").pack
# layout 1 with the version and the uuid, no metadata dict: what meta.encode makes of such an event
_pack_ov_uuid = struct.Struct("<2sq16s").pack
_OV_UUID = bytes((meta.LAYOUT, meta.HAS_VERSION | meta.HAS_UUID))
_BIG: Literal["big"] = "big"
_encode_meta = meta.encode


class Part(NamedTuple):
    """One stream's events of a batch, as columns."""

    stream: uuid.UUID | str
    topics: list[Any]
    states: list[Any]
    metas: list[bytes]
    first: int  # originator_version of the part's first event
    last: int  # and of its last
    at: list[int] | None  # where the part's events are in the batch; None: the whole batch, in order


def one_stream(stored_events: Sequence[StoredEvent]) -> Part | None:
    """The columns of a batch of one originator's events with int, strictly increasing
    originator_versions (the usual batch); None for any other batch (then use `per_stream`)."""
    n = len(stored_events)
    if n == 1:  # a command's one new event: no columns to compare
        s = stored_events[0]
        ov = s.originator_version
        if type(ov) is not int:
            return None
        metas = _metas(stored_events, [ov]) if EVENT_EXTRAS else [_pack_ov(ov)]
        return Part(stream_of(s.originator_id), [s.topic], [s.state], metas, ov, ov, None)
    if not n:
        return None
    oid = stored_events[0].originator_id
    if [s.originator_id for s in stored_events].count(oid) != n:
        return None
    ovs = [s.originator_version for s in stored_events]
    first, last = ovs[0], ovs[-1]
    if list(map(type, ovs)).count(int) != n:  # (a count: cheaper than a set, no hashing)
        return None
    # consecutive versions (the usual) compare equal to a range; otherwise compare neighbours
    if (last - first != n - 1 or ovs != list(range(first, last + 1))) and not all(map(lt, ovs, ovs[1:])):
        return None
    metas = _metas(stored_events, ovs) if EVENT_EXTRAS else list(map(_pack_ov, ovs))
    return Part(stream_of(oid), [s.topic for s in stored_events], [s.state for s in stored_events], metas,
                first, last, None)


def _metas(stored_events: Sequence[Any], ovs: list[int]) -> list[bytes]:
    """The metadata bytes of events with `uuid` and `metadata` (eventsourcing 10): the same bytes as
    `meta.encode` per event, made column-wise when no event has a metadata dict and the uuids are all
    set (as 10's aggregate events have them) or all nil."""
    uuids = [s.uuid for s in stored_events]
    dicts = [s.metadata for s in stored_events]
    if uuids and not any(dicts) and list(map(type, uuids)).count(uuid.UUID) == len(uuids):
        ints = [u.int for u in uuids]
        if 0 not in ints:
            return list(map(_pack_ov_uuid, repeat(_OV_UUID), ovs, map(int.to_bytes, ints, repeat(16), repeat(_BIG))))
        if ints.count(0) == len(ints):
            return list(map(_pack_ov, ovs))
    return list(map(_encode_meta, ovs, uuids, dicts))


def per_stream(stored_events: Sequence[StoredEvent]) -> list[Part]:
    """The columns of any batch, one part per stream in the order the streams first appear, each part's
    events in the order given. Raises ProgrammingError for an originator_version that is not an int,
    IntegrityError for versions of one originator that do not strictly increase."""
    groups: dict[uuid.UUID | str, list[int]] = {}
    for i, s in enumerate(stored_events):
        groups.setdefault(stream_of(s.originator_id), []).append(i)
    parts = []
    extras = EVENT_EXTRAS
    for oid, at in groups.items():
        prev = None
        topics: list[Any] = []
        states: list[Any] = []
        metas: list[bytes] = []
        for i in at:
            s = stored_events[i]
            ov = s.originator_version
            if type(ov) is not int:
                raise ProgrammingError(f"originator_version must be an int, not {type(ov).__name__}")
            if prev is not None and ov <= prev:
                raise IntegrityError(
                    f"stored events of {oid!r} do not have strictly increasing versions ({prev}, then {ov})"
                )
            prev = ov
            topics.append(s.topic)
            states.append(s.state)
            if extras:  # eventsourcing 10: the uuid and metadata dict too
                metas.append(_encode_meta(ov, s.uuid, s.metadata))  # type: ignore[attr-defined,unused-ignore]
            else:
                metas.append(_pack_ov(ov))
        parts.append(Part(oid, topics, states, metas, stored_events[at[0]].originator_version,
                          stored_events[at[-1]].originator_version, at))
    return parts
