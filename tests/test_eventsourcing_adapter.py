"""evstore.eventsourcing beyond the library's cases: settings, the version mapping (checked against
the library's in-memory recorder), and the fast path's use of the store. Runs under eventsourcing 9.5
and 10 (ids are made with `oid_of`: a UUID under 9.5, its str under 10)."""

from __future__ import annotations

import os
from uuid import UUID, uuid4

from eventsourcing.persistence import InfrastructureFactory, IntegrityError, StoredEvent, Tracking
from eventsourcing.popo import POPOAggregateRecorder
from eventsourcing.utils import Environment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_helpers import MODULE, TempStoreMixin

from evstore.eventsourcing import EvstoreApplicationRecorder, EvstoreSettingError
from evstore.eventsourcing import meta
from evstore.eventsourcing.columns import one_stream, per_stream
from evstore.eventsourcing.compat import (ES10, EVENT_EXTRAS, NIL_UUID, OperationalError, ProgrammingError, oid_of,
                                          stream_of)
from evstore.records import NewEvent


def new_id() -> UUID | str:
    """A fresh originator id as the installed library has them (9.5: a UUID, 10: its str)."""
    return oid_of(uuid4())


def ev(oid: object, v: int, topic: str = "t") -> StoredEvent:
    return StoredEvent(originator_id=oid, originator_version=v, topic=topic, state=b"s%d" % v)  # type: ignore[arg-type]


class TestSettings(TempStoreMixin):
    def test_missing_path_names_the_setting(self) -> None:
        with self.assertRaises(EvstoreSettingError) as cm:
            InfrastructureFactory.construct(Environment("App", {"PERSISTENCE_MODULE": MODULE}))
        self.assertIn("EVSTORE_PATH", str(cm.exception))

    def test_bad_names_are_refused(self) -> None:
        for name in ("..", ".", "a/b", "/abs", "a\x00b", "a\\b", ""):
            f = InfrastructureFactory.construct(self.es_env(name))
            self.factories.append(f)
            with self.assertRaises(EvstoreSettingError, msg=repr(name)):
                f.application_recorder()
        self.assertEqual(os.listdir(self.evstore_root), [])

    def test_bad_durability_and_sizes(self) -> None:
        with self.assertRaises(EvstoreSettingError):
            InfrastructureFactory.construct(self.es_env("A", EVSTORE_DURABILITY="never"))
        with self.assertRaises(EvstoreSettingError):
            InfrastructureFactory.construct(self.es_env("A", EVSTORE_MAP_SIZE="lots"))
        f = InfrastructureFactory.construct(self.es_env("A", EVSTORE_SEGMENT_SIZE="1000"))
        self.factories.append(f)
        with self.assertRaises(EvstoreSettingError):
            f.application_recorder()

    def test_layout_and_prefixed_settings(self) -> None:
        other = os.path.join(self.evstore_root, "other")
        f = InfrastructureFactory.construct(self.es_env("Shop", SHOP_EVSTORE_PATH=other))
        self.factories.append(f)
        f.application_recorder()
        f.aggregate_recorder("snapshots")
        self.assertEqual(sorted(os.listdir(os.path.join(other, "Shop"))), ["events", "snapshots"])

    def test_close_releases_the_store(self) -> None:
        f = InfrastructureFactory.construct(self.es_env("A"))
        r = f.application_recorder()
        assert isinstance(r, EvstoreApplicationRecorder)
        r.insert_events([ev(new_id(), 1)])
        f.close()
        self.assertTrue(r.store.closed)


class TestVersionMapping(TempStoreMixin):
    def recorder(self) -> EvstoreApplicationRecorder:
        r = self.es_factory().application_recorder()
        assert isinstance(r, EvstoreApplicationRecorder)
        return r

    def test_ids_round_trip(self) -> None:
        r = self.recorder()
        u, s = new_id(), "order-" + str(uuid4())
        r.insert_events([ev(u, 0), ev(s, 5), ev(u, 1)])
        self.assertEqual([type(e.originator_id) for e in r.select_events(u)], [type(u)] * 2)
        self.assertEqual([e.originator_id for e in r.select_events(s)], [s])
        notes = r.select_notifications(None, 10)
        self.assertEqual([(n.originator_id, n.originator_version) for n in notes], [(u, 0), (u, 1), (s, 5)])
        # A UUID id (9.5) and its canonical str (10) name one UUID stream; any other str a str stream.
        self.assertEqual((r.store.stream_version(UUID(str(u))), r.store.stream_version(s)), (2, 1))

    def test_a_str_id_in_uuid_form_written_under_95(self) -> None:
        """9.5 keeps a str id in canonical UUID form as a str stream; 10 names the UUID stream by it,
        so it refuses (naming both versions) rather than miss the events or start a second stream."""
        r = self.recorder()
        text = str(uuid4())
        r.store.append(text, [NewEvent("t", b"s", meta.encode(1))])  # as 9.5 records ev(text, 1)
        if not ES10:
            self.assertEqual([(e.originator_id, e.originator_version) for e in r.select_events(text)], [(text, 1)])
            return
        for call in (lambda: r.select_events(text), lambda: r.select_events(text, gt=0, desc=True),
                     lambda: r.insert_events([ev(text, 2)])):
            with self.assertRaises(OperationalError) as cm:
                call()
            self.assertIn("eventsourcing 9.5", str(cm.exception))
        self.assertEqual(r.store.stream_version(UUID(text)), 0)

    def test_stale_duplicate_and_unordered_versions(self) -> None:
        r = self.recorder()
        u = new_id()
        r.insert_events([ev(u, 3), ev(u, 4)])
        for bad in ([ev(u, 4)], [ev(u, 2)], [ev(u, 6), ev(u, 5)], [ev(u, 5), ev(u, 5)]):
            with self.assertRaises(IntegrityError):
                r.insert_events(bad)
        self.assertEqual([e.originator_version for e in r.select_events(u)], [3, 4])
        # Another recorder on the same store has a stale cache: the expected-version check catches it.
        r2 = self.recorder()
        self.assertEqual([e.originator_version for e in r2.select_events(u)], [3, 4])
        r.insert_events([ev(u, 5)])
        with self.assertRaises(IntegrityError):
            r2.insert_events([ev(u, 5)])
        r2.insert_events([ev(u, 9)])
        self.assertEqual([e.originator_version for e in r.select_events(u)], [3, 4, 5, 9])

    def test_tracking_is_atomic_with_events(self) -> None:
        r = self.es_factory().process_recorder()
        u = new_id()
        r.insert_events([ev(u, 1)], tracking=Tracking("up", 5))
        with self.assertRaises(IntegrityError):  # version conflict: tracking not written either
            r.insert_events([ev(u, 1)], tracking=Tracking("up", 6))
        self.assertEqual(r.max_tracking_id("up"), 5)
        with self.assertRaises(IntegrityError):  # tracking conflict: events not written either
            r.insert_events([ev(u, 2)], tracking=Tracking("up", 5))
        self.assertEqual(len(r.select_events(u)), 1)

    def test_contiguous_select_reads_only_the_range(self) -> None:
        r = self.recorder()
        u = new_id()
        r.insert_events([ev(u, v) for v in range(1000)])
        calls: list[dict[str, object]] = []
        orig = r.store.stream_chunks

        def spy(stream: object, **kw: object) -> object:
            res = orig(stream, **kw)  # type: ignore[arg-type]
            calls.append({**kw, "n": sum(len(offs) for _buf, offs in res)})
            return res

        r.store.stream_chunks = spy  # type: ignore[method-assign]
        got = r.select_events(u, gt=500, lte=510)
        self.assertEqual([e.originator_version for e in got], list(range(501, 511)))
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0]["n"], 10)
        calls.clear()
        got = r.select_events(u, lte=700, desc=True, limit=1)
        self.assertEqual([e.originator_version for e in got], [700])
        self.assertEqual([c["n"] for c in calls], [1])

    def test_select_edges(self) -> None:
        r = self.recorder()
        oracle = POPOAggregateRecorder()
        for versions in ([0, 1, 2], [1, 2, 3, 4], [0, 2, 3, 7], [5]):
            oid = new_id()
            for rec in (r, oracle):
                rec.insert_events([ev(oid, v) for v in versions])
            for gt in (None, -1, 0, 1, 2, 3, 6, 60):
                for lte in (None, -1, 0, 1, 2, 3, 6, 60):
                    for desc in (False, True):
                        for limit in (None, 1, 2, 10):
                            want = oracle.select_events(oid, gt=gt, lte=lte, desc=desc, limit=limit)
                            for rr in (r, self.recorder()):
                                got = rr.select_events(oid, gt=gt, lte=lte, desc=desc, limit=limit)
                                self.assertEqual(list(got), list(want), (versions, gt, lte, desc, limit))

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        start=st.integers(0, 3),
        steps=st.lists(st.integers(1, 3), min_size=1, max_size=25),
        batches=st.integers(1, 5),
        queries=st.lists(
            st.tuples(st.one_of(st.none(), st.integers(-1, 60)), st.one_of(st.none(), st.integers(-1, 60)),
                      st.booleans(), st.one_of(st.none(), st.integers(1, 5))),
            min_size=1, max_size=8),
    )
    def test_select_matches_the_in_memory_recorder(self, start: int, steps: list[int], batches: int,
                                                   queries: list[tuple[int | None, int | None, bool, int | None]]) -> None:
        r = self.recorder()
        oracle = POPOAggregateRecorder()
        oid = new_id() if start % 2 else "aggregate-" + str(uuid4())
        versions = [start]
        for s in steps[1:]:
            versions.append(versions[-1] + s)
        events = [ev(oid, v) for v in versions]
        size = max(1, len(events) // batches)
        for i in range(0, len(events), size):
            r.insert_events(events[i : i + size])
            oracle.insert_events(events[i : i + size])
        for recorder in (r, self.recorder()):  # a warm and a cold cache
            for gt, lte, desc, limit in queries:
                want = oracle.select_events(oid, gt=gt, lte=lte, desc=desc, limit=limit)
                got = recorder.select_events(oid, gt=gt, lte=lte, desc=desc, limit=limit)
                self.assertEqual(list(got), list(want), (gt, lte, desc, limit, versions))


class TestInsertColumns(TempStoreMixin):
    """insert_events makes one aggregate's batch into the store's columns with whole-column checks
    (`evstore.eventsourcing.columns.one_stream`); any batch they do not vouch for goes event by event."""

    def recorder(self) -> EvstoreApplicationRecorder:
        r = self.es_factory().application_recorder()
        assert isinstance(r, EvstoreApplicationRecorder)
        return r

    def test_a_fresh_recorder_appends_after_the_recorded_head(self) -> None:
        r = self.recorder()
        u, w = new_id(), new_id()
        self.assertEqual(list(r.insert_events([ev(u, 1), ev(u, 2)]) or ()), [1, 2])
        self.assertEqual(list(r.insert_events([ev(w, 0)]) or ()), [3])
        r2 = self.recorder()  # no cached heads: a first version of 0 or 1 is tried as a new stream
        for bad in ([ev(u, 1)], [ev(u, 0), ev(u, 3)], [ev(u, 2)]):
            with self.assertRaises(IntegrityError):
                r2.insert_events(bad)
        self.assertEqual(list(r2.insert_events([ev(w, 1), ev(w, 2)]) or ()), [4, 5])
        self.assertEqual(list(r2.insert_events([ev(u, 3)]) or ()), [6])
        self.assertEqual([e.originator_version for e in r.select_events(w)], [0, 1, 2])
        self.assertEqual([e.originator_version for e in r.select_events(u)], [1, 2, 3])

    def test_versions_that_are_not_ints(self) -> None:
        r = self.recorder()
        u = new_id()
        for bad in ([ev(u, 1), ev(u, 2.0)], [ev(u, True)], [ev(u, 1.0)]):  # type: ignore[arg-type]
            with self.assertRaises(ProgrammingError):
                r.insert_events(bad)
        self.assertEqual(r.store.stream_version(stream_of(u)), 0)

    @settings(max_examples=300, deadline=None)
    @given(
        versions=st.lists(st.one_of(st.integers(-3, 40), st.just(2**62)), min_size=1, max_size=12),
        uuids=st.lists(st.sampled_from(["nil", "set", "none"]), min_size=12, max_size=12),
        dicts=st.lists(st.sampled_from([{}, {}, {"k": "v"}]), min_size=12, max_size=12),
        other=st.lists(st.booleans(), min_size=12, max_size=12),
    )
    def test_columns_equal_the_per_event_encoding(self, versions: list[int], uuids: list[str],
                                                  dicts: list[dict[str, str]], other: list[bool]) -> None:
        oid, oid2 = new_id(), new_id()
        batch = []
        for i, v in enumerate(versions):
            e = ev(oid2 if other[i] and i % 3 == 2 else oid, v, topic=f"t{i % 2}")
            if EVENT_EXTRAS:
                u = {"nil": NIL_UUID, "set": uuid4(), "none": UUID(int=0)}[uuids[i]]
                e = StoredEvent(originator_id=e.originator_id, originator_version=v,  # type: ignore[call-arg,unused-ignore]
                                topic=e.topic, state=e.state, uuid=u, metadata=dicts[i])
            batch.append(e)
        part = one_stream(batch)
        try:
            parts = per_stream(batch)
        except IntegrityError:
            self.assertIsNone(part)
            return
        if part is None:
            self.assertTrue(len(parts) > 1 or versions != sorted(set(versions)))
            return
        self.assertEqual(len(parts), 1)
        self.assertEqual(part._replace(at=None), parts[0]._replace(at=None))
        self.assertEqual(parts[0].at, list(range(len(batch))))

    def test_columns_of_events_with_uuids(self) -> None:
        oid = new_id()
        for make in (uuid4, lambda: NIL_UUID, lambda: UUID(int=0)):
            batch = [ev(oid, v) for v in range(5, 105)]
            if EVENT_EXTRAS:
                batch = [StoredEvent(originator_id=e.originator_id,  # type: ignore[call-arg,unused-ignore]
                                     originator_version=e.originator_version, topic=e.topic, state=e.state,
                                     uuid=make()) for e in batch]
            part = one_stream(batch)
            assert part is not None
            self.assertEqual(part.metas, [meta.encode(e.originator_version, getattr(e, "uuid", None),
                                                      getattr(e, "metadata", None)) for e in batch])
            self.assertEqual((part.first, part.last, part.at), (5, 104, None))
