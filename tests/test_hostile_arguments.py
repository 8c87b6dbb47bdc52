"""A hostile day without a power cut, the findings about arguments and options (one test per
finding), and those found by the interaction test (tests/test_interactions.py): a reader left open
across a reindex, a consumer whose effect is refused, close() racing appends, retried ids, Ctrl-C
during `evstore demo`."""

from __future__ import annotations

import errno
import os
import subprocess
import textwrap
import threading
import time
import uuid

import pytest

import evstore
import evstore.tools as tools
from tests.conftest import PY, python_env
from tests.support import ev


# -- arguments and options ---------------------------------------------------------------------------


def test_a_second_open_with_other_options_is_refused(store_path: str, impl: str) -> None:
    """Review: a second open() of an open path with other options silently got the first one's."""
    with evstore.open(store_path, log_impl=impl, durability="os"):
        with pytest.raises(evstore.EvstoreError, match="durability"):
            evstore.open(store_path, durability="fsync")
        other = "python" if impl == "c" else "c"
        with pytest.raises(evstore.EvstoreError, match="log_impl"):
            evstore.open(store_path, log_impl=other)
        with evstore.open(store_path) as same:  # no options: the open store's
            assert same.durability == "os"


def test_sync_failing_latches_the_store(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: EventStore.sync() raised a bare OSError and bypassed the failure latch."""
    s = evstore.open(store_path, log_impl=impl, durability="os")
    s.append("s", [ev()])

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(evstore.StoreFailed):
        s.sync()
    monkeypatch.undo()
    with pytest.raises(evstore.StoreFailed):
        s.append("s", [ev()])
    with pytest.raises(evstore.StoreFailed, match="last 1 acknowledged commit"):  # no sync vouched for it
        s.close()


def test_a_retried_event_id_with_other_content_is_refused(store: evstore.EventStore) -> None:
    """Finding 25: a retry with the same id but other data or type returned the original result."""
    eid = uuid.uuid4()
    r = store.append("s", [ev("A", b"1", id=eid)])
    assert store.append("s", [ev("A", b"1", id=eid)]) == r  # a true retry: the original result
    for other in (ev("A", b"2", id=eid), ev("B", b"1", id=eid), ev("A", b"1", id=eid, schema=2),
                  ev("A", b"1", id=eid, metadata=b"m"), ev("A", b"1", id=eid, tags=("t",))):
        with pytest.raises(evstore.DuplicateEventId):
            store.append("s", [other])
    assert store.head() == 1


@pytest.mark.parametrize("call, exc", [
    (lambda s: s.delete_stream("s", tombstone="false"), TypeError),  # finding 18
    (lambda s: s.delete_stream("s", tombstone=1), TypeError),
    (lambda s: list(s.subscribe(timeout=float("nan"))), ValueError),  # finding 22
    (lambda s: list(s.subscribe(timeout=True)), TypeError),
    (lambda s: s.consume("c", lambda e, ctx: None, limit=-1), ValueError),  # finding 21
    (lambda s: s.consume("c", lambda e, ctx: None, checkpoint_every=0), ValueError),
    (lambda s: s.save_snapshot("s", 1, b"", type="t", schema=True), TypeError),  # finding 24
    (lambda s: list(s.streams(prefix=5)), TypeError),  # finding 23
])
def test_bad_arguments_are_refused_and_write_nothing(store: evstore.EventStore, call: object, exc: type) -> None:
    store.append("s", [ev()])
    before = store.head()
    with pytest.raises(exc):
        call(store)  # type: ignore[operator]
    assert store.head() == before
    info = store.stream_info("s")
    assert info is not None and not info.deleted and not info.tombstoned


def test_consume_with_limit_zero_handles_nothing(store: evstore.EventStore) -> None:
    store.append("s", [ev(), ev()])
    seen: list[int] = []
    stats = store.consume("c", lambda e, ctx: seen.append(e.position), limit=0, timeout=0.1)
    assert seen == [] and stats.handled == 0


def test_a_subscription_with_an_infinite_timeout_and_none_arguments(store: evstore.EventStore) -> None:
    store.append("s", [ev()])
    with store.subscribe(gt=0, timeout=float("inf")) as sub:
        assert next(sub).position == 1
    assert list(store.streams(prefix=None)) == [("s", 1)]
    assert [e.position for e in store.read_all(gt=None)] == [1]


def test_an_event_of_exactly_16_mib_is_accepted_and_one_byte_more_is_refused_clearly(store_path: str,
                                                                                     impl: str) -> None:
    """Finding 24: 16 MiB - 1000 B was refused though the docs say 16 MiB, with a confusing message."""
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("s", [ev("T", b"x" * (16 << 20))])
        with pytest.raises(ValueError, match="16,777,217 bytes; the limit is 16,777,216"):
            s.append("s", [ev("T", b"x" * (16 << 20), metadata=b"m")])
        assert len(s.read_stream("s")[0].data) == 16 << 20


def test_stream_info_deleted_follows_the_visible_history(store: evstore.EventStore) -> None:
    store.append("s", [ev()])
    store.delete_stream("s")
    assert store.stream_info("s").deleted  # type: ignore[union-attr]
    store.append("s", [ev()])
    assert not store.stream_info("s").deleted  # type: ignore[union-attr]


def test_reads_racing_close_raise_store_closed(store_path: str, impl: str) -> None:
    """Finding 23: lmdb.Error when query/subscribe/read_all raced close()."""
    s = evstore.open(store_path, log_impl=impl)
    for i in range(50):
        s.append("s", [ev("T", tags=("t",))])
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                s.query([evstore.QueryItem(tags=["t"])])
                list(s.read_all(types=["T"]))
                s.read_stream("s")
            except evstore.StoreClosed:
                return
            except BaseException as e:  # anything else is the bug
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    s.close()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


# -- found by the interaction test (tests/test_interactions.py) ----------------------------------


def test_a_reader_left_open_across_a_reindex_follows_the_new_index(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as w:
        w.append("s", [ev()])
    code = textwrap.dedent(f"""
        import sys, time, evstore
        r = evstore.open({store_path!r}, readonly=True)
        print(r.head(), flush=True)
        sys.stdin.readline()
        time.sleep(0.15)
        print(r.head(), len(list(r.read_all())), flush=True)
    """)
    p = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=python_env())
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().split() == ["1"]
    tools.reindex(store_path)
    with evstore.open(store_path, log_impl=impl) as w:
        w.append("s", [ev()])
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().split() == ["2", "2"]
    p.wait(10)


def test_a_consumer_whose_handler_append_is_refused_does_not_checkpoint_that_event(store: evstore.EventStore) -> None:
    store.append("in", [ev("A"), ev("B"), ev("C")])
    store.close_stream("out")

    def handler(e: evstore.RecordedEvent, ctx: object) -> None:
        if e.type == "B":
            ctx.append("out", [ev("Effect")])  # type: ignore[attr-defined]

    with pytest.raises(evstore.StreamClosed):
        store.consume("c", handler, timeout=0.2, checkpoint_every=10)
    assert store.max_tracking("$consumer:c") == 1  # A was handled; B's effect was not committed


def test_close_from_another_thread_while_appends_run_never_raises_or_hangs(store_path: str, impl: str) -> None:
    for _round in range(20):
        s = evstore.open(store_path, log_impl=impl, durability="os")
        errors: list[BaseException] = []

        def appender() -> None:
            try:
                while True:
                    s.append("s", [ev()])
            except evstore.StoreClosed:
                return
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=appender) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.005)
        s.close()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert errors == []
    with evstore.open(store_path, log_impl=impl) as s:
        versions = [e.version for e in s.read_stream("s")]
        assert versions == list(range(1, len(versions) + 1))


def test_ids_of_several_streams_retried_in_one_stream_are_refused(store: evstore.EventStore) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    store.append_many([("s1", [ev(id=a)], evstore.ANY), ("s2", [ev(id=b)], evstore.ANY)])
    with pytest.raises(evstore.DuplicateEventId):
        store.append("s1", [ev(id=a), ev(id=b)])
    assert store.head() == 2


@pytest.mark.parametrize("delay", [0.05, 0.5])
def test_ctrl_c_during_evstore_demo_exits_130_with_one_line(delay: float) -> None:
    """Finding 16: an interrupted `evstore demo` exited 1 (the interrupt had failed the store)."""
    import signal

    p = subprocess.Popen([PY, "-m", "evstore", "demo", "--events", "5000000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=python_env())
    assert p.stdout is not None
    p.stdout.readline()  # the demo has started writing (not still importing)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, err[-1500:])
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err
