"""Helpers of the write path's hostile tests (tests/test_hostile_writepath_*.py): the size of a COMMIT
record, a store's segment files, the commits of a segment walked from its bytes, zeroing a range of a
file, a store's content, a log implementation whose pwrite is replaced."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import evstore

COMMIT_SIZE = 72


def seg_files(path: str) -> list[str]:
    d = os.path.join(path, "log")
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".seg")]


def commit_ends(seg: str) -> list[tuple[int, int]]:
    """(end offset, event count) of every commit of a segment file, walked from its bytes."""
    with open(seg, "rb") as f:
        raw = f.read()
    off, out = 32, []
    while off + 64 <= len(raw):
        ln = int.from_bytes(raw[off + 4 : off + 8], "little")
        if ln < 64 or off + ln > len(raw):
            break
        if raw[off + 8] == 2:
            out.append((off + ln, int.from_bytes(raw[off + 24 : off + 32], "little")))
        off += ln
    return out


def zero(seg: str, start: int, end: int) -> None:
    with open(seg, "r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))


def content(s: evstore.EventStore) -> list[tuple[Any, ...]]:
    return [(e.stream, e.version, e.position, e.type, e.data, e.metadata, e.schema) for e in s.read_all()]


class PwriteOf:
    """The log implementation `real` with its `pwrite` replaced by `pwrite` (the rest is real's)."""

    def __init__(self, real: Any, pwrite: Callable[[int, Any, int], Any]) -> None:
        self.real = real
        self.pwrite = pwrite

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
