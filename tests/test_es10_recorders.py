"""eventsourcing 10's reusable recorder and factory test cases, run on evstore (the 9.5 cases are
tests/test_eventsourcing_recorders.py; the DCB recorder case, under either version, is
tests/test_eventsourcing_dcb.py). Skipped, as a whole, unless eventsourcing 10 is installed.

Each recorder case runs with UUID-string ids (UUID streams) and with other str ids (str streams), and
with versions from 1 and from 0."""

from __future__ import annotations

from uuid import uuid4

import pytest

from evstore.eventsourcing.compat import ES10

if not ES10:
    pytest.skip("eventsourcing 10 is not installed (the eventsourcing 9.5 cases are tests/test_eventsourcing_*.py)",
                allow_module_level=True)

from eventsourcing.persistence import (  # noqa: E402
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.tests import persistence as lib  # noqa: E402

from es_helpers import TempStoreMixin  # noqa: E402

from evstore.eventsourcing import (  # noqa: E402
    EvstoreAggregateRecorder,
    EvstoreApplicationRecorder,
    EvstoreFactory,
    EvstoreProcessRecorder,
    EvstoreTrackingRecorder,
)


class StrIds:
    """Mixin: str originator ids that are not UUID strings, versions from 0."""

    INITIAL_VERSION = 0

    def new_originator_id(self) -> str:
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


class TestApplicationRecorder(TempStoreMixin, lib.ApplicationRecorderTestCase[EvstoreApplicationRecorder]):
    def create_recorder(self) -> EvstoreApplicationRecorder:
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


class TestProcessRecorderAsApplicationRecorder(TempStoreMixin,
                                               lib.ApplicationRecorderTestCase[EvstoreApplicationRecorder]):
    def create_recorder(self) -> EvstoreApplicationRecorder:
        recorder = self.es_factory().process_recorder()
        assert isinstance(recorder, EvstoreProcessRecorder)
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


# -- notification ids -----------------------------------------------------------------------


class TestNonInterleavingNotificationIDs(TempStoreMixin, lib.NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.es_factory().application_recorder()


class TestNonInterleavingNotificationIDsStrIds(StrIds, TestNonInterleavingNotificationIDs):
    pass


# -- factory ----------------------------------------------------------------------------------


class ApplicationRecorderSubclass(EvstoreApplicationRecorder):
    pass


class TrackingRecorderSubclass(EvstoreTrackingRecorder):
    pass


class ProcessRecorderSubclass(EvstoreProcessRecorder):
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

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return EvstoreProcessRecorder

    def application_recorder_subclass(self) -> type[ApplicationRecorder]:
        return ApplicationRecorderSubclass

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return TrackingRecorderSubclass

    def process_recorder_subclass(self) -> type[ProcessRecorder]:
        return ProcessRecorderSubclass

    def test_construct_from_module_topic(self) -> None:
        f = InfrastructureFactory.construct(self.es_env("Other"))
        try:
            self.assertIsInstance(f, EvstoreFactory)
        finally:
            f.close()
