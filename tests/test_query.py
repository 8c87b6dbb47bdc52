"""Tags, queries by tag and type, and append conditions (dynamic consistency boundaries)."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

import evstore
from evstore import Condition, NewEvent, QueryItem
from facade import AsyncApi, SyncApi

Api = SyncApi | AsyncApi  # the threaded or the asyncio API (the `api` fixture)


def enrol(student: int, course: str, t: str = "Enrolled") -> NewEvent:
    return NewEvent(t, f"{student}:{course}".encode(), tags=(f"student:{student}", f"course:{course}"))


def positions(events: list[evstore.RecordedEvent]) -> list[int]:
    return [e.position for e in events]


def test_tags_round_trip_and_are_validated(store: evstore.EventStore) -> None:
    store.append("x", [NewEvent("T", b"d", metadata=b"m", tags=("a", "b", "a"))])
    (e,) = store.read_stream("x")
    assert e.tags == ("a", "b") and e.data == b"d" and e.metadata == b"m"
    assert store.read_all().__next__().tags == ("a", "b")
    for bad, exc in [(("",), ValueError), (("x" * 256,), ValueError), ((1,), TypeError), ("ab", TypeError),
                     (("a\x00",), ValueError), (("\udc80",), ValueError)]:
        with pytest.raises(exc):
            store.append("x", [NewEvent("T", b"", tags=bad)])  # type: ignore[arg-type]
    assert store.head() == 1


def test_query_by_tags_and_types(api: Api) -> None:
    api.append("c", [enrol(1, "A"), enrol(2, "A"), enrol(1, "B")])
    api.append("c", [enrol(2, "B", "Left"), NewEvent("Untagged", b"")])
    assert positions(api.query([QueryItem(tags=["course:A"])])) == [1, 2]
    assert positions(api.query([QueryItem(tags=["student:1", "course:B"])])) == [3]
    assert positions(api.query([QueryItem(types=["Left"], tags=["student:2"])])) == [4]
    assert positions(api.query([QueryItem(types=["Enrolled"], tags=["student:2"])])) == [2]
    assert positions(api.query([QueryItem(types=["Untagged", "Left"])])) == [4, 5]
    assert positions(api.query([QueryItem(tags=["course:A"]), QueryItem(types=["Left"])])) == [1, 2, 4]
    assert positions(api.query([QueryItem()], gt=3)) == [4, 5]
    assert positions(api.query([QueryItem(tags=["course:A"])], gt=1)) == [2]
    assert positions(api.query([QueryItem(tags=["student:1"])], limit=1)) == [1]
    assert api.query([QueryItem(tags=["nobody"])]) == [] and api.query([]) == []
    with pytest.raises(TypeError):
        api.query([QueryItem(tags="course:A")])  # type: ignore[arg-type]


def test_condition_refuses_a_conflicting_append_and_writes_nothing(api: Api) -> None:
    api.append("c", [enrol(1, "A")])
    seen = api.head()
    api.append("c", [enrol(2, "A")])  # someone else enrols in A after we read
    cond = Condition([QueryItem(tags=["course:A"])], after=seen)
    with pytest.raises(evstore.ConditionFailed) as info:
        api.append("c", [enrol(3, "A")], condition=cond)
    assert info.value.position == 2 and api.head() == 2
    ok = Condition([QueryItem(tags=["course:B"])], after=seen)
    assert api.append_many([("c", [enrol(3, "B")], evstore.ANY)], condition=ok)[0].first_position == 3
    with pytest.raises(TypeError):
        api.append("c", [enrol(4, "A")], condition=[QueryItem()])  # type: ignore[arg-type]


def test_racing_conditional_appends_admit_one_per_boundary(store: evstore.EventStore) -> None:
    """Ten threads each try to take the last seat of course A after reading the same head."""
    seen = store.head()
    wins = []
    lock = threading.Lock()

    def take(i: int) -> None:
        try:
            store.append("c", [enrol(i, "A")], condition=Condition([QueryItem(tags=["course:A"])], after=seen))
        except evstore.ConditionFailed:
            return
        with lock:
            wins.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(store.query([QueryItem(tags=["course:A"])])) == 1


def test_tag_index_is_rebuilt_from_the_log(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        s.append("c", [enrol(1, "A"), enrol(2, "B")])
    shutil.rmtree(os.path.join(store_path, "index"))
    with evstore.open(store_path, log_impl=impl) as s:
        assert positions(s.query([QueryItem(tags=["course:B"])])) == [2]
        with pytest.raises(evstore.ConditionFailed):
            s.append("c", [enrol(3, "B")], condition=Condition([QueryItem(tags=["course:B"])], after=0))
