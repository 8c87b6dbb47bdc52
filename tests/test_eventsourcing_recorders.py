"""The eventsourcing library's reusable recorder and factory test cases, run on evstore.

Each case runs with UUID and with str originator ids (and with versions from 0 and from 1)."""

from __future__ import annotations

import pytest

from evstore.eventsourcing.compat import ES10

if ES10:
    pytest.skip("eventsourcing 10 is installed: its cases are tests/test_es10_recorders.py", allow_module_level=True)

from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.tests import persistence as lib

from es_helpers import TempStoreMixin

from evstore.eventsourcing import (
    EvstoreAggregateRecorder,
    EvstoreApplicationRecorder,
    EvstoreFactory,
    EvstoreProcessRecorder,
    EvstoreTrackingRecorder,
)


class StrIds:
    """Mixin: str originator ids, versions from 0."""

    INITIAL_VERSION = 0

    def new_originator_id(self) -> UUID | str:
        return "aggregate-" + str(uuid4())


# -- aggregate recorder (events and snapshots) ----------------------------------------------


class TestAggregateRecorder(TempStoreMixin, lib.AggregateRecorderTestCase):
    purpose = "events"

    def create_recorder(self) -> AggregateRecorder:
        recorder = self.es_factory().aggregate_recorder(self.purpose)
        assert isinstance(recorder, EvstoreAggregateRecorder)
        return recorder


class TestAggregateRecorderStrIds(StrIds, TestAggregateRecorder):
    pass


class TestSnapshotRecorder(TestAggregateRecorder):
    purpose = "snapshots"


class TestSnapshotRecorderStrIds(StrIds, TestSnapshotRecorder):
    pass


# -- application recorder -------------------------------------------------------------------


class TestApplicationRecorder(TempStoreMixin, lib.ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        recorder = self.es_factory().application_recorder()
        assert isinstance(recorder, EvstoreApplicationRecorder)
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestApplicationRecorderStrIds(StrIds, TestApplicationRecorder):
    pass


# -- tracking and process recorders ---------------------------------------------------------


class TestTrackingRecorder(TempStoreMixin, lib.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        recorder = self.es_factory().tracking_recorder()
        assert isinstance(recorder, EvstoreTrackingRecorder)
        return recorder


class TestProcessRecorder(TempStoreMixin, lib.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        recorder = self.es_factory().process_recorder()
        assert isinstance(recorder, EvstoreProcessRecorder)
        return recorder


class TestProcessRecorderStrIds(StrIds, TestProcessRecorder):
    pass


class TestProcessRecorderAsApplicationRecorder(TempStoreMixin, lib.ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.es_factory().process_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


# -- notification ids -----------------------------------------------------------------------


class TestNonInterleavingNotificationIDs(TempStoreMixin, lib.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.es_factory().application_recorder()


class TestNonInterleavingNotificationIDsStrIds(StrIds, TestNonInterleavingNotificationIDs):
    pass


# -- factory ----------------------------------------------------------------------------------


class TrackingRecorderSubclass(EvstoreTrackingRecorder):
    pass


class TestFactory(TempStoreMixin, lib.InfrastructureFactoryTestCase[EvstoreFactory]):
    def prepare(self) -> None:
        self.env = self.es_env("TestCase")

    def expected_factory_class(self) -> type[EvstoreFactory]:
        return EvstoreFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return EvstoreAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return EvstoreApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return EvstoreTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return EvstoreProcessRecorder

    def test_construct_from_module_topic(self) -> None:
        f: Any = InfrastructureFactory.construct(self.es_env("Other"))
        try:
            self.assertIsInstance(f, EvstoreFactory)
        finally:
            f.close()
