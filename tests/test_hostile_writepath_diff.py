"""The append fast path against the general path: the same sequence of appends, on two stores, one
of them forced onto the general path (`Writer.append_plain` answering None), must give the same
results, the same errors and the same log contents."""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import evstore
from evstore import NewEvent

STREAMS = ["s0", "s1", uuid.UUID(int=7)]
IDS = [uuid.UUID(int=1000 + k) for k in range(4)]  # a small pool: retries and reuses happen

typ = st.sampled_from(["Known", "Known", "Other", "", "x" * 401, 5, "Fresh"])
data = st.one_of(st.binary(max_size=20), st.binary(max_size=20), st.just("text"), st.just(bytearray(b"ba")),
                 st.none())
schema = st.one_of(st.just(1), st.just(1), st.just(0), st.just(7), st.just(-1), st.just(1 << 32), st.just("1"))
ident = st.one_of(st.none(), st.none(), st.none(), st.sampled_from(IDS))
tags = st.one_of(st.just(()), st.just(()), st.just(("t",)), st.just(("",)))


@st.composite
def new_event(draw: Any) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return ("Known", b"not an event")
    return NewEvent(draw(typ), draw(data), draw(st.sampled_from([b"", b"m", "meta"])), draw(ident), draw(schema),
                    draw(tags))


expected = st.one_of(st.sampled_from(["ANY", "NO_STREAM", "STREAM_EXISTS", "bad", -1]),
                     st.integers(0, 2).map(lambda d: ("actual", d)), st.integers(0, 6))

op = st.one_of(
    st.tuples(st.just("append"), st.sampled_from(STREAMS), st.lists(new_event(), max_size=4), expected,
              st.booleans()),
    st.tuples(st.just("fields"), st.sampled_from(STREAMS),
              st.lists(st.sampled_from(["Known", "Other", "Fresh", ""]), max_size=3),
              st.lists(st.one_of(st.binary(max_size=8), st.just("text")), max_size=3),
              st.lists(st.sampled_from([b"", b"m"]), max_size=3), expected),
    st.tuples(st.just("retry")),
    st.tuples(st.just("close"), st.sampled_from(STREAMS)),
    st.tuples(st.just("delete"), st.sampled_from(STREAMS), st.booleans()),
)


def resolve(exp: Any, s: evstore.EventStore, stream: Any) -> Any:
    if exp == "ANY":
        return evstore.ANY
    if exp == "NO_STREAM":
        return evstore.NO_STREAM
    if exp == "STREAM_EXISTS":
        return evstore.STREAM_EXISTS
    if isinstance(exp, tuple):
        try:
            v = s.stream_version(stream)
        except evstore.EvstoreError:
            v = 0
        return max(0, v + exp[1] - 1)
    return exp


def outcome(fn: Any) -> Any:
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001 - the type and text are what is compared
        return ("error", type(e).__name__, str(e))
    return ("ok", r)


def apply(s: evstore.EventStore, o: tuple[Any, ...], last: list[Any]) -> Any:
    kind = o[0]
    if kind == "append":
        _, stream, events, exp, as_list = o
        evs: Any = list(events) if as_list else tuple(events)
        last[:] = [stream, evs]
        return outcome(lambda: s.append(stream, evs, expected_version=resolve(exp, s, stream)))
    if kind == "fields":
        _, stream, types, datas, metas, exp = o
        return outcome(lambda: s.append_fields(stream, types, datas, metas, expected_version=resolve(exp, s, stream)))
    if kind == "retry":
        if not last:
            return None
        stream, evs = last
        return outcome(lambda: s.append(stream, evs))
    if kind == "close":
        return outcome(lambda: s.close_stream(o[1]))
    return outcome(lambda: s.delete_stream(o[1], tombstone=o[2]))


def contents(s: evstore.EventStore) -> Any:
    recs = [(e.stream, e.version, e.position, e.type, e.data, e.metadata, e.schema, e.tags,
             e.id if e.id in IDS else None) for e in s.read_all()]
    info = []
    for stream in STREAMS:
        try:
            info.append(s.stream_info(stream))
        except evstore.EvstoreError as e:
            info.append(type(e).__name__)
    return s.head(), recs, info


def run_both(ops: list[tuple[Any, ...]], impl: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        fast = evstore.open(os.path.join(d, "fast"), log_impl=impl, durability="os")
        general = evstore.open(os.path.join(d, "general"), log_impl=impl, durability="os")
        try:
            core = general._core
            assert core is not None
            core.writer.append_plain = lambda *a, **k: None  # type: ignore[method-assign]
            for s in (fast, general):
                s.append("warm", [NewEvent("Known", b""), NewEvent("Other", b"")])  # the names are cached
            last_f: list[Any] = []
            last_g: list[Any] = []
            for i, o in enumerate(ops):
                a = apply(fast, o, last_f)
                b = apply(general, o, last_g)
                assert a == b, f"op {i} {o!r}: fast path {a!r}, general path {b!r}"
            assert contents(fast) == contents(general)
        finally:
            fast.close()
            general.close()
        for name in ("fast", "general"):  # and the logs read back alike after reopening
            with evstore.open(os.path.join(d, name), log_impl=impl, readonly=True) as r:
                if name == "fast":
                    got = contents(r)
                else:
                    assert contents(r) == got


COMMON = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@COMMON
@given(ops=st.lists(op, max_size=12))
@example(ops=[("append", "s0", [], 5, True)])
@example(ops=[("append", "s0", [NewEvent("Known", b"a", b"", IDS[0])], "ANY", True), ("close", "s0"), ("retry",)])
@example(ops=[("fields", "s0", ["Known"], [b"x"], [b"", b""], "STREAM_EXISTS")])
def test_fast_and_general_paths_agree(impl: str, ops: list[tuple[Any, ...]]) -> None:
    run_both(ops, impl)


# The same, without the divergences above (empty event lists, retries after a close or delete,
# append_fields of sequences of different lengths): everything else must agree.
op_without_known = st.one_of(
    st.tuples(st.just("append"), st.sampled_from(STREAMS), st.lists(new_event(), min_size=1, max_size=4), expected,
              st.booleans()),
    st.integers(1, 3).flatmap(lambda n: st.tuples(
        st.just("fields"), st.sampled_from(STREAMS),
        st.lists(st.sampled_from(["Known", "Other", "Fresh", ""]), min_size=n, max_size=n),
        st.lists(st.one_of(st.binary(max_size=8), st.just("text")), min_size=n, max_size=n),
        st.lists(st.sampled_from([b"", b"m"]), min_size=n, max_size=n), expected)),
    st.tuples(st.just("retry")),
)


@COMMON
@given(ops=st.lists(op_without_known, max_size=14))
def test_fast_and_general_paths_agree_on_open_streams(impl: str, ops: list[tuple[Any, ...]]) -> None:
    run_both(ops, impl)
