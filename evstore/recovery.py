"""verify, reindex and recover: checking a log, rebuilding the index, salvaging a damaged store.

`recover` works from the log alone (the index may be ahead of the log, garbage or missing) and is
crash-safe: each step is durable before the next, and every state in between is one that running
`recover` again finishes from (it re-derives its plan from the files as they are):

1. the salvaged copy of the damaged segment (its whole commits) is written as `<segment>.salvage`;
2. every file to set aside (stray or unreadable `.seg` files, segments after the damage or after a
   missing segment) is hard-linked into `damaged-<time>/`, then unlinked from `log/`, highest first;
3. segments whose name disagrees with their header are renamed to the name their header gives;
4. the damaged segment is linked into `damaged-<time>/` and the salvaged copy renamed over it;
5. the index is rebuilt into `reindex.tmp/` and swapped in (`reindex` does the same).

The name of `damaged-<time>/` is kept in `recover.journal` until the end, so an interrupted run and
the next one set their files aside in the same directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import evstore
from evstore.format import codec as _impl
from evstore.storage import durable
from evstore.format.layout import SEGMENT_HEADER_SIZE
from evstore.storage.logfiles import SegFile, first_position, list_segments, read_meta, scan_segment
from evstore.errors import EvstoreError, StoreLocked
from evstore.storage.segfile import segment_name

Progress = Callable[[int], None]

JOURNAL = "recover.journal"
REBUILD_DIR = "reindex.tmp"


def _no_progress(_n: int) -> None:
    pass


def store_dir(path: str) -> str:
    """The real path of an existing store; `EvstoreError("no store at ...")` otherwise (nothing is created)."""
    if "\x00" in path:
        raise EvstoreError("store path must not contain NUL bytes")
    real = os.path.realpath(path)
    if not os.path.isdir(os.path.join(real, "log")):
        raise EvstoreError(f"no store at {path}")
    return real


def take_lock(path: str) -> int:
    """Hold the store's writer lock (the descriptor); `StoreLocked` when a writer has it."""
    fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreLocked(path, None) from None
    return fd


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
    """Check every segment file (header, name, place in the sequence) and every record and commit in
    it (checksums, framing, gapless positions). A missing segment (a gap in positions, or a log that
    does not start where the meta says) is damage."""
    real = store_dir(path)
    impl = _impl.load()
    segs = list_segments(os.path.join(real, "log"), impl)
    rep = VerifyReport(segments=len(segs))
    t0 = time.perf_counter()
    expected: int | None = first_position(real, impl)
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        rep.bytes += seg.size
        if seg.first is None:
            # a segment whose creation a crash cut short (the writer removes it) is harmless
            torn = last and seg.size < SEGMENT_HEADER_SIZE and i > 0
            rep.problems.append(Problem(seg.path, 0, seg.problem or "bad header", torn))
            expected = None
            continue
        if not seg.well_named:
            rep.problems.append(Problem(seg.path, 16, f"segment header says position {seg.first}, its name says "
                                        f"{seg.name_first}", False))
        if expected is not None and seg.first != expected:
            if seg.first > expected:
                what = ("the first segment of the log is missing" if i == 0 else "a segment is missing") + \
                    f" (positions {expected}..{seg.first - 1})"
            else:
                what = f"segment starts at position {seg.first}, before {expected} (it overlaps the one before)"
            rep.problems.append(Problem(seg.path, 0, what, False))
        sc = scan_segment(impl, seg, seg.first, progress, last)
        rep.commits += sc.commits
        rep.events += sc.events
        expected = sc.next_position
        if sc.code != 0:
            rep.problems.append(Problem(seg.path, sc.err_off, sc.reason, last and sc.torn))
            if not last:
                expected = None
    rep.seconds = time.perf_counter() - t0
    return rep


# -- the index ---------------------------------------------------------------------------------


def index_head(real: str) -> int | None:
    """The last position the index names (None when it has none or cannot be read). Reads LMDB only."""
    from evstore.storage.index import CHECKPOINT

    ipath = os.path.join(real, "index")
    if not os.path.exists(os.path.join(ipath, "data.mdb")):
        return None
    try:
        import lmdb

        env = lmdb.open(ipath, readonly=True, lock=False, max_dbs=16, subdir=True)
        try:
            db = env.open_db(b"meta", create=False)
            with env.begin() as txn:
                raw = txn.get(b"checkpoint", db=db)
        finally:
            env.close()
        return None if raw is None else int(CHECKPOINT.unpack(raw)[2]) - 1
    except Exception:  # a garbage index: there is no head to report
        return None


def rebuild_index(real: str) -> int:
    """Build a new index from the log in `reindex.tmp/` (a store whose log is this store's) and swap
    it in durably once the build succeeded; returns the head. On failure the old index is untouched.
    The caller holds the store's lock."""
    tmp = os.path.join(real, REBUILD_DIR)
    durable.remove_tree(tmp)
    durable.remove_tree(os.path.join(real, "index.old"))
    durable.make_dirs(tmp)
    os.symlink(os.path.join(real, "log"), os.path.join(tmp, "log"))
    if os.path.exists(os.path.join(real, "evstore.meta")):
        os.symlink(os.path.join(real, "evstore.meta"), os.path.join(tmp, "evstore.meta"))
    durable.fsync_dir(tmp)
    try:
        with evstore.open(tmp) as s:
            head = s.head()
        new = os.path.join(tmp, "index")
        for name in os.listdir(new):
            durable.sync_file(os.path.join(new, name))
        durable.fsync_dir(new)
    except BaseException:
        durable.remove_tree(tmp)
        raise
    ipath = os.path.join(real, "index")
    if os.path.lexists(ipath):
        durable.rename(ipath, os.path.join(real, "index.old"))
    durable.rename(new, ipath)
    meta = os.path.join(real, "evstore.meta")
    if not os.path.lexists(meta) and os.path.isfile(os.path.join(tmp, "evstore.meta")):
        durable.copy_file(os.path.join(tmp, "evstore.meta"), meta)  # recreated by the build
    durable.remove_tree(os.path.join(real, "index.old"))
    durable.remove_tree(tmp)
    return head


def reindex(path: str) -> int:
    """Rebuild the index from the log; returns the head. The store must not be open for writing.
    The old index serves until the new one is complete: a failed rebuild leaves it as it was."""
    real = store_dir(path)
    fd = take_lock(real)
    try:
        return rebuild_index(real)
    finally:
        os.close(fd)


# -- recover -----------------------------------------------------------------------------------


@dataclass
class RecoverReport:
    head_before: int | None
    head_after: int
    damaged: list[str]  # the files set aside, as they are named in `moved_to`
    dropped_bytes: int
    moved_to: str | None
    findings: list[str] = field(default_factory=list)  # what was wrong, one line each


@dataclass
class _Plan:
    chain: list[SegFile] = field(default_factory=list)  # the segments kept, in order
    renames: list[tuple[SegFile, str]] = field(default_factory=list)
    set_aside: list[SegFile] = field(default_factory=list)  # linked into damaged/, then removed
    damaged: SegFile | None = None  # the chain's last segment, cut at `good_end`
    good_end: int = 0
    bad_meta: bool = False
    findings: list[str] = field(default_factory=list)

    @property
    def changes_log(self) -> bool:
        return bool(self.renames or self.set_aside or self.damaged or self.bad_meta)


def _plan(real: str, impl: ModuleType) -> _Plan:
    """What to keep: the longest run of whole commits from the log's first position, following
    segments by the position in their headers; everything after the first damage or gap goes."""
    plan = _Plan()
    segs = list_segments(os.path.join(real, "log"), impl)
    by_first: dict[int, list[SegFile]] = {}
    for s in segs:
        if s.first is None:
            plan.set_aside.append(s)
            if s.size:
                plan.findings.append(f"{s.path}: {s.problem}")
        else:
            by_first.setdefault(s.first, []).append(s)
    for cands in by_first.values():
        cands.sort(key=lambda s: not s.well_named)
    expected = first_position(real, impl)
    while True:
        cands = by_first.pop(expected, [])
        if not cands:
            break
        seg = cands[0]
        for dup in cands[1:]:
            plan.set_aside.append(dup)
            plan.findings.append(f"{dup.path}: a second segment for position {expected}")
        if not seg.well_named:
            plan.renames.append((seg, os.path.join(real, "log", segment_name(expected))))
            plan.findings.append(f"{seg.path}: its header says position {seg.first}; renamed "
                                 f"{segment_name(expected)}")
        plan.chain.append(seg)
        later = any(p >= expected for p in by_first)
        sc = scan_segment(impl, seg, expected, last=not later)
        if sc.code != 0 and (later or not sc.torn):
            plan.damaged, plan.good_end = seg, sc.good_end
            plan.findings.append(f"{seg.path}: {sc.reason} at offset {sc.err_off}; kept its whole commits "
                                 f"up to offset {sc.good_end}")
            if sc.good_end <= SEGMENT_HEADER_SIZE:
                plan.chain.pop()
            break
        if sc.code != 0 or sc.next_position == expected:
            break  # a torn tail (the writer cuts it off), or a segment without events: the end
        expected = sc.next_position
    rest = sorted((s for cands in by_first.values() for s in cands), key=lambda s: s.first or 0)
    if rest and plan.damaged is None:
        gap_to = min(s.first or 0 for s in rest)
        if gap_to > expected:
            what = "the first segment of the log is missing" if not plan.chain else "a segment is missing"
            plan.findings.append(f"{what}: no segment holds positions {expected}..{gap_to - 1}; the segments "
                                 "after the gap were set aside")
    for s in rest:
        plan.set_aside.append(s)
        if (s.first or 0) < expected:
            plan.findings.append(f"{s.path}: overlaps the segments before it")
    plan.bad_meta = os.path.exists(os.path.join(real, "evstore.meta")) and read_meta(real, impl) is None
    if plan.bad_meta:
        plan.findings.append(f"{os.path.join(real, 'evstore.meta')}: unreadable; set aside and recreated")
    return plan


def _set_aside(src: str, into: str) -> str:
    """Hard-link `src` into directory `into` (durably), then remove it (durably). A run cut off
    after the link finds the same file there and goes on. Returns the path in `into`."""
    dst = _link_aside(src, into)
    durable.remove(src)
    return dst


def _link_aside(src: str, into: str) -> str:
    """Hard-link `src` into `into` durably (it stays in place); returns the link."""
    dst = os.path.join(into, os.path.basename(src))
    n = 0
    while os.path.lexists(dst) and not os.path.samefile(dst, src):
        n += 1
        dst = os.path.join(into, f"{os.path.basename(src)}.{n}")
    if not os.path.lexists(dst):
        os.link(src, dst)
        durable.fsync_dir(into)
    return dst


def _damaged_dir(real: str) -> str:
    """The directory this recovery sets files aside in: the interrupted run's (from the journal), or
    a new `damaged-<time>/`, recorded in the journal before anything is moved."""
    jpath = os.path.join(real, JOURNAL)
    try:
        with open(jpath, "rb") as f:
            name = json.loads(f.read())["damaged_dir"]
        if isinstance(name, str) and name.startswith("damaged-") and "/" not in name:
            durable.make_dirs(os.path.join(real, name))
            return os.path.join(real, name)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    name = f"damaged-{time.strftime('%Y%m%dT%H%M%S')}"
    n = 0
    while os.path.lexists(os.path.join(real, name)):
        n += 1
        name = f"damaged-{time.strftime('%Y%m%dT%H%M%S')}-{n}"
    durable.replace_file(jpath, json.dumps({"damaged_dir": name}).encode())
    durable.make_dirs(os.path.join(real, name))
    return os.path.join(real, name)


def recover(path: str) -> RecoverReport:
    """Salvage every intact commit before the first damage into a consistent store, and rebuild the
    index from the log. Works whatever state the index is in, and finishes the job of an interrupted
    run. Damaged, stray and dropped files are kept in `damaged-<time>/` inside the store."""
    real = store_dir(path)
    impl = _impl.load()
    fd = take_lock(real)
    try:
        head_before = index_head(real)
        plan = _plan(real, impl)
        logdir = os.path.join(real, "log")
        for name in os.listdir(logdir):  # the leftovers of interrupted runs and segment creations
            if name.endswith(".salvage") or name.endswith(".seg.new"):
                durable.remove(os.path.join(logdir, name))
        moved: list[str] = []
        dropped = 0
        aside = None
        if plan.changes_log:
            aside = _damaged_dir(real)
            salvage = None
            if plan.damaged is not None and plan.good_end > SEGMENT_HEADER_SIZE:
                salvage = plan.damaged.path + ".salvage"
                durable.copy_file(plan.damaged.path, salvage, limit=plan.good_end)
            for s in sorted(plan.set_aside, key=lambda s: (s.first is not None, s.first or 0), reverse=True):
                dropped += s.size
                moved.append(_set_aside(s.path, aside))
            for s, proper in plan.renames:
                if s is not plan.damaged or salvage is None:
                    durable.rename(s.path, proper)
                    s.path = proper
            if plan.damaged is not None:
                dropped += plan.damaged.size - (plan.good_end if salvage else 0)
                if salvage is not None:
                    moved.append(_link_aside(plan.damaged.path, aside))
                    proper = os.path.join(logdir, segment_name(plan.damaged.first or 0))
                    durable.rename(salvage, proper)
                    if proper != plan.damaged.path:
                        durable.remove(plan.damaged.path)
                else:
                    moved.append(_set_aside(plan.damaged.path, aside))
            if plan.bad_meta:
                moved.append(_set_aside(os.path.join(real, "evstore.meta"), aside))
        head_after = rebuild_index(real)
        durable.remove(os.path.join(real, JOURNAL))
    finally:
        os.close(fd)
    return RecoverReport(head_before, head_after, moved, dropped, aside, plan.findings)


__all__ = ["Problem", "VerifyReport", "RecoverReport", "verify", "reindex", "recover", "rebuild_index",
           "store_dir", "take_lock", "index_head"]
