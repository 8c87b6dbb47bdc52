"""The log functions over the C library (src_c/, built as evstore._evlog_c by
_build_evlog.py), with the same API and results as the pure-Python twin evstore.format.pylog.

Every C call runs without the GIL (cffi's API mode releases it); the buffers passed stay
exported, so they cannot be resized or unmapped meanwhile.
"""

from __future__ import annotations

import functools
import operator
import os
import struct
from array import array
from collections.abc import Sequence
from typing import Any

from evstore._evlog_c import ffi, lib
from evstore.format.encode import MAX_COMMIT_BYTES, MAX_EVENT_BYTES, MAX_SCHEMA, MAX_VERSION, ControlRecord, \
    EncodedCommit, PartToEncode, input_error, random_bytes
from evstore.records import NewEvent, Stream
from evstore.format.layout import COMMIT_SIZE, EFULL, HEADER_SIZE, LogFormatError
from evstore.records import AppendResult
from evstore.format.scanresult import ScanResult, check_buffer, check_uint, scan_filter, tiling_error

IMPL = "c"

# Output arrays are written before they are read: skip zeroing them.
_new_out = ffi.new_allocator(should_clear_after_alloc=False)
_U64_MAX = (1 << 64) - 1


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


def pwrite(fd: int, buf: Any, offset: int) -> None:
    """Write all of `buf` at `offset` of `fd` (evl_pwrite); OSError on failure."""
    p = ffi.from_buffer("uint8_t[]", buf)  # released when the call returns (no `with`: one per commit)
    rc = lib.evl_pwrite(fd, p, len(p), offset)
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
    if not 0 <= count <= _U64_MAX:
        check_uint("count", count, 64)  # raises
    with ffi.from_buffer("uint8_t[]", buf) as p:
        if off < 0 or not 0 <= n <= len(p):
            check_buffer(off, n, len(p))  # raises
        if off <= n:
            # At most (n - off) // 64 records fit, so a larger count fails at the same record as
            # this one: no need for an output array of the size asked.
            most = (n - off) // HEADER_SIZE + 1
            if count > most:
                count = most
        out = _new_out("uint64_t[]", count + 1)  # the offsets, then room for the error offset
        rc = lib.evl_walk(p, n, off, count, out, ffi.cast("size_t *", out + count))
    if rc:
        raise LogFormatError(rc, out[count])
    return ffi.unpack(out, count)  # type: ignore[no-any-return]


def walk_runs(buf: Any, runs: Sequence[int], n: int) -> list[int]:
    """`walk` of runs of consecutive records in one call (evl_walk_runs): `runs` holds (offset,
    count) of each run, flat (an array("Q") is taken as it is). Every run is verified; returns the
    offsets of all their records in order. Raises `LogFormatError` at the first bad record."""
    if not (isinstance(runs, array) and runs.typecode == "Q"):
        try:
            runs = array("Q", runs)
        except OverflowError:
            raise ValueError("offsets and counts must be >= 0") from None
    if len(runs) % 2:
        raise ValueError("runs holds (offset, count) pairs")
    total = sum(runs[1::2])
    room = total
    if total > n // HEADER_SIZE + len(runs):  # more records than fit: a run fails; bound the array
        room = sum(min(c, max(0, (n - o) // HEADER_SIZE + 1)) for o, c in zip(runs[::2], runs[1::2]))
    with ffi.from_buffer("uint8_t[]", buf) as p:
        check_buffer(0, n, len(p))
        out = _new_out("uint64_t[]", max(room, 1))
        err = ffi.new("size_t *")
        rc = lib.evl_walk_runs(p, n, ffi.from_buffer("uint64_t[]", runs), len(runs) // 2, out, err)
    if rc:
        raise LogFormatError(rc, err[0])
    return list(ffi.unpack(out, total))


def find_commit(buf: Any, off: int, n: int) -> int:
    """The offset of the first valid COMMIT record in buf[off:n], or -1 (evl_find_commit)."""
    found = ffi.new("size_t *")
    with ffi.from_buffer("uint8_t[]", buf) as p:
        check_buffer(off, n, len(p))
        rc = lib.evl_find_commit(p, n, off, found)
    if rc < 0:
        raise LogFormatError(rc, off)
    return found[0] if rc else -1


_PART = struct.Struct("<QIIII")  # evl_enc_part
_CONTROL = struct.Struct("<QIIIIII")  # evl_enc_control
assert _PART.size == ffi.sizeof("evl_enc_part") and _CONTROL.size == ffi.sizeof("evl_enc_control")
assert ffi.sizeof("evl_enc_event") == 6 * array("I").itemsize


def encode_commit(parts: Sequence[PartToEncode], controls: Sequence[ControlRecord], first_position: int,
                  ts: int) -> EncodedCommit:
    """The sealed bytes of one commit and the offsets the index needs (evl_encode_commit): the same
    bytes and offsets as evstore.format.pylog's. ValueError (evstore.format.encode's `input_error`)
    when the input is malformed or the commit over the size limit."""
    try:
        enc = _encode(parts, controls, first_position, ts)
    except (struct.error, ValueError, TypeError, OverflowError):
        enc = None
    if enc is None:
        err = input_error(parts, controls, first_position, ts)
        if err is None:
            raise LogFormatError(-22, 0)  # pragma: no cover - the checks of input_error and C disagree
        raise err
    return enc


def _encode(parts: Sequence[PartToEncode], controls: Sequence[ControlRecord], first_position: int,
            ts: int) -> EncodedCommit | None:
    # The variable parts go into one buffer and the lengths into flat integer arrays (see evlog.h),
    # so that the whole commit is one C call; Python keeps only what the index needs.
    chunks: list[bytes] = []
    add = chunks.extend
    desc: list[int] = []
    dadd = desc.extend
    part_desc = bytearray()
    results = []
    ids: list[tuple[bytes, int]] = []
    tagged_at: list[tuple[bytes, int]] = []
    types: dict[bytes, None] = {}
    pos = first_position
    extra = 0  # stream bytes written more than once, less ids not written
    for p in parts:
        sb = p.stored
        evs = p.events
        k = len(evs)
        ver = p.version
        if ver + k > MAX_VERSION:
            return None
        chunks.append(sb)
        part_desc += _PART.pack(ver, k, len(sb), p.flags, 0)
        extra += len(sb) * (k - 1)
        for tb, data, meta, idb, schema, gb in evs:
            if idb is None:
                add((tb, meta, gb, data))
                dadd((len(tb), len(meta), len(gb), len(data), 0, schema))
            else:
                add((tb, meta, gb, data, idb))
                dadd((len(tb), len(meta), len(gb), len(data), len(idb), schema))
                ids.append((idb, pos))
                extra -= len(idb)
            if gb:
                tagged_at.append((gb, pos))
            types[tb] = None
            pos += 1
        results.append(AppendResult(p.stream, ver + 1, ver + k, pos - k, pos - 1))
    n_events = pos - first_position
    n_controls = len(controls)
    control_desc = bytearray()
    for x in controls:
        chunks += (x.stream, x.name, x.data)
        control_desc += _CONTROL.pack(x.version, x.kind, x.stream_flags, len(x.stream), len(x.name), len(x.data),
                                      x.schema)
    inb = b"".join(chunks)
    size = COMMIT_SIZE + HEADER_SIZE * (n_events + n_controls) + len(inb) + extra
    if size - COMMIT_SIZE > MAX_COMMIT_BYTES:
        return None
    n_random = n_events - len(ids)
    rnd = random_bytes(16 * n_random) if n_random else b""
    buf = bytearray(size)
    offs = _new_out("uint64_t[]", n_events + n_controls + 1)
    out_len = _new_out("size_t *")
    events = array("I", desc)
    with ffi.from_buffer("uint8_t[]", inb) as pin, ffi.from_buffer("uint8_t[]", buf, require_writable=True) as pout:
        rc = lib.evl_encode_commit(
            pin, len(inb), ffi.from_buffer("evl_enc_part[]", part_desc), len(parts),
            ffi.from_buffer("evl_enc_event[]", events), n_events,
            ffi.from_buffer("evl_enc_control[]", control_desc), n_controls,
            ffi.from_buffer("uint8_t[]", rnd), n_random, first_position, ts, pout, size, out_len, offs)
    if rc:
        if rc == EFULL:  # pragma: no cover - the size above is evlog.h's formula
            raise LogFormatError(rc, out_len[0])
        return None
    events_end = offs[n_events] if n_controls else size - COMMIT_SIZE
    runs = []
    i = 0
    for p in parts:
        j = i + len(p.events)
        o = offs[i] if i < n_events else events_end
        runs.append((p.key, p.version + 1, p.version + j - i, o, (offs[j] if j < n_events else events_end) - o))
        i = j
    tagged = [(gb, ps, offs[ps - first_position]) for gb, ps in tagged_at]
    control_offsets = ffi.unpack(offs + n_events, n_controls) if n_controls else []
    return EncodedCommit(buf, first_position, n_events, results, runs, types, ids, tagged, control_offsets)


_u32s = functools.partial(ffi.from_buffer, "uint32_t[]")


def encode_plain(stream: Stream, key: bytes, stored: bytes, flags: int, version: int, events: Sequence[object],
                 type_names: dict[str, bytes], first_position: int, ts: int) -> EncodedCommit | None:
    """The commit of one stream's *plain* events (see evstore.format.encode's `plain_events`, whose
    test this makes, a column at a time), or None when an event is not plain. The same bytes and
    offsets as `encode_commit` of that part: the append fast path, with no Python loop over the events."""
    if len(events) == 1:
        e = events[0]
        if type(e) is not NewEvent or e.id is not None or e.tags:
            return None
        return _encode_cols(stream, key, stored, flags, version, [e.type], [e.data], [e.metadata], e.schema,
                            type_names, first_position, ts)
    n = len(events)
    if not n or list(map(type, events)).count(NewEvent) != n:  # (a count: cheaper than a set, no hashing)
        return None
    # No ids and no tags: counts over two columns (a set of (id, tags) pairs costs twice as much:
    # a tuple and a hash per event). `count` compares as `==` does, as that set did.
    if [e.id for e in events].count(None) != n or [e.tags for e in events].count(()) != n:  # type: ignore[attr-defined]
        return None
    schema: object = [e.schema for e in events]  # type: ignore[attr-defined]
    if list(map(type, schema)).count(int) != n:  # type: ignore[call-overload]
        return None  # (a count or a set of the schemas alone would take True for 1)
    if schema.count(1) == n:  # type: ignore[attr-defined]
        schema = 1  # the usual: every event at schema 1, no bounds to find
    else:
        lo, hi = min(schema), max(schema)  # type: ignore[call-overload]
        if lo < 0 or hi > MAX_SCHEMA:
            return None
        if lo == hi:
            schema = lo
    # (comprehensions over the events: faster than map with attrgetter, whose calls are not inlined)
    return _encode_cols(stream, key, stored, flags, version, [e.type for e in events],  # type: ignore[attr-defined]
                        [e.data for e in events], [e.metadata for e in events],  # type: ignore[attr-defined]
                        schema, type_names, first_position, ts)


def encode_fields(stream: Stream, key: bytes, stored: bytes, flags: int, version: int, names: Sequence[object],
                  datas: Sequence[object], metadatas: Sequence[object], type_names: dict[str, bytes],
                  first_position: int, ts: int) -> EncodedCommit | None:
    """As `encode_plain`, for events given as their fields (type names, data, metadata; schema 1),
    as adapters hold them: no event object is made. None when a field is not plain."""
    if not len(names) == len(datas) == len(metadatas):
        return None
    return _encode_cols(stream, key, stored, flags, version, names, datas, metadatas, 1, type_names,
                        first_position, ts)


def _encode_cols(stream: Stream, key: bytes, stored: bytes, flags: int, version: int, names: Sequence[object],
                 datas: Sequence[object], metas: Sequence[object], schema: object, type_names: dict[str, bytes],
                 first_position: int, ts: int) -> EncodedCommit | None:
    """One C call (evl_encode_cols) over the events' columns; every check of `plain_events` made
    with C-speed builtins over a column (types of the columns, names looked up once each).
    `schema`: every event's, or a list of one per event (checked by the caller)."""
    n = len(names)
    if type(schema) is list:
        schemas, schema = schema, 0
    else:
        schemas = ffi.NULL
        if type(schema) is not int or not 0 <= schema <= MAX_SCHEMA:
            return None
    if not n or version + n > MAX_VERSION \
            or len(stored) > 0xFFFF or flags not in (0, 1) or first_position + n > _U64_MAX:
        return None
    get = type_names.get
    try:
        uniq: dict[Any, int] | None = dict.fromkeys(names, 0) if n > 1 else None
    except TypeError:  # an unhashable type name: not plain
        return None
    if uniq is None or len(uniq) == 1:
        t = names[0]
        tb = get(t) if type(t) is str else None
        if tb is None:
            return None
        tbs = [tb]
        tlens = [len(tb)]
        type_of = ffi.NULL
        types_total = len(tb) * n
    else:
        if len(uniq) > lib.EVL_COLS_MAX_TYPES:
            return None
        tbs = []
        for i, t in enumerate(uniq):
            tb = get(t) if type(t) is str else None
            if tb is None:
                return None
            tbs.append(tb)
            uniq[t] = i
        tlens = list(map(len, tbs))
        tix = array("I", map(uniq.__getitem__, names))
        type_of = _u32s(tix)
        types_total = sum(ln * tix.count(i) for i, ln in enumerate(tlens))  # a count per type, in C
    if n == 1:
        if type(datas[0]) is not bytes or type(metas[0]) is not bytes:
            return None
    elif list(map(type, datas)).count(bytes) != n or list(map(type, metas)).count(bytes) != n:
        return None
    data = b"".join(datas)  # type: ignore[arg-type]
    meta = b"".join(metas)  # type: ignore[arg-type]
    # Lengths as arrays passed by address (cffi converts a list item by item, an array not at all);
    # one event's as a list of one.
    if n == 1:
        dlens: Any = [len(data)]
        mlens: Any = [len(meta)] if meta else None
    else:
        dlens = array("I", map(len, datas))  # type: ignore[arg-type]
        mlens = array("I", map(len, metas)) if meta else None  # type: ignore[arg-type]
    if len(data) + len(meta) > MAX_EVENT_BYTES and (
            max(dlens) if not meta else max(map(operator.add, dlens, mlens))) > MAX_EVENT_BYTES:
        return None
    size = COMMIT_SIZE + (HEADER_SIZE + len(stored)) * n + types_total + len(meta) + len(data)
    if size - COMMIT_SIZE > MAX_COMMIT_BYTES:
        return None
    buf = bytearray(size)
    # The lists go to C as temporary arrays; the buffer without a `with`: nothing resizes it meanwhile.
    if lib.evl_encode_cols(stored, len(stored), flags, version, n, b"".join(tbs), tlens, len(tbs), type_of, data,
                           len(data), dlens if n == 1 else _u32s(dlens), meta, len(meta),
                           ffi.NULL if mlens is None else mlens if n == 1 else _u32s(mlens), schema,
                           schemas, random_bytes(16 * n), first_position,
                           ts, ffi.from_buffer("uint8_t[]", buf, require_writable=True), size) != size:
        return None  # pragma: no cover - every input evl_encode_cols refuses is declined above
    last = first_position + n - 1
    return _commit((buf, first_position, n, [_result((stream, version + 1, version + n, first_position, last))],
                    [(key, version + 1, version + n, 0, size - COMMIT_SIZE)], dict.fromkeys(tbs), [], [], []))


# The named tuples built from whole tuples (C speed), not through their keyword-taking __new__.
_commit = functools.partial(tuple.__new__, EncodedCommit)
_result = functools.partial(tuple.__new__, AppendResult)
