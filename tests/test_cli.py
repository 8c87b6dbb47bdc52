"""The `evstore` console script, driven in subprocesses: exit codes, output, piped and terminal modes."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import subprocess
import sys
import time
import uuid

import pytest

import evstore
from evstore import NewEvent

from conftest import python_env

SCRIPT = os.path.join(os.path.dirname(sys.executable), "evstore")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "evstore"]
    return subprocess.run([*exe, *args], env=python_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def filled(tmp_path: object) -> str:
    path = os.path.join(str(tmp_path), "s.evs")
    with evstore.open(path, segment_size=4096) as s:
        for i in range(50):
            s.append(f"order-{i % 5}", [NewEvent("Placed" if i < 5 else "Paid", json.dumps({"i": i}).encode())])
        s.append(uuid.UUID(int=1), [NewEvent("Bin", b"\xff\x00binary", metadata=b'{"m": 1}')])
    return path


def test_console_script_is_installed() -> None:
    assert os.path.exists(SCRIPT), "pip install -e . installs the evstore console script"
    out = run("--help")
    assert out.returncode == 0 and "verify" in out.stdout and "backup" in out.stdout


@pytest.mark.parametrize("cmd", ["info", "streams", "read", "tail", "verify", "reindex", "recover", "backup",
                                 "export", "import", "copy", "consumers", "compact-snapshots", "demo", "bench",
                                 "lifecycle"])
def test_every_command_has_help(cmd: str) -> None:
    out = run(cmd, "--help")
    assert out.returncode == 0 and "usage: evstore" in out.stdout


def test_info_and_streams(filled: str) -> None:
    out = run("info", filled, "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["head"] == 51 and d["index_lag"] == 0 and d["format"] == 2 and d["streams"] == 6
    assert len(d["segments"]) > 1 and d["log_bytes"] == sum(s["bytes"] for s in d["segments"])
    out = run("streams", filled, "--prefix", "order-")
    assert out.returncode == 0
    assert out.stdout.splitlines() == [f"order-{i}\t10" for i in range(5)]


def test_read_formats(filled: str) -> None:
    out = run("read", filled, "order-2", "--from", "3", "--to", "5", "--format", "jsonl")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["version"] for r in rows] == [3, 4, 5] and rows[0]["data"] == {"i": 12}
    assert rows[0]["stream"] == "order-2" and rows[0]["stream_kind"] == "str"
    out = run("read", filled, str(uuid.UUID(int=1)), "--uuid", "--format", "json")
    (row,) = json.loads(out.stdout)
    assert base64.b64decode(row["data_b64"]) == b"\xff\x00binary" and row["metadata"] == {"m": 1}
    out = run("read", filled, "order-1", "--desc", "--limit", "2")
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and " 10 " in lines[0] and '{"i": 46}' in lines[0]


def test_tail_and_type_filter(filled: str) -> None:
    out = run("tail", filled, "-n", "3", "--format", "jsonl")
    assert [json.loads(x)["position"] for x in out.stdout.splitlines()] == [49, 50, 51]
    out = run("tail", filled, "-n", "51", "--type", "Placed", "--format", "jsonl")
    assert [json.loads(x)["position"] for x in out.stdout.splitlines()] == [1, 2, 3, 4, 5]


def test_tail_follow_prints_new_commits(filled: str) -> None:
    exe = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "evstore"]
    proc = subprocess.Popen([*exe, "tail", filled, "-n", "0", "-f", "--format", "jsonl"], env=python_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        with evstore.open(filled) as s:
            s.append("late", [NewEvent("Late", b"{}")])
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line)["type"] == "Late"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_verify_clean_and_corrupt(filled: str) -> None:
    out = run("verify", filled)
    assert out.returncode == 0 and "51 events" in out.stdout
    seg = os.path.join(filled, "log", sorted(os.listdir(os.path.join(filled, "log")))[0])
    data = bytearray(open(seg, "rb").read())
    data[100] ^= 1
    open(seg, "wb").write(bytes(data))
    out = run("verify", filled)
    assert out.returncode == 1 and "CORRUPT" in out.stdout and "evstore recover" in out.stderr


def test_recover_salvages_commits_before_the_damage(filled: str) -> None:
    segs = sorted(os.listdir(os.path.join(filled, "log")))
    seg = os.path.join(filled, "log", segs[1])
    data = bytearray(open(seg, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(seg, "wb").write(bytes(data))
    out = run("recover", filled)
    assert out.returncode == 0, out.stderr
    assert "dropped" in out.stdout and "damaged-" in out.stdout
    assert run("verify", filled).returncode == 0
    with evstore.open(filled) as s:
        head = s.head()
        assert 0 < head < 51
        assert [e.position for e in s.read_all()] == list(range(1, head + 1))
        s.append("order-0", [NewEvent("Paid", b"{}")])  # and it takes appends again


def test_reindex_and_backup(filled: str, tmp_path: object) -> None:
    out = run("reindex", filled)
    assert out.returncode == 0 and "head 51" in out.stdout
    dest = os.path.join(str(tmp_path), "copy.evs")
    out = run("backup", filled, dest)
    assert out.returncode == 0, out.stderr
    with evstore.open(dest, readonly=True) as b, evstore.open(filled, readonly=True) as a:
        assert [x.raw() for x in b.read_all()] == [x.raw() for x in a.read_all()]
    out = run("backup", filled, dest)  # never over an existing copy
    assert out.returncode == 1 and "already exists" in out.stderr


def test_export_is_byte_exact(filled: str, tmp_path: object) -> None:
    out = run("export", filled, "--gt", "49")
    rows = [json.loads(x) for x in out.stdout.splitlines() if json.loads(x)["kind"] == "event"]
    assert [r["position"] for r in rows] == [50, 51]
    assert base64.b64decode(rows[1]["data_b64"]) == b"\xff\x00binary"
    target = os.path.join(str(tmp_path), "events.jsonl")
    assert run("export", filled, "-o", target).returncode == 0
    kinds = [json.loads(x)["kind"] for x in open(target).read().splitlines()]
    assert kinds.count("event") == 51 and kinds.count("commit") == 51


def test_errors_are_one_line_without_traceback(tmp_path: object) -> None:
    out = run("info", os.path.join(str(tmp_path), "absent"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("evstore: ")
    out = run("read", os.path.join(str(tmp_path), "absent"), "s")
    assert out.returncode == 1 and "Traceback" not in out.stderr


def test_writer_held_store_cannot_be_reindexed(filled: str) -> None:
    with evstore.open(filled):
        out = run("reindex", filled)
    assert out.returncode == 1 and "open for writing" in out.stderr


def test_verify_on_a_terminal_shows_progress_and_piped_stays_quiet(filled: str) -> None:
    exe = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "evstore"]
    piped = run("verify", filled)
    assert piped.stderr == ""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*exe, "verify", filled], env=python_env(), stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks = b""
    while True:
        r, _, _ = select.select([master], [], [], 30)
        if not r:
            break
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks += data
    assert proc.wait(timeout=30) == 0
    os.close(master)
    assert b"verify" in chunks and b"51 events" in chunks


def test_demo_runs() -> None:
    out = run("demo", "--events", "1000")
    assert out.returncode == 0, out.stderr
    assert "events/s" in out.stdout and "a stale writer was refused" in out.stdout


def test_python_dash_m_works(filled: str) -> None:
    out = subprocess.run([sys.executable, "-m", "evstore", "info", filled], env=python_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "head" in out.stdout


LIFECYCLES = '''
import evstore
ORDER = evstore.Lifecycle("order", initial="new",
                          transitions={("new", "Placed"): "open", ("open", "Paid"): "paid"}, final={"paid"})
BINDINGS = {"order": ORDER}
'''


def test_lifecycle_draw_and_verify_lifecycles(filled: str, tmp_path: object) -> None:
    mod = os.path.join(str(tmp_path), "shop_lc.py")
    with open(mod, "w") as f:
        f.write(LIFECYCLES)
    exe = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "evstore"]
    env = python_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    out = subprocess.run([*exe, "lifecycle", "draw", "shop_lc:ORDER", "--format", "dot"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "digraph" in out.stdout and "Placed" in out.stdout
    # every order stream got Placed then Paid events beyond 'paid' (a final state): violations
    out = subprocess.run([*exe, "verify", filled, "--lifecycles", "shop_lc:BINDINGS"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "lifecycle violation: order-0 v3" in out.stdout and "violation(s)" in out.stdout
    out = subprocess.run([*exe, "verify", filled, "--lifecycles", "shop_lc:MISSING"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.startswith("evstore: ") and "Traceback" not in out.stderr


def test_export_import_round_trip_is_byte_exact(filled: str, tmp_path: object) -> None:
    dump = os.path.join(str(tmp_path), "dump.jsonl")
    assert run("export", filled, "-o", dump).returncode == 0
    copy = os.path.join(str(tmp_path), "copy.evs")
    out = run("import", copy, dump)
    assert out.returncode == 0, out.stderr
    assert "imported 51 events" in out.stdout
    again = run("export", copy)
    assert again.stdout == open(dump).read()
    out = run("import", copy, dump)  # not into a non-empty store unless told
    assert out.returncode == 1 and "--merge" in out.stderr
    out = run("import", copy, dump, "--merge")  # same ids: an idempotent no-op
    with evstore.open(copy, readonly=True) as s:
        assert s.head() == 51


@pytest.mark.parametrize("bad, where", [
    ('{"position": 1}', "line 2"),
    ("not json", "line 2"),
    ('[1, 2]', "line 2"),
])
def test_import_reports_the_bad_line_and_imports_nothing(filled: str, tmp_path: object, bad: str,
                                                         where: str) -> None:
    dump = os.path.join(str(tmp_path), "dump.jsonl")
    run("export", filled, "-o", dump)
    lines = open(dump).read().splitlines()
    hostile = os.path.join(str(tmp_path), "hostile.jsonl")
    with open(hostile, "w") as f:
        f.write("\n".join([lines[0], bad, *lines[1:]]) + "\n")
    target = os.path.join(str(tmp_path), "t.evs")
    out = run("import", target, hostile)
    assert out.returncode == 1 and where in out.stderr and "nothing was imported" in out.stderr
    assert not os.path.exists(target)  # the file is checked whole before the store is even opened


def test_import_refuses_hostile_fields(filled: str, tmp_path: object) -> None:
    dump = os.path.join(str(tmp_path), "dump.jsonl")
    run("export", filled, "-o", dump)
    row = json.loads(open(dump).readline())
    for field, value in [("type", ""), ("stream", "x" * 1000), ("data_b64", "%%%"), ("id", "nope"),
                         ("schema", -1), ("stream_kind", "int"), ("version", True)]:
        bad = dict(row, **{field: value})
        path = os.path.join(str(tmp_path), f"bad-{field}.jsonl")
        open(path, "w").write(json.dumps(bad) + "\n")
        out = run("import", os.path.join(str(tmp_path), f"t-{field}.evs"), path)
        assert out.returncode == 1 and "line 1" in out.stderr, (field, out.stderr)


def test_compact_snapshots(filled: str) -> None:
    with evstore.open(filled) as s:
        for v in (2, 4, 6):
            s.save_snapshot("order-1", v, b"s%d" % v, type="S")
        s.save_snapshot("order-2", 3, b"t", type="S")
    out = run("compact-snapshots", filled, "--keep", "1")
    assert out.returncode == 0 and "dropped 2 " in out.stdout, out.stdout
    with evstore.open(filled, readonly=True) as s:
        assert s.load_snapshot("order-1").version == 6  # type: ignore[union-attr]
        assert s.load_snapshot("order-1", lte=5) is None
        assert s.load_snapshot("order-2").version == 3  # type: ignore[union-attr]


def test_ctrl_c_stops_cleanly(filled: str) -> None:
    import signal

    exe = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "evstore"]
    proc = subprocess.Popen([*exe, "tail", filled, "-n", "0", "-f"], env=python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert run("verify", filled).returncode == 0
    with evstore.open(filled) as s:  # not left locked or damaged
        assert s.head() == 51
