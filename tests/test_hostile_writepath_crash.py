"""A writer on the fast path (append of plain events, append_fields), with tiny segments, commits
larger than a segment and than the allocation, killed at random points: every acknowledged commit
must be there byte for byte after reopening, and no partial commit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import textwrap
import time
from typing import Any

import pytest

import evstore
from evstore import NewEvent, tools

from tests.conftest import PY, python_env

WRITER = textwrap.dedent("""
    import json, random, sys, threading
    import evstore

    def payload(commit, i, n, size):
        head = f"{commit}:{i}:{n}:{size}:".encode()
        return head + bytes((commit * 31 + i * 7 + k) % 251 for k in range(size))

    path, seed, impl, durability, segment_size = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    out = threading.Lock()

    def work(store, t):
        rnd = random.Random(seed * 10 + t)
        commit = (seed * 10 + t) * 1_000_000
        versions = {}
        while True:
            stream = f"t{t}-{rnd.randint(0, 3)}"
            v = versions.get(stream)
            if v is None:
                v = store.stream_version(stream)
            n = rnd.randint(1, 4)
            sizes = [rnd.choice([0, 10, 300, 3000, 20000, 70000]) if rnd.random() < 0.2 else rnd.randint(0, 200)
                     for _ in range(n)]
            if rnd.random() < 0.02:
                sizes[0] = 5 << 20  # more than the allocation ahead
            datas = [payload(commit, i, n, sz) for i, sz in enumerate(sizes)]
            how = rnd.random()
            if how < 0.45:
                r = store.append_fields(stream, ["T"] * n, datas, [b"m%d" % i for i in range(n)], expected_version=v)
            elif how < 0.9:
                r = store.append(stream, [evstore.NewEvent("T", d, b"m%d" % i) for i, d in enumerate(datas)],
                                 expected_version=v)
            else:  # tags: the general path
                r = store.append(stream, [evstore.NewEvent("T", d, b"m%d" % i, tags=("g",))
                                          for i, d in enumerate(datas)], expected_version=v)
            versions[stream] = r.last_version
            with out:
                print(json.dumps({"stream": stream, "first_version": r.first_version, "last_version": r.last_version,
                                  "first_position": r.first_position, "last_position": r.last_position,
                                  "commit": commit, "sizes": sizes}), flush=True)
            commit += n

    with evstore.open(path, log_impl=impl, durability=durability, segment_size=segment_size) as store:
        store.append("warm", [evstore.NewEvent("T", b"")])
        print(json.dumps({"ready": True}), flush=True)
        threads = [threading.Thread(target=work, args=(store, t), daemon=True) for t in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
""")


def payload(commit: int, i: int, n: int, size: int) -> bytes:
    head = f"{commit}:{i}:{n}:{size}:".encode()
    return head + bytes((commit * 31 + i * 7 + k) % 251 for k in range(size))


def check(path: str, impl: str, acked: list[dict[str, Any]]) -> int:
    with evstore.open(path, log_impl=impl) as s:
        events = list(s.read_all())
        assert [e.position for e in events] == list(range(1, len(events) + 1))
        by_pos = {e.position: e for e in events}
        versions: dict[Any, int] = {}
        commits: dict[int, list[Any]] = {}
        for e in events:
            versions[e.stream] = versions.get(e.stream, 0) + 1
            assert e.version == versions[e.stream]
            if e.stream in ("warm", "after"):
                continue
            commit, i, n, size = (int(x) for x in e.data.split(b":", 4)[:4])
            assert e.data == payload(commit, i, n, size) and e.metadata == b"m%d" % i
            commits.setdefault(commit, []).append(e)
        for commit, evs in commits.items():
            n = int(evs[0].data.split(b":")[2])
            assert len(evs) == n, f"commit {commit} is partial: {len(evs)} of {n} events"
            assert [e.position for e in evs] == list(range(evs[0].position, evs[0].position + n))
        for a in acked:
            for k, p in enumerate(range(a["first_position"], a["last_position"] + 1)):
                e = by_pos.get(p)
                assert e is not None, f"acknowledged commit {a} is missing"
                assert (e.stream, e.version) == (a["stream"], a["first_version"] + k)
                assert e.data == payload(a["commit"], k, len(a["sizes"]), a["sizes"][k])
        r = s.append("after", [NewEvent("T", b"")])
        assert r.first_position == len(events) + 1
    rep = tools.verify(path)
    assert rep.ok, rep.problems
    return len(events)


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_a_killed_fast_path_writer_loses_no_acknowledged_commit(tmp_path: Any, impl: str, durability: str) -> None:
    path = str(tmp_path / "s")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rnd = random.Random(hash((impl, durability)) & 0xFFFF)
    total = 0
    for k in range(5):
        proc = subprocess.Popen([PY, str(script), path, str(k + 1), impl, durability, str(rnd.choice([4096, 6000, 16384]))],
                                env=python_env(), stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        time.sleep(rnd.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = out.splitlines()
        acked = []
        for j, line in enumerate(lines):
            try:
                acked.append(json.loads(line))
            except ValueError:
                assert j == len(lines) - 1, line  # only the last line may be cut by the kill
        total += len(acked)
        check(path, impl, acked)
    assert total > 0
