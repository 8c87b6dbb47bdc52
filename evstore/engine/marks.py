"""Stream marks and snapshots: the control records that close, delete and tombstone streams and save
their snapshots, each in a commit of its own; and pruning the snapshots' index entries.

Each writing function builds its records under the writer lock from the stream's current head
(`Writer.write_marks`), so the checks and the write are one atomic step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from evstore.storage import index as ix
from evstore.format.layout import KIND_MARK, KIND_SNAPSHOT
from evstore.engine.indexer import MARK_CLOSED, MARK_DELETED, MARK_TOMBSTONE
from evstore.errors import StreamDeleted
from evstore.format.encode import ControlRecord
from evstore.storage.index import HEAD_CLOSED, HEAD_TOMBSTONE, Head, IndexBatch, stream_key
from evstore.records import RecordedEvent, Stream
from evstore.snapshots import Loaded, Snapshot

if TYPE_CHECKING:
    from evstore.engine.core import Core


def close_stream(core: Core, stream: Stream, stored: bytes, flags: int) -> None:
    """Write a `$closed` mark (nothing when already closed). Raises StreamDeleted when tombstoned."""

    def make(h: Head | None) -> list[ControlRecord]:
        if h is not None and h.flags & HEAD_TOMBSTONE:
            raise StreamDeleted(stream)
        if h is not None and h.flags & HEAD_CLOSED:
            return []
        return [ControlRecord(KIND_MARK, stored, flags, MARK_CLOSED, 0 if h is None else h.version, b"", 0)]

    core.writer.write_marks(stream_key(stream), make)


def delete_stream(core: Core, stream: Stream, stored: bytes, flags: int, tombstone: bool) -> None:
    """Write a `$deleted` (soft) or `$tombstone` mark at the stream's current version. A soft delete
    of a stream with nothing visible writes nothing. Raises StreamDeleted when tombstoned."""

    def make(h: Head | None) -> list[ControlRecord]:
        if h is not None and h.flags & HEAD_TOMBSTONE:
            raise StreamDeleted(stream)
        version = 0 if h is None else h.version
        if tombstone:
            return [ControlRecord(KIND_MARK, stored, flags, MARK_TOMBSTONE, version, b"", 0)]
        if h is None or (version <= h.hidden and h.state is None):
            return []
        return [ControlRecord(KIND_MARK, stored, flags, MARK_DELETED, version, b"", 0)]

    core.writer.write_marks(stream_key(stream), make)


def save_snapshot(core: Core, stream: Stream, stored: bytes, flags: int, version: int, type_name: bytes,
                  data: bytes, schema: int) -> None:
    """Write a SNAPSHOT record of the stream at `version`, which must be visible (above a soft delete,
    at most the stream's version). Raises ValueError otherwise, StreamDeleted when tombstoned."""

    def make(h: Head | None) -> list[ControlRecord]:
        if h is not None and h.flags & HEAD_TOMBSTONE:
            raise StreamDeleted(stream)
        current = 0 if h is None else h.version
        low = 1 if h is None else h.hidden + 1  # at or below a soft delete it could never be loaded
        if not low <= version <= current:
            raise ValueError(f"a snapshot of {stream!r} must be at a visible version in {low}..{current}, "
                             f"not {version}")
        return [ControlRecord(KIND_SNAPSHOT, stored, flags, type_name, version, data, schema)]

    core.writer.write_marks(stream_key(stream), make)


def prune_snapshots(core: Core, num: int | None, keep: int) -> int:
    """Drop the index entries of all but the newest `keep` snapshots of stream number `num` (of every
    stream when None); returns how many were dropped. The log keeps their bytes."""
    index = core.index
    with index.begin() as txn:
        per = ix.snapshot_keys(index, txn, num)
    batch = IndexBatch()
    for keys in per.values():
        for k in keys[: max(len(keys) - keep, 0)]:
            batch.extra.append((b"snapshots", k, None))
    if batch.extra:
        with core.wlock, core.group.index_lock:
            core.index.write(batch)
    return len(batch.extra)


def load(core: Core, stream: Stream, h: Head | None, read_stream: Callable[..., list[RecordedEvent]],
         save_snapshot: Callable[..., None] | None, apply: Callable[[Any, RecordedEvent], Any], initial: Any,
         decode_snapshot: Callable[[Snapshot], Any] | None, schema: int, snapshot_every: int | None,
         encode_snapshot: Callable[[Any], bytes] | None, snapshot_type: str) -> Loaded[Any]:
    """`EventStore.load` of the stream whose head is `h`: `fold`, then a new snapshot through
    `save_snapshot` (None: a read-only handle) when more than `snapshot_every` events were replayed.
    Raises ValueError for a bad snapshot_every, StreamDeleted when tombstoned."""
    if snapshot_every is not None and (type(snapshot_every) is not int or snapshot_every < 0
                                       or encode_snapshot is None):
        raise ValueError("snapshot_every needs an int >= 0 and an encode_snapshot function")
    if h is None:
        return Loaded(initial, 0)
    if h.flags & HEAD_TOMBSTONE:
        raise StreamDeleted(stream)
    version = h.version
    state, n = fold(core, stream, h, lambda gt: read_stream(stream, gt=gt, lte=version), apply, initial,
                    decode_snapshot, schema)
    if (snapshot_every is not None and n > snapshot_every and save_snapshot is not None
            and encode_snapshot is not None and version > 0):
        save_snapshot(stream, version, encode_snapshot(state), type=snapshot_type, schema=schema)
    return Loaded(state, version)


def fold(core: Core, stream: Stream, h: Head, read_after: Callable[[int], list[RecordedEvent]],
         apply: Callable[[Any, RecordedEvent], Any], initial: Any,
         decode_snapshot: Callable[[Snapshot], Any] | None, schema: int) -> tuple[Any, int]:
    """(state, events replayed): `apply` over the stream's events after its newest snapshot of
    `schema` (decoded by `decode_snapshot`; none: from `initial` after the delete watermark), read by
    `read_after(version)`."""
    state = initial
    start = h.hidden
    if decode_snapshot is not None:
        for snap in core.reader.snapshots(stream, h, None):
            if snap.schema == schema:
                state = decode_snapshot(snap)
                start = snap.version
                break
    n = 0
    for e in read_after(start):
        state = apply(state, e)
        n += 1
    return state, n
