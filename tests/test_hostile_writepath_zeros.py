"""Attacks on the write path, the zero-header end of a segment's commits: acknowledged commits that
read back as zeros or are cut off are refused, not rebuilt away; zeroed event-less commits at the end
of a sealed segment; zeros inside sealed and active segments with commits after them; the lost unsynced
pages of an "os" writer."""

from __future__ import annotations

import os

import pytest

import evstore
from evstore import tools

from tests.support import commits_end, ev
from tests.writepath_helpers import commit_ends, seg_files, zero


# -- bugs ---------------------------------------------------------------------------------------------


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


# -- what held --------------------------------------------------------------------------------------


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
        core.group.flush_index = lambda upto=None: None  # type: ignore[method-assign]
        core.group.index_synced = lambda: None  # type: ignore[method-assign]  # (the appender's share)
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
