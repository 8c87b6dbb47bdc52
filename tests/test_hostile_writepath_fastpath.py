"""Attacks on the write path, the append fast path and append_fields: a retry after the stream was
closed, an empty append, append_fields of different lengths and other bad input, concurrent fast-path
appends and reads, the pure-Python log chosen from the environment."""

from __future__ import annotations

import subprocess
import textwrap
import threading
import uuid
from typing import Any

import pytest

import evstore
from evstore import tools

from tests.conftest import PY, python_env
from tests.support import ev
from tests.writepath_helpers import content


# -- bugs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tombstone", [False, True])
def test_a_retry_after_the_stream_was_closed_returns_the_original_result(store_path: str, impl: str,
                                                                         tombstone: bool) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        events = [ev("Known", b"a", id=uuid.uuid4()), ev("Known", b"b", id=uuid.uuid4())]
        first = s.append("y", events)
        if tombstone:
            s.delete_stream("y", tombstone=True)
        else:
            s.close_stream("y")
        assert s.append("y", events) == first  # the client did not see the first answer and retries


def test_an_empty_append_is_refused_for_being_empty(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("Known")])
        for exp in (evstore.ANY, 1, 5, evstore.NO_STREAM, "bad"):
            with pytest.raises(ValueError, match="at least one event"):
                s.append("s", [], expected_version=exp)
        s.close_stream("s")
        with pytest.raises(ValueError, match="at least one event"):
            s.append("s", [])


def test_append_fields_of_different_lengths_is_a_value_error_whatever_the_version(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("Known")])
        for exp in (evstore.ANY, 1, 7, evstore.NO_STREAM):
            with pytest.raises(ValueError):
                s.append_fields("s", ["Known"], [b"a", b"b"], [b"", b""], expected_version=exp)
        assert s.head() == 1


# -- what held --------------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["os", "fsync"])
def test_concurrent_fast_path_appends_and_reads(store_path: str, impl: str, durability: str) -> None:
    writers, per = 4, 60 if durability == "os" else 25
    errors: list[BaseException] = []
    results: list[evstore.AppendResult] = []
    lock = threading.Lock()
    with evstore.open(store_path, log_impl=impl, durability=durability, segment_size=16384) as s:
        s.append("warm", [ev("T")])
        done = threading.Event()

        def write(w: int) -> None:
            try:
                for i in range(per):
                    stream = f"w{w}" if i % 3 else "shared"
                    if i % 2:
                        r = s.append(stream, [ev("T", b"%d:%d:%d" % (w, i, k)) for k in range(1 + i % 4)])
                    else:
                        n = 1 + i % 3
                        r = s.append_fields(stream, ["T"] * n, [b"%d:%d:%d" % (w, i, k) for k in range(n)],
                                            [b"f"] * n)
                    with lock:
                        results.append(r)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def read() -> None:
            try:
                while not done.is_set():
                    evs = list(s.read_all())
                    assert [e.position for e in evs] == list(range(1, len(evs) + 1))
                    for st in ("shared", "w0"):
                        vs = [e.version for e in s.read_stream(st)]
                        assert vs == list(range(1, len(vs) + 1))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        rs = [threading.Thread(target=read) for _ in range(2)]
        for t in ts + rs:
            t.start()
        for t in ts:
            t.join()
        done.set()
        for t in rs:
            t.join()
        assert not errors, errors
        by_pos = {e.position: e for e in s.read_all()}
        for r in results:
            got = [by_pos[p] for p in range(r.first_position, r.last_position + 1)]
            assert [e.version for e in got] == list(range(r.first_version, r.last_version + 1))
            assert {e.stream for e in got} == {r.stream}
        total = 1 + sum(r.last_position - r.first_position + 1 for r in results)
        assert s.head() == total and sorted(by_pos) == list(range(1, total + 1))
        before = content(s)
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert content(r) == before
    assert tools.verify(store_path).ok


def test_pure_python_log_from_the_environment(store_path: str) -> None:
    code = textwrap.dedent(f"""
        import evstore
        with evstore.open({store_path!r}, segment_size=4096) as s:
            assert s.log_implementation == "python", s.log_implementation
            s.append("warm", [evstore.NewEvent("T", b"")])
            for i in range(200):
                s.append_fields("f", ["T"], [bytes([i % 251]) * (i * 13)], [b""], expected_version=i)
    """)
    run = subprocess.run([PY, "-c", code], env=python_env(EVSTORE_PURE="1"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with evstore.open(store_path, log_impl="c") as s:
        assert [len(e.data) for e in s.read_stream("f")] == [i * 13 for i in range(200)]
    assert tools.verify(store_path).ok


def test_append_fields_bad_input(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("Known")])
        cases: list[tuple[Any, Any, Any, type[Exception]]] = [
            ([b"Known"], [b"x"], [b""], TypeError),
            ([None], [b"x"], [b""], TypeError),
            (["Known"], [b"x"], [None], TypeError),
            (["Known"], [1], [b""], TypeError),
            (["x" * 401], [b"x"], [b""], ValueError),
            (["Known"], [b"x" * (16 << 20)], [b"m"], ValueError),  # over the event limit by one byte
            ([], [], [], ValueError),
            (["\udcff"], [b"x"], [b""], ValueError),
        ]
        for types, datas, metas, exc in cases:
            with pytest.raises(exc):
                s.append_fields("s", types, datas, metas)
        assert s.head() == 1
        r = s.append_fields("s", ["Known"], [b"x" * ((16 << 20) - 1)], [b"m"])  # exactly at the limit
        assert r.first_version == 2
        r = s.append_fields("s", ("Known", "Known"), (bytearray(b"ba"), memoryview(b"mv")), (b"", b""))
        assert [bytes(e.data) for e in s.read_stream("s", gt=2)] == [b"ba", b"mv"]
        r = s.append_fields(uuid.UUID(int=3), ["Brand new type"], [b"u"], [b""], expected_version=evstore.NO_STREAM)
        assert r.first_version == 1 and s.read_stream(uuid.UUID(int=3))[0].type == "Brand new type"
