"""The power-loss workloads: small programs that drive evstore and acknowledge what it promised.

Run as a script (the harness runs it twice per recording, the second time under strace):

    python workloads.py NAME setup|run ROOT ACKFILE

`setup` builds the base state (untraced; everything it acknowledges is durable before the trace
starts), `run` is the traced part. Every operation is announced by an *intent* line before the call
(all its bytes: stream, type, data, metadata, id, schema, tags) and, once the call returned, an *ack*
line with what it returned (versions, positions, head). Lines go to ACKFILE, outside the traced
root, one `os.write` each, so the trace orders every ack against the file-system calls.

This file imports only evstore and the standard library: it runs as a plain script.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import evstore
from evstore import NewEvent


@dataclass(frozen=True)
class Spec:
    """How a workload runs and what its checker needs to know."""

    name: str
    impl: str  # "c" or "python"
    durability: str = "fsync"
    segment_size: int = 8192
    store: str = "store"  # the store's directory, relative to the root
    backup: str | None = None  # the backup directory (relative to the root), for the backup workload
    recover: bool = False  # a damaged store: a state may need `evstore recover` until it is acknowledged
    prune: bool = False  # snapshots are pruned from the index (older ones may come back after a rebuild)
    claims: str | None = None  # the durability the checker holds the store to (default: `durability`)
    concurrent: bool = False  # appends from several threads: a commit may carry several of them, in any order


class Ctx:
    """A workload's store path, acknowledgement file and deterministic random source."""

    def __init__(self, spec: Spec, root: str, ack_path: str, phase: str) -> None:
        self.spec = spec
        self.root = root
        self.path = os.path.join(root, spec.store)
        self.ack_path = ack_path
        self.fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.rng = random.Random(f"{spec.name}/{phase}/{os.getpid() if phase == 'child' else 0}")
        self.prefix = f"{phase[:1]}{os.getpid() % 100000 if phase == 'child' else ''}"
        self.n = 0
        self.versions: dict[str, int] = {}

    def line(self, **d: Any) -> None:
        os.write(self.fd, (json.dumps(d, separators=(",", ":")) + "\n").encode())

    def key(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n}"

    def open(self, **kw: Any) -> evstore.EventStore:
        s = self.spec
        return evstore.open(self.path, log_impl=s.impl, durability=s.durability, segment_size=s.segment_size, **kw)

    # -- events ----------------------------------------------------------------------------------

    def events(self, key: str, n: int, *, big: bool = False) -> list[NewEvent]:
        out = []
        for i in range(n):
            r = self.rng
            size = r.choice([0, 12, 90, 300, 700, 1500] + ([5000, 9000] if big else []))
            data = f"{key}/{i}|".encode() + bytes(r.getrandbits(8) for _ in range(size))
            meta = b"" if r.random() < 0.5 else json.dumps({"k": key, "i": i}).encode()
            eid = uuid.UUID(int=r.getrandbits(128), version=4) if r.random() < 0.5 else None
            tags = tuple(r.sample(["red", "blue", "green"], r.randint(0, 2)))
            out.append(NewEvent(f"T{r.randint(0, 2)}", data, metadata=meta, id=eid, schema=r.randint(1, 2), tags=tags))
        return out

    # -- acknowledged operations -----------------------------------------------------------------

    def append(self, store: evstore.EventStore, parts: list[tuple[str, int]], *, tracking: tuple[str, int] | None = None,
               big: bool = False, key: str | None = None) -> list[evstore.AppendResult]:
        k = key or self.key()
        built = [(stream, self.events(f"{k}.{j}", n, big=big)) for j, (stream, n) in enumerate(parts)]
        self.line(t="intent", k=k, op="append", parts=[{"stream": s, "events": [_ev(e) for e in evs]} for s, evs in built],
                  tracking=list(tracking) if tracking else None)
        res: list[evstore.AppendResult]
        if built:
            res = store.append_many([(_stream(s), evs, evstore.ANY) for s, evs in built], tracking=tracking)
        else:
            res = store.append_many([], tracking=tracking)
        for r in res:
            self.versions[str(r.stream)] = r.last_version
        self.line(t="ack", k=k, results=[[_name(r.stream), r.first_version, r.last_version, r.first_position,
                                           r.last_position] for r in res])
        return res

    def snapshot(self, store: evstore.EventStore, stream: str) -> None:
        v = store.stream_version(_stream(stream))
        k = self.key()
        data = f"snap {k}|".encode() + bytes(self.rng.getrandbits(8) for _ in range(self.rng.choice([10, 200, 3000])))
        self.line(t="intent", k=k, op="snapshot", stream=stream, version=v, type="Snap", schema=1, data=_b64(data))
        store.save_snapshot(_stream(stream), v, data, type="Snap", schema=1)
        self.line(t="ack", k=k, version=v)

    def mark(self, store: evstore.EventStore, stream: str, mark: str) -> None:
        v = store.stream_version(_stream(stream))
        k = self.key()
        self.line(t="intent", k=k, op="mark", stream=stream, mark=mark)
        if mark == "$closed":
            store.close_stream(_stream(stream))
        else:
            store.delete_stream(_stream(stream), tombstone=mark == "$tombstone")
        self.line(t="ack", k=k, version=v)

    def track(self, store: evstore.EventStore, name: str, pos: int) -> None:
        self.append(store, [], tracking=(name, pos))

    def done(self, op: str, **d: Any) -> str:
        """An acknowledged command that writes no commit of its own (backup, recover, close...)."""
        k = self.key()
        self.line(t="ack", k=k, op=op, **d)
        return k


def _ev(e: NewEvent) -> dict[str, Any]:
    return {"type": e.type, "data": _b64(e.data), "meta": _b64(e.metadata), "id": str(e.id) if e.id else None,
            "schema": e.schema, "tags": list(e.tags)}


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _stream(name: str) -> Any:
    return uuid.UUID(name[5:]) if name.startswith("uuid:") else name


def _name(stream: Any) -> str:
    return stream if isinstance(stream, str) else f"uuid:{stream}"


UUID_STREAM = "uuid:6d1f3c0e-8a5b-4c1e-9f3a-2b7d4e6a8c10"

# -- the workloads ---------------------------------------------------------------------------------


def w_create(ctx: Ctx, phase: str) -> None:
    """Store creation (directory, meta, first segment, index) and the first appends."""
    if phase == "setup":
        return
    with ctx.open() as s:
        ctx.append(s, [("a", 1)])
        ctx.append(s, [("b", 2), ("a", 1)])
        ctx.append(s, [(UUID_STREAM, 1)], big=True)


def _base(ctx: Ctx, commits: int = 4) -> None:
    with ctx.open() as s:
        for i in range(commits):
            ctx.append(s, [(f"s{i % 3}", 1 + i % 2)])


def w_append_roll(ctx: Ctx, phase: str) -> None:
    """Appends that roll segments, including commits without events (tracking only, snapshot, marks)
    made exactly when the segment is full, and multi-page commits."""
    if phase == "setup":
        _base(ctx)
        return
    r = ctx.rng
    pos = 0
    with ctx.open() as s:
        for i in range(22):
            roll = r.random()
            if roll < 0.15:
                pos += r.randint(1, 3)
                ctx.track(s, "up", pos)
            elif roll < 0.22:
                ctx.snapshot(s, f"s{r.randint(0, 2)}")
            elif roll < 0.27 and i > 10:
                ctx.mark(s, "s2", "$deleted")
            else:
                parts = [(st, r.randint(1, 3)) for st in r.sample(["s0", "s1", "s2", "s3", UUID_STREAM], r.randint(1, 2))]
                tracking = None
                if r.random() < 0.2:
                    pos += 1
                    tracking = ("up", pos)
                ctx.append(s, parts, tracking=tracking, big=r.random() < 0.3)
        ctx.mark(s, "s3", "$closed")
        ctx.track(s, "up", pos + 1)


def w_marks(ctx: Ctx, phase: str) -> None:
    """Snapshots, close, soft delete and tombstone marks and tracking positions, mixed with appends."""
    if phase == "setup":
        _base(ctx, 6)
        return
    with ctx.open() as s:
        ctx.snapshot(s, "s0")
        ctx.append(s, [("s0", 2), ("m1", 1)], tracking=("up", 1))
        ctx.snapshot(s, "s0")
        ctx.snapshot(s, "s1")
        ctx.mark(s, "s1", "$deleted")
        ctx.append(s, [("s1", 2)])
        ctx.snapshot(s, "s1")
        ctx.mark(s, "m1", "$closed")
        ctx.track(s, "up", 5)
        ctx.track(s, "other", 2)
        ctx.mark(s, "s2", "$tombstone")
        ctx.append(s, [("s0", 1)], big=True)
        ctx.snapshot(s, "s0")
        ctx.track(s, "up", 9)


def w_kill_reopen(ctx: Ctx, phase: str) -> None:
    """A writer killed with SIGKILL mid-run, then a reopen that recovers its tail and appends more."""
    if phase == "setup":
        _base(ctx, 2)
        return
    if phase == "child":
        with ctx.open() as s:
            print("ready", flush=True)
            i = 0
            while True:
                i += 1
                ctx.append(s, [(f"k{i % 3}", 1 + i % 3)], big=i % 4 == 0,
                           tracking=("kill", i) if i % 5 == 0 else None)
                print("acked", flush=True)
    proc = subprocess.Popen([sys.executable, __file__, ctx.spec.name, "child", ctx.root, ctx.ack_path],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = 0
    while seen < 1 + 7:  # "ready" and seven acknowledgements
        if not proc.stdout.readline():
            raise SystemExit("the child writer died early")
        seen += 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with ctx.open() as s:
        ctx.done("reopen", head=s.head())
        for i in range(5):
            ctx.append(s, [("after", 1 + i % 2)], big=i == 2)


def w_os_close(ctx: Ctx, phase: str) -> None:
    """durability="os": appends (with empty commits) and a clean close. Only "never a part of a
    commit, every commit up to a point, and the store opens" is promised."""
    _os_appends(ctx, phase, pauses=False)


def w_os_index(ctx: Ctx, phase: str) -> None:
    """durability="os" with pauses: the indexer thread fdatasyncs the log, and the appending thread
    (or, in a longer pause, the indexer thread) writes what that sync covered to the index, between
    the appends. Promises as os-close; the index on disk must never cover a commit the log lost."""
    _os_appends(ctx, phase, pauses=True)


def _os_appends(ctx: Ctx, phase: str, *, pauses: bool) -> None:
    if phase == "setup":
        _base(ctx, 3)
        return
    r = ctx.rng
    with ctx.open() as s:
        for i in range(16):
            if i % 6 == 5 and not pauses:
                ctx.track(s, "up", i)
            else:
                ctx.append(s, [(f"o{r.randint(0, 2)}", r.randint(1, 3))], big=r.random() < 0.3)
            if pauses and i % 4 == 3:  # a sync, then the next append indexes what it covered; or the thread does
                time.sleep(0.015 if i % 8 == 3 else 0.06)
    ctx.done("close")


def w_recover(ctx: Ctx, phase: str) -> None:
    """`evstore.tools.recover` on a store whose sealed segment is damaged, then more appends."""
    from evstore import tools

    if phase == "setup":
        with ctx.open() as s:
            for i in range(14):
                ctx.append(s, [(f"r{i % 2}", 2)], key=f"base{i}")
        segs = sorted(os.listdir(os.path.join(ctx.path, "log")))
        victim = os.path.join(ctx.path, "log", segs[1])
        with open(victim, "r+b") as f:
            f.seek(os.path.getsize(victim) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))
            f.flush()
            os.fsync(f.fileno())
        # Which acknowledged commits the damage takes away: recover a scratch copy and see.
        import shutil

        scratch = os.path.join(os.path.dirname(ctx.ack_path), "recover-probe")
        shutil.copytree(ctx.path, scratch)
        tools.recover(scratch)
        with evstore.open(scratch, log_impl=ctx.spec.impl) as s:
            kept = {bytes(e.data).split(b"|", 1)[0].decode().rsplit(".", 1)[0] for e in s.read_all()}
        ctx.line(t="expect-lost", keys=[f"base{i}" for i in range(14) if f"base{i}" not in kept],
                 why="in or after the damaged segment")
        return
    rep = tools.recover(ctx.path)
    ctx.done("recover", head=rep.head_after)
    with ctx.open() as s:
        for _i in range(3):
            ctx.append(s, [("after", 2)])


def w_backup(ctx: Ctx, phase: str) -> None:
    """`evstore.tools.backup` while the store is open: the backup, once returned, holds every commit
    the source had indexed when it started."""
    from evstore import tools

    if phase == "setup":
        _base(ctx, 8)
        return
    with ctx.open() as s:
        ctx.append(s, [("b", 2)], big=True)
        head = s.head()
        k = ctx.key()
        ctx.line(t="intent", k=k, op="backup", dest=ctx.spec.backup, min_head=head)
        got = tools.backup(ctx.path, os.path.join(ctx.root, ctx.spec.backup or "backup"))
        ctx.line(t="ack", k=k, op="backup", head=got)
        ctx.append(s, [("b", 1)])


def w_import(ctx: Ctx, phase: str) -> None:
    """`evstore.tools.import_events` of an export file into a new store."""
    from evstore import tools

    src = os.path.join(os.path.dirname(ctx.ack_path), "export.jsonl")
    if phase == "setup":
        scratch = os.path.join(os.path.dirname(ctx.ack_path), "export-source")
        with evstore.open(scratch, log_impl=ctx.spec.impl) as s:
            for i in range(12):
                s.append(f"i{i % 3}", ctx.events(f"imp{i}", 1 + i % 3, big=i % 5 == 0))
        with open(src, "w") as f:
            tools.export(scratch, f)
        return
    rows = [json.loads(line) for line in open(src)]
    keys = []
    for commit in _export_commits(rows):  # the commits import_events makes
        k = ctx.key()
        keys.append(k)
        parts: list[dict[str, Any]] = []
        for r in commit:
            if not parts or parts[-1]["stream"] != r["stream"]:
                parts.append({"stream": r["stream"], "events": []})
            parts[-1]["events"].append(
                {"type": r["type"], "data": r.get("data_b64", ""), "meta": r.get("metadata_b64", ""), "id": r["id"],
                 "schema": r["schema"], "tags": r.get("tags", []), "ts": r["recorded_at_ns"],
                 "position": r["position"], "version": r["version"]})
        ctx.line(t="intent", k=k, op="append", tracking=None, parts=parts)
    with open(src) as f:
        n = tools.import_events(ctx.path, f)
    ctx.line(t="ack", k="import", covers=keys, count=n)
    with ctx.open() as s:
        ctx.append(s, [("i0", 1)])


def _export_commits(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The event lines of an export file grouped into its commits: each run ended by a commit line, or
    (files without commit lines) each run of one stream's events with one commit time."""
    if any(r.get("kind") == "commit" for r in rows):
        out: list[list[dict[str, Any]]] = [[]]
        for r in rows:
            if r.get("kind") == "commit":
                out.append([])
            elif r.get("kind", "event") == "event":
                out[-1].append(r)
        return [c for c in out if c]
    out = []
    for r in rows:
        if out and out[-1][-1]["stream"] == r["stream"] and out[-1][-1]["recorded_at_ns"] == r["recorded_at_ns"]:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def w_reindex(ctx: Ctx, phase: str) -> None:
    """`evstore.tools.reindex`: the index dropped and rebuilt from the log, then more appends."""
    from evstore import tools

    if phase == "setup":
        _base(ctx, 6)
        with ctx.open() as s:
            ctx.snapshot(s, "s1")
            ctx.mark(s, "s2", "$closed")
            ctx.track(s, "up", 3)
        return
    head = tools.reindex(ctx.path)
    ctx.done("reindex", head=head)
    with ctx.open() as s:
        ctx.append(s, [("s0", 2)])


def w_compact(ctx: Ctx, phase: str) -> None:
    """`compact-snapshots` (prune_snapshots): older snapshots leave the index, the newest stay."""
    if phase == "setup":
        with ctx.open() as s:
            for i in range(4):
                ctx.append(s, [("c0", 1), ("c1", 2)])
                ctx.snapshot(s, "c0")
                ctx.snapshot(s, "c1")
        return
    with ctx.open() as s:
        n = s.prune_snapshots(keep=1)
        ctx.done("prune", dropped=n)
        ctx.append(s, [("c0", 1)])
        ctx.snapshot(s, "c0")
        n = s.prune_snapshots("c0", keep=1)
        ctx.done("prune", dropped=n)


def w_threads(ctx: Ctx, phase: str) -> None:
    """Plain appends (no ids, no tags: the fast path) from four threads at once, each to a stream of
    its own with expected versions, with fsync: the appends that meet in one sync round are written
    as one commit by the thread at the front (engine/combine.py) and each acknowledged after it."""
    if phase == "setup":
        _base(ctx)
        # (In the run's process each type's first append takes the general path, which registers the
        # type; the appends after it are plain.)
        return
    import threading

    lock = threading.Lock()  # the random source, the keys and the acknowledgement file
    with ctx.open() as s:
        def work(t: int) -> None:
            version = 0
            for _i in range(8):
                with lock:
                    k = ctx.key()
                    stream = f"t{t}"
                    evs = [NewEvent(e.type, e.data, e.metadata, schema=e.schema)
                           for e in ctx.events(k, ctx.rng.randint(1, 2))]
                    ctx.line(t="intent", k=k, op="append", parts=[{"stream": stream, "events": [_ev(e) for e in evs]}],
                             tracking=None)
                r = s.append(stream, evs, expected_version=version or evstore.NO_STREAM)
                version = r.last_version
                with lock:
                    ctx.line(t="ack", k=k, results=[[stream, r.first_version, r.last_version, r.first_position,
                                                     r.last_position]])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        # The point of the workload: some commit carries the appends of several threads.
        streams_at: dict[int, set[str]] = {}
        for e in s.read_all():
            streams_at.setdefault(e.recorded_at, set()).add(str(e.stream))
        if not any(len(v) > 1 for v in streams_at.values()):
            raise SystemExit("threads: no commit carried the appends of two threads")


def w_zeros(ctx: Ctx, phase: str) -> None:
    """With "fsync", commits written into the space the writer's thread zeroes ahead of the tail
    (evstore/storage/prepare.py), its sizes shrunk (chunks of 16 KiB, 8 KiB a claim, from 4 KiB past
    the tail, 64 KiB ahead) so that the zero writes, their fdatasyncs and the commits interleave within
    a few pages: multi-page commits that reach the zeroed space, and rolls of 96 KiB segments."""
    from evstore.storage import prepare

    prepare.CHUNK, prepare.STEP, prepare.GAP, prepare.AHEAD = 16384, 8192, 4096, 65536
    if phase == "setup":
        _base(ctx)
        return
    r = ctx.rng
    zeroed = 0
    with ctx.open() as s:
        for i in range(24):
            if i % 6 == 0:
                time.sleep(0.02)  # the zeros get ahead of the tail; the burst after it overtakes them
            ctx.append(s, [(r.choice(["s0", "s1", UUID_STREAM]), r.randint(2, 4))], big=True)
            p = s._core.log.preparer
            zeroed = max(zeroed, 0 if p is None else p.zeroed)
    if not zeroed:
        raise SystemExit("zeros: no zeros were written ahead of the tail (the file system is not ext4 or XFS?)")


_FUNCS: dict[str, Callable[[Ctx, str], None]] = {
    "create": w_create, "append-roll": w_append_roll, "marks": w_marks, "kill-reopen": w_kill_reopen,
    "os-close": w_os_close, "os-index": w_os_index, "recover": w_recover, "backup": w_backup, "import": w_import,
    "reindex": w_reindex, "compact": w_compact, "threads": w_threads, "zeros": w_zeros,
}

SPECS: dict[str, Spec] = {s.name: s for s in [
    Spec("create-c", "c", segment_size=4096),
    Spec("create-py", "python", segment_size=4096),
    Spec("append-roll-c", "c"),
    Spec("append-roll-py", "python"),
    Spec("marks-c", "c", segment_size=4096),
    Spec("marks-py", "python", segment_size=4096),
    Spec("kill-reopen-c", "c"),
    Spec("kill-reopen-py", "python"),
    Spec("os-close-c", "c", durability="os"),
    Spec("os-index-c", "c", durability="os"),
    Spec("recover-c", "c", segment_size=4096, recover=True),
    Spec("backup-c", "c", backup="backup"),
    Spec("import-c", "c", segment_size=16384),
    Spec("reindex-c", "c", segment_size=4096),
    Spec("compact-c", "c", segment_size=4096, prune=True),
    Spec("threads-c", "c", segment_size=4096, concurrent=True),
    Spec("zeros-c", "c", segment_size=96 << 10),
    Spec("zeros-py", "python", segment_size=96 << 10),
]}


# Not power-loss tests of evstore but of the harness: a store run with durability="os" and held to
# "fsync" must be caught losing acknowledged commits (tests/test_powerloss.py checks that it is).
SELFTEST: dict[str, Spec] = {s.name: s for s in [
    Spec("os-close-heldtofsync", "c", durability="os", claims="fsync"),
]}


def function_of(spec: Spec) -> Callable[[Ctx, str], None]:
    base = spec.name.rsplit("-", 1)[0]
    return _FUNCS[base]


def main(argv: list[str]) -> None:
    name, phase, root, ack = argv
    spec = SPECS.get(name) or SELFTEST[name]
    function_of(spec)(Ctx(spec, root, ack, phase), phase)


if __name__ == "__main__":
    main(sys.argv[1:])
