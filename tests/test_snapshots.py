"""Snapshots: save, load, schema mismatch, pruning, survival of a rebuild, and `load` with snapshot_every."""

from __future__ import annotations

import os
import shutil

import pytest

import evstore
from evstore import NewEvent


def add(n: int) -> list[NewEvent]:
    return [NewEvent("Added", str(i).encode()) for i in range(n)]


def fold(state: int, e: evstore.RecordedEvent) -> int:
    return state + int(e.data)


def enc(state: int) -> bytes:
    return str(state).encode()


def dec(s: evstore.Snapshot) -> int:
    return int(s.data)


def test_save_and_load_snapshots(store: evstore.EventStore) -> None:
    assert store.load_snapshot("a-1") is None
    store.append("a-1", add(10))
    assert store.load_snapshot("a-1") is None
    store.save_snapshot("a-1", 4, b"six", type="Sum", schema=2)
    store.save_snapshot("a-1", 8, b"28", type="Sum")
    s = store.load_snapshot("a-1")
    assert s is not None and (s.stream, s.version, s.type, s.data, s.schema) == ("a-1", 8, "Sum", b"28", 1)
    assert s.recorded_at.tzinfo is not None
    s4 = store.load_snapshot("a-1", lte=7)
    assert s4 is not None and (s4.version, s4.data, s4.schema) == (4, b"six", 2)
    assert store.load_snapshot("a-1", lte=3) is None
    with pytest.raises(AttributeError):
        s.version = 3  # type: ignore[misc]


def test_snapshot_version_must_exist(store: evstore.EventStore) -> None:
    with pytest.raises(ValueError):
        store.save_snapshot("a-1", 1, b"", type="S")
    store.append("a-1", add(2))
    before = store.head()
    for bad in (0, 3):
        with pytest.raises(ValueError):
            store.save_snapshot("a-1", bad, b"", type="S")
    with pytest.raises(TypeError):
        store.save_snapshot("a-1", 1, "text", type="S")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.save_snapshot("a-1", 1, b"", type="S", schema=-1)
    assert store.head() == before


def test_load_folds_from_the_latest_snapshot_of_its_schema(store: evstore.EventStore) -> None:
    store.append("a-1", add(10))  # 0..9: sum 45
    assert store.load("a-1", apply=fold, initial=0) == evstore.Loaded(45, 10)
    store.save_snapshot("a-1", 5, b"1000", type="Sum", schema=1)  # a deliberately "wrong" state
    store.save_snapshot("a-1", 7, b"bogus", type="Sum", schema=2)  # another schema: ignored
    loaded = store.load("a-1", apply=fold, initial=0, decode_snapshot=dec, schema=1)
    assert loaded == evstore.Loaded(1000 + 5 + 6 + 7 + 8 + 9, 10)
    assert store.load("a-1", apply=fold, initial=0) == evstore.Loaded(45, 10)  # no decoder: no snapshot
    assert store.load("a-1", apply=fold, initial=0, decode_snapshot=dec, schema=3) == evstore.Loaded(45, 10)
    assert store.load("nope-1", apply=fold, initial=7) == evstore.Loaded(7, 0)
    r = store.append("a-1", add(1), expected_version=loaded.version)
    assert r.last_version == 11


def test_load_writes_snapshots_every_n_events(store: evstore.EventStore) -> None:
    store.append("a-1", add(10))
    kw = dict(apply=fold, initial=0, decode_snapshot=dec, encode_snapshot=enc, snapshot_every=5)
    assert store.load("a-1", **kw) == evstore.Loaded(45, 10)  # type: ignore[arg-type]
    s = store.load_snapshot("a-1")
    assert s is not None and (s.version, s.data, s.type) == (10, b"45", "snapshot")
    store.append("a-1", add(3))  # 0 + 1 + 2
    assert store.load("a-1", **kw) == evstore.Loaded(48, 13)  # type: ignore[arg-type]
    assert store.load_snapshot("a-1").version == 10  # type: ignore[union-attr]  # only 3 replayed
    with pytest.raises(ValueError):
        store.load("a-1", apply=fold, initial=0, snapshot_every=5)


def test_snapshots_below_a_soft_delete_are_ignored(store: evstore.EventStore) -> None:
    store.append("a-1", add(3))
    store.save_snapshot("a-1", 3, b"999", type="Sum")
    store.delete_stream("a-1")
    assert store.load_snapshot("a-1") is None
    with pytest.raises(ValueError, match="visible version"):
        store.save_snapshot("a-1", 3, b"never loadable", type="S")  # at the delete watermark
    store.append("a-1", [NewEvent("Added", b"5")])
    assert store.load("a-1", apply=fold, initial=0, decode_snapshot=dec) == evstore.Loaded(5, 4)


def test_pruning_keeps_the_newest_and_loses_no_data(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("a-1", add(10))
        s.append("b-1", add(4))
        for v in (2, 4, 6):
            s.save_snapshot("a-1", v, enc(v), type="Sum")
        s.save_snapshot("b-1", 1, b"0", type="Sum")
        s.save_snapshot("b-1", 3, b"3", type="Sum")
        assert s.prune_snapshots("a-1", keep=2) == 1
        assert s.load_snapshot("a-1", lte=3) is None and s.load_snapshot("a-1").version == 6  # type: ignore
        assert s.prune_snapshots(keep=1) == 2
        assert s.load_snapshot("b-1", lte=2) is None and s.load_snapshot("b-1").version == 3  # type: ignore
        assert s.prune_snapshots("zzz", keep=0) == 0
        assert s.prune_snapshots(keep=0) == 2
        assert s.load_snapshot("a-1") is None
        assert s.load("a-1", apply=fold, initial=0, decode_snapshot=dec) == evstore.Loaded(45, 10)
    # a rebuild from the log brings every snapshot back (the log keeps their bytes)
    shutil.rmtree(os.path.join(store_path, "index"))
    with evstore.open(store_path, log_impl=impl) as s:
        assert s.load_snapshot("a-1", lte=3).version == 2  # type: ignore[union-attr]
        assert s.load_snapshot("b-1").data == b"3"  # type: ignore[union-attr]


def test_snapshots_survive_reopen_and_rebuild(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("a-1", add(5))
        s.save_snapshot("a-1", 5, b"10", type="Sum", schema=4)
    for _ in range(2):
        with evstore.open(store_path, log_impl=impl) as s:
            snap = s.load_snapshot("a-1")
            assert snap is not None and (snap.version, snap.data, snap.schema) == (5, b"10", 4)
            assert s.load("a-1", apply=fold, initial=0, decode_snapshot=dec, schema=4) == evstore.Loaded(10, 5)
        shutil.rmtree(os.path.join(store_path, "index"))


def test_snapshots_are_not_events(store: evstore.EventStore) -> None:
    store.append("a-1", add(2))
    store.save_snapshot("a-1", 2, b"1", type="Sum")
    assert store.head() == 2 and len(list(store.read_all())) == 2 and len(store.read_stream("a-1")) == 2
    assert store.stream_version("a-1") == 2
