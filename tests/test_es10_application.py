"""eventsourcing 10's application and projection test cases, run on evstore
(PERSISTENCE_MODULE=evstore.eventsourcing, a temp EVSTORE_PATH per test; the 9.5 cases are
tests/test_eventsourcing_application.py). Skipped, as a whole, unless eventsourcing 10 is installed."""

from __future__ import annotations

import pytest

from evstore.eventsourcing.compat import ES10

if not ES10:
    pytest.skip("eventsourcing 10 is not installed (the eventsourcing 9.5 cases are tests/test_eventsourcing_*.py)",
                allow_module_level=True)

from eventsourcing.tests import application as lib_app  # noqa: E402
from eventsourcing.tests import projection as lib_proj  # noqa: E402

from es_helpers import MODULE, EvstoreEventCountersView, TempStoreMixin  # noqa: E402


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


class TestDecisionCountersProjection(ProjectionEnv, lib_proj.DecisionCountersProjectionTestCase):
    view_class = EvstoreEventCountersView


class TestEventSourcedProjection(ProjectionEnv, lib_proj.EventSourcedProjectionTestCase):
    pass
