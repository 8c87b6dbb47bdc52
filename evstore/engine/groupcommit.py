"""Durability: group commit, the index writer thread and the failure latch.

A commit goes through three states: *written* (in the log, not yet synced: `pending`), *durable*
(synced per the durability mode: `unindexed`), *indexed* (its entries in a durable LMDB
transaction). One thread syncs every commit written so far while the others wait (group commit);
waiters return as soon as the log is durable; the indexer thread then writes the index in batches,
off the append path. A stream read of this process finds the durable commits not yet indexed in the
overlay (engine/overlay.py); any other read first indexes them (read-your-writes).

With durability="os" a commit is durable once written (the OS has it): the writer queues it for the
indexer itself, under the writer lock, with no syncer round. The index on disk never covers a commit
the log could lose: every index transaction writes only commits an fdatasync of the log has covered
(`log_synced_seq`). The indexer thread makes that fdatasync every `INDEX_DELAY` while commits come in,
and the *appending* thread writes the commits it covered to the index, at its next append: an index
thread writing while the appender runs would hand the GIL back and forth at every LMDB put (py-lmdb
releases it for each) and fall behind a one-thread stream of small appends without bound (measured:
39,000 commits, 3.5 s, behind after 60,000 appends). The thread writes them itself when no append
came to do it within half a delay (an idle appender).

Locks (the order in which they may be taken is that of `Core`'s docstring):
- the writer lock (`core.wlock`) guards `written_seq` and `pending`;
- `ids_lock` (a leaf) guards `pending_ids`; the log's `fd_lock` (a leaf) its descriptors and sync tickets, so that
  `flush_index` never takes the writer lock under the index lock;
- `index_lock` guards `indexed_seq`, `index_error` and every index write transaction;
- `queue_lock` guards `unindexed`, `unindexed_seq` and `log_synced_seq`; the overlay's leaf lock its entries, added under
  `queue_lock` as commits become durable (read-your-writes for stream reads: engine/overlay.py);
- `sync_lock` guards `syncing`, `sync_waiters`, `durable_seq` and `failed`.
`failed` is sticky: once set (an fsync failed, or a read found the log damaged) every write raises
`StoreFailed` until the store is reopened.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import TYPE_CHECKING

import lmdb

from evstore.errors import CorruptedError, EvstoreError, IndexUnavailable, StoreFailed
from evstore.engine.overlay import Overlay
from evstore.storage.index import Index, IndexBatch

if TYPE_CHECKING:
    from evstore.engine.core import Core

# Seconds the indexer waits after a commit before it writes the index, batching the commits of that
# time into one durable transaction. With "fsync", 20 ms rather than 5: each index transaction's
# fdatasync shares the device with the log's (measured side by side: appends of 100 events 4-20%
# slower at 5 ms, of one event ~7%); other processes see commits that much later.
INDEX_DELAY = {"fsync": 0.02, "os": 0.02}


class UnrecordedCommit(Exception):
    """Why a handle refuses writes after a commit's recording was interrupted (`latch_unrecorded`)."""


def release_all(locks: list[threading.Lock]) -> None:
    """Release every lock of `locks` (each held for a waiter blocked on it), even when an exception
    (a KeyboardInterrupt) interrupts the loop. A woken waiter holds its lock again and never
    releases it, so releasing a lock still held is always safe here."""
    try:
        for w in locks:
            w.release()
    except BaseException:
        for w in locks:
            if w.locked():
                w.release()
        raise


class GroupCommit:
    """The durability state of one store (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.os_mode = core.durability == "os"  # constant
        self.sync_lock = threading.Lock()
        self.syncing = False  # GUARDED_BY(sync_lock): a thread is syncing for the group
        self.sync_waiters: list[threading.Lock] = []  # GUARDED_BY(sync_lock): held locks of the round's waiters
        self.durable_seq = 0  # GUARDED_BY(sync_lock) for writes; read without it as a hint (it only grows)
        self.failed: BaseException | None = None  # GUARDED_BY(sync_lock); sticky
        self.written_seq = 0  # GUARDED_BY(writer lock)
        self.pending: list[IndexBatch] = []  # GUARDED_BY(writer lock): written, not yet durable
        self.ids_lock = threading.Lock()  # a leaf lock (no lock is taken under it)
        self.pending_ids: dict[bytes, int] = {}  # GUARDED_BY(ids_lock): caller ids written, not yet indexed
        self.queue_lock = threading.Lock()
        self.unindexed: list[IndexBatch] = []  # GUARDED_BY(queue_lock): durable, not yet indexed
        self.unindexed_seq = 0  # GUARDED_BY(queue_lock); `unindexed` holds one batch per commit, the last this one
        # GUARDED_BY(queue_lock) for writes, read without it as a hint (it only grows): with durability="os",
        # every commit up to this one is in the log on disk (an fdatasync began after it was written)
        self.log_synced_seq = 0
        self.index_lock = threading.Lock()
        self.indexed_seq = 0  # GUARDED_BY(index_lock) for writes; read without it as a hint
        self.index_error: BaseException | None = None  # GUARDED_BY(index_lock): the last failed write
        self.indexer: threading.Thread | None = None  # GUARDED_BY(indexer_lock): set once, started
        self.indexer_lock = threading.Lock()
        self.index_wake = threading.Event()
        self.overlay = Overlay()  # durable, unindexed stream heads and extents (its own leaf lock)
        self.stopping = False

    # -- the writer's side -------------------------------------------------------------------

    def add_written(self, batch: IndexBatch, ids: list[tuple[bytes, int]]) -> int:
        """Record a commit just written to the log; returns its sequence number. Requires the writer lock."""
        if ids:
            with self.ids_lock:
                for idb, pos in ids:
                    self.pending_ids[idb] = pos
        seq = self.written_seq = self.written_seq + 1
        if not self.os_mode:
            self.pending.append(batch)
            return seq
        # durability="os": durable once written. Straight to the indexer's queue, no syncer round.
        with self.queue_lock:
            self.unindexed.append(batch)
            self.unindexed_seq = seq
            self.add_to_overlay([batch])
        with self.sync_lock:
            self.durable_seq = seq
        log = self.core.log
        if log.retired_fds:  # sealed segments' descriptors: no syncer uses them in this mode
            for fd in log.take_retired():
                os.close(fd)
        return seq

    def add_to_overlay(self, batches: list[IndexBatch]) -> None:
        """Add durable batches to the overlay; one interrupted half-way (a KeyboardInterrupt) leaves
        it incomplete, so it is given up: stream reads then index first, as other reads do."""
        try:
            self.overlay.add(batches)
        except BaseException:
            self.overlay.invalidate()
            raise

    def latch_unrecorded(self, cause: BaseException) -> None:
        """A commit reached the log but its recording (`add_written`) was interrupted (a Ctrl-C, a
        MemoryError): this handle's heads and index no longer match the log, so it refuses every
        later write (the commit is the log's last; reopening indexes it). Requires the writer lock."""
        err = UnrecordedCommit(f"a commit was interrupted ({type(cause).__name__}) after it reached the log "
                               "and before it was recorded")
        with self.sync_lock:
            if self.failed is None:
                self.failed = err

    def latch(self, err: BaseException) -> None:
        """Latch `err` (the first failure wins): every later write raises `StoreFailed`."""
        with self.sync_lock:
            if self.failed is None:
                self.failed = err

    def check_writable(self) -> None:
        """Raise `StoreFailed` once a failure is latched."""
        if self.failed is not None:
            raise self.refusal()

    def refusal(self) -> StoreFailed:
        """The error every write raises once the store has latched a failure."""
        if isinstance(self.failed, CorruptedError):
            return StoreFailed(f"the store refuses writes: a read found the log damaged ({self.failed})")
        if isinstance(self.failed, UnrecordedCommit):
            return StoreFailed(f"the store refuses writes: {self.failed}; reopen it (the commit is kept)")
        return StoreFailed(f"the store stopped accepting writes after an I/O failure ({self.failed}); reopen it")

    def log_damage(self, path: str, offset: int, reason: str) -> CorruptedError:
        """The error for damaged log bytes met by a read; the writer latches it and refuses every later
        append, so that nothing is acknowledged after damage that `recover` would cut off."""
        err = CorruptedError(path, offset, reason)
        if not self.core.readonly and self.failed is None:
            with self.sync_lock:
                if self.failed is None:
                    self.failed = err
        return err

    # -- durable ---------------------------------------------------------------------------

    def await_durable(self, seq: int, index: bool = True) -> None:
        """Return once commit `seq` is durable (per the durability mode). With durability="os" and
        `index`, first write the commits the indexer's last log sync covered to the index (the
        appending thread's share: see the module docstring); an event loop's thread passes False.

        Group commit: one thread syncs every commit written so far while the others wait; commits
        written during that sync are served by the next one. Raises `StoreFailed` when the sync fails
        (latched); a KeyboardInterrupt during the sync leaves the commits pending for the next one."""
        if self.os_mode and self.durable_seq >= seq:  # written is durable (add_written): publish it
            self.core.notify_commits()
            if index and self.log_synced_seq > self.indexed_seq and self.index_error is None:  # hints
                self.index_synced()
            if not self.index_wake.is_set():  # set: the indexer has yet to take the queue, ours included
                self.kick_indexer()
            return
        core = self.core
        lock = self.sync_lock
        err: BaseException | None = None
        interrupted: BaseException | None = None
        target = seq
        batches: list[IndexBatch] = []
        while True:
            if self.durable_seq >= seq:  # a hint (it only grows): durable, no lock needed
                return
            with lock:
                if self.durable_seq >= seq:
                    return
                if self.failed is not None:
                    raise StoreFailed(f"the commit may not be durable: {self.failed}; reopen the store")
                if not self.syncing:
                    self.syncing = True
                    break
                # Wait for the round under way on a lock of our own, which its syncer releases after
                # it has left `sync_lock`: woken waiters do not crowd back onto one lock.
                w = threading.Lock()
                w.acquire()
                self.sync_waiters.append(w)
            w.acquire()
        try:
            with core.wlock:
                target = self.written_seq
                batches, self.pending = self.pending, []
                fd = core.log.sync_fd()
                retired = core.log.take_retired()
            try:
                # Another sync may have taken the error this one would have met; with no active
                # segment (a roll sealed it, then could not make the next) the seal's fsync synced it,
                # and vouched for nothing: ask as a sync would.
                log = core.log
                if core.durability == "fsync" and not (log.checked_sync(fd) if fd >= 0 else log.vouched()):
                    earlier = log.sync_error()
                    raise OSError(getattr(earlier, "errno", None) or errno.EIO,
                                  f"an earlier sync of the log failed ({earlier})")
            finally:
                for rfd in retired:
                    os.close(rfd)
        except OSError as e:  # an fsync failure: the kernel may have dropped the pages; stop writing
            err = e
        except BaseException as e:  # KeyboardInterrupt and the like: the commits stay pending
            interrupted = e
            with core.wlock:
                self.pending[:0] = batches
        try:
            if err is None and interrupted is None:
                with self.queue_lock:
                    self.unindexed.extend(batches)
                    self.unindexed_seq = target
                    self.add_to_overlay(batches)
        finally:  # whatever interrupts this thread, the next waiter can sync
            with lock:
                self.syncing = False
                if err is None and interrupted is None:
                    self.durable_seq = max(self.durable_seq, target)
                elif err is not None:
                    self.failed = err
                waiters, self.sync_waiters = self.sync_waiters, []
            release_all(waiters)
        if interrupted is not None:
            raise interrupted
        if err is not None:
            raise StoreFailed(f"the commit may not be durable: {err}; reopen the store") from err
        core.notify_commits()
        if not self.index_wake.is_set():  # set: the indexer has yet to take the queue, ours included
            self.kick_indexer()

    def sync_log(self) -> None:
        """fdatasync the active segment (sealed ones were synced when they were sealed) and advance
        `log_synced_seq`. A failure latches the store failed, as a failed fsync of an append does, and
        once any sync of the log has failed (here, a roll's or an append's) `log_synced_seq` stays
        where it was: no later sync vouches for the pages the failed one lost (Log.sync_active)."""
        written = self.written_seq  # read first: every commit up to it is in the log (written before counted)
        log = self.core.log
        try:
            synced = log.sync_active()  # no writer lock: flush_index holds the index lock (lock order)
        except OSError as e:
            latched = log.sync_error()  # (this sync's failure, or another's that came first)
            if latched is None:
                raise  # the descriptor could not be duplicated (EMFILE): nothing synced, nothing latched
            self.latch(latched)
            raise StoreFailed(f"the log could not be synced ({e}); reopen the store") from e
        if not synced:  # a sync of the log failed before (or under) this one: it vouches for nothing
            err = log.sync_error()
            if err is not None:
                self.latch(err)
            return
        # (No active segment: a roll sealed and synced the last one, then could not make the next;
        # every commit written is in a synced segment.)
        with self.queue_lock:
            if written > self.log_synced_seq:
                self.log_synced_seq = written

    def sync(self) -> None:
        """Make every commit written so far durable, and the index with it."""
        self.check_writable()
        self.await_durable(self.written_seq)
        self.sync_log()
        self.check_writable()  # a sync of the log failed meanwhile (the indexer's): it vouched for nothing
        self.flush_index()
        try:
            self.core.index.sync()
        except lmdb.Error as e:
            raise IndexUnavailable(self.core.index.path, f"the index could not be synced ({e})") from e

    # -- indexed ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Index every durable commit before a read (read-your-writes); cheap when there is none."""
        if self.indexed_seq < self.durable_seq:
            self.flush_index()

    def flush_index(self, upto: int | None = None) -> None:
        """Write the index entries of every durable commit not indexed yet (or of those up to commit
        `upto`), in one durable LMDB transaction that carries their checkpoint.

        With durability="os" the log is fdatasynced first, unless an fdatasync since covered them
        (`log_synced_seq`). A failed index write (a full disk) keeps the entries queued, in order, for
        the next flush and raises `IndexUnavailable`; the commits are in the log, so nothing is lost
        and no later flush can skip them."""
        with self.index_lock:
            indexed = self.flush_locked(upto)
        if indexed:
            self.core.notify_commits()

    def flush_locked(self, upto: int | None) -> bool:
        """`flush_index` with the index lock held; whether it indexed anything (the caller then
        notifies the subscribers, once it has let the lock go)."""
        core = self.core
        with self.queue_lock:
            batches = self.unindexed
            target = self.unindexed_seq
            later = 0 if upto is None else target - upto  # commits after `upto`: one batch each
            if later <= 0:
                self.unindexed = []
            elif later >= len(batches):
                return False
            else:
                batches, self.unindexed = batches[:-later], batches[-later:]
                target -= later  # = upto
            synced = self.log_synced_seq
        if not batches:
            return False
        try:
            if core.durability == "os" and target > synced:
                self.sync_log()
                with self.queue_lock:
                    later = target - self.log_synced_seq
                    if later > 0:  # a sync of the log failed: index no commit it may have lost
                        self.unindexed[:0] = batches[-later:]
                if later > 0:
                    batches, target = batches[:-later], target - later
                    if not batches:
                        return False
            batch = IndexBatch()
            for b in batches:
                batch.merge(b)
            core.index.write(batch)
        except BaseException as e:
            with self.queue_lock:
                self.unindexed[:0] = batches  # keep them, first, for the next attempt
            if isinstance(e, StoreFailed):
                raise
            if isinstance(e, (OSError, lmdb.Error)):
                self.index_error = e
                self._reopen_after(e)
                raise IndexUnavailable(core.index.path, f"the index could not be written ({e}); every "
                                       "acknowledged commit is in the log and will be indexed once the "
                                       "index can be written (free disk space)",
                                       getattr(e, "errno", None)) from e
            raise
        self.index_error = None
        with self.ids_lock:
            for k, _v in batch.ids:
                self.pending_ids.pop(k, None)
        self.indexed_seq = target
        self.overlay.remove(batches)
        return True

    def _reopen_after(self, e: BaseException) -> None:
        """After a failed index transaction: LMDB refuses every later call once it has panicked (a
        failed meta write); reopen the environment so that the next flush can succeed."""
        if not isinstance(e, lmdb.PanicError) and "MDB_PANIC" not in str(e):
            return
        core = self.core
        try:
            core.index.close()
        except lmdb.Error:  # pragma: no cover
            pass
        core.index = Index(os.path.join(core.path, "index"), readonly=False, map_size=core.map_size)

    def index_synced(self) -> None:
        """With durability="os", in the appending thread: write the commits the indexer thread's last
        fdatasync of the log covered to the index (see the module docstring). Not when another thread
        holds the index lock (it is writing the index: an indexer's, a reader's or a sync's flush).
        A failure is left to the indexer thread, which retries it; the append it follows has succeeded."""
        if not self.index_lock.acquire(blocking=False):
            return
        try:
            indexed = self.flush_locked(self.log_synced_seq)
        except EvstoreError:  # kept queued, `index_error` set: the indexer thread retries
            self.index_wake.set()
            return
        finally:
            self.index_lock.release()
        if indexed:
            self.core.notify_commits()

    def kick_indexer(self) -> None:
        """Have the indexer thread index the durable commits after a short batching delay.

        Index transactions are durable (an fdatasync of data.mdb each), so they are kept off the
        append path: appenders return once the log is durable, and the indexer writes the commits of
        a few milliseconds in one transaction."""
        if self.indexer is None:
            with self.indexer_lock:
                if self.indexer is None and not self.stopping:
                    t = threading.Thread(target=self._indexer_loop, name=f"evstore-indexer {self.core.path}",
                                         daemon=True)
                    t.start()
                    self.indexer = t  # published only once started: close() may join it
        self.index_wake.set()

    def _indexer_loop(self) -> None:
        delay = INDEX_DELAY[self.core.durability]
        while True:
            self.index_wake.wait()
            self.index_wake.clear()  # before the check: a wake during the work below is not lost
            if self.stopping:
                return
            try:
                if self.os_mode and self.index_error is None:
                    # Sync the log; the appending thread indexes what the sync covered at its next
                    # append, or this thread does after half a delay (see the module docstring).
                    time.sleep(delay / 2)
                    self.sync_log()
                    time.sleep(delay / 2)
                    self.flush_index(self.log_synced_seq)
                else:
                    time.sleep(delay)
                    self.flush_index()
            except (EvstoreError, OSError):  # kept queued (or latched in failed); retried on the next wake
                if not self.stopping and self.failed is None:
                    time.sleep(0.2)
                    self.index_wake.set()

    # -- closing ---------------------------------------------------------------------------

    def flush_all(self) -> None:
        """Wait until every written commit is durable and indexed (never under the writer lock: the
        syncer needs it)."""
        if self.durable_seq < self.written_seq and self.failed is None:
            self.await_durable(self.written_seq)
        if self.failed is None:
            self.flush_index()
        elif self.os_mode and self.core.log.sync_error() is None:
            # Failed otherwise (a read found damage): the acknowledged commits are still made durable,
            # though no more is indexed.
            self.sync_log()

    def unvouched(self) -> StoreFailed | None:
        """With durability="os", once a sync of the log has failed: the error for the acknowledged
        commits that no sync vouched for before it (None when there are none); `close()` raises it."""
        err = self.core.log.sync_error()
        lost = self.written_seq - self.log_synced_seq
        if not self.os_mode or err is None or lost <= 0:
            return None
        return StoreFailed(f"a sync of the log failed ({err}): the last {lost} acknowledged commit(s) of this "
                           "handle may not be durable; reopen the store (recovery keeps what the log holds)")

    def stop(self) -> None:
        """Stop the indexer thread (after `flush_all`)."""
        with self.indexer_lock:
            self.stopping = True  # no indexer starts after this
            t = self.indexer
        if t is not None:
            self.index_wake.set()
            t.join()
