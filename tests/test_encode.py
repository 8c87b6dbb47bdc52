"""The commit encoder: evstore.format.clog.encode_commit (evl_encode_commit in C) against its pure-Python
twin evstore.format.pylog.encode_commit — the same bytes and offsets for the same input, bytes that scan
back to the events given, and the same clear error, with nothing written, for bad input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evstore.format import clog, encode, pylog
from evstore.format.encode import MAX_COMMIT_BYTES, MAX_VERSION, ControlRecord, EncodedCommit, PartToEncode
from evstore.format.layout import (COMMIT_SIZE, FLAG_CALLER_ID, FLAG_UUID_STREAM, HEADER, HEADER_SIZE, KIND_AUX,
                                   KIND_COMMIT, KIND_EVENT, KIND_MARK, KIND_SNAPSHOT, KIND_TRACKING, U64)
from evstore.records import NewEvent, encode_tags

ALL = 0b1111110
CODECS = [clog, pylog]


@contextmanager
def fixed_entropy(seed: int = 7) -> Iterator[None]:
    """The id pool gives the same bytes to each encoder (a counter run), so random ids agree."""
    def take(n: int) -> bytes:
        return bytes((seed + i * 31) & 0xFF for i in range(n))

    with mock.patch.object(encode, "_entropy", take):
        yield


def both(parts: Sequence[PartToEncode], controls: Sequence[ControlRecord], first: int,
         ts: int) -> EncodedCommit:
    with fixed_entropy():
        c = clog.encode_commit(parts, controls, first, ts)
    with fixed_entropy():
        p = pylog.encode_commit(parts, controls, first, ts)
    assert bytes(c.buf) == bytes(p.buf)
    for field in EncodedCommit._fields:
        assert getattr(c, field) == getattr(p, field), field
    assert isinstance(c.buf, bytearray)
    return c


def decode(buf: bytes, log: ModuleType, first: int) -> list[tuple[Any, ...]]:
    """The records of one commit as (header fields..., stream, type, meta, tags, data), via the codec's scan."""
    r = log.scan(buf, 0, len(buf), next_position=first, kinds=ALL, max_out=1 << 20)
    assert r.code == 0 and r.end == len(buf) and r.commits == 1
    out = []
    for off in r.offsets:
        h = HEADER.unpack_from(buf, off)
        at = off + HEADER_SIZE
        parts = []
        for n in (h[5], h[4], h[12], h[6]):
            parts.append(bytes(buf[at:at + n]))
            at += n
        parts.append(bytes(buf[at:off + h[1]]))
        out.append((*h, *parts))
    assert log.walk(buf, 0, len(r.offsets), len(buf)) == r.offsets
    return out


def check_decodes(enc: EncodedCommit, parts: Sequence[PartToEncode], controls: Sequence[ControlRecord],
                  first: int, ts: int) -> None:
    """What scanning the bytes gives back is what was encoded."""
    for log in CODECS:
        recs = decode(bytes(enc.buf), log, first)
        pos = first
        i = 0
        for p in parts:
            for k, (tb, data, meta, idb, schema, gb) in enumerate(p.events):
                h = recs[i]
                assert h[2] == KIND_EVENT and h[7] == pos and h[8] == p.version + k + 1 and h[9] == ts
                assert h[3] == p.flags | (FLAG_CALLER_ID if idb is not None else 0)
                assert h[11] == schema and h[13:] == (p.stored, tb, meta, gb, data)
                if idb is not None:
                    assert h[10] == idb
                else:
                    assert uuid.UUID(bytes=h[10]).version == 4
                pos += 1
                i += 1
        for x in controls:
            h = recs[i]
            assert (h[2], h[3], h[7], h[8], h[10], h[11]) == (x.kind, x.stream_flags, pos, x.version, bytes(16), x.schema)
            assert h[13:] == (x.stream, x.name, b"", b"", x.data)
            i += 1
        c = recs[i]
        assert c[2] == KIND_COMMIT and c[7] == first and c[8] == pos - first and c[11] == i
        assert U64.unpack(c[17])[0] == len(enc.buf) - COMMIT_SIZE


# ---- generated commits ---------------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12)
payloads = st.one_of(st.just(b""), st.binary(max_size=64), st.binary(min_size=2000, max_size=5000))
tag_lists = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                             min_size=1, max_size=30), max_size=4)


@st.composite
def events(draw: Any) -> tuple[bytes, bytes, bytes, bytes | None, int, bytes]:
    tb = draw(names).encode()
    idb = draw(st.one_of(st.none(), st.uuids().map(lambda u: u.bytes)))
    tags = draw(tag_lists)
    schema = draw(st.one_of(st.just(0), st.integers(0, (1 << 32) - 1)))
    return tb, draw(payloads), draw(st.one_of(st.just(b""), st.binary(max_size=40))), idb, schema, encode_tags(tags)


@st.composite
def parts_of(draw: Any) -> PartToEncode:
    stream: Any = draw(st.one_of(names, st.uuids()))
    if isinstance(stream, uuid.UUID):
        stored, flags = stream.bytes, FLAG_UUID_STREAM
    else:
        stored, flags = stream.encode(), 0
    version = draw(st.one_of(st.integers(0, 1000), st.just(MAX_VERSION - 200)))
    evs = draw(st.lists(events(), min_size=1, max_size=40))
    return PartToEncode(stream, b"k" + stored, stored, flags, version, evs)


@st.composite
def controls_of(draw: Any) -> ControlRecord:
    kind = draw(st.sampled_from([KIND_MARK, KIND_SNAPSHOT, KIND_TRACKING, KIND_AUX]))
    stream: Any = draw(st.one_of(names, st.uuids()))
    stored, flags = (stream.bytes, FLAG_UUID_STREAM) if isinstance(stream, uuid.UUID) else (stream.encode(), 0)
    name = b"" if kind == KIND_TRACKING else draw(names).encode()
    return ControlRecord(kind, stored, flags, name, draw(st.integers(0, (1 << 64) - 1)), draw(payloads),
                         draw(st.integers(0, (1 << 32) - 1)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(parts=st.lists(parts_of(), max_size=4), controls=st.lists(controls_of(), max_size=4),
       first=st.one_of(st.integers(1, 1 << 40), st.just((1 << 64) - 200)), ts=st.integers(0, (1 << 64) - 1))
def test_both_encoders_give_the_same_commit(parts: list[PartToEncode], controls: list[ControlRecord], first: int,
                                            ts: int) -> None:
    enc = both(parts, controls, first, ts)
    check_decodes(enc, parts, controls, first, ts)


def test_many_events_and_the_index_offsets() -> None:
    evs = [(b"T%d" % (i % 7), b"x" * (i % 300), b"m" * (i % 3), uuid.uuid4().bytes if i % 9 == 0 else None, i,
            encode_tags([f"t{i % 4}"]) if i % 5 == 0 else b"") for i in range(3000)]
    parts = [PartToEncode("a", b"ka", b"a", 0, 10, evs[:1000]),
             PartToEncode(uuid.UUID(int=3), b"kb", uuid.UUID(int=3).bytes, FLAG_UUID_STREAM, 0, evs[1000:])]
    controls = [ControlRecord(KIND_MARK, b"a", 0, b"$closed", 1010, b"", 0),
                ControlRecord(KIND_TRACKING, b"up", 0, b"", 5, b"", 0)]
    enc = both(parts, controls, 100, 5)
    check_decodes(enc, parts, controls, 100, 5)
    recs = clog.scan(enc.buf, 0, len(enc.buf), next_position=100, kinds=ALL, max_out=4000).offsets
    assert enc.runs == [(b"ka", 11, 1010, 0, recs[1000]), (b"kb", 1, 2000, recs[1000], recs[3000] - recs[1000])]
    assert enc.control_offsets == recs[3000:3002]
    assert enc.tagged == [(evs[i][5], 100 + i, recs[i]) for i in range(0, 3000, 5)]
    assert enc.ids == [(evs[i][3], 100 + i) for i in range(0, 3000, 9)]
    assert list(enc.types) == [b"T%d" % i for i in range(7)]
    assert [tuple(r) for r in enc.results] == [("a", 11, 1010, 100, 1099), (uuid.UUID(int=3), 1, 2000, 1100, 3099)]


def test_zero_events_control_records_only() -> None:
    controls = [ControlRecord(k, b"s", 0, b"n", 3, b"d", 0) for k in (KIND_MARK, KIND_SNAPSHOT, KIND_TRACKING, KIND_AUX)]
    enc = both([], controls, 42, 1)
    assert enc.n_events == 0 and enc.runs == [] and enc.results == []
    check_decodes(enc, [], controls, 42, 1)
    empty = both([], [], 42, 1)
    assert len(empty.buf) == COMMIT_SIZE
    check_decodes(empty, [], [], 42, 1)


def test_the_largest_fields() -> None:
    big_tags = encode_tags(["%03d" % i + "x" * 251 for i in range(255)])  # 255 tags of 255 bytes: 65280 bytes
    assert len(big_tags) <= 0xFFFF
    ev = (b"T" * 0xFFFF, b"d" * 100_000, b"m" * 70_000, uuid.UUID(int=1).bytes, (1 << 32) - 1, big_tags)
    stream = "s" * 0xFFFF
    parts = [PartToEncode(stream, b"k", stream.encode(), 0, MAX_VERSION - 2, [ev, ev[:3] + (None,) + ev[4:]])]
    controls = [ControlRecord(KIND_SNAPSHOT, b"s" * 0xFFFF, 0, b"n" * 0xFFFF, (1 << 64) - 1, b"z" * 1000,
                              (1 << 32) - 1)]
    first = (1 << 64) - 3  # the events take the last two positions, the control records the next one
    enc = both(parts, controls, first, (1 << 64) - 1)
    check_decodes(enc, parts, controls, first, (1 << 64) - 1)


def test_a_commit_at_the_size_limit() -> None:
    """A commit of exactly MAX_COMMIT_BYTES before its COMMIT record is written; one byte more is refused.
    (The Python twin checksums at ~16 MB/s, so the accepted commit is checked through C only.)"""
    stream = b"s"
    n = 16
    base = HEADER_SIZE + len(stream) + 1
    each = MAX_COMMIT_BYTES // n
    sizes = [each - base] * (n - 1) + [MAX_COMMIT_BYTES - each * (n - 1) - base]
    blob = bytes(max(sizes) + 1)
    evs = [(b"T", blob[:k], b"", None, 0, b"") for k in sizes]
    parts = [PartToEncode("s", b"k", stream, 0, 0, evs)]
    enc = clog.encode_commit(parts, [], 1, 9)
    assert len(enc.buf) == MAX_COMMIT_BYTES + COMMIT_SIZE
    r = clog.scan(enc.buf, 0, len(enc.buf), next_position=1, kinds=1 << KIND_EVENT, max_out=n)
    assert r.code == 0 and r.events == n and r.end == len(enc.buf)
    del enc, r
    over = [PartToEncode("s", b"k", stream, 0, 0, evs[:-1] + [(b"T", blob[:sizes[-1] + 1], b"", None, 0, b"")])]
    msgs = set()
    for log in CODECS:
        with pytest.raises(ValueError, match="exceeds the limit") as e:
            log.encode_commit(over, [], 1, 9)
        msgs.add(str(e.value))
    assert len(msgs) == 1


# ---- bad input: the same clear error from both, and nothing returned ------------------------------

GOOD_EVENT = (b"T", b"data", b"", None, 0, b"")


def _part(**kw: Any) -> PartToEncode:
    fields = dict(stream="s", key=b"ks", stored=b"s", flags=0, version=0, events=[GOOD_EVENT])
    fields.update(kw)
    return PartToEncode(**fields)


def _event(**kw: Any) -> tuple[Any, ...]:
    order = ["type", "data", "meta", "id", "schema", "tags"]
    e = list(GOOD_EVENT)
    for k, v in kw.items():
        e[order.index(k)] = v
    return tuple(e)


BAD: list[tuple[str, list[PartToEncode], list[ControlRecord], int, int, str]] = [
    ("first position 0", [_part()], [], 0, 1, "first position"),
    ("negative time", [_part()], [], 1, -1, "commit time"),
    ("time over 64 bits", [_part()], [], 1, 1 << 64, "commit time"),
    ("positions past 2**64", [_part(events=[GOOD_EVENT] * 3)], [], (1 << 64) - 3, 1, "would pass 2\\*\\*64-1"),
    ("version past the largest", [_part(version=MAX_VERSION)], [], 1, 1, "largest version"),
    ("stream too long", [_part(stored=b"s" * 0x10000)], [], 1, 1, "stored stream id"),
    ("stream flags", [_part(flags=2)], [], 1, 1, "stream flags"),
    ("type too long", [_part(events=[_event(type=b"T" * 0x10000)])], [], 1, 1, "over 65535"),
    ("tags too long", [_part(events=[_event(tags=b"".join(b"\xff" + b"y" * 255 for _ in range(256)))])],
     [], 1, 1, "tags part"),
    ("tags malformed: zero length", [_part(events=[_event(tags=b"\x00")])], [], 1, 1, "tags part"),
    ("tags malformed: runs past", [_part(events=[_event(tags=b"\x05abc")])], [], 1, 1, "tags part"),
    ("id of 15 bytes", [_part(events=[_event(id=bytes(15))])], [], 1, 1, "16 bytes"),
    ("schema over 32 bits", [_part(events=[_event(schema=1 << 32)])], [], 1, 1, "schema"),
    ("negative schema", [_part(events=[_event(schema=-1)])], [], 1, 1, "schema"),
    ("data not bytes", [_part(events=[_event(data="text")])], [], 1, 1, "must be bytes"),
    ("control kind EVENT", [], [ControlRecord(KIND_EVENT, b"s", 0, b"n", 1, b"", 0)], 1, 1, "kind"),
    ("control kind 7", [], [ControlRecord(7, b"s", 0, b"n", 1, b"", 0)], 1, 1, "kind"),
    ("control name too long", [], [ControlRecord(KIND_MARK, b"s", 0, b"n" * 0x10000, 1, b"", 0)], 1, 1,
     "over 65535"),
    ("control flags", [], [ControlRecord(KIND_MARK, b"s", 3, b"n", 1, b"", 0)], 1, 1, "stream flags"),
    ("control version", [], [ControlRecord(KIND_MARK, b"s", 0, b"n", -1, b"", 0)], 1, 1, "version"),
    ("later part bad", [_part(), _part(stream="t", stored=b"t", events=[_event(tags=b"\x00")])], [], 1, 1,
     "stream 't', event 0: the tags part"),
]


@pytest.mark.parametrize("log", CODECS, ids=lambda m: m.IMPL)
@pytest.mark.parametrize("name,parts,controls,first,ts,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_clearly(log: ModuleType, name: str, parts: list[PartToEncode],
                                      controls: list[ControlRecord], first: int, ts: int, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        log.encode_commit(parts, controls, first, ts)
    other = pylog if log is clog else clog
    with pytest.raises(ValueError) as e2:
        other.encode_commit(parts, controls, first, ts)
    assert str(e.value) == str(e2.value)


def test_dispatch_uses_the_codec_given() -> None:
    parts = [_part()]
    with fixed_entropy():
        a = encode.encode_commit(clog, parts, [], 5, 6)
    with fixed_entropy():
        b = encode.encode_commit(pylog, parts, [], 5, 6)
    assert a == b


def test_the_size_formula_of_the_header() -> None:
    """evlog.h's size formula, against the sizing call (out too small: EVL_EFULL with the size, nothing written)."""
    from evstore._evlog_c import ffi, lib

    inb = b"ss" + b"T" + b"d" * 5 + b"T" + bytes(16) + b"cname"
    part = ffi.new("evl_enc_part *", {"version": 0, "n_events": 2, "stream_len": 2})
    evs = ffi.new("evl_enc_event[]", [{"type_len": 1, "data_len": 5}, {"type_len": 1, "id_len": 16}])
    ctl = ffi.new("evl_enc_control *", {"kind": KIND_MARK, "stream_len": 1, "name_len": 4})
    rnd = ffi.new("uint8_t[]", 16)
    size = ffi.new("size_t *")
    out = ffi.new("uint8_t[]", 1000)
    rc = lib.evl_encode_commit(ffi.from_buffer("uint8_t[]", inb), len(inb), part, 1, evs, 2, ctl, 1, rnd, 1, 1, 0,
                               out, 10, size, ffi.NULL)
    assert rc == lib.EVL_EFULL
    assert size[0] == 72 + 64 * 3 + len(inb) - 16 * 1 + 2 * (2 - 1)
    assert bytes(ffi.buffer(out)) == bytes(1000)
    assert lib.evl_encode_commit(ffi.from_buffer("uint8_t[]", inb), len(inb), part, 1, evs, 2, ctl, 1, rnd, 1, 1, 0,
                                 ffi.NULL, 0, size, ffi.NULL) == lib.EVL_EFULL
    # in_len one short: EINVAL, nothing written, the size untouched
    size[0] = 12345
    assert lib.evl_encode_commit(ffi.from_buffer("uint8_t[]", inb), len(inb) - 1, part, 1, evs, 2, ctl, 1, rnd, 1, 1,
                                 0, out, 1000, size, ffi.NULL) == lib.EVL_EINVAL
    assert size[0] == 12345 and bytes(ffi.buffer(out)) == bytes(1000)
    # no random ids for the event without an id
    assert lib.evl_encode_commit(ffi.from_buffer("uint8_t[]", inb), len(inb), part, 1, evs, 2, ctl, 1, rnd, 0, 1, 0,
                                 out, 1000, size, ffi.NULL) == lib.EVL_EINVAL
    assert lib.evl_encode_commit(ffi.from_buffer("uint8_t[]", inb), len(inb), part, 1, evs, 2, ctl, 1, rnd, 1, 1, 0,
                                 out, 1000, size, ffi.NULL) == 0
    assert size[0] == 72 + 64 * 3 + len(inb) - 16 + 2


# -- the fast path's encoder: encode_plain ------------------------------------------------------

plain_new_events = st.lists(st.builds(
    NewEvent, type=st.sampled_from(["Created", "Renamed", "Ünïcode"]), data=payloads,
    metadata=st.one_of(st.just(b""), st.binary(max_size=40)), schema=st.integers(0, (1 << 32) - 1)),
    min_size=1, max_size=40)
TYPE_NAMES = {t: t.encode() for t in ("Created", "Renamed", "Ünïcode")}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(evs=plain_new_events, version=st.one_of(st.integers(0, 1000), st.just(MAX_VERSION - 40)),
       first=st.one_of(st.integers(1, 1 << 40), st.just((1 << 64) - 100)), ts=st.integers(0, (1 << 64) - 1),
       uuid_stream=st.booleans())
def test_encode_plain_gives_the_commit_of_encode_commit(evs: list[NewEvent], version: int, first: int, ts: int,
                                                         uuid_stream: bool) -> None:
    """Both encoders' fast path give the bytes and offsets of the general encoder for the same events."""
    stream: Any = uuid.UUID(int=5) if uuid_stream else "order-1"
    stored, flags = (stream.bytes, FLAG_UUID_STREAM) if uuid_stream else (b"order-1", 0)
    valid = encode.plain_events(evs, TYPE_NAMES)
    assert valid is not None and len(valid) == len(evs)
    part = PartToEncode(stream, b"k" + stored, stored, flags, version, valid)
    general = both([part], [], first, ts)
    for codec in CODECS:
        with fixed_entropy():
            fast = codec.encode_plain(stream, b"k" + stored, stored, flags, version, evs, TYPE_NAMES, first, ts)
        assert fast is not None
        assert bytes(fast.buf) == bytes(general.buf)
        for field in EncodedCommit._fields[1:]:
            assert getattr(fast, field) == getattr(general, field), (codec.IMPL, field)


@pytest.mark.parametrize("log", CODECS, ids=["c", "python"])
@pytest.mark.parametrize("name,event", [
    ("an id", NewEvent("Created", b"x", id=uuid.UUID(int=1))),
    ("tags", NewEvent("Created", b"x", tags=("a",))),
    ("a type not checked yet", NewEvent("Unseen", b"x")),
    ("str data", NewEvent("Created", "x")),  # type: ignore[arg-type]
    ("a bytearray", NewEvent("Created", b"x", bytearray(b"m"))),  # type: ignore[arg-type]
    ("a bool schema", NewEvent("Created", b"x", schema=True)),
    ("a negative schema", NewEvent("Created", b"x", schema=-1)),
    ("too large", NewEvent("Created", b"x" * (16 << 20), b"m")),
    ("not a NewEvent", ("Created", b"x")),
    ("no type", NewEvent(None, b"x")),  # type: ignore[arg-type]
    ("a bytes type", NewEvent(b"Created", b"x")),  # type: ignore[arg-type]
])
def test_encode_plain_declines_what_is_not_plain(log: ModuleType, name: str, event: Any) -> None:
    """An event that is not plain makes both encoders decline the whole commit (the caller then takes
    the general path, which validates and says what is wrong)."""
    for evs in ([NewEvent("Created", b"ok"), event], [event], [event, NewEvent("Created", b"ok")]):
        assert encode.plain_events(evs, TYPE_NAMES) is None
        assert log.encode_plain("s", b"ss", b"s", 0, 0, evs, TYPE_NAMES, 1, 1) is None
    assert log.encode_plain("s", b"ss", b"s", 0, 0, [], TYPE_NAMES, 1, 1) is None
    assert log.encode_plain("s", b"ss", b"s", 0, MAX_VERSION, [NewEvent("Created", b"x")], TYPE_NAMES, 1, 1) is None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(evs=plain_new_events, version=st.integers(0, 1000), first=st.integers(1, 1 << 40))
def test_encode_fields_gives_the_commit_of_encode_plain(evs: list[NewEvent], version: int, first: int) -> None:
    """Events given as their fields (schema 1) encode as the same NewEvents do, in both encoders."""
    evs = [NewEvent(e.type, e.data, e.metadata) for e in evs]
    cols = ([e.type for e in evs], [e.data for e in evs], [e.metadata for e in evs])
    for codec in CODECS:
        with fixed_entropy():
            a = codec.encode_plain("s-1", b"ks-1", b"s-1", 0, version, evs, TYPE_NAMES, first, 9)
        with fixed_entropy():
            b = codec.encode_fields("s-1", b"ks-1", b"s-1", 0, version, *cols, TYPE_NAMES, first, 9)
        assert a is not None and b is not None and bytes(a.buf) == bytes(b.buf) and a[1:] == b[1:]


@pytest.mark.parametrize("log", CODECS, ids=["c", "python"])
def test_encode_fields_declines_what_is_not_plain(log: ModuleType) -> None:
    ok = (["Created"], [b"d"], [b"m"])
    assert log.encode_fields("s", b"ss", b"s", 0, 0, *ok, TYPE_NAMES, 1, 1) is not None
    for names, datas, metas in [(["Unseen"], [b"d"], [b"m"]), (["Created"], ["d"], [b"m"]),
                                (["Created"], [b"d"], [bytearray(b"m")]), (["Created"], [b"d"], []),
                                ([], [], []), (["Created"], [b"d" * (16 << 20)], [b"m"]), ([None], [b"d"], [b"m"]),
                                (["Created", None], [b"d", b"d"], [b"m", b"m"])]:
        assert log.encode_fields("s", b"ss", b"s", 0, 0, names, datas, metas, TYPE_NAMES, 1, 1) is None
