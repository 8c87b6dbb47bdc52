"""The fast path's encoders (encode_plain, encode_fields) of both log implementations against each
other and against the general encoder (encode_commit of the validated events): the same bytes and
the same offsets for the index, and None exactly for what is not plain."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evstore import NewEvent
from evstore.engine.checks import type_names, validate_events
from evstore.format import clog, encode, pylog
from evstore.format.encode import PartToEncode, plain_events
from evstore.storage.index import stream_key


@pytest.fixture(autouse=True)
def fixed_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "_entropy", lambda n: bytes((7 * k + 3) % 256 for k in range(n)))


type_names.setdefault("Known", b"Known")
type_names.setdefault("\u00e9t\u00e9", "\u00e9t\u00e9".encode())

plain = st.builds(NewEvent, st.sampled_from(["Known", "\u00e9t\u00e9"]), st.binary(max_size=300),
                  st.binary(max_size=40), st.none(), st.sampled_from([0, 1, 2, (1 << 32) - 1]))
odd = st.one_of(
    st.builds(NewEvent, st.just("Never cached here"), st.binary(max_size=5)),
    st.builds(NewEvent, st.just("Known"), st.just(bytearray(b"x"))),
    st.builds(NewEvent, st.just("Known"), st.just(b"x"), st.just(b""), st.just(uuid.UUID(int=5))),
    st.builds(NewEvent, st.just("Known"), st.just(b"x"), st.just(b""), st.none(), st.just(1), st.just(("t",))),
    st.builds(NewEvent, st.just("Known"), st.just(b"x"), st.just(b""), st.none(), st.just(1 << 32)),
    st.just(("Known", b"x")),
)
streams = st.one_of(st.sampled_from(["s", "a-stream", "\u00fc" * 100]), st.integers(0, 2 ** 128 - 1).map(lambda i: uuid.UUID(int=i)))


def stored(stream: Any) -> tuple[bytes, int]:
    return (stream.bytes, 1) if isinstance(stream, uuid.UUID) else (stream.encode(), 0)


def same(a: Any, b: Any) -> None:
    assert a is not None and b is not None
    assert bytes(a.buf) == bytes(b.buf)
    assert (a.first_position, a.n_events, a.results, a.runs, list(a.types), a.ids, a.tagged, a.control_offsets) == \
        (b.first_position, b.n_events, b.results, b.runs, list(b.types), b.ids, b.tagged, b.control_offsets)


@settings(max_examples=150, deadline=None)
@given(stream=streams, events=st.lists(st.one_of(plain, plain, plain, odd), min_size=0, max_size=6),
       version=st.integers(0, 10 ** 6), first=st.integers(1, 2 ** 40), ts=st.integers(0, 2 ** 63))
def test_encode_plain_is_encode_commit_of_the_valid_events(stream: Any, events: list[Any], version: int, first: int,
                                                           ts: int) -> None:
    sb, flags = stored(stream)
    key = stream_key(stream)
    c = clog.encode_plain(stream, key, sb, flags, version, events, type_names, first, ts)
    p = pylog.encode_plain(stream, key, sb, flags, version, events, type_names, first, ts)
    if plain_events(events, type_names) is None:
        assert c is None and p is None
        return
    same(c, p)
    valid = validate_events(events)
    g = clog.encode_commit([PartToEncode(stream, key, sb, flags, version, valid)], (), first, ts)
    same(c, g)
    same(p, pylog.encode_commit([PartToEncode(stream, key, sb, flags, version, valid)], (), first, ts))


@settings(max_examples=150, deadline=None)
@given(stream=streams, n=st.integers(0, 5), data=st.data(), version=st.integers(0, 10 ** 6),
       first=st.integers(1, 2 ** 40))
def test_encode_fields_is_encode_plain_of_schema_1_events(stream: Any, n: int, data: Any, version: int,
                                                          first: int) -> None:
    names = data.draw(st.lists(st.sampled_from(["Known", "\u00e9t\u00e9"]), min_size=n, max_size=n))
    datas = data.draw(st.lists(st.binary(max_size=200), min_size=n, max_size=n))
    metas = data.draw(st.lists(st.binary(max_size=20), min_size=n, max_size=n))
    sb, flags = stored(stream)
    key = stream_key(stream)
    evs = [NewEvent(t, d, m) for t, d, m in zip(names, datas, metas)]
    for log in (clog, pylog):
        f = log.encode_fields(stream, key, sb, flags, version, names, datas, metas, type_names, first, 99)
        e = log.encode_plain(stream, key, sb, flags, version, evs, type_names, first, 99)
        if n == 0:
            assert f is None and e is None
        else:
            same(f, e)
        # lengths that differ: nothing is encoded
        assert log.encode_fields(stream, key, sb, flags, version, names + ["Known"], datas, metas, type_names,
                                 first, 99) is None


@pytest.mark.parametrize("log", [clog, pylog], ids=["c", "python"])
def test_the_fast_encoders_refuse_what_the_general_one_refuses(log: Any) -> None:
    key = stream_key("s")
    big = b"x" * (16 << 20)
    assert log.encode_plain("s", key, b"s", 0, 0, [NewEvent("Known", big, b"m")], type_names, 1, 1) is None
    assert log.encode_fields("s", key, b"s", 0, 0, ["Known"], [big], [b"m"], type_names, 1, 1) is None
    assert log.encode_plain("s", key, b"s", 0, (1 << 63) - 1, [NewEvent("Known", b"")], type_names, 1, 1) is None
    assert log.encode_plain("s", key, b"s", 0, 0, [NewEvent("Known", b"")], type_names, (1 << 64) - 1, 1) is None
    # 17 events of 16 MiB: over the commit limit of 256 MiB only together
    assert log.encode_fields("s", key, b"s", 0, 0, ["Known"] * 17, [big[:-1]] * 17, [b""] * 17, type_names, 1, 1) is None
