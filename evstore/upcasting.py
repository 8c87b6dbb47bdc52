"""Upcasting: read old event shapes as the newest one, without ever rewriting the stored bytes.

An upcaster for (event type, from_schema) turns a `RecordedEvent` of that type and schema into the
(type, data, metadata) of schema from_schema + 1. Chains run in order, also across a type rename (the
next step is looked up under the new type). See docs/lifecycles.md, "Schema evolution".
"""

from __future__ import annotations

from collections.abc import Callable
import struct
from typing import Any

from evstore.format.layout import HEADER, HEADER_SIZE, KIND_EVENT
from evstore.errors import InvalidUpcaster
from evstore.records import RecordedEvent

Upcaster = Callable[[RecordedEvent], "tuple[str, bytes, bytes]"]

_unpack = HEADER.unpack_from
# type_len, stream_len, schema: the three header fields the filter needs, in one small unpack
_peek = struct.Struct("<10xHH42xI").unpack_from
_pack = HEADER.pack
_new = tuple.__new__
MAX_SCHEMA = (1 << 32) - 1


class Upcasters:
    """The upcasters registered on one store handle, as a table (type bytes, schema) -> function."""

    __slots__ = ("table", "chains", "names")

    def __init__(self) -> None:
        self.table: dict[tuple[bytes, int], Upcaster] = {}
        self.chains: dict[str, set[int]] = {}
        self.names: tuple[bytes, ...] = ()  # the type names that have an upcaster

    def region_needs(self, buf: Any, start: int, end: int) -> bool:
        """Whether buf[start:end] might hold an event to upcast: one C-speed search per upcast type
        name over the region's bytes, so runs of events of other types cost nothing per event (a name
        that also occurs inside some payload only costs the per-record check)."""
        find = buf.find
        return any(find(name, start, end) >= 0 for name in self.names)

    def register(self, event_type: str, from_schema: int, fn: Upcaster) -> None:
        """Add one step; refuses a duplicate or a step that would leave a gap in the type's chain.

        Rule: the from-schemas registered for one type must form one contiguous range, so a new step
        must be just above the highest or just below the lowest registered one."""
        if not isinstance(event_type, str) or not event_type:
            raise TypeError("event_type must be a non-empty str")
        if type(from_schema) is not int or not 0 <= from_schema < MAX_SCHEMA:
            raise ValueError(f"from_schema must be an int in 0..{MAX_SCHEMA - 1}, not {from_schema!r}")
        if not callable(fn):
            raise TypeError("an upcaster must be callable: fn(RecordedEvent) -> (type, data, metadata)")
        have = self.chains.get(event_type, set())
        reg = tuple(sorted(have))
        if from_schema in have:
            raise InvalidUpcaster(event_type, from_schema, reg, "an upcaster is already registered for this step")
        if have and from_schema != max(have) + 1 and from_schema != min(have) - 1:
            raise InvalidUpcaster(event_type, from_schema, reg,
                                  f"the chain would have a gap: register from_schema={max(have) + 1} "
                                  f"(or {min(have) - 1}) next; a chain is contiguous from its lowest schema")
        self.chains.setdefault(event_type, set()).add(from_schema)
        self.table[(event_type.encode("utf-8"), from_schema)] = fn
        self.names = tuple({t for t, _ in self.table})

    def apply_list(self, records: list[RecordedEvent]) -> list[RecordedEvent]:
        """`records` with every record that has an upcaster replaced by its newest shape."""
        table = self.table
        peek = _peek
        upcast = self.upcast
        return [
            upcast(r) if (r[0][(t := r[1] + HEADER_SIZE + (h := peek(r[0], r[1]))[1]) : t + h[0]], h[2]) in table
            else r
            for r in records
        ]

    def upcast(self, r: RecordedEvent) -> RecordedEvent:
        """Run the chain for `r` to its end; the result keeps r's stream, version, position, id, time."""
        table = self.table
        while True:
            buf, o = r[0], r[1]
            h = _unpack(buf, o)
            s = o + HEADER_SIZE
            t = s + h[5]
            fn = table.get((bytes(buf[t : t + h[4]]), h[11]))
            if fn is None:
                return r
            out = fn(r)
            if not isinstance(out, tuple) or len(out) != 3:
                raise TypeError(f"the upcaster of {r.type!r} schema {h[11]} must return (type, data, metadata), "
                                f"not {out!r}")
            ntype, data, meta = out
            if not isinstance(ntype, str) or not ntype:
                raise TypeError(f"the upcaster of {r.type!r} schema {h[11]} returned a bad type {ntype!r}")
            if not isinstance(data, (bytes, bytearray)) or not isinstance(meta, (bytes, bytearray)):
                raise TypeError(f"the upcaster of {r.type!r} schema {h[11]} must return bytes data and metadata")
            tb = ntype.encode("utf-8")
            sb = bytes(buf[s:t])
            g = t + h[4] + h[12]
            gb = bytes(buf[g : g + h[6]])  # the tags stay
            ln = HEADER_SIZE + len(sb) + len(tb) + len(meta) + len(gb) + len(data)
            # A synthetic record (checksum 0: it is not a log record) in the same format, so that every
            # RecordedEvent accessor, equality and pickling work unchanged.
            raw = _pack(0, ln, KIND_EVENT, h[3], len(tb), len(sb), len(gb), h[7], h[8], h[9], h[10], h[11] + 1,
                        len(meta)) + sb + tb + bytes(meta) + gb + bytes(data)
            r = _new(RecordedEvent, (raw, 0, r[2]))


