"""The records of the public API: events to append, events read back, append results."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple, Union

from evstore.format.layout import FLAG_CALLER_ID, FLAG_UUID_STREAM, HEADER, HEADER_SIZE

Stream = Union[str, uuid.UUID]


class ExpectedVersion:
    """A symbolic expected version (`ANY`, `NO_STREAM`, `STREAM_EXISTS`)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"evstore.{self.name}"

    def __reduce__(self) -> str:
        return self.name


ANY = ExpectedVersion("ANY")
NO_STREAM = ExpectedVersion("NO_STREAM")
STREAM_EXISTS = ExpectedVersion("STREAM_EXISTS")


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append.

    `data` and `metadata` are opaque bytes; `id` (a UUID) makes a retried append idempotent; `schema` is
    the version of the data's shape, kept with the event so that readers can upcast old shapes; `tags`
    (strs of 1..255 bytes) index the event for `EventStore.query` and append conditions.
    """

    type: str
    data: bytes
    metadata: bytes = b""
    id: uuid.UUID | None = None
    schema: int = 1
    tags: tuple[str, ...] = ()


class AppendResult(NamedTuple):
    """What one stream's part of a commit was given: its versions and global positions."""

    stream: Stream
    first_version: int
    last_version: int
    first_position: int
    last_position: int


def encode_tags(tags: Any) -> bytes:
    """The tags part of a record: each tag as a length byte and UTF-8; TypeError/ValueError if malformed."""
    if isinstance(tags, (str, bytes)) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise TypeError("tags must be a collection of str")
    out = []
    seen = set()
    for t in tags:
        if not isinstance(t, str):
            raise TypeError(f"a tag must be a str, not {type(t).__name__}")
        try:
            raw = t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"tag {t!r} is not valid Unicode text: {e.reason}") from None
        if not 1 <= len(raw) <= 255:
            raise ValueError(f"a tag must be 1 to 255 bytes of UTF-8, not {len(raw)}")
        if b"\x00" in raw:
            raise ValueError(f"a tag must not contain NUL: {t!r}")
        if raw in seen:
            continue
        seen.add(raw)
        out.append(bytes((len(raw),)) + raw)
    blob = b"".join(out)
    if len(blob) > 65535:
        raise ValueError("an event's tags take more than 65,535 bytes")
    return blob


def decode_tags(raw: Any) -> tuple[str, ...]:
    """Tags from the tags part of a record."""
    out = []
    i = 0
    n = len(raw)
    while i < n:
        ln = raw[i]
        out.append(bytes(raw[i + 1 : i + 1 + ln]).decode("utf-8"))
        i += 1 + ln
    return tuple(out)


def decode_stream(raw: bytes, flags: int) -> Stream:
    """Stream id from its stored bytes."""
    if flags & FLAG_UUID_STREAM:
        return uuid.UUID(bytes=raw)
    return raw.decode("utf-8")


_unpack = HEADER.unpack_from


class RecordedEvent(tuple):  # type: ignore[type-arg]
    """An event read from the store (immutable).

    Fields: `stream, version, position, type, data, metadata, id, schema, recorded_at`. A record is a
    view of the log's bytes: fields are decoded when first asked for, so replay costs little more
    than the scan; a record keeps the segment mapping it was read from alive.
    """

    __slots__ = ()

    # tuple layout: (buffer, offset, stream-or-None)

    def _header(self) -> tuple[Any, ...]:
        return _unpack(self[0], self[1])

    @property
    def stream(self) -> Stream:
        s = self[2]
        if s is not None:
            return s  # type: ignore[no-any-return]
        h = _unpack(self[0], self[1])
        o = self[1] + HEADER_SIZE
        return decode_stream(self[0][o : o + h[5]], h[3])

    @property
    def position(self) -> int:
        return _unpack(self[0], self[1])[7]  # type: ignore[no-any-return]

    @property
    def version(self) -> int:
        return _unpack(self[0], self[1])[8]  # type: ignore[no-any-return]

    @property
    def type(self) -> str:
        h = _unpack(self[0], self[1])
        o = self[1] + HEADER_SIZE + h[5]
        return type_name(self[0][o : o + h[4]])

    @property
    def metadata(self) -> bytes:
        h = _unpack(self[0], self[1])
        o = self[1] + HEADER_SIZE + h[5] + h[4]
        return self[0][o : o + h[12]]  # type: ignore[no-any-return]

    @property
    def data(self) -> bytes:
        h = _unpack(self[0], self[1])
        o = self[1] + HEADER_SIZE + h[5] + h[4] + h[12] + h[6]
        return self[0][o : self[1] + h[1]]  # type: ignore[no-any-return]

    @property
    def tags(self) -> tuple[str, ...]:
        """The event's tags (for queries by tag, as in dynamic consistency boundaries)."""
        h = _unpack(self[0], self[1])
        if not h[6]:
            return ()
        o = self[1] + HEADER_SIZE + h[5] + h[4] + h[12]
        return decode_tags(self[0][o : o + h[6]])

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(_unpack(self[0], self[1])[10]))

    @property
    def id_given(self) -> bool:
        """True when the id was chosen by the appending caller (and so guards idempotent retries)."""
        return bool(_unpack(self[0], self[1])[3] & FLAG_CALLER_ID)

    @property
    def schema(self) -> int:
        return _unpack(self[0], self[1])[11]  # type: ignore[no-any-return]

    @property
    def recorded_at_ns(self) -> int:
        """Commit time in nanoseconds since the Unix epoch."""
        return _unpack(self[0], self[1])[9]  # type: ignore[no-any-return]

    @property
    def recorded_at(self) -> datetime:
        """Commit time, an aware UTC datetime (microsecond precision)."""
        ns = _unpack(self[0], self[1])[9]
        return datetime.fromtimestamp(ns // 1000 / 1e6, tz=timezone.utc)

    def raw(self) -> bytes:
        """The record's bytes exactly as stored in the log."""
        h = _unpack(self[0], self[1])
        return bytes(self[0][self[1] : self[1] + h[1]])

    def _key(self) -> tuple[Any, ...]:
        h = _unpack(self[0], self[1])
        o = self[1]
        return (h[7], bytes(self[0][o + 4 : o + h[1]]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"RecordedEvent(stream={self.stream!r}, version={self.version}, position={self.position}, "
            f"type={self.type!r}, data={self.data!r}, metadata={self.metadata!r}, id={self.id}, "
            f"schema={self.schema}, recorded_at={self.recorded_at.isoformat()})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (record_from_bytes, (self.raw(),))

    def __copy__(self) -> RecordedEvent:
        return self

    def __deepcopy__(self, memo: Any) -> RecordedEvent:
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # pragma: no cover - pickling goes through __reduce__
        return (tuple(self),)


def record_from_bytes(raw: bytes) -> RecordedEvent:
    return tuple.__new__(RecordedEvent, (raw, 0, None))


_type_names: dict[bytes, str] = {}


def type_name(raw: Any) -> str:
    """Decoded type name, interned: a store has few types and many events."""
    b = bytes(raw)
    s = _type_names.get(b)
    if s is None:
        s = b.decode("utf-8")
        if len(_type_names) < 100_000:
            _type_names[b] = s
    return s


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the store knows of one stream's head."""

    stream: Stream
    version: int
    closed: bool
    deleted: bool
    tombstoned: bool
    state: str | None
