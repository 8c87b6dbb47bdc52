"""The event metadata layout (evstore.eventsourcing.meta): both layouts are read under whichever
eventsourcing version is installed, so stores written under 9.5 and under 10 stay readable."""

from __future__ import annotations

import uuid

import pytest

from es_helpers import TempStoreMixin

from evstore.eventsourcing import meta
from evstore.eventsourcing.compat import EVENT_EXTRAS, NIL_UUID, StoredEvent
from evstore.records import NewEvent


def test_layout_0_is_the_bare_version() -> None:
    assert meta.encode(7) == (7).to_bytes(8, "little", signed=True)
    assert meta.encode(-1, NIL_UUID, {}) == b"\xff" * 8
    assert meta.encode(None) == b""
    assert meta.decode_extras(meta.encode(7), 0, 8) == (NIL_UUID, {})
    assert meta.version_offset(meta.encode(7), 0, 8) == 0


@pytest.mark.parametrize("version", [None, 0, 5, -3])
@pytest.mark.parametrize("event_uuid", [None, uuid.UUID(int=1), uuid.uuid4()])
@pytest.mark.parametrize("md", [{}, {"correlation_id": "x"}, {"": "", "ключ": "значение", "a": "b" * 300}])
def test_layout_1_round_trips(version: int | None, event_uuid: uuid.UUID | None, md: dict[str, str]) -> None:
    b = meta.encode(version, event_uuid, md)
    if event_uuid is None and not md:
        return  # layout 0
    assert b[0] == meta.LAYOUT and len(b) != 8
    pad = b"\x00" * 3 + b
    assert meta.decode_extras(pad, 3, len(b)) == (event_uuid or NIL_UUID, md)
    at = meta.version_offset(pad, 3, len(b))
    if version is None:
        assert at is None
    else:
        assert at == 2 and int.from_bytes(b[2:10], "little", signed=True) == version


def test_unknown_layouts_are_refused() -> None:
    b = bytearray(meta.encode(1, uuid.uuid4()))
    b[1] |= 0x80
    assert meta.version_offset(b, 0, len(b)) is None
    with pytest.raises(ValueError):
        meta.decode_extras(bytes(b), 0, len(b))
    with pytest.raises(ValueError):
        meta.decode_extras(meta.encode(1, uuid.uuid4()) + b"\x00", 0, 27)
    with pytest.raises(TypeError):
        meta.encode(1, None, {"a": 1})  # type: ignore[dict-item]


class TestBothLayoutsRead(TempStoreMixin):
    def test_records_of_either_layout(self) -> None:
        rec = self.es_factory().application_recorder()
        store = rec.store  # type: ignore[attr-defined]
        oid = uuid.uuid4()
        u = uuid.uuid4()
        store.append(oid, [NewEvent("t0", b"s0", meta.encode(1)),
                           NewEvent("t1", b"s1", meta.encode(2, u, {"k": "v"}))])
        key = str(oid) if EVENT_EXTRAS else oid
        events = rec.select_events(key)
        assert [(e.originator_id, e.originator_version, e.topic, e.state) for e in events] == \
            [(key, 1, "t0", b"s0"), (key, 2, "t1", b"s1")]
        assert [e.originator_version for e in rec.select_events(key, gt=1)] == [2]
        notes = rec.select_notifications(1, 10)
        assert [(n.id, n.originator_id, n.originator_version) for n in notes] == [(1, key, 1), (2, key, 2)]
        if EVENT_EXTRAS:
            assert [(e.uuid, e.metadata) for e in [*events, *notes]] == [(NIL_UUID, {}), (u, {"k": "v"})] * 2
            ev = StoredEvent(originator_id=key, originator_version=3, topic="t2", state=b"s2",  # type: ignore[call-arg,unused-ignore]
                             uuid=u, metadata={"a": "b"})
            rec.insert_events([ev])
            last = store.read_stream(oid, gt=2)[0]
            assert last.metadata == meta.encode(3, u, {"a": "b"})
            assert rec.select_events(key, gt=2) == [ev]
