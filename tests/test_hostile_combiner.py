"""Hostile tests of the combiner (engine/combine.py): concurrent durable appends from threads."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

import evstore
from evstore import ANY, NO_STREAM, Condition, NewEvent, QueryItem
from evstore.engine import combine
from evstore.engine.combine import Combiner


def _run(threads: list[threading.Thread], timeout: float = 30) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "an appending thread never returned"


def _all(s: Any) -> list[tuple[str, int, int, bytes]]:
    return [(str(e.stream), e.version, e.position, bytes(e.data)) for e in s.read_all()]


def _check_store(s: Any, acked: dict[bytes, tuple[str, int, int]], allowed_extra: set[bytes] = frozenset()) -> None:
    """Every acknowledged payload is in the store exactly once, at its acknowledged (stream, version,
    position); positions are contiguous, versions of each stream contiguous; nothing else but
    `allowed_extra` payloads is there."""
    evs = _all(s)
    assert [p for _s, _v, p, _d in evs] == list(range(1, len(evs) + 1))
    per: dict[str, list[int]] = {}
    for st, v, _p, _d in evs:
        per.setdefault(st, []).append(v)
    for st, vs in per.items():
        assert vs == list(range(1, len(vs) + 1)), (st, vs)
    datas = [d for *_x, d in evs]
    dup = {d for d in datas if datas.count(d) > 1}
    assert not dup, f"duplicated events: {sorted(dup)[:5]}"
    where = {d: (st, v, p) for st, v, p, d in evs}
    missing = [d for d in acked if d not in where]
    assert not missing, f"acknowledged but missing: {missing[:5]}"
    wrong = [(d, acked[d], where[d]) for d in acked if acked[d] != where[d]]
    assert not wrong, f"acknowledged elsewhere: {wrong[:5]}"
    extra = set(where) - set(acked) - set(allowed_extra)
    assert not extra, f"written but never acknowledged (and not allowed): {sorted(extra)[:5]}"


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


# -- a full disk -------------------------------------------------------------------------

def test_intermittent_full_disk_during_rounds(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 5th log write fails with ENOSPC while 8 threads append: each append raises StorageError
    (and is absent) or is acknowledged (and present, once, at its place) — before and after reopen;
    the threads keep going after a failure."""
    acked: dict[bytes, tuple[str, int, int]] = {}
    failed: set[bytes] = set()
    lock = threading.Lock()
    other: list[BaseException] = []
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("w", [NewEvent("T", b"w")])
        acked[b"w"] = ("w", 1, 1)
        log = s._core.log  # type: ignore[union-attr]
        real = log.impl.pwrite
        calls = [0]

        def flaky(fd: int, buf: Any, off: int) -> None:
            with lock:
                calls[0] += 1
                n = calls[0]
            if n % 5 == 0:
                raise OSError(28, "No space left on device")
            real(fd, buf, off)

        monkeypatch.setattr(log.impl, "pwrite", flaky)

        def work(k: int) -> None:
            for i in range(40):
                d = b"%d:%d" % (k, i)
                st = f"f-{(k + i) % 5}"
                try:
                    r = s.append(st, [NewEvent("T", d)])
                except evstore.StorageError:
                    with lock:
                        failed.add(d)
                    continue
                except BaseException as e:  # noqa: BLE001
                    other.append(e)
                    raise
                with lock:
                    acked[d] = (st, r.first_version, r.first_position)
                assert [bytes(e.data) for e in s.read_stream(st, gt=r.first_version - 1, lte=r.first_version)] == [d]

        _run([threading.Thread(target=work, args=(k,)) for k in range(8)])
        assert not other, other[:3]
        assert failed and len(acked) > 1
        monkeypatch.setattr(log.impl, "pwrite", real)
        _check_store(s, acked)
        s.append("after", [NewEvent("T", b"after")])
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked, {b"after"})


# -- interrupts ----------------------------------------------------------------------------

def _interrupt_test(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch, patch: Any,
                    n_threads: int = 6, per: int = 30, expected: bool = False, latches: bool = False) -> None:
    """Run `n_threads` threads appending `per` 1-event appends each (one stream per thread, with
    expected versions when `expected`) while `patch(s, fire)` arranges for one KeyboardInterrupt
    inside a round: the interrupted append may be in or not; every other append is acknowledged and
    in the store exactly once, at its acknowledged place; later appends work. With `latches` (the
    interrupt fell between a commit's write and its recording) the handle refuses every later write
    with StoreFailed, those refused appends may be in the log (the interrupted commit's), nothing
    acknowledged is missing, and the reopened store writes again."""
    acked: dict[bytes, tuple[str, int, int]] = {}
    interrupted: list[bytes] = []
    errors: list[tuple[bytes, BaseException]] = []
    lock = threading.Lock()
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("warm", [NewEvent("T", b"warm")])
        acked[b"warm"] = ("warm", 1, 1)
        fired = threading.Event()
        patch(s, fired)
        go = threading.Barrier(n_threads)

        def work(k: int) -> None:
            go.wait()
            v = 0
            for i in range(per):
                d = b"%d:%d" % (k, i)
                try:
                    r = s.append(f"s-{k}", [NewEvent("T", d)], expected_version=(v or NO_STREAM) if expected else ANY)
                except KeyboardInterrupt:
                    with lock:
                        interrupted.append(d)
                    try:
                        s.sync()  # the interrupted append may be written: durable, it is in what reads see
                    except evstore.StoreFailed:
                        assert latches
                    v = s.stream_version(f"s-{k}")
                    continue
                except BaseException as e:  # noqa: BLE001
                    with lock:
                        errors.append((d, e))
                    v = s.stream_version(f"s-{k}")
                    continue
                v = r.last_version
                with lock:
                    acked[d] = (f"s-{k}", r.first_version, r.first_position)

        _run([threading.Thread(target=work, args=(k,), name=f"t{k}") for k in range(n_threads)])
        monkeypatch.undo()
        assert fired.is_set(), "the interrupt never fired"
        assert len(interrupted) == 1, interrupted
        if latches:
            assert errors and all(isinstance(e, evstore.StoreFailed) for _d, e in errors), errors[:3]
            with pytest.raises(evstore.StoreFailed, match="reopen"):
                s.append("later", [NewEvent("T", b"later")])
        else:
            assert not errors, [(d, repr(e)) for d, e in errors[:5]]
            _check_store(s, acked, set(interrupted))
            s.append("later", [NewEvent("T", b"later")])
            acked[b"later"] = ("later", 1, s.head())
    maybe = set(interrupted) | {d for d, _e in errors}
    with evstore.open(store_path, log_impl=impl) as s:
        _check_store(s, acked, maybe)
        r = s.append("again", [NewEvent("T", b"again")])
        assert [e.data for e in s.read_stream("again")] == [b"again"] and r.first_position == s.head()


def _interrupt_after_a_round(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A patch for `_interrupt_test`: a KeyboardInterrupt once the first round of several appends
    was written and recorded (`Writer.write_parts` returned)."""
    def patch(s: Any, fired: threading.Event) -> None:
        real = s._core.writer.write_parts

        def write_parts(parts: Any) -> Any:
            out = real(parts)
            if len(parts) > 1 and not fired.is_set():
                fired.set()
                raise KeyboardInterrupt
            return out

        monkeypatch.setattr(s._core.writer, "write_parts", write_parts)

    return patch


def test_interrupt_right_after_a_round_commit_is_written(store_path: str, impl: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt arriving in the front thread just after a round's commit was written (as a
    signal does between two bytecodes): the other threads' appends of that commit must not be written
    a second time, nor refused after having been written."""
    _interrupt_test(store_path, impl, monkeypatch, _interrupt_after_a_round(monkeypatch))


def test_interrupt_right_after_a_round_commit_is_written_with_expected_versions(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupt_test(store_path, impl, monkeypatch, _interrupt_after_a_round(monkeypatch), expected=True)


def test_interrupt_while_checking_a_round(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt in the check of the third append of a round (nothing of the round written
    yet): every other append is written once; the interrupted front's own append is not lost twice."""
    def patch(s: Any, fired: threading.Event) -> None:
        real = Combiner.check
        seen = [0]

        def check(self: Combiner, r: Any) -> Any:
            if not fired.is_set():
                seen[0] += 1
                if seen[0] >= 3:
                    fired.set()
                    raise KeyboardInterrupt
            return real(self, r)

        monkeypatch.setattr(Combiner, "check", check)

    _interrupt_test(store_path, impl, monkeypatch, patch)


def test_interrupt_in_the_gather_spin(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt in the front thread's `time.sleep(0)` while it gathers the last batch's
    threads: its own append raises it unwritten, every other append completes."""
    def patch(s: Any, fired: threading.Event) -> None:
        real_sleep = time.sleep

        class T:
            perf_counter = staticmethod(time.perf_counter)

            @staticmethod
            def sleep(x: float) -> None:
                if x == 0 and not fired.is_set():
                    fired.set()
                    raise KeyboardInterrupt
                real_sleep(x)

        monkeypatch.setattr(combine, "time", T)

    _interrupt_test(store_path, impl, monkeypatch, patch)


def test_an_exception_escaping_await_durable_of_a_woken_thread(store_path: str, impl: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt in a woken (non-front) thread's own durable wait: only that append raises;
    the combiner keeps working (no thread stuck)."""
    def patch(s: Any, fired: threading.Event) -> None:
        group = s._core.group
        real = group.await_durable

        def await_durable(seq: int) -> None:
            if not fired.is_set() and group.durable_seq >= seq and threading.current_thread().name == "t3":
                fired.set()
                raise KeyboardInterrupt
            real(seq)

        monkeypatch.setattr(group, "await_durable", await_durable)

    _interrupt_test(store_path, impl, monkeypatch, patch)


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


def test_closing_the_store_while_threads_append(store_path: str, impl: str) -> None:
    """8 threads append while the store is closed under them: each append returns (and is there after
    reopen) or raises StoreClosed (and is not); no thread hangs."""
    acked: dict[bytes, tuple[str, int, int]] = {}
    maybe: set[bytes] = set()
    other: list[BaseException] = []
    lock = threading.Lock()
    s = evstore.open(store_path, log_impl=impl)
    go = threading.Barrier(9)

    def work(k: int) -> None:
        go.wait()
        for i in range(10_000):
            d = b"%d:%d" % (k, i)
            with lock:
                maybe.add(d)
            try:
                r = s.append(f"z-{k % 3}", [NewEvent("T", d)])
            except evstore.StoreClosed:
                return
            except BaseException as e:  # noqa: BLE001
                other.append(e)
                return
            with lock:
                maybe.discard(d)
                acked[d] = (f"z-{k % 3}", r.first_version, r.first_position)

    def closer() -> None:
        go.wait()
        time.sleep(0.2)
        s.close()

    _run([threading.Thread(target=work, args=(k,)) for k in range(8)] + [threading.Thread(target=closer)])
    assert not other, [repr(e) for e in other[:3]]
    assert acked
    with evstore.open(store_path, log_impl=impl) as s2:
        _check_store(s2, acked, maybe)


def test_failing_fsync_under_combined_appends(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 4th log sync fails (EIO) while 8 threads append: each append returns (durable: at or below
    durable_seq, and there after reopen) or raises StoreFailed; after the failure every append raises
    StoreFailed; no thread hangs."""
    import os as _os
    from evstore.engine import groupcommit
    real = _os.fdatasync
    n = [0]

    def flaky(fd: int) -> None:
        n[0] += 1
        if n[0] >= 4:
            raise OSError(5, "Input/output error")
        real(fd)

    acked: dict[bytes, tuple[str, int, int]] = {}
    maybe: set[bytes] = set()
    other: list[BaseException] = []
    lock = threading.Lock()
    with evstore.open(store_path, log_impl=impl) as s:
        group = s._core.group  # type: ignore[union-attr]
        monkeypatch.setattr(groupcommit.os, "fdatasync", flaky)

        def work(k: int) -> None:
            for i in range(50):
                d = b"%d:%d" % (k, i)
                with lock:
                    maybe.add(d)
                try:
                    r = s.append(f"y-{k}", [NewEvent("T", d)])
                except evstore.StoreFailed:
                    return
                except BaseException as e:  # noqa: BLE001
                    other.append(e)
                    return
                assert group.failed is None or group.durable_seq >= 1
                with lock:
                    maybe.discard(d)
                    acked[d] = (f"y-{k}", r.first_version, r.first_position)

        _run([threading.Thread(target=work, args=(k,)) for k in range(8)])
        assert not other, [repr(e) for e in other[:3]]
        with pytest.raises(evstore.StoreFailed):
            s.append("late", [NewEvent("T", b"late")])
        monkeypatch.undo()
        try:
            s.close()
        except evstore.EvstoreError:
            pass
    with evstore.open(store_path, log_impl=impl) as s2:
        _check_store(s2, acked, maybe)


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


def test_interrupt_right_after_a_round_reaches_the_log(store_path: str, impl: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt in the front thread just after a round's bytes reached the log (inside
    `Writer.install`, before the commit's effects are installed): later appends must not reuse its
    positions, and every acknowledged append must be there after reopen."""
    def patch(s: Any, fired: threading.Event) -> None:
        log = s._core.log
        real = log.append

        def append(buf: Any, first_position: int, n_events: int) -> Any:
            out = real(buf, first_position, n_events)
            if n_events > 1 and not fired.is_set():
                fired.set()
                raise KeyboardInterrupt
            return out

        monkeypatch.setattr(log, "append", append)

    _interrupt_test(store_path, impl, monkeypatch, patch, latches=True)


def test_interrupt_right_after_a_lone_append_reaches_the_log(store_path: str, impl: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, one thread: append 2 is interrupted after its bytes reached the log, before it was
    recorded; the handle then refuses writes (StoreFailed, reopen) rather than give append 3 the
    positions append 2 holds in the log; reopened, the store holds 1 and 2 and writes again."""
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("a", [NewEvent("T", b"1")])
        log = s._core.log  # type: ignore[union-attr]
        real = log.append
        fired: list[int] = []

        def append(buf: Any, first_position: int, n_events: int) -> Any:
            out = real(buf, first_position, n_events)
            if not fired:
                fired.append(1)
                raise KeyboardInterrupt
            return out

        monkeypatch.setattr(log, "append", append)
        with pytest.raises(KeyboardInterrupt):
            s.append("a", [NewEvent("T", b"2")])
        monkeypatch.undo()
        with pytest.raises(evstore.StoreFailed, match="interrupted"):
            s.append("a", [NewEvent("T", b"3")])
        assert [bytes(e.data) for e in s.read_stream("a")] == [b"1"]  # nothing read past the log's truth
    with evstore.open(store_path, log_impl=impl) as s:
        assert [(e.position, e.version, bytes(e.data)) for e in s.read_all()] == [(1, 1, b"1"), (2, 2, b"2")]
        r = s.append("a", [NewEvent("T", b"3")], expected_version=2)
        assert (r.first_position, r.first_version) == (3, 3)
    with evstore.open(store_path, log_impl=impl) as s:
        assert [bytes(e.data) for e in s.read_stream("a")] == [b"1", b"2", b"3"]


def test_interrupt_right_after_an_event_less_commit_reaches_the_log(store_path: str, impl: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit without events (here the mark of `close_stream`) interrupted after its bytes reached
    the log, before it was recorded: it takes no position, yet the handle's heads miss the close;
    the handle refuses writes rather than append to a stream the log holds closed. Reopened, the
    stream is closed."""
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("a", [NewEvent("T", b"1")])
        log = s._core.log  # type: ignore[union-attr]
        real = log.append

        def append(buf: Any, first_position: int, n_events: int) -> Any:
            out = real(buf, first_position, n_events)
            assert n_events == 0
            raise KeyboardInterrupt

        monkeypatch.setattr(log, "append", append)
        with pytest.raises(KeyboardInterrupt):
            s.close_stream("a")
        monkeypatch.undo()
        with pytest.raises(evstore.StoreFailed, match="interrupted"):
            s.append("a", [NewEvent("T", b"2")])
    with evstore.open(store_path, log_impl=impl) as s:
        with pytest.raises(evstore.StreamClosed):
            s.append("a", [NewEvent("T", b"2")])
        assert [bytes(e.data) for e in s.read_stream("a")] == [b"1"]
