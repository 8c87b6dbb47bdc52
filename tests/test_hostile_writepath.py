"""Attacks on the write path: space allocated ahead of the tail and written with pwrite, the zero-header
end of a segment's commits, the undo of a failed write, the append fast path and append_fields."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from typing import Any

import pytest

import evstore
from evstore import NewEvent, tools
from evstore.storage import segments as segmod

from tests.conftest import PY, python_env
from tests.support import commits_end, ev

COMMIT_SIZE = 72


def seg_files(path: str) -> list[str]:
    d = os.path.join(path, "log")
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".seg")]


def commit_ends(seg: str) -> list[tuple[int, int]]:
    """(end offset, event count) of every commit of a segment file, walked from its bytes."""
    with open(seg, "rb") as f:
        raw = f.read()
    off, out = 32, []
    while off + 64 <= len(raw):
        ln = int.from_bytes(raw[off + 4 : off + 8], "little")
        if ln < 64 or off + ln > len(raw):
            break
        if raw[off + 8] == 2:
            out.append((off + ln, int.from_bytes(raw[off + 24 : off + 32], "little")))
        off += ln
    return out


def zero(seg: str, start: int, end: int) -> None:
    with open(seg, "r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))


def content(s: evstore.EventStore) -> list[tuple[Any, ...]]:
    return [(e.stream, e.version, e.position, e.type, e.data, e.metadata, e.schema) for e in s.read_all()]


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


@pytest.mark.parametrize("readonly", [False, True])
def test_acknowledged_commits_read_back_as_zeros_are_refused_not_rebuilt_away(store_path: str, impl: str,
                                                                              readonly: bool) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        for i in range(10):
            s.append("a", [ev("T", b"%d" % i)])
    seg = seg_files(store_path)[-1]
    ends = commit_ends(seg)
    # the last three commits' pages read as zeros (a restored older copy of the file, lost writes):
    # the file keeps its allocated size, so this is a log that ends before the index checkpoint
    zero(seg, ends[6][0], ends[-1][0])
    if readonly:
        with pytest.raises(evstore.IndexAheadOfLog):
            evstore.open(store_path, log_impl=impl, readonly=True)
        return
    try:
        with evstore.open(store_path, log_impl=impl) as s:
            served = (s.head(), s.stream_version("a"))
    except evstore.IndexAheadOfLog:
        return
    pytest.fail(f"the writer opened the store and serves {served} (head, version) after 10 acknowledged commits")


def test_a_log_cut_short_of_the_index_is_refused(store_path: str, impl: str) -> None:
    """The same loss as above, as a shorter file: refused (the behaviour the zeros should have)."""
    with evstore.open(store_path, log_impl=impl) as s:
        for i in range(10):
            s.append("a", [ev("T", b"%d" % i)])
    seg = seg_files(store_path)[-1]
    os.truncate(seg, commit_ends(seg)[6][0])
    with pytest.raises(evstore.IndexAheadOfLog):
        evstore.open(store_path, log_impl=impl)


def sealed_segment_ending_with_event_less_commits(path: str, impl: str) -> tuple[str, int]:
    """A store whose first (sealed) segment ends with a snapshot, a tracking and a $closed commit;
    returns the segment and where those commits begin."""
    with evstore.open(path, log_impl=impl, segment_size=4096) as s:
        for _ in range(10):
            s.append("a", [ev("T", b"x" * 200)])
        s.save_snapshot("a", 10, b"snapshot", type="Snap")
        s.append_many([], tracking=("up", 5))
        s.close_stream("a")
        s.append("b", [ev("T", b"y" * 3000)])  # does not fit: the first segment is sealed
    segs = seg_files(path)
    assert len(segs) == 2
    ends = commit_ends(segs[0])
    assert [n for _e, n in ends[-4:]] == [1, 0, 0, 0]
    return segs[0], ends[-4][0]


def test_verify_reports_zeroed_event_less_commits_at_the_end_of_a_sealed_segment(store_path: str, impl: str) -> None:
    seg, start = sealed_segment_ending_with_event_less_commits(store_path, impl)
    zero(seg, start, commits_end(seg))
    rep = tools.verify(store_path)
    assert not rep.ok and rep.problems, "verify passes a log that lost a snapshot, a tracking record and a $closed mark"


def test_a_rebuilt_index_keeps_the_event_less_commits_of_a_sealed_segment(store_path: str, impl: str) -> None:
    """What the zeros above cost: after `reindex` the tracking record is gone and the closed stream
    takes appends. Here the segment is intact, and everything is kept."""
    sealed_segment_ending_with_event_less_commits(store_path, impl)
    tools.reindex(store_path)
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.max_tracking("up") == 5
        snap = s.load_snapshot("a")
        assert snap is not None and snap.data == b"snapshot"
        with pytest.raises(evstore.StreamClosed):
            s.append("a", [ev("T")])


@pytest.mark.parametrize("tombstone", [False, True])
def test_a_retry_after_the_stream_was_closed_returns_the_original_result(store_path: str, impl: str,
                                                                         tombstone: bool) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        events = [ev("Known", b"a", id=uuid.uuid4()), ev("Known", b"b", id=uuid.uuid4())]
        first = s.append("y", events)
        if tombstone:
            s.delete_stream("y", tombstone=True)
        else:
            s.close_stream("y")
        assert s.append("y", events) == first  # the client did not see the first answer and retries


def test_an_empty_append_is_refused_for_being_empty(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("Known")])
        for exp in (evstore.ANY, 1, 5, evstore.NO_STREAM, "bad"):
            with pytest.raises(ValueError, match="at least one event"):
                s.append("s", [], expected_version=exp)
        s.close_stream("s")
        with pytest.raises(ValueError, match="at least one event"):
            s.append("s", [])


def test_append_fields_of_different_lengths_is_a_value_error_whatever_the_version(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("Known")])
        for exp in (evstore.ANY, 1, 7, evstore.NO_STREAM):
            with pytest.raises(ValueError):
                s.append_fields("s", ["Known"], [b"a", b"b"], [b"", b""], expected_version=exp)
        assert s.head() == 1


def test_allocation_stays_within_the_segment_size(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=8192) as s:
        for i in range(40):
            s.append("s", [ev("T", b"x" * 300)])
        for seg in seg_files(store_path):
            assert os.path.getsize(seg) <= 8192, (seg, os.path.getsize(seg))


# -- what held --------------------------------------------------------------------------------------


SIZES = [10, 5000, 100, 6 << 20, 50, 4000, 9 << 20, 1, 4070, 4000, 0]


def test_commits_larger_than_the_segment_and_the_allocation(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=4096, durability="os") as s:
        for k, n in enumerate(SIZES):
            s.append("a", [ev("T", bytes([k]) * n)])
            s.save_snapshot("a", k + 1, b"s" * (k * 300), type="S")
            s.append_fields("f", ["T", "T"], [bytes([k]) * n, b""], [b"m", b""])
        assert [len(e.data) for e in s.read_stream("a")] == SIZES
    for seg in seg_files(store_path):  # zeros after the commits (a sealed one's after its seal marker)
        with open(seg, "rb") as f:
            f.seek(commits_end(seg))
            rest = f.read()
            assert not any(rest) or (not any(rest[:8]) and rest[8:16] == b"EVSEALED" and not any(rest[64:]))
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert [len(e.data) for e in r.read_stream("a")] == SIZES
        assert [e.data[:1] for e in r.read_stream("f")][::2] == [bytes([k])[: n] for k, n in enumerate(SIZES)]


def test_a_store_written_without_allocated_space_reads_and_appends(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        for k, n in enumerate(SIZES):
            s.append("a", [ev("T", bytes([k]) * n)])
        s.save_snapshot("a", 3, b"snap", type="S")
        before = content(s)
    for seg in seg_files(store_path):  # as written before the space after the commits
        os.truncate(seg, commits_end(seg))
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert content(r) == before
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        assert content(s) == before
        for k, n in enumerate(SIZES):
            s.append("a", [ev("T", bytes([k]) * n)])
        after = content(s)
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert content(r) == after and len(after) == 2 * len(SIZES)
        snap = r.load_snapshot("a")
        assert snap is not None and snap.version == 3
    assert tools.verify(store_path).ok


def test_zeros_inside_a_sealed_segment_with_commits_after_are_corruption(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=8192) as s:
        for i in range(60):
            s.append("s", [ev("T", bytes([i]) * 300)])
    segs = seg_files(store_path)
    assert len(segs) >= 3
    ends = commit_ends(segs[1])
    zero(segs[1], ends[2][0], ends[4][0])  # two whole commits at a commit boundary, whole commits after
    rep = tools.verify(store_path)
    assert not rep.ok and any(p.path == segs[1] and p.offset == ends[2][0] for p in rep.problems)
    os.unlink(os.path.join(store_path, "index", "data.mdb"))
    with pytest.raises(evstore.CorruptedError) as info:
        evstore.open(store_path, log_impl=impl)
    assert info.value.offset == ends[2][0] and not isinstance(info.value, evstore.IndexAheadOfLog)


def test_zeros_where_a_sealed_segments_event_commits_end_are_a_missing_segment(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=8192) as s:
        for i in range(60):
            s.append("s", [ev("T", bytes([i]) * 300)])
    segs = seg_files(store_path)
    ends = commit_ends(segs[0])
    zero(segs[0], ends[-2][0], commits_end(segs[0]))  # its last event commit reads as zeros
    assert not tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl) as s:  # served through the index: the read says so
        with pytest.raises(evstore.CorruptedError):
            list(s.read_all())
    shutil_rm_index(store_path)
    with pytest.raises(evstore.CorruptedError):
        evstore.open(store_path, log_impl=impl)


def shutil_rm_index(path: str) -> None:
    import shutil

    shutil.rmtree(os.path.join(path, "index"))


@pytest.mark.parametrize("where", ["boundary", "inside"])
def test_zeros_in_the_active_segment_with_commits_after_are_corruption(store_path: str, impl: str,
                                                                       where: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:  # durability="fsync": every commit was synced
        for i in range(12):
            s.append("s", [ev("T", bytes([i]) * 150), ev("U", b"2")])
    seg = seg_files(store_path)[-1]
    ends = commit_ends(seg)
    start = ends[4][0] if where == "boundary" else ends[4][0] + 10
    zero(seg, start, ends[6][0])
    with open(seg, "rb") as f:
        raw = f.read()
    shutil_rm_index(store_path)  # nothing says where the commits end but the log
    with pytest.raises(evstore.CorruptedError) as info:
        evstore.open(store_path, log_impl=impl)
    assert info.value.offset == ends[4][0]
    with open(seg, "rb") as f:
        assert f.read() == raw  # nothing was cut
    assert not tools.verify(store_path).ok
    rep = tools.recover(store_path)
    assert rep.head_after == 10
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() == 10
        assert s.append("s", [ev("T")], expected_version=10).first_position == 11
    assert tools.verify(store_path).ok


def test_tools_on_a_store_with_allocated_space(store_path: str, impl: str, tmp_path: Any) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=8192) as s:
        for i in range(60):
            s.append(f"s{i % 3}", [ev("T", bytes([i]) * 300)])
        s.save_snapshot("s0", 5, b"snap", type="S")
        before = content(s)
    assert all(os.path.getsize(f) > commits_end(f) for f in seg_files(store_path))
    info = tools.info(store_path)
    assert info["head"] == 60 and info["index_lag"] == 0 and "corruption" not in info
    out = io.StringIO()
    assert tools.export(store_path, out) == 60
    rep = tools.recover(store_path)
    assert rep.head_after == 60 and rep.dropped_bytes == 0 and not rep.damaged
    dest = str(tmp_path / "copy")
    assert tools.backup(store_path, dest) == 60
    with evstore.open(dest, log_impl=impl, segment_size=8192) as b:
        assert content(b) == before
        b.append("s0", [ev("T", b"after")])
    assert tools.verify(dest).ok
    cli = subprocess.run([PY, "-m", "evstore", "verify", store_path], capture_output=True, text=True, env=python_env())
    assert cli.returncode == 0, cli.stderr
    with evstore.open(store_path, log_impl=impl) as s:
        assert content(s) == before


def test_a_failed_write_undone_by_cutting_the_file(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The undo's zeros cannot be written either: the segment is cut at the commit, and later
    appends allocate again."""
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("T", b"before")])
        core = s._core
        assert core is not None
        real_impl = core.log.impl
        seg = seg_files(store_path)[-1]
        end = commits_end(seg)

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_impl, name)

            @staticmethod
            def pwrite(fd: int, buf: Any, off: int) -> None:
                os.pwrite(fd, bytes(buf), off)  # all of it reached the file, then an error
                raise OSError(errno.EIO, os.strerror(errno.EIO))

        def no_zeros(fd: int, data: Any, off: int) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        core.log.impl = Failing()  # type: ignore[assignment]
        monkeypatch.setattr(segmod.os, "pwrite", no_zeros)
        with pytest.raises(evstore.StorageError):
            s.append("s", [ev("T", b"lost" * 100)], expected_version=1)
        monkeypatch.undo()
        core.log.impl = real_impl
        assert os.path.getsize(seg) == end and s.head() == 1
        for i in range(5):
            s.append("s", [ev("T", b"after%d" % i)])
        assert os.path.getsize(seg) > commits_end(seg)
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.data for e in s.read_stream("s")] == [b"before"] + [b"after%d" % i for i in range(5)]
    assert tools.verify(store_path).ok


def test_a_failed_write_is_zeroed_and_the_next_commit_takes_its_place(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("T", b"before")])
        core = s._core
        assert core is not None
        real_impl = core.log.impl
        seg = seg_files(store_path)[-1]
        end = commits_end(seg)

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_impl, name)

            @staticmethod
            def pwrite(fd: int, buf: Any, off: int) -> None:
                os.pwrite(fd, bytes(buf), off)
                raise OSError(errno.EIO, os.strerror(errno.EIO))

        core.log.impl = Failing()  # type: ignore[assignment]
        with pytest.raises(evstore.StorageError):
            s.append("s", [ev("T", b"lost" * 3000)], expected_version=1)
        core.log.impl = real_impl
        with open(seg, "rb") as f:
            f.seek(end)
            assert not any(f.read(20000))
        s.append("s", [ev("T", b"short")], expected_version=1)  # shorter than the undone one
    with open(seg, "rb") as f:
        f.seek(commits_end(seg))
        assert not any(f.read())
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.data for e in s.read_stream("s")] == [b"before", b"short"]


@pytest.mark.parametrize("durability", ["os", "fsync"])
def test_concurrent_fast_path_appends_and_reads(store_path: str, impl: str, durability: str) -> None:
    writers, per = 4, 60 if durability == "os" else 25
    errors: list[BaseException] = []
    results: list[evstore.AppendResult] = []
    lock = threading.Lock()
    with evstore.open(store_path, log_impl=impl, durability=durability, segment_size=16384) as s:
        s.append("warm", [ev("T")])
        done = threading.Event()

        def write(w: int) -> None:
            try:
                for i in range(per):
                    stream = f"w{w}" if i % 3 else "shared"
                    if i % 2:
                        r = s.append(stream, [ev("T", b"%d:%d:%d" % (w, i, k)) for k in range(1 + i % 4)])
                    else:
                        n = 1 + i % 3
                        r = s.append_fields(stream, ["T"] * n, [b"%d:%d:%d" % (w, i, k) for k in range(n)],
                                            [b"f"] * n)
                    with lock:
                        results.append(r)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def read() -> None:
            try:
                while not done.is_set():
                    evs = list(s.read_all())
                    assert [e.position for e in evs] == list(range(1, len(evs) + 1))
                    for st in ("shared", "w0"):
                        vs = [e.version for e in s.read_stream(st)]
                        assert vs == list(range(1, len(vs) + 1))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        rs = [threading.Thread(target=read) for _ in range(2)]
        for t in ts + rs:
            t.start()
        for t in ts:
            t.join()
        done.set()
        for t in rs:
            t.join()
        assert not errors, errors
        by_pos = {e.position: e for e in s.read_all()}
        for r in results:
            got = [by_pos[p] for p in range(r.first_position, r.last_position + 1)]
            assert [e.version for e in got] == list(range(r.first_version, r.last_version + 1))
            assert {e.stream for e in got} == {r.stream}
        total = 1 + sum(r.last_position - r.first_position + 1 for r in results)
        assert s.head() == total and sorted(by_pos) == list(range(1, total + 1))
        before = content(s)
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert content(r) == before
    assert tools.verify(store_path).ok


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


def test_pure_python_log_from_the_environment(store_path: str) -> None:
    code = textwrap.dedent(f"""
        import evstore
        with evstore.open({store_path!r}, segment_size=4096) as s:
            assert s.log_implementation == "python", s.log_implementation
            s.append("warm", [evstore.NewEvent("T", b"")])
            for i in range(200):
                s.append_fields("f", ["T"], [bytes([i % 251]) * (i * 13)], [b""], expected_version=i)
    """)
    run = subprocess.run([PY, "-c", code], env=python_env(EVSTORE_PURE="1"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with evstore.open(store_path, log_impl="c") as s:
        assert [len(e.data) for e in s.read_stream("f")] == [i * 13 for i in range(200)]
    assert tools.verify(store_path).ok


def test_append_fields_bad_input(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("Known")])
        cases: list[tuple[Any, Any, Any, type[Exception]]] = [
            ([b"Known"], [b"x"], [b""], TypeError),
            ([None], [b"x"], [b""], TypeError),
            (["Known"], [b"x"], [None], TypeError),
            (["Known"], [1], [b""], TypeError),
            (["x" * 401], [b"x"], [b""], ValueError),
            (["Known"], [b"x" * (16 << 20)], [b"m"], ValueError),  # over the event limit by one byte
            ([], [], [], ValueError),
            (["\udcff"], [b"x"], [b""], ValueError),
        ]
        for types, datas, metas, exc in cases:
            with pytest.raises(exc):
                s.append_fields("s", types, datas, metas)
        assert s.head() == 1
        r = s.append_fields("s", ["Known"], [b"x" * ((16 << 20) - 1)], [b"m"])  # exactly at the limit
        assert r.first_version == 2
        r = s.append_fields("s", ("Known", "Known"), (bytearray(b"ba"), memoryview(b"mv")), (b"", b""))
        assert [bytes(e.data) for e in s.read_stream("s", gt=2)] == [b"ba", b"mv"]
        r = s.append_fields(uuid.UUID(int=3), ["Brand new type"], [b"u"], [b""], expected_version=evstore.NO_STREAM)
        assert r.first_version == 1 and s.read_stream(uuid.UUID(int=3))[0].type == "Brand new type"


def test_a_failed_roll_leaves_the_log_appendable(store_path: str, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_link = os.link
    fails = [errno.EIO]

    def link(a: str, b: str) -> None:
        if fails:
            raise OSError(fails.pop(), "injected")
        real_link(a, b)

    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        for _ in range(5):
            s.append("a", [ev("T", b"x" * 500)])
        monkeypatch.setattr(segmod.os, "link", link)
        outcomes = []
        for _ in range(10):
            try:
                outcomes.append(s.append("a", [ev("T", b"y" * 500)]).first_position)
            except evstore.StorageError:
                outcomes.append(None)
        monkeypatch.undo()
        assert outcomes.count(None) == 1 and [p for p in outcomes if p] == list(range(6, 15))
        before = content(s)
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl) as s:
        assert content(s) == before


@pytest.mark.parametrize("size", [4096, 4097, 4099, 5001, 65537])
def test_odd_segment_sizes_and_commits_that_fill_them_exactly(store_path: str, impl: str, size: int) -> None:
    over = 64 + 1 + 1 + COMMIT_SIZE  # an event's record and the COMMIT record, with no data
    sizes = []
    with evstore.open(store_path, log_impl=impl, segment_size=size) as s:
        for k in range(12):
            end = commits_end(seg_files(store_path)[-1]) if seg_files(store_path) else 32
            room = size - end - over
            n = [room, room - 1, room + 1, max(0, room // 2), size, 0][k % 6]
            n = max(0, n)
            s.append("a", [ev("T", bytes([k]) * n)])
            sizes.append(n)
        for seg in seg_files(store_path)[:-1]:
            ends = commit_ends(seg)
            assert ends[-1][0] <= size or len(ends) == 1  # a commit larger than a segment is alone
        assert [len(e.data) for e in s.read_stream("a")] == sizes
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, segment_size=size) as s:
        assert [len(e.data) for e in s.read_stream("a")] == sizes
        s.append("a", [ev("T", b"last")])
    assert tools.verify(store_path).ok


def test_lost_unsynced_pages_of_an_os_writer_cut_the_log_to_a_prefix(store_path: str, impl: str) -> None:
    """durability="os": after the index checkpoint any page may be lost, whole commits after it;
    the log is cut at the first damage and every commit before it is kept."""
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        for i in range(10):
            s.append("a", [ev("T", bytes([i]) * 100)])
        s.sync()  # the checkpoint
        core = s._core
        assert core is not None
        core.group.kick_indexer = lambda: None  # type: ignore[method-assign]  # no later checkpoint
        core.group.flush_index = lambda: None  # type: ignore[method-assign]
        for i in range(10, 30):
            s.append("a", [ev("T", bytes([i]) * 300)])
        seg = seg_files(store_path)[-1]
        with open(seg, "rb") as f:
            raw = f.read()
        ends = commit_ends(seg)
    # a power cut: the log as it was before close synced it, with one commit's pages zeroed
    # after the checkpoint and whole commits after them
    import shutil

    shutil.rmtree(store_path + ".lost", ignore_errors=True)
    with open(seg, "wb") as f:
        f.write(raw)
    zero(seg, ends[14][0], ends[15][0])
    ck = os.path.join(store_path, "index")
    assert os.path.isdir(ck)
    with evstore.open(store_path, log_impl=impl) as s:
        head = s.head()
        assert 10 <= head <= 15
        assert [e.data[:1] for e in s.read_stream("a")] == [bytes([i]) for i in range(head)]
    assert tools.verify(store_path).ok


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
