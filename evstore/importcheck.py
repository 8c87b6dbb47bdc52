"""The checks of `evstore import` against the target store, made before anything is written.

`plan_import` replays the file's commits over a model of the target's stream heads and tracking
positions and refuses (with the line) anything the store would refuse half-way: a version that does
not continue its stream, an append to a closed or tombstoned stream, an event id used twice or used
by another event of the target, a tracking position that does not advance, a snapshot outside its
stream's versions, a commit too large. It returns the commits to write and, of each, the non-event
records to write (records whose effect the target already has are skipped).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evstore.format.layout import COMMIT_SIZE, HEADER_SIZE, KIND_MARK, KIND_SNAPSHOT, KIND_TRACKING
from evstore.errors import EvstoreError
from evstore.engine.indexer import control_at
from evstore.format import codec
from evstore.format.encode import ControlRecord
from evstore.records import NewEvent
from evstore.storage.logfiles import first_position, iter_commits, list_segments


class ImportFileError(EvstoreError, ValueError):
    """A line of an import file is malformed or cannot be imported; nothing of the file was imported."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}; nothing was imported")
        self.line = line
        self.reason = reason


@dataclass
class ImportedEvent:
    line: int
    position: int
    stream: Any
    version: int
    event: NewEvent
    ts: int
    size: int


@dataclass
class ImportedRecord:
    line: int
    extra: ControlRecord
    stream: Any  # the stream (marks, snapshots) or upstream name (tracking), else None


@dataclass
class ImportedCommit:
    line: int
    position: int | None
    ts: int
    events: list[ImportedEvent] = field(default_factory=list)
    records: list[ImportedRecord] = field(default_factory=list)


if TYPE_CHECKING:
    from evstore.store import EventStore


@dataclass
class _StreamState:
    version: int
    hidden: int
    closed: bool
    tombstoned: bool


class _Target:
    """What the target holds, read lazily, and what the commits planned so far change."""

    def __init__(self, s: EventStore | None) -> None:
        self.s = s
        self.streams: dict[Any, _StreamState] = {}
        self.tracking: dict[str, int] = {}
        self.controls: set[ControlRecord] | None = None  # the target log's event-less marks and snapshots

    def stream(self, stream: Any) -> _StreamState:
        st = self.streams.get(stream)
        if st is None:
            s = self.s
            h = None if s is None else s.maintenance.stream_head(stream)
            st = _StreamState(0, 0, False, False) if h is None else _StreamState(*h)
            self.streams[stream] = st
        return st

    def tracked(self, upstream: str) -> int:
        v = self.tracking.get(upstream)
        if v is None:
            v = self.tracking[upstream] = 0 if self.s is None else self.s.max_tracking(upstream) or 0
        return v

    def id_position(self, idb: bytes) -> int | None:
        return None if self.s is None else self.s.maintenance.event_id_position(idb)

    def holds_record(self, x: ControlRecord) -> bool:
        """Whether the target's log holds this very mark or SNAPSHOT record in a commit without events
        (whatever its effect now: a snapshot replaced at its version, at or below a soft delete, before
        a tombstone, or pruned; a mark that later ones overrode). A repeated import skips those."""
        if self.s is None:
            return False
        if self.controls is None:
            self.controls = set()
            logdir = os.path.join(self.s.path, "log")
            impl = codec.load(self.s.log_implementation)
            segs = list_segments(logdir, impl)
            for c in iter_commits(impl, segs, first_position(self.s.path, impl)):
                if c.n_events:
                    continue
                for o in c.records[:-1]:
                    if c.buf[o + 8] in (KIND_MARK, KIND_SNAPSHOT):
                        self.controls.add(control_at(c.buf, o))
        return x in self.controls


def _fail(line: int, reason: str) -> EvstoreError:
    return ImportFileError(line, reason)


def _same(rec: Any, e: ImportedEvent) -> bool:
    ev = e.event
    return bool(rec.stream == e.stream and rec.version == e.version and rec.type == ev.type
                and bytes(rec.data) == ev.data and bytes(rec.metadata) == ev.metadata
                and rec.schema == ev.schema and tuple(rec.tags) == tuple(dict.fromkeys(ev.tags)))


def plan_import(s: EventStore | None, commits: list[ImportedCommit], *,
                merge: bool) -> list[tuple[ImportedCommit, list[ImportedRecord]]]:
    """The commits to write (with the non-event records of each to write), or `ImportFileError`.
    `s` None: a target that does not exist yet (checked as an empty store)."""
    from evstore.format.encode import MAX_COMMIT_BYTES

    head = 0 if s is None else s.head()
    if s is not None and head and not merge:
        raise EvstoreError(f"{s.path} is not empty (head {head}); pass --merge to import into it")
    exact = head == 0 and not merge
    t = _Target(s)
    file_ids: dict[uuid.UUID, int] = {}
    next_pos = 1
    todo: list[tuple[ImportedCommit, list[ImportedRecord]]] = []
    for c in commits:
        if exact and c.position != next_pos:
            raise _fail(c.line, f"the commit starts at position {c.position}, not {next_pos}: import a whole "
                        "export into an empty store, or pass --merge")
        next_pos += len(c.events)
        runs: list[Any] = []
        for e in c.events:
            eid = e.event.id
            assert eid is not None
            if eid in file_ids:
                raise _fail(e.line, f"event id {eid} repeats the event of line {file_ids[eid]}")
            file_ids[eid] = e.line
            if not runs or runs[-1] != e.stream:
                if e.stream in runs:
                    raise _fail(e.line, f"the events of stream {e.stream!r} in one commit must be consecutive")
                runs.append(e.stream)
        found = [t.id_position(e.event.id.bytes) for e in c.events]  # type: ignore[union-attr]
        if c.events and all(p is not None for p in found):
            for e, p in zip(c.events, found):
                rec = None if s is None else s.event_at(p)  # type: ignore[arg-type]
                if rec is None or not _same(rec, e):
                    raise _fail(e.line, f"event id {e.event.id} is used by a different event at position {p} "
                                "of the target")
            continue  # the whole commit is in the target already
        for e, p in zip(c.events, found):
            if p is not None:
                raise _fail(e.line, f"event id {e.event.id} is in the target already (position {p}), but other "
                            "events of its commit are not")
        size = COMMIT_SIZE
        for e in c.events:
            st = t.stream(e.stream)
            if st.tombstoned:
                raise _fail(e.line, f"stream {e.stream!r} is tombstoned (in the target or earlier in the file)")
            if st.closed:
                raise _fail(e.line, f"stream {e.stream!r} is closed (in the target or earlier in the file)")
            if e.version != st.version + 1:
                raise _fail(e.line, f"version {e.version} of stream {e.stream!r} does not follow version "
                            f"{st.version} (of the target and the lines before)")
            st.version = e.version
            size += e.size
        records = []
        for r in c.records:
            x = r.extra
            size += HEADER_SIZE + len(x.stream) + len(x.name) + len(x.data)
            if _plan_record(t, r, has_events=bool(c.events)):
                records.append(r)
        if size > MAX_COMMIT_BYTES:
            raise _fail(c.line, f"a commit of {size} bytes exceeds the limit of {MAX_COMMIT_BYTES}")
        if c.events or records:
            todo.append((c, records))
    return todo


def _plan_record(t: _Target, r: ImportedRecord, *, has_events: bool) -> bool:
    """Check one non-event record against the model (and apply it); False when it is to be skipped
    (a record of a commit without events whose effect the target already has)."""
    x = r.extra
    if x.kind == KIND_TRACKING:
        name = str(r.stream)
        cur = t.tracked(name)
        if not has_events and t.s is not None and t.s.has_tracking(name, x.version):
            return False
        if x.version <= cur:
            raise _fail(r.line, f"tracking {name!r} at position {x.version} does not follow position {cur}")
        t.tracking[name] = x.version
        return True
    if x.kind not in (KIND_MARK, KIND_SNAPSHOT):
        return True  # aux: a keyed value, written as it is
    if not has_events and t.holds_record(x):
        return False  # a repeated import: the target's log already holds this record
    st = t.stream(r.stream)
    if x.kind == KIND_SNAPSHOT:
        if st.tombstoned:
            raise _fail(r.line, f"a snapshot of stream {r.stream!r}, which is tombstoned")
        if not 1 <= x.version <= st.version:
            raise _fail(r.line, f"a snapshot of stream {r.stream!r} at version {x.version}, outside 1..{st.version}")
        return True
    mark = x.name
    if mark == b"$closed":
        if st.closed and not has_events:
            return False
        if st.tombstoned:
            raise _fail(r.line, f"stream {r.stream!r} is closed after it was tombstoned")
        st.closed = True
    elif mark == b"$tombstone":
        if st.tombstoned and not has_events:
            return False
        st.tombstoned = True
        st.hidden = max(st.hidden, x.version)
    elif mark == b"$deleted":
        if x.version > st.version:
            raise _fail(r.line, f"stream {r.stream!r} is deleted up to version {x.version}, past its version "
                        f"{st.version}")
        if st.hidden >= x.version and not has_events:
            return False
        st.hidden = max(st.hidden, x.version)
    return True
