"""End to end under eventsourcing 10: a System of two applications (Orders -> Reservations, a process
application with a process recorder) run with the library's runners on evstore, stopped and restarted
mid-way; every leader event is processed exactly once, and the metadata the library threads through
(correlation and causation ids) survives the trip through the store. The 9.5 version of this test is
tests/test_eventsourcing_system.py. Skipped, as a whole, unless eventsourcing 10 is installed."""

from __future__ import annotations

from uuid import NAMESPACE_URL, uuid4, uuid5

import pytest

from evstore.eventsourcing.compat import ES10

if not ES10:
    pytest.skip("eventsourcing 10 is not installed (the eventsourcing 9.5 case is tests/test_eventsourcing_system.py)",
                allow_module_level=True)

from eventsourcing.application import ProcessingEvent  # noqa: E402
from eventsourcing.domain import AggregateEvent, put_metadata_in_context, triggers  # noqa: E402
from eventsourcing.msgspec import Aggregate, AggregatesApplication, Decision, Transcoder  # noqa: E402
from eventsourcing.system import (  # noqa: E402
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    ProcessApplication,
    SingleThreadedRunner,
    System,
)
from eventsourcing.utils import get_topic  # noqa: E402

from es_helpers import MODULE, TempStoreMixin  # noqa: E402

from evstore.eventsourcing import EvstoreApplicationRecorder, EvstoreProcessRecorder  # noqa: E402


class Order(Aggregate):
    class Placed(Decision):
        item: str

    @triggers(Placed)
    def __init__(self, item: str) -> None:
        self.item = item


class Reservation(Aggregate):
    class Created(Decision):
        order_id: str

    @triggers(Created)
    def __init__(self, order_id: str) -> None:
        self.order_id = order_id

    @staticmethod
    def create_id(order_id: str) -> str:
        return str(uuid5(NAMESPACE_URL, f"/reservations/{order_id}"))


class Orders(AggregatesApplication):
    def place(self, item: str) -> str:
        order = Order(item)
        self.save(order)
        return order.id


class Reservations(ProcessApplication[Decision]):
    def policy(self, envelope: AggregateEvent[Decision], processing_event: ProcessingEvent[Decision]) -> None:
        if isinstance(envelope.decision, Order.Placed):
            reservation = Reservation(order_id=envelope.originator_id)
            processing_event.collect_events(reservation)


class TestSystemOnEvstore(TempStoreMixin):
    def env(self) -> dict[str, str]:
        # (the library's ProcessApplication takes its transcoder from the environment)
        return {"PERSISTENCE_MODULE": MODULE, "EVSTORE_PATH": self.evstore_root, "EVSTORE_DURABILITY": "os",
                "TRANSCODER_TOPIC": get_topic(Transcoder)}

    def check_exactly_once(self, orders: Orders, reservations: Reservations, order_ids: list[str]) -> None:
        self.assertIsInstance(orders.recorder, EvstoreApplicationRecorder)
        self.assertIsInstance(reservations.recorder, EvstoreProcessRecorder)
        self.assertEqual(reservations.recorder.max_tracking_id("Orders"), orders.recorder.max_notification_id())
        notes = reservations.recorder.select_notifications(None, 10_000)
        created = [n for n in notes if n.topic.endswith("Reservation.Created")]
        self.assertEqual(len(created), len(order_ids))
        self.assertEqual(len({n.originator_id for n in created}), len(order_ids))
        for oid in order_ids:
            r = reservations.repository.get(Reservation.create_id(oid), Reservation)
            self.assertEqual(r.order_id, oid)
            self.assertEqual(r.version, 1)

    def place(self, orders: Orders, item: str) -> tuple[str, str]:
        """Place an order under a fresh correlation id; returns (order id, correlation id)."""
        correlation = str(uuid4())
        with put_metadata_in_context({"correlation_id": correlation}):
            return orders.place(item), correlation

    def test_stop_and_restart(self) -> None:
        system = System(pipes=[[Orders, Reservations]])
        order_ids: list[str] = []
        correlations: dict[str, str] = {}

        # Phase 1: run the system, place orders, stop.
        runner = SingleThreadedRunner[Decision](system, env=self.env())
        runner.start()
        orders = runner.get(Orders)
        for i in range(10):
            oid, correlations[oid] = self.place(orders, f"item-{i}")
            order_ids.append(oid)
        self.check_exactly_once(orders, runner.get(Reservations), order_ids)
        runner.stop()

        # Phase 2: orders placed while the follower is down.
        with Orders(env=self.env()) as orders:
            for i in range(10, 25):
                oid, correlations[oid] = self.place(orders, f"item-{i}")
                order_ids.append(oid)

        # Phase 3: restart with each other runner kind; the follower resumes from its tracking record.
        for i, runner_class in enumerate((MultiThreadedRunner, NewSingleThreadedRunner, NewMultiThreadedRunner)):
            runner2 = runner_class[Decision](system, env=self.env())
            runner2.start()
            try:
                orders = runner2.get(Orders)
                reservations = runner2.get(Reservations)
                oid, correlations[oid] = self.place(orders, f"item-{25 + i}")  # prompts the follower
                order_ids.append(oid)
                head = orders.recorder.max_notification_id()
                assert head is not None
                reservations.recorder.wait("Orders", head, timeout=10)
                self.check_exactly_once(orders, reservations, order_ids)
            finally:
                runner2.stop()

        # The uuid and metadata of every event came back as written: each reservation carries its
        # order's correlation id and the order event's uuid as its causation id.
        runner3 = SingleThreadedRunner[Decision](system, env=self.env())
        runner3.start()
        try:
            orders, reservations = runner3.get(Orders), runner3.get(Reservations)
            uuids = {}
            for n in orders.recorder.select_notifications(None, 10_000):
                self.assertEqual(n.metadata["correlation_id"], correlations[n.originator_id])
                uuids[n.originator_id] = n.uuid
            self.assertEqual(len(set(uuids.values())), len(order_ids))
            for n in reservations.recorder.select_notifications(None, 10_000):
                order_id = reservations.repository.get(n.originator_id, Reservation).order_id
                self.assertEqual(n.metadata, {"correlation_id": correlations[order_id],
                                              "causation_id": str(uuids[order_id])})
                self.assertNotIn(n.uuid, uuids.values())
        finally:
            runner3.stop()
