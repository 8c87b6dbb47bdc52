"""Check one materialised crash state against what the workload was promised.

Runs in a worker process (`python checker.py`, one JSON request per line on stdin, one JSON answer
per line on stdout) so that a store that crashes its process (SIGBUS on a mapped file, a segfault in
LMDB) or hangs is a failing state, not a dead test run. Imports only evstore and the standard
library.

The checks, in order (each failure has a category):

* `refuses-open`: `evstore.open` raises (a store must always open after a power cut; for the recover
  workload, a still-damaged store may need `tools.recover` first, which must then work);
* `corrupt-log`: a scan of the log after the open (the module `evstore.storage.segments`, independent of the index)
  raises;
* `lost-ack`: an acknowledged commit is missing, or differs from its acknowledgement (positions,
  versions); `not-prefix` (durability="os"): the acknowledged commits present are not a prefix of
  those acknowledged; `partial-commit` / `garbage`: a commit in the log is not a whole commit that
  the workload asked for (byte for byte: data, type, metadata, id, stream, schema, tags);
* `wrong-answer`: `head`, `read_all` (all, and by type), `read_stream`, `stream_version`,
  `stream_info`, `event_at`, `query` by tag, `load_snapshot`, `max_tracking`/`has_tracking` disagree
  with the log scan; versions not contiguous;
* `append-fails`: one more append, its read-back and a reopen do not work;
* `verify`: `tools.verify` is not clean after the open (a torn tail is allowed);
* `backup`: an acknowledged backup is not a complete, verifiable store of what it promised.
"""

from __future__ import annotations

import base64
import faulthandler
import json
import os
import shutil
import sys
import traceback
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import evstore
from evstore import QueryItem, tools
from evstore.format import codec as _impl
from evstore.format.layout import FLAG_CALLER_ID, FLAG_UUID_STREAM, HEADER, HEADER_SIZE, KIND_EVENT, KIND_MARK, \
    KIND_SNAPSHOT, KIND_TRACKING
from evstore.storage.segments import Log


class Failed(Exception):
    """A check failed: stops the state's checks at the first failure of a category that makes the
    later checks meaningless."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


@dataclass
class Rec:
    """One record of a commit found in the log."""

    kind: int
    stream: str
    type: str
    version: int
    position: int
    id: str | None  # caller-given ids only (random ones cannot be predicted)
    schema: int
    meta: bytes
    tags: tuple[str, ...]
    data: bytes
    ts: int
    full_id: str = ""


@dataclass
class LogCommit:
    first_position: int
    records: list[Rec] = field(default_factory=list)


def _stream_name(raw: bytes, flags: int) -> str:
    return f"uuid:{uuid.UUID(bytes=raw)}" if flags & FLAG_UUID_STREAM else raw.decode("utf-8")


def _api_stream(name: str) -> Any:
    return uuid.UUID(name[5:]) if name.startswith("uuid:") else name


def scan_log(path: str, impl: str) -> list[LogCommit]:
    """Every whole commit of the store's log, decoded record by record (no index involved)."""
    log = Log(os.path.join(path, "log"), _impl.load(impl), segment_size=1 << 40, writable=False)
    out = []
    for c in log.recover(None):
        buf = c.segment.buffer(c.end)
        lc = LogCommit(c.first_position)
        for o in c.records[:-1]:
            (_crc, ln, kind, flags, tl, sl, gl, pos, ver, ts, idb, schema, ml) = HEADER.unpack_from(buf, o)
            s = o + HEADER_SIZE
            stream = bytes(buf[s : s + sl])
            t = bytes(buf[s + sl : s + sl + tl]).decode("utf-8")
            m = bytes(buf[s + sl + tl : s + sl + tl + ml])
            g = bytes(buf[s + sl + tl + ml : s + sl + tl + ml + gl])
            data = bytes(buf[s + sl + tl + ml + gl : o + ln])
            tags = []
            i = 0
            while i < len(g):
                tags.append(g[i + 1 : i + 1 + g[i]].decode("utf-8"))
                i += 1 + g[i]
            full = str(uuid.UUID(bytes=bytes(idb)))
            lc.records.append(Rec(kind, _stream_name(stream, flags), t, ver, pos,
                                  full if flags & FLAG_CALLER_ID else None, schema, m, tuple(tags), data, ts, full))
        out.append(lc)
    log.close()
    return out


# -- intents ---------------------------------------------------------------------------------------


def _intent_line(line: str) -> dict[str, Any] | None:
    """One line of the ack file. A workload killed by SIGKILL in the middle of writing a line leaves
    it cut short (the write of a long line can be cut under strace), and the next process's first
    line then follows it on the same line: the cut intent announced a call that was never made, so it
    is dropped and the line after it kept. Anything else malformed is a harness error."""
    try:
        d: dict[str, Any] = json.loads(line)
        return d
    except json.JSONDecodeError:
        if not line.endswith("\n"):
            return None  # the last line, cut short by the kill
        i = line.rfind('{"t":')
        if i <= 0:
            raise
        rest: dict[str, Any] = json.loads(line[i:])
        return rest


def load_intents(ack_file: str) -> tuple[list[dict[str, Any]], set[str]]:
    """The intents in call order, and the keys the workload expects a recover to drop."""
    intents = []
    lost: set[str] = set()
    with open(ack_file) as f:
        for line in f:
            d = _intent_line(line)
            if d is None:
                continue
            if d["t"] == "intent":
                intents.append(d)
            elif d["t"] == "expect-lost":
                lost.update(d["keys"])
    return intents, lost


def shape(intent: dict[str, Any]) -> list[tuple[Any, ...]] | None:
    """The records an intent's commit holds, without the fields the store assigns; None: no commit."""
    op = intent["op"]
    b = base64.b64decode
    if op == "append":
        out: list[tuple[Any, ...]] = []
        for p in intent["parts"]:
            for e in p["events"]:
                out.append((KIND_EVENT, p["stream"], e["type"], b(e["data"]), b(e["meta"]), tuple(e["tags"]),
                            e["schema"], e["id"]))
        if intent.get("tracking"):
            out.append((KIND_TRACKING, intent["tracking"][0], intent["tracking"][1]))
        return out
    if op == "snapshot":
        return [(KIND_SNAPSHOT, intent["stream"], intent["type"], b(intent["data"]), intent["schema"], intent["version"])]
    if op == "mark":
        return [(KIND_MARK, intent["stream"], intent["mark"])]
    return None


def rec_shape(r: Rec) -> tuple[Any, ...]:
    if r.kind == KIND_EVENT:
        return (KIND_EVENT, r.stream, r.type, r.data, r.meta, r.tags, r.schema, r.id)
    if r.kind == KIND_TRACKING:
        return (KIND_TRACKING, r.stream, r.version)
    if r.kind == KIND_SNAPSHOT:
        return (KIND_SNAPSHOT, r.stream, r.type, r.data, r.schema, r.version)
    if r.kind == KIND_MARK:
        return (KIND_MARK, r.stream, r.type)
    return (r.kind, r.stream, r.type, r.data)


def _short(x: Any) -> str:
    s = repr(x)
    return s if len(s) < 160 else s[:150] + "...>"


def match_commits(commits: list[LogCommit], intents: list[dict[str, Any]], acked: dict[str, dict[str, Any]],
                  durability: str, expect_lost: set[str]) -> list[tuple[str, str]]:
    """Pair each log commit with the intent it carries out; report what is missing or foreign."""
    fails: list[tuple[str, str]] = []
    wanted: list[tuple[dict[str, Any], list[tuple[Any, ...]]]] = []
    for i in intents:
        sh = shape(i)
        if sh is not None:
            wanted.append((i, sh))
    ptr = 0
    present: set[str] = set()
    for c in commits:
        got = [rec_shape(r) for r in c.records]
        j = next((j for j in range(ptr, len(wanted)) if wanted[j][1] == got), None)
        if j is None:
            anywhere = next((i for i, s in wanted if s == got), None)
            if anywhere is not None:
                fails.append(("wrong-answer", f"commit at position {c.first_position} is intent {anywhere['k']}, "
                                              "out of call order"))
                continue
            near = next((i for i, s in wanted if s and got and s[0][:3] == got[0][:3]), None)
            if near is not None:
                fails.append(("partial-commit", f"commit at position {c.first_position} holds {len(got)} records "
                                                f"{_short(got[0][:3])}...; intent {near['k']} has {len(shape(near) or [])}"))
            else:
                fails.append(("garbage", f"commit at position {c.first_position} matches no intent: {_short(got[:2])}"))
            continue
        intent = wanted[j][0]
        present.add(intent["k"])
        ptr = j + 1
        ack = acked.get(intent["k"])
        fails += ack_fails(intent, ack, c.records)
        if ack is not None and intent["op"] == "mark" and c.records[0].version != ack["version"]:
            fails.append(("lost-ack", f"mark {intent['k']} acknowledged at version {ack['version']}, "
                                      f"logged at {c.records[0].version}"))
        if intent["op"] == "append":  # an import keeps positions, versions and commit times
            evs = [e for p in intent["parts"] for e in p["events"]]
            recs = [r for r in c.records if r.kind == KIND_EVENT]
            for e, r in zip(evs, recs):
                for k, have in (("ts", r.ts), ("position", r.position), ("version", r.version)):
                    if k in e and e[k] != have:
                        fails.append(("lost-ack" if ack else "wrong-answer",
                                      f"intent {intent['k']}: imported event {k} {e[k]}, log has {have}"))
    acked_commits = [i["k"] for i, _s in wanted if i["k"] in acked and i["k"] not in expect_lost]
    missing = [k for k in acked_commits if k not in present]
    if durability == "os":
        if missing:
            first = acked_commits.index(missing[0])
            after = [k for k in acked_commits[first:] if k in present]
            if after:
                fails.append(("not-prefix", f"acknowledged commit {missing[0]} is missing but later acknowledged "
                                            f"{after[0]} is present"))
    elif missing:
        fails.append(("lost-ack", f"{len(missing)} acknowledged commits missing, first {missing[0]} "
                                  f"({_short(next(s for i, s in wanted if i['k'] == missing[0])[0][:3])})"))
    return fails


def ack_fails(intent: dict[str, Any], ack: dict[str, Any] | None, records: list[Rec]) -> list[tuple[str, str]]:
    """Whether the records an intent was found in hold, per stream, the versions and positions its
    ack gave (nothing to check without an ack with results)."""
    if ack is None or "results" not in ack:
        return []
    by_stream: dict[str, list[Rec]] = defaultdict(list)
    for r in records:
        if r.kind == KIND_EVENT:
            by_stream[r.stream].append(r)
    fails = []
    for stream, v0, v1, p0, p1 in ack["results"]:
        rs = by_stream.get(stream, [])
        if not rs or (rs[0].version, rs[-1].version, rs[0].position, rs[-1].position) != (v0, v1, p0, p1):
            fails.append(("lost-ack", f"intent {intent['k']}: acknowledged {stream} v{v0}-{v1} at "
                                      f"{p0}-{p1}, the log has " + (f"v{rs[0].version}-{rs[-1].version} at "
                                      f"{rs[0].position}-{rs[-1].position}" if rs else "nothing")))
    return fails


def match_concurrent(commits: list[LogCommit], intents: list[dict[str, Any]], acked: dict[str, dict[str, Any]],
                     expect_lost: set[str]) -> list[tuple[str, str]]:
    """`match_commits` of appends made by several threads (durability="fsync"): each commit is one or
    more whole intents back to back, in any order (threads race to the queue), each intent in one
    commit at most; every acknowledged intent is there, with the versions and positions it was given."""
    fails: list[tuple[str, str]] = []
    open_: list[tuple[dict[str, Any], list[tuple[Any, ...]]]] = [(i, s) for i in intents if (s := shape(i))]
    present: set[str] = set()
    for c in commits:
        got = [rec_shape(r) for r in c.records]
        at = 0
        while at < len(got):
            j = next((j for j, (_i, s) in enumerate(open_) if got[at : at + len(s)] == s), None)
            if j is None:
                fails.append(("garbage", f"commit at position {c.first_position}: records from {at} on match no "
                                         f"intent not yet found: {_short(got[at : at + 2])}"))
                break
            intent, s = open_.pop(j)
            present.add(intent["k"])
            recs = c.records[at : at + len(s)]
            at += len(s)
            fails += ack_fails(intent, acked.get(intent["k"]), recs)
    missing = [i["k"] for i in intents if shape(i) and i["k"] in acked and i["k"] not in expect_lost
               and i["k"] not in present]
    if missing:
        fails.append(("lost-ack", f"{len(missing)} acknowledged appends missing, first {missing[0]}"))
    return fails


# -- the state -------------------------------------------------------------------------------------


def _ev_tuple(e: Any) -> tuple[Any, ...]:
    return (e.position, str(e.stream) if isinstance(e.stream, str) else f"uuid:{e.stream}", e.version, e.type,
            bytes(e.data), bytes(e.metadata), str(e.id), e.schema, tuple(e.tags), e.recorded_at_ns)


def _rec_tuple(r: Rec) -> tuple[Any, ...]:
    return (r.position, r.stream, r.version, r.type, r.data, r.meta, r.full_id, r.schema, r.tags, r.ts)


def _diff(what: str, got: list[Any], want: list[Any]) -> str:
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"{what}: item {i} is {_short(g)}, the log says {_short(w)}"
    return f"{what}: {len(got)} items, the log says {len(want)}"


def check_reads(s: evstore.EventStore, commits: list[LogCommit], prune: bool, rebuilt: bool) -> list[tuple[str, str]]:
    """The store's answers against the log scan."""
    fails: list[tuple[str, str]] = []

    def expect(what: str, got: Any, want: Any) -> None:
        if got != want:
            fails.append(("wrong-answer", _diff(what, got, want) if isinstance(got, list) and isinstance(want, list)
                          else f"{what}: got {_short(got)}, the log says {_short(want)}"))

    events = [r for c in commits for r in c.records if r.kind == KIND_EVENT]
    want_all = [_rec_tuple(r) for r in events]
    expect("positions", [r.position for r in events], list(range(1, len(events) + 1)))
    expect("head()", s.head(), len(events))
    expect("read_all()", [_ev_tuple(e) for e in s.read_all()], want_all)
    streams: dict[str, list[Rec]] = defaultdict(list)
    hidden: dict[str, int] = defaultdict(int)
    closed: set[str] = set()
    tomb: set[str] = set()
    snaps: dict[str, list[Rec]] = defaultdict(list)
    tracking: dict[str, list[int]] = defaultdict(list)
    for c in commits:
        for r in c.records:
            if r.kind == KIND_EVENT:
                streams[r.stream].append(r)
            elif r.kind == KIND_MARK:
                streams.setdefault(r.stream, [])
                if r.type in ("$deleted", "$tombstone"):
                    hidden[r.stream] = max(hidden[r.stream], r.version)
                if r.type == "$tombstone":
                    tomb.add(r.stream)
                if r.type == "$closed":
                    closed.add(r.stream)
            elif r.kind == KIND_SNAPSHOT:
                streams.setdefault(r.stream, [])
                snaps[r.stream].append(r)
            elif r.kind == KIND_TRACKING:
                tracking[r.stream].append(r.version)
    for name, evs in streams.items():
        st = _api_stream(name)
        expect(f"versions of {name}", [r.version for r in evs], list(range(1, len(evs) + 1)))
        expect(f"stream_version({name})", s.stream_version(st), len(evs))
        info = s.stream_info(st)
        # StreamInfo.deleted: tombstoned, or soft-deleted with nothing appended since the delete
        deleted = name in tomb or (hidden[name] > 0 and len(evs) <= hidden[name])
        want_info = (len(evs), name in closed, deleted, name in tomb)
        expect(f"stream_info({name})", None if info is None else (info.version, info.closed, info.deleted,
                                                                    info.tombstoned), want_info)
        if name in tomb:
            try:
                s.read_stream(st)
                fails.append(("wrong-answer", f"read_stream({name}) of a tombstoned stream did not raise"))
            except evstore.StreamDeleted:
                pass
            continue
        expect(f"read_stream({name})", [_ev_tuple(e) for e in s.read_stream(st)],
               [_rec_tuple(r) for r in evs if r.version > hidden[name]])
        visible = [r for r in snaps.get(name, []) if hidden[name] < r.version <= len(evs)]
        newest = None
        for r in visible:
            if newest is None or r.version >= newest.version:
                newest = r
        snap = s.load_snapshot(st)
        got = None if snap is None else (snap.version, snap.type, bytes(snap.data), snap.schema)
        expect(f"load_snapshot({name})", got, None if newest is None else
               (newest.version, newest.type, newest.data, newest.schema))
        for r in visible:
            lower = [x for x in visible if x.version <= r.version]
            best = max(lower, key=lambda x: (x.version, lower.index(x)))
            snap = s.load_snapshot(st, lte=r.version)
            got = None if snap is None else (snap.version, snap.type, bytes(snap.data), snap.schema)
            want = (best.version, best.type, best.data, best.schema)
            if prune and not rebuilt:  # pruned entries stay out of the index until it is rebuilt
                ok = got is None or any(got == (x.version, x.type, x.data, x.schema) for x in lower)
                if not ok:
                    fails.append(("wrong-answer", f"load_snapshot({name}, lte={r.version}): {_short(got)} is no "
                                                  "snapshot of the log at or below that version"))
            else:
                expect(f"load_snapshot({name}, lte={r.version})", got, want)
    for name, positions in tracking.items():
        expect(f"max_tracking({name})", s.max_tracking(name), max(positions))
        for p in positions:
            if not s.has_tracking(name, p):
                fails.append(("wrong-answer", f"has_tracking({name}, {p}) is False; the log has it"))
    for t in sorted({r.type for r in events})[:3]:
        expect(f"read_all(types=[{t}])", [_ev_tuple(e) for e in s.read_all(types=[t])],
               [_rec_tuple(r) for r in events if r.type == t])
    for tag in sorted({g for r in events for g in r.tags}):
        expect(f"query(tags=[{tag}])", [_ev_tuple(e) for e in s.query([QueryItem(tags=[tag])])],
               [_rec_tuple(r) for r in events if tag in r.tags])
    for r in events[:1] + events[-2:] + events[len(events) // 2 : len(events) // 2 + 1]:
        e = s.event_at(r.position)
        expect(f"event_at({r.position})", None if e is None else _ev_tuple(e), _rec_tuple(r))
    expect(f"event_at({len(events) + 1})", s.event_at(len(events) + 1), None)
    return fails


def check_state(req: dict[str, Any], cache: dict[str, Any]) -> list[tuple[str, str]]:
    spec = req["spec"]
    root = req["dir"]
    path = os.path.join(root, spec["store"])
    impl = spec["impl"]
    if req["ack_file"] not in cache:
        cache[req["ack_file"]] = load_intents(req["ack_file"])
    intents, expect_lost = cache[req["ack_file"]]
    acked: dict[str, dict[str, Any]] = {a["k"]: a for a in req["acked"]}
    for a in req["acked"]:
        for k in a.get("covers", []):
            acked.setdefault(k, {})
    rebuilt = req["index"] == "deleted"
    if rebuilt:
        shutil.rmtree(os.path.join(path, "index"), ignore_errors=True)
    fails: list[tuple[str, str]] = []
    kw = {"log_impl": impl, "durability": spec["durability"], "segment_size": spec["segment_size"]}
    if spec["recover"] and not any(a.get("op") == "recover" for a in req["acked"]):
        # Before its recover was acknowledged the store may still hold the damage the workload made,
        # or be half-way through the recover: an operator runs `evstore recover` again (what the
        # messages of CorruptedError, IndexAheadOfLog and an interrupted recover say to do), which
        # must then work whatever the crash left. Once the recover is acknowledged the store must
        # open on its own.
        try:
            if os.path.isdir(os.path.join(path, "log")) and not tools.verify(path).ok:
                tools.recover(path)
            try:
                evstore.open(path, **kw).close()
            except evstore.EvstoreError:
                tools.recover(path)
        except Exception as e:
            return [("refuses-open", f"tools.recover of a store whose recover was cut off: {type(e).__name__}: {e}")]
    try:
        s = evstore.open(path, **kw)
    except Exception as e:
        return [("refuses-open", f"{type(e).__name__}: {e}")]
    try:
        try:
            commits = scan_log(path, impl)
        except Exception as e:
            return [("corrupt-log", f"after the open: {type(e).__name__}: {e}")]
        if spec["concurrent"]:
            fails += match_concurrent(commits, intents, acked, expect_lost)
        else:
            fails += match_commits(commits, intents, acked, spec["claims"] or spec["durability"], expect_lost)
        try:
            fails += check_reads(s, commits, spec["prune"], rebuilt)
        except Exception as e:  # a read that raises is a wrong answer too
            fails.append(("wrong-answer", f"a read raised {type(e).__name__}: {e}"))
        head = len([r for c in commits for r in c.records if r.kind == KIND_EVENT])
        try:
            res = s.append("powerloss-probe", [evstore.NewEvent("Probe", b"after the crash")])
            got = s.read_stream("powerloss-probe")[-1]
            if res.first_position != head + 1 or bytes(got.data) != b"after the crash":
                fails.append(("append-fails", f"probe append at {res.first_position}, expected {head + 1}"))
        except Exception as e:
            fails.append(("append-fails", f"{type(e).__name__}: {e}"))
    finally:
        s.close()
    try:
        with evstore.open(path, **kw) as s2:
            if s2.head() != head + 1:
                fails.append(("append-fails", f"after a reopen head() is {s2.head()}, expected {head + 1}"))
    except Exception as e:
        fails.append(("append-fails", f"reopen: {type(e).__name__}: {e}"))
    rep = tools.verify(path)
    if not rep.ok:
        p = next(p for p in rep.problems if not p.torn_tail)
        fails.append(("verify", f"{os.path.relpath(p.path, root)} at {p.offset}: {p.reason}"))
    fails += check_backup(req, intents, acked, commits, root)
    return fails


def check_backup(req: dict[str, Any], intents: list[dict[str, Any]], acked: dict[str, dict[str, Any]],
                 commits: list[LogCommit], root: str) -> list[tuple[str, str]]:
    """An acknowledged backup: a store that opens, verifies, and holds the source's first `head`
    events byte for byte (`head` at least what the source had indexed when the backup started)."""
    fails: list[tuple[str, str]] = []
    for i in intents:
        if i["op"] != "backup" or i["k"] not in acked:
            continue
        head = acked[i["k"]]["head"]
        dest = os.path.join(root, i["dest"])
        if head < i["min_head"]:
            fails.append(("backup", f"backup returned head {head}, the source had {i['min_head']} indexed"))
        want = [_rec_tuple(r) for c in commits for r in c.records if r.kind == KIND_EVENT][:head]
        try:
            with evstore.open(dest, create=False, log_impl=req["spec"]["impl"]) as b:
                got = [_ev_tuple(e) for e in b.read_all()]
            if got != want:
                fails.append(("backup", _diff("backup read_all()", got, want)))
            rep = tools.verify(dest)
            if not rep.ok:
                fails.append(("backup", f"verify of the backup: {rep.problems[0].reason}"))
        except Exception as e:
            fails.append(("backup", f"the acknowledged backup does not open: {type(e).__name__}: {e}"))
    return fails


def main() -> None:
    """Serve requests: {"dir", "spec", "ack_file", "acked", "index"} -> {"failures": [[category, detail]]}."""
    faulthandler.enable()  # a SIGBUS or SIGSEGV leaves the Python stack on stderr for the crash report
    cache: dict[str, Any] = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            fails = check_state(req, cache)
        except Exception as e:
            fails = [("harness", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")]
        sys.stdout.write(json.dumps({"failures": fails}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
