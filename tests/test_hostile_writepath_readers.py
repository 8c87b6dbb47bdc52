"""Attacks on the write path seen by readers: a reader process with the segment mapped while the next
writer cuts its torn tail, a reader process following a writer that rolls many segments, verify and
export of a live store, a reader opening while the writer's pwrite is half done."""

from __future__ import annotations

import io
import subprocess
import textwrap
from typing import Any

import pytest

import evstore
from evstore import tools

from tests.conftest import PY, python_env
from tests.support import commits_end, ev
from tests.writepath_helpers import COMMIT_SIZE, seg_files, zero


READER = textwrap.dedent("""
    import sys
    import evstore
    with evstore.open(sys.argv[1], readonly=True) as r:
        for line in sys.stdin:
            print(sum(1 for _ in r.read_all()), flush=True)
""")


# -- bugs ---------------------------------------------------------------------------------------------


def test_a_reader_survives_a_torn_tail_cut_while_it_has_the_segment_mapped(store_path: str, tmp_path: Any) -> None:
    size = 65536  # a multiple of the page size on 4 KiB and 64 KiB page systems
    with evstore.open(store_path, segment_size=size) as s:
        for _ in range(3):
            s.append("a", [ev("T", b"x" * 100)])
    seg = seg_files(store_path)[0]
    end = commits_end(seg)
    with open(seg, "r+b") as f:  # a killed writer's unfinished commit
        f.seek(end)
        f.write(b"\x11" * 40)
    script = tmp_path / "reader.py"
    script.write_text(READER)
    reader = subprocess.Popen([PY, str(script), store_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=python_env())
    assert reader.stdin is not None and reader.stdout is not None
    try:
        reader.stdin.write("read\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "3"  # it has the segment mapped, torn tail and all
        with evstore.open(store_path, segment_size=size) as s:  # the next writer cuts the torn tail
            s.append("a", [ev("T", b"y" * (size - end - COMMIT_SIZE - 64 - 2))])  # fills the segment exactly
            assert commits_end(seg) == size
            s.append("a", [ev("T", b"z")])  # rolls
        assert len(seg_files(store_path)) == 2
        reader.stdin.write("read\n")
        reader.stdin.flush()
        line = reader.stdout.readline().strip()
        if not line:
            pytest.fail(f"the reader died (exit status {reader.wait()}; -7 is SIGBUS)")
        assert line == "5"
    finally:
        reader.stdin.close()
        rc = reader.wait()
    assert rc == 0


# -- what held --------------------------------------------------------------------------------------


def test_a_reader_process_follows_a_writer_rolling_many_segments(store_path: str, tmp_path: Any) -> None:
    script = tmp_path / "reader.py"
    script.write_text(READER)
    with evstore.open(store_path, segment_size=4096, durability="os") as s:
        s.append("s", [ev("T", b"first")])
        s.sync()
        reader = subprocess.Popen([PY, str(script), store_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=python_env())
        assert reader.stdin is not None and reader.stdout is not None
        counts = []
        try:
            for rnd in range(30):
                for i in range(20):
                    s.append("s", [ev("T", bytes([i]) * (50 + 97 * i))])
                if rnd % 3 == 0:
                    s.append("big", [ev("T", b"b" * 9000)])  # a segment of its own
                s.sync()
                reader.stdin.write("read\n")
                reader.stdin.flush()
                counts.append(int(reader.stdout.readline()))
        finally:
            reader.stdin.close()
            rc = reader.wait()
        assert rc == 0
        assert counts == sorted(counts) and counts[-1] == s.head()
        assert len(seg_files(store_path)) > 100


@pytest.mark.parametrize("command", ["verify", "export"])
def test_verify_and_export_of_a_live_store_see_no_damage(store_path: str, impl: str, command: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from evstore.storage import scan

    with evstore.open(store_path, log_impl=impl) as s:
        for i in range(5):
            s.append("a", [ev("T", bytes([i]) * 100)])
        real = scan.zeros_after
        wrote: list[int] = []

        def writer_goes_on(path: str, off: int) -> bool:
            # the scan has read the zero header that ends the commits; the writer appends meanwhile
            if not wrote:
                wrote.append(s.append("a", [ev("T", b"new1")]).first_position)
                wrote.append(s.append("a", [ev("T", b"new2")]).first_position)
            return real(path, off)

        monkeypatch.setattr(scan, "zeros_after", writer_goes_on)
        if command == "verify":
            rep = tools.verify(store_path)
            assert rep.ok, rep.problems
        else:
            out = io.StringIO()
            assert tools.export(store_path, out) in (5, 6, 7)
        assert wrote == [6, 7]


RACING_READER = textwrap.dedent("""
    import sys
    import evstore
    from evstore.storage import scan
    real = scan.torn_tail
    def torn_tail(*args):
        # the reader's scan met the writer's unfinished commit; the writer goes on meanwhile
        print("torn?", flush=True)
        sys.stdin.readline()
        return real(*args)
    scan.torn_tail = torn_tail
    try:
        with evstore.open(sys.argv[1], readonly=True) as r:
            print("opened", r.head(), flush=True)
    except evstore.CorruptedError as e:
        print("corrupt", e, flush=True)
""")


def test_a_reader_opening_while_the_writer_appends_sees_no_damage(store_path: str, tmp_path: Any) -> None:
    script = tmp_path / "reader.py"
    script.write_text(RACING_READER)
    with evstore.open(store_path) as s:  # durability="fsync"
        for i in range(5):
            s.append("a", [ev("T", bytes([i]) * 100)])
        s.sync()  # the index checkpoint: after the fifth commit
        core = s._core
        assert core is not None
        core.group.kick_indexer = lambda: None  # type: ignore[method-assign]  # the index stays there
        hold = core.group.index_lock  # and no indexer already woken writes it meanwhile
        hold.acquire()
        seg = seg_files(store_path)[-1]
        start = commits_end(seg)
        s.append("a", [ev("T", b"c" * 3000)])
        end = commits_end(seg)
        with open(seg, "rb") as f:
            f.seek(start)
            whole = f.read(end - start)
        zero(seg, start + 1000, end)  # as the reader finds it: the writer's pwrite half done
        reader = subprocess.Popen([PY, str(script), store_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=python_env())
        assert reader.stdin is not None and reader.stdout is not None
        try:
            first = reader.stdout.readline().strip()
            if first == "torn?":  # the reader asks whether the unfinished commit is a torn tail
                with open(seg, "r+b") as f:  # the pwrite completes, and the writer appends again
                    f.seek(start)
                    f.write(whole)
                s.append("a", [ev("T", b"d")])
                reader.stdin.write("go\n")
                reader.stdin.flush()
                answer = reader.stdout.readline().strip()
            else:  # a reader takes what follows the index checkpoint as in flight: no question asked
                answer = first
        finally:
            reader.stdin.close()
            reader.wait()
            hold.release()
        assert answer.startswith("opened"), answer
