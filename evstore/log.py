"""The segmented append-only log: segment files, recovery of the tail, mapped reads and appends."""

from __future__ import annotations

import errno as _errno
import mmap
import os
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from evstore._format import (
    EFULL,
    FORMAT_VERSION,
    HEADER,
    KIND_COMMIT,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    U64,
)
from evstore.errors import CorruptedError, IndexAheadOfLog, StorageError, UnsupportedFormat

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
ALL_KINDS = 0b1111110  # every kind 1..6
EVENT_KINDS = 1 << 1


def segment_name(first_position: int) -> str:
    return f"{first_position:020d}.seg"


class Segment:
    """One segment file: its first position, path and the length of its valid prefix."""

    __slots__ = ("first", "path", "end", "_map", "_map_len")

    def __init__(self, first: int, path: str, end: int) -> None:
        self.first = first
        self.path = path
        self.end = end  # bytes known to hold whole, verified commits
        self._map: Any = None
        self._map_len = 0

    def buffer(self, need: int) -> Any:
        """A read-only mapping of at least `need` bytes of the file (remapped when the file has grown)."""
        if self._map is not None and self._map_len >= need:
            return self._map
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < need:
                raise CorruptedError(self.path, size, f"segment ends before offset {need} that the index names")
            m = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else b""
        finally:
            os.close(fd)
        # Older mappings are not closed: records read through them keep them alive, and are
        # unmapped when the last such record goes.
        self._map = m
        self._map_len = size
        return m


def make_segment_header(impl: ModuleType, first_position: int) -> bytes:
    head = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, first_position, 0, 0)
    crc = impl.crc32c(head[:24])
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, first_position, crc, 0)


def check_segment_header(impl: ModuleType, path: str, raw: bytes, first: int) -> None:
    """Raise unless `raw` is a valid header of the segment named for position `first`."""
    if len(raw) < SEGMENT_HEADER_SIZE:
        raise CorruptedError(path, 0, "segment header is cut short")
    magic, version, _flags, pos, crc, _zero = SEGMENT_HEADER.unpack_from(raw)
    if magic != SEGMENT_MAGIC:
        raise CorruptedError(path, 0, "not an evstore segment (bad magic)")
    if impl.crc32c(raw[:24]) != crc:
        raise CorruptedError(path, 0, "segment header checksum mismatch")
    if version != FORMAT_VERSION:
        raise UnsupportedFormat(path, version, FORMAT_VERSION)
    if pos != first:
        raise CorruptedError(path, 16, f"segment header says position {pos}, its name says {first}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Commit:
    """A commit found by scanning: where it is and the offsets of its records (COMMIT last)."""

    __slots__ = ("segment", "offset", "end", "first_position", "n_events", "records")

    def __init__(self, segment: Segment, offset: int, end: int, first_position: int, n_events: int,
                 records: list[int]) -> None:
        self.segment = segment
        self.offset = offset
        self.end = end
        self.first_position = first_position
        self.n_events = n_events
        self.records = records


class Log:
    """The segment files of one store. Appends go through one writer (the store serialises them)."""

    def __init__(self, directory: str, impl: ModuleType, *, segment_size: int, writable: bool) -> None:
        self.dir = directory
        self.impl = impl
        self.segment_size = segment_size
        self.writable = writable
        self.segments: list[Segment] = []
        self.by_first: dict[int, Segment] = {}
        self.next_position = 1
        self._fd = -1  # the active segment, writer only
        self.retired_fds: list[int] = []
        self.load_segments()

    # -- discovery -------------------------------------------------------------------------

    def load_segments(self) -> None:
        """(Re)list the segment files, checking each new one's header."""
        names = []
        for name in os.listdir(self.dir):
            m = _SEGMENT_NAME.match(name)
            if m:
                names.append((int(m.group(1)), name))
        names.sort()
        for first, name in names:
            if first in self.by_first:
                continue
            path = os.path.join(self.dir, name)
            with open(path, "rb") as f:
                raw = f.read(SEGMENT_HEADER_SIZE)
            if len(raw) < SEGMENT_HEADER_SIZE and first == names[-1][0] and self.writable:
                # A crash while the segment was being created: it never held a commit.
                os.unlink(path)
                continue
            check_segment_header(self.impl, path, raw, first)
            seg = Segment(first, path, SEGMENT_HEADER_SIZE)
            self.segments.append(seg)
            self.by_first[first] = seg
        self.segments.sort(key=lambda s: s.first)

    def segment(self, first: int) -> Segment:
        seg = self.by_first.get(first)
        if seg is None:
            self.load_segments()
            seg = self.by_first.get(first)
            if seg is None:
                raise CorruptedError(os.path.join(self.dir, segment_name(first)), 0,
                                     "segment named by the index is missing")
        return seg

    # -- recovery --------------------------------------------------------------------------

    def recover(self, checkpoint: tuple[int, int, int] | None) -> Iterator[Commit]:
        """Scan from the index checkpoint to the end of the log, yielding each whole commit.

        A torn tail of the last segment is cut off (writer) or ignored (reader); damage followed by
        committed data, or any damage in a sealed segment, raises `CorruptedError`. An index
        checkpoint beyond the log's end raises `IndexAheadOfLog`.
        """
        if checkpoint is None:
            if not self.segments:
                return
            start_seg, start_off, next_pos = self.segments[0].first, SEGMENT_HEADER_SIZE, self.segments[0].first
        else:
            start_seg, start_off, next_pos = checkpoint
            if start_seg not in self.by_first:
                self.load_segments()  # a writer in another process may have rolled since we listed
            if start_seg not in self.by_first:
                path = os.path.join(self.dir, segment_name(start_seg))
                raise IndexAheadOfLog(path, start_off, "the segment the index was last written to is missing")
        for i, seg in enumerate(self.segments):
            if seg.first < start_seg:
                seg.end = os.path.getsize(seg.path)  # sealed before the checkpoint: whole
                continue
            last = i == len(self.segments) - 1
            off = start_off if seg.first == start_seg else SEGMENT_HEADER_SIZE
            size = os.path.getsize(seg.path)
            if size < off:
                raise IndexAheadOfLog(seg.path, size, f"the log ends before offset {off} that the index covers")
            if seg.first != start_seg and seg.first != next_pos:
                raise CorruptedError(seg.path, 0, f"segment starts at position {seg.first}, expected {next_pos}")
            buf = seg.buffer(size)
            while True:
                r = self.impl.scan(buf, off, size, next_position=next_pos, kinds=ALL_KINDS, max_out=65536)
                yield from self._commits(seg, buf, off, r.offsets)
                off, next_pos = r.end, r.next_position
                if r.code == EFULL:
                    raise CorruptedError(seg.path, r.err_off, "commit too large to scan")
                if r.code == 0 and r.end < size:
                    continue  # output array full: go on
                break
            seg.end = off
            if r.code != 0:
                if not last or self.impl.find_commit(buf, r.err_off, size) >= 0:
                    raise CorruptedError(seg.path, r.err_off, self._reason(r.code))
                if self.writable:
                    self._truncate(seg, off)
        self.next_position = next_pos

    def _reason(self, code: int) -> str:
        from evstore._format import ERROR_TEXT

        return ERROR_TEXT.get(code, f"error {code}")

    @staticmethod
    def _commits(seg: Segment, buf: Any, off: int, offsets: list[int]) -> Iterator[Commit]:
        unpack = HEADER.unpack_from
        start = 0
        for j, o in enumerate(offsets):
            if buf[o + 8] == KIND_COMMIT:  # the kind byte: no full header unpack per record
                h = unpack(buf, o)
                body = U64.unpack_from(buf, o + 64)[0]
                yield Commit(seg, o - body, o + 72, h[7], h[8], offsets[start : j + 1])
                start = j + 1

    def _truncate(self, seg: Segment, end: int) -> None:
        fd = os.open(seg.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)
        seg._map = None
        seg._map_len = 0

    # -- writing ---------------------------------------------------------------------------

    @property
    def active(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    def _open_active(self) -> None:
        seg = self.segments[-1]
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)

    def _new_segment(self, first: int) -> None:
        path = os.path.join(self.dir, segment_name(first))
        tmp = path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, make_segment_header(self.impl, first))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _fsync_dir(self.dir)
        seg = Segment(first, path, SEGMENT_HEADER_SIZE)
        self.segments.append(seg)
        self.by_first[first] = seg
        self._open_active()

    def append(self, buf: bytearray, first_position: int, n_events: int) -> tuple[Segment, int]:
        """Write one sealed commit (no sync) and return (segment, offset). Rolls the segment when full.

        On failure the segment is cut back to its previous length and `StorageError` is raised: the
        commit is not in the log.
        """
        seg = self.active
        if seg is None or (seg.end + len(buf) > self.segment_size and seg.end > SEGMENT_HEADER_SIZE):
            self.roll(first_position)
            seg = self.segments[-1]
        elif self._fd < 0:
            self._open_active()
        off = seg.end
        try:
            self.impl.write(self._fd, buf, False)
        except OSError as e:
            self._undo(seg, off)
            raise StorageError(seg.path, e.errno, f"cannot write to {seg.path}: {e.strerror}; nothing was "
                               "written (free space and retry)") from e
        seg.end = off + len(buf)
        self.next_position = first_position + n_events
        return seg, off

    def _undo(self, seg: Segment, off: int) -> None:
        try:
            os.ftruncate(self._fd, off)
        except OSError:  # pragma: no cover - the descriptor itself is broken; the next open recovers
            pass

    def roll(self, first_position: int) -> None:
        """Seal the active segment (durably) and start a new one at `first_position`."""
        if self._fd >= 0:
            os.fsync(self._fd)
            self.retired_fds.append(self._fd)
            self._fd = -1
        try:
            self._new_segment(first_position)
        except OSError as e:
            raise StorageError(self.dir, e.errno, f"cannot create a segment in {self.dir}: {e.strerror}") from e

    def sync_fd(self) -> int:
        """The descriptor a syncer must fsync to make every written commit durable."""
        return self._fd

    def close(self) -> None:
        for fd in [*self.retired_fds, self._fd]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError as e:  # pragma: no cover
                    if e.errno != _errno.EBADF:
                        raise
        self.retired_fds = []
        self._fd = -1

    def size(self) -> int:
        return sum(os.path.getsize(s.path) for s in self.segments)
