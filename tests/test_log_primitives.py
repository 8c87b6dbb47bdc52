"""The log format layer's primitives (docs/log_format.md, src_c/evlog.h): crc32c, seal, write, walk,
walk_runs and find_commit of evstore.format.clog (C) and evstore.format.pylog (pure Python), tested
alike."""

from __future__ import annotations

import array
import errno
import os
import struct
from types import ModuleType
from typing import Any

import pytest

from evstore.format.layout import (
    COMMIT_SIZE,
    ECRC,
    EFRAME,
    EINVAL,
    EKIND,
    ETRUNC,
    KIND_AUX,
    KIND_COMMIT,
    KIND_EVENT,
    LogFormatError,
)

from log_helpers import (
    commit,
    event,
    load,
    record,
    ref_crc,
    ref_seal,
    sample_log,
    starts,
)
from log_helpers import log  # noqa: F401  (the fixture: each test runs against both implementations)


# ---- crc32c, seal, write ---------------------------------------------------------------------

def test_crc32c_check_value_and_chaining(log: ModuleType) -> None:
    assert log.crc32c(b"123456789") == 0xE3069283
    assert log.crc32c(b"") == 0
    data = bytes(range(256)) * 3
    for n in list(range(0, 40)) + [255, 256, 257, 768]:
        assert log.crc32c(data[:n]) == ref_crc(data[:n])
        half = n // 3
        assert log.crc32c(data[half:n], log.crc32c(data[:half])) == ref_crc(data[:n])
    assert log.crc32c(bytearray(b"123456789")) == log.crc32c(memoryview(b"0123456789")[1:]) == 0xE3069283
    assert log.crc32c(array.array("I", [1, 2, 3])) == ref_crc(struct.pack("=3I", 1, 2, 3))
    with pytest.raises(ValueError):
        log.crc32c(b"x", 1 << 32)


def test_c_constants_match_the_python_ones() -> None:
    from evstore.format import layout as _format

    lib = load("c").lib  # type: ignore[attr-defined]
    for name in ("EFRAME", "ECRC", "ESEQ", "ECOMMIT", "EKIND", "ETRUNC", "EFULL", "EINVAL"):
        assert getattr(lib, "EVL_" + name) == getattr(_format, name)
    assert (lib.EVL_HEADER_SIZE, lib.EVL_SEGMENT_HEADER_SIZE, lib.EVL_KIND_MAX) == (64, 32, 6)
    assert load("c").ffi.string(lib.evl_strerror(ECRC)) == _format.ERROR_TEXT[ECRC].encode()  # type: ignore


def test_seal_fills_every_crc(log: ModuleType) -> None:
    log_bytes, _ = sample_log()
    buf = bytearray(log_bytes)
    for o in starts(buf):
        buf[o : o + 4] = b"\0\0\0\0"
    log.seal(buf)
    assert buf == log_bytes
    empty = bytearray()
    log.seal(empty)
    assert empty == b""


@pytest.mark.parametrize(
    "tail, bad",
    [
        (b"\x00" * 7, 0),  # not even a length
        (struct.pack("<II", 0, 63) + bytes(55), 0),  # under 64
        (struct.pack("<II", 0, 100) + bytes(91), 0),  # past the end
        (bytes(record(KIND_AUX, data=b"abc")) + b"\x01", 67),  # a stray byte after a good record
    ],
    ids=["no-length", "under-64", "past-end", "stray-byte"],
)
def test_seal_refuses_records_that_do_not_tile(log: ModuleType, tail: bytes, bad: int) -> None:
    head = record(KIND_EVENT, type=b"T")
    buf = bytearray(head + tail)
    with pytest.raises(LogFormatError) as e:
        log.seal(buf)
    assert (e.value.code, e.value.offset) == (EFRAME, len(head) + bad)
    assert buf == head + tail  # left untouched
    with pytest.raises(BufferError):
        log.seal(bytes(commit(1)))


def test_write_appends_and_syncs(log: ModuleType, tmp_path: Any) -> None:
    path = tmp_path / "seg"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        log.write(fd, b"abc", False)
        log.write(fd, bytearray(b"defg"), True)
        log.write(fd, memoryview(b"xhiy")[1:3], True)
        log.write(fd, b"", True)
        big = os.urandom(3 << 20)
        log.write(fd, big, True)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abcdefghi" + big
    with pytest.raises(OSError) as e:
        log.write(fd, b"closed", False)  # fd is closed now
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError) as e:
        log.write(-1, b"", True)
    assert e.value.errno == errno.EBADF
    ro = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            log.write(ro, b"x", False)
        assert e.value.errno == errno.EBADF
    finally:
        os.close(ro)


# ---- walk and find_commit --------------------------------------------------------------------

def test_walk(log: ModuleType) -> None:
    buf, _ = sample_log()
    offs = starts(buf)
    assert log.walk(buf, 0, len(offs), len(buf)) == offs
    assert log.walk(buf, offs[3], 4, len(buf)) == offs[3:7]
    assert log.walk(buf, offs[3], 0, len(buf)) == []
    assert log.walk(buf, len(buf), 0, len(buf)) == []
    for args, code, at in [
        ((offs[3], 20, len(buf)), ETRUNC, len(buf)),  # runs off the end
        ((offs[3], 1 << 40, len(buf)), ETRUNC, len(buf)),  # a count nothing could hold
        ((offs[3], 4, offs[6] + 10), ETRUNC, offs[6]),
        ((offs[3] + 1, 1, len(buf)), ETRUNC, offs[3] + 1),  # not at a record: the "length" is huge
        ((len(buf) + 1, 1, len(buf)), EINVAL, len(buf) + 1),
        ((5, 1, 4), EINVAL, 5),
    ]:
        with pytest.raises(LogFormatError) as e:
            log.walk(buf, *args)
        assert (e.value.code, e.value.offset) == (code, at)
    damaged = bytearray(buf)
    damaged[offs[4] + 30] ^= 1
    with pytest.raises(LogFormatError) as e:
        log.walk(damaged, offs[3], 3, len(buf))
    assert (e.value.code, e.value.offset) == (ECRC, offs[4])
    future = commit(1, event(), record(9))
    with pytest.raises(LogFormatError) as e:
        log.walk(future, 0, 3, len(future))
    assert (e.value.code, e.value.offset) == (EKIND, starts(future)[1])
    with pytest.raises(ValueError):
        log.walk(buf, 0, -1, len(buf))


def test_walk_runs_is_walk_of_each_run(log: ModuleType) -> None:
    buf, _ = sample_log()
    offs = starts(buf)
    assert log.walk_runs(buf, [offs[1], 2, offs[5], 3, offs[0], 0], len(buf)) == offs[1:3] + offs[5:8]
    assert log.walk_runs(buf, [], len(buf)) == []
    assert log.walk_runs(buf, array.array("Q", [0, len(offs)]), len(buf)) == offs
    for runs, code, at in [
        ([offs[1], 1, offs[3], 20], ETRUNC, len(buf)),  # the second run runs off the end
        ([offs[1], 1, offs[3], 1 << 40], ETRUNC, len(buf)),  # a count nothing could hold
        ([offs[3] + 1, 1], ETRUNC, offs[3] + 1),
        ([0, 1, len(buf) + 1, 1], EINVAL, len(buf) + 1),
    ]:
        with pytest.raises(LogFormatError) as e:
            log.walk_runs(buf, runs, len(buf))
        assert (e.value.code, e.value.offset) == (code, at)
    damaged = bytearray(buf)
    damaged[offs[4] + 30] ^= 1
    with pytest.raises(LogFormatError) as e:
        log.walk_runs(damaged, [offs[0], 2, offs[3], 3], len(buf))
    assert (e.value.code, e.value.offset) == (ECRC, offs[4])
    for bad in ([0, -1], [0]):
        with pytest.raises(ValueError):
            log.walk_runs(buf, bad, len(buf))


def test_find_commit(log: ModuleType) -> None:
    buf, _ = sample_log()
    commits = [o for o in starts(buf) if buf[o + 8] == KIND_COMMIT]
    for off in range(0, len(buf) + 1, 7):
        later = [c for c in commits if c >= off]
        assert log.find_commit(buf, off, len(buf)) == (later[0] if later else -1)
    last = commits[-1]
    assert log.find_commit(buf, last, last + COMMIT_SIZE) == last
    assert log.find_commit(buf, last, last + COMMIT_SIZE - 1) == -1
    assert log.find_commit(buf, 0, 0) == -1
    # the right kind and length with a bad checksum, then a good one
    fake = record(KIND_COMMIT, data=bytes(8))
    fake[0] = 1
    junk = b"\0" * 5 + fake + b"\x48\0\0\0\x02" + bytes(ref_seal(record(KIND_COMMIT, data=bytes(8)))) + b"\0"
    assert log.find_commit(junk, 0, len(junk)) == 5 + 72 + 5
    assert log.find_commit(memoryview(junk), 0, len(junk)) == 5 + 72 + 5
    with pytest.raises(LogFormatError) as e:
        log.find_commit(buf, 11, 10)
    assert (e.value.code, e.value.offset) == (EINVAL, 11)
