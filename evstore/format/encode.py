"""Encoding a commit: from validated parts and control records to the sealed bytes of the log, and
the offsets the index needs. A pure function — no I/O, no store state. The log implementations each
encode (`encode_commit` of evstore.format.clog, by evl_encode_commit in C, and of evstore.format.pylog,
its pure-Python twin); this module holds the types they share, their input checks and the ids.

See docs/log_format.md for the layout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import NamedTuple

from evstore.format.layout import (FLAG_UUID_STREAM, HEADER_SIZE, KIND_AUX, KIND_MARK, KIND_SNAPSHOT,
                                   KIND_TRACKING)
from evstore.records import AppendResult, NewEvent, Stream

MAX_COMMIT_BYTES = 256 << 20
MAX_VERSION = (1 << 63) - 1
MAX_EVENT_BYTES = 16 << 20  # an event's data and metadata
MAX_SCHEMA = (1 << 32) - 1

ValidEvent = tuple[bytes, bytes, bytes, "bytes | None", int, bytes]  # type, data, metadata, id, schema, tags


class ControlRecord(NamedTuple):
    """A non-event record of a commit (a tracking record, a stream mark or a snapshot), as written:
    `stream` is the stored stream (or upstream) bytes, `stream_flags` its flags, `name` the mark's or
    snapshot type's bytes (empty for tracking), `version` the stream version (or upstream position)."""

    kind: int
    stream: bytes
    stream_flags: int
    name: bytes
    version: int
    data: bytes
    schema: int

_UUID4_MASK = int.from_bytes(b"\xff" * 6 + b"\x0f\xff\x3f" + b"\xff" * 7, "big")
_UUID4_BITS = int.from_bytes(b"\x00" * 6 + b"\x40\x00\x80" + b"\x00" * 7, "big")
_id_masks: dict[int, tuple[int, int]] = {}


class _EntropyPool:
    """Bytes from os.urandom, drawn from a 64 KiB pool: one getrandom call serves thousands of ids.
    Reset in a forked child, which must not reuse its parent's random bytes. `lock` guards both fields."""

    def __init__(self) -> None:
        self.buf = b""
        self.used = 0
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.buf, self.used = b"", 0

    def take(self, n: int) -> bytes:
        if n > 4096:
            return os.urandom(n)
        with self.lock:
            if self.used + n > len(self.buf):
                self.buf, self.used = os.urandom(65536), 0
            start = self.used
            self.used += n
            return self.buf[start : start + n]


_entropy = _EntropyPool().take


def random_bytes(n: int) -> bytes:
    """n bytes from the pool, for evl_encode_commit, which makes each 16 of them a version-4 UUID
    as `random_ids` does."""
    return _entropy(n)


def random_ids(n: int) -> bytes:
    """n random version-4 UUIDs, as 16n bytes, in a few C-speed operations."""
    m = _id_masks.get(n)
    if m is None:
        m = (int.from_bytes(_UUID4_MASK.to_bytes(16, "big") * n, "big"),
             int.from_bytes(_UUID4_BITS.to_bytes(16, "big") * n, "big"))
        if n <= 1024:
            _id_masks[n] = m
    r = int.from_bytes(_entropy(16 * n), "big")
    return ((r & m[0]) | m[1]).to_bytes(16 * n, "big")


class PartToEncode(NamedTuple):
    """One stream's events in a commit: the stream as given and stored, its current version."""

    stream: Stream
    key: bytes  # index key of the stream
    stored: bytes  # the stream id's bytes in the log
    flags: int  # FLAG_UUID_STREAM or 0
    version: int  # the stream's version before this commit
    events: list[ValidEvent]


class EncodedCommit(NamedTuple):
    """A sealed commit and what the index needs of it (offsets relative to the commit's start)."""

    buf: bytearray
    first_position: int
    n_events: int
    results: list[AppendResult]
    runs: list[tuple[bytes, int, int, int, int]]  # stream key, first version, last version, offset, bytes
    types: dict[bytes, None]  # the event types the commit holds, in first-seen order
    ids: list[tuple[bytes, int]]  # caller-given event ids and their positions
    tagged: list[tuple[bytes, int, int]]  # tags part, position, offset of each tagged event
    control_offsets: list[int]  # offset of each control record, in order


def encode_commit(codec: ModuleType, parts: Sequence[PartToEncode], controls: Sequence[ControlRecord],
                  first_position: int, ts: int) -> EncodedCommit:
    """The bytes of one commit, encoded by `codec` (evstore.format.clog or pylog, which give the same
    bytes): each part's events (versions after its `version`, positions from `first_position`), then
    the control records, then the COMMIT record, every record sealed.

    Raises ValueError when the input is malformed (see `input_error`), a stream would pass the
    largest version or the commit the size limit."""
    enc: EncodedCommit = codec.encode_commit(parts, controls, first_position, ts)
    return enc


def tags_ok(gb: bytes) -> bool:
    """Whether `gb` is a tags part: tags of a length byte (1..255) and that many bytes."""
    i, n = 0, len(gb)
    while i < n:
        k = gb[i]
        if k == 0 or k > n - i - 1:
            return False
        i += k + 1
    return True


def _uint(value: object, bits: int) -> bool:
    return type(value) is int and 0 <= value < 1 << bits


def input_error(parts: Sequence[PartToEncode], controls: Sequence[ControlRecord], first_position: int,
                ts: int) -> ValueError | None:
    """What is wrong with the input of an encoder, the first problem found in the order of the input,
    or None. Both encoders call it once they have found that something is (so they report alike);
    the checks are those of evl_encode_commit in src_c/evlog.h, plus the commit size limit."""
    if not _uint(first_position, 64) or first_position == 0:
        return ValueError(f"a commit's first position must be in 1..2**64-1, not {first_position!r}")
    if not _uint(ts, 64):
        return ValueError(f"a commit time must be in 0..2**64-1 nanoseconds, not {ts!r}")
    size = n_events = 0
    for p in parts:
        if not isinstance(p.stored, bytes) or len(p.stored) > 0xFFFF:
            return ValueError(f"stream {p.stream!r}: a stored stream id must be bytes of at most 65535")
        if p.flags not in (0, FLAG_UUID_STREAM):
            return ValueError(f"stream {p.stream!r}: stream flags must be 0 or {FLAG_UUID_STREAM}, not {p.flags!r}")
        if not _uint(p.version, 63) or p.version + len(p.events) > MAX_VERSION:
            return ValueError(f"stream {p.stream!r} would pass the largest version {MAX_VERSION}")
        for i, (tb, data, meta, idb, schema, gb) in enumerate(p.events):
            what = f"stream {p.stream!r}, event {i}"
            if not all(isinstance(b, bytes) for b in (tb, data, meta, gb)):
                return ValueError(f"{what}: type, data, metadata and tags must be bytes")
            if len(tb) > 0xFFFF:
                return ValueError(f"{what}: a type of {len(tb):,} bytes is over 65535")
            if len(gb) > 0xFFFF or not tags_ok(gb):
                return ValueError(f"{what}: the tags part is not tags of a length byte (1..255) and its bytes, "
                                  "65535 bytes in all at most")
            if idb is not None and (not isinstance(idb, bytes) or len(idb) != 16):
                return ValueError(f"{what}: an event id must be 16 bytes, not {idb!r}")
            if not _uint(schema, 32):
                return ValueError(f"{what}: a schema must be in 0..2**32-1, not {schema!r}")
            ln = HEADER_SIZE + len(p.stored) + len(tb) + len(meta) + len(gb) + len(data)
            if ln > 0xFFFFFFFF:
                return ValueError(f"{what}: a record of {ln:,} bytes is over 4 GiB")
            size += ln
            n_events += 1
    for i, x in enumerate(controls):
        what = f"control record {i}"
        if x.kind not in (KIND_MARK, KIND_SNAPSHOT, KIND_TRACKING, KIND_AUX):
            return ValueError(f"{what}: kind {x.kind!r} is not a control record's ({KIND_MARK}..{KIND_AUX})")
        if not all(isinstance(b, bytes) for b in (x.stream, x.name, x.data)):
            return ValueError(f"{what}: stream, name and data must be bytes")
        if len(x.stream) > 0xFFFF or len(x.name) > 0xFFFF:
            return ValueError(f"{what}: a stream or name over 65535 bytes")
        if x.stream_flags not in (0, FLAG_UUID_STREAM):
            return ValueError(f"{what}: stream flags must be 0 or {FLAG_UUID_STREAM}, not {x.stream_flags!r}")
        if not _uint(x.version, 64) or not _uint(x.schema, 32):
            return ValueError(f"{what}: version must be in 0..2**64-1 and schema in 0..2**32-1")
        ln = HEADER_SIZE + len(x.stream) + len(x.name) + len(x.data)
        if ln > 0xFFFFFFFF:
            return ValueError(f"{what}: a record of {ln:,} bytes is over 4 GiB")
        size += ln
    if first_position + n_events > 0xFFFF_FFFF_FFFF_FFFF:
        return ValueError(f"the positions of {n_events} events from {first_position} would pass 2**64-1")
    if n_events + len(controls) > 0xFFFFFFFF:
        return ValueError("a commit holds at most 2**32-1 records")
    if size > MAX_COMMIT_BYTES:
        return ValueError(f"a commit of {size:,} bytes exceeds the limit of {MAX_COMMIT_BYTES:,}")
    return None


def plain_events(events: Sequence[object], type_names: dict[str, bytes]) -> list[ValidEvent] | None:
    """The events as `ValidEvent`s when every one is *plain*: a `NewEvent` whose type is in
    `type_names` (a cache of checked type names), with bytes data and metadata of at most
    MAX_EVENT_BYTES together, no id, no tags and a schema in 0..MAX_SCHEMA. None otherwise: the
    caller then validates them fully (and says what is wrong). `encode_plain` of both log
    implementations accepts exactly these events."""
    out: list[ValidEvent] = []
    add = out.append
    for e in events:
        if type(e) is not NewEvent:
            return None
        t = e.type
        tb = type_names.get(t) if type(t) is str else None
        d, m, s = e.data, e.metadata, e.schema
        if (tb is None or type(d) is not bytes or type(m) is not bytes or e.id is not None or e.tags
                or type(s) is not int or not 0 <= s <= MAX_SCHEMA or len(d) + len(m) > MAX_EVENT_BYTES):
            return None
        add((tb, d, m, None, s, b""))
    return out if out else None


def plain_fields(names: Sequence[object], datas: Sequence[object], metadatas: Sequence[object],
                 type_names: dict[str, bytes]) -> list[ValidEvent] | None:
    """As `plain_events`, for events given as parallel sequences of their type names, data and
    metadata (schema 1, no id, no tags); None when one is not plain."""
    out: list[ValidEvent] = []
    add = out.append
    for t, d, m in zip(names, datas, metadatas):
        tb = type_names.get(t) if type(t) is str else None
        if tb is None or type(d) is not bytes or type(m) is not bytes or len(d) + len(m) > MAX_EVENT_BYTES:
            return None
        add((tb, d, m, None, 1, b""))
    return out if out else None
