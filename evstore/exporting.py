"""`evstore export` and `evstore import`: every record of a log as JSON lines, commit by commit.

An export file holds one JSON object per line, in log order. Each commit is its records followed by
one commit line:

    {"kind":"event","position":..,"stream":..,"stream_kind":"str"|"uuid","version":..,"type":..,
     "id":..,"schema":..,"recorded_at_ns":..,["tags":[..],]"data_b64":..,"metadata_b64":..}
    {"kind":"mark"|"snapshot"|"tracking"|"aux","stream":..,"stream_kind":..,"type":..,"version":..,
     "schema":..,"data_b64":..}
    {"kind":"commit","position":..,"events":..,"recorded_at_ns":..}

Non-event records carry the fields of docs/log_format.md: a mark's `type` is its name (`$closed`,
`$deleted`, `$tombstone`, `$state`), a snapshot's its type; a tracking record's `stream` is the
upstream name and `version` the upstream position. A commit line gives the commit's first position,
its number of events and its time. Files of older versions (event lines without `kind`, no commit
lines) are read too: each run of one stream's events with one time becomes a commit.

`import` checks the whole file against the target before it writes anything (see `import_file`).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import evstore
from evstore.format import codec as _impl
from evstore.engine.checks import MAX_EVENT_BYTES, check_name, check_stream, tracking_name, validate_events
from evstore.format.encode import ControlRecord
from evstore.format.layout import (
    FLAG_UUID_STREAM,
    HEADER,
    HEADER_SIZE,
    KIND_AUX,
    KIND_EVENT,
    KIND_MARK,
    KIND_SNAPSHOT,
    KIND_TRACKING,
)
from evstore.storage.logfiles import first_position, iter_commits, list_segments
from evstore.errors import CorruptedError, EvstoreError
from evstore.records import RecordedEvent, record_from_bytes
from evstore.importcheck import ImportedCommit, ImportedEvent, ImportedRecord, ImportFileError
from evstore.recovery import store_dir

Progress = Callable[[int], None]

KIND_NAMES = {KIND_MARK: "mark", KIND_SNAPSHOT: "snapshot", KIND_TRACKING: "tracking", KIND_AUX: "aux"}
KINDS_BY_NAME = {v: k for k, v in KIND_NAMES.items()}
MAX_TIME_NS = (1 << 63) - 1


def _no_progress(_n: int) -> None:
    pass


def event_json(e: RecordedEvent, *, exact: bool) -> dict[str, Any]:
    """An event as a JSON-able dict. `exact`: data and metadata in base64 (byte-exact round trip);
    otherwise as JSON when they parse as JSON, else base64 (key `data_b64`)."""
    stream = e.stream
    d: dict[str, Any] = {
        "position": e.position,
        "stream": str(stream),
        "stream_kind": "str" if isinstance(stream, str) else "uuid",
        "version": e.version,
        "type": e.type,
        "id": str(e.id),
        "schema": e.schema,
        "recorded_at_ns": e.recorded_at_ns,
    }
    if e.tags:
        d["tags"] = list(e.tags)
    for name, raw in (("data", e.data), ("metadata", e.metadata)):
        if not exact:
            try:
                d[name] = json.loads(raw) if raw else None
                continue
            except ValueError:
                pass
        d[name + "_b64"] = base64.b64encode(raw).decode()
    return d


def record_json(buf: Any, off: int, h: tuple[Any, ...]) -> dict[str, Any]:
    """A non-event record (mark, snapshot, tracking, aux) as a JSON-able dict (byte-exact)."""
    s = off + HEADER_SIZE
    sb = bytes(buf[s : s + h[5]])
    tb = bytes(buf[s + h[5] : s + h[5] + h[4]])
    data = bytes(buf[s + h[5] + h[4] + h[12] + h[6] : off + h[1]])
    is_uuid = bool(h[3] & FLAG_UUID_STREAM)
    return {
        "kind": KIND_NAMES[h[2]],
        "stream": str(uuid.UUID(bytes=sb)) if is_uuid else sb.decode("utf-8", "surrogateescape"),
        "stream_kind": "uuid" if is_uuid else "str",
        "type": tb.decode("utf-8", "surrogateescape"),
        "version": h[8],
        "schema": h[11],
        "data_b64": base64.b64encode(data).decode(),
    }


@dataclass
class ExportCount:
    events: int = 0
    records: int = 0  # non-event records
    commits: int = 0


def _line(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":")) + "\n"


def export(path: str, out: IO[str], *, gt: int = 0, progress: Progress = _no_progress) -> int:
    """`export_records`, returning the number of events written."""
    return export_records(path, out, gt=gt, progress=progress).events


def export_records(path: str, out: IO[str], *, gt: int = 0, progress: Progress = _no_progress) -> ExportCount:
    """Write every commit of the log (its events after position `gt`, and its other records) as JSON
    lines, byte-exact; read from the log itself, up to its last whole commit."""
    real = store_dir(path)
    impl = _impl.load()
    segs = list_segments(os.path.join(real, "log"), impl)
    chain = _checked_chain(real, segs, impl)
    n = ExportCount()
    for c in iter_commits(impl, chain, first_position(real, impl)):
        last = c.first_position + c.n_events - 1
        if (c.n_events and last <= gt) or (not c.n_events and c.first_position <= gt):
            continue
        buf = c.buf
        events = 0
        for o in c.records[:-1]:
            h = HEADER.unpack_from(buf, o)
            if h[2] == KIND_EVENT:
                if h[7] <= gt:
                    continue
                out.write(_line({"kind": "event", **event_json(record_from_bytes(bytes(buf[o : o + h[1]])),
                                                                 exact=True)}))
                events += 1
            else:
                out.write(_line(record_json(buf, o, h)))
                n.records += 1
        first = max(c.first_position, gt + 1) if c.n_events else c.first_position
        out.write(_line({"kind": "commit", "position": first, "events": events, "recorded_at_ns": c.recorded_at_ns}))
        n.events += events
        n.commits += 1
        progress(events)
    return n


def _checked_chain(real: str, segs: list[Any], impl: Any) -> list[Any]:
    """The segments in order, or CorruptedError when the log is damaged before its end."""
    from evstore.recovery import verify

    rep = verify(real)
    if not rep.ok:
        p = next(p for p in rep.problems if not p.torn_tail)
        raise CorruptedError(p.path, p.offset, p.reason)
    return [s for s in segs if s.first is not None]


# -- import ------------------------------------------------------------------------------------


_EVENT_FIELDS = {"position": int, "stream": str, "stream_kind": str, "version": int, "type": str, "id": str,
                 "schema": int, "recorded_at_ns": int}
_RECORD_FIELDS = {"stream": str, "stream_kind": str, "type": str, "version": int, "schema": int, "data_b64": str}
_COMMIT_FIELDS = {"position": int, "events": int, "recorded_at_ns": int}


def _fields(n: int, d: dict[str, Any], spec: Mapping[str, type]) -> None:
    for k, t in spec.items():
        v = d.get(k)
        if not isinstance(v, t) or isinstance(v, bool):
            raise ImportFileError(n, f"field {k!r} is missing or not a {t.__name__}")


def _payload(n: int, d: dict[str, Any], name: str) -> bytes:
    """`name`_b64 (exact bytes), or `name` as a JSON value (as `evstore read --format jsonl` prints
    it: stored as compact JSON text, null as no bytes)."""
    if name + "_b64" in d:
        if name in d:
            raise ImportFileError(n, f"both {name!r} and {name + '_b64'!r} are given")
        v = d[name + "_b64"]
        if not isinstance(v, str):
            raise ImportFileError(n, f"field {name + '_b64'!r} is not a str")
        try:
            return base64.b64decode(v, validate=True)
        except ValueError as e:
            raise ImportFileError(n, f"field {name + '_b64'!r} is not base64 ({e})") from None
    if name in d:
        v = d[name]
        return b"" if v is None else json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()
    return b""


def _time(n: int, ts: int) -> int:
    if not 0 <= ts <= MAX_TIME_NS:
        raise ImportFileError(n, f"recorded_at_ns {ts} is out of range (0..{MAX_TIME_NS})")
    return ts


def _stream(n: int, d: dict[str, Any]) -> tuple[Any, bytes, int]:
    """The stream id of a line, its stored bytes and flags."""

    try:
        if d["stream_kind"] not in ("str", "uuid"):
            raise ValueError("stream_kind must be 'str' or 'uuid'")
        stream: Any = uuid.UUID(d["stream"]) if d["stream_kind"] == "uuid" else d["stream"]
        sb, sflag = check_stream(stream)
    except (ValueError, TypeError) as e:
        raise ImportFileError(n, str(e)) from None
    return stream, sb, sflag


def _parse_event(n: int, d: dict[str, Any]) -> ImportedEvent:

    _fields(n, d, _EVENT_FIELDS)
    stream, sb, _flag = _stream(n, d)
    data = _payload(n, d, "data")
    meta = _payload(n, d, "metadata")
    try:
        eid = uuid.UUID(d["id"])
        tags = d.get("tags", [])
        if not isinstance(tags, list):
            raise TypeError("tags must be a list of str")
        event = evstore.NewEvent(d["type"], data, metadata=meta, id=eid, schema=d["schema"], tags=tuple(tags))
        enc = validate_events([event])[0]  # the store's own checks, now, before anything is written
    except (ValueError, TypeError) as e:
        raise ImportFileError(n, str(e)) from None
    if d["version"] < 1 or d["position"] < 1:
        raise ImportFileError(n, "positions and versions must be positive")
    if d["version"] > (1 << 63) - 1:
        raise ImportFileError(n, "version is out of range")
    size = HEADER_SIZE + len(sb) + sum(len(x) for x in (enc[0], enc[1], enc[2], enc[5]))
    return ImportedEvent(n, d["position"], stream, d["version"], event, _time(n, d["recorded_at_ns"]), size)


_MARKS = (b"$closed", b"$deleted", b"$tombstone", b"$state")


def _parse_record(n: int, d: dict[str, Any], kind: int) -> ImportedRecord:

    _fields(n, d, _RECORD_FIELDS)
    data = _payload(n, d, "data")
    if not 0 <= d["version"] <= (1 << 63) - 1 or not 0 <= d["schema"] < (1 << 32):
        raise ImportFileError(n, "version or schema is out of range")
    if len(data) > MAX_EVENT_BYTES:
        raise ImportFileError(n, f"a record of {len(data)} bytes exceeds the limit of {MAX_EVENT_BYTES}")
    tb = d["type"].encode("utf-8", "surrogateescape")
    try:
        if kind == KIND_TRACKING:

            if d["stream_kind"] != "str" or tb:
                raise ValueError("a tracking record names its upstream in 'stream' (a str) and has no type")
            sb, sflag, stream = tracking_name(d["stream"]), 0, d["stream"]
            if d["version"] < 1:
                raise ValueError("a tracking position must be >= 1")
        elif kind == KIND_AUX:
            if d["stream_kind"] != "str":
                raise ValueError("an aux record's namespace is a str")
            sb, sflag, stream = d["stream"].encode("utf-8", "surrogateescape"), 0, None
            if len(sb) > 400 or len(tb) > 400:
                raise ValueError("an aux namespace or key is longer than 400 bytes")
        else:
            stream, sb, sflag = _stream(n, d)
            if kind == KIND_MARK and tb not in _MARKS:
                raise ValueError(f"unknown mark {d['type']!r} (known: {', '.join(m.decode() for m in _MARKS)})")
            if kind == KIND_SNAPSHOT:
                check_name(d["type"], "a snapshot type")
    except (ValueError, TypeError, UnicodeError) as e:
        raise ImportFileError(n, str(e)) from None
    return ImportedRecord(n, ControlRecord(kind, sb, sflag, tb, d["version"], data, d["schema"]), stream)


def parse_file(src: IO[str]) -> list[ImportedCommit]:
    """Every line of an export file, checked on its own and grouped into commits."""
    commits: list[ImportedCommit] = []
    pending: list[tuple[int, ImportedEvent | ImportedRecord]] = []
    legacy: list[ImportedEvent] = []
    has_commits = False
    for n, line in enumerate(src, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImportFileError(n, f"not JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise ImportFileError(n, "not a JSON object")
        kind = d.get("kind", "event" if "kind" not in d else None)
        if kind == "event":
            ev = _parse_event(n, d)
            if "kind" in d:
                pending.append((n, ev))
            else:
                legacy.append(ev)
        elif kind in KINDS_BY_NAME:
            pending.append((n, _parse_record(n, d, KINDS_BY_NAME[kind])))
        elif kind == "commit":
            has_commits = True
            if legacy:
                raise ImportFileError(legacy[0].line, "an event line without 'kind' in a file with commit lines")
            _fields(n, d, _COMMIT_FIELDS)
            c = ImportedCommit(n, d["position"], _time(n, d["recorded_at_ns"]))
            for _ln, item in pending:
                if isinstance(item, ImportedEvent):
                    c.events.append(item)
                else:
                    c.records.append(item)
            pending = []
            if len(c.events) != d["events"]:
                raise ImportFileError(n, f"the commit line says {d['events']} events, the commit has {len(c.events)}")
            if not c.events and not c.records:
                raise ImportFileError(n, "a commit without records")
            for i, ce in enumerate(c.events):
                if ce.ts != c.ts:
                    raise ImportFileError(ce.line, "the event's time differs from its commit's")
                if ce.position != d["position"] + i:
                    raise ImportFileError(ce.line, f"position {ce.position} is not {d['position'] + i} in its commit")
            commits.append(c)
        else:
            raise ImportFileError(n, f"unknown kind {kind!r}")
    if pending:
        raise ImportFileError(pending[0][0], "the file ends inside a commit (no commit line follows): a cut-off export?")
    if legacy and has_commits:
        raise ImportFileError(legacy[0].line, "an event line without 'kind' in a file with commit lines")
    i = 0
    while i < len(legacy):  # old files: one commit per run of one stream's events with one time
        e0 = legacy[i]
        j = i
        while j < len(legacy) and legacy[j].stream == e0.stream and legacy[j].ts == e0.ts:
            j += 1
        commits.append(ImportedCommit(e0.line, e0.position, e0.ts, list(legacy[i:j])))
        i = j
    return commits


@dataclass
class ImportResult:
    events: int = 0  # events written
    records: int = 0  # non-event records written
    commits: int = 0  # commits written
    skipped_events: int = 0  # events already in the target (same ids, same events)


def import_file(path: str, src: IO[str], *, merge: bool = False, progress: Progress = _no_progress) -> ImportResult:
    """Import an export file. Every line is checked on its own, then the whole file against the
    target (positions and versions contiguous, times in range, event ids unique in the file and not
    used by other events of the target, stream states, tracking positions, commit sizes) before
    anything is written; then each commit is written as it was, keeping its records, ids and time.

    Into an empty store positions and versions come out identical. `merge=True` imports into a
    non-empty store: each stream's versions must continue the target's; a commit whose events are
    all in the target already (same ids, same events) is skipped, and so is a record without events
    whose effect the target already has (a close, tombstone, delete, tracking position or snapshot),
    so importing a file twice adds nothing the second time."""
    from evstore.importcheck import plan_import

    commits = parse_file(src)
    if not os.path.lexists(path):
        plan_import(None, commits, merge=merge)  # refused before the store is even created
    with evstore.open(path) as s:
        todo = plan_import(s, commits, merge=merge)
        res = ImportResult(skipped_events=sum(len(c.events) for c in commits) - sum(len(c.events) for c, _ in todo))
        for c, records in todo:
            runs: list[tuple[Any, list[evstore.NewEvent], int]] = []
            for e in c.events:
                if runs and runs[-1][0] == e.stream:
                    runs[-1][1].append(e.event)
                else:
                    runs.append((e.stream, [e.event], e.version - 1))
            parts: list[tuple[Any, Sequence[evstore.NewEvent], Any]] = list(runs)
            try:
                s.import_commit(parts, c.ts, [r.extra for r in records])
            except EvstoreError as e:
                raise EvstoreError(f"line {c.line}: {e}; the {res.commits} commits before it were imported") from e
            res.events += len(c.events)
            res.records += len(records)
            res.commits += 1
            progress(len(c.events))
    return res


def import_events(path: str, src: IO[str], *, merge: bool = False, progress: Progress = _no_progress) -> int:
    """`import_file`, returning the number of events written."""
    return import_file(path, src, merge=merge, progress=progress).events


__all__ = ["export", "export_records", "import_file", "import_events", "parse_file", "event_json", "record_json", "ImportFileError",
           "ImportResult", "ExportCount"]
