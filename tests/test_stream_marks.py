"""Built-in stream states: close, soft delete and tombstone — in the log, through crashes and rebuilds."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

import evstore
from tests.conftest import PY, python_env
from tests.support import ev, log_bytes


def test_closed_stream_is_readable_but_takes_no_appends(store: evstore.EventStore) -> None:
    store.append("a-1", [ev(), ev()])
    store.close_stream("a-1")
    assert [e.version for e in store.read_stream("a-1")] == [1, 2]
    before = log_bytes(store.path)
    with pytest.raises(evstore.StreamClosed) as ei:
        store.append("a-1", [ev()])
    assert ei.value.stream == "a-1"
    with pytest.raises(evstore.StreamClosed):
        store.append_many([("b-1", [ev()], evstore.ANY), ("a-1", [ev()], evstore.ANY)])
    assert log_bytes(store.path) == before and store.stream_version("b-1") == 0
    store.close_stream("a-1")  # idempotent, writes nothing
    assert log_bytes(store.path) == before
    info = store.stream_info("a-1")
    assert info is not None and info.closed and not info.deleted and info.version == 2


def test_a_new_stream_can_be_closed(store: evstore.EventStore) -> None:
    u = uuid.uuid4()
    store.close_stream(u)
    with pytest.raises(evstore.StreamClosed):
        store.append(u, [ev()])
    assert store.read_stream(u) == [] and store.stream_version(u) == 0


def test_soft_delete_hides_events_and_appends_continue(store: evstore.EventStore) -> None:
    store.append("a-1", [ev("A"), ev("B")])
    store.append("z-1", [ev()])
    store.delete_stream("a-1")
    assert store.read_stream("a-1") == [] and store.stream_version("a-1") == 2
    info = store.stream_info("a-1")
    assert info is not None and info.deleted and not info.tombstoned
    assert [e.type for e in store.read_all()] == ["A", "B", "Happened"]
    with pytest.raises(evstore.WrongExpectedVersion):
        store.append("a-1", [ev("C")], expected_version=evstore.NO_STREAM)
    r = store.append("a-1", [ev("C")], expected_version=2)
    assert (r.first_version, r.last_version) == (3, 3)
    assert [(e.version, e.type) for e in store.read_stream("a-1")] == [(3, "C")]
    assert [e.version for e in store.read_stream("a-1", desc=True, gt=0)] == [3]
    info = store.stream_info("a-1")  # appended to again: events are visible, so no longer deleted
    assert info is not None and not info.deleted and not info.tombstoned
    before = log_bytes(store.path)
    store.delete_stream("nothing-here")  # nothing to hide: nothing written
    assert log_bytes(store.path) == before


def test_tombstone_forbids_reads_and_appends_for_ever(store: evstore.EventStore) -> None:
    store.append("a-1", [ev()])
    store.delete_stream("a-1", tombstone=True)
    for op in (lambda: store.read_stream("a-1"), lambda: store.append("a-1", [ev()]),
               lambda: store.close_stream("a-1"), lambda: store.delete_stream("a-1"),
               lambda: store.delete_stream("a-1", tombstone=True), lambda: store.load_snapshot("a-1"),
               lambda: store.save_snapshot("a-1", 1, b"", type="T")):
        with pytest.raises(evstore.StreamDeleted) as ei:
            op()
        assert ei.value.stream == "a-1"
    assert store.stream_version("a-1") == 1
    assert len(list(store.read_all())) == 1
    store.delete_stream("never-used", tombstone=True)  # reserves the name
    with pytest.raises(evstore.StreamDeleted):
        store.append("never-used", [ev()])


_MARKS = """
import os, sys, evstore
s = evstore.open(sys.argv[1], log_impl=sys.argv[2])
s.append("c-1", [evstore.NewEvent("A", b"")])
s.append("d-1", [evstore.NewEvent("A", b""), evstore.NewEvent("B", b"")])
s.append("t-1", [evstore.NewEvent("A", b"")])
s.save_snapshot("d-1", 2, b"snap", type="S")
s.close_stream("c-1")
s.delete_stream("d-1")
s.delete_stream("t-1", tombstone=True)
print("done", flush=True)
os._exit(0)  # no close: the index is never synced
"""


def _check_marks(path: str, impl: str) -> None:
    with evstore.open(path, log_impl=impl) as s:
        with pytest.raises(evstore.StreamClosed):
            s.append("c-1", [ev()])
        assert len(s.read_stream("c-1")) == 1
        assert s.read_stream("d-1") == [] and s.stream_version("d-1") == 2
        with pytest.raises(evstore.StreamDeleted):
            s.read_stream("t-1")
        with pytest.raises(evstore.StreamDeleted):
            s.append("t-1", [ev()])
        assert len(list(s.read_all())) == 4
        # a snapshot at or below the delete watermark is not served; the index entry exists
        assert s.load_snapshot("d-1") is None


def test_marks_survive_a_crash_and_a_rebuild_of_the_index(store_path: str, impl: str) -> None:
    out = subprocess.run([PY, "-c", _MARKS, store_path, impl], env=python_env(), capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "done", out.stderr
    _check_marks(store_path, impl)
    shutil.rmtree(os.path.join(store_path, "index"))
    _check_marks(store_path, impl)
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("d-1", [ev("C")], expected_version=2)
        assert [e.type for e in s.read_stream("d-1")] == ["C"]


def test_marks_on_a_readonly_handle_are_refused(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as w:
        w.append("a-1", [ev()])
        w.close_stream("a-1")
        import subprocess as sp
        code = (
            "import sys, evstore\n"
            "s = evstore.open(sys.argv[1], readonly=True)\n"
            "try:\n    s.close_stream('a-1')\nexcept evstore.ReadOnlyStore:\n    print('refused')\n"
            "print(s.stream_info('a-1').closed)\n"
        )
        out = sp.run([PY, "-c", code, store_path], env=python_env(), capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["refused", "True"], out.stderr
