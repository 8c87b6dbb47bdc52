"""The two log implementations against each other (docs/log_format.md, src_c/evlog.h): on random,
damaged logs (hypothesis), evstore.format.clog (C) and evstore.format.pylog (pure Python) give the same
scan, walk, find_commit, seal and crc32c results, errors included."""

from __future__ import annotations

import struct
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evstore.format import pylog as _pylog
from evstore.format.layout import (
    COMMIT_SIZE,
    HEADER_SIZE,
    KIND_AUX,
    KIND_EVENT,
    KIND_MARK,
    LogFormatError,
)

from log_helpers import (
    ALL,
    COMMITS,
    EVENTS,
    commit,
    load,
    record,
    ref_crc,
    ref_seal,
)


# ---- the two implementations agree on anything -----------------------------------------------

NAMES = [b"", b"A", b"B", b"AB", b"Placed"]


@st.composite
def logs(draw: st.DrawFn) -> bytearray:
    """Random commits, valid or not: sometimes with header fields changed before sealing (so that
    the damage has a good checksum) and then with bytes damaged after."""
    buf = bytearray()
    pos = draw(st.integers(1, 5))
    odd = st.integers(0, 20).map(lambda x: x == 0)  # true one time in 21
    for _ in range(draw(st.integers(0, 5))):
        recs = []
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from([1, 1, 1, 3, 4, 5, 6]))
            if draw(odd):
                kind = draw(st.sampled_from([0, 2, 7, 255]))
            rec = record(kind, stream=draw(st.sampled_from([b"", b"s", b"order-1"])),
                         type=draw(st.sampled_from(NAMES)), meta=draw(st.binary(max_size=3)),
                         data=draw(st.binary(max_size=40)))
            if draw(odd):
                rec[draw(st.integers(8, HEADER_SIZE - 1))] = draw(st.integers(0, 255))
            recs.append(rec)
        c = commit(pos, *recs)
        pos += sum(r[8] == KIND_EVENT for r in recs)
        if draw(odd):
            c[draw(st.integers(len(c) - COMMIT_SIZE + 8, len(c) - 1))] ^= 1 << draw(st.integers(0, 7))
            ref_seal(c)
        if draw(odd):
            pos = max(0, pos + draw(st.integers(-2, 2)))
        buf += c
    for _ in range(draw(st.integers(0, 2))):
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        op = draw(st.sampled_from(["flip", "cut", "zeros", "insert"]))
        if op == "flip":
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del buf[i:]
        elif op == "zeros":
            buf[i:] = bytes(len(buf) - i)
        else:
            buf[i:i] = draw(st.binary(min_size=1, max_size=80))
    return buf


def outcome(f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    try:
        return ("ok", f(*args, **kw))
    except LogFormatError as e:
        return ("LogFormatError", e.code, e.offset)
    except Exception as e:  # argument errors must agree too
        return (type(e).__name__,)


FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(buf=logs(), data=st.data())
def test_scan_agrees(buf: bytearray, data: st.DataObject) -> None:
    c = load("c")
    n = data.draw(st.one_of(st.just(len(buf)), st.integers(0, len(buf))))
    off = data.draw(st.one_of(st.just(0), st.integers(0, len(buf) + 1)))
    kw = dict(
        next_position=data.draw(st.sampled_from([0, 1, 2, 3, 9])),
        kinds=data.draw(st.sampled_from([ALL, EVENTS, COMMITS, 0, 1 << KIND_MARK | 1 << KIND_AUX])),
        types=data.draw(st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=3).map(tuple))),
        max_out=data.draw(st.sampled_from([0, 1, 3, 5, 65536])),
        stop_position=data.draw(st.sampled_from([0, 0, 1, 2, 4, 8])),
    )
    got = outcome(c.scan, buf, off, n, **kw)
    assert got == outcome(_pylog.scan, buf, off, n, **kw)
    if got[0] == "ok" and got[1].code == 0 and kw["max_out"] == 65536:
        # a good result holds only whole verified commits: rescanning them gives the same
        r = got[1]
        again = c.scan(buf, off, r.end, **kw)
        assert again.code == 0 and again.offsets == r.offsets and again.next_position == r.next_position


@FAST
@given(buf=logs(), data=st.data())
def test_walk_find_commit_seal_and_crc_agree(buf: bytearray, data: st.DataObject) -> None:
    c = load("c")
    n = data.draw(st.one_of(st.just(len(buf)), st.integers(0, len(buf))))
    off = data.draw(st.one_of(st.sampled_from(starts_prefix(buf)), st.integers(0, len(buf) + 1)))
    count = data.draw(st.integers(0, 12))
    assert outcome(c.walk, buf, off, count, n) == outcome(_pylog.walk, buf, off, count, n)
    assert outcome(c.find_commit, buf, off, n) == outcome(_pylog.find_commit, buf, off, n)
    assert c.crc32c(buf[off:n]) == _pylog.crc32c(buf[off:n]) == ref_crc(buf[off:n])
    a, b = bytearray(buf), bytearray(buf)
    assert outcome(c.seal, a) == outcome(_pylog.seal, b)
    assert a == b


def starts_prefix(buf: bytes) -> list[int]:
    """Record offsets of buf as far as its lengths make sense (at least [0])."""
    out, off = [0], 0
    while len(buf) - off >= 8:
        length = struct.unpack_from("<I", buf, off + 4)[0]
        if length < HEADER_SIZE or length > len(buf) - off:
            break
        off += length
        out.append(off)
    return out
