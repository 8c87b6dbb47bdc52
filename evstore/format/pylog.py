"""The log functions in pure Python: a twin of the C library (src_c/) with the same API and results as
evstore.format.clog on every input, for where the C module is not built (EVSTORE_PURE=1) and as a
reference for it. The order of the checks is documented at the top of evlog.c.

It is slow where the C code is fast: the checksum runs at about 16 MB/s.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from collections.abc import Sequence
from typing import Any

from evstore.format.layout import (
    COMMIT_SIZE,
    FLAG_CALLER_ID,
    FLAG_UUID_STREAM,
    ECOMMIT,
    ECRC,
    EFRAME,
    EFULL,
    EINVAL,
    EKIND,
    ESEQ,
    ETRUNC,
    HEADER,
    HEADER_SIZE,
    KIND_COMMIT,
    KIND_EVENT,
    KIND_MAX,
    U64,
    LogFormatError,
)
from evstore.format.encode import MAX_COMMIT_BYTES, MAX_VERSION, ControlRecord, EncodedCommit, PartToEncode, \
    ValidEvent, input_error, plain_events, plain_fields, random_ids, tags_ok
from evstore.records import AppendResult, Stream
from evstore.format.scanresult import U32, U64_MAX, ScanResult, check_buffer, check_uint, scan_filter, tiling_error

IMPL = "python"


def _crc_tables() -> tuple[list[int], ...]:
    """Slice-by-4 tables: table k maps a byte to the CRC register after it and k zero bytes."""
    t0 = []
    for b in range(256):
        for _ in range(8):
            b = (b >> 1) ^ (0x82F63B78 if b & 1 else 0)
        t0.append(b)
    tables = [t0]
    for _ in range(3):
        tables.append([(c >> 8) ^ t0[c & 0xFF] for c in tables[-1]])
    return tuple(tables)


_T0, _T1, _T2, _T3 = _crc_tables()
_CHUNK = 1 << 16  # bytes unpacked into words at a time, to bound the temporary tuple


def _crc(mv: memoryview, crc: int) -> int:
    # Four bytes a step (about 1.5 times as fast as a byte a step in CPython; wider is not faster).
    t0, t1, t2, t3 = _T0, _T1, _T2, _T3
    crc ^= 0xFFFFFFFF
    whole = len(mv) & ~3
    for start in range(0, whole, _CHUNK):
        words = min(_CHUNK, whole - start) >> 2
        for w in struct.unpack_from(f"<{words}I", mv, start):
            x = crc ^ w
            crc = t3[x & 0xFF] ^ t2[(x >> 8) & 0xFF] ^ t1[(x >> 16) & 0xFF] ^ t0[x >> 24]
    for b in mv[whole:]:
        crc = t0[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data: Any, crc: int = 0) -> int:
    """CRC-32C of the bytes-like `data`, continuing `crc` (0 to start)."""
    check_uint("crc", crc, 32)
    with memoryview(data) as m, m.cast("B") as mv:
        return _crc(mv, crc)


def seal(buf: bytearray) -> None:
    """Fill in the checksum of every record of `buf`; LogFormatError(EFRAME) if they do not tile it."""
    with memoryview(buf) as m, m.cast("B") as mv:
        if mv.readonly:
            raise BufferError("Object is not writable.")
        bad = tiling_error(mv)
        if bad >= 0:
            raise LogFormatError(EFRAME, bad)
        off = 0
        while off < len(mv):
            length = U32.unpack_from(mv, off + 4)[0]
            U32.pack_into(mv, off, _crc(mv[off + 4 : off + length], 0))
            off += length


def write(fd: int, buf: Any, sync: bool) -> None:
    """Write all of `buf` to `fd`, then fdatasync it if `sync`; OSError on failure."""
    with memoryview(buf) as m, m.cast("B") as mv:
        done = 0
        while done < len(mv):
            k = os.write(fd, mv[done:])  # retries EINTR itself
            if k == 0:  # no progress and no error: fail rather than spin, as evl_write does
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            done += k
    if sync:
        if fd < 0:  # os.fdatasync raises ValueError for these; fdatasync(2) gives EBADF
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        os.fdatasync(fd)


def pwrite(fd: int, buf: Any, offset: int) -> None:
    """Write all of `buf` at `offset` of `fd`, as evl_pwrite does; OSError on failure."""
    with memoryview(buf) as m, m.cast("B") as mv:
        if offset < 0 or offset > (1 << 63) - 1 - len(mv):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        done = 0
        while done < len(mv):
            k = os.pwrite(fd, mv[done:], offset + done)  # retries EINTR itself
            if k == 0:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            done += k


# Header fields by index: 0 crc, 1 length, 2 kind, 3 flags, 4 type_len, 5 stream_len, 6 tags_len,
# 7 position, 8 version, 9 recorded_at, 10 id, 11 schema, 12 meta_len.


def _record(mv: memoryview, n: int, off: int) -> tuple[Any, ...]:
    """The header of the record at `off` once it passes checks 1-6 of evlog.c, else LogFormatError."""
    if n - off < 8:
        raise LogFormatError(ETRUNC, off)
    length = U32.unpack_from(mv, off + 4)[0]
    if length < HEADER_SIZE:
        raise LogFormatError(EFRAME, off)
    if length > n - off:
        raise LogFormatError(ETRUNC, off)
    h = HEADER.unpack_from(mv, off)
    if _crc(mv[off + 4 : off + length], 0) != h[0]:
        raise LogFormatError(ECRC, off)
    if h[4] + h[5] + h[6] + h[12] > length - HEADER_SIZE:
        raise LogFormatError(EFRAME, off)
    if not 1 <= h[2] <= KIND_MAX:
        raise LogFormatError(EKIND, off)
    return h


def _read_commit(
    mv: memoryview, n: int, start: int, first: int, kinds: int, types: frozenset[bytes] | None,
    offsets: list[int],
) -> tuple[int, int, int]:
    """Verify the commit at `start` and append the offsets of its selected records to `offsets`.
    `first` is its first position, or 0 if not known. Returns (end, first position, events), or
    raises LogFormatError at the failing record (read_commit and check_commit in evlog.c)."""
    known = first != 0
    events = records = 0
    r = start
    while True:
        h = _record(mv, n, r)
        kind = h[2]
        if kind == KIND_EVENT:
            if events == 0 and not known:
                first = h[7]
            elif h[7] != (first + events) & U64_MAX:
                raise LogFormatError(ESEQ, r)
            events += 1
        if kinds >> kind & 1:
            if kind != KIND_EVENT or types is None:
                offsets.append(r)
            else:
                at = r + HEADER_SIZE + h[5]
                if bytes(mv[at : at + h[4]]) in types:
                    offsets.append(r)
        if kind == KIND_COMMIT:
            break
        records += 1
        r += h[1]
    if h[1] != COMMIT_SIZE or h[4] or h[5] or h[6] or h[12]:
        raise LogFormatError(ECOMMIT, r)
    if h[8] != events or h[11] != records or U64.unpack_from(mv, r + HEADER_SIZE)[0] != r - start:
        raise LogFormatError(ECOMMIT, r)
    if events:
        if h[7] != first:
            raise LogFormatError(ECOMMIT, r)
    elif known:
        if h[7] != first:
            raise LogFormatError(ESEQ, r)
    else:
        first = h[7]
    return r + COMMIT_SIZE, first, events


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
    type_set = frozenset(names) if names else None
    with memoryview(buf) as m, m.cast("B") as mv:
        check_buffer(off, n, len(mv))
        if off > n:
            return ScanResult(EINVAL, [], off, next_position, 0, 0, off)
        offsets: list[int] = []
        end = off
        commits = events = 0
        while end < n:
            if stop_position and next_position > stop_position:
                break
            kept = len(offsets)
            try:
                c_end, first, c_events = _read_commit(mv, n, end, next_position, kinds, type_set, offsets)
            except LogFormatError as e:
                del offsets[kept:]
                return ScanResult(e.code, offsets, end, next_position, commits, events, e.offset)
            if stop_position and first > stop_position:
                del offsets[kept:]
                break
            if len(offsets) > max_out:
                del offsets[kept:]
                if commits:
                    break
                return ScanResult(EFULL, offsets, end, next_position, commits, events, end)
            end = c_end
            commits += 1
            events += c_events
            next_position = (first + c_events) & U64_MAX
        return ScanResult(0, offsets, end, next_position, commits, events, 0)


def walk(buf: Any, off: int, count: int, n: int) -> list[int]:
    """Verify `count` consecutive records from `off` and return their offsets (evl_walk)."""
    check_uint("count", count, 64)
    with memoryview(buf) as m, m.cast("B") as mv:
        check_buffer(off, n, len(mv))
        if off > n:
            raise LogFormatError(EINVAL, off)
        out = []
        for _ in range(count):
            out.append(off)
            off += _record(mv, n, off)[1]
        return out


def walk_runs(buf: Any, runs: Sequence[int], n: int) -> list[int]:
    """`walk` of runs of consecutive records, (offset, count) of each flat in `runs`, in one call
    (evl_walk_runs): the offsets of all their records in order."""
    if len(runs) % 2:
        raise ValueError("runs holds (offset, count) pairs")
    if any(x < 0 for x in runs):
        raise ValueError("offsets and counts must be >= 0")
    out: list[int] = []
    for i in range(0, len(runs), 2):
        out += walk(buf, runs[i], runs[i + 1], n)
    return out


_COMMIT_TAG = struct.pack("<IB", COMMIT_SIZE, KIND_COMMIT)  # bytes 4..8 of every COMMIT record


def find_commit(buf: Any, off: int, n: int) -> int:
    """The offset of the first valid COMMIT record in buf[off:n], or -1 (evl_find_commit)."""
    with memoryview(buf) as m, m.cast("B") as mv:
        check_buffer(off, n, len(mv))
        if off > n:
            raise LogFormatError(EINVAL, off)
        # bytes, bytearray and mmap can search in place; anything else is copied once.
        find = buf.find if isinstance(buf, (bytes, bytearray, mmap.mmap)) else bytes(mv).find
        j = find(_COMMIT_TAG, off + 4, n)
        while j >= 0 and j - 4 <= n - COMMIT_SIZE:
            r = j - 4
            if _crc(mv[j : r + COMMIT_SIZE], 0) == U32.unpack_from(mv, r)[0]:
                return r
            j = find(_COMMIT_TAG, j + 1, n)
        return -1


_ZERO_ID = bytes(16)
_CONTROL_KINDS = frozenset((3, 4, 5, 6))  # MARK, SNAPSHOT, TRACKING, AUX



def encode_commit(parts: Sequence[PartToEncode], controls: Sequence[ControlRecord], first_position: int,
                  ts: int) -> EncodedCommit:
    """The sealed bytes of one commit and the offsets the index needs (evl_encode_commit): each part's
    events, then the control records, then the COMMIT record. ValueError (evstore.format.encode's
    `input_error`) when the input is malformed or the commit over the size limit."""
    try:
        return _encode(parts, controls, first_position, ts)
    except (struct.error, ValueError, TypeError, OverflowError):
        err = input_error(parts, controls, first_position, ts)
        if err is None:
            raise
        raise err from None


def _encode(parts: Sequence[PartToEncode], controls: Sequence[ControlRecord], first_position: int,
            ts: int) -> EncodedCommit:
    if type(first_position) is not int or first_position < 1:
        raise ValueError  # input_error says what
    pos = first_position
    chunks: list[bytes] = []
    add = chunks.extend
    results = []
    runs: list[tuple[bytes, int, int, int, int]] = []
    types: dict[bytes, None] = {}
    ids: list[tuple[bytes, int]] = []
    tagged: list[tuple[bytes, int, int]] = []
    offset = 0
    n_random = sum(1 for p in parts for e in p.events if e[3] is None)
    rnd = random_ids(n_random) if n_random else b""
    r = 0
    pack = HEADER.pack
    for p in parts:
        sb, slen, sflag = p.stored, len(p.stored), p.flags
        ver = p.version
        if ver + len(p.events) > MAX_VERSION or ver < 0 or sflag not in (0, FLAG_UUID_STREAM):
            raise ValueError
        v0 = ver + 1
        first = pos
        start = offset
        for tb, data, meta, idb, schema, gb in p.events:
            ver += 1
            if idb is None:
                idb = rnd[r : r + 16]
                r += 16
                flags = sflag
            else:
                if len(idb) != 16:
                    raise ValueError
                flags = sflag | FLAG_CALLER_ID
                ids.append((idb, pos))
            tl = len(tb)
            ml = len(meta)
            gl = len(gb)
            ln = HEADER_SIZE + slen + tl + ml + gl + len(data)
            add((pack(0, ln, KIND_EVENT, flags, tl, slen, gl, pos, ver, ts, idb, schema, ml), sb, tb, meta, gb, data))
            if tb not in types:
                types[tb] = None
            if gl:
                if not tags_ok(gb):
                    raise ValueError
                tagged.append((gb, pos, offset))
            offset += ln
            pos += 1
        runs.append((p.key, v0, ver, start, offset - start))
        results.append(AppendResult(p.stream, v0, ver, first, pos - 1))
    if pos > U64_MAX:
        raise ValueError  # the commit's next position would not fit
    n_events = pos - first_position
    records = n_events
    control_offsets = []
    for x in controls:
        if x.kind not in _CONTROL_KINDS or x.stream_flags not in (0, FLAG_UUID_STREAM):
            raise ValueError
        control_offsets.append(offset)
        ln = HEADER_SIZE + len(x.stream) + len(x.name) + len(x.data)
        add((pack(0, ln, x.kind, x.stream_flags, len(x.name), len(x.stream), 0, pos, x.version, ts, _ZERO_ID,
                  x.schema, 0), x.stream, x.name, x.data))
        offset += ln
        records += 1
    if offset > MAX_COMMIT_BYTES:
        raise ValueError
    add((pack(0, COMMIT_SIZE, KIND_COMMIT, 0, 0, 0, 0, first_position, n_events, ts, _ZERO_ID, records, 0),
         offset.to_bytes(8, "little")))
    buf = bytearray().join(chunks)
    seal(buf)
    return EncodedCommit(buf, first_position, n_events, results, runs, types, ids, tagged, control_offsets)


def encode_plain(stream: Stream, key: bytes, stored: bytes, flags: int, version: int, events: Sequence[object],
                 type_names: dict[str, bytes], first_position: int, ts: int) -> EncodedCommit | None:
    """The commit of one stream's plain events (`plain_events`), or None when an event is not plain
    or the commit cannot be encoded: the same bytes and offsets as evstore.format.clog's."""
    return _encode_valid(stream, key, stored, flags, version, plain_events(events, type_names), first_position, ts)


def encode_fields(stream: Stream, key: bytes, stored: bytes, flags: int, version: int, names: Sequence[object],
                  datas: Sequence[object], metadatas: Sequence[object], type_names: dict[str, bytes],
                  first_position: int, ts: int) -> EncodedCommit | None:
    """As `encode_plain`, for events given as their fields (schema 1): the same bytes as
    evstore.format.clog's."""
    if not len(names) == len(datas) == len(metadatas):
        return None
    return _encode_valid(stream, key, stored, flags, version, plain_fields(names, datas, metadatas, type_names),
                         first_position, ts)


def _encode_valid(stream: Stream, key: bytes, stored: bytes, flags: int, version: int,
                  valid: list[ValidEvent] | None, first_position: int, ts: int) -> EncodedCommit | None:
    if valid is None:
        return None
    try:
        return _encode([PartToEncode(stream, key, stored, flags, version, valid)], (), first_position, ts)
    except (struct.error, ValueError, TypeError, OverflowError):
        return None
