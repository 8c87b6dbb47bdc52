"""The one loop that scans the log's commits, and the torn-tail rule (docs/log_format.md).

Recovery on open, `verify`, `recover`, `export` and the benchmarks all scan through `SegmentScanner`;
what differs is the reporter they hand it for the damage it meets (LevelDB's `log::Reader` and its
`Reporter`): recovery raises `CorruptedError` unless the damage is a torn tail of the last segment,
`verify` collects it, `recover` salvages what comes before it. Reads of records found through the
index verify them with the log implementation's `walk`/`scan` and report damage the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, NamedTuple, Protocol

from evstore.format.layout import (COMMIT_SIZE, EFULL, ERROR_TEXT, HEADER, HEADER_SIZE, KIND_COMMIT, SEAL, SEAL_MAGIC,
                                   U64)
from evstore.errors import CorruptedError

ALL_KINDS = 0b1111110  # every kind 1..6
EVENT_KINDS = 1 << 1


class ScannedCommit(NamedTuple):
    """A whole commit found by scanning: where it is and the offsets of its records (COMMIT last)."""

    buf: Any  # the mapping it was found in
    offset: int
    end: int
    first_position: int
    n_events: int
    recorded_at_ns: int
    records: list[int]


class Reporter(Protocol):
    """What a scan does with damage at `offset` of `path` (`torn`: a torn tail, see `torn_tail`)."""

    def __call__(self, path: str, offset: int, reason: str, torn: bool) -> None: ...


def raise_unless_torn(path: str, offset: int, reason: str, torn: bool) -> None:
    """The reporter of recovery and readers: damage that is not a torn tail is corruption."""
    if not torn:
        raise CorruptedError(path, offset, reason)


_ZERO_HEADER = bytes(HEADER_SIZE)


def zero_header(buf: Any, off: int, size: int) -> bool:
    """Whether a record header of zero bytes starts at `off` (the end of a segment's commits, in
    space allocated ahead of them; docs/log_format.md). Bytes past `size` count as zero."""
    return bytes(buf[off : min(off + HEADER_SIZE, size)]) == _ZERO_HEADER[: max(0, min(HEADER_SIZE, size - off))]


def seal_marker(impl: ModuleType, off: int) -> bytes:
    """The seal marker a segment's writer puts at `off`, the end of its commits, when it seals it."""
    body = SEAL_MAGIC + U64.pack(off)
    return SEAL.pack(SEAL_MAGIC, off, impl.crc32c(body))


def sealed_at(impl: ModuleType, buf: Any, off: int, size: int) -> bool:
    """Whether a valid seal marker for offset `off` starts at `off`."""
    if off + SEAL.size > size:
        return False
    raw = bytes(buf[off : off + SEAL.size])
    magic, at, crc = SEAL.unpack(raw)
    return (raw[:8] == bytes(8) and magic == SEAL_MAGIC and at == off and impl.crc32c(raw[8:24]) == crc
            and raw[28:] == bytes(36))


def zeros_after(path: str, off: int) -> bool:
    """Whether every byte of the file from `off` to its end is zero. Read, not mapped: another
    process's mapping of the same pages is not faulted in, and pages of unwritten space cost no
    allocation."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        while True:
            chunk = os.pread(fd, 1 << 20, off)
            if not chunk:
                return True
            if chunk.count(0) != len(chunk):
                return False
            off += len(chunk)
    finally:
        os.close(fd)


def torn_tail(impl: ModuleType, buf: Any, good_end: int, err_off: int, size: int) -> bool:
    """Whether damage at `err_off` of a last segment, after whole commits up to `good_end`, is a torn
    tail: no valid COMMIT record follows it, or the only one that does ends the damaged commit itself
    (it starts at `good_end`: a power cut kept its last page and lost an earlier one) and no valid
    commit follows that. Anything else is corruption followed by committed data."""
    c = int(impl.find_commit(buf, err_off, size))
    if c < 0:
        return True
    body = U64.unpack_from(buf, c + HEADER_SIZE)[0]
    if c - body != good_end:
        return False
    return int(impl.find_commit(buf, c + COMMIT_SIZE, size)) < 0


class SegmentScanner:
    """Scan one segment's commits from `start`, expecting `next_position` first.

    Iterate it for the commits (with `kinds=0` the scan only checks and counts them, yielding
    nothing: the fastest verify). Afterwards `end`, `next_position`, `commits`, `events` describe the
    whole commits found and `code`, `err_off`, `torn` the damage that stopped the scan (`code` 0: none),
    which was handed to `report` (`torn` is only ever True for the `last` segment).

    `unsynced_from`: the offset of a last segment from which nothing was synced (a writer with
    durability="os" syncs only at index checkpoints, rolls and close): damage there is a torn tail
    even when whole commits follow it, since a power cut keeps any subset of the unsynced pages.

    The end of the commits: the end of `size`; the segment's seal marker; or, in the last segment, a
    record header of zero bytes where a commit would start; only zeros may follow either (space the
    writer allocated ahead of its tail). With `check_zeros=False` (readers, which never cut the log)
    that last clause is not checked; otherwise non-zero bytes there are damage like any other. A
    zero header in a sealed segment is damage: it ends at its seal marker (docs/log_format.md).
    """

    def __init__(self, impl: ModuleType, path: str, buf: Any, size: int, start: int, next_position: int, *,
                 last: bool, kinds: int = ALL_KINDS, report: Reporter = raise_unless_torn,
                 progress: Callable[[int], None] | None = None, unsynced_from: int | None = None,
                 check_zeros: bool = True) -> None:
        self.impl, self.path, self.buf, self.size = impl, path, buf, size
        self.kinds, self.last, self.report, self.progress = kinds, last, report, progress
        self.unsynced_from = unsynced_from  # of a last segment: where the bytes never synced begin
        self.check_zeros = check_zeros
        self.start = start
        self.end = start
        self.next_position = next_position
        self.commits = 0
        self.events = 0
        self.code = 0
        self.err_off = 0
        self.torn = False

    @property
    def reason(self) -> str:
        return ERROR_TEXT.get(self.code, f"error {self.code}")

    def __iter__(self) -> Iterator[ScannedCommit]:
        impl, buf, size, kinds = self.impl, self.buf, self.size, self.kinds
        off, nxt = self.end, self.next_position
        max_out = 65536 if kinds else 0
        unpack = HEADER.unpack_from
        while True:
            r = impl.scan(buf, off, size, next_position=nxt, kinds=kinds, max_out=max_out)
            if r.code == EFULL:  # one commit holds more records than the output array: grow it
                max_out *= 4
                continue
            if kinds:
                begin = 0
                offsets = r.offsets
                for j, o in enumerate(offsets):
                    if buf[o + 8] == KIND_COMMIT:  # the kind byte: no full header unpack per record
                        h = unpack(buf, o)
                        body = U64.unpack_from(buf, o + HEADER_SIZE)[0]
                        yield ScannedCommit(buf, o - body, o + COMMIT_SIZE, h[7], h[8], h[9], offsets[begin : j + 1])
                        begin = j + 1
            if self.progress is not None:
                self.progress(r.end - off)
            self.commits += r.commits
            self.events += r.events
            off, nxt = int(r.end), int(r.next_position)
            self.end, self.next_position = off, nxt
            if r.code == 0 and off < size and r.commits:
                continue  # the output array was full: go on
            at_end = r.code != 0 and r.err_off == off and self.at_end(off)
            if r.code != 0 and not at_end and self.last and self.moved_on(off, nxt):
                continue  # a writer finished commits there since: what stopped the scan was one in flight
            break
        if r.code == 0 and off < size:  # pragma: no cover - a scan stops early only on an error
            self.code, self.err_off = -1, off
        elif at_end:
            return  # the end of the segment's commits: allocated space follows
        elif r.code != 0:
            self.code, self.err_off = int(r.code), int(r.err_off)
        if self.code:
            unsynced = self.unsynced_from is not None and self.err_off >= self.unsynced_from
            self.torn = self.last and (unsynced or torn_tail(impl, buf, off, self.err_off, size))
            self.report(self.path, self.err_off, self.reason, self.torn)

    def moved_on(self, off: int, nxt: int) -> bool:
        """Whether whole commits now scan from `off` of a last segment, whose writer may be appending:
        damage that heals when scanned again was a commit being written, not damage."""
        r = self.impl.scan(self.buf, off, self.size, next_position=nxt, kinds=0, max_out=0)
        return bool(r.commits)

    def at_end(self, off: int) -> bool:
        """Whether the segment's commits end at `off`, a commit boundary: at its seal marker, or (the
        last segment only, not sealed yet) at a zero header; only zeros follow either."""
        if sealed_at(self.impl, self.buf, off, self.size):
            return not self.check_zeros or zeros_after(self.path, off + SEAL.size)
        if not self.last or not zero_header(self.buf, off, self.size):
            return False
        return not self.check_zeros or zeros_after(self.path, off)

    def event_batches(self, types: tuple[bytes, ...] | None, stop_position: int,
                      max_out: int) -> Iterator[tuple[list[int], int, int]]:
        """The read path's scan of this segment: batches of (EVENT record offsets, region start, region
        end), of the given types (None: all), up to commits at or below `stop_position`, `max_out`
        offsets at most per batch (grown when one commit holds more). Stops at the end of the segment's
        whole commits; damage before `stop_position` is handed to the reporter."""
        impl, buf, size = self.impl, self.buf, self.size
        off, nxt = self.end, self.next_position
        while off < size and nxt <= stop_position:
            r = impl.scan(buf, off, size, next_position=nxt, kinds=EVENT_KINDS, types=types, max_out=max_out,
                          stop_position=stop_position)
            if r.code == EFULL:
                max_out *= 4
                continue
            if r.offsets:
                yield r.offsets, off, int(r.end)
            off, nxt = int(r.end), int(r.next_position)
            self.end, self.next_position = off, nxt
            self.commits += r.commits
            self.events += r.events
            if r.code != 0:
                if r.err_off == off and (zero_header(buf, off, size) or sealed_at(impl, buf, off, size)):
                    return  # the end of the segment's commits (the index names what lies beyond)
                if nxt <= stop_position:
                    self.code, self.err_off = int(r.code), int(r.err_off)
                    self.report(self.path, self.err_off, self.reason, False)
                return
            if r.commits == 0:
                return


def commit_events(impl: ModuleType, path: str, buf: Any, off: int, nbytes: int, first_position: int,
                  count: int, types: tuple[bytes, ...] | None, report: Reporter) -> list[int]:
    """The offsets of the EVENT records of the given types (None: all) in the commits at `off`
    (`nbytes` long, `count` events from `first_position`: one commit, or consecutive ones), verified;
    damage goes to `report`."""
    r = impl.scan(buf, off, off + nbytes, next_position=first_position, kinds=EVENT_KINDS, types=types,
                  max_out=count + 1)
    if r.code != 0:
        report(path, int(r.err_off), ERROR_TEXT.get(r.code, f"error {r.code}"), False)
    return list(r.offsets)

