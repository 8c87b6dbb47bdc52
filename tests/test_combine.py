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
