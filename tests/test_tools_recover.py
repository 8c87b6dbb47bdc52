"""`evstore recover`, `verify` and `reindex` on damaged stores: every state whose message sends the user
to `recover` is recovered (exit 0, every intact commit before the damage kept, `verify` clean after),
and recover interrupted at any step is finished by the next run."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

import evstore
from evstore import NewEvent, tools

from conftest import ROOT, python_env
from tests.support import commits_end

SCRIPT = os.path.join(os.path.dirname(sys.executable), "evstore")
FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_inject")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = python_env(**env)
    if "EVSTORE_FAULT" in env:
        e["PYTHONPATH"] = FAULTS + os.pathsep + e["PYTHONPATH"]
    exe = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "evstore"]
    return subprocess.run([*exe, *args], env=e, capture_output=True, text=True, timeout=120, cwd=ROOT)


def fill(path: str) -> None:
    """About 6 segments of 4 KiB: events of several streams, a close, a soft delete, a snapshot, tracking."""
    with evstore.open(path, segment_size=4096) as s:
        for i in range(60):
            s.append(f"s-{i % 4}", [NewEvent("T", f"{i}:{j}".encode() * 20) for j in range(i % 3 + 1)])
            if i == 10:
                s.append("closed-1", [NewEvent("T", b"")])
                s.close_stream("closed-1")
            if i == 20:
                s.save_snapshot("s-1", 3, b"snap", type="S")
                s.append_many([], tracking=("up", 7))


def events(path: str) -> list[tuple[object, ...]]:
    with evstore.open(path) as s:
        return [(e.stream, e.version, e.position, e.data) for e in s.read_all()]


def segments(path: str) -> list[str]:
    return sorted(glob.glob(os.path.join(path, "log", "*.seg")))


def flip(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x55]))


def assert_recovered(path: str, before: list[tuple[object, ...]], upto: int | None = None) -> None:
    """verify is clean, the events are a prefix of `before` (all of it unless `upto`), appends go on."""
    out = run("verify", path)
    assert out.returncode == 0, out.stdout + out.stderr
    now = events(path)
    assert now == before[: len(now)]
    if upto is None:
        assert now == before
    else:
        assert len(now) >= upto
    with evstore.open(path) as s:
        assert s.append("after", [NewEvent("T", b"")]).first_position == len(now) + 1


@pytest.fixture
def store(tmp_path: object) -> tuple[str, list[tuple[object, ...]]]:
    path = os.path.join(str(tmp_path), "s.evs")
    fill(path)
    assert len(segments(path)) >= 5
    return path, events(path)


def whole_segments_before(path: str, k: int) -> int:
    """The number of events in the segments before the k-th."""
    first = int(os.path.basename(segments(path)[k])[:20])
    return first - 1


# -- the states whose messages name `evstore recover` -----------------------------------------------


def test_recover_index_ahead_of_the_log(store: tuple[str, list[tuple[object, ...]]]) -> None:
    path, before = store
    last = segments(path)[-1]
    os.truncate(last, commits_end(last) - 300)
    with pytest.raises(evstore.IndexAheadOfLog):
        evstore.open(path)
    out = run("recover", path)
    assert out.returncode == 0, out.stderr
    assert_recovered(path, before, upto=whole_segments_before(path, -1))


def test_recover_damage_after_the_index_checkpoint(store: tuple[str, list[tuple[object, ...]]]) -> None:
    path, _ = store
    saved = path + "-index"
    shutil.copytree(os.path.join(path, "index"), saved)
    with evstore.open(path, segment_size=4096) as s:
        for i in range(20):
            s.append("late", [NewEvent("L", b"x" * 150)])
    before = events(path)
    shutil.rmtree(os.path.join(path, "index"))
    shutil.copytree(saved, os.path.join(path, "index"))  # an index that knows none of the late commits
    flip(segments(path)[-2], 200)  # damage in a sealed segment the index never covered
    with pytest.raises(evstore.CorruptedError):
        evstore.open(path)
    out = run("recover", path)
    assert out.returncode == 0, out.stderr
    assert "damaged-" in out.stdout
    assert_recovered(path, before, upto=whole_segments_before(path, -1))


@pytest.mark.parametrize("which", [2, -1])
def test_recover_segment_truncated_to_zero_bytes(store: tuple[str, list[tuple[object, ...]]], which: int) -> None:
    path, before = store
    keep = whole_segments_before(path, which)
    os.truncate(segments(path)[which], 0)
    out = run("recover", path)
    assert out.returncode == 0, out.stderr
    assert_recovered(path, before, upto=keep)
    assert len(events(path)) == keep + 1  # and nothing after the damaged segment (plus "after")


def test_recover_stray_garbage_segment_files(store: tuple[str, list[tuple[object, ...]]]) -> None:
    path, before = store
    with open(os.path.join(path, "log", "00000000000000000003.seg"), "wb") as f:
        f.write(os.urandom(5000))
    with open(os.path.join(path, "log", "junk.seg"), "wb") as f:
        f.write(b"not a segment")
    assert run("verify", path).returncode == 1
    out = run("recover", path)
    assert out.returncode == 0, out.stderr
    assert_recovered(path, before)  # nothing intact is dropped for a stray file
    moved = os.listdir(glob.glob(os.path.join(path, "damaged-*"))[0])
    assert "junk.seg" in moved and "00000000000000000003.seg" in moved


def test_recover_renamed_segment(store: tuple[str, list[tuple[object, ...]]]) -> None:
    path, before = store
    seg = segments(path)[2]
    os.rename(seg, os.path.join(path, "log", "00000000000000099999.seg"))
    out = run("verify", path)
    assert out.returncode == 1 and "its name says" in out.stdout
    out = run("recover", path)
    assert out.returncode == 0, out.stderr
    assert "renamed" in out.stdout
    assert_recovered(path, before)
    assert os.path.exists(seg)


def test_recover_missing_middle_segment(store: tuple[str, list[tuple[object, ...]]]) -> None:
    path, before = store
    keep = whole_segments_before(path, 2)
    os.rename(segments(path)[2], os.path.join(str(os.path.dirname(path)), "away.seg"))
    shutil.rmtree(os.path.join(path, "index"))
    out = run("verify", path)
    assert out.returncode == 1 and "a segment is missing" in out.stdout, out.stdout
    out = run("recover", path)
    assert out.returncode == 0, out.stderr
    assert "a segment is missing" in out.stdout
    assert_recovered(path, before, upto=keep)
    assert len(events(path)) == keep + 1
    out = run("recover", path)  # and again: nothing left to do
    assert out.returncode == 0, out.stderr


def test_verify_reports_a_missing_first_segment(store: tuple[str, list[tuple[object, ...]]]) -> None:
    path, _ = store
    os.unlink(segments(path)[0])
    out = run("verify", path)
    assert out.returncode == 1 and "the first segment of the log is missing" in out.stdout


@pytest.mark.parametrize("index", ["garbage", "missing"])
def test_recover_without_a_usable_index(store: tuple[str, list[tuple[object, ...]]], index: str) -> None:
    path, before = store
    ipath = os.path.join(path, "index")
    if index == "missing":
        shutil.rmtree(ipath)
    else:
        with open(os.path.join(ipath, "data.mdb"), "r+b") as f:
            f.write(b"\xff" * 8192)
    keep = whole_segments_before(path, 3)
    flip(segments(path)[3], 100)
    out = run("recover", path)
    assert out.returncode == 0, out.stderr
    assert "head before: unknown" in out.stdout
    assert_recovered(path, before, upto=keep)


# -- reindex --------------------------------------------------------------------------------------


def test_failed_reindex_keeps_the_index_that_served(store: tuple[str, list[tuple[object, ...]]]) -> None:
    path, before = store
    flip(segments(path)[3], 100)
    out = run("reindex", path)
    assert out.returncode == 1 and "evstore recover" in out.stderr
    assert os.path.exists(os.path.join(path, "index", "data.mdb"))
    assert not os.path.exists(os.path.join(path, "reindex.tmp"))
    out = run("read", path, "s-1", "--limit", "2", "--format", "jsonl")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2, out.stderr
    with evstore.open(path, readonly=True) as s:
        assert s.head() == len(before)


# -- crash safety ---------------------------------------------------------------------------------


def damaged_store(base: str) -> tuple[str, list[tuple[object, ...]], int, bytes]:
    path = os.path.join(base, "s.evs")
    fill(path)
    before = events(path)
    keep = whole_segments_before(path, 2)
    seg = segments(path)[2]
    flip(seg, os.path.getsize(seg) // 2)  # whole commits before and after it in the segment
    with open(os.path.join(path, "log", "junk.seg"), "wb") as f:
        f.write(b"junk")
    return path, before, keep, open(seg, "rb").read()


def check_finished(path: str, before: list[tuple[object, ...]], keep: int, damaged: bytes,
                   later: dict[str, bytes]) -> None:
    out = run("recover", path)
    assert out.returncode == 0, out.stderr
    assert tools.verify(path).ok
    now = events(path)
    assert now == before[: len(now)] and len(now) > keep
    kept = {}
    for d in glob.glob(os.path.join(path, "damaged-*")):
        for name in os.listdir(d):
            kept[name.split(".seg")[0] + ".seg"] = open(os.path.join(d, name), "rb").read()
    assert damaged in kept.values()  # the damaged segment is kept whole
    for name, data in later.items():  # and so is every segment after it
        assert kept.get(name) == data or open(os.path.join(path, "log", name), "rb").read() == data
    assert not os.path.exists(os.path.join(path, "recover.journal"))
    assert not glob.glob(os.path.join(path, "log", "*.salvage"))


@pytest.mark.parametrize("stride", [3, pytest.param(1, marks=pytest.mark.slow)])
def test_recover_killed_at_every_step_is_finished_by_the_next_run(tmp_path: object, stride: int) -> None:
    """Killed just before each durable step (every third one by default, all with --long)."""
    base = str(tmp_path)
    tmpl, before, keep, damaged = damaged_store(os.path.join(base, "template"))
    later = {os.path.basename(p): open(p, "rb").read() for p in segments(tmpl)[3:]}
    ref = os.path.join(base, "ref.evs")
    shutil.copytree(tmpl, ref)
    count = os.path.join(base, "count")
    out = run("recover", ref, EVSTORE_FAULT="count", EVSTORE_FAULT_COUNT=count)
    assert out.returncode == 0, out.stderr
    steps = int(open(count).read())
    assert steps >= 10
    expected = events(ref)
    for k in range(1, steps + 1, stride):
        work = os.path.join(base, f"k{k}.evs")
        shutil.copytree(tmpl, work)
        out = run("recover", work, EVSTORE_FAULT=f"kill:{k}")
        assert out.returncode == 137, (k, out.stderr)
        check_finished(work, before, keep, damaged, later)
        assert events(work) == expected, k
        shutil.rmtree(work)
