"""`evstore export` / `import`: every record kind round-trips byte for byte, the file is checked whole
against the target before anything is written, and a repeated merge adds nothing."""

from __future__ import annotations

import json
import os
import uuid

import pytest

import evstore
from evstore import NewEvent

from test_tools_recover import run

ORDER = evstore.Lifecycle("order", initial="new", transitions={("new", "Placed"): "open", ("open", "Paid"): "paid"},
                          final={"paid"})


@pytest.fixture
def every_kind(tmp_path: object) -> str:
    """A store with every record kind: events (tags, metadata, UUID streams, multi-stream commits),
    lifecycle $state marks, close, soft delete, tombstone, snapshots, tracking and consumer positions."""
    path = os.path.join(str(tmp_path), "all.evs")
    with evstore.open(path, segment_size=4096, lifecycles={"order": ORDER}) as s:
        for i in range(3):
            s.append(f"order-{i}", [NewEvent("Placed", b'{"i": %d}' % i, metadata=b"m", tags=("shop",))])
        s.append("order-0", [NewEvent("Paid", b"{}")])
        s.append_many([("acct-1", [NewEvent("Opened", b"a")], evstore.NO_STREAM),
                       ("acct-2", [NewEvent("Opened", b"b"), NewEvent("Credited", b"\x00\xff")], evstore.ANY)],
                      tracking=("upstream", 5))
        s.append(uuid.UUID(int=9), [NewEvent("U", b"\xff" * 300, schema=3)])
        s.save_snapshot("acct-2", 2, b"state", type="Acct", schema=2)
        s.close_stream("acct-1")
        s.delete_stream("order-1")
        s.append("secret-1", [NewEvent("Pii", b"ssn")])
        s.delete_stream("secret-1", tombstone=True)
        s.append_many([], tracking=("upstream", 9))
        s.consume("projector", lambda e, ctx: None, timeout=0)
    return path


def test_export_import_export_is_byte_exact_for_every_record_kind(every_kind: str, tmp_path: object) -> None:
    dump = os.path.join(str(tmp_path), "dump.jsonl")
    assert run("export", every_kind, "-o", dump).returncode == 0
    kinds = {json.loads(x)["kind"] for x in open(dump)}
    assert kinds == {"event", "commit", "mark", "snapshot", "tracking"}
    copy = os.path.join(str(tmp_path), "copy.evs")
    out = run("import", copy, dump)
    assert out.returncode == 0, out.stderr
    again = run("export", copy)
    assert again.stdout == open(dump).read()
    with evstore.open(copy, readonly=True, lifecycles={"order": ORDER}) as s:
        with pytest.raises(evstore.StreamDeleted):
            s.read_stream("secret-1")  # a tombstoned subject stays unreadable
        assert s.read_stream("order-1") == []  # soft-deleted
        assert s.stream_info("acct-1").closed  # type: ignore[union-attr]
        assert s.stream_state("order-0") == "paid"
        snap = s.load_snapshot("acct-2")
        assert snap is not None and (snap.version, snap.type, snap.data, snap.schema) == (2, "Acct", b"state", 2)
        assert s.max_tracking("upstream") == 9
    with evstore.open(copy) as s:
        with pytest.raises(evstore.StreamClosed):
            s.append("acct-1", [NewEvent("X", b"")])
    out = run("consumers", copy)
    assert out.returncode == 0 and out.stdout.startswith("projector\t"), out.stdout


def test_old_export_files_of_events_only_are_still_read(every_kind: str, tmp_path: object) -> None:
    dump = os.path.join(str(tmp_path), "dump.jsonl")
    run("export", every_kind, "-o", dump)
    old = os.path.join(str(tmp_path), "old.jsonl")
    with open(old, "w") as f:
        for line in open(dump):
            d = json.loads(line)
            if d.pop("kind") == "event":
                f.write(json.dumps(d) + "\n")
    copy = os.path.join(str(tmp_path), "copy.evs")
    out = run("import", copy, old)
    assert out.returncode == 0, out.stderr
    with evstore.open(copy, readonly=True) as a, evstore.open(every_kind, readonly=True) as b:
        assert [(e.position, e.stream, e.version, e.data) for e in a.read_all()] == \
            [(e.position, e.stream, e.version, e.data) for e in b.read_all()]


def test_repeated_merge_says_how_many_events_were_added(every_kind: str, tmp_path: object) -> None:
    dump = os.path.join(str(tmp_path), "dump.jsonl")
    run("export", every_kind, "-o", dump)
    copy = os.path.join(str(tmp_path), "copy.evs")
    assert run("import", copy, dump).returncode == 0
    before = run("export", copy).stdout
    out = run("import", copy, dump, "--merge")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("imported 0 events and 0 other records in 0 commits"), out.stdout
    assert run("export", copy).stdout == before
    with evstore.open(copy) as s:  # a merge that continues the target's streams adds just that
        s.append("fresh", [NewEvent("T", b"1")])
    more = os.path.join(str(tmp_path), "more.jsonl")
    src = os.path.join(str(tmp_path), "src.evs")
    with evstore.open(src) as s:
        s.append("fresh", [NewEvent("T", b"1"), NewEvent("T", b"2")])
    run("export", src, "-o", more)
    out = run("import", copy, more, "--merge")
    assert out.returncode == 1 and "version 1 of stream 'fresh' does not follow version 1" in out.stderr


def write_lines(path: str, rows: list[dict[str, object]]) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def exported(path: str) -> list[dict[str, object]]:
    return [json.loads(x) for x in run("export", path).stdout.splitlines()]


@pytest.fixture
def small(tmp_path: object) -> str:
    path = os.path.join(str(tmp_path), "small.evs")
    with evstore.open(path) as s:
        for i in range(4):
            s.append("a", [NewEvent("T", b"%d" % i)])
    return path


@pytest.mark.parametrize("case", ["version_gap", "time_out_of_range", "repeated_id", "negative_time"])
def test_import_checks_the_whole_file_before_writing(small: str, tmp_path: object, case: str) -> None:
    rows = exported(small)
    ev = [r for r in rows if r["kind"] == "event"]
    if case == "version_gap":
        ev[3]["version"] = 9
        want = "version 9 of stream 'a' does not follow version 3"
    elif case == "time_out_of_range":
        ev[3]["recorded_at_ns"] = 2 ** 64
        want = "out of range"
    elif case == "negative_time":
        ev[3]["recorded_at_ns"] = -1
        want = "out of range"
    else:
        ev[3]["id"] = ev[1]["id"]
        want = "repeats the event of line"
    if "time" in case:
        rows[rows.index(ev[3]) + 1]["recorded_at_ns"] = ev[3]["recorded_at_ns"]
    dump = write_lines(os.path.join(str(tmp_path), "bad.jsonl"), rows)
    target = os.path.join(str(tmp_path), "t.evs")
    out = run("import", target, dump)
    assert out.returncode == 1 and want in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr and "nothing was imported" in out.stderr
    assert not os.path.exists(target)
    with evstore.open(target) as s:  # and into an existing empty store: nothing written either
        pass
    out = run("import", target, dump)
    assert out.returncode == 1 and want in out.stderr
    with evstore.open(target, readonly=True) as s:
        assert s.head() == 0


def test_merge_refuses_an_id_used_by_another_event_of_the_target(small: str, tmp_path: object) -> None:
    rows = exported(small)
    rows[-2]["data_b64"] = "eA=="  # the last event, changed, keeps its id
    dump = write_lines(os.path.join(str(tmp_path), "changed.jsonl"), rows)
    copy = os.path.join(str(tmp_path), "copy.evs")
    assert run("import", copy, os.devnull).returncode == 0
    run("import", copy, write_lines(os.path.join(str(tmp_path), "orig.jsonl"), exported(small)))
    out = run("import", copy, dump, "--merge")
    assert out.returncode == 1 and "is used by a different event" in out.stderr


def test_read_jsonl_output_imports_its_json_payloads(small: str, tmp_path: object) -> None:
    src = os.path.join(str(tmp_path), "json.evs")
    with evstore.open(src) as s:
        s.append("j", [NewEvent("T", b'{"a":[1,2]}', metadata=b'{"m":"x"}'), NewEvent("T", b"")])
    out = run("read", src, "j", "--format", "jsonl")
    dump = os.path.join(str(tmp_path), "read.jsonl")
    open(dump, "w").write(out.stdout)
    target = os.path.join(str(tmp_path), "t.evs")
    out = run("import", target, dump)
    assert out.returncode == 0, out.stderr
    with evstore.open(target, readonly=True) as s:
        got = s.read_stream("j")
        assert [(e.data, e.metadata) for e in got] == [(b'{"a":[1,2]}', b'{"m":"x"}'), (b"", b"")]


@pytest.mark.parametrize("shadow", ["two snapshots at one version", "a snapshot then a soft delete",
                                    "a snapshot then a tombstone"])
def test_a_repeated_merge_adds_no_snapshot_the_target_does_not_serve(tmp_path: object, shadow: str) -> None:
    """A repeated merge wrote again every snapshot the target does not serve (replaced at its version,
    at or below a soft delete), and refused the file when the stream was tombstoned after it."""
    import io

    from evstore import tools

    src = os.path.join(str(tmp_path), "src.evs")
    with evstore.open(src) as s:
        s.append("a", [NewEvent("A", b"1")])
        s.save_snapshot("a", 1, b"x", type="S")
        if shadow == "two snapshots at one version":
            s.save_snapshot("a", 1, b"y", type="S")
        elif shadow == "a snapshot then a soft delete":
            s.delete_stream("a")
        else:
            s.delete_stream("a", tombstone=True)
    dump = io.StringIO()
    tools.export_records(src, dump)
    copy = os.path.join(str(tmp_path), "copy.evs")
    tools.import_file(copy, io.StringIO(dump.getvalue()))
    before = io.StringIO()
    tools.export_records(copy, before)
    again = tools.import_file(copy, io.StringIO(dump.getvalue()), merge=True)
    after = io.StringIO()
    tools.export_records(copy, after)
    assert (again.events, again.records, again.commits) == (0, 0, 0)
    assert after.getvalue() == before.getvalue() == dump.getvalue()
