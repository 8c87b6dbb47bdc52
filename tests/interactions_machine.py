"""The state machine of tests/test_interactions.py without its rules and its checks: the store under
test (open, close and verify, teardown), the draws of streams, events, expected versions and
conditions, the model's verdict on a commit, on a snapshot and on a mark (the store and the model must
agree), and the long-lived read-only reader process. The model itself is tests/interactions_model.py."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine

import evstore
from evstore import ANY, NO_STREAM, STREAM_EXISTS, NewEvent, QueryItem, tools
from evstore.records import AppendResult

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from interactions_model import (  # noqa: E402
    ALL_TYPES,
    CONSUMER_PREFIX,
    LC_TYPES,
    LIFECYCLES,
    TAGS,
    MEvent,
    Model,
    MSnap,
    lifecycle_of,
    skey,
)

SEGMENT_SIZE = 4096
U1 = uuid.UUID("00000000-0000-4000-8000-00000000000a")
U2 = uuid.UUID("ffffffff-ffff-4fff-bfff-fffffffffff0")
POOL: list[Any] = ["s1", "s2", "order-1", "order-2", U1, U2]
SIZES = [0, 1, 30, 300, 1000, 2000, 3000, 3900, 5000]
UPSTREAMS = ["up1", "up2"]
CONSUMERS = ["c1", "c2"]


def pick(data: st.DataObject, seq: Any) -> Any:
    """An element of `seq` drawn the same way whatever its length (the model's state differs between
    runs when a thread race decides it, and hypothesis wants the same draws)."""
    seq = list(seq)
    return seq[data.draw(st.integers(0, 255)) % len(seq)]


def _payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class Refused(Exception):
    """The model's verdict that a commit is refused with `exc`."""

    def __init__(self, exc: type[BaseException]) -> None:
        super().__init__(exc.__name__)
        self.exc = exc


class StoreMachineBase(RuleBasedStateMachine):
    """The machine's state and plumbing; tests/test_interactions.py adds the rules and the checks."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="evs-interactions-")
        self.path = os.path.join(self.dir, "store.evs")
        self.model = Model()
        self.store: evstore.EventStore | None = None
        self.impl = "c"
        self.durability = "os"
        self.n = 0  # a counter for ids, payload seeds and names
        self.committed: list[tuple[list[tuple[Any, list[NewEvent], Any]], list[AppendResult]]] = []
        self.seen_ts: dict[int, int] = {}  # position -> recorded_at_ns first read
        self.extra_streams: list[Any] = []  # proj-*, race-* streams
        self.reader: subprocess.Popen[str] | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def next_n(self) -> int:
        self.n += 1
        return self.n

    def new_id(self) -> uuid.UUID:
        return uuid.UUID(int=(0x5EED << 112) | self.next_n())

    def open(self) -> None:
        self.store = evstore.open(self.path, segment_size=SEGMENT_SIZE, log_impl=self.impl,
                                  durability=self.durability, lifecycles=LIFECYCLES)

    def close_and_verify(self) -> None:
        assert self.store is not None
        self.store.close()
        self.store = None
        rep = tools.verify(self.path)
        assert rep.ok and not rep.problems, f"verify after close: {rep.problems}"
        assert rep.events == self.model.head, (rep.events, self.model.head)

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self.store.close()
        finally:
            self.stop_reader()
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def s(self) -> evstore.EventStore:
        assert self.store is not None
        return self.store

    def all_streams(self) -> list[Any]:
        seen = {skey(s): s for s in POOL + self.extra_streams}
        for m in self.model.streams.values():
            seen.setdefault(skey(m.stream), m.stream)
        return list(seen.values())

    # -- drawing -----------------------------------------------------------------------------

    def draw_events(self, data: st.DataObject, stream: Any, n: int, *, state: str | None = None,
                    ids: bool | None = None) -> list[NewEvent]:
        lc = lifecycle_of(stream)
        with_ids = data.draw(st.booleans()) if ids is None else ids
        out = []
        for _ in range(n):
            follow = data.draw(st.integers(0, 3))  # drawn whatever the stream: the same draws each run
            anyt = pick(data, ALL_TYPES)
            if lc is not None and state is not None and follow:
                t = pick(data, lc.allowed(state) or LC_TYPES)
                state = lc.next_state(state, t) or state
            else:
                pick(data, ALL_TYPES)
                t = anyt
            size = data.draw(st.sampled_from(SIZES))
            meta = _payload(self.next_n(), data.draw(st.sampled_from([0, 0, 5, 100])))
            tags = tuple(data.draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True)))
            schema = data.draw(st.sampled_from([1, 1, 2, 0]))
            out.append(NewEvent(t, _payload(self.next_n(), size), metadata=meta,
                                id=self.new_id() if with_ids else None, schema=schema, tags=tags))
        return out

    def draw_expected(self, data: st.DataObject, stream: Any) -> Any:
        m = self.model.get(stream)
        v = 0 if m is None else m.version
        return data.draw(st.sampled_from([ANY, NO_STREAM, STREAM_EXISTS, v, v, v + 1, max(v - 1, 0), 0]))

    def draw_stream(self, data: st.DataObject) -> Any:
        return pick(data, POOL + self.extra_streams[:4])

    def draw_condition(self, data: st.DataObject) -> evstore.Condition | None:
        if not data.draw(st.integers(0, 3)) == 0:
            return None
        items = data.draw(st.lists(st.tuples(st.lists(st.sampled_from(ALL_TYPES), max_size=2, unique=True),
                                             st.lists(st.sampled_from(TAGS), max_size=2, unique=True)),
                                   min_size=1, max_size=2))
        after = min(data.draw(st.integers(0, 200)), self.model.head + 1)
        return evstore.Condition([QueryItem(tuple(ty), tuple(tg)) for ty, tg in items], after)

    # -- the model's verdict on a commit ----------------------------------------------------------

    def predict(self, parts: list[tuple[Any, list[NewEvent], Any, Any]], tracking: tuple[str, int] | None,
                condition: evstore.Condition | None) -> list[AppendResult] | tuple[str, list[AppendResult]]:
        """The results of a commit (("retry", original results) for an idempotent retry); raises
        Refused(exception class) when it must be refused. Does not change the model."""
        md = self.model
        all_events = [e for p in parts for e in p[1]]
        ids = [e.id.bytes for e in all_events if e.id is not None]
        if ids:
            if len(set(ids)) != len(ids):
                raise Refused(evstore.DuplicateEventId)
            found = [i for i in ids if i in md.ids]
            if found:
                if len(found) != len(all_events):
                    raise Refused(evstore.DuplicateEventId)
                results = []
                for stream, events, _e, _s in parts:
                    evs = [md.ids[e.id.bytes] for e in events]  # type: ignore[union-attr]
                    if any(skey(x.stream) != skey(stream) for x in evs):
                        raise Refused(evstore.DuplicateEventId)  # these ids went to another stream
                    if any((x.type, x.data, x.metadata, x.schema, x.tags) !=
                           (e.type, bytes(e.data), bytes(e.metadata), e.schema, tuple(e.tags))
                           for x, e in zip(evs, events)):
                        raise Refused(evstore.DuplicateEventId)  # the ids of committed events, other events
                    v0, p0 = evs[0].version, evs[0].position
                    if [x.version for x in evs] != list(range(v0, v0 + len(evs))) or \
                            [x.position for x in evs] != list(range(p0, p0 + len(evs))):
                        raise Refused(evstore.DuplicateEventId)
                    results.append(AppendResult(stream, v0, evs[-1].version, p0, evs[-1].position))
                return ("retry", results)
        if condition is not None:
            items = [(tuple(it.types), tuple(it.tags)) for it in condition.items]
            if md.query(items, gt=condition.after):
                raise Refused(evstore.ConditionFailed)
        if tracking is not None and tracking[1] <= md.tracking.get(tracking[0], 0):
            raise Refused(evstore.TrackingConflict)
        pos = md.head + 1
        results = []
        for stream, events, expected, es in parts:
            m = md.get(stream)
            if m is not None and m.tomb:
                raise Refused(evstore.StreamDeleted)
            if m is not None and m.closed:
                raise Refused(evstore.StreamClosed)
            actual = 0 if m is None else m.version
            if expected is NO_STREAM and actual != 0 or expected is STREAM_EXISTS and actual == 0 or \
                    isinstance(expected, int) and expected != actual:
                raise Refused(evstore.WrongExpectedVersion)
            lc = lifecycle_of(stream)
            if lc is not None or es is not None:
                state = md.stream_state(stream)
                if es is not None and state not in ({es} if isinstance(es, str) else set(es)):
                    raise Refused(evstore.WrongExpectedVersion)
                if lc is not None:
                    try:
                        md.apply_state_transitions(stream, [e.type for e in events])
                    except LookupError:
                        raise Refused(evstore.InvalidTransition) from None
            results.append(AppendResult(stream, actual + 1, actual + len(events), pos, pos + len(events) - 1))
            pos += len(events)
        if len({skey(p[0]) for p in parts}) != len(parts):
            raise Refused(ValueError)
        return results

    def apply(self, parts: list[tuple[Any, list[NewEvent], Any, Any]], tracking: tuple[str, int] | None) -> None:
        md = self.model
        for stream, events, _e, _s in parts:
            lc = lifecycle_of(stream)
            new_state = md.apply_state_transitions(stream, [e.type for e in events]) if lc is not None else None
            m = md.ensure(stream)
            for e in events:
                m.version += 1
                me = MEvent(stream, m.version, md.head + 1, e.type, bytes(e.data), bytes(e.metadata), e.id,
                            e.schema, tuple(e.tags))
                md.events.append(me)
                if e.id is not None:
                    md.ids[e.id.bytes] = me
            if lc is not None:
                m.state = new_state
        if tracking is not None:
            md.tracking[tracking[0]] = tracking[1]

    def commit(self, parts: list[tuple[Any, list[NewEvent], Any, Any]], *, tracking: tuple[str, int] | None = None,
               condition: evstore.Condition | None = None, single: bool = False,
               fault: str | None = None) -> None:
        """Run one commit through the store and the model and compare what each says."""
        try:
            want: Any = self.predict(parts, tracking, condition)
        except Refused as r:
            want = r
        try:
            if single:
                stream, events, expected, es = parts[0]
                got: Any = [self.s.append(stream, events, expected_version=expected, expected_state=es,
                                          condition=condition)]
            else:
                got = self.s.append_many([(p[0], p[1], p[2]) for p in parts], tracking=tracking,
                                         condition=condition)
        except Exception as e:  # compared with the model's verdict below
            got = e
        if fault == "index" and isinstance(got, evstore.StorageError):
            return  # a check that reads the index first indexes what is written, and that failed
        if fault is not None and not isinstance(want, Refused) and not isinstance(want, tuple):
            if isinstance(got, evstore.StorageError):
                return  # nothing written: the model is unchanged (checked after the step)
            assert fault != "write", f"a commit on a full disk returned {got!r}"
        if isinstance(want, Refused):
            assert isinstance(got, want.exc), f"expected {want.exc.__name__}, got {got!r}"
            return
        if isinstance(got, Exception):
            raise AssertionError(f"expected {want!r}, got {type(got).__name__}: {got}") from got
        if isinstance(want, tuple):  # an idempotent retry
            assert list(got) == want[1], f"a retry returned {got}, the original was {want[1]}"
            return
        assert list(got) == want, f"results {got}, model {want}"
        self.apply(parts, tracking)
        if parts and all(e.id is not None for p in parts for e in p[1]):
            self.committed.append(([(p[0], p[1], p[2]) for p in parts], list(got)))

    # -- the model's verdict on a snapshot and on a mark ------------------------------------------

    def snapshot(self, stream: Any, snap: MSnap, fault: str | None = None) -> None:
        m = self.model.get(stream)
        if m is not None and m.tomb:
            want: Any = evstore.StreamDeleted
        elif m is None or not m.hidden + 1 <= snap.version <= m.version:
            want = ValueError
        else:
            want = None
        try:
            self.s.save_snapshot(stream, snap.version, snap.data, type=snap.type, schema=snap.schema)
            got: Any = None
        except Exception as e:
            got = e
        if fault is not None and want is None:
            if isinstance(got, evstore.StorageError):
                return
            assert fault != "write", f"a snapshot on a full disk returned {got!r}"
        if want is None:
            assert got is None, f"save_snapshot raised {got!r}"
            assert m is not None
            m.snaps[snap.version] = snap
            self.model.log_snaps.append((skey(stream), snap))
        else:
            assert isinstance(got, want), f"save_snapshot: expected {want.__name__}, got {got!r}"

    def mark(self, stream: Any, what: str, fault: str | None = None) -> None:
        m = self.model.get(stream)
        want: Any = None
        writes = True
        if m is not None and m.tomb:
            want = evstore.StreamDeleted
        elif what == "close":
            writes = not (m is not None and m.closed)
        elif what == "delete":
            writes = not (m is None or (m.version <= m.hidden and m.state is None))
        try:
            if what == "close":
                self.s.close_stream(stream)
            else:
                self.s.delete_stream(stream, tombstone=what == "tombstone")
            got: Any = None
        except Exception as e:
            got = e
        if fault is not None and want is None and writes:
            if isinstance(got, evstore.StorageError):
                return
            assert fault != "write", f"a {what} on a full disk returned {got!r}"
        if want is not None:
            assert isinstance(got, want), f"{what}: expected {want.__name__}, got {got!r}"
            return
        assert got is None, f"{what} raised {got!r}"
        if not writes:
            return
        m = self.model.ensure(stream)
        if what == "close":
            m.closed = True
        elif what == "tombstone":
            m.tomb = True
            m.hidden = max(m.hidden, m.version)
            m.state = None
        else:
            m.hidden = max(m.hidden, m.version)
            m.state = None

    # -- the reader process -------------------------------------------------------------------

    def start_reader(self, impl: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
        self.reader = subprocess.Popen([sys.executable, os.path.join(HERE, "interactions_model.py"), self.path, impl],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.reader.stdout is not None
        line = self.reader.stdout.readline()
        assert line.strip() == "ready", f"the reader did not start: {line!r}"

    def stop_reader(self) -> None:
        r, self.reader = self.reader, None
        if r is not None:
            try:
                assert r.stdin is not None
                r.stdin.write(json.dumps({"quit": True}) + "\n")
                r.stdin.flush()
                r.wait(5)
            except Exception:
                r.kill()
                r.wait()

    def request(self) -> dict[str, Any]:
        streams = [[str(s), isinstance(s, uuid.UUID)] for s in self.all_streams()]
        return {"streams": streams, "tracking": UPSTREAMS + [CONSUMER_PREFIX + c for c in CONSUMERS],
                "tags": list(TAGS), "types": list(ALL_TYPES) + ["Projected"]}
