"""The reader: every read of the store, composed from index lookups (evstore.storage.index's typed readers)
and verified log records (the log implementation's `walk` and `scan`).

A read fixes its snapshot — an LMDB read transaction and the checkpoint it names — before it returns;
lazy iterators then read only the log, whose sealed segments never change. Damage met in the log is
reported through `Core.log_damage` (the writer then refuses appends).

Thread-safety: any number of threads read at once; the one state, the cache of small streams read
before (engine/streamcache.py), has its own lock.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from evstore.engine import categories
from evstore.engine.overlay import merge_extents
from evstore.engine.streamcache import MAX_STREAM, Entry, StreamCache
from evstore.storage import index as ix
from evstore.storage import postings
from evstore.format.layout import HEADER, HEADER_SIZE, LogFormatError
from evstore.errors import StreamDeleted
from evstore.storage.index import HEAD_TOMBSTONE, Extent, Head, stream_key
from evstore.storage.scan import SegmentScanner, commit_events
from evstore.records import RecordedEvent, Stream
from evstore.snapshots import Snapshot, decode_snapshot

if TYPE_CHECKING:
    from evstore.engine.core import Core

new_record = tuple.__new__
Chunk = tuple[Any, list[int], int, int]  # mapping, record offsets, region start, region end
StreamChunk = tuple[Any, Sequence[int], int, int]  # a Chunk of a stream read (offsets may be shared: do not change)
QueryItems = list[tuple["frozenset[bytes] | None", tuple[bytes, ...]]]
_PAGE = mmap.PAGESIZE
SCAN_BATCH = 8192  # events per scanned chunk of the log (fewer for a caller that must not hold its thread)


class Reader:
    """Reads of one store (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.cache = StreamCache()  # small streams read before (its own lock)

    # -- verified records ------------------------------------------------------------------

    def walk(self, seg: int, buf: Any, off: int, count: int, end: int) -> list[int]:
        """Offsets of `count` records from `off` in segment `seg`, each verified."""
        core = self.core
        try:
            return core.impl.walk(buf, off, count, end)  # type: ignore[no-any-return]
        except LogFormatError as e:
            raise core.log_damage(core.log.segment(seg).path, e.offset, str(e)) from None

    def record(self, seg: int, off: int) -> RecordedEvent:
        """The verified event record at (segment, offset)."""
        s = self.core.log.segment(seg)
        buf = s.buffer(off + HEADER_SIZE)
        n = HEADER.unpack_from(buf, off)[1]
        if off + n > len(buf):
            buf = s.buffer(off + n)
        self.walk(seg, buf, off, 1, off + n)
        return new_record(RecordedEvent, (buf, off, None))

    def record_at(self, position: int) -> RecordedEvent | None:
        """The event at a global position (indexed commits only), or None."""
        index = self.core.index
        with index.begin() as txn:
            c = ix.commit_holding(index, txn, position)
        if c is None:
            return None
        first, seg, off, _n, nbytes = c
        buf = self.core.log.segment(seg).buffer(off + nbytes)
        offsets = self.walk(seg, buf, off, position - first + 1, off + nbytes)
        return new_record(RecordedEvent, (buf, offsets[-1], None))

    # -- heads -----------------------------------------------------------------------------

    def head_of(self, stream: Stream) -> Head | None:
        """The head of `stream` (a checked stream id) as of its last durable commit, or None."""
        key = stream_key(stream)
        ov = self.core.group.overlay.stream(key)
        if ov is not None:
            return Head.unpack(ov[0])
        index = self.core.index
        with index.begin() as txn:
            return ix.head(index, txn, key)

    def last_position(self) -> int:
        """The position of the last indexed event (0 when none)."""
        index = self.core.index
        with index.begin() as txn:
            cp = index.get_checkpoint(txn)
        return 0 if cp is None else cp[2] - 1

    # -- streams ---------------------------------------------------------------------------

    def stream_chunks(self, key: bytes, stream: Stream, gt: int | None, lte: int | None, desc: bool,
                      limit: int | None) -> list[StreamChunk]:
        """The chunks (see `extent_chunks`) of a read of versions gt < v <= lte of `stream` (index key
        `key`; at most `limit`, from the end with `desc`). Raises StreamDeleted when tombstoned.

        One read transaction, or none for a small stream read before (engine/streamcache.py); the
        head and extents of commits not indexed yet come from the overlay."""
        core = self.core
        index = core.index
        ov = core.group.overlay.stream(key)  # before the generation and the transaction (streamcache.py)
        generation = index.generation
        kept = None
        if ov is None and gt is None and lte is None and limit is None:
            kept = self.cache.get(key, index)
            if kept is not None and kept[1] == generation and not core.readonly:
                return self.kept_chunks(kept)
        txn = index.read_begin()
        try:
            if ov is None:
                raw = ix.head_raw(index, txn, key)
                if raw is None:
                    return []
                if kept is not None and raw == kept[2]:  # the head is the one the entry was read under
                    if not core.readonly:
                        self.cache.put(key, index, generation, raw, kept[3])
                    return self.kept_chunks(kept)
            else:
                raw = ov[0]
            num, version, hidden, flags = ix.head_fields(raw)
            if flags & HEAD_TOMBSTONE:
                raise StreamDeleted(stream)
            lo = (hidden if gt is None or gt < hidden else gt) + 1
            hi = version if lte is None or lte > version else lte
            if lo > hi or limit == 0:
                return []
            if limit is not None:  # versions are contiguous: fetch only the records asked for
                if desc:
                    lo = max(lo, hi - limit + 1)
                else:
                    hi = min(hi, lo + limit - 1)
            found = ix.extents(index, txn, num, lo, hi)
        finally:
            index.read_end(txn)
        if ov is not None:
            if ov[1]:
                found = merge_extents(found, ov[1], lo, hi)
            return self.extent_chunks(found, lo, hi)  # type: ignore[return-value]
        if gt is None and lte is None and limit is None and hi - lo < MAX_STREAM and self.cache.admit(key):
            return self.keep(key, index, generation, raw, found, lo, hi)
        return self.extent_chunks(found, lo, hi)  # type: ignore[return-value]

    def keep(self, key: bytes, index: ix.Index, generation: int, raw: bytes, extents: list[Extent], lo: int,
             hi: int) -> list[StreamChunk]:
        """`extent_chunks` of a whole read of a small stream, kept in the cache."""
        segment = self.core.log.segment
        parts = []
        out: list[StreamChunk] = []
        for v, seg_first, off, count, nbytes in extents:
            if v + count <= lo:
                continue
            seg = segment(seg_first)
            end = off + nbytes
            buf = seg.buffer(end)
            offsets = self.walk(seg_first, buf, off, min(hi - v + 1, count), end)
            if v < lo:
                del offsets[: lo - v]
            parts.append((seg, tuple(offsets), off, end))
            out.append((buf, offsets, off, end))
        self.cache.put(key, index, generation, raw, tuple(parts))
        return out

    def kept_chunks(self, kept: Entry) -> list[StreamChunk]:
        """The chunks of a cache entry, through each segment's current mapping."""
        return [(seg.buffer(end), offsets, start, end) for seg, offsets, start, end in kept[3]]

    def extents(self, num: int, lo: int, hi: int) -> list[Extent]:
        index = self.core.index
        with index.begin() as txn:
            return ix.extents(index, txn, num, lo, hi)

    def extent_chunks(self, extents: list[Extent], lo: int, hi: int) -> list[Chunk]:
        """(mapping, record offsets, region start, region end) of versions lo..hi held by `extents`,
        verified by the log implementation: the raw form of a stream read."""
        out = []
        core = self.core
        segment = core.log.segment
        for v, seg, off, count, nbytes in extents:
            if v + count <= lo:
                continue
            buf = segment(seg).buffer(off + nbytes)
            upto = min(hi - v + 1, count)  # walk (and verify) no further than the last record wanted
            offsets = self.walk(seg, buf, off, upto, off + nbytes)
            out.append((buf, offsets[max(lo - v, 0) :], off, off + nbytes))
        return out

    def stream_records(self, extents: list[Extent], lo: int, hi: int, stream: Stream) -> list[RecordedEvent]:
        """The records of versions lo..hi held by `extents` (not upcast)."""
        out: list[RecordedEvent] = []
        for buf, offsets, _s, _e in self.extent_chunks(extents, lo, hi):
            out.extend([new_record(RecordedEvent, (buf, o, stream)) for o in offsets])
        return out

    # -- the log in position order -----------------------------------------------------------

    def all_plan(self, gt: int, lte: int | None, tfilter: tuple[bytes, ...] | None, category: bytes | None = None,
                 limit: int | None = None) -> Any:
        """How a read of the log after `gt` goes, fixed now: None (nothing to read), ("runs", commits
        holding the types, stop), ("category", its first postings, how many were asked for, the
        category, stop) or ("scan", segment, offset, first position there, stop)."""
        if tfilter == ():
            return None
        index = self.core.index
        with index.begin() as txn:
            cp = index.get_checkpoint(txn)
            if cp is None:
                return None
            stop = cp[2] - 1 if lte is None else min(lte, cp[2] - 1)
            if gt >= stop:
                return None
            if category is not None:
                most = categories.page_size(limit, tfilter)
                return ("category", postings.category_postings(index, txn, category, gt, stop, most), most, category,
                        stop)
            if tfilter is not None:
                return "runs", postings.type_postings(index, txn, tfilter, gt, stop), stop
            next_pos, seg_first, off = ix.scan_start(index, txn, gt)
        return "scan", seg_first, off, next_pos, stop

    def plan_chunks(self, plan: Any, gt: int, limit: int | None, tfilter: tuple[bytes, ...] | None,
                    part: tuple[int, int] | None = None, batch: int = SCAN_BATCH) -> Iterator[Chunk]:
        """The chunks of a plan from `all_plan` (not None); with `part` = (i, n), of the streams of
        member i of a group of n only (see `evstore.storage.postings.stream_hash`). A scanned chunk
        holds at most `batch` events (a whole commit's when it holds more), a chunk of a "runs" plan
        one commit's."""
        if plan[0] == "category":
            _kind, first, most, category, stop = plan
            return categories.category_chunks(self.core, first, most, category, gt, stop, limit, tfilter, part)
        if part is not None:
            return categories.partition_chunks(self.plan_chunks(plan, gt, None, tfilter, batch=batch), part, limit)
        if plan[0] == "runs":
            return self.run_chunks(plan[1], gt, plan[2], limit, tfilter or ())
        _kind, seg_first, off, next_pos, stop = plan
        return self.scan_chunks(seg_first, off, next_pos, gt, stop, limit, tfilter, batch)

    def run_chunks(self, runs: list[ix.CommitLoc], gt: int, stop: int, limit: int | None,
                   tfilter: tuple[bytes, ...]) -> Iterator[Chunk]:
        """The events of the given types in each listed commit (scanned and verified in C with the
        type filter), within gt < position <= stop."""
        core = self.core
        left = -1 if limit is None else limit
        unpack = HEADER.unpack_from
        for p, seg_first, off, count, nbytes in runs:
            seg = core.log.segment(seg_first)
            buf = seg.buffer(off + nbytes)
            offsets = commit_events(core.impl, seg.path, buf, off, nbytes, p, count, tfilter, self._damage)
            if p <= gt or p + count - 1 > stop:  # a commit across a bound: look at the positions
                offsets = [o for o in offsets if gt < unpack(buf, o)[7] <= stop]
            if left >= 0:
                del offsets[left:]
                left -= len(offsets)
            if offsets:
                yield buf, offsets, off, off + nbytes
            if left == 0:
                return

    def scan_chunks(self, seg_first: int, off: int, next_pos: int, gt: int, stop: int, limit: int | None,
                    tfilter: tuple[bytes, ...] | None, batch: int = 0) -> Iterator[Chunk]:
        """Scanned batches of event records (C: verify and filter whole commits) from `off` of segment
        `seg_first`, within gt < position <= stop, at most `limit`."""
        core = self.core
        log = core.log
        unpack = HEADER.unpack_from
        left = limit if limit is not None else -1
        seg = log.segment(seg_first)
        max_out = batch or SCAN_BATCH
        if limit is not None:
            max_out = min(max_out, limit + 16)  # a page reads little more than it returns
        while True:
            buf = seg.full_buffer()
            scanner = SegmentScanner(core.impl, seg.path, buf, len(buf), off, next_pos, last=False,
                                     report=self._damage)
            for offs, start, end in scanner.event_batches(tfilter, stop, max_out):
                if unpack(buf, offs[0])[7] <= gt:
                    offs = [o for o in offs if unpack(buf, o)[7] > gt]
                if offs and unpack(buf, offs[-1])[7] > stop:
                    offs = [o for o in offs if unpack(buf, o)[7] <= stop]
                if left >= 0:
                    del offs[left:]
                    left -= len(offs)
                yield buf, offs, start, end
                if left == 0:
                    return
                release(buf, start, end)
            off, next_pos = scanner.end, scanner.next_position
            if next_pos > stop or scanner.code:
                return
            segments = log.segments
            i = segments.index(seg)
            if i + 1 >= len(segments):
                log.load_segments()
                segments = log.segments
                if i + 1 >= len(segments):
                    raise core.log_damage(seg.path, off, f"the log ends before position {stop}")
            seg = segments[i + 1]
            off = 32

    def _damage(self, path: str, offset: int, reason: str, torn: bool) -> None:
        """The read path's reporter: damage is corruption (latched by the writer)."""
        raise self.core.log_damage(path, offset, reason)

    def read_range(self, gt: int, stop: int, limit: int | None) -> list[RecordedEvent]:
        """Every event with gt < position <= stop (at most `limit`), from the log."""
        index = self.core.index
        with index.begin() as txn:
            next_pos, seg_first, off = ix.scan_start(index, txn, gt)
        out: list[RecordedEvent] = []
        for buf, offs, _s, _e in self.scan_chunks(seg_first, off, next_pos, gt, stop, limit, None):
            out.extend([new_record(RecordedEvent, (buf, o, None)) for o in offs])
        return out

    # -- queries ---------------------------------------------------------------------------

    def query(self, items: QueryItems, gt: int, lte: int | None, limit: int | None,
              category: bytes | None = None) -> list[RecordedEvent]:
        """Events after `gt` (up to `lte`) matching any item (and of `category`), in position order: tag
        postings (for items with tags, checking type and the other tags from each candidate's header)
        or type postings (items with types only); an item with neither matches every event."""
        if category is not None:
            return categories.query(self.core, items, gt, lte, limit, category)
        index = self.core.index
        with index.begin() as txn:
            cp = index.get_checkpoint(txn)
            if cp is None:
                return []
            stop = cp[2] - 1 if lte is None else min(lte, cp[2] - 1)
            if gt >= stop:
                return []
            found: dict[int, RecordedEvent] = {}
            for types, tags in items:
                if not tags and types is None:
                    return self.read_range(gt, stop, limit)
                # The first `limit` matches of each item hold the first `limit` of their union:
                # an item's walk stops there, so that a page reads about what it returns.
                if not tags:
                    tf = tuple(sorted(types or ()))
                    runs = postings.type_postings(index, txn, tf, gt, stop)
                    for buf, offsets, _s, _e in self.run_chunks(runs, gt, stop, limit, tf):
                        for o in offsets:
                            found.setdefault(HEADER.unpack_from(buf, o)[7], new_record(RecordedEvent, (buf, o, None)))
                    continue
                matched = 0
                for pos, seg, off in postings.tag_postings(index, txn, tags[0], gt, stop):
                    if limit is not None and matched >= limit:
                        break
                    if pos in found:
                        continue
                    rec = self.record(seg, off)
                    if (types is None or rec.type.encode("utf-8") in types) and set(tags) <= tag_set(rec):
                        found[pos] = rec
                        matched += 1
        out = [found[p] for p in sorted(found)]
        if limit is not None:
            del out[limit:]
        return out

    # -- snapshots ---------------------------------------------------------------------------

    def snapshots(self, stream: Stream, h: Head, lte: int | None) -> Iterator[Snapshot]:
        """The stream's indexed snapshots at or below `lte` and above its delete watermark, newest first."""
        core = self.core
        hi = h.version if lte is None else min(lte, h.version)
        if hi <= h.hidden:
            return
        index = core.index
        with index.begin() as txn:
            locs = ix.snapshots_below(index, txn, h.num, hi, h.hidden)
        for seg_first, off in locs:
            seg = core.log.segment(seg_first)
            buf = seg.buffer(off + HEADER_SIZE)
            ln = HEADER.unpack_from(buf, off)[1]
            buf = seg.buffer(off + ln)
            self.walk(seg_first, buf, off, 1, off + ln)
            yield decode_snapshot(buf, off, stream)


def tag_set(rec: RecordedEvent) -> set[bytes]:
    return {t.encode("utf-8") for t in rec.tags}


def release(buf: Any, start: int, end: int) -> None:
    """Drop the mapped pages of a region a replay has moved past, so that replaying a large log keeps a
    flat resident size. Safe for records still held: their pages fault back in from the page cache."""
    a = (start + _PAGE - 1) // _PAGE * _PAGE
    b = end // _PAGE * _PAGE
    if b > a and isinstance(buf, mmap.mmap):
        try:
            buf.madvise(mmap.MADV_DONTNEED, a, b - a)
        except (OSError, ValueError):  # pragma: no cover - advice only
            pass


__all__ = ["Reader", "new_record", "release", "tag_set"]
