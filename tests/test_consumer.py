"""Checkpointed consumers: position kept in the store, committed with the handler's appends."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import evstore
from evstore import NewEvent
from evstore.consumer import consume, consumer_position

from conftest import PY, python_env
from facade import AsyncApi, SyncApi

Api = SyncApi | AsyncApi  # the threaded or the asyncio API (the `api` fixture)

HERE = os.path.dirname(os.path.abspath(__file__))


def test_consumer_resumes_after_its_position(api: Api) -> None:
    for i in range(10):
        api.append("in", [NewEvent("T", str(i).encode())])
    seen: list[int] = []

    def handler(e: evstore.RecordedEvent, ctx: object) -> None:
        seen.append(e.position)

    stats = api.consume("c", handler, timeout=0.1, limit=4)
    assert (stats.handled, stats.position) == (4, 4) and consumer_position(api, "c") == 4
    api.consume("c", handler, timeout=0.1)
    assert seen == list(range(1, 11)) and consumer_position(api, "c") == 10


def test_handler_appends_commit_with_the_position_and_failures_leave_no_trace(api: Api) -> None:
    for i in range(5):
        api.append("in", [NewEvent("T", str(i).encode())])

    def handler(e: evstore.RecordedEvent, ctx: object) -> None:
        if e.stream != "in":
            return
        if e.position == 4:
            raise RuntimeError("boom")
        ctx.append("out", [NewEvent("Copied", str(e.position).encode())])  # type: ignore[attr-defined]

    try:
        api.consume("c", handler, timeout=0.1)
    except RuntimeError:
        pass
    assert [e.data for e in api.read_stream("out")] == [b"1", b"2", b"3"]
    assert consumer_position(api, "c") == 3  # event 4 is handled again next time


def test_consumers_command_lists_lag(store: evstore.EventStore) -> None:
    for i in range(5):
        store.append("in", [NewEvent("T", b"")])
    consume(store, "late", lambda e, c: None, timeout=0.05, limit=2)
    from evstore import tools

    assert tools.consumers(store.path) == [("late", 2, 3)]


def test_consumer_is_exactly_once_across_crashes(store_path: str, impl: str) -> None:
    n = 300
    with evstore.open(store_path, log_impl=impl) as s:
        for i in range(n):
            s.append("in", [NewEvent("T", str(i).encode())])
    rnd = random.Random(3)
    for _ in range(6):
        proc = subprocess.Popen([PY, os.path.join(HERE, "consumer_worker.py"), store_path, "0.5"],
                                env=python_env(), stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = subprocess.run([PY, os.path.join(HERE, "consumer_worker.py"), store_path, "0.5"], env=python_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with evstore.open(store_path, log_impl=impl) as s:
        copied = [int(e.data) for e in s.read_stream("out")]
    ins = list(range(1, n + 1))
    assert copied == ins  # every input copied once, in order, none twice


def test_store_consume_method(store: evstore.EventStore) -> None:
    store.append("in", [NewEvent("T", b"1"), NewEvent("T", b"2")])
    stats = store.consume("m", lambda e, ctx: ctx.append("out", [NewEvent("C", e.data)]) if e.stream == "in" else None,
                          timeout=0.1)
    assert stats.handled == 4 and [e.data for e in store.read_stream("out")] == [b"1", b"2"]
