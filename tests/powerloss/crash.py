"""Crash states: what a power cut at a chosen point of a recorded run may leave on disk.

A crash point `p` means: every operation that completed at a trace line before `p` happened (in the
page cache), nothing after it did. From there:

**File data** (both metadata models). For each inode, the writes and truncates it received before
`p` are split into the *synced* ones, those that completed before the start of an fsync/fdatasync
of that inode (or a sync/syncfs) that itself completed before `p`, together with writes through
O_DSYNC/O_SYNC descriptors, which are kept, and the others, each of which may be lost. A state picks
one of five ways to lose un-synced operations (the same for every inode of the state): all lost,
all kept, a random prefix kept (in-order writeback), each operation kept or lost independently
(reordered writeback), or each 4 KiB page of each write kept or lost independently (reordered at
page granularity). Independently, with probability 1/4 an inode's size is the size after *all* its
operations even though their data was lost: bytes past the synced size come back as zeros (ext4
data=writeback, XFS). A write is never torn inside a page (no sector model).

**Directory entries** (create, mkdir, link, rename, unlink, rmdir), per model:

* `posix`: an entry operation is kept if a directory it changes was fsynced after it (the fsync
  started after the operation completed and finished before `p`); any other is kept or lost at
  random, in any subset closed under dependencies: an operation on an entry depends on the earlier
  operations on the same (directory, name) entry, so a rename is never kept without the create of its
  source, and a kept operation's dependencies are kept. Operations on different names commute, so
  this subset model contains every per-directory prefix and more; we chose it over "a random prefix
  per directory" because POSIX orders nothing between different names of one directory, and real
  file systems (btrfs log trees, delayed allocation) do persist later entries without earlier
  unrelated ones. A rename is atomic (one operation, in both directories).
* `journal` (ext4 data=ordered-like): entry operations persist as a global prefix, in order, and an
  fsync or fdatasync of *any* inode persists every entry operation completed before it started (the
  journal commit it forces carries them). fdatasync is treated like fsync: on ext4 it commits the
  journal whenever the file's size changed, which every append does.

Directories created during the run whose entry is lost take everything under them with them.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import random
from dataclasses import dataclass, field

from .replay import DataOp, History, MetaOp

PAGE = 4096
MODELS = ("posix", "journal")
DATA_MODES = ("lose-all", "keep-all", "prefix", "ops", "pages")


@dataclass
class CrashState:
    """One materialisable crash state."""

    point: int
    model: str
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # path -> symbolic link target
    notes: list[str] = field(default_factory=list)  # what was chosen, for reports

    def digest(self) -> str:
        h = hashlib.sha256()
        for d in sorted(self.dirs):
            h.update(b"D" + d.encode() + b"\0")
        for p in sorted(self.files):
            h.update(b"F" + p.encode() + b"\0" + hashlib.sha256(self.files[p]).digest())
        for p in sorted(self.links):
            h.update(b"L" + p.encode() + b"\0" + self.links[p].encode() + b"\0")
        return h.hexdigest()

    def write(self, dest: str, recorded_root: str) -> None:
        """Create the state as a real directory tree at `dest` (which must not exist); symbolic links
        into the recorded root point into `dest` instead."""
        os.makedirs(dest, mode=0o700)
        for d in sorted(self.dirs):
            os.makedirs(os.path.join(dest, d), mode=0o700, exist_ok=True)
        for p, content in self.files.items():
            full = os.path.join(dest, p)
            with open(full, "wb") as f:
                f.write(content)
            os.chmod(full, 0o600)
        for p, target in self.links.items():
            if target == recorded_root or target.startswith(recorded_root + os.sep):
                target = dest + target[len(recorded_root) :]
            os.symlink(target, os.path.join(dest, p))


class Prepared:
    """A `History` indexed for fast crash-state construction."""

    def __init__(self, h: History) -> None:
        self.h = h
        self.ops: dict[int, list[DataOp]] = {}
        for op in h.data:
            self.ops.setdefault(op.ino, []).append(op)
        self.op_seqs = {ino: [o.seq for o in ops] for ino, ops in self.ops.items()}
        self.meta_seqs = [m.seq for m in h.meta]
        self.deps: list[list[int]] = []
        last: dict[tuple[int, str], int] = {}
        for i, m in enumerate(h.meta):
            self.deps.append(sorted({last[k] for k in m.keys if k in last}))
            for k in m.keys:
                last[k] = i
        self.points = sorted(set(h.points))

    # -- choosing a point ------------------------------------------------------------------------

    def choose_point(self, rng: random.Random) -> int:
        """A crash point: right after a random operation, biased towards acks, syncs and renames."""
        if not self.points or rng.random() < 0.03:
            return self.h.end  # after everything: the run finished, then the power went
        pool = self.h.interesting if self.h.interesting and rng.random() < 0.5 else self.points
        return rng.choice(pool) + 1

    # -- data --------------------------------------------------------------------------------------

    def _synced_count(self, ino: int, point: int) -> int:
        """How many of the inode's operations are covered by an fsync completed before `point`."""
        seqs = self.op_seqs.get(ino, [])
        best = 0
        for s in self.h.syncs:
            if s.seq < point and (s.ino is None or s.ino == ino):
                best = max(best, bisect.bisect_left(seqs, s.start))
        return best

    def file_content(self, ino: int, point: int, mode: str, rng: random.Random, notes: list[str]) -> bytes:
        buf = bytearray(self.h.base_files.get(ino, b""))
        ops = self.ops.get(ino, [])
        n = bisect.bisect_left(self.op_seqs.get(ino, []), point)
        synced = self._synced_count(ino, point)
        keep_prefix = rng.randint(synced, n) if mode == "prefix" else n
        nominal = len(buf)
        lost = 0
        for i, op in enumerate(ops[:n]):
            nominal = _size_after(op, nominal)
            forced = i < synced or op.dsync
            if forced or mode == "keep-all" or (mode == "prefix" and i < keep_prefix):
                _apply(buf, op, None)
                continue
            if mode in ("lose-all", "prefix"):
                lost += 1
                continue
            if op.kind != "w" or mode == "ops":
                if rng.random() < 0.5:
                    _apply(buf, op, None)
                else:
                    lost += 1
                continue
            first, last = op.off // PAGE, (op.off + len(op.data) - 1) // PAGE if op.data else op.off // PAGE
            pages = {p for p in range(first, last + 1) if rng.random() < 0.5}
            lost += (last - first + 1) - len(pages)
            _apply(buf, op, pages)
        if n > synced and mode != "keep-all" and rng.random() < 0.25 and nominal != len(buf):
            notes.append(f"inode {ino}: size {nominal} kept without its data (was {len(buf)})")
            if nominal < len(buf):
                del buf[nominal:]
            else:
                buf.extend(bytes(nominal - len(buf)))
        if lost:
            notes.append(f"inode {ino}: {lost} of {n - synced} un-synced writes/pages lost")
        return bytes(buf)

    # -- metadata ----------------------------------------------------------------------------------

    def kept_meta(self, point: int, model: str, rng: random.Random, notes: list[str]) -> list[MetaOp]:
        meta = self.h.meta
        n = bisect.bisect_left(self.meta_seqs, point)
        if model == "journal":
            k0 = 0
            for s in self.h.syncs:
                if s.seq < point:
                    k0 = max(k0, bisect.bisect_left(self.meta_seqs, s.start))
            r = rng.random()
            k = k0 if r < 0.35 else n if r < 0.6 else rng.randint(k0, n)
            if k < n:
                notes.append(f"journal: {n - k} entry operations after #{k} lost: "
                             + "; ".join(f"{m.kind} {m.desc}" for m in meta[k:n][:4]))
            return meta[:k]
        forced: set[int] = set()
        for s in self.h.syncs:
            if s.seq >= point or not (s.ino is None or s.is_dir):
                continue
            lim = bisect.bisect_left(self.meta_seqs, s.start)
            for i in range(lim):
                if s.ino is None or any(d == s.ino for d, _ in meta[i].keys):
                    forced.add(i)
        stack = list(forced)
        while stack:  # a kept operation keeps what it depends on
            for d in self.deps[stack.pop()]:
                if d not in forced:
                    forced.add(d)
                    stack.append(d)
        p = rng.choice([0.0, 0.0, 1.0, 0.5, rng.random()])
        kept: list[int] = []
        chosen: set[int] = set()
        for i in range(n):
            if i in forced or (all(d in chosen for d in self.deps[i]) and rng.random() < p):
                chosen.add(i)
                kept.append(i)
        lost = [meta[i] for i in range(n) if i not in chosen]
        if lost:
            notes.append(f"posix: {len(lost)} un-synced entry operations lost: "
                         + "; ".join(f"{m.kind} {m.desc}" for m in lost[:4]))
        return [meta[i] for i in kept]

    # -- the state ---------------------------------------------------------------------------------

    def state(self, point: int, model: str, rng: random.Random) -> CrashState:
        st = CrashState(point, model)
        mode = rng.choice(DATA_MODES)
        st.notes.append(f"point {point}, data mode {mode}")
        entries = {d: dict(e) for d, e in self.h.base_dirs.items()}
        for m in self.kept_meta(point, model, rng, st.notes):
            if m.kind in ("create", "mkdir", "link"):
                d, name = m.keys[0]
                entries.setdefault(d, {})[name] = m.ino
                if m.kind == "mkdir":
                    entries.setdefault(m.ino, {})
            elif m.kind in ("unlink", "rmdir"):
                d, name = m.keys[0]
                entries.setdefault(d, {}).pop(name, None)
            else:
                (sd, sn), (dd, dn) = m.keys
                entries.setdefault(sd, {}).pop(sn, None)
                entries.setdefault(dd, {})[dn] = m.ino
        contents: dict[int, bytes] = {}
        stack = [(self.h.root_ino, "")]
        seen = set()
        while stack:
            ino, rel = stack.pop()
            if ino in seen:
                continue
            seen.add(ino)
            for name, child in sorted(entries.get(ino, {}).items()):
                path = f"{rel}/{name}" if rel else name
                if child in self.h.links:
                    st.links[path] = self.h.links[child]
                elif self.h.is_dir.get(child, False):
                    st.dirs.append(path)
                    stack.append((child, path))
                else:
                    if child not in contents:
                        contents[child] = self.file_content(child, point, mode, rng, st.notes)
                    st.files[path] = contents[child]
        return st


def _size_after(op: DataOp, size: int) -> int:
    if op.kind == "t":
        return op.size
    return max(size, op.off + len(op.data))


def _apply(buf: bytearray, op: DataOp, pages: set[int] | None) -> None:
    """Apply `op` to `buf`: whole, or only the 4 KiB pages in `pages` (a write)."""
    if op.kind == "t":
        if op.size < len(buf):
            del buf[op.size :]
        else:
            buf.extend(bytes(op.size - len(buf)))
        return
    start, end = op.off, op.off + len(op.data)
    if pages is None:
        spans = [(start, end)]
    else:
        spans = [(max(start, p * PAGE), min(end, (p + 1) * PAGE)) for p in sorted(pages)]
    for a, b in spans:
        if b > len(buf):
            buf.extend(bytes(b - len(buf)))
        buf[a:b] = op.data[a - start : b - start]


__all__ = ["CrashState", "MODELS", "PAGE", "Prepared"]
