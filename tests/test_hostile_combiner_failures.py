"""Hostile tests of the combiner (engine/combine.py): concurrent durable appends from threads meeting
failures: an intermittently full disk, a KeyboardInterrupt at each point of a round (after its commit
is written, while it is checked, in the gather spin, in a woken thread's durable wait, after its bytes
reach the log; also for a lone append and an event-less commit), the store closed under the threads,
a failing fsync."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import evstore
from evstore import ANY, NO_STREAM, NewEvent
from evstore.engine import combine
from evstore.engine.combine import Combiner

from combiner_helpers import _check_store, _run


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


# -- the store closed under the threads, a failing fsync ------------------------------------

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
