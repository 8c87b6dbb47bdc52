"""The log format layer's scan (docs/log_format.md, src_c/evlog.h): evstore.format.clog (C) and
evstore.format.pylog (pure Python) tested alike on good logs (every kind, event types, stop positions,
a full output array, bad arguments) and on damaged ones (a last commit truncated, torn to zeros or
bit-flipped; damage mid-log; frame, kind, commit record and position sequence errors)."""

from __future__ import annotations

import mmap
import struct
from types import ModuleType
from typing import Any

import pytest

from evstore.format.layout import (
    ECOMMIT,
    ECRC,
    EFRAME,
    EFULL,
    EINVAL,
    EKIND,
    ESEQ,
    ETRUNC,
    HEADER_SIZE,
    KIND_AUX,
    KIND_MARK,
    KIND_SNAPSHOT,
    KIND_TRACKING,
    U64,
)
from evstore.format.scanresult import ScanResult

from log_helpers import (
    ALL,
    COMMITS,
    EVENTS,
    commit,
    event,
    kinds_at,
    mark,
    patch,
    record,
    ref_crc,
    sample_log,
    starts,
)
from log_helpers import log  # noqa: F401  (the fixture: each test runs against both implementations)


# ---- scan: good logs -------------------------------------------------------------------------

def test_scan_reports_every_record_of_whole_commits(log: ModuleType) -> None:
    buf, commits = sample_log()
    r = log.scan(buf, 0, len(buf), next_position=1, kinds=ALL)
    assert r == ScanResult(0, starts(buf), len(buf), 7, 4, 6, 0)
    offs = starts(buf)
    assert kinds_at(buf, offs) == [1, 1, 2, 3, 5, 6, 2, 1, 4, 1, 1, 2, 1, 2]


def test_scan_from_an_offset_in_any_buffer_type(log: ModuleType, tmp_path: Any) -> None:
    buf, commits = sample_log()
    seg = b"S" * 32 + buf
    first = 32 + len(commits[0])
    want = ScanResult(0, starts(seg, first), len(seg), 7, 3, 4, 0)
    path = tmp_path / "seg"
    path.write_bytes(seg)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for b in (seg, bytearray(seg), memoryview(seg), m):
            assert log.scan(b, first, len(seg), next_position=3, kinds=ALL) == want
            assert log.walk(b, first, 2, len(seg)) == want.offsets[:2]
            assert log.find_commit(b, first, len(seg)) == want.offsets[3]
            assert log.crc32c(b) == ref_crc(seg)
        # every export of the mapping was released: it can be closed


def test_scan_of_nothing(log: ModuleType) -> None:
    for b in (b"", bytearray(), memoryview(b"")):
        assert log.scan(b, 0, 0, next_position=5, kinds=ALL) == ScanResult(0, [], 0, 5, 0, 0, 0)
    buf, _ = sample_log()
    assert log.scan(buf, len(buf), len(buf), next_position=7, kinds=ALL) == ScanResult(0, [], len(buf), 7, 0, 0, 0)


def test_scan_takes_the_first_position_when_not_given(log: ModuleType) -> None:
    buf = commit(41, event(), event()) + commit(43, mark()) + commit(43, event())
    r = log.scan(buf, 0, len(buf), next_position=0, kinds=COMMITS)
    assert (r.code, r.next_position, r.commits, r.events) == (0, 44, 3, 3)
    # a first commit without events gives its own position
    buf = commit(9, mark()) + commit(9, event())
    assert log.scan(buf, 0, len(buf), next_position=0, kinds=0) == ScanResult(0, [], len(buf), 10, 2, 1, 0)


def test_scan_continues_from_end(log: ModuleType) -> None:
    buf, _ = sample_log()
    got, off, pos = [], 0, 1
    for n in starts(buf)[1:] + [len(buf)]:  # n at every record boundary
        r = log.scan(buf, off, n, next_position=pos, kinds=ALL)
        assert r.code in (0, ETRUNC)
        got += r.offsets
        off, pos = r.end, r.next_position
    assert got == starts(buf) and off == len(buf) and pos == 7


@pytest.mark.parametrize(
    "kinds, types, kinds_reported",
    [
        (EVENTS, None, [1, 1, 1, 1, 1, 1]),
        (COMMITS, None, [2, 2, 2, 2]),
        (1 << KIND_MARK | 1 << KIND_TRACKING, None, [3, 5]),
        (1 << KIND_SNAPSHOT | 1 << KIND_AUX | 1 << 7 | 1 << 31, None, [6, 4]),  # unknown bits are ignored
        (0, None, []),
        (ALL, (), [2, 3, 5, 6, 2, 4, 2, 2]),  # no names: no events
        (EVENTS, (b"Paid",), [1, 1]),
        (ALL, (b"Placed", b"Nope"), [1, 2, 3, 5, 6, 2, 4, 1, 2, 2]),  # not PlacedX
        (EVENTS, (b"Plac", b"PlacedXY", b""), []),
        (EVENTS | COMMITS, (b"PlacedX", b"Shipped"), [2, 2, 1, 1, 2, 2]),
    ],
)
def test_scan_selects_by_kind_and_event_type(log: ModuleType, kinds: int, types: Any,
                                             kinds_reported: list[int]) -> None:
    buf, _ = sample_log()
    r = log.scan(buf, 0, len(buf), next_position=1, kinds=kinds, types=types)
    assert (r.code, r.end, r.commits, r.events) == (0, len(buf), 4, 6)
    assert kinds_at(buf, r.offsets) == kinds_reported
    assert set(r.offsets) <= set(starts(buf))


def test_scan_stops_before_stop_position(log: ModuleType) -> None:
    buf, commits = sample_log()  # commits at positions 1, 3, 3, 6
    ends = [sum(len(c) for c in commits[:i]) for i in range(5)]
    for stop, n_commits in [(1, 1), (2, 1), (3, 3), (5, 3), (6, 4), (100, 4)]:
        for start_pos in (1, 0):
            r = log.scan(buf, 0, len(buf), next_position=start_pos, kinds=COMMITS, stop_position=stop)
            assert (r.code, r.end, r.commits) == (0, ends[n_commits], n_commits)
    # the first commit's position is unknown: tested once it is read
    r = log.scan(buf, ends[3], len(buf), next_position=0, kinds=ALL, stop_position=5)
    assert r == ScanResult(0, [], ends[3], 0, 0, 0, 0)
    # a known position is tested before reading: damage past the stop does not matter
    torn = buf[:-5]
    r = log.scan(torn, 0, len(torn), next_position=1, kinds=0, stop_position=5)
    assert r == ScanResult(0, [], ends[3], 6, 3, 5, 0)
    assert log.scan(torn, 0, len(torn), next_position=1, kinds=0).code == ETRUNC


def test_scan_full_output_array(log: ModuleType) -> None:
    buf, commits = sample_log()  # 3, 4, 5 and 2 records
    ends = [sum(len(c) for c in commits[:i]) for i in range(5)]
    offs = starts(buf)
    r = log.scan(buf, 0, len(buf), next_position=1, kinds=ALL, max_out=2)
    assert r == ScanResult(EFULL, [], 0, 1, 0, 0, 0)
    r = log.scan(buf, 0, len(buf), next_position=1, kinds=ALL, max_out=8)
    assert r == ScanResult(0, offs[:7], ends[2], 3, 2, 2, 0)
    r = log.scan(buf, ends[2], len(buf), next_position=3, kinds=ALL, max_out=4)
    assert r == ScanResult(EFULL, [], ends[2], 3, 0, 0, ends[2])
    r = log.scan(buf, ends[2], len(buf), next_position=3, kinds=ALL, max_out=5)
    assert r == ScanResult(0, offs[7:12], ends[3], 6, 1, 3, 0)
    # nothing reported needs no room
    r = log.scan(buf, 0, len(buf), next_position=1, kinds=0, max_out=0)
    assert r == ScanResult(0, [], len(buf), 7, 4, 6, 0)
    # a damaged commit gives its error, not EFULL
    damaged = bytearray(buf)
    damaged[ends[2] + 30] ^= 1
    assert log.scan(damaged, ends[2], len(buf), next_position=3, kinds=ALL, max_out=1).code == ECRC
    # continuing from end collects everything
    got, off, pos = [], 0, 1
    while off < len(buf):
        r = log.scan(buf, off, len(buf), next_position=pos, kinds=ALL, max_out=6)
        assert r.code == 0 and r.commits >= 1
        got, off, pos = got + r.offsets, r.end, r.next_position
    assert got == offs


def test_scan_refuses_bad_arguments(log: ModuleType) -> None:
    buf, _ = sample_log()
    assert log.scan(buf, 11, 10, next_position=1, kinds=ALL) == ScanResult(EINVAL, [], 11, 1, 0, 0, 11)
    for off, n in [(-1, 10), (0, len(buf) + 1), (0, -1)]:
        with pytest.raises(ValueError):
            log.scan(buf, off, n, next_position=1, kinds=ALL)
    with pytest.raises(ValueError):
        log.scan(buf, 0, len(buf), next_position=-1, kinds=ALL)
    with pytest.raises(ValueError):
        log.scan(buf, 0, len(buf), next_position=1, kinds=1 << 32)
    with pytest.raises(TypeError):
        log.scan(buf, 0, len(buf), next_position=1, kinds=ALL, types=("Paid",))


# ---- scan: damaged logs ----------------------------------------------------------------------

def damaged_tail_case() -> tuple[bytes, int, list[int], list[tuple[int, int]]]:
    """A log of two good commits and a last one; returns the log, where the last commit starts, the
    good offsets and the (offset, length) of each record of the last commit."""
    head = commit(1, event(), event(b"Paid")) + commit(3, mark())
    last = commit(3, event(), record(KIND_SNAPSHOT, stream=b"s", data=b"snap" * 20), event(b"Paid", b"z" * 100))
    buf = bytes(head + last)
    recs = [(o, struct.unpack_from("<I", buf, o + 4)[0]) for o in starts(buf, len(head))]
    return buf, len(head), starts(buf)[: len(starts(head))], recs


def test_scan_of_a_truncated_last_commit(log: ModuleType) -> None:
    buf, good_end, good, recs = damaged_tail_case()
    for cut in range(good_end + 1, len(buf)):
        bad = max(o for o, _ in recs if o <= cut)  # the record cut short, or the one missing at cut
        want = ScanResult(ETRUNC, good, good_end, 3, 2, 2, bad)
        assert log.scan(buf, 0, cut, next_position=1, kinds=ALL) == want
        assert log.scan(buf[:cut], 0, cut, next_position=1, kinds=ALL) == want


def test_scan_of_a_last_commit_torn_to_zeros(log: ModuleType) -> None:
    buf, good_end, good, recs = damaged_tail_case()
    for cut in range(good_end, len(buf)):
        torn = buf[:cut] + bytes(len(buf) - cut)
        damaged = [o for o, n in recs if torn[o : o + n] != buf[o : o + n]]
        r = log.scan(torn, 0, len(torn), next_position=1, kinds=ALL)
        if not damaged:  # zeros where there were zeros
            assert r.code == 0 and r.end == len(buf)
            continue
        assert r.code in (ETRUNC, EFRAME, ECRC)
        assert r[1:] == (good, good_end, 3, 2, 2, damaged[0])
        if torn[damaged[0] + 4 : damaged[0] + 8] == b"\0\0\0\0":
            assert r.code == EFRAME


def test_scan_of_a_bit_flip(log: ModuleType) -> None:
    buf, good_end, good, recs = damaged_tail_case()
    for i in range(good_end, len(buf)):
        flipped = bytearray(buf)
        flipped[i] ^= 1 << (i % 8)
        rec = max(o for o, _ in recs if o <= i)
        r = log.scan(flipped, 0, len(flipped), next_position=1, kinds=ALL)
        assert r[1:] == (good, good_end, 3, 2, 2, rec)
        if 4 <= i - rec < 8:  # the length: it may now run short, long or under 64
            assert r.code in (ECRC, ETRUNC, EFRAME)
        else:
            assert r.code == ECRC


def test_scan_stops_at_the_first_damaged_commit_in_the_middle(log: ModuleType) -> None:
    buf, commits = sample_log()
    at = len(commits[0]) + len(commits[1])
    damaged = bytearray(buf)
    damaged[at + 20] ^= 0x80
    r = log.scan(damaged, 0, len(damaged), next_position=1, kinds=ALL)
    assert r == ScanResult(ECRC, starts(buf)[:7], at, 3, 2, 2, at)
    assert log.find_commit(damaged, r.err_off, len(damaged)) == starts(buf)[11]  # committed data follows


def test_scan_frame_errors(log: ModuleType) -> None:
    good = commit(1, event())
    for tail, code in [
        (struct.pack("<II", 0, 0), EFRAME),
        (struct.pack("<II", 0, 63) + bytes(100), EFRAME),
        (struct.pack("<II", 0, 65), ETRUNC),
        (struct.pack("<II", 0, 1000) + bytes(100), ETRUNC),
        (b"\xff" * 7, ETRUNC),
    ]:
        buf = good + tail
        assert log.scan(buf, 0, len(buf), next_position=1, kinds=ALL) == ScanResult(
            code, starts(good), len(good), 2, 1, 1, len(good))
    # parts longer than the record, with a good checksum
    for fields in ({"type_len": 7}, {"stream_len": 3, "type_len": 3}, {"meta_len": 1 << 31}):
        buf = commit(1, event(b"T", b"data", stream=b"")) + commit(2, event(b"T", b"data", stream=b""))
        second = len(buf) // 2
        patch(buf, second, **fields)
        assert log.scan(buf, 0, len(buf), next_position=1, kinds=ALL) == ScanResult(
            EFRAME, starts(buf)[:2], second, 2, 1, 1, second)


@pytest.mark.parametrize("kind", [0, 7, 8, 200, 255])
def test_scan_refuses_unknown_kinds(log: ModuleType, kind: int) -> None:
    buf = commit(1, event(), record(kind, data=b"from the future"), event())
    bad = starts(buf)[1]
    assert log.scan(buf, 0, len(buf), next_position=1, kinds=ALL) == ScanResult(EKIND, [], 0, 1, 0, 0, bad)
    buf[bad + 20] ^= 1  # a bad checksum is found first
    assert log.scan(buf, 0, len(buf), next_position=1, kinds=ALL).code == ECRC


@pytest.mark.parametrize(
    "change",
    [
        {"version": 1},  # event count
        {"version": 3},
        {"schema": 2},  # record count
        {"schema": 4},
        {"data": 1},  # byte count
        {"position": 5},  # not the first event's
        {"position": 4},
        {"stream_len": 8},  # must be empty
        {"type_len": 1, "meta_len": 1},
        {"length": 80},  # must be 72
    ],
)
def test_scan_refuses_a_commit_record_that_disagrees(log: ModuleType, change: dict[str, int]) -> None:
    good = commit(1, event())
    buf = good + commit(2, event(), mark(), event())
    c = starts(buf)[-1]
    change = dict(change)  # shared by the parametrized runs
    if "data" in change:
        U64.pack_into(buf, c + HEADER_SIZE, U64.unpack_from(buf, c + HEADER_SIZE)[0] + change.pop("data"))
    if change.get("length") == 80:
        buf += bytes(8)
    patch(buf, c, **change)
    assert log.scan(buf, 0, len(buf), next_position=1, kinds=ALL) == ScanResult(
        ECOMMIT, starts(good), len(good), 2, 1, 1, c)


def test_scan_refuses_positions_out_of_sequence(log: ModuleType) -> None:
    first = commit(1, event(), event())
    # a gap inside a commit
    buf = first + commit(3, event(), event(), event())
    e = starts(buf)[4]
    patch(buf, e, position=5)
    r = log.scan(buf, 0, len(buf), next_position=0, kinds=ALL)
    assert r == ScanResult(ESEQ, starts(first), len(first), 3, 1, 2, e)
    # a gap between commits, and a first position not the one expected
    buf = first + commit(4, event())
    assert log.scan(buf, 0, len(buf), next_position=1, kinds=ALL) == ScanResult(
        ESEQ, starts(first), len(first), 3, 1, 2, len(first))
    assert log.scan(buf, 0, len(buf), next_position=2, kinds=ALL) == ScanResult(ESEQ, [], 0, 2, 0, 0, 0)
    # a commit without events at the wrong position
    buf = first + commit(4, mark())
    assert log.scan(buf, 0, len(buf), next_position=1, kinds=ALL) == ScanResult(
        ESEQ, starts(first), len(first), 3, 1, 2, starts(buf)[-1])
    # positions wrap at 2**64 in both implementations
    top = (1 << 64) - 1
    buf = commit(top, event(), event()) + commit(1, event())
    assert log.scan(buf, 0, len(buf), next_position=top, kinds=0) == ScanResult(0, [], len(buf), 2, 2, 3, 0)
