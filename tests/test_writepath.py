"""The write path: space allocated ahead of the log's tail and written with pwrite (the zero-header
end of the log, docs/log_format.md), and the append fast path for plain events."""

from __future__ import annotations

import errno
import os
import uuid
from typing import Any

import pytest

import evstore
from evstore import NewEvent, tools
from evstore.format import clog, pylog
from evstore.storage import segments

from tests.support import commits_end, ev


def seg_files(path: str) -> list[str]:
    d = os.path.join(path, "log")
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".seg")]


def zeros_from(path: str, off: int) -> bool:
    with open(path, "rb") as f:
        f.seek(off)
        return not any(f.read())


def test_commits_go_into_space_allocated_ahead_and_zeros_follow_them(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        for i in range(50):
            s.append(f"s{i % 3}", [ev("T", b"x" * 100)])
        seg = seg_files(store_path)[-1]
        end = commits_end(seg)
        assert os.path.getsize(seg) >= end + (1 << 20) and zeros_from(seg, end)
    assert os.path.getsize(seg) > commits_end(seg)  # closing keeps the space: the next writer uses it
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() == 50 and len(s.read_stream("s1")) == 17
        s.append("s1", [ev("T", b"after")])
        assert commits_end(seg) > end and zeros_from(seg, commits_end(seg))
    assert tools.verify(store_path).ok


def test_sealed_segments_keep_their_zeros_and_read_across(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=8192) as s:
        for i in range(120):
            s.append("long", [ev("T", bytes([i % 251]) * 200)])
        files = seg_files(store_path)
        assert len(files) > 3
        sizes = [os.path.getsize(f) for f in files]
        assert any(size > commits_end(f) for f, size in zip(files[:-1], sizes))  # never cut while open
        assert [e.data[:1] for e in s.read_stream("long")] == [bytes([i % 251]) for i in range(120)]
    rep = tools.verify(store_path)
    assert rep.ok and not rep.problems
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert [e.position for e in r.read_all()] == list(range(1, 121))


def test_bytes_after_a_zero_header_are_a_torn_tail_or_corruption(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("a", [ev("A")])
        s.append("a", [ev("B")])
    seg = seg_files(store_path)[-1]
    end = commits_end(seg)
    with open(seg, "rb") as f:
        raw = f.read(end)
    # garbage far after the end (a stale page a power cut kept): torn, cut off by the writer
    with open(seg, "r+b") as f:
        f.seek(end + 9000)
        f.write(b"\xab" * 100)
    size = os.path.getsize(seg)
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() == 2
    assert os.path.getsize(seg) == size and zeros_from(seg, end)  # cut by zeros: the file never shrinks
    # a whole commit after zeros is committed data after damage: corruption, nothing cut
    second = raw[commits_end_of_first(raw):]
    with open(seg, "r+b") as f:
        f.seek(end + 8192)
        f.write(second)
    os.unlink(os.path.join(store_path, "index", "data.mdb"))
    with pytest.raises(evstore.CorruptedError) as info:
        evstore.open(store_path, log_impl=impl)
    assert info.value.offset == end
    with open(seg, "rb") as f:
        f.seek(end + 8192)
        assert f.read(len(second)) == second


def commits_end_of_first(raw: bytes) -> int:
    """The end of the first commit of a segment's bytes (its COMMIT record has kind 2)."""
    o = 32
    while raw[o + 8] != 2:
        o += int.from_bytes(raw[o + 4 : o + 8], "little")
    return o + int.from_bytes(raw[o + 4 : o + 8], "little")


def test_a_full_disk_when_allocating_writes_nothing(store_path: str, impl: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=1 << 20) as s:
        s.append("s", [ev("T", b"first")])
        seg = seg_files(store_path)[-1]
        calls: list[int] = []

        def full(fd: int, off: int, n: int) -> None:
            calls.append(n)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(segments.os, "posix_fallocate", full)
        before = (commits_end(seg), os.path.getsize(seg))
        with pytest.raises(evstore.StorageError) as info:
            s.append("s", [ev("T", b"y" * (2 << 20))], expected_version=1)  # beyond the allocated space
        assert info.value.errno == errno.ENOSPC and "nothing was written" in str(info.value)
        assert calls and (commits_end(seg), os.path.getsize(seg)) == before and s.head() == 1
        monkeypatch.undo()
        assert s.append("s", [ev("T", b"z" * (2 << 20))], expected_version=1).first_version == 2
    with evstore.open(store_path, log_impl=impl) as s:
        assert [len(e.data) for e in s.read_stream("s")] == [5, 2 << 20]


def test_a_nearly_full_disk_allocates_only_what_the_commit_needs(store_path: str, impl: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("T", b"first")])
        seg = seg_files(store_path)[-1]
        real = os.posix_fallocate
        asked: list[int] = []

        def tight(fd: int, off: int, n: int) -> None:
            asked.append(n)
            if n > (3 << 20):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd, off, n)

        monkeypatch.setattr(segments.os, "posix_fallocate", tight)
        # (10 MiB: more than the allocation ahead of the tail, up to 8 MiB, that "fsync" keeps)
        s.append("s", [ev("T", b"y" * (10 << 20))], expected_version=1)
        # The reserve was refused, the exact need was not (with "fsync", a reserve ahead of the tail
        # for the zeros of storage/prepare.py was then asked, and refused: nothing more allocated).
        assert len(asked) >= 2 and asked[0] > asked[1] and all(n > (3 << 20) for n in asked[2:])
        assert os.path.getsize(seg) == commits_end(seg)
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.stream_version("s") == 2


@pytest.mark.parametrize("log", [clog, pylog], ids=["c", "python"])
def test_pwrite_writes_at_the_offset_and_reports_errors(log: Any, tmp_path: Any) -> None:
    p = str(tmp_path / "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        log.pwrite(fd, b"abc", 5)
        log.pwrite(fd, bytearray(b"Z"), 0)
        log.pwrite(fd, b"", 100)
        assert open(p, "rb").read() == b"Z\0\0\0\0abc"
        with pytest.raises(OSError) as info:
            log.pwrite(fd, b"x", (1 << 63) - 1)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        log.pwrite(fd, b"x", 0)  # closed
    assert info.value.errno == errno.EBADF


# -- the fast path --------------------------------------------------------------------------------


def test_plain_appends_take_the_fast_path_and_others_the_general_one(store_path: str, impl: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("Known")])  # the first append of a type checks and caches its name
        core = s._core
        assert core is not None
        general = core.writer.commit
        used: list[str] = []

        def spy(*a: Any, **k: Any) -> Any:
            used.append("commit")
            return general(*a, **k)

        monkeypatch.setattr(core.writer, "commit", spy)
        s.append("s", [ev("Known"), ev("Known", b"2", metadata=b"m", schema=7)], expected_version=1)
        assert used == []
        eid = uuid.uuid4()
        s.append("s", [ev("Known", id=eid)], expected_version=3)
        s.append("s", [ev("Known", tags=("t",))], expected_version=4)
        s.append("s", (ev("Known"),), expected_version=5)  # not a list
        assert used == ["commit"] * 3
        # a retry with the same ids after a version moved on is answered by the general path
        assert s.append("s", [ev("Known", id=eid)], expected_version=3).first_version == 4
        with pytest.raises(evstore.WrongExpectedVersion):
            s.append("s", [ev("Known")], expected_version=1)
        recs = s.read_stream("s")
        assert [(r.version, r.schema, r.metadata) for r in recs[:3]] == [(1, 1, b""), (2, 1, b""), (3, 7, b"m")]


def test_the_fast_path_refuses_bad_input_like_the_general_one(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [ev("Known")])
        bad: list[tuple[Any, type[Exception]]] = [
            ([NewEvent("Known", "text")], TypeError),  # type: ignore[arg-type]
            ([NewEvent("Known", b"x", schema=-1)], ValueError),
            ([NewEvent("", b"x")], ValueError),
            ([("Known", b"x")], TypeError),
            ([], ValueError),
        ]
        for events, exc in bad:
            with pytest.raises(exc):
                s.append("s", events)
        with pytest.raises(TypeError):
            s.append(42, [ev("Known")])  # type: ignore[arg-type]
        assert s.head() == 1 and s.stream_version("s") == 1


def test_append_fields_takes_the_fast_path_and_falls_back_for_new_types(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        r = s.append_fields("f", ["NeverSeenBefore", "NeverSeenBefore"], [b"a", b"b"], [b"", b"m"],
                            expected_version=evstore.NO_STREAM)  # a new type: the general path checks it
        assert (r.first_version, r.last_version) == (1, 2)
        r = s.append_fields("f", ["NeverSeenBefore"], [b"c"], [b"n"], expected_version=2)
        assert r.first_position == 3
        with pytest.raises(evstore.WrongExpectedVersion):
            s.append_fields("f", ["NeverSeenBefore"], [b"d"], [b""], expected_version=1)
        for bad in [(["NeverSeenBefore"], ["text"], [b""]), (["NeverSeenBefore"], [b"x"], []), ([""], [b"x"], [b""])]:
            with pytest.raises((TypeError, ValueError)):
                s.append_fields("f", *bad)  # type: ignore[arg-type]
        recs = s.read_stream("f")
        assert [(e.type, e.data, e.metadata, e.schema) for e in recs] == [
            ("NeverSeenBefore", b"a", b"", 1), ("NeverSeenBefore", b"b", b"m", 1), ("NeverSeenBefore", b"c", b"n", 1)]
        assert s.head() == 3


# -- read-your-writes through the overlay ---------------------------------------------------------


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_stream_reads_see_their_own_writes_without_writing_the_index(store_path: str, impl: str, durability: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from evstore.storage.index import Index

    with evstore.open(store_path, log_impl=impl, durability=durability) as s:
        s.append("a", [ev("T", b"0")])
        s.sync()
        writes: list[int] = []
        real = Index.write

        def counted(self: Any, batch: Any) -> None:
            writes.append(1)
            real(self, batch)

        monkeypatch.setattr(Index, "write", counted)
        core = s._core
        assert core is not None
        with core.group.index_lock:  # the indexer cannot write meanwhile: only the overlay has them
            for i in range(1, 30):
                s.append("a", [ev("T", b"%d" % i)], expected_version=i)
                recs = s.read_stream("a")
                assert [r.data for r in recs] == [b"%d" % k for k in range(i + 1)]
                assert s.stream_version("a") == i + 1
                assert [r.version for r in s.read_stream("a", gt=i - 1, lte=i + 1)] == [i, i + 1]
                assert [r.version for r in s.read_stream("a", desc=True, limit=2)] == [i + 1, i]
            s.append("new", [ev("T", b"n")], expected_version=evstore.NO_STREAM)
            assert [r.data for r in s.read_stream("new")] == [b"n"]
            assert writes == []
        assert [r.data for r in s.read_all(gt=29)] == [b"29", b"n"]  # an index read indexes first
        assert writes


def test_marks_reach_stream_reads_through_the_overlay(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("d-1", [ev(), ev()])
        s.append("t-1", [ev()])
        s.sync()
        core = s._core
        assert core is not None
        with core.group.index_lock:
            s.delete_stream("d-1")
            assert s.read_stream("d-1") == [] and s.stream_version("d-1") == 2
            s.delete_stream("t-1", tombstone=True)
            with pytest.raises(evstore.StreamDeleted):
                s.read_stream("t-1")


def test_stream_reads_race_the_indexer_and_never_skip_or_repeat(store_path: str, impl: str) -> None:
    import threading

    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        stop = threading.Event()
        errors: list[BaseException] = []
        acked = [0]

        def writer() -> None:
            try:
                v = 0
                while not stop.is_set() and v < 3000:
                    s.append("r", [ev("T", b"%d" % v)] * (1 + v % 3), expected_version=v or evstore.NO_STREAM)
                    v += 1 + v % 3
                    acked[0] = v
            except BaseException as e:  # reported below
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        reads = 0
        while t.is_alive() or reads < 50:
            floor = acked[0]
            recs = s.read_stream("r")
            versions = [r.version for r in recs]
            assert versions == list(range(1, len(versions) + 1))
            assert len(versions) >= floor  # every acknowledged append is seen at once
            reads += 1
            if reads > 5000:
                break
        stop.set()
        t.join()
        assert not errors
        assert [r.version for r in s.read_stream("r")] == list(range(1, acked[0] + 1))


def test_a_format_1_store_reads_the_same_and_its_writer_records_format_2(store_path: str, impl: str) -> None:
    from evstore.format import codec
    from evstore.format.layout import SEGMENT_HEADER
    from evstore.storage import directory

    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        for i in range(40):
            s.append(f"s{i % 4}", [ev("T", b"%d" % i * 20)])
    log = codec.load(impl)
    for seg in seg_files(store_path):  # as a format-1 writer left them: version 1, no space after
        os.truncate(seg, commits_end(seg))
        with open(seg, "r+b") as f:
            raw = f.read(32)
            magic, _v, flags, first, _crc, zero = SEGMENT_HEADER.unpack(raw)
            head = SEGMENT_HEADER.pack(magic, 1, flags, first, 0, zero)
            f.seek(0)
            f.write(SEGMENT_HEADER.pack(magic, 1, flags, first, log.crc32c(head[:24]), zero))
    mpath = os.path.join(store_path, directory.META_NAME)
    meta = directory.load_meta(store_path, log, 4096, True)
    directory.write_meta(mpath, log, {**meta, "format": 1})
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert [e.position for e in r.read_all()] == list(range(1, 41))
    assert directory.load_meta(store_path, log, 4096, True)["format"] == 1  # a reader changes nothing
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, segment_size=4096) as s:
        for i in range(40, 80):
            s.append(f"s{i % 4}", [ev("T", b"%d" % i * 20)])
    assert directory.load_meta(store_path, log, 4096, True)["format"] == 2
    assert tools.verify(store_path).ok
    with evstore.open(store_path, log_impl=impl, readonly=True) as r:
        assert [e.position for e in r.read_all()] == list(range(1, 81))
    directory.write_meta(mpath, log, {**directory.load_meta(store_path, log, 4096, True), "format": 3})
    with pytest.raises(evstore.UnsupportedFormat):
        evstore.open(store_path, log_impl=impl)


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_an_interrupt_while_a_commit_becomes_durable_leaves_the_store_usable(store_path: str, impl: str,
                                                                             durability: str) -> None:
    """Ctrl-C while the syncer records a durable group (or the writer a durable commit): the next
    waiter can still sync (nothing waits for a syncer that is gone) and reads see every commit."""
    with evstore.open(store_path, log_impl=impl, durability=durability) as s:
        s.append("a", [ev("T", b"1")])
        core = s._core
        assert core is not None
        overlay = core.group.overlay
        real = overlay.add
        calls = [0]

        def interrupted(batches: Any) -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise KeyboardInterrupt
            real(batches)

        overlay.add = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            s.append("a", [ev("T", b"2")], expected_version=1)
        assert not overlay.valid  # given up: reads index first
        r = s.append("a", [ev("T", b"3")], expected_version=2)  # it was committed: version 2 is taken
        assert r.first_version == 3
        assert [e.data for e in s.read_stream("a")] == [b"1", b"2", b"3"] and s.stream_version("a") == 3
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.data for e in s.read_stream("a")] == [b"1", b"2", b"3"]


def test_the_overlay_drops_exactly_the_indexed_batches_of_a_hot_stream() -> None:
    from evstore.engine.overlay import Overlay
    from evstore.storage.index import EXTENT_KEY, EXTENT_VAL, Head, IndexBatch

    def batch(num: int, key: bytes, v: int) -> IndexBatch:
        b = IndexBatch()
        h = Head(num)
        h.version = v
        b.heads[key] = h.pack()
        b.extents.append((EXTENT_KEY.pack(num, v), EXTENT_VAL.pack(0, v * 64, 1, 64)))
        return b

    ov = Overlay()
    hot = [batch(1, b"shot", v) for v in range(1, 2001)]
    cold = batch(2, b"scold", 1)
    ov.add(hot[:1000] + [cold] + hot[1000:])
    ov.remove(hot[:1500])  # the index has the first 1500 of the hot stream's commits, not the rest
    got = ov.stream(b"shot")
    assert got is not None
    assert [EXTENT_KEY.unpack(k)[1] for k, _v in got[1]] == list(range(1501, 2001))
    assert ov.stream(b"scold") is not None
    ov.remove(hot[1500:] + [cold])
    assert ov.stream(b"shot") is None and ov.stream(b"scold") is None
