"""The segmented append-only log: segment files, recovery of the tail, mapped reads and appends."""

from __future__ import annotations

import errno as _errno
import os
import re
import threading
from collections.abc import Callable, Iterator
from types import ModuleType

from evstore.format.layout import COMMIT_SIZE, HEADER, SEAL, SEGMENT_HEADER_SIZE
from evstore.storage.durable import fsync_dir, remove
from evstore.errors import CorruptedError, IndexAheadOfLog, IndexDamaged, StorageError, StoreFailed
from evstore.storage import holes, prepare
from evstore.storage.scan import SegmentScanner, seal_marker
from evstore.storage.segfile import Commit, Segment, check_segment_header, make_segment_header, segment_name

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")

# Bytes the writer allocates ahead of the active segment's tail at a time (at most to the segment size).
PREALLOCATE = 4 << 20



class Log:
    """The segment files of one store. Appends go through one writer (the store serialises them).

    `segments` and `by_first` are replaced and extended under `_list_lock` (readers of several threads
    may list new segments at once); the writer's state (`_fd`, `retired_fds`, `next_position`,
    `appended`, the active segment's `end`) is guarded by the engine's writer lock."""

    def __init__(self, directory: str, impl: ModuleType, *, segment_size: int, writable: bool,
                 first_position: int = 1, zero_ahead: bool = False) -> None:
        self.dir = directory
        self.impl = impl
        self.segment_size = segment_size
        self.writable = writable
        self.first_position = first_position
        self.segments: list[Segment] = []
        self.by_first: dict[int, Segment] = {}
        self.next_position = first_position
        self.appended = 0  # commits appended through this object (event-less ones too)
        # A leaf lock (no lock is taken under it; `syncs_done` waits on it): guards `_fd`, `retired_fds`,
        # `sync_failed`, `syncing` and `tickets`. No I/O is done under it.
        self.fd_lock = threading.Lock()
        self.syncs_done = threading.Condition(self.fd_lock)  # notified as each sync of the log ends
        self.sync_failed: OSError | None = None  # the first failed sync of the log: none after vouches
        self.syncing: set[int] = set()  # the tickets of the syncs of the log under way (`checked_sync`)
        self.tickets = 0  # the next ticket
        self._fd = -1  # the active segment, writer only
        self.retired_fds: list[int] = []  # sealed segments' descriptors, closed by the next group sync (the writer, durability="os")
        self._list_lock = threading.Lock()
        self._recovered: list[Segment] = []  # segments the last recover() scanned (to sync before indexing)
        # Written zeros ahead of the tail (storage/prepare.py), for a writer whose commits each wait for
        # an fdatasync; None otherwise.
        self._ahead_refused = -1  # the allocated size at which the last `_reserve_ahead` was refused
        self.preparer = (prepare.Preparer(self.prepared_sync)
                         if writable and zero_ahead and prepare.worth_preparing(directory) else None)
        self.load_segments()

    # -- discovery -------------------------------------------------------------------------

    def load_segments(self) -> None:
        """(Re)list the segment files, checking each new one's header. Thread-safe."""
        with self._list_lock:
            self._load_segments()

    def _load_segments(self) -> None:
        names = []
        try:
            entries = os.listdir(self.dir)
        except OSError as e:
            raise CorruptedError(self.dir, 0, f"the log directory cannot be listed ({e.strerror})") from e
        for name in entries:
            m = _SEGMENT_NAME.match(name)
            if m:
                names.append((int(m.group(1)), name))
            elif self.writable and name.endswith(".seg.new") and _SEGMENT_NAME.match(name[:-4]):
                remove(os.path.join(self.dir, name))  # a segment whose creation a crash cut short
        names.sort()
        segments = list(self.segments)
        for first, name in names:
            if first in self.by_first:
                continue
            path = os.path.join(self.dir, name)
            try:
                with open(path, "rb") as f:
                    raw = f.read(SEGMENT_HEADER_SIZE)
            except OSError as e:
                raise CorruptedError(path, 0, f"the segment cannot be read ({e.strerror})") from e
            if len(raw) < SEGMENT_HEADER_SIZE and first == names[-1][0] and self.writable and (
                    segments or first == self.first_position):
                # A crash while the segment was being created: it never held a commit.
                remove(path)
                continue
            check_segment_header(self.impl, path, raw, first)
            seg = Segment(first, path, SEGMENT_HEADER_SIZE)
            segments.append(seg)
            self.by_first[first] = seg
        segments.sort(key=lambda s: s.first)
        for seg in segments[:-1]:
            seg.sealed = True
        if segments and segments[0].first != self.first_position:
            raise CorruptedError(os.path.join(self.dir, segment_name(self.first_position)), 0,
                                 f"the first segment of the log is missing: the log starts at position "
                                 f"{segments[0].first}, not {self.first_position}")
        self.segments = segments

    def segment(self, first: int) -> Segment:
        seg = self.by_first.get(first)
        if seg is None:
            self.load_segments()
            seg = self.by_first.get(first)
            if seg is None:
                raise CorruptedError(os.path.join(self.dir, segment_name(first)), 0,
                                     "segment named by the index is missing")
        return seg

    # -- recovery --------------------------------------------------------------------------

    def check_checkpoint(self, checkpoint: tuple[int, int, int],
                         last_commit: tuple[int, int, int, int, int] | None) -> None:
        """Check that an index checkpoint (segment, end offset, next position) is a commit boundary of
        this log and that the index's last commit lies within it.

        Raises `IndexAheadOfLog` when the log ends before it (the segment is missing or shorter) and
        `IndexDamaged` when the bytes there are not the end of a commit with that next position."""
        seg_first, end, next_pos = checkpoint
        if seg_first not in self.by_first:
            self.load_segments()  # a writer in another process may have rolled since we listed
        seg = self.by_first.get(seg_first)
        if seg is None:
            path = os.path.join(self.dir, segment_name(seg_first))
            raise IndexAheadOfLog(path, end, "the segment the index was last written to is missing")
        size = os.path.getsize(seg.path)
        if size < end:
            raise IndexAheadOfLog(seg.path, size, f"the log ends before offset {end} that the index covers")
        if end < SEGMENT_HEADER_SIZE + COMMIT_SIZE:
            raise IndexDamaged(seg.path, end, "the index checkpoint is not a commit boundary")
        buf = seg.buffer(end)
        o = end - COMMIT_SIZE
        if self.impl.find_commit(buf, o, end) != o:
            if not any(bytes(buf[o:end])):  # zeros where the index's last COMMIT is: the log ends before it
                raise IndexAheadOfLog(seg.path, o, f"the log's commits end before offset {end} that the index "
                                      "covers (zeros there)")
            raise IndexDamaged(seg.path, o, "the index checkpoint is not the end of a commit in the log")
        h = HEADER.unpack_from(buf, o)
        if h[7] + h[8] != next_pos:
            raise IndexDamaged(seg.path, o, f"the index checkpoint says position {next_pos}, the log's commit "
                               f"there ends before {h[7] + h[8]}")
        if last_commit is not None:
            p, cseg, coff, n, nbytes = last_commit
            if p + n > next_pos or (cseg, coff + nbytes) > (seg_first, end):
                raise IndexDamaged(seg.path, end, "the index holds a commit past its own checkpoint")

    def recover(self, checkpoint: tuple[int, int, int] | None, unsynced_tail: bool = False) -> Iterator[Commit]:
        """Scan from the index checkpoint to the end of the log, yielding each whole commit.

        A torn tail of the last segment is cut off (writer) or ignored (reader); damage followed by
        committed data, or any damage in a sealed segment, raises `CorruptedError` — except, with
        `unsynced_tail` (the last writer used durability="os"), damage in the last segment after
        the checkpoint, which that writer never synced: the log is cut there. An index
        checkpoint beyond the log's end raises `IndexAheadOfLog`. A gap in positions between
        segments (a missing segment) raises `CorruptedError`.
        """
        self._recovered = []
        if checkpoint is None:
            if not self.segments:
                return
            start_seg, start_off, next_pos = self.segments[0].first, SEGMENT_HEADER_SIZE, self.first_position
        else:
            start_seg, start_off, next_pos = checkpoint
            if start_seg not in self.by_first:
                self.load_segments()  # a writer in another process may have rolled since we listed
            if start_seg not in self.by_first:
                path = os.path.join(self.dir, segment_name(start_seg))
                raise IndexAheadOfLog(path, start_off, "the segment the index was last written to is missing")
        for i, seg in enumerate(self.segments):
            if seg.first < start_seg:
                seg.end = os.path.getsize(seg.path)  # sealed before the checkpoint: whole
                continue
            last = i == len(self.segments) - 1
            off = start_off if seg.first == start_seg else SEGMENT_HEADER_SIZE
            size = os.path.getsize(seg.path)
            if size < off:
                raise IndexAheadOfLog(seg.path, size, f"the log ends before offset {off} that the index covers")
            if seg.first != start_seg and seg.first != next_pos:
                raise CorruptedError(seg.path, 0, f"segment starts at position {seg.first}, expected {next_pos}: "
                                     "a segment is missing")
            if seg.first == start_seg and checkpoint is None and seg.first != next_pos:
                raise CorruptedError(seg.path, 0, f"the log starts at position {seg.first}, not {next_pos}")
            self._recovered.append(seg)
            buf = seg.buffer(size)
            scanner = SegmentScanner(self.impl, seg.path, buf, size, off, next_pos, last=last,
                                     # a reader: what follows the checkpoint may be a commit in flight
                                     unsynced_from=off if (unsynced_tail or not self.writable) and last else None,
                                     check_zeros=self.writable)
            for c in scanner:  # raises CorruptedError on damage that is not a torn tail
                yield Commit(seg, c.offset, c.end, c.first_position, c.n_events, c.records)
            off, next_pos = scanner.end, scanner.next_position
            seg.end = off
            if scanner.code and self.writable:  # a torn tail: cut it off (durably)
                self._truncate(seg, off)
        self.next_position = next_pos

    def sync_all(self) -> None:
        """fsync every segment the last `recover()` scanned, and the log directory: what recovery
        adopted becomes durable before anything (the index) depends on it."""
        for seg in self._recovered:
            fd = os.open(seg.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.dir)
        self._recovered = []

    def _truncate(self, seg: Segment, end: int) -> None:
        """Cut a torn tail off: zeros from `end` to the end of the file, synced. The file keeps its
        size: a reader may have it mapped (a page cut off under a mapping faults when touched)."""
        fd = os.open(seg.path, os.O_WRONLY)
        try:
            size = os.fstat(fd).st_size
            zeros = bytes(min(1 << 20, max(0, size - end)))
            off = end
            while off < size:
                n = min(len(zeros), size - off)
                off += os.pwrite(fd, zeros[:n], off)
            os.fsync(fd)
        finally:
            os.close(fd)
        seg._map = None
        seg._map_len = 0

    # -- writing ---------------------------------------------------------------------------

    @property
    def active(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    def _open_active(self) -> None:
        seg = self.segments[-1]
        fd = os.open(seg.path, os.O_WRONLY)
        seg.allocated = max(seg.end, os.fstat(fd).st_size)  # recovery left zeros only after `end`
        with self.fd_lock:
            self._fd = fd
        if self.preparer is not None:
            self.preparer.switch(seg.path, seg.end, seg.allocated)

    def prepared_sync(self, fd: int) -> None:
        """The preparer's sync of its zeros: a sync of the log that vouches for nothing (a failure is
        latched: no later sync of the log vouches)."""
        self.checked_sync(fd, vouch=False)

    def _reserve(self, seg: Segment, need: int) -> None:
        """Allocate the active segment up to at least `need` bytes, PREALLOCATE more when the segment
        size allows: appends then write into space that is already the file's (pwrite), so that their
        fdatasync need not commit a change of its size. The new space reads as zeros, the end of the
        log (docs/log_format.md). Raises OSError (e.g. ENOSPC) with the file as it was."""
        target = max(need, min(seg.allocated + PREALLOCATE, self.segment_size))
        try:
            os.posix_fallocate(self._fd, seg.allocated, target - seg.allocated)
        except OSError:
            if target == need:
                raise
            os.posix_fallocate(self._fd, seg.allocated, need - seg.allocated)  # a nearly full disk
            target = need
        seg.allocated = target
        if self.preparer is not None:
            self.preparer.allocated(target)

    def _new_segment(self, first: int) -> None:
        """Create the segment named for `first`, durably (header synced, then its entry). A segment's
        name is chosen once: an existing file of that name is never replaced."""
        path = os.path.join(self.dir, segment_name(first))
        if os.path.lexists(path) or (self.segments and self.segments[-1].first >= first):
            raise StorageError(path, None, f"cannot start segment {path}: a segment of that name or a later "
                               "one exists (the log would be overwritten)")
        tmp = path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, make_segment_header(self.impl, first))
            try:  # born preallocated (within the segment size): the sync below covers the new space too
                n = min(PREALLOCATE, self.segment_size - SEGMENT_HEADER_SIZE)
                if n > 0:
                    os.posix_fallocate(fd, SEGMENT_HEADER_SIZE, n)
            except OSError:
                pass  # a nearly full disk: appends reserve what each needs, or fail cleanly
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # fails rather than replace: the name is new or this is an error
        os.unlink(tmp)
        fsync_dir(self.dir)
        seg = Segment(first, path, SEGMENT_HEADER_SIZE)
        with self._list_lock:
            if self.segments:
                self.segments[-1].sealed = True
            self.segments = [*self.segments, seg]
            self.by_first[first] = seg
        self._open_active()

    def append(self, buf: bytearray, first_position: int, n_events: int) -> tuple[Segment, int]:
        """Write one sealed commit (no sync) and return (segment, offset). Rolls the segment when full.

        On failure what was written is zeroed again (`_undo`) and `StorageError` is raised: the commit
        is not in the log. `StoreFailed` when the segment sealed by a roll could not be synced, or a
        failed write could not be undone: the caller must write nothing more (`GroupCommit.latch`).
        """
        seg = self.active
        # Roll only away from a segment that holds an event: a segment is named by its first position,
        # and one holding only event-less commits (marks, snapshots, tracking) shares that position
        # with the next commit, so rolling from it would name the new segment like the old one.
        if seg is None or (seg.end + len(buf) > self.segment_size and seg.end > SEGMENT_HEADER_SIZE
                           and self.next_position > seg.first):
            self.roll(first_position)
            seg = self.segments[-1]
        elif self._fd < 0:
            self._open_active()
        off = seg.end
        try:
            if off + len(buf) > seg.allocated:
                self._reserve(seg, off + len(buf))
        except OSError as e:
            raise StorageError(seg.path, e.errno, f"cannot allocate space in {seg.path}: {e.strerror}; nothing "
                               "was written (free space and retry)") from e
        end, next_position, appended = off + len(buf), first_position + n_events, self.appended + 1
        prep = self.preparer
        if prep is not None:
            prep.reserve(off, end)  # no zeros are written there from now on
        try:
            self.impl.pwrite(self._fd, buf, off)
        except OSError as e:
            self._undo(seg, off, len(buf))
            raise StorageError(seg.path, e.errno, f"cannot write to {seg.path}: {e.strerror}; nothing was "
                               "written (free space and retry)") from e
        # Stores and no call between them: an interrupt (Ctrl-C) lands before them all or after them all.
        seg.end = end
        self.next_position = next_position
        self.appended = appended
        if prep is not None and seg.allocated - end < prepare.AHEAD and seg.allocated < self.segment_size:
            self._reserve_ahead(seg)
        return seg, off

    def _reserve_ahead(self, seg: Segment) -> None:
        """Allocate PREALLOCATE more of the active segment before the tail needs it, so that the
        preparer can zero it first; nothing on a nearly full disk (asked again once an append has
        allocated what it needed: the append that needs the space says what is wrong)."""
        if seg.allocated == self._ahead_refused:
            return
        target = min(seg.allocated + PREALLOCATE, self.segment_size)
        try:
            os.posix_fallocate(self._fd, seg.allocated, target - seg.allocated)
        except OSError:
            self._ahead_refused = seg.allocated
            return
        seg.allocated = target
        if self.preparer is not None:
            self.preparer.allocated(target)

    def _undo(self, seg: Segment, off: int, n: int) -> None:
        """After a failed write of `n` bytes at `off`: zeros again where it may have written (only
        zeros follow the log's end), written or, failing that, punched (storage/holes.py: no space
        needed), and synced: a power cut cannot bring back what the kernel wrote back of the failed
        write before the zeros. The file is never cut: another process may have it mapped past `off`.
        Raises `StoreFailed` when this cannot be done: the bytes may stay there, and the caller must
        write nothing more (`GroupCommit.latch`); the next open's recovery reads what they are."""
        try:
            zeroed = off + n <= seg.allocated and os.pwrite(self._fd, bytes(n), off) == n
        except OSError:
            zeroed = False
        try:
            if not zeroed:
                if self.preparer is not None:
                    self.preparer.retire()  # no zeros written from now on into space the hole frees
                holes.punch_zeros(self._fd, off, n)
                seg.allocated = min(seg.allocated, off)  # allocated again before a write there
            self.checked_sync(self._fd, vouch=False)
        except OSError as e:
            raise StoreFailed(f"a failed write to {seg.path} could not be undone ({e}): what it wrote may be "
                              "found there when the store is reopened; reopen the store") from e

    def roll(self, first_position: int) -> None:
        """Seal the active segment (durably) and start a new one at `first_position`. The sealed file
        keeps the zeros reserved after its last commit: a file of the log never shrinks while it is
        open (another process may have it mapped, and would fault on pages cut off)."""
        seg = self.active
        if seg is not None and self._fd < 0:
            self._open_active()  # a roll before this writer's first append to it: seal it all the same
        if self.preparer is not None:
            self.preparer.retire()  # no zeros are written to a segment being sealed
        if self._fd >= 0 and seg is not None:
            if seg.allocated > seg.end:  # allocated space follows: mark where the commits end
                # The marker goes into allocated space, as a commit does (`_reserve`): a failed write is
                # then undone by zeros, never by cutting the file below what it held.
                try:
                    if seg.end + SEAL.size > seg.allocated:
                        self._reserve(seg, seg.end + SEAL.size)
                except OSError as e:
                    raise StorageError(seg.path, e.errno, f"cannot seal {seg.path}: {e.strerror}; nothing was "
                                       "written (free space and retry)") from e
                try:
                    self.impl.pwrite(self._fd, seal_marker(self.impl, seg.end), seg.end)
                except OSError as e:
                    self._undo(seg, seg.end, SEAL.size)
                    raise StorageError(seg.path, e.errno, f"cannot seal {seg.path}: {e.strerror}; nothing was "
                                       "written (free space and retry)") from e
            try:
                # Not vouched for here: what the segment holds is acknowledged by the syncs that vouch
                # (the group syncer's, the indexer's), which wait for this one's outcome.
                self.checked_sync(self._fd, os.fsync, vouch=False)
            except OSError as e:  # what the segment holds may not be durable, earlier commits included
                raise StoreFailed(f"the segment {seg.path} could not be synced when it was sealed ({e}); "
                                  "reopen the store") from e
            with self.fd_lock:
                self.retired_fds.append(self._fd)
                self._fd = -1
        try:
            self._new_segment(first_position)
        except OSError as e:
            raise StorageError(self.dir, e.errno, f"cannot create a segment in {self.dir}: {e.strerror}") from e

    def sync_fd(self) -> int:
        """The descriptor a syncer must fsync to make every written commit durable (requires the
        writer lock: a roll may retire it otherwise)."""
        return self._fd

    def sync_active(self) -> bool:
        """fdatasync the active segment, for a syncer that does not hold the writer lock: as
        `checked_sync`, on a duplicate of its descriptor (a roll may retire and close the segment's
        meanwhile). No active segment: every commit written is in a segment synced when it was
        sealed. Raises OSError as `checked_sync` does, or when the descriptor cannot be duplicated
        (EMFILE: nothing synced, nothing latched: `sync_error()` is not the error)."""
        with self.fd_lock:
            if self.sync_failed is not None:
                return False
            fd = os.dup(self._fd) if self._fd >= 0 else -1
        if fd < 0:
            return self.vouched()
        try:
            return self.checked_sync(fd)
        finally:
            os.close(fd)

    def checked_sync(self, fd: int, sync: Callable[[int], None] | None = None, vouch: bool = True) -> bool:
        """Sync `fd`, a descriptor of the log (`sync`: os.fdatasync by default, a seal's os.fsync),
        and say whether the sync vouches for what it covered (`vouched`; with vouch=False, True at
        once: a seal acknowledges nothing, and must not wait for another thread's sync). Raises
        OSError when it fails, latched first in `sync_failed`: the kernel reports a failed write-back
        once, to the first sync that asks, and a later sync of the file succeeds though the pages
        are gone."""
        ticket = -1
        failed: OSError | None = None
        try:
            with self.fd_lock:
                ticket = self.tickets
                self.tickets += 1
                self.syncing.add(ticket)
            (os.fdatasync if sync is None else sync)(fd)
        except OSError as e:
            failed = e
            raise
        finally:
            mark = self._end_sync(ticket, failed)
        return self.vouched(mark) if vouch else True

    def _end_sync(self, ticket: int, failed: OSError | None) -> int:
        """A sync's bookkeeping at its end: its ticket given back, its failure latched; returns the
        tickets given by then. An interrupt (Ctrl-C) raised inside it does not leave the ticket
        behind (every later sync would wait for it): the bookkeeping, which can be done twice, is
        done again, and the interrupt raised once it is complete."""
        interrupt: BaseException | None = None
        while True:
            try:
                with self.fd_lock:
                    self.syncing.discard(ticket)
                    if failed is not None and self.sync_failed is None:
                        self.sync_failed = failed
                    mark = self.tickets  # the syncs begun before this one ended
                    self.syncs_done.notify_all()
                break
            except KeyboardInterrupt as e:
                interrupt = e
        if interrupt is not None:
            raise interrupt
        return mark

    def vouched(self, mark: int | None = None) -> bool:
        """After a sync of the log that succeeded (and ended when `mark` tickets had been given; by
        default, now): whether it vouches for what it covered. Another sync of the file that
        overlapped it may have met (and so taken) the write-back error it would have reported: wait
        until every sync begun before the mark has ended, then ask whether any failed. (A waiter holds
        no ticket, so waiters never wait for each other.)"""
        with self.syncs_done:
            upto = self.tickets if mark is None else mark
            self.syncs_done.wait_for(lambda: not self.syncing or min(self.syncing) >= upto)
            return self.sync_failed is None

    def sync_error(self) -> OSError | None:
        """The first failed sync of the log, if any (see `checked_sync`)."""
        with self.fd_lock:
            return self.sync_failed

    def take_retired(self) -> list[int]:
        """The descriptors of segments sealed since the last call, for the group syncer to close."""
        with self.fd_lock:
            retired, self.retired_fds = self.retired_fds, []
        return retired

    def close(self, forked: bool = False) -> None:
        """Close the log's descriptors. `forked`: in a forked child, with no lock taken (a thread of
        the parent may have held one as the process forked, and it does not exist in the child)."""
        if self.preparer is not None:
            self.preparer.stop(forked)
        if forked:
            fds, self.retired_fds, self._fd = [*self.retired_fds, self._fd], [], -1
        else:
            with self.fd_lock:
                fds, self.retired_fds, self._fd = [*self.retired_fds, self._fd], [], -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError as e:  # pragma: no cover
                    if e.errno != _errno.EBADF:
                        raise

    def size(self) -> int:
        """Bytes of the segment files on disk (with the space reserved after their last commits)."""
        return sum(os.path.getsize(s.path) for s in self.segments)
