"""The indexer: one path from a commit (encoded by the writer, or found by scanning the log) to the
index entries it adds, and the in-memory stream heads the writer checks against.

Live writes and rebuilds go through the same functions (`index_commit_rows`, `index_control`), so
an index built as the store runs equals one rebuilt from the log (tests/test_index_differential.py
checks this key by key).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from evstore.format.layout import (
    FLAG_CALLER_ID,
    FLAG_UUID_STREAM,
    HEADER,
    HEADER_SIZE,
    KIND_EVENT,
    KIND_MARK,
    KIND_SNAPSHOT,
    KIND_TRACKING,
)
from evstore.format.encode import ControlRecord, EncodedCommit
from evstore.storage.index import (
    CHECKPOINT,
    COMMIT_KEY,
    EXTENT_KEY,
    EXTENT_VAL,
    HEAD_CLOSED,
    HEAD_TOMBSTONE,
    SNAPSHOT_VAL,
    TAG_VAL,
    TYPE_KEY,
    U32,
    U64,
    Head,
    Index,
    IndexBatch,
    max_tracking,
)
from evstore.storage.postings import CATEGORY_VAL, category_of_key, category_postings_of, category_prefix, stream_hash
from evstore.storage.segfile import Commit
from evstore.storage.segments import Log

if TYPE_CHECKING:
    from evstore.engine.core import Core

MARK_STATE = b"$state"
MARK_CLOSED = b"$closed"
MARK_DELETED = b"$deleted"
MARK_TOMBSTONE = b"$tombstone"

# The header fields indexing needs, without the 16-byte id: length, kind, flags, type_len, stream_len,
# tags_len, position, version, meta_len.
_SLIM = struct.Struct("<4xIBBHHHQQ8x16x4xI")
assert _SLIM.size == HEADER_SIZE

Run = tuple[bytes, int, int, int, int]  # stream key, first version, last version, offset, bytes


class Indexer:
    """Index entries of commits, and the heads, tracking positions and type ids they change.

    Every field is guarded by the writer lock in a writing store (the writer and catch-up are its
    only users); a read-only store uses it only while opening."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.heads: dict[bytes, Head] = {}  # stream key -> head, a cache of `heads` plus unindexed changes
        self.tracking: dict[bytes, int] = {}  # upstream name -> largest tracked position (cache)
        self.next_stream = 1  # the number the next new stream gets
        self.type_ids: dict[bytes, int] = {}  # type name -> id

    @property
    def index(self) -> Index:
        return self.core.index

    def load(self) -> tuple[tuple[int, int, int] | None, tuple[int, int, int, int, int] | None]:
        """Read the counters and type ids from the index; returns (checkpoint, last indexed commit)."""
        index = self.index
        with index.begin() as txn:
            checkpoint = index.get_checkpoint(txn)
            self.next_stream = index.counter(txn, b"next_stream") or 1
            self.type_ids = {name: tid for name, tid in index.iter_typenames(txn)}
            last = index.last_commit(txn)
        self.heads = {}
        self.tracking = {}
        return checkpoint, last

    def catch_up(self, log: Log, checkpoint: tuple[int, int, int] | None, readonly: bool,
                 unsynced_tail: bool = False) -> int:
        """Index every commit the log holds past `checkpoint`; returns how many. The log is synced
        before the first index transaction: never make the index durable ahead of the log."""
        batch = IndexBatch()
        n = 0
        events = 0
        synced = False
        for c in log.recover(checkpoint, unsynced_tail):
            self.index_scanned(batch, c)
            n += 1
            events += c.n_events
            if events >= 50_000 and not readonly:
                if not synced:
                    log.sync_all()
                    synced = True
                self.index.write(batch)
                batch = IndexBatch()
                events = 0
        if n and not readonly:
            if not synced:
                log.sync_all()
            self.index.write(batch)
        if n and readonly:
            self.heads = {}
        return n

    # -- from the log ------------------------------------------------------------------------

    def index_scanned(self, batch: IndexBatch, c: Commit) -> None:
        """Add the index entries of a commit found in the log (catch-up and rebuild)."""
        buf = c.segment.buffer(c.end)
        unpack = _SLIM.unpack_from
        rows = []
        controls = []
        for o in c.records[:-1]:
            ln, kind, flags, tl, sl, gl, pos, ver, ml = unpack(buf, o)
            s = o + HEADER_SIZE
            t = s + sl
            key = (b"u" if flags & FLAG_UUID_STREAM else b"s") + buf[s:t]
            if kind == KIND_EVENT:
                caller = bytes(buf[o + 40 : o + 56]) if flags & FLAG_CALLER_ID else None
                rows.append((key, ver, buf[t : t + tl], caller, pos, o, ln))
                if gl:
                    g = t + tl + ml
                    self.index_tags(batch, c.segment.first, [(bytes(buf[g : g + gl]), pos, o)])
            else:
                controls.append(o)
        self.index_rows(batch, c.segment.first, c.offset, c.end, c.first_position, c.n_events, rows)
        for o in controls:
            self.index_control(batch, control_at(buf, o), c.segment.first, o)
        batch.checkpoint = CHECKPOINT.pack(c.segment.first, c.end, c.first_position + c.n_events)

    def index_rows(self, batch: IndexBatch, seg: int, commit_off: int, commit_end: int, first_position: int,
                   n_events: int, rows: list[tuple[bytes, int, bytes, bytes | None, int, int, int]]) -> None:
        """Index entries of one commit's events found in the log: rows of (stream key, version, type,
        caller id, position, offset, length), in log order (grouped into runs for `index_runs`)."""
        runs: list[Run] = []
        types: dict[bytes, None] = {}
        ids = []
        key = None
        for k, version, tb, idb, pos, off, ln in rows:
            if k != key or version != runs[-1][2] + 1:
                runs.append((k, version, version, off, ln))
                key = k
            else:
                k0, v0, _v1, o0, nb = runs[-1]
                runs[-1] = (k0, v0, version, o0, nb + ln)
            types[tb] = None
            if idb is not None:
                ids.append((idb, pos))
        self.index_runs(batch, seg, commit_off, commit_end, first_position, n_events, runs, types, ids)

    # -- from the writer ---------------------------------------------------------------------

    def index_encoded(self, batch: IndexBatch, seg: int, off: int, enc: EncodedCommit,
                      controls: Iterable[ControlRecord], heads: dict[bytes, Head | None] | None = None) -> None:
        """Add the index entries of a commit the writer just wrote at (`seg`, `off`); `heads` are its
        streams' heads as the writer's checks found them (None: new), so that none is looked up again."""
        end = off + len(enc.buf)
        self.index_runs(batch, seg, off, end, enc.first_position, enc.n_events,
                        [(k, v0, v1, o + off, nb) for k, v0, v1, o, nb in enc.runs], enc.types, enc.ids, heads)
        if enc.tagged:
            self.index_tags(batch, seg, [(gb, ps, o + off) for gb, ps, o in enc.tagged])
        for x, xo in zip(controls, enc.control_offsets):
            self.index_control(batch, x, seg, off + xo)
        batch.checkpoint = CHECKPOINT.pack(seg, end, enc.first_position + enc.n_events)

    def index_run(self, batch: IndexBatch, seg: int, off: int, enc: EncodedCommit, head: Head | None) -> None:
        """`index_encoded` of a commit of one stream's events and nothing else (no ids, tags or control records),
        whose head the writer's checks found (`head`; None: a new stream): the same entries, made
        without the general loops (tests/test_index_differential.py compares them)."""
        key, v0, v1, o, nbytes = enc.runs[0]
        fp = enc.first_position
        n = enc.n_events
        size = len(enc.buf)
        end = off + size
        h = head if head is not None else self.head_or_new(batch, key, {key: None})
        h.version = v1
        where = EXTENT_VAL.pack(seg, off, n, size)
        pk = COMMIT_KEY.pack(fp)
        batch.commits.append((pk, where))
        batch.extents.append((EXTENT_KEY.pack(h.num, v0), EXTENT_VAL.pack(seg, off + o, n, nbytes)))
        batch.heads[key] = h.pack()
        type_ids = self.type_ids
        for tb in enc.types:
            tid = type_ids.get(tb)
            batch.types.append((TYPE_KEY.pack(tid if tid is not None else self.type_id(tb, batch), fp), where))
        cat = category_of_key(key)
        if cat is not None:
            batch.categories.append((category_prefix(cat) + pk, CATEGORY_VAL.pack(
                seg, off, n, size, n, stream_hash(key[1:]), 1)))
        batch.checkpoint = CHECKPOINT.pack(seg, end, fp + n)

    # -- shared by both ----------------------------------------------------------------------

    def index_runs(self, batch: IndexBatch, seg: int, commit_off: int, commit_end: int, first_position: int,
                   n_events: int, runs: list[Run], types: Iterable[bytes], ids: list[tuple[bytes, int]],
                   heads: dict[bytes, Head | None] | None = None) -> None:
        """Index entries of one commit: runs of one stream's consecutive events (stream key, first and
        last version, offset, bytes), the types it holds and the caller-given ids (id, position). Streams
        get one extent per run; types and categories one posting per commit that holds them (a read by
        type scans those commits in C with the type filter; a category posting also counts the
        category's events, so that a commit of that category alone is read without a filter). Updates
        the in-memory heads."""
        if not n_events:
            return
        where = EXTENT_VAL.pack(seg, commit_off, n_events, commit_end - commit_off)
        batch.commits.append((COMMIT_KEY.pack(first_position), where))
        for key, v0, v1, off, nbytes in runs:
            h = self.head_or_new(batch, key, heads)
            h.version = v1
            batch.extents.append((EXTENT_KEY.pack(h.num, v0), EXTENT_VAL.pack(seg, off, v1 - v0 + 1, nbytes)))
            batch.heads[key] = h.pack()
        for tb in types:
            batch.types.append((TYPE_KEY.pack(self.type_id(tb, batch), first_position), where))
        pk = COMMIT_KEY.pack(first_position)
        for cat, (k, sh, one) in category_postings_of((r[0], r[1], r[2]) for r in runs).items():
            batch.categories.append((category_prefix(cat) + pk, CATEGORY_VAL.pack(
                seg, commit_off, n_events, commit_end - commit_off, k, sh, one)))
        for idb, pos in ids:
            batch.ids.append((idb, U64.pack(pos)))

    @staticmethod
    def index_tags(batch: IndexBatch, seg: int, tagged: list[tuple[bytes, int, int]]) -> None:
        """Tag index entries of events: (tags part, position, offset) each."""
        for gb, pos, off in tagged:
            loc = TAG_VAL.pack(seg, off)
            pk = b"\x00" + COMMIT_KEY.pack(pos)
            i = 0
            while i < len(gb):
                n = gb[i]
                batch.tags.append((gb[i + 1 : i + 1 + n] + pk, loc))
                i += 1 + n

    def index_control(self, batch: IndexBatch, x: ControlRecord, seg: int = 0, off: int = 0) -> None:
        """Index entries and in-memory state of one non-event record (live writes and catch-up alike).

        `seg`, `off` locate the record in the log (snapshots are indexed by where they are)."""
        kind = x.kind
        if kind == KIND_TRACKING:
            batch.extra.append((b"tracking", x.stream + b"\x00" + COMMIT_KEY.pack(x.version), b""))
            if x.version > self.tracking_max(x.stream):
                self.tracking[x.stream] = x.version
        elif kind == KIND_MARK:
            key = (b"u" if x.stream_flags & FLAG_UUID_STREAM else b"s") + x.stream
            h = self.head_or_new(batch, key)
            name = x.name
            if name == MARK_STATE:
                h.state = x.data.decode("utf-8") or None
            elif name == MARK_CLOSED:
                h.flags |= HEAD_CLOSED
            elif name == MARK_DELETED:
                h.hidden = max(h.hidden, x.version)
                h.state = None  # the lifecycle starts again with the stream's visible history
            elif name == MARK_TOMBSTONE:
                h.flags |= HEAD_TOMBSTONE
                h.hidden = max(h.hidden, x.version)
                h.state = None
            batch.heads[key] = h.pack()
        elif kind == KIND_SNAPSHOT:
            key = (b"u" if x.stream_flags & FLAG_UUID_STREAM else b"s") + x.stream
            h = self.head_or_new(batch, key)
            batch.extra.append((b"snapshots", EXTENT_KEY.pack(h.num, x.version), SNAPSHOT_VAL.pack(seg, off)))

    def head_or_new(self, batch: IndexBatch, key: bytes, known: dict[bytes, Head | None] | None = None) -> Head:
        """The head of stream `key`, created (with a new stream number) when the stream is new.
        `known`: heads the caller already looked up (None: new), by key."""
        h = known[key] if known is not None and key in known else self.head_of(key)
        if h is None:
            h = self.heads[key] = Head(self.next_stream)
            self.next_stream += 1
            batch.counters[b"next_stream"] = U64.pack(self.next_stream)
        return h

    def head_of(self, key: bytes) -> Head | None:
        """The writer's view of a stream's head: the in-memory one, else the index's (cached)."""
        h = self.heads.get(key)
        if h is None:
            index = self.index
            with index.begin() as t:
                raw = t.get(key, db=index.db["heads"])
            if raw is None:
                return None
            h = Head.unpack(raw)
            self.heads[key] = h
        return h

    def tracking_max(self, name: bytes) -> int:
        """The largest tracked position of upstream `name` (0 when none), for the writer."""
        v = self.tracking.get(name)
        if v is None:
            with self.index.begin() as txn:
                v = max_tracking(self.index, txn, name) or 0
            self.tracking[name] = v
        return v

    def type_id(self, tb: bytes, batch: IndexBatch) -> int:
        tid = self.type_ids.get(tb)
        if tid is None:
            tid = len(self.type_ids) + 1
            self.type_ids[tb] = tid
            batch.typenames.append((tb, U32.pack(tid)))
        return tid


def control_at(buf: Any, off: int) -> ControlRecord:
    """The non-event record at `off` of a mapped, verified commit."""
    h = HEADER.unpack_from(buf, off)
    s = off + HEADER_SIZE
    sb = bytes(buf[s : s + h[5]])
    tb = bytes(buf[s + h[5] : s + h[5] + h[4]])
    d = s + h[5] + h[4] + h[12] + h[6]
    return ControlRecord(h[2], sb, h[3] & FLAG_UUID_STREAM, tb, h[8], bytes(buf[d : off + h[1]]), h[11])
