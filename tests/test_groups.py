"""Consumer groups: member i of n handles exactly the streams whose hash modulo n is i, in version
order, each member committing its position with its handler's appends to a member store of its own;
members in reader processes killed with SIGKILL and restarted hand every event to exactly one member,
once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
import zlib

import pytest

import evstore
from evstore import ANY, NewEvent
from evstore.groups import member_path, members
from evstore.lifecycle import category
from evstore.storage.postings import stream_hash

from conftest import HERE, PY, python_env


def ev(t: str = "A") -> NewEvent:
    return NewEvent(t, b"x")


def test_the_stream_hash_is_crc32_of_the_stored_id() -> None:
    assert stream_hash(b"order-1") == zlib.crc32(b"order-1")
    assert stream_hash(b"") == 0 and stream_hash(b"a") == 0xE8B7BE43  # fixed for ever: members depend on it
    u = uuid.UUID(int=5)
    assert stream_hash(u.bytes) == zlib.crc32(u.bytes)


def _handled(path: str) -> list[tuple[str, int, int]]:
    with evstore.open(path, readonly=True) as s:
        return [tuple(json.loads(e.data)) for e in s.read_all(types=["Handled"])]  # type: ignore[misc]


def test_members_share_the_streams_and_keep_their_own_positions(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as w:
        for i in range(200):
            w.append(f"order-{i % 23}", [ev()] * (1 + i % 3))
            if i % 5 == 0:
                w.append_many([(f"order-m{i}", [ev()], ANY), (f"order-{i % 23}", [ev()], ANY), (f"user-{i}", [ev()], ANY),
                               (uuid.uuid4(), [ev()], ANY)])
        events = [e for e in w.read_all() if category(e.stream) == "order"]
        with evstore.open(store_path, readonly=True, log_impl=impl) as r:
            got: dict[int, list[evstore.RecordedEvent]] = {}
            for m in range(3):
                got[m] = []

                def handler(e: evstore.RecordedEvent, ctx: object, m: int = m) -> None:
                    got[m].append(e)
                    ctx.append("done-" + str(e.stream), [NewEvent("Handled", json.dumps(  # type: ignore[attr-defined]
                        [e.stream, e.version, e.position]).encode())])

                stats = r.consume("proj", handler, category="order", group=(m, 3), timeout=0.05)
                assert stats.handled == len(got[m])
        for m in range(3):
            assert all(stream_hash(str(e.stream).encode()) % 3 == m for e in got[m])
            assert [e.position for e in got[m]] == sorted(e.position for e in got[m])
            assert [h[2] for h in _handled(member_path(w.path, "proj", m, 3))] == [e.position for e in got[m]]
        assert sorted(e.position for m in got for e in got[m]) == [e.position for e in events]
        rows = list(members(w.path, w.head(), lambda p: evstore.open(p, readonly=True)))
        assert [(x.member, x.size, x.lag) for x in rows] == [(0, 3, 0), (1, 3, 0), (2, 3, 0)]
        # a second run handles nothing again; new events go to their members
        w.append("order-0", [ev()])
        total = 0
        for m in range(3):
            total += r_consume(store_path, impl, m)
        assert total == 1


def r_consume(path: str, impl: str, m: int) -> int:
    with evstore.open(path, readonly=True, log_impl=impl) as r:
        return r.consume("proj", lambda e, ctx: None, category="order", group=(m, 3), timeout=0.05).handled


@pytest.mark.parametrize("bad, exc", [((0,), TypeError), ((3, 3), ValueError), ((-1, 2), ValueError),
                                      ((0, 0), ValueError), ("0/3", TypeError), ((0, 2.0), TypeError)])
def test_a_bad_group_is_refused_and_creates_nothing(store: evstore.EventStore, bad: object,
                                                    exc: type[Exception]) -> None:
    store.append("order-1", [ev()])
    with pytest.raises(exc):
        store.consume("g", lambda e, ctx: None, group=bad, timeout=0)  # type: ignore[arg-type]
    with pytest.raises(exc):
        store.subscribe(group=bad)  # type: ignore[arg-type]
    assert not os.path.exists(os.path.join(store.path, "consumers"))


def test_a_group_of_another_size_is_refused(store: evstore.EventStore) -> None:
    store.append("order-1", [ev()])
    store.consume("g", lambda e, ctx: None, group=(0, 2), timeout=0)
    with pytest.raises(evstore.EvstoreError, match="size is fixed"):
        store.consume("g", lambda e, ctx: None, group=(0, 3), timeout=0)
    store.consume("g", lambda e, ctx: None, group=(1, 2), timeout=0)


def test_a_group_without_a_category_partitions_every_stream(store: evstore.EventStore) -> None:
    for i in range(60):
        store.append(f"s{i}", [ev()])
        store.append(uuid.uuid4(), [ev()])
    seen: list[int] = []
    for m in range(4):
        store.consume("all", lambda e, ctx: seen.append(e.position), group=(m, 4), timeout=0.02)
    assert sorted(seen) == list(range(1, store.head() + 1))
    with store.subscribe(group=(1, 4), timeout=0.05) as sub:
        got = [e for e in sub]
    assert got and all(stream_hash(e.stream.encode() if isinstance(e.stream, str) else e.stream.bytes) % 4 == 1
                       for e in got)


def test_a_group_of_member_processes_killed_at_random_handles_every_event_once(store_path: str, impl: str) -> None:
    size = 3
    rnd = random.Random(7)
    env = python_env(EVSTORE_PURE="1" if impl == "python" else "")
    worker = os.path.join(HERE, "group_worker.py")
    with evstore.open(store_path, log_impl=impl, durability="os") as w:
        w.append("order-0", [ev()])
        stop = threading.Event()

        def write() -> None:
            i = 0
            while not stop.is_set() and i < 1500:
                if i % 7 == 0:
                    w.append_many([(f"order-{rnd.randint(0, 40)}", [ev()], ANY), (f"user-{i}", [ev()], ANY)])
                else:
                    w.append(f"order-{i % 41}" if i % 3 else f"user-{i % 5}", [ev()] * (1 + i % 2))
                i += 1
                time.sleep(0.001)

        writer = threading.Thread(target=write)
        writer.start()
        procs: dict[int, subprocess.Popen[str]] = {}

        def start(m: int) -> None:
            p = subprocess.Popen([PY, worker, store_path, str(m), str(size), "60"], env=env,
                                 stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            procs[m] = p

        try:
            for m in range(size):
                start(m)
            kills = 0
            deadline = time.monotonic() + 120
            while (writer.is_alive() or kills < 6) and time.monotonic() < deadline:
                time.sleep(rnd.uniform(0.1, 0.4))
                m = rnd.randrange(size)
                procs[m].send_signal(signal.SIGKILL)
                procs[m].wait()
                kills += 1
                start(m)
            writer.join()
            want = [(e.stream, e.version, e.position) for e in w.read_all() if category(e.stream) == "order"]
            # let the members catch up, then stop them
            paths = [member_path(w.path, "proj", m, size) for m in range(size)]
            while time.monotonic() < deadline:
                try:
                    n = sum(len(_handled(p)) for p in paths)
                except evstore.EvstoreError:
                    n = -1
                if n >= len(want):
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            writer.join()
            for p in procs.values():
                p.send_signal(signal.SIGKILL)
                p.wait()
        assert kills >= 6
        got: list[tuple[str, int, int]] = []
        for m, p in enumerate(paths):
            mine = _handled(p)
            assert all(stream_hash(s.encode()) % size == m for s, _v, _p in mine)
            per: dict[str, list[int]] = {}
            for s, v, _p in mine:
                per.setdefault(s, []).append(v)
            assert all(vs == sorted(vs) for vs in per.values())  # in version order per stream
            got += mine
        assert sorted(got, key=lambda x: x[2]) == want  # every event of the category, exactly once
        assert len(set(x[2] for x in got)) == len(got)


def test_evstore_consumers_shows_each_member_with_position_and_lag(store_path: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from evstore.cli import main

    with evstore.open(store_path) as w:
        for i in range(30):
            w.append(f"order-{i}", [ev()])
        w.consume("single", lambda e, ctx: None, timeout=0, limit=5)
        for m in range(2):
            w.consume("proj", lambda e, ctx: None, category="order", group=(m, 2), timeout=0.02)
        w.append("order-x", [ev()])
    assert main(["consumers", store_path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["single", "5", "lag", "26"]
    assert [line.split()[0] for line in out[1:]] == ["proj#0/2", "proj#1/2"]
    assert all(line.split()[1:] == ["30", "lag", "1"] for line in out[1:])
