"""Written zeros ahead of the log's tail, made off the append path (durability="fsync").

ext4 and XFS keep space reserved with `posix_fallocate` as *unwritten* extents. The first write
into such a block converts its extent: a metadata change, which the next fdatasync must commit to
the journal before it returns (a second device flush). A block that already holds written zeros
needs no conversion, so the fdatasync of a commit written over it flushes the data alone. Measured
on this machine (docs/performance.md): a 2.8 KB commit and its fdatasync 198-229 us into fallocated
space, 143-173 us into space zeroed ahead this way (the zeroing included); a 28 KB commit 399-425
against 277-282 us.

The `Preparer` is one thread per writable log that keeps the AHEAD bytes after the writer's tail
written with zeros and synced, within the space the writer has allocated (`posix_fallocate`, by the
writer): a chunk of CHUNK bytes at a time, written STEP bytes a claim and synced once, never nearer
the tail than GAP. Zeros read as the end of the log (docs/log_format.md): the
format is unchanged, and a zero write lost or torn by a power cut leaves what fallocate left,
zeros. Whether a commit lands in prepared space is a matter of speed alone.

Correctness rests on one rule: zeros are never written where a commit is or is being written. The
writer announces each write (`reserve`) before it makes it, and waits while a zero write over that
range is under way (one STEP at most, and only for a commit that reaches GAP past the tail while the
thread is behind); the thread claims a range only past every write announced, and only in the
segment the writer named (`switch`). A roll or a cut of the file first takes the segment away
(`retire`), which waits for the claim under way. The thread writes through a descriptor of its
own (its own open of the file) and syncs it as a sync of the log (`Log.checked_sync`, vouching
for nothing): a failed sync is latched like any other sync of the log, and no later sync vouches.
A failed zero write only ends the preparing.

Locks: `lock` (a leaf; the writer calls in under its writer lock) guards every field but the
thread's descriptor, which only the thread touches. No I/O is done under it.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

CHUNK = 1 << 20  # bytes of zeros written (and synced) at a time
AHEAD = 4 << 20  # bytes after the writer's tail kept zeroed, within the allocated space
# The file systems whose fallocated space is unwritten extents, overwritten in place: where zeros
# written ahead spare an fdatasync its journal commit. (Copy-on-write ones, btrfs and ZFS, write
# every block anew: there the zeros would be writes for nothing. tmpfs has no device.)
PREPARED_FILE_SYSTEMS = frozenset({"ext4", "xfs"})
STEP = 64 << 10  # bytes of zeros written under one claim (what an append may have to wait for)
GAP = 64 << 10  # zeros start at least this far past the tail, on a block boundary
_BLOCK = 4096


def worth_preparing(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether the file system holding `path` is one of PREPARED_FILE_SYSTEMS (Linux: the mount
    whose mount point is the longest prefix of the path's real path; False when unknown)."""
    real = os.path.realpath(path)
    best, fstype = -1, ""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                try:
                    point = fields[4].replace("\\040", " ")
                    kind = fields[fields.index("-") + 1]
                except (IndexError, ValueError):
                    continue
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= best:
                    best, fstype = len(point), kind
    except OSError:
        return False
    return fstype in PREPARED_FILE_SYSTEMS


class Preparer:
    """The zeroing thread of one log (see the module docstring). The writer calls `switch`,
    `reserve`, `allocated` and `retire` under its writer lock; `stop` at close."""

    def __init__(self, sync: Callable[[int], object]) -> None:
        self.sync = sync  # syncs the thread's descriptor as a sync of the log; raises OSError
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # a field changed; a claim ended
        # GUARDED_BY(lock):
        self.path: str | None = None  # the segment being prepared (None: none)
        self.generation = 0  # counts the segments named (and taken away)
        self.tail = 0  # the end of every write the writer announced in it
        self.limit = 0  # the space the writer has allocated (the file's size)
        self.zeroed = 0  # zeros are written and synced from the tail's next block up to here
        self.claim: tuple[int, int] | None = None  # the range being zeroed now
        self.stopped = False
        self.error: OSError | None = None  # why preparing ended, if it did
        self.thread: threading.Thread | None = None
        self.fd = -1  # written by the thread alone: its descriptor of the segment (-1: none)

    # -- the writer's side (under its writer lock) -------------------------------------------

    def switch(self, path: str, tail: int, allocated: int) -> None:
        """Prepare the active segment at `path` from now on: commits end at `tail`, the file's size
        is `allocated`. Starts the thread on the first call."""
        with self.lock:
            self._wait_claim()
            self.path, self.tail, self.limit = path, tail, allocated
            self.zeroed = tail
            self.generation += 1
            self.changed.notify_all()
            start = self.thread is None and not self.stopped
            if start:
                self.thread = threading.Thread(target=self._run, name="evstore-prepare", daemon=True)
        if start:
            self.thread.start()  # type: ignore[union-attr]

    def reserve(self, start: int, end: int) -> None:
        """Before the writer writes bytes start..end of the active segment: wait while zeros are
        being written over them, and claim no zeros there from now on."""
        with self.lock:
            if end > self.tail:  # first: no claim made from now on reaches the range
                self.tail = end
                if self.path is not None and self.zeroed + CHUNK <= min(end + AHEAD, self.limit):
                    self.changed.notify_all()  # (a chunk may be due)
            claim = self.claim
            while claim is not None and claim[0] < end and start < claim[1]:  # the one under way
                self.changed.wait()
                claim = self.claim

    def allocated(self, size: int) -> None:
        """The writer allocated the active segment up to `size` bytes."""
        with self.lock:
            if size > self.limit:
                self.limit = size
                self.changed.notify_all()

    def retire(self) -> None:
        """Prepare no more of the active segment (before it is sealed or cut); returns once no zero
        write to it is under way."""
        with self.lock:
            self.path = None
            self.generation += 1
            self._wait_claim()

    def stop(self, forked: bool = False) -> None:
        """End the thread (at the log's close) and wait for it. `forked`: in a forked child, where the
        thread does not exist: close the descriptor it had open, with no lock taken (the thread may
        have held it as the process forked)."""
        if forked:
            self.stopped, self.path, fd, self.fd = True, None, self.fd, -1
            if fd >= 0:
                os.close(fd)
            return
        with self.lock:
            self.stopped = True
            self.path = None
            self.changed.notify_all()
            th = self.thread
        if th is not None and th is not threading.current_thread():
            th.join()

    def _wait_claim(self) -> None:
        """Under `lock`: until no zero write is under way."""
        while self.claim is not None:
            self.changed.wait()

    # -- the thread ---------------------------------------------------------------------------

    def _next(self) -> tuple[str, int, int, int] | None:
        """Under `lock`: wait for a chunk to zero: (path, generation, start, end); None to end. A chunk
        is begun once the tail is within AHEAD of its end: one sync per CHUNK bytes the log grows,
        however small its commits."""
        while True:
            if self.stopped or self.error is not None:
                return None
            if self.path is not None:
                start = max(self.zeroed, self._floor())
                end = min(start + CHUNK, self.limit)
                if start < end and (end == self.limit or end <= self.tail + AHEAD):
                    return self.path, self.generation, start, end
            self.changed.wait()

    def _floor(self) -> int:
        """Under `lock`: where zeros may start: a block boundary GAP past the tail (a commit written
        meanwhile rarely reaches a claim, and then waits for one STEP's write at most)."""
        return -(-self.tail // _BLOCK) * _BLOCK + GAP

    def _claim(self, generation: int, at: int, end: int) -> tuple[int, int] | None:
        """Under `lock`: claim the next step of a chunk from `at` (None: the chunk is done with, or
        its segment taken away)."""
        if self.stopped or self.generation != generation:
            return None
        at = max(at, self._floor())
        if at >= end:
            return None
        self.claim = (at, min(at + STEP, end))
        return self.claim

    def _run(self) -> None:
        zeros = memoryview(bytes(STEP))
        fd, fd_generation = -1, -1
        try:
            while True:
                with self.lock:
                    work = self._next()
                if work is None:
                    return
                path, generation, at, end = work
                try:
                    if fd_generation != generation:
                        if fd >= 0:
                            self.fd = -1
                            os.close(fd)
                            fd = -1
                        fd = self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                        fd_generation = generation
                    while True:
                        with self.lock:
                            step = self._claim(generation, at, end)
                        if step is None:
                            break
                        try:
                            at, stop = step
                            while at < stop:
                                k = os.pwrite(fd, zeros[: stop - at], at)
                                if k <= 0:
                                    raise OSError(errno.EIO, "no progress writing zeros")
                                at += k
                        finally:
                            with self.lock:
                                self.claim = None
                                self.changed.notify_all()
                except OSError as e:
                    with self.lock:
                        self.error = e
                    return
                try:
                    self.sync(fd)
                except OSError as e:  # latched by the log's sync: no later sync of it vouches
                    with self.lock:
                        self.error = e
                    return
                with self.lock:
                    if self.generation == generation and end > self.zeroed:
                        self.zeroed = end
        finally:
            if fd >= 0:
                self.fd = -1
                os.close(fd)
