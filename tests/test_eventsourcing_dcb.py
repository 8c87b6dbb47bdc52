"""The eventsourcing library's DCB recorder case (eventsourcing.dcb.tests), run on evstore, and the
DCB factory's discovery through PERSISTENCE_MODULE."""

from __future__ import annotations

from eventsourcing.dcb import tests as lib_dcb
from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem
from eventsourcing.dcb.persistence import DCBInfrastructureFactory
from eventsourcing.persistence import InfrastructureFactory, IntegrityError

from es_helpers import TempStoreMixin

from evstore.eventsourcing import EvstoreDCBFactory, EvstoreDCBRecorder, EvstoreFactory


class TestDCBRecorder(TempStoreMixin, lib_dcb.DCBRecorderTestCase):
    def recorder(self, name: str = "DCBApp") -> EvstoreDCBRecorder:
        f = DCBInfrastructureFactory.construct(self.es_env(name))
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
        r.append([DCBEvent("t1", b"a", ["x", "y"]), DCBEvent("t2", b"b", ["y"])])
        for f in self.factories:
            f.close()
        self.factories.clear()
        r = self.recorder()
        self.assertEqual([e.position for e in r.read(DCBQuery([DCBQueryItem(tags=["y"])]))], [1, 2])
        cond = DCBAppendCondition(DCBQuery([DCBQueryItem(types=["t1"], tags=["x"])]), after=0)
        with self.assertRaises(IntegrityError):
            r.append([DCBEvent("t3", b"c", ["x"])], cond)
        self.assertEqual(r.append([DCBEvent("t3", b"c", ["x"])], DCBAppendCondition(cond.fail_if_events_match, after=1)), 3)

    def test_factories_are_found(self) -> None:
        f1 = InfrastructureFactory.construct(self.es_env("A"))
        f2 = DCBInfrastructureFactory.construct(self.es_env("B"))
        self.factories += [f1, f2]
        self.assertIsInstance(f1, EvstoreFactory)
        self.assertIsInstance(f2, EvstoreDCBFactory)
