"""The in-memory model of a store for tests/test_interactions.py, and the digest that a read-only
reader process and the writer compute the same way (run as a script, this module is that reader)."""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import evstore

ORDER = evstore.Lifecycle(
    "order", initial="new",
    transitions={("new", "Placed"): "open", ("open", "ItemAdded"): "open", ("open", "Paid"): "paid",
                 ("paid", "Shipped"): "shipped", ("open", "Cancelled"): "cancelled"},
    final={"shipped", "cancelled"},
)
LIFECYCLES = {"order": ORDER}
LC_TYPES = ("Placed", "ItemAdded", "Paid", "Shipped", "Cancelled")
PLAIN_TYPES = ("A", "B", "C")
ALL_TYPES = PLAIN_TYPES + LC_TYPES
TAGS = ("t1", "t2", "t3")
CONSUMER_PREFIX = "$consumer:"


def skey(stream: Any) -> bytes:
    return (b"s" + stream.encode()) if isinstance(stream, str) else (b"u" + stream.bytes)


def lifecycle_of(stream: Any) -> evstore.Lifecycle | None:
    if isinstance(stream, str) and "-" in stream:
        return LIFECYCLES.get(stream.split("-", 1)[0])
    return None


@dataclass
class MEvent:
    stream: Any
    version: int
    position: int
    type: str
    data: bytes
    metadata: bytes
    id: uuid.UUID | None  # None: the store drew it (learnt on the first read)
    schema: int
    tags: tuple[str, ...]

    def row(self) -> tuple[Any, ...]:
        return (self.stream, self.version, self.position, self.type, self.data, self.metadata, self.schema,
                tuple(sorted(set(self.tags))))


@dataclass
class MSnap:
    version: int
    type: str
    data: bytes
    schema: int


@dataclass
class MStream:
    stream: Any
    version: int = 0
    hidden: int = 0
    closed: bool = False
    tomb: bool = False
    state: str | None = None  # the recorded lifecycle state
    snaps: dict[int, MSnap] = field(default_factory=dict)  # what the snapshot index serves, by version

    @property
    def lifecycle(self) -> evstore.Lifecycle | None:
        return lifecycle_of(self.stream)


@dataclass
class Model:
    events: list[MEvent] = field(default_factory=list)
    streams: dict[bytes, MStream] = field(default_factory=dict)  # every stream with a head
    tracking: dict[str, int] = field(default_factory=dict)
    ids: dict[bytes, MEvent] = field(default_factory=dict)  # caller-given ids
    log_snaps: list[tuple[bytes, MSnap]] = field(default_factory=list)  # every snapshot record, in log order

    @property
    def head(self) -> int:
        return len(self.events)

    def get(self, stream: Any) -> MStream | None:
        return self.streams.get(skey(stream))

    def ensure(self, stream: Any) -> MStream:
        k = skey(stream)
        if k not in self.streams:
            self.streams[k] = MStream(stream)
        return self.streams[k]

    def stream_events(self, stream: Any) -> list[MEvent]:
        k = skey(stream)
        return [e for e in self.events if skey(e.stream) == k]

    def visible(self, stream: Any) -> list[MEvent]:
        m = self.get(stream)
        hidden = 0 if m is None else m.hidden
        return [e for e in self.stream_events(stream) if e.version > hidden]

    def stream_state(self, stream: Any) -> str | None:
        m = self.get(stream)
        if m is not None and m.state is not None:
            return m.state
        lc = lifecycle_of(stream)
        if lc is None:
            return None
        if m is None or m.version <= m.hidden:
            return lc.initial
        return lc.replay(e.type for e in self.visible(stream))

    def matches(self, e: MEvent, types: tuple[str, ...], tags: tuple[str, ...]) -> bool:
        return (not types or e.type in types) and set(tags) <= set(e.tags)

    def query(self, items: list[tuple[tuple[str, ...], tuple[str, ...]]], gt: int = 0, lte: int | None = None,
              limit: int | None = None) -> list[MEvent]:
        out = [e for e in self.events if e.position > gt and (lte is None or e.position <= lte)
               and any(self.matches(e, ty, tg) for ty, tg in items)]
        return out if limit is None else out[:limit]

    def load_snapshot(self, stream: Any, lte: int | None = None) -> MSnap | None:
        m = self.get(stream)
        if m is None:
            return None
        hi = m.version if lte is None else min(lte, m.version)
        vs = [v for v in m.snaps if m.hidden < v <= hi]
        return m.snaps[max(vs)] if vs else None

    def rebuild_snapshot_index(self) -> None:
        """What a rebuild of the index from the log serves: every snapshot record (the last per version)."""
        for m in self.streams.values():
            m.snaps = {}
        for k, s in self.log_snaps:
            self.streams[k].snaps[s.version] = s

    def apply_state_transitions(self, stream: Any, types: list[str]) -> str | None:
        """The state after `types` from the current state, or raise InvalidTransition-shaped ValueError."""
        lc = lifecycle_of(stream)
        assert lc is not None
        state = self.stream_state(stream)
        for t in types:
            nxt = lc.next_state(state, t)  # type: ignore[arg-type]
            if nxt is None:
                raise LookupError((state, t))
            state = nxt
        return state


# -- the digest: what a reader sees, computed the same way in the writer and in a reader process ----


def _ev(e: Any) -> list[Any]:
    s = e.stream
    return [str(s) if isinstance(s, uuid.UUID) else s, isinstance(s, uuid.UUID), e.version, e.position, e.type,
            e.data.hex(), e.metadata.hex(), str(e.id), e.schema, sorted(e.tags), e.recorded_at_ns]


def _stream_id(raw: list[Any]) -> Any:
    return uuid.UUID(raw[0]) if raw[1] else raw[0]


def digest(store: evstore.EventStore, req: dict[str, Any]) -> dict[str, Any]:
    """Everything the store serves on the streams, trackings, tags and types named by `req`."""
    out: dict[str, Any] = {"head": store.head(), "all": [_ev(e) for e in store.read_all()]}
    out["streams"] = [[str(s), isinstance(s, uuid.UUID), v] for s, v in store.streams()]
    per = {}
    for raw in req["streams"]:
        s = _stream_id(raw)
        d: dict[str, Any] = {"version": store.stream_version(s)}
        try:
            d["events"] = [_ev(e) for e in store.read_stream(s)]
            d["desc2"] = [e.version for e in store.read_stream(s, desc=True, limit=2)]
            snap = store.load_snapshot(s)
            d["snap"] = None if snap is None else [snap.version, snap.type, snap.data.hex(), snap.schema]
        except evstore.StreamDeleted:
            d["events"] = "deleted"
        info = store.stream_info(s)
        d["info"] = None if info is None else [info.version, info.closed, info.deleted, info.tombstoned, info.state]
        per[json.dumps(raw)] = d
    out["per"] = per
    out["tracking"] = {n: store.max_tracking(n) for n in req["tracking"]}
    out["tags"] = {t: [e.position for e in store.query([evstore.QueryItem(tags=[t])])] for t in req["tags"]}
    out["types"] = {t: [e.position for e in store.read_all(types=[t])] for t in req["types"]}
    return out


def digest_hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def reader_main(path: str, impl: str) -> None:
    """A read-only reader: opens once, then answers one JSON request per line with one JSON digest."""
    store = evstore.open(path, readonly=True, log_impl=impl)
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        try:
            d = digest(store, req)
            print(json.dumps({"ok": True, "digest": d}), flush=True)
        except Exception as e:  # reported to the writer side, which fails the test with it
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
    store.close()


if __name__ == "__main__":
    reader_main(sys.argv[1], sys.argv[2])
