"""The log functions over the C library (src_c/evlog.c, built as evstore._evlog_c by
_build_evlog.py), with the same API and results as the pure-Python twin evstore.format.pylog.

Every C call runs without the GIL (cffi's API mode releases it); the buffers passed stay
exported, so they cannot be resized or unmapped meanwhile.
"""

from __future__ import annotations

import os
from typing import Any

from evstore._evlog_c import ffi, lib
from evstore.format.layout import HEADER_SIZE, LogFormatError
from evstore.format.scanresult import ScanResult, check_buffer, check_uint, scan_filter, tiling_error

IMPL = "c"

# Output arrays are written before they are read: skip zeroing them.
_new_out = ffi.new_allocator(should_clear_after_alloc=False)


def crc32c(data: Any, crc: int = 0) -> int:
    """CRC-32C of the bytes-like `data`, continuing `crc` (0 to start)."""
    check_uint("crc", crc, 32)
    with ffi.from_buffer("uint8_t[]", data) as p:
        return int(lib.evl_crc32c(crc, p, len(p)))


def seal(buf: bytearray) -> None:
    """Fill in the checksum of every record of `buf`; LogFormatError(EFRAME) if they do not tile it."""
    with ffi.from_buffer("uint8_t[]", buf, require_writable=True) as p:
        rc = lib.evl_seal(p, len(p))
    if rc:
        with memoryview(buf) as m, m.cast("B") as mv:
            raise LogFormatError(rc, tiling_error(mv))


def write(fd: int, buf: Any, sync: bool) -> None:
    """Write all of `buf` to `fd`, then fdatasync it if `sync`; OSError on failure."""
    with ffi.from_buffer("uint8_t[]", buf) as p:
        rc = lib.evl_write(fd, p, len(p), 1 if sync else 0)
    if rc:
        raise OSError(-rc, os.strerror(-rc))


def scan(
    buf: Any,
    off: int,
    n: int,
    *,
    next_position: int,
    kinds: int,
    types: tuple[bytes, ...] | None = None,
    max_out: int = 65536,
    stop_position: int = 0,
) -> ScanResult:
    """Verify whole commits of buf[off:n] and report the offsets of the selected records (evl_scan)."""
    kinds, names = scan_filter(kinds, types)
    check_uint("next_position", next_position, 64)
    check_uint("stop_position", stop_position, 64)
    check_uint("max_out", max_out, 64)
    s = ffi.new("evl_scan_state *")
    s.next_position = next_position
    s.stop_position = stop_position
    s.kinds = kinds
    out = _new_out("uint64_t[]", max_out)
    s.out = out
    s.max_out = max_out
    if names:
        joined = ffi.from_buffer("uint8_t[]", b"".join(names))
        lens = ffi.new("uint32_t[]", [len(t) for t in names])
        s.n_types = len(names)
        s.types = joined
        s.type_lens = lens
    with ffi.from_buffer("uint8_t[]", buf) as p:
        check_buffer(off, n, len(p))
        code = lib.evl_scan(p, n, off, s)
    return ScanResult(code, ffi.unpack(out, s.n_out), s.end, s.next_position, s.commits, s.events, s.err_off)


def walk(buf: Any, off: int, count: int, n: int) -> list[int]:
    """Verify `count` consecutive records from `off` and return their offsets (evl_walk)."""
    check_uint("count", count, 64)
    with ffi.from_buffer("uint8_t[]", buf) as p:
        check_buffer(off, n, len(p))
        if off <= n:
            # At most (n - off) // 64 records fit, so a larger count fails at the same record as
            # this one: no need for an output array of the size asked.
            count = min(count, (n - off) // HEADER_SIZE + 1)
        out = _new_out("uint64_t[]", count)
        err = ffi.new("size_t *")
        rc = lib.evl_walk(p, n, off, count, out, err)
    if rc:
        raise LogFormatError(rc, err[0])
    return list(ffi.unpack(out, count))


def find_commit(buf: Any, off: int, n: int) -> int:
    """The offset of the first valid COMMIT record in buf[off:n], or -1 (evl_find_commit)."""
    found = ffi.new("size_t *")
    with ffi.from_buffer("uint8_t[]", buf) as p:
        check_buffer(off, n, len(p))
        rc = lib.evl_find_commit(p, n, off, found)
    if rc < 0:
        raise LogFormatError(rc, off)
    return found[0] if rc else -1
