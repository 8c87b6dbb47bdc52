"""Checks of everything a caller hands the engine, before anything is written: stream ids, names,
payloads, expected versions and states, positions, timeouts, query items and conditions, tracking.

Every check raises TypeError or ValueError with a message that names the argument and says what is
accepted; nothing here touches the store. `validate_events` is the per-event hot path of an append.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from evstore.format.layout import FLAG_UUID_STREAM, KIND_TRACKING
from evstore.format.encode import MAX_EVENT_BYTES as MAX_EVENT_BYTES  # re-exported: the checks' limits live here
from evstore.format.encode import MAX_SCHEMA, MAX_VERSION, ControlRecord, ValidEvent
from evstore.storage.index import Head, stream_key
from evstore.records import NewEvent, RecordedEvent, Stream, ExpectedVersion, encode_tags

MAX_NAME_BYTES = 400
DURABILITIES = ("fsync", "os")

type_names: dict[str, bytes] = {}  # event types checked by validate_events, as UTF-8 (at most 10,000)


def check_stream(stream: Any) -> tuple[bytes, int]:
    """(stored bytes, flags) of a stream id; TypeError/ValueError when malformed."""
    if isinstance(stream, str):
        return check_name(stream, "a stream id"), 0
    if isinstance(stream, uuid.UUID):
        return stream.bytes, FLAG_UUID_STREAM
    raise TypeError(f"a stream id must be a str or uuid.UUID, not {type(stream).__name__}")


def checked_stream_key(stream: Any) -> bytes:
    """The index key of a stream id (`evstore.storage.index.stream_key`); TypeError/ValueError when
    malformed."""
    if type(stream) is uuid.UUID:
        return b"u" + stream.bytes
    raw, flags = check_stream(stream)
    return (b"u" if flags else b"s") + raw


def check_open_options(path: Any, durability: Any, segment_size: Any, map_size: Any) -> str:
    """The path of `evstore.open` as a str, once it and the options are valid."""
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError("path must be a str or os.PathLike[str]")
    if "\x00" in p:
        raise ValueError("path must not contain NUL bytes")
    if durability is not None and durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {DURABILITIES}, not {durability!r}")
    for name, v, lo in (("segment_size", segment_size, 4096), ("map_size", map_size, 1 << 20)):
        if type(v) is not int:
            raise TypeError(f"{name} must be an int")
        if not lo <= v <= (1 << 40):
            raise ValueError(f"{name} must be between {lo} and 2**40 bytes")
    return p


def check_fields(types: Any, datas: Any, metadatas: Any) -> None:
    """Events given as their fields (`EventStore.append_fields`): as many data and metadata as types."""
    if not len(types) == len(datas) == len(metadatas):
        raise ValueError(f"append_fields needs as many data and metadata values as types, not {len(types)}, "
                         f"{len(datas)} and {len(metadatas)}")


def check_name(name: Any, what: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} {name!r} is not valid Unicode text: {e.reason}") from None
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"{what} is {len(raw)} bytes in UTF-8; the limit is {MAX_NAME_BYTES}")
    return raw


def check_bytes(value: Any, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def check_expected(expected: Any) -> Any:
    if isinstance(expected, ExpectedVersion):
        return expected
    if type(expected) is not int:
        raise TypeError(
            "expected_version must be ANY, NO_STREAM, STREAM_EXISTS or an int, "
            f"not {type(expected).__name__}"
        )
    if not 0 <= expected <= MAX_VERSION:
        raise ValueError(f"expected_version {expected} is out of range 0..{MAX_VERSION}")
    return expected


def check_position(value: Any, what: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if type(value) is not int:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_VERSION:
        raise ValueError(f"{what} {value} is out of range 0..{MAX_VERSION}")
    return value



def validate_events(events: Any) -> list[ValidEvent]:
    """Validate events; return (type bytes, data, metadata, id bytes or None, schema, tags part) for each.

    The common case (a str type seen before, bytes payloads, no id or a UUID, an int schema) takes a
    few attribute reads and type checks per event; anything else goes through the full checks."""
    if isinstance(events, (NewEvent, str, bytes)) or not isinstance(events, Iterable):
        raise TypeError("events must be a list of evstore.NewEvent")
    out: list[ValidEvent] = []
    append = out.append
    cache = type_names
    for e in events:
        if type(e) is not NewEvent and not isinstance(e, NewEvent):
            raise TypeError(f"events must be evstore.NewEvent instances, not {type(e).__name__}")
        tb = cache.get(e.type) if type(e.type) is str else None
        if tb is None:
            tb = check_name(e.type, "an event type")
            if len(cache) < 10_000:
                cache[e.type] = tb
        data = e.data
        if type(data) is not bytes:
            data = check_bytes(data, "event data")
        meta = e.metadata
        if type(meta) is not bytes:
            meta = check_bytes(meta, "event metadata")
        if len(data) + len(meta) > MAX_EVENT_BYTES:
            raise ValueError(f"an event's data and metadata are {len(data) + len(meta):,} bytes; the limit is "
                             f"{MAX_EVENT_BYTES:,} (16 MiB)")
        eid = e.id
        if eid is None:
            idb = None
        elif isinstance(eid, uuid.UUID):
            idb = eid.bytes
        else:
            raise TypeError(f"an event id must be a uuid.UUID or None, not {type(eid).__name__}")
        schema = e.schema
        if type(schema) is not int or schema < 0 or schema > MAX_SCHEMA:
            raise (TypeError if type(schema) is not int else ValueError)(
                f"an event schema must be an int in 0..{MAX_SCHEMA}, not {schema!r}"
            )
        append((tb, data, meta, idb, schema, encode_tags(e.tags) if e.tags else b""))
    if not out:
        raise ValueError("an append needs at least one event")
    return out



class Part:
    """One stream's share of a commit. The stream and the expected version are checked at once; the
    events when first needed (under the writer lock, before anything is written), so that an append
    refused for its expected version does not pay for validating and encoding its events."""

    __slots__ = ("stream", "key", "sb", "sflag", "raw", "_events", "expected", "head", "expected_state")

    def __init__(self, stream: Stream, events: Any, expected: Any, expected_state: Any = None) -> None:
        self.sb, self.sflag = check_stream(stream)
        self.stream = stream
        self.key = stream_key(stream)
        if isinstance(events, (NewEvent, str, bytes)) or not isinstance(events, Iterable):
            raise TypeError("events must be a list of evstore.NewEvent")
        self.raw = events if type(events) is list else list(events)
        if not self.raw:
            raise ValueError("an append needs at least one event")
        self._events: list[ValidEvent] | None = None
        self.expected = check_expected(expected)
        self.head: Head | None = None
        self.expected_state: frozenset[str] | None = (
            None if expected_state is None else check_expected_state(expected_state))

    @property
    def events(self) -> list[ValidEvent]:
        """The part's events, validated and encoded (once)."""
        ev = self._events
        if ev is None:
            ev = self._events = validate_events(self.raw)
        return ev


def check_expected_state(value: Any) -> frozenset[str]:
    """A frozenset of state names from a state name or a collection of them."""
    states = frozenset((value,)) if isinstance(value, str) else frozenset(value)
    if not states or not all(isinstance(s, str) and s for s in states):
        raise TypeError("expected_state must be a state name or a non-empty set of state names")
    return states


class QueryItem(NamedTuple):
    """Events of any of `types` (all types when empty) that carry every one of `tags`."""

    types: Sequence[str] = ()
    tags: Sequence[str] = ()


class Condition(NamedTuple):
    """An append condition: fail (`ConditionFailed`) if an event matching any of `items` has a
    position above `after` — the optimistic check of dynamic consistency boundaries."""

    items: Sequence[QueryItem]
    after: int = 0


def query_items(items: Any) -> list[tuple[frozenset[bytes] | None, tuple[bytes, ...]]]:
    """Validated query items as (type names or None for all, tag names)."""
    if isinstance(items, (str, bytes, QueryItem)) or not isinstance(items, Iterable):
        raise TypeError("a query is a list of evstore.QueryItem(types=..., tags=...)")
    out = []
    for it in items:
        if not isinstance(it, tuple) or len(it) != 2:
            raise TypeError("a query item is an evstore.QueryItem(types=..., tags=...) or a (types, tags) pair")
        types, tags = it
        if isinstance(types, str) or isinstance(tags, str):
            raise TypeError("a query item's types and tags are collections of str, not a str")
        tb = frozenset(check_name(t, "an event type") for t in types)
        gb = encode_tags(tuple(tags))
        names = []
        i = 0
        while i < len(gb):
            names.append(gb[i + 1 : i + 1 + gb[i]])
            i += 1 + gb[i]
        out.append((tb or None, tuple(names)))
    return out



CheckedCondition = tuple[list[tuple[frozenset[bytes] | None, tuple[bytes, ...]]], int, Any]


def check_condition(condition: Any) -> CheckedCondition | None:
    if condition is None:
        return None
    if not isinstance(condition, Condition):
        raise TypeError("condition must be an evstore.Condition(items, after)")
    after = check_position(condition.after, "condition.after", allow_none=False)
    return (query_items(condition.items), after or 0, condition)


def check_timeout(timeout: Any) -> float | None:
    """A timeout in seconds: None (wait for ever) or a real number >= 0 (inf is for ever)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, not {type(timeout).__name__}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return None if timeout == float("inf") else float(timeout)


def tag_set(rec: RecordedEvent) -> set[bytes]:
    return {t.encode("utf-8") for t in rec.tags}


def type_filter(types: Iterable[str] | None) -> tuple[bytes, ...] | None:
    if types is None:
        return None
    if isinstance(types, str):
        raise TypeError("types must be a collection of type names, not a str")
    return tuple(sorted({check_name(t, "an event type") for t in types}))


def check_group(group: Any) -> tuple[int, int] | None:
    """A checked consumer-group membership (member, size), or None."""
    if group is None:
        return None
    if not isinstance(group, tuple) or len(group) != 2 or not all(type(x) is int for x in group):
        raise TypeError(f"group must be a (member, size) tuple of ints, not {group!r}")
    member, size = group
    if not 1 <= size <= 1 << 16 or not 0 <= member < size:
        raise ValueError(f"group needs 1 <= size <= 65536 and 0 <= member < size, not {group!r}")
    return member, size


def category_filter(category: Any) -> bytes | None:
    """A checked category name (a stream id's text before its first "-"), or None for all events."""
    if category is None:
        return None
    raw = check_name(category, "a category")
    if b"-" in raw:
        raise ValueError(f"a category is the part of a stream id before its first '-': {category!r} contains one")
    return raw


def tracking_name(upstream: Any) -> bytes:
    raw = check_name(upstream, "a tracking upstream name")
    if b"\x00" in raw:
        raise ValueError("a tracking upstream name must not contain NUL")
    return raw


def tracking_record(tracking: Any) -> ControlRecord:
    if not isinstance(tracking, tuple) or len(tracking) != 2:
        raise TypeError("tracking must be an (upstream name, position) tuple")
    name, position = tracking
    check_position(position, "tracking position", allow_none=False)
    if position < 1:
        raise ValueError("a tracking position must be >= 1")
    return ControlRecord(KIND_TRACKING, tracking_name(name), 0, b"", position, b"", 0)


def check_snapshot(type_name: Any, data: Any, schema: Any) -> tuple[bytes, bytes, int]:
    """(type bytes, data, schema) of a snapshot to save; TypeError/ValueError when malformed."""
    tb = check_name(type_name, "a snapshot type")
    raw = check_bytes(data, "snapshot data")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise TypeError(f"a snapshot schema must be an int, not {schema.__class__.__name__}")
    if not 0 <= schema < (1 << 32):
        raise ValueError(f"a snapshot schema must be an int in 0..{(1 << 32) - 1}, not {schema!r}")
    if len(raw) > MAX_EVENT_BYTES:
        raise ValueError(f"a snapshot of {len(raw):,} bytes exceeds the limit of {MAX_EVENT_BYTES:,} (16 MiB)")
    return tb, raw, schema
