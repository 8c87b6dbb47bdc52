"""Encoding a commit: from validated parts and control records to the sealed bytes of the log, and
the offsets the index needs. A pure function — no I/O, no store state — that the C encoder will
replace; the log implementations' `seal` computes the checksums.

See docs/log_format.md for the layout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

from evstore.format.layout import COMMIT_SIZE, FLAG_CALLER_ID, HEADER, HEADER_SIZE, KIND_COMMIT, KIND_EVENT
from evstore.records import AppendResult, Stream

MAX_COMMIT_BYTES = 256 << 20
MAX_VERSION = (1 << 63) - 1

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

_ZERO_ID = bytes(16)
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


def encode_commit(seal: Callable[[bytearray], None], parts: Sequence[PartToEncode],
                  controls: Sequence[ControlRecord], first_position: int, ts: int) -> EncodedCommit:
    """The bytes of one commit: each part's events (versions after its `version`, positions from
    `first_position`), then the control records, then the COMMIT record; sealed by `seal`.

    Raises ValueError when a stream would pass the largest version or the commit the size limit."""
    pos = first_position
    chunks: list[bytes] = []
    add = chunks.extend
    results = []
    runs: list[tuple[bytes, int, int, int, int]] = []
    types: dict[bytes, None] = {}
    ids: list[tuple[bytes, int]] = []
    tagged: list[tuple[bytes, int, int]] = []
    offset = 0
    n_random = sum(1 for p in parts for e in p.events if e[3] is None)
    rnd = random_ids(n_random) if n_random else b""
    r = 0
    pack = HEADER.pack
    for p in parts:
        sb, slen, sflag = p.stored, len(p.stored), p.flags
        ver = p.version
        if ver + len(p.events) > MAX_VERSION:
            raise ValueError(f"stream {p.stream!r} would pass the largest version {MAX_VERSION}")
        v0 = ver + 1
        first = pos
        start = offset
        for tb, data, meta, idb, schema, gb in p.events:
            ver += 1
            if idb is None:
                idb = rnd[r : r + 16]
                r += 16
                flags = sflag
            else:
                flags = sflag | FLAG_CALLER_ID
                ids.append((idb, pos))
            tl = len(tb)
            ml = len(meta)
            gl = len(gb)
            ln = HEADER_SIZE + slen + tl + ml + gl + len(data)
            add((pack(0, ln, KIND_EVENT, flags, tl, slen, gl, pos, ver, ts, idb, schema, ml), sb, tb, meta, gb, data))
            if tb not in types:
                types[tb] = None
            if gl:
                tagged.append((gb, pos, offset))
            offset += ln
            pos += 1
        runs.append((p.key, v0, ver, start, offset - start))
        results.append(AppendResult(p.stream, v0, ver, first, pos - 1))
    n_events = pos - first_position
    records = n_events
    control_offsets = []
    for x in controls:
        control_offsets.append(offset)
        ln = HEADER_SIZE + len(x.stream) + len(x.name) + len(x.data)
        add((pack(0, ln, x.kind, x.stream_flags, len(x.name), len(x.stream), 0, pos, x.version, ts, _ZERO_ID,
                  x.schema, 0), x.stream, x.name, x.data))
        offset += ln
        records += 1
    if offset > MAX_COMMIT_BYTES:
        raise ValueError(f"a commit of {offset:,} bytes exceeds the limit of {MAX_COMMIT_BYTES:,}")
    add((pack(0, COMMIT_SIZE, KIND_COMMIT, 0, 0, 0, 0, first_position, n_events, ts, _ZERO_ID, records, 0),
         offset.to_bytes(8, "little")))
    buf = bytearray().join(chunks)
    seal(buf)
    return EncodedCommit(buf, first_position, n_events, results, runs, types, ids, tagged, control_offsets)
