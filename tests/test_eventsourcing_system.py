"""End to end: a System of two applications (Orders -> Reservations, a process application with a
process recorder) run with the library's runners on evstore, stopped and restarted mid-way; every
leader event is processed exactly once."""

from __future__ import annotations

import pytest

from evstore.eventsourcing.compat import ES10

if ES10:
    pytest.skip("eventsourcing 10 is installed: its cases are tests/test_es10_system.py", allow_module_level=True)

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.system import (
    MultiThreadedRunner,
    NewMultiThreadedRunner,
    NewSingleThreadedRunner,
    ProcessApplication,
    SingleThreadedRunner,
    System,
)

from es_helpers import MODULE, TempStoreMixin

from evstore.eventsourcing import EvstoreProcessRecorder


class Order(Aggregate):
    def __init__(self, item: str) -> None:
        self.item = item


class Reservation(Aggregate):
    @event("Created")
    def __init__(self, order_id: UUID) -> None:
        self.order_id = order_id

    @staticmethod
    def create_id(order_id: UUID) -> UUID:
        return uuid5(NAMESPACE_URL, f"/reservations/{order_id}")


class Orders(Application[UUID]):
    def place(self, item: str) -> UUID:
        order = Order(item)
        self.save(order)
        return order.id


class Reservations(ProcessApplication[UUID]):
    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Ignore other events."""

    @policy.register
    def _(self, domain_event: Order.Created, processing_event: ProcessingEvent[UUID]) -> None:
        reservation = Reservation(domain_event.originator_id)
        processing_event.collect_events(reservation)


class TestSystemOnEvstore(TempStoreMixin):
    def env(self) -> dict[str, str]:
        return {"PERSISTENCE_MODULE": MODULE, "EVSTORE_PATH": self.evstore_root, "EVSTORE_DURABILITY": "os"}

    def check_exactly_once(self, orders: Orders, reservations: Reservations, order_ids: list[UUID]) -> None:
        self.assertIsInstance(reservations.recorder, EvstoreProcessRecorder)
        self.assertEqual(reservations.recorder.max_tracking_id("Orders"), orders.recorder.max_notification_id())
        notes = reservations.recorder.select_notifications(None, 10_000)
        created = [n for n in notes if n.topic.endswith("Reservation.Created")]
        self.assertEqual(len(created), len(order_ids))
        self.assertEqual(len({n.originator_id for n in created}), len(order_ids))
        for oid in order_ids:
            r = reservations.repository.get(Reservation.create_id(oid))
            self.assertEqual(r.order_id, oid)
            self.assertEqual(r.version, 1)

    def test_stop_and_restart(self) -> None:
        system = System(pipes=[[Orders, Reservations]])
        order_ids: list[UUID] = []

        # Phase 1: run the system, place orders, stop.
        runner = SingleThreadedRunner[UUID](system, env=self.env())
        runner.start()
        orders = runner.get(Orders)
        for i in range(10):
            order_ids.append(orders.place(f"item-{i}"))
        self.check_exactly_once(orders, runner.get(Reservations), order_ids)
        runner.stop()

        # Phase 2: orders placed while the follower is down.
        with Orders(env=self.env()) as orders:
            for i in range(10, 25):
                order_ids.append(orders.place(f"item-{i}"))

        # Phase 3: restart with each other runner kind; the follower resumes from its tracking record.
        # (NewMultiThreadedRunner asks the process recorder for max_tracking_id(application_name=...).)
        for i, runner_class in enumerate((MultiThreadedRunner, NewSingleThreadedRunner, NewMultiThreadedRunner)):
            runner2 = runner_class[UUID](system, env=self.env())
            runner2.start()
            try:
                orders = runner2.get(Orders)
                reservations = runner2.get(Reservations)
                order_ids.append(orders.place(f"item-{25 + i}"))  # prompts the follower
                head = orders.recorder.max_notification_id()
                reservations.recorder.wait("Orders", head, timeout=10)
                self.check_exactly_once(orders, reservations, order_ids)
            finally:
                runner2.stop()

        # Phase 4: a third start processes nothing again.
        runner3 = SingleThreadedRunner[UUID](system, env=self.env())
        runner3.start()
        try:
            orders = runner3.get(Orders)
            order_ids.append(orders.place("item-28"))
            self.check_exactly_once(orders, runner3.get(Reservations), order_ids)
        finally:
            runner3.stop()
