"""Readers in other processes while a writer appends and rolls segments: always a consistent prefix."""

from __future__ import annotations

import os
import subprocess

import evstore
from evstore import NewEvent

from conftest import PY, python_env

WRITER = """
import sys, evstore
with evstore.open(sys.argv[1], log_impl=sys.argv[2], segment_size=8192, durability="os") as s:
    for i in range(1500):
        n = i % 3 + 1
        s.append_many([(f"s{i % 4}", [evstore.NewEvent("T", b"%d:%d" % (i, k)) for k in range(n)], evstore.ANY),
                       ("all", [evstore.NewEvent("U", b"%d" % i)], evstore.ANY)])
"""

READER = """
import sys, evstore
seen = 0
with evstore.open(sys.argv[1], readonly=True, log_impl=sys.argv[2]) as s:
    while seen < 1500 * 3:
        events = list(s.read_all())
        assert [e.position for e in events] == list(range(1, len(events) + 1)), "gap"
        # whole commits only: every commit ends with the 'all' event
        assert len(events) <= 1 or events[-1].stream == "all", "partial commit visible"
        counts = {}
        for e in events:
            counts[e.stream] = counts.get(e.stream, 0) + 1
            assert e.version == counts[e.stream], "version gap"
        seen = len(events)
        if s.head() >= 1500 * 3:
            break
print("ok", seen)
"""


def test_reader_processes_see_consistent_prefixes_while_segments_roll(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=8192) as s:
        s.append("init", [NewEvent("T", b"")])
    # 1500 commits of 2-4 events: heads of 1 + 1500*3 events on average; the reader stops at the head
    writer = subprocess.Popen([PY, "-c", WRITER, store_path, impl], env=python_env())
    readers = [subprocess.Popen([PY, "-c", READER.replace("1500 * 3", "4000"), store_path, impl],
                                env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    assert writer.wait(timeout=600) == 0
    for r in readers:
        out, err = r.communicate(timeout=600)
        assert r.returncode == 0, err[-3000:]
        assert out.startswith("ok")
    with evstore.open(store_path, log_impl=impl) as s:
        assert len(os.listdir(os.path.join(store_path, "log"))) > 10
        assert [e.position for e in s.read_all()] == list(range(1, s.head() + 1))
