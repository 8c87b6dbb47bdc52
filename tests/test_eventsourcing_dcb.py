"""The eventsourcing library's DCB recorder case (eventsourcing.dcb.tests: `DCBRecorderTestCase` in 9.5,
`DcbRecorderTestCase` in 10), run on evstore, the DCB factory's discovery through PERSISTENCE_MODULE,
and what evstore adds: tags and conditions served by its indexes after a reopen, and (10) each event's
uuid and metadata kept exactly, also when the same event is appended twice."""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.dcb import tests as lib_dcb
from eventsourcing.persistence import InfrastructureFactory

from es_helpers import TempStoreMixin

from evstore.eventsourcing import EvstoreDCBFactory, EvstoreDCBRecorder, EvstoreFactory
from evstore.eventsourcing.compat import (
    ES10,
    NIL_UUID,
    DcbAppendCondition,
    DcbInfrastructureFactory,
    DcbQuery,
    DcbQueryItem,
    IntegrityError,
    dcb_event,
)

LibraryCase: Any = lib_dcb.DcbRecorderTestCase if ES10 else lib_dcb.DCBRecorderTestCase  # type: ignore[attr-defined]


class TestDcbRecorder(TempStoreMixin, LibraryCase):  # type: ignore[misc]
    def recorder(self, name: str = "DCBApp") -> EvstoreDCBRecorder:
        f = DcbInfrastructureFactory.construct(self.es_env(name))
        self.factories.append(f)
        self.assertIsInstance(f, EvstoreDCBFactory)
        r = f.dcb_recorder()
        assert isinstance(r, EvstoreDCBRecorder)
        return r

    def test_append_read(self) -> None:
        self._test_append_read(self.recorder())

    def test_append_subscribe(self) -> None:
        self._test_append_subscribe(self.recorder())

    def test_append_read_after_reopen(self) -> None:
        """Tags and conditions work on a reopened store (the tag index is evstore's, in LMDB)."""
        r = self.recorder()
        r.append([dcb_event("t1", b"a", ["x", "y"], None, None), dcb_event("t2", b"b", ["y"], None, None)])
        for f in self.factories:
            f.close()
        self.factories.clear()
        r = self.recorder()
        self.assertEqual([e.position for e in r.read(DcbQuery([DcbQueryItem(tags=["y"])]))], [1, 2])
        cond = DcbAppendCondition(DcbQuery([DcbQueryItem(types=["t1"], tags=["x"])]), after=0)
        with self.assertRaises(IntegrityError):
            r.append([dcb_event("t3", b"c", ["x"], None, None)], cond)
        self.assertEqual(r.append([dcb_event("t3", b"c", ["x"], None, None)],
                                  DcbAppendCondition(cond.fail_if_events_match, after=1)), 3)

    def test_uuid_and_metadata_are_kept_exactly(self) -> None:
        """The same event (one uuid) appended twice is kept twice: its uuid is not evstore's
        idempotency id. Under 9.5 DCB events have neither part."""
        r = self.recorder()
        u = uuid.uuid4()
        e = dcb_event("t", b"d", ["a"], u, {"correlation_id": "c", "": "", "k": "v" * 100})
        self.assertEqual([r.append([e]), r.append([e]), r.append([e, e])], [1, 2, 4])
        got = [s.event for s in r.read()]
        self.assertEqual(got, [e] * 4)
        plain = dcb_event("t", b"d", [], None, None)
        r.append([plain])
        last = list(r.read(after=4))[0].event
        self.assertEqual(last, plain)
        if ES10:
            self.assertEqual((last.uuid, last.metadata), (NIL_UUID, {}))
            self.assertEqual((got[0].uuid, got[0].metadata), (u, e.metadata))

    def test_factories_are_found(self) -> None:
        f1 = InfrastructureFactory.construct(self.es_env("A"))
        f2 = DcbInfrastructureFactory.construct(self.es_env("B"))
        self.factories += [f1, f2]
        self.assertIsInstance(f1, EvstoreFactory)
        self.assertIsInstance(f2, EvstoreDCBFactory)
