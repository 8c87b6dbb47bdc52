"""Shared helpers of the evstore.eventsourcing tests: a temp EVSTORE_PATH per test, recorder
construction, and an evstore-backed materialised view for the library's projection cases."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any
from unittest import TestCase

from eventsourcing.persistence import Tracking
from eventsourcing.tests.projection import EventCountersView
from eventsourcing.utils import Environment

from evstore.eventsourcing import EvstoreTrackingRecorder
from evstore.eventsourcing.compat import tracking_name
from evstore.records import NewEvent

MODULE = "evstore.eventsourcing"


class TempStoreMixin(TestCase):
    """Gives each test its own EVSTORE_PATH (also exported to os.environ for the library cases that
    read it), removed afterwards; closes factories registered with `self.factories`."""

    def setUp(self) -> None:
        self.evstore_root = tempfile.mkdtemp(prefix="evstore-es-")
        self._saved_environ = {k: os.environ.get(k) for k in ("PERSISTENCE_MODULE", "EVSTORE_PATH",
                                                                "EVSTORE_DURABILITY")}
        os.environ["PERSISTENCE_MODULE"] = MODULE
        os.environ["EVSTORE_PATH"] = self.evstore_root
        os.environ["EVSTORE_DURABILITY"] = "os"
        self.factories: list[Any] = []
        self.prepare()
        super().setUp()

    def prepare(self) -> None:
        """Called after the temp folder exists and before the library case's setUp."""

    def tearDown(self) -> None:
        try:
            super().tearDown()
        finally:
            for f in self.factories:
                f.close()
            for k, v in self._saved_environ.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(self.evstore_root, ignore_errors=True)

    def es_env(self, name: str = "TestApp", **extra: str) -> Environment:
        env = {"PERSISTENCE_MODULE": MODULE, "EVSTORE_PATH": self.evstore_root, "EVSTORE_DURABILITY": "os"}
        env.update(extra)
        return Environment(name, env)

    def es_factory(self, name: str = "TestApp") -> Any:
        from eventsourcing.persistence import InfrastructureFactory

        f = InfrastructureFactory.construct(self.es_env(name))
        self.factories.append(f)
        return f


_CREATED = "counter-created"
_SUBSEQUENT = "counter-subsequent"


class EvstoreEventCountersView(EvstoreTrackingRecorder, EventCountersView):
    """Counts kept as the versions of two streams; each increment commits with its tracking record.
    (eventsourcing 9.5's view counts created and subsequent events, 10's registered students and
    name changes: both sets of methods are here.)"""

    def _incr(self, stream: str, tracking: Tracking) -> None:
        from eventsourcing.persistence import IntegrityError

        import evstore

        try:
            self.store.append_many([(stream, [NewEvent("Incremented", b"")], evstore.ANY)],
                                   tracking=(tracking_name(tracking), tracking.notification_id))
        except evstore.TrackingConflict as e:
            raise IntegrityError(str(e)) from e

    def get_created_event_counter(self) -> int:
        return self.store.stream_version(_CREATED)

    def get_subsequent_event_counter(self) -> int:
        return self.store.stream_version(_SUBSEQUENT)

    def incr_created_event_counter(self, tracking: Tracking) -> None:
        self._incr(_CREATED, tracking)

    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        self._incr(_SUBSEQUENT, tracking)

    get_student_registered_counter = get_created_event_counter
    get_student_name_changed_counter = get_subsequent_event_counter
    incr_student_registered_counter = incr_created_event_counter
    incr_student_name_changed_counter = incr_subsequent_event_counter
