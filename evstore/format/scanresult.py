"""What the two log implementations (_clog, _pylog) share: the scan result and argument checks."""

from __future__ import annotations

import struct
from typing import NamedTuple

from evstore.format.layout import HEADER_SIZE, KIND_EVENT

U32 = struct.Struct("<I")
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class ScanResult(NamedTuple):
    """The outcome of one `scan` call (see evl_scan in src_c/evlog.h)."""

    code: int  # 0, or a negative E* code of evstore.format.layout
    offsets: list[int]  # offsets of the reported records of the whole commits consumed
    end: int  # offset just past the last commit consumed
    next_position: int  # first position of the next commit
    commits: int  # commits consumed
    events: int  # events in them, reported or not
    err_off: int  # on error, the offset of the record that could not be accepted


def check_buffer(off: int, n: int, size: int) -> None:
    """Refuse what the C functions cannot be given: negative numbers, or n past the buffer."""
    if off < 0 or not 0 <= n <= size:
        raise ValueError(f"need off >= 0 and 0 <= n <= {size}, got off={off}, n={n}")


def scan_filter(kinds: int, types: tuple[bytes, ...] | None) -> tuple[int, tuple[bytes, ...]]:
    """Check scan's selection arguments and give them in the C form, where no names means no filter:
    an empty `types` selects no event, so it clears the EVENT bit instead."""
    check_uint("kinds", kinds, 32)
    if types is None:
        return kinds, ()
    if not all(isinstance(t, bytes) for t in types):
        raise TypeError("types must be bytes")
    if not types:
        return kinds & ~(1 << KIND_EVENT), ()
    return kinds, tuple(types)


def check_uint(name: str, value: int, bits: int) -> None:
    """Refuse an integer argument outside the range of its C type (where cffi would raise)."""
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be an unsigned {bits}-bit integer, got {value}")


def tiling_error(buf: memoryview) -> int:
    """The offset of the first record of `buf` whose length does not fit (under 64 bytes, past the
    end, or not even readable), or -1 when the records tile `buf` exactly. This is evl_seal's test;
    the C function does not say where it failed."""
    n = len(buf)
    off = 0
    while off < n:
        if n - off < 8:
            return off
        length = U32.unpack_from(buf, off + 4)[0]
        if length < HEADER_SIZE or length > n - off:
            return off
        off += length
    return -1
