"""Upcasting: chains of schema steps applied on every read path; the stored bytes never change."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

import evstore
from evstore import NewEvent


def v1_to_v2(e: evstore.RecordedEvent) -> tuple[str, bytes, bytes]:
    d = json.loads(e.data)
    return "Placed", json.dumps({"amount": d["amt"], "currency": "EUR"}).encode(), e.metadata


def v2_to_v3(e: evstore.RecordedEvent) -> tuple[str, bytes, bytes]:
    d = json.loads(e.data)
    d["amount_cents"] = d.pop("amount") * 100
    return "OrderPlaced", json.dumps(d).encode(), e.metadata + b"+v3"


def seed(store: evstore.EventStore) -> None:
    store.append("o-1", [NewEvent("Placed", b'{"amt": 3}', b"m", schema=1),
                         NewEvent("Placed", b'{"amount": 4, "currency": "USD"}', schema=2),
                         NewEvent("Other", b"x", schema=1)])


def test_no_upcaster_changes_nothing(store: evstore.EventStore) -> None:
    seed(store)
    assert store._up is None
    assert [e.schema for e in store.read_stream("o-1")] == [1, 2, 1]


def test_chains_apply_on_every_read_path(store: evstore.EventStore) -> None:
    seed(store)
    raw_before = [e.raw() for e in store.read_stream("o-1")]
    originals = store.read_stream("o-1")
    store.register_upcaster("Placed", 1, v1_to_v2)
    store.register_upcaster("Placed", 2, v2_to_v3)
    want = [("OrderPlaced", 3, {"amount_cents": 300, "currency": "EUR"}, b"m+v3"),
            ("OrderPlaced", 3, {"amount_cents": 400, "currency": "USD"}, b"+v3")]
    got = store.read_stream("o-1")
    assert [(e.type, e.schema, json.loads(e.data), e.metadata) for e in got[:2]] == want
    assert got[2] is not None and (got[2].type, got[2].schema, got[2].data) == ("Other", 1, b"x")
    for a, b in zip(got, originals):
        assert (a.stream, a.version, a.position, a.id, a.recorded_at) == (b.stream, b.version, b.position, b.id,
                                                                          b.recorded_at)
    assert [e.type for e in store.read_all()] == ["OrderPlaced", "OrderPlaced", "Other"]
    assert [e.type for e in store.read_all(types=["Placed"])] == ["OrderPlaced", "OrderPlaced"]
    assert store.event_at(1).type == "OrderPlaced"  # type: ignore[union-attr]
    with store.subscribe(timeout=0.2) as sub:
        assert [e.type for e in sub] == ["OrderPlaced", "OrderPlaced", "Other"]
    loaded = store.load("o-1", apply=lambda s, e: s + [(e.type, e.schema)], initial=[])
    assert loaded.state[:2] == [("OrderPlaced", 3)] * 2
    # the stored bytes never change; another handle without upcasters sees them as written
    assert [e.raw() for e in originals] == raw_before
    with evstore.open(store.path) as other:
        assert other is not store
        assert [e.schema for e in other.read_stream("o-1")] == [1, 2, 1]
        assert [e.schema for e in store.read_stream("o-1")] == [3, 3, 1]


def test_upcast_records_are_immutable_comparable_and_pickle(store: evstore.EventStore) -> None:
    seed(store)
    store.register_upcaster("Placed", 1, v1_to_v2)
    e = store.read_stream("o-1")[0]
    assert isinstance(e, evstore.RecordedEvent) and e.schema == 2
    assert e == store.read_stream("o-1")[0] and hash(e) == hash(store.read_stream("o-1")[0])
    p = pickle.loads(pickle.dumps(e))
    assert p == e and (p.stream, p.type, p.schema, p.data) == (e.stream, e.type, e.schema, e.data)
    assert copy.deepcopy(e) is e
    with pytest.raises((AttributeError, TypeError)):
        e.type = "x"  # type: ignore[misc]


def test_gaps_and_duplicates_are_refused(store: evstore.EventStore) -> None:
    store.register_upcaster("T", 1, v1_to_v2)
    with pytest.raises(evstore.InvalidUpcaster) as ei:
        store.register_upcaster("T", 3, v1_to_v2)
    assert ei.value.registered == (1,) and ei.value.from_schema == 3 and isinstance(ei.value, ValueError)
    with pytest.raises(evstore.InvalidUpcaster):
        store.register_upcaster("T", 1, v1_to_v2)
    store.register_upcaster("T", 2, v1_to_v2)
    store.register_upcaster("T", 0, v1_to_v2)  # extends the chain downwards: still contiguous
    store.register_upcaster("U", 5, v1_to_v2)  # another type has its own chain
    with pytest.raises(ValueError):
        store.register_upcaster("T", -1, v1_to_v2)
    with pytest.raises(TypeError):
        store.register_upcaster("T", 3, "nope")  # type: ignore[arg-type]


def test_bad_upcaster_output_is_reported(store: evstore.EventStore) -> None:
    seed(store)
    store.register_upcaster("Other", 1, lambda e: ("Other", "text", b""))  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError):
        store.read_stream("o-1")


def test_snapshots_and_upcasting_together(store: evstore.EventStore) -> None:
    seed(store)
    store.save_snapshot("o-1", 1, b"[]", type="S")
    store.register_upcaster("Placed", 1, v1_to_v2)
    loaded = store.load("o-1", apply=lambda s, e: s + [(e.type, e.schema)], initial=None,
                        decode_snapshot=lambda s: ["snap"])
    assert loaded == evstore.Loaded(["snap", ("Placed", 2), ("Other", 1)], 3)
