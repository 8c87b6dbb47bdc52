"""Stream reads served from the cache of small streams (evstore/engine/streamcache.py) stay current:
after appends, deletes, tombstones and closes in this process, after another process's commits
seen by a read-only store, and while a thread appends."""

from __future__ import annotations

import subprocess
import threading
import uuid

import pytest

import evstore
from evstore import NewEvent
from evstore.engine import streamcache

from conftest import PY, python_env


def _evs(n: int, tag: str = "e") -> list[NewEvent]:
    return [NewEvent("Ev", f"{tag}{i}".encode()) for i in range(n)]


def _versions(store: evstore.EventStore, stream: object, **kw: object) -> list[int]:
    """The versions a read gives, read twice (a stream is kept from its second whole read on, so
    that later reads go through the cache) and the same both times."""
    first = [r.version for r in store.read_stream(stream, **kw)]  # type: ignore[arg-type]
    assert [r.version for r in store.read_stream(stream, **kw)] == first  # type: ignore[arg-type]
    return first


def _in_other_process(path: str, impl: str, code: str) -> None:
    """Run `code` with `s`, the store opened for writing, in a child process; the store is closed (and
    so indexed) when it returns."""
    prog = ("import sys, uuid, evstore\nfrom evstore import NewEvent\n"
            f"s = evstore.open({path!r}, log_impl={impl!r})\n{code}\ns.close()\n")
    subprocess.run([PY, "-c", prog], env=python_env(), check=True, timeout=120)


def test_a_repeated_read_is_served_from_the_cache_and_equals_an_uncached_one(store_path: str, impl: str) -> None:
    sid = uuid.uuid4()
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append(sid, _evs(10))
        s.sync()
        first = s.read_stream(sid)
        cache = s._core.reader.cache  # type: ignore[union-attr]
        assert b"u" + sid.bytes not in cache.entries  # a stream read once is not kept
        assert s.read_stream(sid) == first
        assert b"u" + sid.bytes in cache.entries  # from the second read on it is
        again = s.read_stream(sid)
        assert again == first and [r.data for r in again] == [f"e{i}".encode() for i in range(10)]
        assert [r.version for r in s.read_stream(sid, desc=True)] == list(range(10, 0, -1))
        assert _versions(s, sid, gt=3, lte=6) == [4, 5, 6]
        assert _versions(s, sid, limit=2, desc=True) == [9, 10][::-1]
        chunks = s.stream_chunks(sid)
        chunks[0][1].clear()  # a caller's list: the cache's offsets are not changed through it
        assert s.read_stream(sid) == first
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert r.read_stream(sid) == first


def test_reads_through_the_cache_follow_appends_deletes_closes_and_tombstones(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("a", _evs(3))
        s.sync()
        assert _versions(s, "a") == [1, 2, 3]
        s.append("a", _evs(2, "x"))  # not indexed yet: the overlay serves it
        assert _versions(s, "a") == [1, 2, 3, 4, 5]
        s.sync()
        assert _versions(s, "a") == [1, 2, 3, 4, 5]
        assert _versions(s, "a") == [1, 2, 3, 4, 5]  # kept at the new generation
        s.delete_stream("a")
        assert _versions(s, "a") == []
        s.sync()
        assert _versions(s, "a") == []
        s.append("a", _evs(1, "y"))
        s.sync()
        assert [r.data for r in s.read_stream("a")] == [b"y0"]
        s.close_stream("a")
        s.sync()
        assert _versions(s, "a") == [6]
        s.append("b", _evs(2))
        s.sync()
        assert _versions(s, "b") == [1, 2]
        s.delete_stream("b", tombstone=True)
        with pytest.raises(evstore.StreamDeleted):
            s.read_stream("b")
        s.sync()
        with pytest.raises(evstore.StreamDeleted):
            s.read_stream("b")


def test_a_read_only_store_sees_another_process_commits_after_a_cached_read(store_path: str, impl: str) -> None:
    _in_other_process(store_path, impl, "s.append('a', [NewEvent('Ev', b'%d' % i) for i in range(3)])\n"
                                        "s.append('b', [NewEvent('Ev', b'b')])")
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert _versions(r, "a") == [1, 2, 3]
        assert _versions(r, "a") == [1, 2, 3]
        _in_other_process(store_path, impl, "s.append('a', [NewEvent('Ev', b'new')])")
        assert [r.data for r in r.read_stream("a")] == [b"0", b"1", b"2", b"new"]
        _in_other_process(store_path, impl, "s.delete_stream('a')")
        assert _versions(r, "a") == []
        _in_other_process(store_path, impl, "s.append('a', [NewEvent('Ev', b'after')])")
        assert [r.data for r in r.read_stream("a")] == [b"after"]
        assert _versions(r, "b") == [1]
        _in_other_process(store_path, impl, "s.delete_stream('b', tombstone=True)")
        with pytest.raises(evstore.StreamDeleted):
            r.read_stream("b")


def test_reads_racing_an_appending_thread_see_every_commit_in_order(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("hot", _evs(1))
        done = threading.Event()
        errors: list[BaseException] = []

        def append() -> None:
            try:
                for i in range(150):
                    s.append("hot", _evs(1, f"{i}-"))
                    if i % 10 == 0:
                        s.sync()
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
            finally:
                done.set()

        t = threading.Thread(target=append)
        t.start()
        last = 0
        while not done.is_set():
            vs = [r.version for r in s.read_stream("hot")]  # once: the appender may move on between two
            assert vs == list(range(1, len(vs) + 1)) and len(vs) >= last
            last = len(vs)
        t.join()
        assert not errors
        assert _versions(s, "hot") == list(range(1, 152))


def test_the_cache_keeps_small_streams_only_and_a_bounded_number_of_records(store_path: str, impl: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamcache, "MAX_EVENTS", 25)
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("big", _evs(streamcache.MAX_STREAM + 1))
        for i in range(5):
            s.append(f"s{i}", _evs(10))
        s.sync()
        cache = s._core.reader.cache  # type: ignore[union-attr]
        assert len(s.read_stream("big")) == streamcache.MAX_STREAM + 1
        assert len(s.read_stream("big")) == streamcache.MAX_STREAM + 1
        assert b"sbig" not in cache.entries and b"s" + b"big" == b"sbig"
        for i in range(5):
            assert _versions(s, f"s{i}") == list(range(1, 11))
        assert cache.events <= 25 and list(cache.entries) == [b"ss3", b"ss4"]
        for i in range(5):
            assert _versions(s, f"s{i}") == list(range(1, 11))


def test_streams_read_once_are_remembered_up_to_a_bound_and_not_kept(store_path: str, impl: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamcache, "MAX_SEEN", 3)
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        for i in range(5):
            s.append(f"s{i}", _evs(2))
        s.sync()
        cache = s._core.reader.cache  # type: ignore[union-attr]
        for i in range(5):
            assert len(s.read_stream(f"s{i}")) == 2
            assert len(cache.seen) <= 3
        assert not cache.entries
        assert len(s.read_stream("s4")) == 2  # remembered: its second read is kept
        assert list(cache.entries) == [b"ss4"]
