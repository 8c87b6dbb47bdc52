"""The eventsourcing library's application and projection test cases, run on evstore
(PERSISTENCE_MODULE=evstore.eventsourcing, a temp EVSTORE_PATH per test)."""

from __future__ import annotations

import pytest

from evstore.eventsourcing.compat import ES10

if ES10:
    pytest.skip("eventsourcing 10 is installed: its cases are tests/test_es10_application.py", allow_module_level=True)

from eventsourcing.tests import application as lib_app
from eventsourcing.tests import projection as lib_proj

from es_helpers import MODULE, EvstoreEventCountersView, TempStoreMixin


class TestApplication(TempStoreMixin, lib_app.ApplicationTestCase):
    pass


class TestExampleApplication(TempStoreMixin, lib_app.ExampleApplicationTestCase):
    expected_factory_topic = "evstore.eventsourcing.factory:EvstoreFactory"


class TestEventCountersView(TempStoreMixin, lib_proj.EventCountersViewTestCase):
    def construct_event_counters_view(self) -> EvstoreEventCountersView:
        view = self.es_factory("EventCounters").tracking_recorder(EvstoreEventCountersView)
        assert isinstance(view, EvstoreEventCountersView)
        return view


class ProjectionEnv(TempStoreMixin):
    def prepare(self) -> None:
        self.env = {"PERSISTENCE_MODULE": MODULE, "EVSTORE_PATH": self.evstore_root, "EVSTORE_DURABILITY": "os"}


class TestAggregateEventCountersProjection(ProjectionEnv, lib_proj.AggregateEventCountersProjectionTestCase):
    view_class = EvstoreEventCountersView


class TestTaggedDecisionCountersProjection(ProjectionEnv, lib_proj.TaggedDecisionCountersProjectionTestCase):
    view_class = EvstoreEventCountersView

    def prepare(self) -> None:
        super().prepare()
        self.env["MAPPER_TOPIC"] = "eventsourcing.dcb.msgpack:MessagePackMapper"


class TestEventSourcedProjection(ProjectionEnv, lib_proj.EventSourcedProjectionTestCase):
    pass
