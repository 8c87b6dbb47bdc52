"""The core of one open store: it composes the engine's parts, opens and closes the store, and keeps
the process registry (one core per path per process; LMDB forbids opening an environment twice in
a process, and a forked child must not inherit a writer).

Parts: `log` (evstore.storage.segments), `index` (evstore.storage.index), `indexer` (index entries and the heads),
`reader` (every read), `group` (group commit, the indexer thread, the failure latch), `writer`
(checks and writes).

Locks, in the order in which they may be taken:
1. `wlock` — the writer lock: every check and write of a commit; guards the log's active segment,
   `writer.next_position`, `writer.closing`, the indexer's heads, tracking and type ids, and
   `group.written_seq`, `group.pending`;
2. `group.index_lock` — one index transaction at a time; `group.indexed_seq`, `group.index_error`;
3. `group.queue_lock` — `group.unindexed`, `group.unindexed_seq`;
4. `group.sync_lock` — `group.syncing`, `group.sync_waiters`, `group.durable_seq`, `group.failed`.
Leaf locks, under which no other lock is taken: `group.ids_lock` (`group.pending_ids`) and the log's
`fd_lock` (its descriptors and the tickets of its syncs; a thread waiting in `Log.vouched` holds no
ticket, and no ticket holder waits for a lock). No code takes a lock of a lower number while holding a higher one.
`commit_cond` only wakes subscribers of this process; it also guards `commit_listeners`, which
`notify_commits` calls under it (a listener must not block and takes no lock: the asyncio handle's
rings an eventfd). The asyncio handle's `Worker.lock` (evstore/aio/worker.py) is a leaf: it is taken
under none of these, and none is taken under it. Constant after construction: `path`,
`readonly`, `durability`, `impl`, `meta`, `pid`. `refs` is guarded by the registry's lock; `forked`
is set once, in a forked child.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import lmdb

from evstore.format import codec as _impl
from evstore.engine.checks import check_open_options
from evstore.engine.groupcommit import GroupCommit
from evstore.engine.indexer import Indexer
from evstore.engine.reader import Reader
from evstore.engine.writer import Writer
from evstore.errors import (
    CorruptedError,
    EvstoreError,
    ForkedStore,
    IndexAheadOfLog,
    IndexDamaged,
    IndexUnavailable,
    StorageError,
    StoreClosed,
)
from evstore.storage.index import Index
from evstore.storage.lmdbfiles import is_resource_error
from evstore.storage.segments import Log
from evstore.storage import directory
from evstore.lifecycle import Binding, Lifecycle, make_binder



class CommitCondition(threading.Condition):
    """The condition subscribers wait on, counting them (`waiting`, guarded by the condition's lock;
    read without it as a hint), so that a commit with no subscriber waiting notifies nobody."""

    waiting = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting += 1
        try:
            return super().wait(timeout)
        finally:
            self.waiting -= 1


class Core:
    """Everything one open store shares between the handles of this process (see the module docstring)."""

    def __init__(self, path: str, *, create: bool, readonly: bool, durability: str, segment_size: int,
                 map_size: int, log_impl: str | None) -> None:
        self.path = path
        self.readonly = readonly
        self.durability = durability
        self.impl: ModuleType = _impl.load(log_impl)
        self.pid = os.getpid()
        self.forked = False  # set in a forked child: every use of the store raises ForkedStore
        self.refs = 0
        self.closed = False
        self.lock_fd = -1
        self.map_size = map_size
        self.index: Index = None  # type: ignore[assignment]
        self.index_id: tuple[int, int] | None = None  # (device, inode) of data.mdb when opened (readers)
        self.index_checked = 0.0  # when a reader last looked for a rebuilt index
        self.retired_indexes: list[tuple[float, Index]] = []  # (when, index) replaced under readers
        self.log: Log = None  # type: ignore[assignment]
        self.wlock = threading.RLock()
        self.commit_cond = CommitCondition(threading.Lock())
        self.commit_listeners: tuple[Callable[[], None], ...] = ()  # GUARDED_BY(commit_cond)
        self.indexer = Indexer(self)
        self.reader = Reader(self)
        self.group = GroupCommit(self)
        self.writer = Writer(self, 1)
        try:
            directory.prepare(path, create=create, readonly=readonly)
            if not readonly:
                self.lock_fd, previous = directory.take_lock(path, durability)
            else:
                previous = directory.last_writer_durability(path)
            self.unsynced_tail = previous == "os"  # the last writer synced only at checkpoints
            self.meta = directory.load_meta(path, self.impl, segment_size, readonly)
            self.log = Log(os.path.join(path, "log"), self.impl, segment_size=self.meta["segment_size"],
                           writable=not readonly, first_position=int(self.meta.get("first_position", 1)),
                           zero_ahead=durability == "fsync")
            self._open_index_and_catch_up(map_size)
            if self.unsynced_tail and durability != "os" and not readonly:
                directory.record_writer(path, durability)  # the tail is cut: the strict rule again
        except BaseException:
            if self.index is not None:
                try:
                    self.index.close()
                except Exception:  # pragma: no cover - best effort on a failed open
                    pass
            if self.log is not None:
                self.log.close()
            self._release_lock()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _open_index_and_catch_up(self, map_size: int) -> None:
        """Open the index, check that it describes this log, and catch it up with the log's tail.

        A writer rebuilds an index that is missing or damaged (an LMDB error, a file shorter than its
        meta pages claim, a checkpoint that is not a commit boundary of this log) from the log; a
        reader raises `CorruptedError`. An index ahead of the log raises `IndexAheadOfLog`; a lack of
        resources (a full disk) raises `IndexUnavailable` and never rebuilds over a good index."""
        ipath = os.path.join(self.path, "index")
        if self.readonly and not os.path.exists(os.path.join(ipath, "data.mdb")):
            raise EvstoreError(f"{self.path} has no index yet; open it once for writing (or run `evstore "
                               "reindex`) to build it from the log")
        for attempt in range(2):
            try:
                self.index = Index(ipath, readonly=self.readonly, map_size=map_size)
                self.index_id = _file_id(os.path.join(ipath, "data.mdb"))
                self._init_state()
                return
            except IndexAheadOfLog:
                raise
            except (CorruptedError, lmdb.Error, struct.error) as e:
                if self.index is not None:
                    self.index.close()
                    self.index = None  # type: ignore[assignment]
                if not isinstance(e, CorruptedError) and is_resource_error(e):
                    raise IndexUnavailable(ipath, f"the index cannot be used ({e}); free the resource and "
                                           "open the store again") from e
                if isinstance(e, CorruptedError) and not isinstance(e, IndexDamaged) and e.path.startswith(
                        os.path.join(self.path, "log")):
                    raise  # damage in the log itself: not the index's to repair
                if self.readonly or attempt:
                    if isinstance(e, CorruptedError):
                        raise
                    raise CorruptedError(ipath, 0, f"the index is damaged ({e}); open the store for writing "
                                         "to rebuild it from the log") from e
            directory.remove_index(ipath)  # a lost or damaged index is rebuilt from the log

    def _init_state(self) -> None:
        with self.index.begin() as txn:
            outdated = self.index.is_outdated(txn)
        if outdated:
            raise IndexDamaged(self.index.path, 0, "the index was built by an older evstore (it has no category "
                               "postings); open the store for writing (or run `evstore reindex`) to rebuild it")
        checkpoint, last = self.indexer.load()
        if checkpoint is not None:
            self.log.check_checkpoint(checkpoint, last)
        elif last is not None:
            raise IndexDamaged(self.index.path, 0, "the index holds commits but no checkpoint")
        self.indexer.catch_up(self.log, checkpoint, self.readonly, self.unsynced_tail)
        with self.index.begin() as txn:
            cp = self.index.get_checkpoint(txn)
        self.writer.next_position = cp[2] if cp else self.log.next_position

    # -- using -----------------------------------------------------------------------------

    def check_usable(self) -> None:
        """Raise unless this process may use the store: `ForkedStore` in a forked child, `StoreClosed`
        once closed."""
        if self.forked:
            raise ForkedStore(self.path, self.pid)
        if self.closed:
            raise StoreClosed(self.path)

    def follow_rebuilt_index(self) -> None:
        """For a reader: when the index was rebuilt under it (`evstore reindex` or `recover` swap in a
        new data.mdb), open the new one — an environment on the replaced file would serve a stale
        state for ever. Looks at most every 100 ms."""
        now = time.monotonic()
        if now - self.index_checked < 0.1:
            return
        self.index_checked = now
        ipath = os.path.join(self.path, "index")
        found = _file_id(os.path.join(ipath, "data.mdb"))
        if found is None or found == self.index_id:
            return
        with self.wlock:
            if found == self.index_id:
                return
            new = Index(ipath, readonly=True, map_size=self.map_size)
            # The log may have been replaced too (recover renames a salvaged copy over a segment):
            # list the segments afresh; records read before keep the mappings they hold.
            self.log = Log(os.path.join(self.path, "log"), self.impl, segment_size=self.meta["segment_size"],
                           writable=False, first_position=int(self.meta.get("first_position", 1)))
            # Other threads may be reading the old environment right now: close it once no read
            # transaction can still be open on it (reads fix their snapshot within milliseconds).
            keep = []
            for when, old in self.retired_indexes:
                if now - when > 1.0:
                    old.close()
                else:
                    keep.append((when, old))
            self.retired_indexes = [*keep, (now, self.index)]
            self.index = new
            self.index_id = found

    def log_damage(self, path: str, offset: int, reason: str) -> CorruptedError:
        """See `GroupCommit.log_damage`."""
        return self.group.log_damage(path, offset, reason)

    def notify_commits(self) -> None:
        """Wake the subscribers of this process: commits became durable or indexed. Nothing to do
        (no lock taken) when none waits and there is no listener. A subscriber that looked at the
        head just before such a commit and waits just after it is not woken, as with a notify before
        its wait; its poll (subscription.py, 50 ms) finds the commit."""
        if not self.commit_cond.waiting and not self.commit_listeners:
            return
        with self.commit_cond:
            self.commit_cond.notify_all()
            for fn in self.commit_listeners:
                fn()

    def add_commit_listener(self, fn: Callable[[], None]) -> None:
        """Call `fn()` whenever `notify_commits` wakes the subscribers (from the thread that made the
        commits durable or indexed, under `commit_cond`): it must return at once and take no lock, e.g.
        write to an eventfd an event loop watches."""
        with self.commit_cond:
            self.commit_listeners = (*self.commit_listeners, fn)

    def remove_commit_listener(self, fn: Callable[[], None]) -> None:
        """Stop calling `fn`; when this returns no call of it is under way (so its resources may be
        released). Removing a listener that is not there does nothing."""
        with self.commit_cond:
            self.commit_listeners = tuple(f for f in self.commit_listeners if f != fn)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the appends under way, make everything written durable (the log, then the index)
        and release the store. Appends that start after this began raise `StoreClosed`. The writer
        lock and every resource are released even when a step fails (the error is raised after)."""
        if self.closed:
            return
        err: BaseException | None = None
        group = self.group
        if not self.readonly:
            with self.wlock:
                self.writer.closing = True  # appends that take the writer lock from now on are refused
            try:
                group.flush_all()
            except BaseException as e:
                err = e
            group.stop()
            if err is None:
                err = group.unvouched()
            if err is None and group.failed is None:
                try:
                    self.index.sync()
                except BaseException as e:  # the log still holds everything; the next open catches up
                    err = e
        self.closed = True
        try:
            for _when, old in self.retired_indexes:
                old.close()
            self.index.close()
        finally:
            self.log.close()
            self._release_lock()
        if isinstance(err, OSError):
            raise StorageError(self.path, err.errno, f"closing {self.path} failed: {err.strerror}; the log holds "
                               "every acknowledged commit, and the next open catches the index up") from err
        if isinstance(err, lmdb.Error):
            raise IndexUnavailable(os.path.join(self.path, "index"), f"the index could not be synced at close "
                                   f"({err}); the next open catches it up from the log") from err
        if err is not None:
            raise err

    def _release_lock(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # closing the descriptor drops the flock
            self.lock_fd = -1


def lmdb_error(core: Core | None, path: str, e: lmdb.Error) -> EvstoreError:
    """The evstore error for an LMDB error that escaped a read or write of the store at `path`:
    `StoreClosed` when the store was closed under the call (a read racing `close()`),
    `IndexUnavailable` for a lack of resources, else `CorruptedError` (the index is damaged: a
    writer's next open rebuilds it)."""
    ipath = os.path.join(path, "index")
    if core is None or core.closed or core.writer.closing:
        return StoreClosed(path)
    if is_resource_error(e):
        return IndexUnavailable(ipath, f"the index cannot be read or written ({e})")
    return CorruptedError(ipath, 0, f"the index failed ({e}); reopen the store for writing to rebuild it from the log")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# -- the process registry --------------------------------------------------------------------------


class Registry:
    """The open cores of this process, by real path. `lock` guards `cores` and every core's `refs`."""

    def __init__(self) -> None:
        self.cores: dict[str, Core] = {}
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def open(self, real: str, *, create: bool, readonly: bool, durability: str | None, segment_size: int,
             map_size: int, log_impl: str | None) -> Core:
        """The core of `real`, opened now or shared with the handles already open; one more reference."""
        with self.lock:
            core = self.cores.get(real)
            if core is not None:
                if core.readonly and not readonly:
                    raise EvstoreError(f"{real} is already open read-only in this process; close it first")
                if not readonly and durability is not None and durability != core.durability:
                    raise EvstoreError(f"{real} is already open in this process with durability="
                                       f"{core.durability!r}; open it with the same options, or close it first")
                if log_impl is not None and _impl.load(log_impl).IMPL != core.impl.IMPL:
                    raise EvstoreError(f"{real} is already open in this process with log_impl={core.impl.IMPL!r}; "
                                       f"open it with the same options, or close it first")
            else:
                core = Core(real, create=create, readonly=readonly, durability=durability or "fsync",
                            segment_size=segment_size, map_size=map_size, log_impl=log_impl)
                self.cores[real] = core
            core.refs += 1
            return core

    def release(self, core: Core) -> None:
        """One reference less; the last one closes the core."""
        if core.forked:  # the parent's store: the child must not close (or sync) what the parent uses
            return
        with self.lock:  # held while closing: a new open of the path waits for the old core to let go
            core.refs -= 1
            if core.refs:
                return
            self.cores.pop(core.path, None)
            core.close()

    def _after_fork_in_child(self) -> None:
        """In a forked child: the parent's stores are not the child's. Each handle raises `ForkedStore`
        from now on, and the child may open the store anew (it does not inherit the writer's role)."""
        for core in self.cores.values():
            core.forked = True
            # LMDB refuses to open an environment twice in a process, and the child inherited the
            # parent's: the child's copy is closed (this touches neither the parent's reader slots nor
            # its locks, which belong to the parent's pid) so the child can open the store itself; by a
            # thread of its own, as a thread of the parent may have been using it (see the method).
            if core.index is not None:
                core.index.abandon_after_fork()
            # The writer's flock belongs to the open file description the child shares: were the
            # child to keep its copy, the store would stay locked after the parent closes it.
            core._release_lock()
            if core.log is not None:
                core.log.close(forked=True)  # no lock taken: the parent's threads may have held one
        self.cores.clear()
        self.lock = threading.Lock()  # the parent may have held it while forking


registry = Registry()


def open_core(path: Any, *, create: bool, readonly: bool, durability: str | None, segment_size: int,
              map_size: int, log_impl: str | None,
              lifecycles: Binding | None) -> tuple[Core, Callable[[Any], Lifecycle | None] | None]:
    """`evstore.open` but the handle, for the front ends (`evstore.store`, `evstore.aio`): check the
    arguments, open (or share) the core of the store at `path` — one reference, released by the
    handle's close — and make the lifecycle binder. Raises: as `evstore.open`."""
    binder = make_binder(lifecycles)
    p = check_open_options(path, durability, segment_size, map_size)
    core = registry.open(os.path.realpath(p), create=create, readonly=readonly, durability=durability,
                         segment_size=segment_size, map_size=map_size, log_impl=log_impl)
    return core, binder
