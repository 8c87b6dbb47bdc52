"""The worst days: crashes, torn tails, corrupt bytes, lost indexes, second writers and bad paths."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import defaultdict

import pytest

import evstore
from evstore import NewEvent

from conftest import PY, python_env
from crash_writer import payload
from tests.support import commits_end

HERE = os.path.dirname(os.path.abspath(__file__))


def fill(path: str, impl: str, commits: int = 20, **kw: object) -> None:
    with evstore.open(path, log_impl=impl, **kw) as s:  # type: ignore[arg-type]
        for i in range(commits):
            s.append(f"s{i % 3}", [NewEvent("T", f"{i}-{j}".encode() * 5) for j in range(i % 4 + 1)])


def last_segment(path: str) -> str:
    d = os.path.join(path, "log")
    return os.path.join(d, sorted(os.listdir(d))[-1])


def snapshot(path: str, impl: str) -> list[tuple[object, ...]]:
    with evstore.open(path, log_impl=impl, readonly=True) as s:
        return [(e.stream, e.version, e.position, e.type, e.data) for e in s.read_all()]


def test_torn_tail_is_truncated_at_every_offset_of_the_last_commit(store_path: str, impl: str) -> None:
    fill(store_path, impl, commits=5)
    seg = last_segment(store_path)
    full = open(seg, "rb").read()[: commits_end(seg)]
    committed = snapshot(store_path, impl)
    index, saved = os.path.join(store_path, "index"), os.path.join(store_path + "-index")
    shutil.copytree(index, saved)  # an index that does not know the last commit
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s9", [NewEvent("Last", b"L" * 100), NewEvent("Last", b"M" * 50)])
    grown = open(seg, "rb").read()[: commits_end(seg)]
    assert len(grown) > len(full) + 150
    for cut in range(len(full), len(grown)):
        # odd cuts: the file as a power cut leaves allocated space (the rest of the commit zeros)
        # (unless what is cut is zeros itself: then the file holds the whole commit)
        pad = bytes(len(grown) - cut + 4096) if cut % 2 and any(grown[cut:]) else b""
        with open(seg, "wb") as f:
            f.write(grown[:cut] + pad)
        shutil.rmtree(index)
        shutil.copytree(saved, index)
        assert snapshot(store_path, impl) == committed  # a reader ignores the torn tail
        assert os.path.getsize(seg) == cut + len(pad)
        if cut % 7 == 0:
            shutil.rmtree(index)  # and a rebuild from the log alone agrees
        with evstore.open(store_path, log_impl=impl) as s:  # the writer cuts it off (with zeros)
            assert s.head() == len(committed)
        assert os.path.getsize(seg) == cut + len(pad) and commits_end(seg) == len(full)
        with open(seg, "rb") as f:
            assert not any(f.read()[len(full):])
    with open(seg, "wb") as f:  # zeros after the last commit are a torn tail too
        f.write(full + bytes(300))
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() == len(committed)
        s.append("s0", [NewEvent("After", b"")])
        assert s.read_stream("s0")[-1].position == len(committed) + 1


def test_flipped_byte_before_the_last_commit_is_corruption(store_path: str, impl: str) -> None:
    fill(store_path, impl, commits=10)
    seg = last_segment(store_path)
    data = bytearray(open(seg, "rb").read())
    shutil.rmtree(os.path.join(store_path, "index"))
    target = 200
    data[target] ^= 0x40
    open(seg, "wb").write(bytes(data))
    with pytest.raises(evstore.CorruptedError) as info:
        evstore.open(store_path, log_impl=impl)
    assert info.value.path == seg and 32 <= info.value.offset <= target
    assert "evstore recover" in str(info.value)
    assert os.path.getsize(seg) == len(data)  # nothing was truncated


def test_corruption_found_by_a_read_is_reported_not_served(store_path: str, impl: str) -> None:
    fill(store_path, impl, commits=10)
    seg = last_segment(store_path)
    data = bytearray(open(seg, "rb").read())
    data[100] ^= 0x01  # inside the first event's data; the index is intact
    open(seg, "wb").write(bytes(data))
    with evstore.open(store_path, log_impl=impl) as s:
        with pytest.raises(evstore.CorruptedError):
            s.read_stream("s0")
        with pytest.raises(evstore.CorruptedError):
            list(s.read_all())


def test_lost_or_damaged_index_is_rebuilt_from_the_log(store_path: str, impl: str) -> None:
    fill(store_path, impl, commits=30, segment_size=4096)
    before = snapshot(store_path, impl)
    shutil.rmtree(os.path.join(store_path, "index"))
    assert snapshot_after_writer_open(store_path, impl) == before
    with open(os.path.join(store_path, "index", "data.mdb"), "r+b") as f:
        f.write(b"\xff" * 4096)
    assert snapshot_after_writer_open(store_path, impl) == before
    with evstore.open(store_path, log_impl=impl) as s:
        v = sum(1 for e in before if e[0] == "s0")
        assert s.append("s0", [NewEvent("T", b"")], expected_version=v).first_position == len(before) + 1


def snapshot_after_writer_open(path: str, impl: str) -> list[tuple[object, ...]]:
    with evstore.open(path, log_impl=impl) as s:
        return [(e.stream, e.version, e.position, e.type, e.data) for e in s.read_all()]


def test_log_shorter_than_the_index_is_never_served(store_path: str, impl: str) -> None:
    fill(store_path, impl, commits=10)
    seg = last_segment(store_path)
    os.truncate(seg, commits_end(seg) - 100)
    with pytest.raises(evstore.IndexAheadOfLog):
        evstore.open(store_path, log_impl=impl)
    with pytest.raises(evstore.IndexAheadOfLog):
        evstore.open(store_path, log_impl=impl, readonly=True)


def test_missing_meta_is_rebuilt(store_path: str, impl: str) -> None:
    fill(store_path, impl, commits=5)
    before = snapshot(store_path, impl)
    os.unlink(os.path.join(store_path, "evstore.meta"))
    assert snapshot_after_writer_open(store_path, impl) == before
    assert os.path.exists(os.path.join(store_path, "evstore.meta"))


def test_store_of_a_newer_format_is_refused(store_path: str, impl: str) -> None:
    fill(store_path, impl, commits=1)
    meta = os.path.join(store_path, "evstore.meta")
    from evstore.format import codec as _impl

    body = json.dumps({"format": 99, "segment_size": 4096}).encode()
    crc = _impl.load(impl).crc32c(body)
    with open(meta, "wb") as f:
        f.write(b"EVSTMETA" + crc.to_bytes(4, "little") + body)
    with pytest.raises(evstore.UnsupportedFormat) as info:
        evstore.open(store_path, log_impl=impl)
    assert info.value.found == 99


def test_path_that_is_a_file_or_foreign_directory_is_refused(tmp_path: object, impl: str) -> None:
    f = os.path.join(str(tmp_path), "file")
    open(f, "w").write("x")
    with pytest.raises(evstore.EvstoreError, match="is a file"):
        evstore.open(f, log_impl=impl)
    d = os.path.join(str(tmp_path), "other")
    os.makedirs(d)
    open(os.path.join(d, "notes.txt"), "w").write("x")
    with pytest.raises(evstore.EvstoreError, match="not an evstore store"):
        evstore.open(d, log_impl=impl)
    with pytest.raises(evstore.EvstoreError, match="no store"):
        evstore.open(os.path.join(str(tmp_path), "absent"), create=False, log_impl=impl)
    with pytest.raises(ValueError):
        evstore.open("bad\x00path")
    with pytest.raises(ValueError):
        evstore.open(os.path.join(str(tmp_path), "x"), durability="never")


def test_store_files_are_owner_only(store_path: str, impl: str) -> None:
    fill(store_path, impl, commits=1)
    for root, dirs, files in os.walk(store_path):
        for name in dirs:
            assert os.stat(os.path.join(root, name)).st_mode & 0o077 == 0, name
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o077 == 0, name


def test_second_writer_process_gets_store_locked_with_the_pid(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("s", [NewEvent("T", b"")])
        code = (
            "import evstore, sys\n"
            "try:\n"
            f"    evstore.open({store_path!r}, log_impl={impl!r})\n"
            "except evstore.StoreLocked as e:\n"
            "    print('locked', e.pid); sys.exit(0)\n"
            "sys.exit(1)\n"
        )
        out = subprocess.run([PY, "-c", code], env=python_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["locked", str(os.getpid())]
        code_r = (
            "import evstore\n"
            f"with evstore.open({store_path!r}, readonly=True, log_impl={impl!r}) as r:\n"
            "    print(r.stream_version('s'))\n"
        )
        out = subprocess.run([PY, "-c", code_r], env=python_env(), capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "1", out.stderr


def test_dead_writer_releases_the_lock(store_path: str, impl: str) -> None:
    proc = subprocess.Popen([PY, os.path.join(HERE, "crash_writer.py"), store_path, "1", impl],
                            env=python_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"kind": "ready"}
    with pytest.raises(evstore.StoreLocked):
        evstore.open(store_path, log_impl=impl)
    proc.kill()
    proc.wait()
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.head() >= 0


def check_after_crash(path: str, impl: str, acked: list[dict[str, object]]) -> int:
    """Reopen and check: acknowledged commits present byte for byte, no partial commit, gapless,
    acknowledged snapshots, tracking and deletes present, lifecycle states consistent, verify clean."""
    from crash_writer import ORDER

    with evstore.open(path, log_impl=impl, lifecycles={"order": ORDER}) as s:
        events = list(s.read_all())
        assert [e.position for e in events] == list(range(1, len(events) + 1))
        by_commit: dict[int, list[evstore.RecordedEvent]] = defaultdict(list)
        versions: dict[object, int] = defaultdict(int)
        for e in events:
            versions[e.stream] += 1
            assert e.version == versions[e.stream]
            if e.stream == "after-crash":
                continue
            commit, i, n = (int(x) for x in e.data.split(b":", 3)[:3])
            by_commit[commit].append(e)
            assert e.data == payload(commit, i, n, len(e.data) - len(f"{commit}:{i}:{n}:"))
        for commit, evs in by_commit.items():
            n = int(evs[0].data.split(b":")[2])
            assert len(evs) == n, f"commit {commit} is partial: {len(evs)} of {n} events"
        for a in acked:
            if a["kind"] == "append":
                for stream, last_version, last_position in a["parts"]:  # type: ignore[union-attr]
                    e = s.event_at(last_position)  # type: ignore[arg-type]
                    assert e is not None and (e.stream, e.version) == (stream, last_version)
                if a["tracking"]:
                    assert (s.max_tracking("up") or 0) >= a["tracking"]  # type: ignore[operator]
                    assert s.has_tracking("up", a["tracking"])  # type: ignore[arg-type]
            elif a["kind"] == "snapshot":
                later = [b for b in acked if b["kind"] == "snapshot" and b["stream"] == a["stream"]
                         and b["version"] == a["version"]]
                if later[-1] is not a:
                    continue  # a later snapshot at the same version replaced it
                snap = s.load_snapshot(a["stream"], lte=a["version"])  # type: ignore[arg-type]
                # a soft delete after it (acknowledged or not: the kill may cut the acknowledgement
                # off) hides it, together with every version up to the delete
                hidden = not s.read_stream(a["stream"], lte=a["version"], limit=1)  # type: ignore[arg-type]
                if not hidden:
                    assert snap is not None and snap.version == a["version"]
                    # this snapshot, or one saved later at the same version whose acknowledgement the
                    # kill cut off; either way whole and byte-exact
                    commit = int(snap.data.split(b":", 1)[0])
                    assert commit >= a["commit"]  # type: ignore[operator]
                    size = len(snap.data) - len(f"{commit}:0:1:")
                    assert snap.data == payload(commit, 0, 1, size)
                    if commit == a["commit"]:
                        assert size == a["size"]
            elif a["kind"] == "delete":
                assert s.stream_version(a["stream"]) >= a["version"]  # type: ignore[arg-type,operator]
        assert s.check_lifecycles() == []
        for k in range(4):
            st = s.stream_state(f"order-{k}")
            assert st in ("new", "open", "paid")
        tail = s.append("after-crash", [NewEvent("T", b"")])
        assert tail.first_position == len(events) + 1
    from evstore import tools

    assert tools.verify(path).ok
    return len(events)


def run_crash_loop(path: str, impl: str, kills: int, seed: int) -> int:
    rnd = random.Random(seed)
    total_acked = 0
    for k in range(kills):
        proc = subprocess.Popen(
            [PY, os.path.join(HERE, "crash_writer.py"), path, str(seed * 1000 + k), impl, "65536"],
            env=python_env(), stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"kind": "ready"}
        time.sleep(rnd.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acked = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        total_acked += len(acked)
        check_after_crash(path, impl, acked)
    return total_acked


def test_killed_writer_loses_no_acknowledged_commit(store_path: str, impl: str) -> None:
    acked = run_crash_loop(store_path, impl, kills=6, seed=7)
    assert acked > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_killed_writer_torture(tmp_path: object, impl: str, seed: int) -> None:
    run_crash_loop(os.path.join(str(tmp_path), "s"), impl, kills=150, seed=seed)


@pytest.mark.parametrize("path", ["/proc/evstore-cannot-create", "/dev/null/under-a-file"])
def test_unwritable_path_gets_a_storage_error(path: str, impl: str) -> None:
    with pytest.raises(evstore.StorageError) as info:
        evstore.open(path, log_impl=impl)
    assert info.value.errno is not None and path in str(info.value)
