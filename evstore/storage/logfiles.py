"""Reading a log's segment files without the store or its index: for verify, recover and export.

Nothing here trusts a file's name: every `*.seg` file of `log/` is listed with what its header says
(or why it has none), and commits are found by scanning bytes (docs/log_format.md).
"""

from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from evstore.format.layout import (
    ERROR_TEXT,
    FORMAT_VERSION,
    READABLE_FORMATS,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
)
from evstore.errors import UnsupportedFormat
from evstore.storage.segfile import segment_name
from evstore.storage.scan import SegmentScanner

_NUMBERED = re.compile(r"^(\d+)\.seg$")
META_MAGIC = b"EVSTMETA"


@dataclass
class SegFile:
    """One `*.seg` file of a log directory."""

    name: str
    path: str
    size: int
    first: int | None  # the position its header holds; None when it has no valid header
    problem: str | None  # why it has no valid header

    @property
    def well_named(self) -> bool:
        return self.first is not None and self.name == segment_name(self.first)

    @property
    def name_first(self) -> int | None:
        m = _NUMBERED.match(self.name)
        return int(m.group(1)) if m else None


def read_meta(store: str, impl: ModuleType) -> dict[str, Any] | None:
    """The store's meta (None when absent or unreadable)."""
    try:
        with open(os.path.join(store, "evstore.meta"), "rb") as f:
            raw = f.read(65536)
    except OSError:
        return None
    if raw[:8] != META_MAGIC or len(raw) < 12 or impl.crc32c(raw[12:]) != int.from_bytes(raw[8:12], "little"):
        return None
    try:
        meta = json.loads(raw[12:])
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def first_position(store: str, impl: ModuleType) -> int:
    """The position the log starts at: the meta's `first_position`, else 1."""
    meta = read_meta(store, impl) or {}
    v = meta.get("first_position", 1)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else 1


def list_segments(logdir: str, impl: ModuleType) -> list[SegFile]:
    """Every `*.seg` file in `logdir` in name order, with the position its header names.

    Raises `UnsupportedFormat` for a segment of a newer format version: nothing may touch it."""
    out = []
    for name in sorted(os.listdir(logdir)):
        if not name.endswith(".seg"):
            continue
        path = os.path.join(logdir, name)
        if not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(SEGMENT_HEADER_SIZE)
        first: int | None = None
        problem: str | None = None
        if len(raw) < SEGMENT_HEADER_SIZE:
            problem = f"segment header is cut short ({len(raw)} bytes)"
        else:
            magic, version, _flags, pos, crc, _zero = SEGMENT_HEADER.unpack_from(raw)
            if magic != SEGMENT_MAGIC:
                problem = "not an evstore segment (bad magic)"
            elif impl.crc32c(raw[:24]) != crc:
                problem = "segment header checksum mismatch"
            elif version not in READABLE_FORMATS:
                raise UnsupportedFormat(path, version, FORMAT_VERSION)
            elif pos < 1:
                problem = "segment header names position 0"
            else:
                first = pos
        out.append(SegFile(name, path, size, first, problem))
    out.sort(key=lambda s: (s.name_first if s.name_first is not None else 1 << 64, s.name))
    return out


def map_file(path: str) -> Any:
    """A read-only mapping of the whole file (b"" when empty)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else b""
    finally:
        os.close(fd)


@dataclass
class SegScan:
    """What scanning one segment found."""

    good_end: int  # the end of its last whole commit in sequence
    next_position: int  # the position after its last whole commit
    commits: int
    events: int
    code: int  # 0: whole commits up to the end of the file
    err_off: int
    torn: bool  # the damage looks like an unfinished last commit (no committed data follows it)

    @property
    def reason(self) -> str:
        return ERROR_TEXT.get(self.code, f"error {self.code}")


def scan_segment(impl: ModuleType, seg: SegFile, next_position: int,
                 progress: Callable[[int], None] | None = None, last: bool = True) -> SegScan:
    """Check every commit of a segment with a valid header, expecting `next_position` first (`last`:
    no segment follows it, so that a torn tail or a zero header may end it)."""
    size = os.path.getsize(seg.path)
    sc = SegmentScanner(impl, seg.path, map_file(seg.path), size, SEGMENT_HEADER_SIZE, next_position, last=last,
                        kinds=0, report=_collect, progress=progress)
    for _ in sc:  # kinds=0: checks and counts, yields nothing
        pass
    return SegScan(sc.end, sc.next_position, sc.commits, sc.events, sc.code, sc.err_off, sc.torn)


def _collect(path: str, offset: int, reason: str, torn: bool) -> None:
    """The reporter of verify and recover: the damage is kept in the scan's result."""


@dataclass
class CommitView:
    """A whole commit found in the log: the mapping and offsets of its records (COMMIT last)."""

    buf: Any
    records: list[int]
    first_position: int
    n_events: int
    recorded_at_ns: int


def iter_commits(impl: ModuleType, segs: list[SegFile], first: int) -> Iterator[CommitView]:
    """Every whole commit of the chain of segments `segs` (in order, starting at position `first`),
    stopping at the first damage or torn tail. Callers check the chain (verify) first."""
    nxt = first
    for i, seg in enumerate(segs):
        size = os.path.getsize(seg.path)
        sc = SegmentScanner(impl, seg.path, map_file(seg.path), size, SEGMENT_HEADER_SIZE, nxt,
                            last=i == len(segs) - 1, report=_collect)
        for c in sc:
            yield CommitView(c.buf, c.records, c.first_position, c.n_events, c.recorded_at_ns)
        nxt = sc.next_position
        if sc.code or not sc.commits:
            return
