"""One file of the segmented log: its name, its header, its read-only mapping, and a commit found
in it by a scan (evstore.storage.segments holds the log they make up)."""

from __future__ import annotations

import mmap
import os
from types import ModuleType
from typing import Any

from evstore.errors import CorruptedError, UnsupportedFormat
from evstore.format.layout import FORMAT_VERSION, READABLE_FORMATS, SEGMENT_HEADER, SEGMENT_HEADER_SIZE, SEGMENT_MAGIC

__all__ = ["Commit", "Segment", "check_segment_header", "make_segment_header", "segment_name"]


def segment_name(first_position: int) -> str:
    return f"{first_position:020d}.seg"


class Segment:
    """One segment file: its first position, path and the length of its valid prefix.

    `sealed` is set once a later segment exists: the file no longer grows, so a mapping of its
    whole length (taken after it was sealed) is final. A mapping taken while it was the active segment
    may be shorter than the sealed file, and `full_buffer` maps it again."""

    __slots__ = ("first", "path", "end", "allocated", "sealed", "_map", "_map_len", "_map_final")

    def __init__(self, first: int, path: str, end: int) -> None:
        self.first = first
        self.path = path
        self.end = end  # bytes known to hold whole, verified commits
        self.allocated = end  # of the writer's active segment: the file's size (zeros after `end`)
        self.sealed = False
        self._map: Any = None
        self._map_len = 0
        self._map_final = False  # the mapping covers the whole sealed file

    def full_buffer(self) -> Any:
        """A mapping of the whole file as it is now (of the whole sealed file once sealed)."""
        if self._map is not None and self._map_final:
            return self._map
        sealed = self.sealed
        m = self.buffer(os.path.getsize(self.path))
        if sealed and self._map is m:
            self._map_final = True
        return m

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
        self._map_final = False
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
    if version not in READABLE_FORMATS:
        raise UnsupportedFormat(path, version, FORMAT_VERSION)
    if pos != first:
        raise CorruptedError(path, 16, f"segment header says position {pos}, its name says {first}")


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
