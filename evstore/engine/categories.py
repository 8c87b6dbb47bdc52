"""Reads by category: the commits a category's postings name (evstore.storage.postings), scanned and
verified by the log implementation, in position order.

A posting names a whole commit and counts the category's events in it. Consecutive postings of
commits that follow each other in one segment are scanned as one region (one call into the log
implementation for up to `REGION_EVENTS` events); a commit whose events are all of the category is
taken whole, and only a commit that mixes categories has its records' stream ids looked at. The
postings are read a page at a time, each page in its own read transaction: postings at or below the
read's stop position never change, so the pages form one consistent snapshot.

Thread-safety: no state of its own.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from evstore.format.layout import FLAG_UUID_STREAM, HEADER, HEADER_SIZE, LogFormatError
from evstore.records import RecordedEvent
from evstore.storage.postings import CategoryLoc, category_postings, stream_hash
from evstore.storage.scan import commit_events

if TYPE_CHECKING:
    from evstore.engine.core import Core
    from evstore.engine.reader import QueryItems

Chunk = tuple[Any, list[int], int, int]  # mapping, record offsets, region start, region end
REGION_EVENTS = 8192  # events scanned at most per call into the log implementation
PAGE = 4096  # postings read per index transaction, at most
FIRST_PAGE = 64  # postings read first by a read with a limit
_STREAM = struct.Struct("<B2xH")  # a record's flags and stream id length, at offset 9 of its header


def page_size(limit: int | None, tfilter: tuple[bytes, ...] | None) -> int:
    """Postings to read first for a read of at most `limit` events: a page of `FIRST_PAGE` (each
    posting holds at least one event of its category, so fewer when the limit is lower); pages
    double from there up to `PAGE`."""
    return PAGE if limit is None else min(FIRST_PAGE, limit + 1)


def postings_page(core: Core, category: bytes, gt: int, stop: int, most: int) -> list[CategoryLoc]:
    """The next `most` of `category`'s postings after `gt` up to `stop`, in a read transaction."""
    index = core.index
    with index.begin() as txn:
        return category_postings(index, txn, category, gt, stop, most)


def in_category(buf: Any, offsets: list[int], prefix: bytes) -> list[int]:
    """The offsets of the event records whose stream id starts with `prefix` (a category and "-")."""
    n = len(prefix)
    unpack = _STREAM.unpack_from
    out = []
    for o in offsets:
        flags, sl = unpack(buf, o + 9)
        s = o + HEADER_SIZE
        if sl >= n and not flags & FLAG_UUID_STREAM and buf[s : s + n] == prefix:
            out.append(o)
    return out


def in_partition(buf: Any, offsets: list[int], part: tuple[int, int]) -> list[int]:
    """The offsets of the event records whose stream's `stream_hash` modulo n is i, for `part` = (i, n)."""
    i, n = part
    unpack = _STREAM.unpack_from
    out = []
    for o in offsets:
        sl = unpack(buf, o + 9)[1]
        s = o + HEADER_SIZE
        if stream_hash(buf[s : s + sl]) % n == i:
            out.append(o)
    return out


def partition_chunks(chunks: Iterator[Chunk], part: tuple[int, int], limit: int | None) -> Iterator[Chunk]:
    """`chunks` with only the events of member i of n's streams (`part`), at most `limit` of them."""
    left = -1 if limit is None else limit
    for buf, offsets, start, end in chunks:
        offsets = in_partition(buf, offsets, part)
        if left >= 0:
            del offsets[left:]
            left -= len(offsets)
        if offsets:
            yield buf, offsets, start, end
        if left == 0:
            return


def category_chunks(core: Core, first: list[CategoryLoc], most: int, category: bytes, gt: int, stop: int,
                    limit: int | None, tfilter: tuple[bytes, ...] | None,
                    part: tuple[int, int] | None = None) -> Iterator[Chunk]:
    """Chunks of the events of `category` (and of the types `tfilter`, if given; of the streams of
    member i of a group of n, for `part` = (i, n)) with positions in gt+1..stop, at most `limit`, from
    the postings page `first` (asked for `most` postings) on. A commit of one stream of another
    member is passed over without reading the log.

    Commits of the category alone (the common case: one stream's append) are verified with the log
    implementation's `walk_runs`, up to `REGION_EVENTS` events of one segment in one call: their
    events are their first records. A commit that mixes categories, lies across a bound, or is read
    with types is scanned on its own (whole commit verified, the type filter applied by the log
    implementation) and its records' stream ids looked at."""
    left = -1 if limit is None else limit
    prefix = category + b"-"
    position = HEADER.unpack_from
    segment = core.log.segment
    impl = core.impl
    damage = _reporter(core)
    runs = array("Q")  # (offset, events) of whole commits of the category in one segment, flat
    run_seg = -1
    run_events = 0
    run_start = run_end = 0

    def flush() -> Chunk:
        seg = segment(run_seg)
        buf = seg.buffer(run_end)
        try:
            offsets = impl.walk_runs(buf, runs, run_end)
        except LogFormatError as e:
            raise core.log_damage(seg.path, e.offset, str(e)) from None
        return buf, offsets, run_start, run_end

    page = first
    while page:
        for p, seg_first, off, count, nbytes, k, h, one in page:
            if part is not None and one and h % part[1] != part[0]:
                continue
            whole = k == count and tfilter is None and gt < p and p + count - 1 <= stop
            if runs and (not whole or seg_first != run_seg):
                chunk = flush()
                runs, run_events = array("Q"), 0
                if left >= 0:
                    del chunk[1][left:]
                    left -= len(chunk[1])
                yield chunk
                if left == 0:
                    return
            if whole:
                if not runs:
                    run_seg, run_start = seg_first, off
                runs.append(off)
                runs.append(count)
                run_events += count
                run_end = off + nbytes
                if run_events >= REGION_EVENTS or 0 <= left <= run_events:
                    chunk = flush()
                    runs, run_events = array("Q"), 0
                    if left >= 0:
                        del chunk[1][left:]
                        left -= len(chunk[1])
                    yield chunk
                    if left == 0:
                        return
                continue
            seg = segment(seg_first)
            end = off + nbytes
            buf = seg.buffer(end)
            offsets = commit_events(impl, seg.path, buf, off, nbytes, p, count, tfilter, damage)
            if k != count:
                offsets = in_category(buf, offsets, prefix)
            if part is not None and not one:
                offsets = in_partition(buf, offsets, part)
            if p <= gt or p + count - 1 > stop:  # a commit across a bound: look at the positions
                offsets = [o for o in offsets if gt < position(buf, o)[7] <= stop]
            if left >= 0:
                del offsets[left:]
                left -= len(offsets)
            if offsets:
                yield buf, offsets, off, end
            if left == 0:
                return
        last = page[-1]
        after = last[0] + last[3] - 1
        if after >= stop or len(page) < most:
            break
        most = min(PAGE, most * 2)
        page = postings_page(core, category, after, stop, most)
    if runs:
        chunk = flush()
        if left >= 0:
            del chunk[1][left:]
        yield chunk


def _reporter(core: Core) -> Any:
    """The read path's reporter: damage is corruption (latched by the writer)."""

    def report(path: str, offset: int, reason: str, torn: bool) -> None:
        raise core.log_damage(path, offset, reason)

    return report


def query(core: Core, items: QueryItems, gt: int, lte: int | None, limit: int | None,
          category: bytes) -> list[RecordedEvent]:
    """`Reader.query` within a category: items without tags read the category's postings (with
    their types as the filter); items with tags read their tag postings, keeping the category's."""
    reader = core.reader
    found: dict[int, RecordedEvent] = {}
    prefix = category + b"-"
    position = HEADER.unpack_from
    for types, tags in items:
        if tags:
            for r in reader.query([(types, tags)], gt, lte, None):
                if type(r.stream) is str and r.stream.encode("utf-8").startswith(prefix):
                    found.setdefault(r.position, r)
            continue
        tf = None if types is None else tuple(sorted(types))
        plan = reader.all_plan(gt, lte, tf, category, None)
        if plan is None:
            continue
        for buf, offsets, _s, _e in reader.plan_chunks(plan, gt, None, tf):
            for o in offsets:
                found.setdefault(position(buf, o)[7], tuple.__new__(RecordedEvent, (buf, o, None)))
    out = [found[p] for p in sorted(found)]
    if limit is not None:
        del out[limit:]
    return out
