"""Interactions: a random mix of every operation against one store and an in-memory model of what it
must hold, checked after every step.

Operations: appends (str and UUID streams; expected versions right, wrong, ANY, NO_STREAM,
STREAM_EXISTS; expected states; conditions; caller event ids, retries of committed appends and ids
reused with other content or in another shape), append_many with and without tracking, tracking-only
commits, tags and queries, snapshots (save, load, prune), close_stream, delete_stream (soft and
tombstone), lifecycle-bound streams, events of varied sizes at a 4 KiB segment size (so that segments
roll often, also on commits without events), consumers whose handler appends, close and reopen with
either log implementation and durability, reindex, export then import into a fresh store, a
long-lived read-only reader process, a full disk for one step, and close() from another thread while
appends run.

Checks after every step: head, versions, stream reads (gt/lte/desc/limit), read_all (with and without
types), queries by tag, snapshots, stream info and state, tracking, gapless positions and contiguous
versions, every acknowledged event byte for byte and nothing else; `verify` clean after each close.

The default run is short and derandomized; `python -m pytest --long tests/test_interactions.py` runs
the long, randomized one (hypothesis prints the failing steps and a reproduction blob).

The machine's plumbing, draws and the model's verdicts are in tests/interactions_machine.py, the model
in tests/interactions_model.py; this module holds the rules (the operations), the checks and the test.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sys
import threading
import time
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import evstore
from evstore import ANY, NewEvent, QueryItem, tools
from evstore.records import AppendResult

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/: the machine and the model

from interactions_machine import (  # noqa: E402
    CONSUMERS,
    POOL,
    SIZES,
    UPSTREAMS,
    Refused,
    StoreMachineBase,
    _payload,
    pick,
)
from interactions_model import (  # noqa: E402
    ALL_TYPES,
    CONSUMER_PREFIX,
    LIFECYCLES,
    TAGS,
    MEvent,
    Model,
    MSnap,
    MStream,
    digest,
    lifecycle_of,
    skey,
)

settings.register_profile(
    "interactions-short", max_examples=15, stateful_step_count=25, derandomize=True, deadline=None,
    database=None, print_blob=True, phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "interactions-long", max_examples=400, stateful_step_count=80, derandomize=False, deadline=None,
    database=None, print_blob=True, suppress_health_check=list(HealthCheck),
)


class FaultyLog(types.ModuleType):
    """The log implementation whose pwrite writes half the commit and then fails with ENOSPC."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__("faulty")
        self.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__") and k != "pwrite"})

    def pwrite(self, fd: int, buf: Any, offset: int) -> None:  # type: ignore[override]
        os.pwrite(fd, bytes(buf[: len(buf) // 2]), offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDiskOs:
    """The `os` module as evstore.storage.segments sees it on a full disk: creating a segment fails with ENOSPC."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class StoreMachine(StoreMachineBase):
    """The rules (one per operation) and the checks after every step."""

    # -- rules ---------------------------------------------------------------------------------

    @initialize(impl=st.sampled_from(["c", "python"]), durability=st.sampled_from(["fsync", "os"]))
    def start(self, impl: str, durability: str) -> None:
        self.impl, self.durability = impl, durability
        self.open()

    @rule(impl=st.sampled_from(["c", "python"]), durability=st.sampled_from(["fsync", "os"]))
    def reopen(self, impl: str, durability: str) -> None:
        self.close_and_verify()
        self.impl, self.durability = impl, durability
        self.open()

    @rule(data=st.data())
    def append(self, data: st.DataObject) -> None:
        stream = self.draw_stream(data)
        state = self.model.stream_state(stream) if lifecycle_of(stream) is not None else None
        events = self.draw_events(data, stream, data.draw(st.integers(1, 3)), state=state)
        es = None
        if data.draw(st.integers(0, 4)) == 0:
            es = data.draw(st.sampled_from(["new", "open", "paid", ("open", "paid"), "nope"]))
        self.commit([(stream, events, self.draw_expected(data, stream), es)],
                    condition=self.draw_condition(data), single=True)

    @rule(data=st.data())
    def append_many(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(0, 3))
        streams = [self.draw_stream(data) for _ in range(n)]
        parts = []
        for stream in streams:
            state = self.model.stream_state(stream) if lifecycle_of(stream) is not None else None
            parts.append((stream, self.draw_events(data, stream, data.draw(st.integers(1, 2)), state=state),
                          self.draw_expected(data, stream), None))
        tracking = None
        if not parts or data.draw(st.booleans()):
            name = data.draw(st.sampled_from(UPSTREAMS))
            cur = self.model.tracking.get(name, 0)
            tracking = (name, max(1, cur + data.draw(st.sampled_from([-1, 0, 1, 1, 2, 7]))))
        self.commit(parts, tracking=tracking, condition=self.draw_condition(data))

    @precondition(lambda self: self.committed)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A committed append again: as it was, with other content under the same ids, or its ids in
        another shape (moved into one stream), or one of its ids among new ones."""
        appends, _results = pick(data, self.committed)
        how = data.draw(st.sampled_from(["same", "same", "other-content", "wrong-version", "one-stream",
                                         "mixed"]))
        parts = [(s, list(ev), exp, None) for s, ev, exp in appends]
        if how == "other-content":
            parts = [(s, [NewEvent(e.type, e.data + b"!", id=e.id) for e in ev], exp, None) for s, ev, exp, _ in parts]
        elif how == "wrong-version":
            parts = [(s, ev, 10**6, None) for s, ev, _exp, _ in parts]
        elif how == "one-stream":
            parts = [(parts[0][0], [e for p in parts for e in p[1]], ANY, None)]
        elif how == "mixed":
            s0 = parts[0][0]
            fresh = self.draw_events(data, s0, 1, ids=True)
            parts = [(s0, fresh + [parts[0][1][0]], ANY, None)]
        self.commit(parts, single=len(parts) == 1 and data.draw(st.booleans()))

    @rule(data=st.data())
    def save_snapshot(self, data: st.DataObject) -> None:
        stream = self.draw_stream(data)
        m = self.model.get(stream)
        v = 0 if m is None else m.version
        h = 0 if m is None else m.hidden
        version = data.draw(st.sampled_from([v, v, max(v - 1, 0), h, h + 1, v + 1, 0]))
        snap = MSnap(version, data.draw(st.sampled_from(["S1", "S2"])),
                     _payload(self.next_n(), data.draw(st.sampled_from(SIZES))), data.draw(st.sampled_from([1, 2])))
        self.snapshot(stream, snap)

    @rule(data=st.data())
    def prune_snapshots(self, data: st.DataObject) -> None:
        stream = data.draw(st.sampled_from([None, *POOL]))
        keep = data.draw(st.integers(0, 2))
        want = 0
        for k, m in self.model.streams.items():
            if stream is not None and k != skey(stream):
                continue
            vs = sorted(m.snaps)
            for v in vs[: max(len(vs) - keep, 0)]:
                del m.snaps[v]
                want += 1
        assert self.s.prune_snapshots(stream, keep=keep) == want

    @rule(data=st.data())
    def close_stream(self, data: st.DataObject) -> None:
        self.mark(self.draw_stream(data), "close")

    @rule(data=st.data(), tombstone=st.booleans())
    def delete_stream(self, data: st.DataObject, tombstone: bool) -> None:
        self.mark(self.draw_stream(data), "tombstone" if tombstone else "delete")

    @rule(name=st.sampled_from(CONSUMERS), limit=st.integers(1, 5), every=st.integers(1, 3))
    def consume(self, name: str, limit: int, every: int) -> None:
        proj = f"proj-{name}"
        if proj not in self.extra_streams:
            self.extra_streams.append(proj)
        md = self.model
        start = md.tracking.get(CONSUMER_PREFIX + name, 0)
        seen: list[int] = []

        def handler(event: evstore.RecordedEvent, ctx: Any) -> None:
            seen.append(event.position)
            if len(event.data) % 2 == 0:
                ctx.append(proj, [NewEvent("Projected", str(event.position).encode(), tags=("t3",))])

        try:
            got: Any = self.s.consume(name, handler, timeout=0, limit=limit, checkpoint_every=every)
        except Exception as e:  # compared with the model below
            got = e
        # the model: events after start in position order (the projection's own among them); an event
        # whose effects cannot be committed ends the run with the refusal, and is not checkpointed
        tname = CONSUMER_PREFIX + name
        handled: list[int] = []
        i, unsaved, last_ok, fail = start, 0, start, None
        while len(handled) < limit and i < md.head:
            e = md.events[i]
            handled.append(e.position)
            if len(e.data) % 2 == 0:
                parts = [(proj, [NewEvent("Projected", str(e.position).encode(), tags=("t3",))], ANY, None)]
                try:
                    self.predict(parts, (tname, e.position), None)
                except Refused as r:
                    fail = r.exc
                    break
                self.apply(parts, (tname, e.position))
                unsaved = 0
            else:
                unsaved += 1
                if unsaved >= every:
                    md.tracking[tname] = e.position
                    unsaved = 0
            last_ok = e.position
            i += 1
        if unsaved:
            md.tracking[tname] = last_ok
        assert seen == handled, f"consumer {name} handled {seen}, the model says {handled}"
        if fail is not None:
            assert isinstance(got, fail), f"consume: expected {fail.__name__}, got {got!r}"
        else:
            assert not isinstance(got, Exception), f"consume raised {got!r}"
            assert (got.handled, got.position) == (len(handled), handled[-1] if handled else start)

    @rule()
    def reindex(self) -> None:
        self.close_and_verify()
        assert tools.reindex(self.path) == self.model.head
        self.model.rebuild_snapshot_index()
        self.open()

    @rule()
    def export_import(self) -> None:
        """Export, import into a fresh store, export again (the same file), import again with merge (a
        no-op); the copy serves what the store serves (its snapshot index whole, as after a rebuild)."""
        buf = io.StringIO()
        n = tools.export(self.path, buf)
        assert getattr(n, "events", n) == self.model.head
        text = buf.getvalue()
        other = os.path.join(self.dir, f"import-{self.next_n()}.evs")
        try:
            assert tools.import_events(other, io.StringIO(text)) == self.model.head
            again = io.StringIO()
            tools.export(other, again)
            assert again.getvalue() == text, "export | import | export differs"
            tools.import_events(other, io.StringIO(text), merge=True)  # the kept ids make it a no-op
            third = io.StringIO()
            tools.export(other, third)
            assert third.getvalue() == text, "a second import with merge changed the store"
            req = self.request()
            mine = json.loads(json.dumps(digest(self.s, req)))
            with evstore.open(other, lifecycles=LIFECYCLES) as copy:
                theirs = json.loads(json.dumps(digest(copy, req)))
                rebuilt = Model(streams={k: MStream(m.stream, m.version, m.hidden, m.closed, m.tomb, m.state)
                                         for k, m in self.model.streams.items()}, log_snaps=self.model.log_snaps)
                rebuilt.rebuild_snapshot_index()
                for stream in self.all_streams():
                    m = rebuilt.get(stream)
                    if m is None or m.tomb:
                        continue
                    snap, ms = copy.load_snapshot(stream), rebuilt.load_snapshot(stream)
                    assert (None if snap is None else (snap.version, snap.type, snap.data, snap.schema)) == \
                        (None if ms is None else (ms.version, ms.type, ms.data, ms.schema)), f"imported snapshot of {stream!r}"
            for d in (mine, theirs):
                for v in d["per"].values():
                    v.pop("snap", None)
            diff = [k for k in mine if mine[k] != theirs.get(k)]
            assert not diff, f"the imported store differs in {diff}: {str({k: theirs.get(k) for k in diff})[:1500]} " \
                             f"vs {str({k: mine[k] for k in diff})[:1500]}"
        finally:
            shutil.rmtree(other, ignore_errors=True)

    # -- a full disk for one step ---------------------------------------------------------------

    @rule(data=st.data(), fault=st.sampled_from(["write", "segment", "index"]),
          op=st.sampled_from(["append", "snapshot", "close", "tracking", "tombstone"]))
    def disk_full(self, data: st.DataObject, fault: str, op: str) -> None:
        core = self.s._core
        assert core is not None
        import evstore.storage.segments as log_mod

        real_impl, real_os = core.log.impl, log_mod.os
        if fault == "write":  # the log's write fails half-way
            core.log.impl = FaultyLog(real_impl)
        elif fault == "segment":  # creating a segment fails
            log_mod.os = FullDiskOs()  # type: ignore[assignment]
        else:  # the index cannot be written: commits go on in the log, the index catches up later

            def full(batch: Any) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            core.index.write = full  # type: ignore[method-assign]
        try:
            stream = self.draw_stream(data)
            if op == "append":
                state = self.model.stream_state(stream) if lifecycle_of(stream) is not None else None
                events = self.draw_events(data, stream, data.draw(st.integers(1, 2)), state=state)
                self.commit([(stream, events, ANY, None)], single=True, fault=fault)
            elif op == "tracking":
                name = data.draw(st.sampled_from(UPSTREAMS))
                self.commit([], tracking=(name, self.model.tracking.get(name, 0) + 1), fault=fault)
            elif op == "snapshot":
                m = self.model.get(stream)
                self.snapshot(stream, MSnap(0 if m is None else m.version, "S1",
                                            _payload(self.next_n(), data.draw(st.sampled_from(SIZES))), 1),
                              fault=fault)
            else:
                self.mark(stream, op, fault=fault)
        finally:
            core.log.impl = real_impl
            log_mod.os = real_os
            core.index.__dict__.pop("write", None)  # space returns

    # -- close() from another thread while appends run ------------------------------------------------

    @rule(threads=st.integers(1, 4), per=st.integers(1, 6), delay=st.sampled_from([0.0, 0.001, 0.005, 0.02]))
    def close_while_appending(self, threads: int, per: int, delay: float) -> None:
        store = self.s
        tag = self.next_n()
        outcomes: list[list[tuple[list[NewEvent], Any]]] = [[] for _ in range(threads)]
        names = [f"race-{tag}-{i}" for i in range(threads)]

        def work(i: int) -> None:
            for _ in range(per):
                evs = [NewEvent("A", _payload(tag * 100 + i, 50), id=self.new_id()) for _ in range(2)]
                try:
                    outcomes[i].append((evs, store.append(names[i], evs)))
                except BaseException as e:  # judged below
                    outcomes[i].append((evs, e))
                    if isinstance(e, evstore.StoreClosed):
                        return

        ts = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
        for t in ts:
            t.start()
        time.sleep(delay)
        store.close()
        for t in ts:
            t.join(20)
            assert not t.is_alive(), "an append hung after close() from another thread"
        self.store = None
        rep = tools.verify(self.path)
        assert rep.ok and not rep.problems, f"verify after a close during appends: {rep.problems}"
        self.open()
        extra = list(self.s.read_all(gt=self.model.head))
        by_id = {e.id: e for e in extra}
        for i in range(threads):
            for evs, res in outcomes[i]:
                present = [e.id in by_id for e in evs]
                assert all(present) or not any(present), "a commit is partly present after close()"
                if isinstance(res, AppendResult):
                    assert all(present), f"an acknowledged append is missing after close(): {res}"
                    assert [by_id[e.id].position for e in evs] == [res.first_position, res.last_position]
                elif isinstance(res, evstore.StoreClosed):
                    assert not any(present), "an append refused with StoreClosed was written"
                else:
                    assert isinstance(res, evstore.EvstoreError), \
                        f"an append racing close() raised a non-evstore error: {type(res).__name__}: {res}"
        # the model takes what the log holds, in position order
        ids = {e.id: (i, evs) for i in range(threads) for evs, _r in outcomes[i] for e in evs}
        for e in extra:
            i, evs = ids[e.id]
            if e.id != evs[0].id:
                continue
            self.apply([(names[i], evs, ANY, None)], None)
        self.extra_streams.extend(n for n in names if self.model.get(n) is not None)

    # -- the reader process -------------------------------------------------------------------

    @precondition(lambda self: self.reader is None)
    @rule(impl=st.sampled_from(["c", "python"]))
    def reader_open(self, impl: str) -> None:
        self.start_reader(impl)

    @precondition(lambda self: self.reader is not None)
    @rule()
    def reader_check(self) -> None:
        r = self.reader
        assert r is not None and r.stdin is not None and r.stdout is not None
        req = self.request()
        # The writer's digest first: its reads index every durable commit before they read (read your
        # writes). The reader may still be behind for a moment: other processes see commits ~20 ms
        # later, and a reader follows an index rebuilt under it (reindex, recover) at its next look,
        # at most 100 ms later (`Core.follow_rebuilt_index`). So it is asked again until it agrees,
        # for at most 2 s: what it must never do is stay on another state.
        mine = json.loads(json.dumps(digest(self.s, req)))
        deadline = time.monotonic() + 2.0
        while True:
            r.stdin.write(json.dumps(req) + "\n")
            r.stdin.flush()
            line = r.stdout.readline()
            assert line, f"the reader process died (exit {r.poll()})"
            got = json.loads(line)
            assert got["ok"], f"the reader failed: {got['error']}"
            if got["digest"] == mine:
                return
            if time.monotonic() > deadline:
                diff = [k for k in mine if got["digest"].get(k) != mine[k]]
                raise AssertionError(f"the reader sees something else than the writer in {diff}: "
                                     f"reader {str({k: got['digest'].get(k) for k in diff})[:1500]} "
                                     f"writer {str({k: mine[k] for k in diff})[:1500]}")
            time.sleep(0.05)

    # -- the checks after every step ------------------------------------------------------------

    def rows(self, events: Any) -> list[tuple[Any, ...]]:
        return [(e.stream, e.version, e.position, e.type, e.data, e.metadata, e.schema, tuple(sorted(e.tags)))
                for e in events]

    def check_ids(self, got: list[evstore.RecordedEvent], want: list[MEvent]) -> None:
        for g, w in zip(got, want):
            if w.id is None:
                w.id = g.id  # drawn by the store: learnt on first sight, fixed from then on
            assert g.id == w.id, f"event at {g.position} has id {g.id}, was {w.id}"
            ts = self.seen_ts.setdefault(g.position, g.recorded_at_ns)
            assert ts == g.recorded_at_ns, f"event at {g.position} changed its time"

    @invariant()
    def everything_matches(self) -> None:
        if self.store is None:
            return
        s, md = self.s, self.model
        assert s.head() == md.head, f"head {s.head()}, model {md.head}"
        got_all = list(s.read_all())
        assert self.rows(got_all) == [e.row() for e in md.events], "read_all differs from the model"
        assert [e.position for e in got_all] == list(range(1, md.head + 1)), "positions are not gapless"
        self.check_ids(got_all, md.events)
        k = md.head // 2
        assert self.rows(s.read_all(gt=k, limit=3)) == [e.row() for e in md.events[k : k + 3]]
        assert self.rows(s.read_all(gt=1, lte=max(md.head - 1, 1))) == [e.row() for e in md.events[1 : md.head - 1]]
        for t in ALL_TYPES + ("Projected",):
            want = [e.row() for e in md.events if e.type == t]
            assert self.rows(s.read_all(types=[t])) == want, f"read_all(types=[{t!r}])"
            assert self.rows(s.read_all(types=[t], gt=k, limit=2)) == [r for r in want if r[2] > k][:2]
        assert self.rows(s.read_all(types=["A", "Paid"])) == [e.row() for e in md.events if e.type in ("A", "Paid")]
        for tag in TAGS:
            assert self.rows(s.query([QueryItem(tags=[tag])])) == [e.row() for e in md.query([((), (tag,))])], tag
        q = [QueryItem(types=("A", "Placed"), tags=("t1",)), QueryItem(types=("B",))]
        assert self.rows(s.query(q, gt=1)) == [e.row() for e in md.query([(("A", "Placed"), ("t1",)), (("B",), ())], gt=1)]
        per_stream: dict[bytes, list[int]] = {}
        for e in got_all:
            per_stream.setdefault(skey(e.stream), []).append(e.version)
        for key, vs in per_stream.items():
            assert vs == list(range(1, len(vs) + 1)), f"versions of {key!r} are not contiguous: {vs}"
        want_streams = sorted(((skey(m.stream), m.version) for m in md.streams.values()))
        got_streams = [(skey(st_), v) for st_, v in s.streams()]
        assert got_streams == want_streams, f"streams() {got_streams}, model {want_streams}"
        for stream in self.all_streams():
            self.check_stream(stream)
        for name in UPSTREAMS + [CONSUMER_PREFIX + c for c in CONSUMERS]:
            assert s.max_tracking(name) == md.tracking.get(name), f"max_tracking({name!r})"
        for p in (1, md.head, md.head + 1):
            e = s.event_at(p)
            assert (None if e is None else self.rows([e])[0]) == (md.events[p - 1].row() if 1 <= p <= md.head else None)

    def check_stream(self, stream: Any) -> None:
        s, md = self.s, self.model
        m = md.get(stream)
        assert s.stream_version(stream) == (0 if m is None else m.version), f"stream_version({stream!r})"
        info = s.stream_info(stream)
        if m is None:
            assert info is None, f"stream_info({stream!r}) = {info}, the stream has no head"
        else:
            assert info is not None, f"stream_info({stream!r}) is None"
            assert (info.version, info.closed, info.deleted, info.tombstoned, info.state) == \
                (m.version, m.closed, m.tomb or 0 < m.hidden >= m.version, m.tomb, m.state), f"stream_info({stream!r}) = {info}, model {m}"
        assert s.stream_state(stream) == md.stream_state(stream), f"stream_state({stream!r})"
        if m is not None and m.tomb:
            with pytest.raises(evstore.StreamDeleted):
                s.read_stream(stream)
            with pytest.raises(evstore.StreamDeleted):
                s.load_snapshot(stream)
            return
        vis = [e.row() for e in md.visible(stream)]
        assert self.rows(s.read_stream(stream)) == vis, f"read_stream({stream!r})"
        v = 0 if m is None else m.version
        assert self.rows(s.read_stream(stream, desc=True)) == vis[::-1]
        assert self.rows(s.read_stream(stream, gt=1, lte=max(v - 1, 0))) == [r for r in vis if 1 < r[1] <= v - 1]
        assert self.rows(s.read_stream(stream, desc=True, limit=2)) == vis[::-1][:2]
        assert self.rows(s.read_stream(stream, gt=v - 2 if v >= 2 else 0, limit=1)) == \
            [r for r in vis if r[1] > v - 2][:1]
        for lte in (None, v - 1):
            if lte is not None and lte < 0:
                continue
            snap = s.load_snapshot(stream, lte=lte)
            ms = md.load_snapshot(stream, lte)
            got = None if snap is None else (snap.version, snap.type, snap.data, snap.schema)
            want = None if ms is None else (ms.version, ms.type, ms.data, ms.schema)
            assert got == want, f"load_snapshot({stream!r}, lte={lte}) = {str(got)[:200]}, model {str(want)[:200]}"


StoreMachine.TestCase.settings = settings.get_profile("interactions-short")


def test_interactions(pytestconfig: pytest.Config) -> None:
    """Short and derandomized by default; with --long, long and random (repeat a failing long run with
    `--hypothesis-seed=N`, N from hypothesis's report, or with the printed reproduction blob)."""
    long = pytestconfig.getoption("--long")
    run_state_machine_as_test(StoreMachine, settings=settings.get_profile(
        "interactions-long" if long else "interactions-short"))
