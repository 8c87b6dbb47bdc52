"""Combined appends (engine/combine.py): with durability="fsync" the front thread writes the queued
fast-path appends of other threads, syncs once and wakes them; each thread gets its own result or
error, and an interrupted front thread leaves nothing stuck."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import evstore
from evstore import NewEvent
from evstore.engine.combine import Combiner, Request


def _run(threads: list[threading.Thread], timeout: float = 60) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "an appending thread never returned"


def test_each_thread_gets_its_own_result_or_error(store_path: str, impl: str) -> None:
    """Eight threads append at once, some with a wrong expected version and some events that are not
    plain (the general path): every append that should pass is in its stream, in order, once, and
    every wrong one raised WrongExpectedVersion in its own thread and wrote nothing."""
    got: dict[int, list[Any]] = {k: [] for k in range(8)}
    with evstore.open(store_path, log_impl=impl) as s:
        def work(k: int) -> None:
            v = 0
            for i in range(40):
                ev = NewEvent("T", b"%d" % i, tags=("t",) if k == 7 and i % 3 == 0 else ())
                wrong = k % 2 == 1 and i % 5 == 4
                try:
                    r = s.append(f"s-{k}", [ev], expected_version=v + 7 if wrong else (v or evstore.NO_STREAM))
                except evstore.WrongExpectedVersion as e:
                    got[k].append(("refused", e.actual))
                    assert e.actual == v
                else:
                    v = r.last_version
                    got[k].append(v)

        _run([threading.Thread(target=work, args=(k,)) for k in range(8)])
        for k in range(8):
            versions = [x for x in got[k] if not isinstance(x, tuple)]
            refused = [x for x in got[k] if isinstance(x, tuple)]
            assert versions == list(range(1, len(versions) + 1))
            assert len(refused) == (8 if k % 2 else 0)
            assert [int(e.data) for e in s.read_stream(f"s-{k}")] == [i for i in range(40)
                                                                     if not (k % 2 == 1 and i % 5 == 4)]
        assert [e.position for e in s.read_all()] == list(range(1, 8 * 40 - 4 * 8 + 1))
    with evstore.open(store_path, log_impl=impl) as s:
        assert sum(len(s.read_stream(f"s-{k}")) for k in range(8)) == 8 * 40 - 4 * 8


def test_a_front_thread_interrupted_in_its_sync_leaves_each_commit_to_its_own_thread(
        store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first sync a front thread starts raises KeyboardInterrupt (as Ctrl-C would): that append
    raises it, the threads of its batch and those queued behind return normally (each syncing its
    own commit), and every acknowledged append is there after a reopen."""
    acked: dict[int, list[int]] = {k: [] for k in range(6)}
    interrupted: list[int] = []
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("warm", [NewEvent("T", b"")])
        group = s._core.group  # type: ignore[union-attr]
        real = group.await_durable
        fired = threading.Event()

        def await_durable(seq: int) -> None:
            if not fired.is_set() and threading.current_thread().name == "front":
                fired.set()
                time.sleep(0.05)  # let the others queue behind this batch
                raise KeyboardInterrupt
            real(seq)

        monkeypatch.setattr(group, "await_durable", await_durable)

        def work(k: int) -> None:
            for i in range(30):
                try:
                    s.append(f"s-{k}", [NewEvent("T", b"%d" % i)])
                except KeyboardInterrupt:
                    interrupted.append(k)
                    continue
                acked[k].append(i)

        threads = [threading.Thread(target=work, args=(k,), name="front" if k == 0 else f"t{k}") for k in range(6)]
        _run(threads)
        assert fired.is_set() and interrupted == [0]
        assert all(len(acked[k]) == 30 for k in range(1, 6)) and len(acked[0]) == 29
        monkeypatch.undo()
    with evstore.open(store_path, log_impl=impl) as s:
        for k, want in acked.items():
            have = [int(e.data) for e in s.read_stream(f"s-{k}")]
            assert set(want) <= set(have) and len(have) - len(want) <= 1  # the interrupted one: in or not


def test_a_lone_appender_takes_the_front_and_wakes_nobody(store_path: str, impl: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[Request] = []
    real = Combiner.hand_on

    def hand_on(self: Combiner, unwritten: list[Request], mine: Request) -> None:
        real(self, unwritten, mine)
        if self.front is not None:
            released.append(self.front)

    monkeypatch.setattr(Combiner, "hand_on", hand_on)
    with evstore.open(store_path, log_impl=impl) as s:
        for i in range(20):
            s.append("solo", [NewEvent("T", b"%d" % i)])
        assert released == [] and s._core.writer.combiner.front is None  # type: ignore[union-attr]
        assert len(s.read_stream("solo")) == 20


def test_an_interrupted_waiter_gives_up_its_place_and_the_front() -> None:
    """`give_up` (what an append interrupted before it was written does): its request leaves the
    queue and, when it held the front, the next queued thread is given it."""
    c = Combiner(writer=None)  # type: ignore[arg-type]
    a, b, d = Request(("a", [], None, None)), Request(("b", [], None, None)), Request(("d", [], None, None))
    for r in (b, d):
        r.wait = threading.Lock()
        r.wait.acquire()
    c.queue, c.front = [a, b, d], a
    c.give_up(a)
    assert c.queue == [b, d] and c.front is b
    assert b.wait is not None and not b.wait.locked() and d.wait is not None and d.wait.locked()
    c.give_up(d)  # a waiter, not the front: only out of the queue
    assert c.queue == [b] and c.front is b
    c.give_up(b)
    assert c.queue == [] and c.front is None


def _round(s: Any, *args: tuple[Any, list[Any], Any, Any]) -> list[Request]:
    """Write `args` (stream, events, expected, fields) as one round of queued appends, as a front thread
    does, and sync it; the requests with their results or errors."""
    core = s._core
    reqs = [Request(a) for a in args]
    with core.wlock:
        top = core.writer.combiner.write_round(reqs)
    if top:
        core.group.await_durable(top)
    assert all(r.done for r in reqs)
    return reqs


def _commits(s: Any) -> list[list[tuple[str, int]]]:
    """The store's events grouped by commit: (stream, version) of each."""
    out: dict[int, list[tuple[str, int]]] = {}
    for e in s.read_all():
        out.setdefault(e.recorded_at, []).append((str(e.stream), e.version))
    return list(out.values())


def test_a_round_is_written_as_one_commit_of_its_appends(store_path: str, impl: str) -> None:
    """A round of appends to different streams is one commit (one recorded_at, consecutive positions):
    each append gets its own result, a refused one its own error with nothing of it written, one not
    plain is declined (result None: its thread takes the general path), and the events read back."""
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("b", [NewEvent("T", b"b1"), NewEvent("U", b"b1u")])  # (a type is plain once it is known)
        reqs = _round(s, ("a", [NewEvent("T", b"a1"), NewEvent("U", b"a2", b"m")], evstore.NO_STREAM, None),
                      ("b", [NewEvent("T", b"b2")], 5, None),  # wrong expected version
                      ("c", [NewEvent("T", b"c1", tags=("x",))], evstore.ANY, None),  # not plain
                      ("d", [], evstore.ANY, (["T"], [b"d1"], [b""])),
                      ("b", [NewEvent("T", b"b2")], 2, None))
        assert [r.error is not None for r in reqs] == [False, True, False, False, False]
        assert isinstance(reqs[1].error, evstore.WrongExpectedVersion) and reqs[2].result is None
        a, d, b = reqs[0].result, reqs[3].result, reqs[4].result
        assert a is not None and d is not None and b is not None
        assert (a.first_version, a.last_version, a.first_position, a.last_position) == (1, 2, 3, 4)
        assert (d.first_version, d.first_position, b.first_version, b.first_position) == (1, 5, 3, 6)
        assert reqs[0].seq == reqs[3].seq == reqs[4].seq > 0
        assert _commits(s) == [[("b", 1), ("b", 2)], [("a", 1), ("a", 2), ("d", 1), ("b", 3)]]
        assert [e.data for e in s.read_stream("b")] == [b"b1", b"b1u", b"b2"]
        assert [(e.type, e.metadata) for e in s.read_stream("a")] == [("T", b""), ("U", b"m")]
        assert s.read_stream("c") == []
    with evstore.open(store_path, log_impl=impl) as s:  # and so it is in the index rebuilt on reopening
        assert [e.position for e in s.read_all()] == [1, 2, 3, 4, 5, 6]
        assert [e.data for e in s.read_stream("d")] == [b"d1"]


def test_a_stream_met_twice_in_a_round_starts_a_new_commit(store_path: str, impl: str) -> None:
    """The second append to a stream in one round is checked against the first (written first, as a
    commit of its own): right expected versions pass, a stale one is refused."""
    with evstore.open(store_path, log_impl=impl) as s:
        reqs = _round(s, ("a", [NewEvent("T", b"1")], evstore.NO_STREAM, None),
                      ("z", [NewEvent("T", b"z")], evstore.NO_STREAM, None),
                      ("a", [NewEvent("T", b"2")], 1, None),
                      ("a", [NewEvent("T", b"3")], 1, None))  # stale: a is at 2 by then
        assert [r.error is None for r in reqs] == [True, True, True, False]
        assert isinstance(reqs[3].error, evstore.WrongExpectedVersion)
        assert _commits(s) == [[("a", 1), ("z", 1)], [("a", 2)]]
        assert [e.data for e in s.read_stream("a")] == [b"1", b"2"]


def test_a_round_too_large_for_one_commit_is_written_as_several(store_path: str, impl: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import evstore.engine.combine as combine
    monkeypatch.setattr(combine, "MAX_ROUND_EVENTS", 3)
    with evstore.open(store_path, log_impl=impl) as s:
        _round(s, *((f"s{k}", [NewEvent("T", b"x")] * 2, evstore.NO_STREAM, None) for k in range(4)))
        assert [len(c) for c in _commits(s)] == [2, 2, 2, 2]
        monkeypatch.setattr(combine, "MAX_ROUND_EVENTS", 4)
        _round(s, *((f"t{k}", [NewEvent("T", b"x")], evstore.NO_STREAM, None) for k in range(6)))
        assert [len(c) for c in _commits(s)][4:] == [4, 2]


def test_a_round_that_cannot_be_written_fails_every_append_of_it(store_path: str, impl: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk at the round's write: each append of it raises the StorageError, nothing is written,
    and the next round is written."""
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("w", [NewEvent("T", b"")])
        log = s._core.log  # type: ignore[union-attr]
        real = log.impl.pwrite

        def full(fd: int, buf: Any, off: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(log.impl, "pwrite", full)
        reqs = _round(s, ("a", [NewEvent("T", b"1")], evstore.ANY, None), ("b", [NewEvent("T", b"2")], evstore.ANY, None))
        assert all(isinstance(r.error, evstore.StorageError) for r in reqs)
        monkeypatch.setattr(log.impl, "pwrite", real)
        assert [e.position for e in s.read_all()] == [1]
        reqs = _round(s, ("a", [NewEvent("T", b"1")], evstore.ANY, None), ("b", [NewEvent("T", b"2")], evstore.ANY, None))
        assert all(r.error is None for r in reqs)
        assert _commits(s)[1:] == [[("a", 1), ("b", 1)]]
    with evstore.open(store_path, log_impl=impl) as s:
        assert [str(e.stream) for e in s.read_all()] == ["w", "a", "b"]
