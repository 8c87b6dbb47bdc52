"""The EventStore contract: appends, expected versions, idempotency, reads — against both log implementations."""

from __future__ import annotations

import os
import pickle
import threading
import uuid
from datetime import datetime, timezone

import pytest

import evstore
from evstore import ANY, NO_STREAM, STREAM_EXISTS, NewEvent
from tests.support import ev, log_bytes
from facade import AsyncApi, SyncApi

Api = SyncApi | AsyncApi  # the threaded or the asyncio API (the `api` fixture)


def test_append_and_read_back_a_stream(api: Api) -> None:
    r = api.append("order-1", [ev("Placed", b'{"sku": 7}', metadata=b"m")], expected_version=NO_STREAM)
    assert r == evstore.AppendResult("order-1", 1, 1, 1, 1)
    r2 = api.append("order-1", [ev("Paid"), ev("Shipped", b"x")], expected_version=r.last_version)
    assert r2 == evstore.AppendResult("order-1", 2, 3, 2, 3)
    events = api.read_stream("order-1")
    assert [(e.stream, e.version, e.position, e.type, e.data) for e in events] == [
        ("order-1", 1, 1, "Placed", b'{"sku": 7}'),
        ("order-1", 2, 2, "Paid", b"{}"),
        ("order-1", 3, 3, "Shipped", b"x"),
    ]
    assert events[0].metadata == b"m" and events[1].metadata == b""
    assert events[0].schema == 1
    assert isinstance(events[0].id, uuid.UUID) and events[0].id.version == 4
    assert len({e.id for e in events}) == 3
    assert api.stream_version("order-1") == 3
    assert api.stream_version("order-2") == 0
    assert api.head() == 3


def test_uuid_stream_ids_read_back_as_uuids(store: evstore.EventStore) -> None:
    sid = uuid.uuid4()
    store.append(sid, [ev(), ev()])
    store.append(str(sid), [ev()])  # a str with the same text is another stream
    assert [e.stream for e in store.read_stream(sid)] == [sid, sid]
    assert [type(e.stream) for e in store.read_all()] == [uuid.UUID, uuid.UUID, str]
    assert store.stream_version(sid) == 2 and store.stream_version(str(sid)) == 1


def test_recorded_event_fields_are_frozen_and_comparable(store: evstore.EventStore) -> None:
    eid = uuid.uuid4()
    store.append("s", [ev("T", b"d", metadata=b"md", id=eid, schema=3)])
    (e,) = store.read_stream("s")
    assert e.id == eid and e.schema == 3 and e.id_given
    assert isinstance(e.recorded_at, datetime) and e.recorded_at.tzinfo == timezone.utc
    assert abs((datetime.now(timezone.utc) - e.recorded_at).total_seconds()) < 60
    with pytest.raises(AttributeError):
        e.data = b"other"  # type: ignore[misc]
    (same,) = list(store.read_all())
    assert e == same and hash(e) == hash(same)
    copy = pickle.loads(pickle.dumps(e))
    assert copy == e and copy.data == b"d" and copy.stream == "s"
    assert "RecordedEvent(stream='s'" in repr(e)


def test_versions_are_contiguous_and_positions_gapless(store: evstore.EventStore) -> None:
    for i in range(30):
        store.append(f"s-{i % 4}", [ev() for _ in range(i % 3 + 1)])
    all_events = list(store.read_all())
    assert [e.position for e in all_events] == list(range(1, len(all_events) + 1))
    for s in range(4):
        assert [e.version for e in store.read_stream(f"s-{s}")] == list(
            range(1, store.stream_version(f"s-{s}") + 1)
        )


@pytest.mark.parametrize(
    "expected, ok_when_absent, ok_at_1",
    [(ANY, True, True), (NO_STREAM, True, False), (STREAM_EXISTS, False, True), (0, True, False), (1, False, True)],
)
def test_expected_version_forms(api: Api, expected: object, ok_when_absent: bool,
                                ok_at_1: bool) -> None:
    def attempt(stream: str) -> bool:
        try:
            api.append(stream, [ev()], expected_version=expected)
            return True
        except evstore.WrongExpectedVersion as e:
            assert e.stream == stream and e.expected is expected
            return False

    assert attempt("absent") is ok_when_absent
    api.append("at1", [ev()])
    assert attempt("at1") is ok_at_1


def test_append_with_stale_expected_version_writes_nothing(api: Api) -> None:
    api.append("s", [ev(), ev()])
    before = (log_bytes(api.path), api.head())
    with pytest.raises(evstore.ConcurrencyError) as info:
        api.append("s", [ev()], expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert (log_bytes(api.path), api.head()) == before
    r = api.append("s", [ev()], expected_version=2)
    assert (r.first_version, r.first_position) == (3, 3)  # no version or position was consumed


def test_append_many_is_atomic_across_streams(api: Api) -> None:
    api.append("b", [ev()])
    rs = api.append_many([("a", [ev(), ev()], NO_STREAM), ("b", [ev()], 1)])
    assert rs == [evstore.AppendResult("a", 1, 2, 2, 3), evstore.AppendResult("b", 2, 2, 4, 4)]
    before = log_bytes(api.path)
    with pytest.raises(evstore.WrongExpectedVersion):
        api.append_many([("a", [ev()], 2), ("b", [ev()], 1), ("c", [ev()], NO_STREAM)])
    assert log_bytes(api.path) == before
    assert (api.stream_version("a"), api.stream_version("b"), api.stream_version("c")) == (2, 2, 0)
    with pytest.raises(ValueError):
        api.append_many([("a", [ev()], ANY), ("a", [ev()], ANY)])
    with pytest.raises(ValueError):
        api.append_many([])


def test_retry_with_same_event_ids_returns_original_result(api: Api) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    first = api.append("s", [ev(id=ids[0]), ev(id=ids[1])], expected_version=NO_STREAM)
    api.append("s", [ev()])
    # the acknowledgement was lost: the retry carries a stale expected version but the same ids
    again = api.append("s", [ev(id=ids[0]), ev(id=ids[1])], expected_version=NO_STREAM)
    assert again == first
    assert api.stream_version("s") == 3 and api.head() == 3
    many = api.append_many([("t", [ev(id=(i := uuid.uuid4()))], NO_STREAM)])
    assert api.append_many([("t", [ev(id=i)], NO_STREAM)]) == many


def test_reused_event_id_in_another_append_is_refused(api: Api) -> None:
    i = uuid.uuid4()
    api.append("s", [ev(id=i)])
    before = log_bytes(api.path)
    with pytest.raises(evstore.DuplicateEventId) as info:
        api.append("other", [ev(id=i)])
    assert info.value.event_id == i and info.value.position == 1
    with pytest.raises(evstore.DuplicateEventId):
        api.append("s", [ev(id=i), ev(id=uuid.uuid4())])  # a partial overlap is not a retry
    j = uuid.uuid4()
    with pytest.raises(evstore.DuplicateEventId):
        api.append("s", [ev(id=j), ev(id=j)])
    assert log_bytes(api.path) == before and api.head() == 1


def test_read_stream_ranges(api: Api) -> None:
    for i in range(10):
        api.append("s", [ev(data=str(j).encode()) for j in range(i * 3, i * 3 + 3)])
        api.append("noise", [ev()])
    versions = lambda **kw: [e.version for e in api.read_stream("s", **kw)]  # noqa: E731
    assert versions() == list(range(1, 31))
    assert versions(gt=5, lte=9) == [6, 7, 8, 9]
    assert versions(gt=28) == [29, 30]
    assert versions(lte=2) == [1, 2]
    assert versions(desc=True, limit=3) == [30, 29, 28]
    assert versions(gt=3, lte=8, desc=True) == [8, 7, 6, 5, 4]
    assert versions(limit=0) == [] and versions(gt=30) == [] and versions(gt=9, lte=9) == []
    assert [e.data for e in api.read_stream("s", gt=10, limit=2)] == [b"10", b"11"]
    assert api.read_stream("absent") == []


def test_read_all_ranges_and_type_filter(api: Api) -> None:
    for i in range(20):
        api.append(f"s{i % 3}", [ev("A"), ev("B" if i % 2 else "C")])
    positions = lambda **kw: [e.position for e in api.read_all(**kw)]  # noqa: E731
    assert positions() == list(range(1, 41))
    assert positions(gt=37) == [38, 39, 40]
    assert positions(gt=3, lte=6) == [4, 5, 6]
    assert positions(limit=4, gt=10) == [11, 12, 13, 14]
    assert positions(types=["B"]) == [4 * k + 4 for k in range(10)]
    assert positions(types=["B", "C"], gt=5, lte=12) == [6, 8, 10, 12]
    assert positions(types=[]) == [] and positions(types=["nope"]) == []
    assert positions(gt=40) == []


def test_reads_see_a_snapshot_taken_when_read_all_starts(store: evstore.EventStore) -> None:
    store.append("s", [ev()])
    it = store.read_all()
    store.append("s", [ev()])
    assert [e.position for e in it] == [1]


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda s: s.append(7, [ev()]), TypeError),
        (lambda s: s.append("", [ev()]), ValueError),
        (lambda s: s.append("x" * 401, [ev()]), ValueError),
        (lambda s: s.append("bad\udc80", [ev()]), ValueError),
        (lambda s: s.append("s", []), ValueError),
        (lambda s: s.append("s", ev()), TypeError),
        (lambda s: s.append("s", ["not an event"]), TypeError),
        (lambda s: s.append("s", [NewEvent("T", "text")]), TypeError),  # type: ignore[arg-type]
        (lambda s: s.append("s", [NewEvent("", b"")]), ValueError),
        (lambda s: s.append("s", [NewEvent(3, b"")]), TypeError),  # type: ignore[arg-type]
        (lambda s: s.append("s", [NewEvent("T", b"", metadata=None)]), TypeError),  # type: ignore[arg-type]
        (lambda s: s.append("s", [NewEvent("T", b"", id="x")]), TypeError),  # type: ignore[arg-type]
        (lambda s: s.append("s", [NewEvent("T", b"", schema=-1)]), ValueError),
        (lambda s: s.append("s", [NewEvent("T", b"", schema="1")]), TypeError),  # type: ignore[arg-type]
        (lambda s: s.append("s", [NewEvent("T", bytes(evstore.MAX_EVENT_BYTES + 1))]), ValueError),
        (lambda s: s.append("s", [ev()], expected_version=-1), ValueError),
        (lambda s: s.append("s", [ev()], expected_version=2**63), ValueError),
        (lambda s: s.append("s", [ev()], expected_version="1"), TypeError),
        (lambda s: s.append("s", [ev()], expected_version=True), TypeError),
        (lambda s: s.append_many([("s", [ev()])]), TypeError),
        (lambda s: s.read_stream("s", gt=-1), ValueError),
        (lambda s: s.read_stream("s", limit=1.5), TypeError),
        (lambda s: s.read_stream(b"s"), TypeError),
        (lambda s: list(s.read_all(gt="1")), TypeError),
        (lambda s: list(s.read_all(types="A")), TypeError),
        (lambda s: list(s.read_all(lte=2**64)), ValueError),
    ],
)
def test_malformed_arguments_get_clear_errors_and_write_nothing(store: evstore.EventStore, call: object,
                                                              exc: type) -> None:
    store.append("s", [ev()])
    before = log_bytes(store.path)
    with pytest.raises(exc):
        call(store)  # type: ignore[operator]
    assert log_bytes(store.path) == before and store.head() == 1 and store.stream_version("s") == 1


def test_closed_store_raises_store_closed(store_path: str, impl: str) -> None:
    s = evstore.open(store_path, log_impl=impl)
    s.close()
    s.close()  # idempotent
    with pytest.raises(evstore.StoreClosed):
        s.append("s", [ev()])
    with pytest.raises(evstore.StoreClosed):
        s.read_stream("s")
    assert s.closed


def test_reopen_keeps_everything(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("a", [ev("X", b"1")])
        s.append(uuid.UUID(int=5), [ev("Y", b"2"), ev("Z", b"3")])
    with evstore.open(store_path, log_impl=impl) as s:
        assert [(e.stream, e.type, e.data) for e in s.read_all()] == [
            ("a", "X", b"1"), (uuid.UUID(int=5), "Y", b"2"), (uuid.UUID(int=5), "Z", b"3")]
        assert s.append("a", [ev()], expected_version=1).first_position == 4


def test_two_opens_in_one_process_share_the_store(store_path: str, impl: str) -> None:
    a = evstore.open(store_path, log_impl=impl)
    b = evstore.open(store_path, log_impl=impl)
    a.append("s", [ev()])
    assert b.stream_version("s") == 1
    a.close()
    b.append("s", [ev()])  # closing one handle does not break the other
    assert b.head() == 2
    b.close()


def test_readonly_handle_refuses_writes(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as w:
        w.append("s", [ev()])
    with evstore.open(store_path, readonly=True, log_impl=impl) as r:
        assert [e.version for e in r.read_stream("s")] == [1]
        with pytest.raises(evstore.ReadOnlyStore):
            r.append("s", [ev()])


def test_segments_roll_and_reads_cross_them(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=4096, durability="os") as s:
        for i in range(200):
            s.append(f"s{i % 7}", [ev(data=bytes([i % 256]) * 50)])
        assert len(os.listdir(os.path.join(store_path, "log"))) > 3
        assert [e.position for e in s.read_all()] == list(range(1, 201))
        assert [e.data[0] for e in s.read_stream("s3")] == [i % 256 for i in range(3, 200, 7)]
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.position for e in s.read_all(gt=150, types=["Happened"])] == list(range(151, 201))
        huge = s.append("big", [ev(data=bytes(9000))])  # larger than a segment: gets one of its own
        assert s.read_stream("big")[0].data == bytes(9000) and huge.first_position == 201


def test_concurrent_appends_share_fsyncs_and_lose_nothing(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(40):
                    s.append(f"w{n}", [ev(data=f"{n}:{i}".encode())], expected_version=i)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert s.head() == 320
        for n in range(8):
            assert [e.data for e in s.read_stream(f"w{n}")] == [f"{n}:{i}".encode() for i in range(40)]
        assert [e.position for e in s.read_all()] == list(range(1, 321))


def test_racing_writers_on_one_stream_get_exactly_one_winner_per_version(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        wins: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            for _ in range(30):
                v = s.stream_version("hot")
                try:
                    r = s.append("hot", [ev()], expected_version=v)
                except evstore.WrongExpectedVersion:
                    continue
                with lock:
                    wins.append(r.first_version)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(wins) == list(range(1, len(wins) + 1))
        assert s.stream_version("hot") == len(wins)


def test_read_stream_desc_limit_reads_only_the_newest(api: Api) -> None:
    for i in range(50):
        api.append("s", [ev(data=str(i * 10 + j).encode()) for j in range(10)])
    newest = api.read_stream("s", desc=True, limit=3)
    assert [e.version for e in newest] == [500, 499, 498]
    assert [e.version for e in api.read_stream("s", gt=100, limit=2)] == [101, 102]
    assert [e.version for e in api.read_stream("s", lte=5, desc=True, limit=10)] == [5, 4, 3, 2, 1]


def test_replay_keeps_resident_memory_flat(store_path: str) -> None:
    """A replay drops the mapped pages it has moved past (reads of held records fault them back)."""
    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")  # pragma: no cover

    with evstore.open(store_path, durability="os") as s:
        events = [ev(data=bytes(1000)) for _ in range(1000)]
        for _ in range(100):
            s.append("big", events)  # ~107 MB of log
        base = rss_mb()
        first = None
        peak = base
        for i, e in enumerate(s.read_all()):
            if first is None:
                first = e
            if i % 10_000 == 0:
                peak = max(peak, rss_mb())
        assert peak - base < 60, (base, peak)
        assert first is not None and first.data == bytes(1000)  # still readable after its pages went


def test_type_filter_inside_large_mixed_commits(store: evstore.EventStore) -> None:
    kinds = ["A", "B", "C", "D"]
    for c in range(5):
        store.append(f"s{c}", [ev(kinds[(c + i) % 4], str(c * 100 + i).encode()) for i in range(100)])
    want = lambda ts, gt, lte: [p for p in range(gt + 1, lte + 1)  # noqa: E731
                                if kinds[((p - 1) // 100 + (p - 1) % 100) % 4] in ts]
    for ts, gt, lte in [(["A"], 0, 500), (["B", "D"], 37, 251), (["C"], 99, 100), (["A", "C"], 150, 150),
                        (["D"], 499, 500), (["A", "B", "C", "D"], 250, 260)]:
        got = [e.position for e in store.read_all(types=ts, gt=gt, lte=lte)]
        assert got == want(ts, gt, lte), (ts, gt, lte)
        assert [e.type for e in store.read_all(types=ts, gt=gt, lte=lte)] == [
            kinds[((p - 1) // 100 + (p - 1) % 100) % 4] for p in got]
    assert [e.position for e in store.read_all(types=["B"], gt=10, limit=3)] == want(["B"], 10, 500)[:3]
