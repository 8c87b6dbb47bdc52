"""Crash states: what a power cut at a chosen point of a recorded run may leave on disk.

A crash point `p` means: every operation that completed at a trace line before `p` happened (in the
page cache), nothing after it did. From there:

**File data** (both metadata models). For each inode, the writes and truncates it received before
`p` are split into the *synced* ones, those that completed before the start of an fsync/fdatasync
of that inode (or a sync/syncfs) that itself completed before `p`, which are kept, and the others.
The page cache writes a file back page by page, each page as it was in the cache at that moment:
so after the crash each 4 KiB page holds one of its *versions* since the sync (its synced content
plus a prefix of the un-synced writes that touched it), pages independently of each other, and the
size is one of the sizes the file had since the sync, zeros wherever it runs past the data that
survived (ext4 data=writeback, XFS). An O_DSYNC/O_SYNC write put its pages at least at the version
it made. A state picks one way for all inodes: all un-synced writes lost; all kept; a prefix kept
(in-order writeback); each write kept or lost (a page keeping a write only with the earlier writes
to that page, since a page is written whole); each page at a random version ("reordered at page
granularity"). Independently, with probability 1/4 an inode keeps its newest size even where its
data is lost. Bytes are never torn inside a page (no sector model): a page never holds a later
write without an earlier one to the same page, because no moment of the cache looked like that.

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
        """The inode's bytes after the crash: synced operations applied, then each page at one of its
        versions since (a prefix of the un-synced writes that touched it), and the size at one of
        its values since, zeros where the size runs past the data that survived."""
        ops = self.ops.get(ino, [])
        n = bisect.bisect_left(self.op_seqs.get(ino, []), point)
        synced = self._synced_count(ino, point)
        durable = bytearray(self.h.base_files.get(ino, b""))
        for op in ops[:synced]:
            _apply(durable, op)
        tail = ops[synced:n]
        if not tail:
            return bytes(durable)
        sizes = [len(durable)]
        for op in tail:
            sizes.append(_size_after(op, sizes[-1]))
        touching: dict[int, list[int]] = {}  # page -> the un-synced operations that changed it, in order
        for j, op in enumerate(tail):
            for page in _pages(op, sizes[j]):
                touching.setdefault(page, []).append(j)
        cut = rng.randint(0, len(tail))  # "prefix": in-order writeback of the first `cut` operations
        chosen = {j for j in range(len(tail)) if rng.random() < 0.5}  # "ops": each kept or lost
        out = bytearray(durable)
        old_pages = 0
        for page, lst in touching.items():
            # An O_DSYNC write wrote its pages back as they were then, earlier writes included.
            floor = max((i + 1 for i, j in enumerate(lst) if tail[j].dsync), default=0)
            if mode == "keep-all":
                k = len(lst)
            elif mode == "lose-all":
                k = 0
            elif mode == "prefix":
                k = sum(1 for j in lst if j < cut)
            elif mode == "ops":  # a page keeps a write only together with every earlier write to it
                k = 0
                while k < len(lst) and lst[k] in chosen:
                    k += 1
            else:  # "pages": each page at any of its versions, independently of the others
                k = rng.randint(0, len(lst))
            k = max(k, floor)
            old_pages += k < len(lst)
            content = bytearray(durable[page * PAGE : (page + 1) * PAGE])
            content.extend(bytes(PAGE - len(content)))
            for j in lst[:k]:
                _apply_to_page(content, tail[j], page)
            end = (page + 1) * PAGE
            if len(out) < end:
                out.extend(bytes(end - len(out)))
            out[page * PAGE : end] = content
        ks = {"keep-all": len(tail), "lose-all": 0, "prefix": cut}.get(mode, rng.randint(0, len(tail)))
        if mode != "keep-all" and rng.random() < 0.25:
            ks = len(tail)  # the size made it to disk without (all) the data
        ks = max(ks, max((j + 1 for j, op in enumerate(tail) if op.dsync), default=0))
        size = sizes[ks]
        if old_pages or size != sizes[-1]:
            notes.append(f"inode {ino}: {old_pages} of {len(touching)} changed pages at an older version, "
                         f"size {size} of {sizes[-1]}")
        if len(out) < size:
            out.extend(bytes(size - len(out)))
        return bytes(out[:size])

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
    return max(size, op.off + len(op.data)) if op.data else size


def _pages(op: DataOp, size: int) -> range:
    """The pages whose bytes `op` changes, given the file's size before it."""
    if op.kind == "t":
        return range(op.size // PAGE, (size + PAGE - 1) // PAGE) if op.size < size else range(0)
    if not op.data:
        return range(0)
    return range(op.off // PAGE, (op.off + len(op.data) - 1) // PAGE + 1)


def _apply(buf: bytearray, op: DataOp) -> None:
    """Apply `op` to the whole file `buf`."""
    if op.kind == "t":
        if op.size < len(buf):
            del buf[op.size :]
        else:
            buf.extend(bytes(op.size - len(buf)))
        return
    end = op.off + len(op.data)
    if end > len(buf):
        buf.extend(bytes(end - len(buf)))
    buf[op.off : end] = op.data


def _apply_to_page(content: bytearray, op: DataOp, page: int) -> None:
    """Apply `op` to one page's bytes (`content`, PAGE long): a truncate zeroes what it cut off."""
    lo, hi = page * PAGE, (page + 1) * PAGE
    if op.kind == "t":
        if op.size < hi:
            start = max(op.size, lo) - lo
            content[start:] = bytes(PAGE - start)
        return
    a, b = max(op.off, lo), min(op.off + len(op.data), hi)
    if a < b:
        content[a - lo : b - lo] = op.data[a - op.off : b - op.off]


__all__ = ["CrashState", "MODELS", "PAGE", "Prepared"]
