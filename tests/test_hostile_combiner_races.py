"""Hostile tests of the combiner (engine/combine.py): concurrent durable appends from threads racing
on shared streams with expected versions, plain and general appends mixed, a stream closed mid-flight,
rounds split at MAX_ROUND_EVENTS, few syncs under combining, bad and aliased stream ids in one round,
rounds larger than a commit may be, rounds across tiny segments."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

import evstore
from evstore import ANY, NO_STREAM, Condition, NewEvent, QueryItem
from evstore.engine import combine

from combiner_helpers import _check_store, _run


# -- same stream, expected versions ----------------------------------------------------------

def test_many_threads_racing_on_one_stream_with_expected_versions(store_path: str, impl: str) -> None:
    """12 threads each append 25 events to ONE stream, each with the version it last saw as expected
    version (retrying on WrongExpectedVersion with the actual version): versions contiguous, each
    acknowledged append at its version once, the refused ones wrote nothing; read-your-writes."""
    acked: dict[bytes, tuple[str, int, int]] = {}
    refused = [0]
    errors: list[BaseException] = []
    with evstore.open(store_path, log_impl=impl) as s:
        def work(k: int) -> None:
            try:
                v = 0
                for i in range(25):
                    data = b"%d:%d" % (k, i)
                    while True:
                        try:
                            r = s.append("hot", [NewEvent("T", data)], expected_version=v or NO_STREAM)
                        except evstore.WrongExpectedVersion as e:
                            refused[0] += 1
                            assert e.actual is not None and e.actual != v
                            v = e.actual
                            continue
                        assert r.first_version == r.last_version == v + 1
                        v = r.last_version
                        acked[data] = ("hot", r.first_version, r.first_position)
                        # read-your-writes, at once, from this thread
                        got = s.read_stream("hot", gt=v - 1, lte=v)
                        assert [bytes(e.data) for e in got] == [data]
                        assert s.head() >= r.last_position
                        (e0,) = list(s.read_all(gt=r.first_position - 1, limit=1))
                        assert bytes(e0.data) == data
                        break
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                raise

        _run([threading.Thread(target=work, args=(k,)) for k in range(12)])
        assert not errors, errors[:3]
        assert len(acked) == 300 and refused[0] > 0
        _check_store(s, acked)
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked)


def test_threads_with_stale_expected_versions_on_shared_streams(store_path: str, impl: str) -> None:
    """Threads append to 3 shared streams with expected versions they read a moment ago (some stale):
    every acknowledged append sits at exactly first_version == expected + 1; no two acked appends
    share a version; the refused ones are not in the store."""
    acked: dict[bytes, tuple[str, int, int]] = {}
    lock = threading.Lock()
    with evstore.open(store_path, log_impl=impl) as s:
        for k in range(3):
            s.append(f"sh-{k}", [NewEvent("T", b"init%d" % k)])
            acked[b"init%d" % k] = (f"sh-{k}", 1, k + 1)

        def work(k: int) -> None:
            for i in range(40):
                st = f"sh-{(k + i) % 3}"
                data = b"w%d:%d" % (k, i)
                exp = s.stream_version(st)
                try:
                    r = s.append(st, [NewEvent("T", data)], expected_version=exp)
                except evstore.WrongExpectedVersion as e:
                    assert e.actual != exp
                    continue
                assert r.first_version == exp + 1, (r, exp)
                with lock:
                    acked[data] = (st, r.first_version, r.first_position)

        _run([threading.Thread(target=work, args=(k,)) for k in range(10)])
        _check_store(s, acked)
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked)


# -- mixes ---------------------------------------------------------------------------------

def test_plain_and_general_appends_mixed_in_the_same_moment(store_path: str, impl: str) -> None:
    """Plain appends race with appends that carry caller ids, tags, conditions, expected_state,
    append_many and append_fields on overlapping streams: everything acknowledged is there once at
    its acknowledged place (also after reopen), nothing refused is."""
    acked: dict[bytes, tuple[str, int, int]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    with evstore.open(store_path, log_impl=impl) as s:
        def note(r: Any, datas: list[bytes]) -> None:
            with lock:
                for j, d in enumerate(datas):
                    acked[d] = (str(r.stream), r.first_version + j, r.first_position + j)

        def work(k: int) -> None:
            try:
                for i in range(40):
                    st = f"m-{(k * 7 + i) % 4}"
                    d = b"%d:%d" % (k, i)
                    kind = (k + i) % 7
                    try:
                        if kind == 0:
                            r = s.append(st, [NewEvent("T", d)])
                        elif kind == 1:
                            eid = uuid.uuid4()
                            r = s.append(st, [NewEvent("T", d, id=eid)])
                            again = s.append(st, [NewEvent("T", d, id=eid)])  # idempotent retry
                            assert again == r
                        elif kind == 2:
                            r = s.append(st, [NewEvent("T", d, tags=("tag:%d" % (i % 3),))])
                        elif kind == 3:
                            head = s.head()
                            r = s.append(st, [NewEvent("T", d, tags=("c:%d" % k,))],
                                         condition=Condition([QueryItem(tags=["c:%d" % k])], after=head))
                        elif kind == 4:
                            r = s.append(st, [NewEvent("T", d)], expected_version=s.stream_version(st))
                        elif kind == 5:
                            rs = s.append_many([(st, [NewEvent("T", d)], ANY),
                                                (f"solo-{k}", [NewEvent("T", d + b"+")], ANY)])
                            note(rs[1], [d + b"+"])
                            r = rs[0]
                        else:
                            r = s.append_fields(st, ["T", "U"], [d, d + b"b"], [b"", b"m"])
                            note(r, [d, d + b"b"])
                            continue
                    except evstore.WrongExpectedVersion:
                        assert kind == 4
                        continue
                    note(r, [d])
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                raise

        _run([threading.Thread(target=work, args=(k,)) for k in range(8)])
        assert not errors, errors[:3]
        _check_store(s, acked)
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked)


def test_appends_to_a_stream_closed_mid_flight(store_path: str, impl: str) -> None:
    """Threads append to a stream while another closes it: appends acknowledged before the close are
    there, every append after it raises StreamClosed, none after the close's mark is written."""
    acked: dict[bytes, tuple[str, int, int]] = {}
    lock = threading.Lock()
    closed_at: list[int] = []
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("c", [NewEvent("T", b"first")])
        acked[b"first"] = ("c", 1, 1)
        go = threading.Barrier(7)

        def work(k: int) -> None:
            go.wait()
            for i in range(60):
                d = b"%d:%d" % (k, i)
                try:
                    r = s.append("c", [NewEvent("T", d)])
                except evstore.StreamClosed:
                    continue
                with lock:
                    acked[d] = ("c", r.first_version, r.first_position)

        def closer() -> None:
            go.wait()
            time.sleep(0.01)
            s.close_stream("c")
            closed_at.append(s.stream_version("c"))

        _run([threading.Thread(target=work, args=(k,)) for k in range(6)] + [threading.Thread(target=closer)])
        assert closed_at and max(v for _s, v, _p in acked.values()) <= closed_at[0]
        _check_store(s, acked)
        with pytest.raises(evstore.StreamClosed):
            s.append("c", [NewEvent("T", b"late")])
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked)


def test_rounds_over_max_events_split_and_stay_contiguous(store_path: str, impl: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads append multi-event plain batches (some larger than MAX_ROUND_EVENTS alone) at once:
    every acknowledged batch is contiguous and in the store once."""
    monkeypatch.setattr(combine, "MAX_ROUND_EVENTS", 50)
    acked: dict[bytes, tuple[str, int, int]] = {}
    lock = threading.Lock()
    with evstore.open(store_path, log_impl=impl) as s:
        def work(k: int) -> None:
            for i in range(15):
                n = [1, 20, 49, 50, 51, 120][(k + i) % 6]
                datas = [b"%d:%d:%d" % (k, i, j) for j in range(n)]
                r = s.append(f"big-{k % 3}", [NewEvent("T", d) for d in datas])
                assert r.last_version - r.first_version == n - 1 and r.last_position - r.first_position == n - 1
                with lock:
                    for j, d in enumerate(datas):
                        acked[d] = (f"big-{k % 3}", r.first_version + j, r.first_position + j)

        _run([threading.Thread(target=work, args=(k,)) for k in range(8)])
        _check_store(s, acked)
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked)


# -- rounds: syncs, bad stream ids, sizes, segments ------------------------------------------

def test_sync_count_is_low_under_combining(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 threads x 25 appends: far fewer log syncs than appends (combined), and all there."""
    import os as _os
    from evstore.engine import groupcommit
    syncs = [0]
    real = _os.fdatasync

    def counting(fd: int) -> None:
        syncs[0] += 1
        real(fd)

    monkeypatch.setattr(groupcommit.os, "fdatasync", counting)
    acked: dict[bytes, tuple[str, int, int]] = {}
    lock = threading.Lock()
    with evstore.open(store_path, log_impl=impl) as s:
        def work(k: int) -> None:
            for i in range(25):
                d = b"%d:%d" % (k, i)
                r = s.append(f"q-{k}", [NewEvent("T", d)])
                with lock:
                    acked[d] = (f"q-{k}", r.first_version, r.first_position)

        before = syncs[0]
        _run([threading.Thread(target=work, args=(k,)) for k in range(16)])
        n = syncs[0] - before
        _check_store(s, acked)
    assert n < 400 / 3, n


def test_bad_and_aliased_stream_ids_in_one_round(store_path: str, impl: str) -> None:
    """A round holding malformed stream ids (unhashable, empty, wrong type) and the same stream under
    two spellings (str and a str subclass): each bad one gets its own error, the second spelling is
    checked against the first (NO_STREAM refused), the rest is written."""
    from test_combine import _round

    class S(str):
        pass

    with evstore.open(store_path, log_impl=impl) as s:
        s.append("warm", [NewEvent("T", b"w")])  # (a type is plain once it is known)
        reqs = _round(s, ("ok1", [NewEvent("T", b"1")], NO_STREAM, None),
                      (["unhashable"], [NewEvent("T", b"2")], ANY, None),
                      ("", [NewEvent("T", b"3")], ANY, None),
                      (12345, [NewEvent("T", b"4")], ANY, None),
                      ("dup", [NewEvent("T", b"5")], NO_STREAM, None),
                      (S("dup"), [NewEvent("T", b"6")], NO_STREAM, None),
                      ("ok2", [NewEvent("T", b"7")], NO_STREAM, None))
        errs = [type(r.error).__name__ if r.error else None for r in reqs]
        assert all(r.result is not None for r in (reqs[0], reqs[4], reqs[6])), [r.result for r in reqs]
        assert all(e in ("TypeError", "ValueError") for e in errs[1:4]), errs
        assert errs[5] == "WrongExpectedVersion", errs
        assert [bytes(e.data) for e in s.read_stream("dup")] == [b"5"]
        assert sorted(bytes(e.data) for e in s.read_all()) == [b"1", b"5", b"7", b"w"]
    with evstore.open(store_path, log_impl=impl) as s:
        assert sorted(bytes(e.data) for e in s.read_all()) == [b"1", b"5", b"7", b"w"]


def test_rounds_larger_than_a_commit_may_be_fall_back_to_one_commit_each(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the commit size limit lowered to 64 KiB, 8 threads append 20 KiB events (a round of them
    exceeds the limit, each alone fits) and now and then one of 70 KiB (too large alone): each fitting
    append is acknowledged and there once; each too-large one raises ValueError and is absent."""
    from evstore.format import clog, encode, pylog
    for m in (encode, clog, pylog):
        if hasattr(m, "MAX_COMMIT_BYTES"):
            monkeypatch.setattr(m, "MAX_COMMIT_BYTES", 64 << 10)
    acked: dict[bytes, tuple[str, int, int]] = {}
    toolarge: list[bytes] = []
    lock = threading.Lock()
    other: list[BaseException] = []
    with evstore.open(store_path, log_impl=impl) as s:
        def work(k: int) -> None:
            for i in range(20):
                tag = b"%d:%d|" % (k, i)
                big = i % 7 == 3
                d = tag + bytes((70 if big else 20) << 10)
                try:
                    r = s.append(f"L-{k}", [NewEvent("T", d)])
                except ValueError:
                    with lock:
                        toolarge.append(tag)
                    continue
                except BaseException as e:  # noqa: BLE001
                    other.append(e)
                    continue
                with lock:
                    acked[d] = (f"L-{k}", r.first_version, r.first_position)

        _run([threading.Thread(target=work, args=(k,)) for k in range(8)])
        assert not other, [repr(e) for e in other[:3]]
        assert len(toolarge) == 8 * 3 and len(acked) == 8 * 17
        _check_store(s, acked)
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked)


def test_rounds_across_tiny_segments(store_path: str, impl: str) -> None:
    """segment_size 4096 and 1 KiB events from 8 threads: rounds larger than a segment, many segment
    switches mid-round; everything acknowledged is there once, also after reopen."""
    acked: dict[bytes, tuple[str, int, int]] = {}
    lock = threading.Lock()
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        def work(k: int) -> None:
            for i in range(25):
                d = b"%d:%d|" % (k, i) + bytes(1000)
                r = s.append(f"seg-{k % 4}", [NewEvent("T", d)])
                with lock:
                    acked[d] = (f"seg-{k % 4}", r.first_version, r.first_position)
                assert bytes(s.read_stream(f"seg-{k % 4}", gt=r.first_version - 1, limit=1)[0].data) == d

        _run([threading.Thread(target=work, args=(k,)) for k in range(8)])
        _check_store(s, acked)
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked)
