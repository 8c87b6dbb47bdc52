"""Helpers of the log format tests (tests/test_log_*.py): the implementation under test (the `log`
fixture: evstore.format.clog in C and evstore.format.pylog in pure Python, tested alike) and a reference
encoder, independent of the code under test, that builds records, commits and a sample log."""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import pytest

from evstore.format import pylog as _pylog
from evstore.format.layout import (
    HEADER,
    HEADER_SIZE,
    KIND_AUX,
    KIND_COMMIT,
    KIND_EVENT,
    KIND_MARK,
    KIND_SNAPSHOT,
    KIND_TRACKING,
    U64,
)

ALL = 0b1111110  # kinds 1..6
EVENTS = 1 << KIND_EVENT
COMMITS = 1 << KIND_COMMIT


def load(name: str) -> ModuleType:
    if name == "python":
        return _pylog
    try:
        from evstore.format import clog as _clog
    except ImportError as e:  # a missing build is a failure, never a skip
        pytest.fail(f"the C log module is not built (run evstore/_build_evlog.py): {e}")
    return _clog


@pytest.fixture(params=["c", "python"])
def log(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param)


# ---- a reference encoder, independent of the code under test ----------------------------------

def _crc_table() -> list[int]:
    table = []
    for b in range(256):
        for _ in range(8):
            b = (b >> 1) ^ (0x82F63B78 if b & 1 else 0)
        table.append(b)
    return table


CRC_TABLE = _crc_table()
FIELDS = ("crc", "length", "kind", "flags", "type_len", "stream_len", "reserved", "position", "version",
          "recorded_at", "id", "schema", "meta_len")


def ref_crc(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def ref_seal(buf: bytearray) -> bytearray:
    """Fill in the crc of every record of buf (which they must tile)."""
    off = 0
    while off < len(buf):
        length = struct.unpack_from("<I", buf, off + 4)[0]
        struct.pack_into("<I", buf, off, ref_crc(buf[off + 4 : off + length]))
        off += length
    return buf


def record(kind: int, *, stream: bytes = b"", type: bytes = b"", meta: bytes = b"", data: bytes = b"",
           **fields: Any) -> bytearray:
    """An unsealed record; `fields` override header fields (named as in FIELDS)."""
    h = dict(zip(FIELDS, (0, HEADER_SIZE + len(stream) + len(type) + len(meta) + len(data), kind, 0, len(type),
                          len(stream), 0, 0, 0, 0, bytes(16), 1, len(meta))))
    h.update(fields)
    return bytearray(HEADER.pack(*h.values()) + stream + type + meta + data)


def event(type: bytes = b"Placed", data: bytes = b"{}", stream: bytes = b"order-1",
          meta: bytes = b"") -> bytearray:
    return record(KIND_EVENT, stream=stream, type=type, meta=meta, data=data)


def mark(name: bytes = b"$closed") -> bytearray:
    return record(KIND_MARK, stream=b"order-1", type=name)


def commit(first: int, *records: bytearray, **commit_fields: Any) -> bytearray:
    """A sealed commit: `records` (EVENTs numbered from `first`) and the COMMIT record."""
    body = bytearray()
    events = 0
    for r in records:
        r = bytearray(r)
        if r[8] == KIND_EVENT:
            U64.pack_into(r, 16, (first + events) % (1 << 64))
            events += 1
        body += r
    fields = dict(position=first, version=events, schema=len(records), recorded_at=7) | commit_fields
    body += record(KIND_COMMIT, data=U64.pack(len(body)), **fields)
    return ref_seal(body)


def patch(buf: bytearray, off: int, **fields: Any) -> None:
    """Change header fields of the record at `off` and give it a good checksum again."""
    h = dict(zip(FIELDS, HEADER.unpack_from(buf, off)))
    h.update(fields)
    HEADER.pack_into(buf, off, *h.values())
    struct.pack_into("<I", buf, off, ref_crc(buf[off + 4 : off + h["length"]]))


def starts(buf: bytes, off: int = 0) -> list[int]:
    """Offsets of the records of a well-formed buffer."""
    out = []
    while off < len(buf):
        out.append(off)
        off += struct.unpack_from("<I", buf, off + 4)[0]
    return out


def kinds_at(buf: bytes, offs: list[int]) -> list[int]:
    return [buf[o + 8] for o in offs]


def sample_log() -> tuple[bytes, list[bytearray]]:
    """Four commits at positions 1..6 using every kind; returns the log and its commits."""
    commits = [
        commit(1, event(b"Placed"), event(b"Paid", b"x" * 300, meta=b"m")),
        commit(3, mark(), record(KIND_TRACKING, stream=b"upstream", version=9),
               record(KIND_AUX, stream=b"ns", type=b"key", data=b"value")),
        commit(3, event(b"Shipped"), record(KIND_SNAPSHOT, stream=b"order-1", type=b"Order", data=b"s"),
               event(b"Placed", stream=b"order-2"), event(b"PlacedX")),
        commit(6, event(b"Paid", stream=b"order-2")),
    ]
    return b"".join(commits), commits
