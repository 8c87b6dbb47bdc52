"""Offline and online maintenance of a store: info, verify, reindex, recover, backup, export."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import evstore
from evstore import _impl
from evstore._format import ERROR_TEXT, SEGMENT_HEADER_SIZE
from evstore.errors import CorruptedError, EvstoreError, StoreLocked
from evstore.log import Log
from evstore.records import RecordedEvent

Progress = Callable[[int], None]  # called with a number of bytes (or events) just done


def _no_progress(_n: int) -> None:
    pass


def check_target(path: str, what: str) -> str:
    """A path the CLI will create: refuse NUL bytes and an existing non-empty target."""
    if "\x00" in path:
        raise EvstoreError(f"{what} path must not contain NUL bytes")
    real = os.path.realpath(path)
    if os.path.exists(real) and (not os.path.isdir(real) or os.listdir(real)):
        raise EvstoreError(f"{what} {path} already exists and is not empty; choose a new path")
    return real


def _store_dir(path: str) -> str:
    if "\x00" in path:
        raise EvstoreError("store path must not contain NUL bytes")
    real = os.path.realpath(path)
    if not os.path.isdir(os.path.join(real, "log")):
        raise EvstoreError(f"no store at {path}")
    return real


def _log(path: str) -> Log:
    return Log(os.path.join(path, "log"), _impl.load(), segment_size=1 << 40, writable=False)


# -- verify ------------------------------------------------------------------------------------


@dataclass
class Problem:
    path: str
    offset: int
    reason: str
    torn_tail: bool  # True: an unfinished last commit, cut off by the next writer open


@dataclass
class VerifyReport:
    segments: int = 0
    commits: int = 0
    events: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.torn_tail for p in self.problems)


def verify(path: str, progress: Progress = _no_progress) -> VerifyReport:
    """Check every record and commit of every segment (checksums, framing, gapless positions)."""
    real = _store_dir(path)
    log = _log(real)
    impl = log.impl
    rep = VerifyReport(segments=len(log.segments))
    t0 = time.perf_counter()
    next_pos = log.segments[0].first if log.segments else 1
    for i, seg in enumerate(log.segments):
        size = os.path.getsize(seg.path)
        buf = seg.buffer(size)
        off = SEGMENT_HEADER_SIZE
        if seg.first != next_pos:
            rep.problems.append(Problem(seg.path, 0, f"segment starts at {seg.first}, expected {next_pos}", False))
        while True:
            r = impl.scan(buf, off, size, next_position=next_pos, kinds=0, max_out=0)
            rep.commits += r.commits
            rep.events += r.events
            progress(r.end - off)
            off, next_pos = r.end, r.next_position
            if r.code == 0 and r.end < size and r.commits:
                continue
            break
        rep.bytes += size
        if r.code != 0:
            last = i == len(log.segments) - 1
            torn = last and impl.find_commit(buf, r.err_off, size) < 0
            rep.problems.append(Problem(seg.path, r.err_off, ERROR_TEXT.get(r.code, str(r.code)), torn))
            if not torn:
                break
    rep.seconds = time.perf_counter() - t0
    return rep


# -- info --------------------------------------------------------------------------------------


def info(path: str) -> dict[str, Any]:
    """Format, sizes, counts, head, segments and how far the index lags the log."""
    real = _store_dir(path)
    log = _log(real)
    out: dict[str, Any] = {"path": real}
    try:
        with open(os.path.join(real, "evstore.meta"), "rb") as f:
            out["meta"] = json.loads(f.read()[12:])
    except (OSError, ValueError):
        out["meta"] = None
    out["segments"] = [{"name": os.path.basename(s.path), "first_position": s.first,
                        "bytes": os.path.getsize(s.path)} for s in log.segments]
    out["log_bytes"] = sum(s["bytes"] for s in out["segments"])
    ipath = os.path.join(real, "index")
    out["index_bytes"] = sum(os.path.getsize(os.path.join(ipath, f)) for f in os.listdir(ipath)) \
        if os.path.isdir(ipath) else 0
    index_head = None
    streams = None
    checkpoint = None
    if os.path.exists(os.path.join(ipath, "data.mdb")):
        with evstore.open(real, readonly=True, create=False) as s:
            idx = s._r().index
            with idx.begin() as txn:
                checkpoint = idx.get_checkpoint(txn)
                index_head = 0 if checkpoint is None else checkpoint[2] - 1
                streams = txn.stat(idx.db["heads"])["entries"]
    log_head = index_head or 0
    try:
        for c in log.recover(checkpoint):
            log_head = c.first_position + c.n_events - 1 if c.n_events else log_head
    except CorruptedError as e:
        out["corruption"] = str(e)
    out["head"] = log_head
    out["index_head"] = index_head
    out["index_lag"] = None if index_head is None else log_head - index_head
    out["streams"] = streams
    out["format"] = (out["meta"] or {}).get("format")
    return out


# -- reindex and recover -----------------------------------------------------------------------


def _with_lock(path: str) -> int:
    fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreLocked(path, None) from None
    return fd


def _drop_index(path: str) -> None:
    ipath = os.path.join(path, "index")
    if os.path.isdir(ipath):
        shutil.rmtree(ipath)


def reindex(path: str) -> int:
    """Rebuild the index from the log; returns the head. The store must not be open for writing."""
    real = _store_dir(path)
    fd = _with_lock(real)
    try:
        _drop_index(real)
    finally:
        os.close(fd)
    with evstore.open(real) as s:
        return s.head()


@dataclass
class RecoverReport:
    head_before: int | None
    head_after: int
    damaged: list[str]
    dropped_bytes: int
    moved_to: str | None


def recover(path: str) -> RecoverReport:
    """Salvage every intact commit before the first corruption into a consistent store.

    The damaged segment and every later one are moved to `damaged-<time>/` inside the store; a copy of
    the damaged segment cut at its last whole commit takes its place; the index is rebuilt.
    """
    real = _store_dir(path)
    rep = verify(real)
    head_before = info(real)["index_head"]
    fd = _with_lock(real)
    damaged: list[str] = []
    dropped = 0
    moved_to = None
    try:
        bad = [p for p in rep.problems if not p.torn_tail]
        if bad:
            first = bad[0]
            log = _log(real)
            names = [s.path for s in log.segments]
            k = names.index(first.path)
            moved_to = os.path.join(real, f"damaged-{time.strftime('%Y%m%dT%H%M%S')}")
            os.makedirs(moved_to, mode=0o700, exist_ok=True)
            good_end = _last_good_end(log, first.path)
            for p in names[k:]:
                dest = os.path.join(moved_to, os.path.basename(p))
                os.rename(p, dest)
                damaged.append(dest)
                dropped += os.path.getsize(dest)
            if good_end > SEGMENT_HEADER_SIZE:
                with open(damaged[0], "rb") as src, open(first.path + ".new", "wb") as out:
                    out.write(src.read(good_end))
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(first.path + ".new", 0o600)
                os.rename(first.path + ".new", first.path)
                dropped -= good_end
        _drop_index(real)
    finally:
        os.close(fd)
    with evstore.open(real) as s:
        head_after = s.head()
    return RecoverReport(head_before, head_after, damaged, dropped, moved_to)


def _last_good_end(log: Log, seg_path: str) -> int:
    seg = next(s for s in log.segments if s.path == seg_path)
    size = os.path.getsize(seg.path)
    buf = seg.buffer(size)
    off = SEGMENT_HEADER_SIZE
    while True:
        r = log.impl.scan(buf, off, size, next_position=0, kinds=0, max_out=0)
        off = int(r.end)
        if r.code != 0 or r.end >= size or not r.commits:
            return off


# -- backup ------------------------------------------------------------------------------------


def backup(path: str, dest: str, progress: Progress = _no_progress) -> int:
    """Copy a consistent prefix of the log (every indexed commit) to `dest`, online; returns the head.

    Sealed segments are immutable and copied whole; the active one up to the indexed checkpoint. The
    copy's index is rebuilt from its log.
    """
    real = _store_dir(path)
    target = check_target(dest, "backup destination")
    with evstore.open(real, readonly=True, create=False) as s:
        idx = s._r().index
        with idx.begin() as txn:
            cp = idx.get_checkpoint(txn)
    if cp is None:
        raise EvstoreError(f"{path} has no indexed commits to back up")
    seg_first, end, _next = cp
    os.makedirs(os.path.join(target, "log"), mode=0o700, exist_ok=True)
    shutil.copyfile(os.path.join(real, "evstore.meta"), os.path.join(target, "evstore.meta"))
    os.chmod(os.path.join(target, "evstore.meta"), 0o600)
    for seg in _log(real).segments:
        if seg.first > seg_first:
            break
        limit = end if seg.first == seg_first else os.path.getsize(seg.path)
        out_path = os.path.join(target, "log", os.path.basename(seg.path))
        with open(seg.path, "rb") as src, open(out_path, "wb") as out:
            left = limit
            while left:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    raise CorruptedError(seg.path, limit - left, "segment ended during backup")
                out.write(chunk)
                left -= len(chunk)
                progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(out_path, 0o600)
    with evstore.open(target) as s:
        return s.head()


# -- export ------------------------------------------------------------------------------------


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


def export(path: str, out: IO[str], *, gt: int = 0, progress: Progress = _no_progress) -> int:
    """Write every event after position `gt` as one JSON line each (byte-exact); returns the count."""
    n = 0
    with evstore.open(path, readonly=True, create=False) as s:
        for e in s.read_all(gt=gt):
            out.write(json.dumps(event_json(e, exact=True), separators=(",", ":")) + "\n")
            n += 1
            if n % 1000 == 0:
                progress(1000)
    return n


# -- import ------------------------------------------------------------------------------------


class ImportFileError(EvstoreError, ValueError):
    """A line of an import file is malformed; nothing of the file was imported."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}; nothing was imported")
        self.line = line
        self.reason = reason


_FIELDS = {"position": int, "stream": str, "stream_kind": str, "version": int, "type": str, "id": str,
           "schema": int, "recorded_at_ns": int}


def _parse_line(n: int, line: str) -> tuple[Any, ...]:
    import uuid

    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise ImportFileError(n, f"not JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise ImportFileError(n, "not a JSON object")
    for k, t in _FIELDS.items():
        if not isinstance(d.get(k), t) or isinstance(d.get(k), bool):
            raise ImportFileError(n, f"field {k!r} is missing or not a {t.__name__}")
    try:
        stream: Any = uuid.UUID(d["stream"]) if d["stream_kind"] == "uuid" else d["stream"]
        if d["stream_kind"] not in ("str", "uuid"):
            raise ValueError("stream_kind must be 'str' or 'uuid'")
        data = base64.b64decode(d.get("data_b64", ""), validate=True)
        meta = base64.b64decode(d.get("metadata_b64", ""), validate=True)
        eid = uuid.UUID(d["id"])
        tags = d.get("tags", [])
        if not isinstance(tags, list):
            raise TypeError("tags must be a list of str")
        event = evstore.NewEvent(d["type"], data, metadata=meta, id=eid, schema=d["schema"], tags=tuple(tags))
        from evstore.store import _encode_events, _check_stream

        _check_stream(stream)
        _encode_events([event])  # the store's own checks, now, before anything is written
    except (ValueError, TypeError) as e:
        raise ImportFileError(n, str(e)) from None
    if d["recorded_at_ns"] < 0 or d["version"] < 1 or d["position"] < 1:
        raise ImportFileError(n, "positions, versions and times must be positive")
    return d["position"], stream, d["version"], event, d["recorded_at_ns"]


def import_events(path: str, src: IO[str], *, merge: bool = False,
                  progress: Progress = _no_progress) -> int:
    """Import an `export` file: every line is checked first, then the events are appended in order,
    one commit per run of one stream's events with one commit time, keeping ids, types, metadata,
    schemas and times. Into an empty store positions and versions come out identical (checked);
    `merge=True` appends into a non-empty store (new positions and versions; the event ids make a
    repeated import of the same file a no-op). Returns the number of events imported."""
    rows = [_parse_line(n, line) for n, line in enumerate(src, 1) if line.strip()]
    n_done = 0
    with evstore.open(path) as s:
        exact = s.head() == 0
        if not exact and not merge:
            raise EvstoreError(f"{path} is not empty (head {s.head()}); pass --merge to append the events to it")
        if exact:
            for i, (pos, *_rest) in enumerate(rows, 1):
                if pos != i:
                    raise ImportFileError(i, f"position {pos} does not follow {i - 1}: import a whole export")
        i = 0
        while i < len(rows):
            _pos, stream, version, _event, ts = rows[i]
            j = i
            while j < len(rows) and rows[j][1] == stream and rows[j][4] == ts:
                j += 1
            events = [r[3] for r in rows[i:j]]
            expected = version - 1 if exact else evstore.ANY
            s._import_commit([(stream, events, expected)], ts)
            progress(j - i)
            n_done += j - i
            i = j
    return n_done


def consumers(path: str) -> list[tuple[str, int, int]]:
    """(name, position, lag) of every checkpointed consumer (see evstore.consumer)."""
    from evstore.consumer import CONSUMER_PREFIX

    prefix = CONSUMER_PREFIX.encode()
    best: dict[str, int] = {}
    with evstore.open(_store_dir(path), readonly=True, create=False) as s:
        head = s.head()
        idx = s._r().index
        with idx.begin() as txn:
            cur = txn.cursor(idx.db["tracking"])
            if cur.set_range(prefix):
                for k in cur.iternext(values=False):
                    k = bytes(k)
                    if not k.startswith(prefix):
                        break
                    name, pos = k[len(prefix) : -9].decode(), int.from_bytes(k[-8:], "big")
                    best[name] = max(best.get(name, 0), pos)
    return [(n, p, head - p) for n, p in sorted(best.items())]


__all__ = ["import_events", "ImportFileError", "consumers", "verify", "info", "reindex", "recover", "backup", "export", "event_json", "check_target"]
