"""One turn of the cross-version test (tests/test_eventsourcing_crossversion.py), run under whichever
eventsourcing version this python has: print, as JSON, everything the recorders read from the stores
under ROOT, then (unless ROUND is 0) append that round's events through them.

    python es_crossversion_worker.py ROOT ROUND

Round r writes, through the application (process) recorder of the application "Shop", the events
2r-1 and 2r of the UUID-id aggregate `U` and event r of the str-id aggregate "order-1", with the
tracking record ("Upstream", r); under eventsourcing 9.5 also event r of `TWIN`, a str id in canonical
UUID form; under 10 each event has a uuid and a metadata dict. Then snapshot 10r of `U`, and a DCB
event tagged "round" and "r<r>" (a conditional append on "round" first, refused from round 2 on)."""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

from evstore.eventsourcing.compat import (
    ES10,
    DcbAppendCondition,
    DcbInfrastructureFactory,
    DcbQuery,
    DcbQueryItem,
    IntegrityError,
    OperationalError,
    StoredEvent,
    dcb_event,
    new_tracking,
    oid_of,
)

NS = uuid.UUID("6f0c3b1e-2a4d-4e8f-9b7a-1c2d3e4f5a6b")
U = uuid.uuid5(NS, "aggregate")
TWIN = str(uuid.uuid5(NS, "twin"))
ORDER = "order-1"


def event_uuid(r: int, v: int) -> uuid.UUID:
    return uuid.uuid5(NS, f"event-{r}-{v}")


def stored(oid: Any, v: int, r: int, topic: str) -> StoredEvent:
    extras: dict[str, Any] = {}
    if ES10:
        extras = {"uuid": event_uuid(r, v), "metadata": {"round": str(r), "written_by": "eventsourcing 10"}}
    return StoredEvent(originator_id=oid, originator_version=v, topic=topic, state=f"{r}:{v}".encode(), **extras)


def extras_of(e: Any) -> list[Any]:
    if not ES10:
        return [None, None]
    return [str(e.uuid), e.metadata]


def events(recorder: Any, oid: Any, **kw: Any) -> Any:
    try:
        return [[type(e.originator_id).__name__, str(e.originator_id), e.originator_version, e.topic,
                 e.state.decode(), *extras_of(e)] for e in recorder.select_events(oid, **kw)]
    except OperationalError as e:
        return {"error": str(e)}


def main(root: str, rnd: int) -> None:
    env = Environment("Shop", {"PERSISTENCE_MODULE": "evstore.eventsourcing", "EVSTORE_PATH": root,
                               "EVSTORE_DURABILITY": "os"})
    factory = InfrastructureFactory.construct(env)
    dcb_factory = DcbInfrastructureFactory.construct(env)
    try:
        rec = factory.process_recorder()
        snaps = factory.aggregate_recorder("snapshots")
        dcb = dcb_factory.dcb_recorder()
        u = oid_of(U)
        out: dict[str, Any] = {
            "es10": ES10,
            "u": events(rec, u),
            "u_range": events(rec, u, gt=1, lte=3),
            "u_last": events(rec, u, desc=True, limit=1),
            "order": events(rec, ORDER),
            "twin": events(rec, TWIN),
            "snapshots": events(snaps, u),
            "notifications": [[n.id, type(n.originator_id).__name__, str(n.originator_id), n.originator_version,
                               *extras_of(n)] for n in rec.select_notifications(None, 1000)],
            "tracking": rec.max_tracking_id("Upstream"),
            "dcb": [[s.position, s.event.type, s.event.data.decode(), list(s.event.tags), *extras_of(s.event)]
                    for s in dcb.read()],
            "dcb_r1": [s.position for s in dcb.read(DcbQuery([DcbQueryItem(tags=["r1"])]))],
        }
        if rnd:
            batch = [stored(u, 2 * rnd - 1, rnd, f"Shop.Event{rnd}"), stored(u, 2 * rnd, rnd, f"Shop.Event{rnd}"),
                     stored(ORDER, rnd, rnd, "Shop.Order")]
            if not ES10:
                batch.append(stored(TWIN, rnd, rnd, "Shop.Twin"))
            rec.insert_events(batch, tracking=new_tracking("Upstream", rnd))
            snaps.insert_events([stored(u, 10 * rnd, rnd, "Shop.Snapshot")])
            extras = (event_uuid(rnd, 0), {"round": str(rnd)}) if ES10 else (None, None)
            try:
                dcb.append([dcb_event("Guarded", b"", ["round"], None, None)],
                           DcbAppendCondition(DcbQuery([DcbQueryItem(tags=["round"])]), after=0))
                out["dcb_refused"] = False
            except IntegrityError:
                out["dcb_refused"] = True
            cond = DcbAppendCondition(DcbQuery([DcbQueryItem(tags=[f"r{rnd}"])]), after=0)
            dcb.append([dcb_event(f"T{rnd}", f"d{rnd}".encode(), ["round", f"r{rnd}"], *extras)], cond)
        print(json.dumps(out))
    finally:
        dcb_factory.close()
        factory.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
