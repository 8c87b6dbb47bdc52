"""The LMDB index: derived from the log, crash-consistent, rebuilt from the log when lost or damaged.

Crash consistency. The environment is opened with `sync=True, metasync=False`: every write
transaction fdatasyncs its data pages before it writes the meta page that makes it current, so the
B-tree on disk is always a whole, earlier or current, state; only the meta write of the last
transaction is not synced, so a power cut can at most undo that transaction (LMDB's documented
guarantee for MDB_NOMETASYNC). Each transaction carries the checkpoint of the log it covers, and the
engine commits one only after the log up to that checkpoint is durable, so the index on disk is never
ahead of the log. Transactions are batched by the engine, off the append path.

Before LMDB maps `data.mdb`, `check_data_file` reads its two meta pages and refuses a file shorter
than the newest valid meta says (mapping it would SIGBUS on the missing pages) or with no valid meta;
the engine rebuilds such an index from the log.

Sub-databases (keys big-endian so that they sort; values little-endian):

| db | key | value |
|---|---|---|
| `heads` | stream key (`s` + UTF-8, or `u` + 16 UUID bytes) | stream number, last version, hidden-up-to version, flags, state |
| `extents` | stream number, first version | segment, offset, count, bytes: a run of one stream's consecutive events in one commit |
| `commits` | first position | segment, offset, event count, bytes (commits with events only) |
| `types` | type id, first position | segment, offset, count, bytes: a run of consecutive events of one type in one commit |
| `typenames` | type name (UTF-8) | type id |
| `ids` | event id (16 bytes) | position (caller-given ids only) |
| `snapshots` | stream number, version | segment, offset of the SNAPSHOT record |
| `tracking` | upstream name, NUL, position | empty |
| `categories` | category length, category (UTF-8), first position | the commit's location and events, events of the category in it |
| `tags` | tag (UTF-8), NUL, position | segment, offset of the event |
| `meta` | name | checkpoint (segment, offset, next position), `index_version` and counters |

The postings (`types`, `categories`, `tags`) are read by `evstore.storage.postings`, which documents
their layouts. `INDEX_VERSION` names the set of entries an index holds: every transaction that
writes a checkpoint writes it too, and an index that holds commits under an older version (one built
before category postings) is rebuilt from the log by a writer and refused by a reader (see
`is_outdated`).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable
from typing import Any

import lmdb

from evstore.storage.durable import fsync_dir, make_dirs
from evstore.storage.lmdbfiles import allocate_lock_file, check_data_file, is_resource_error
from evstore.errors import CorruptedError, EvstoreError, IndexUnavailable, StoreClosed

EXTENT_KEY = struct.Struct(">QQ")
EXTENT_VAL = struct.Struct("<QQII")  # segment, offset, count, bytes
COMMIT_KEY = struct.Struct(">Q")
TYPE_KEY = struct.Struct(">IQ")
HEAD = struct.Struct("<QQQB")  # stream number, last version, hidden up to, flags (+ state bytes)
CHECKPOINT = struct.Struct("<QQQ")
SNAPSHOT_VAL = struct.Struct("<QQ")  # segment, offset
TAG_VAL = SNAPSHOT_VAL  # segment, offset of a tagged event
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")

HEAD_CLOSED = 1
HEAD_TOMBSTONE = 2

DB_NAMES = (b"heads", b"extents", b"commits", b"types", b"typenames", b"ids", b"snapshots", b"tracking", b"tags",
            b"categories", b"meta")
# 1: the entries before category postings (no `index_version` key); 2: `categories` added.
INDEX_VERSION = 2
_INDEX_VERSION_VAL = U64.pack(INDEX_VERSION)


class Head:
    """A stream's head: kept in memory by the writer, stored in `heads`."""

    __slots__ = ("num", "version", "hidden", "flags", "state")

    def __init__(self, num: int, version: int = 0, hidden: int = 0, flags: int = 0, state: str | None = None):
        self.num = num
        self.version = version
        self.hidden = hidden
        self.flags = flags
        self.state = state

    def pack(self) -> bytes:
        tail = b"" if self.state is None else self.state.encode("utf-8")
        return HEAD.pack(self.num, self.version, self.hidden, self.flags) + tail

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> Head:
        num, version, hidden, flags = HEAD.unpack_from(raw)
        state = bytes(raw[HEAD.size :]).decode("utf-8") if len(raw) > HEAD.size else None
        return cls(num, version, hidden, flags, state)

    def copy(self) -> Head:
        return Head(self.num, self.version, self.hidden, self.flags, self.state)


class IndexBatch:
    """Index entries of one or more commits, written in one LMDB transaction."""

    __slots__ = ("heads", "extents", "commits", "types", "typenames", "ids", "tags", "categories", "checkpoint",
                 "counters", "extra")

    def __init__(self) -> None:
        self.heads: dict[bytes, bytes] = {}
        self.extents: list[tuple[bytes, bytes]] = []
        self.commits: list[tuple[bytes, bytes]] = []
        self.types: list[tuple[bytes, bytes]] = []
        self.typenames: list[tuple[bytes, bytes]] = []
        self.ids: list[tuple[bytes, bytes]] = []
        self.tags: list[tuple[bytes, bytes]] = []
        self.categories: list[tuple[bytes, bytes]] = []
        self.extra: list[tuple[bytes, bytes, bytes | None]] = []  # (db, key, value or None to delete)
        self.checkpoint: bytes | None = None
        self.counters: dict[bytes, bytes] = {}

    def merge(self, other: IndexBatch) -> None:
        self.heads.update(other.heads)
        self.extents += other.extents
        self.commits += other.commits
        self.types += other.types
        self.typenames += other.typenames
        self.ids += other.ids
        self.tags += other.tags
        self.categories += other.categories
        self.extra += other.extra
        self.checkpoint = other.checkpoint or self.checkpoint
        self.counters.update(other.counters)


# The environments a forked child inherited from its parent, each being closed by a thread of the
# child's (`Index.abandon_after_fork`), by real path: an open of the same index in the child waits for
# that close first (LMDB refuses an environment open twice in a process). Used in the child alone.
_inherited: dict[str, threading.Thread] = {}
INHERITED_CLOSE_WAIT = 5.0  # seconds an open in a forked child waits for the inherited copy's close


def _wait_inherited(path: str) -> None:
    """Before opening the index at `path`: wait for the close of a copy inherited across fork, if any."""
    real = os.path.realpath(path)
    t = _inherited.get(real)
    if t is None:
        return
    t.join(INHERITED_CLOSE_WAIT)
    if t.is_alive():
        raise IndexUnavailable(path, f"the index {path} cannot be opened in this process: it was forked while "
                               "another thread of its parent was using the index, and the copy it inherited "
                               "cannot be closed; open the store in a process that did not inherit it open "
                               "(multiprocessing's 'spawn' or 'forkserver'), or fork while no thread uses it")
    _inherited.pop(real, None)


def _close_inherited(env: lmdb.Environment) -> None:
    try:
        env.close()
    except Exception:  # noqa: BLE001 - the child's copy: nothing of it is used again  # pragma: no cover
        pass


class Index:
    """One LMDB environment with the sub-databases above.

    Thread-safety: LMDB's; one write transaction at a time (the engine's index lock), readers free.
    `closed` is set by `close()`; `begin()` on a closed index raises `StoreClosed`."""

    def __init__(self, path: str, *, readonly: bool, map_size: int) -> None:
        self.path = path
        self.readonly = readonly
        self.closed = False
        self.gate_lock = threading.Lock()  # the gate's lock, taken raw on the fast path
        self.gate = threading.Condition(self.gate_lock)
        self.txns = 0  # GUARDED_BY(gate): transactions of this process open on the environment
        self.resizing = False  # GUARDED_BY(gate)
        self.generation = 0  # GUARDED_BY(engine index lock) for writes, read freely: +1 as each write ends
        data = os.path.join(path, "data.mdb")
        created = False
        if not readonly:
            created = make_dirs(path)
        if os.path.exists(data):
            check_data_file(data)
        elif not readonly:
            created = True
        allocate_lock_file(os.path.join(path, "lock.mdb"), readonly)
        _wait_inherited(path)
        try:
            self.env = lmdb.open(
                path, map_size=map_size, max_dbs=len(DB_NAMES) + 2, subdir=True, readonly=readonly,
                sync=True, metasync=False, readahead=False, mode=0o600, create=not readonly,
                max_readers=512, lock=True,
            )
        except (lmdb.CorruptedError, lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.PageNotFoundError,
                lmdb.BadValsizeError, lmdb.InvalidParameterError) as e:
            raise CorruptedError(path, 0, f"the index cannot be opened ({e}); it can be rebuilt from the log") from e
        except lmdb.Error as e:  # not damage (e.g. already open, no permission): never rebuild over it
            raise IndexUnavailable(path, f"the index {path} cannot be opened: {e}") from e
        except OSError as e:
            raise IndexUnavailable(path, f"the index {path} cannot be opened: {e.strerror}", e.errno) from e
        try:
            self.db = {name.decode(): self.env.open_db(name, create=not readonly) for name in DB_NAMES}
            if created:
                fsync_dir(path)  # data.mdb's entry: LMDB creates the file but does not sync its directory
        except lmdb.Error as e:
            self.env.close()
            if is_resource_error(e):
                raise IndexUnavailable(path, f"the index {path} cannot be opened: {e}") from e
            if isinstance(e, lmdb.ReadonlyError) or (readonly and isinstance(e, lmdb.NotFoundError)):
                raise CorruptedError(path, 0, f"the index is incomplete ({e}); it can be rebuilt from the log") from e
            raise CorruptedError(path, 0, f"the index cannot be opened ({e}); it can be rebuilt from the log") from e
        except OSError as e:
            self.env.close()
            raise IndexUnavailable(path, f"the index {path} cannot be opened: {e.strerror}") from e

    def begin(self, write: bool = False) -> _Txn:
        """A transaction, as a context manager. LMDB may change the map size only while no transaction
        of this process is open, so transactions pass through a gate that `grow` and
        `adopt_map_size` close while they resize (`gate` guards `txns` and `resizing`)."""
        self._txn_enter()
        try:
            return _Txn(self, self.env.begin(write=write))
        except BaseException:
            self._txn_done()
            raise

    def read_begin(self) -> lmdb.Transaction:
        """A read transaction without the context manager, for the hot read paths (a stream read):
        pass through the gate as `begin`, and end it with `read_end` in a `finally`."""
        self._txn_enter()
        try:
            return self.env.begin()
        except BaseException:
            self._txn_done()
            raise

    def read_end(self, txn: lmdb.Transaction) -> None:
        """End a transaction of `read_begin`."""
        try:
            txn.abort()
        finally:
            self._txn_done()

    def _txn_enter(self) -> None:
        if self.closed:
            raise StoreClosed(os.path.dirname(self.path))
        lock = self.gate_lock
        lock.acquire()
        if self.resizing:  # the slow path: wait for the resize to end
            lock.release()
            with self.gate:
                while self.resizing:
                    self.gate.wait()
                self.txns += 1
        else:
            self.txns += 1
            lock.release()

    def _txn_done(self) -> None:
        lock = self.gate_lock
        lock.acquire()
        self.txns -= 1
        wake = self.resizing and not self.txns
        lock.release()
        if wake:  # a resize waits for the last transaction
            with self.gate:
                self.gate.notify_all()

    def _resize(self, size: int) -> None:
        """Set the map size (0: adopt another process's) once no transaction of this process is open."""
        with self.gate:
            self.resizing = True
            try:
                if not self.gate.wait_for(lambda: self.txns == 0, timeout=10):
                    raise IndexUnavailable(self.path, "the index map could not be resized: a read stayed open "
                                           "for 10 s; retry")
                self.env.set_mapsize(size)
            finally:
                self.resizing = False
                self.gate.notify_all()

    def get_checkpoint(self, txn: lmdb.Transaction) -> tuple[int, int, int] | None:
        raw = txn.get(b"checkpoint", db=self.db["meta"])
        return None if raw is None else CHECKPOINT.unpack(raw)

    def last_commit(self, txn: lmdb.Transaction) -> tuple[int, int, int, int, int] | None:
        """(first position, segment, offset, events, bytes) of the last indexed commit with events."""
        cur = txn.cursor(self.db["commits"])
        if not cur.last():
            return None
        return (COMMIT_KEY.unpack(cur.key())[0], *EXTENT_VAL.unpack(cur.value()))

    def is_outdated(self, txn: lmdb.Transaction) -> bool:
        """Whether the index holds commits written under an older `INDEX_VERSION` (entries missing)."""
        if txn.get(b"checkpoint", db=self.db["meta"]) is None:
            return False
        return self.counter(txn, b"index_version") < INDEX_VERSION

    def counter(self, txn: lmdb.Transaction, name: bytes) -> int:
        raw = txn.get(name, db=self.db["meta"])
        return 0 if raw is None else U64.unpack(raw)[0]

    def write(self, batch: IndexBatch) -> None:
        """Write a batch in one transaction, growing the map when it is full."""
        while True:
            try:
                self._write(batch)
                return
            except lmdb.MapFullError:
                self.grow()
            finally:
                self.generation += 1

    def adopt_map_size(self) -> None:
        """Take the map size another process grew the environment to (after `MapResizedError`)."""
        self._resize(0)

    def grow(self) -> None:
        size = self.env.info()["map_size"]
        try:
            self._resize(size * 2)
        except lmdb.Error as e:
            raise EvstoreError(
                f"the index map is full at {size} bytes and cannot grow ({e}); reopen with a larger map_size="
            ) from e

    def _write(self, b: IndexBatch) -> None:
        db = self.db
        with self.begin(write=True) as txn:
            if b.typenames:
                txn.cursor(db["typenames"]).putmulti(b.typenames)
            if b.heads:
                txn.cursor(db["heads"]).putmulti(list(b.heads.items()))
            if b.extents:
                txn.cursor(db["extents"]).putmulti(b.extents)
            if b.commits:
                txn.cursor(db["commits"]).putmulti(b.commits)
            if b.types:
                txn.cursor(db["types"]).putmulti(b.types)
            if b.ids:
                txn.cursor(db["ids"]).putmulti(b.ids)
            if b.tags:
                txn.cursor(db["tags"]).putmulti(b.tags)
            if b.categories:
                txn.cursor(db["categories"]).putmulti(b.categories)
            for name, key, value in b.extra:
                if value is None:
                    txn.delete(key, db=db[name.decode()])
                else:
                    txn.put(key, value, db=db[name.decode()])
            meta = db["meta"]
            for k, v in b.counters.items():
                txn.put(k, v, db=meta)
            if b.checkpoint is not None:
                txn.put(b"checkpoint", b.checkpoint, db=meta)
                txn.put(b"index_version", _INDEX_VERSION_VAL, db=meta)

    def clear(self) -> None:
        """Drop every entry (before a rebuild from the log)."""
        try:
            with self.begin(write=True) as txn:
                for d in self.db.values():
                    txn.drop(d, delete=False)
        finally:
            self.generation += 1

    def sync(self) -> None:
        if not self.readonly and not self.closed:
            self.env.sync(True)

    def close(self) -> None:
        self.closed = True
        self.env.close()

    def abandon_after_fork(self) -> None:
        """In a forked child: let go of the environment inherited from the parent, without waiting for
        it here. py-lmdb's close waits until no operation of another thread is under way on it (a
        cursor's step counts) and no other thread holds a write transaction: a thread of the parent
        inside one as the process forked does not exist in the child, and that wait would never end.
        A thread of the child's closes it; an open of the same index in the child waits for that
        close, and raises IndexUnavailable if it does not end (`INHERITED_CLOSE_WAIT`)."""
        self.closed = True
        t = threading.Thread(target=_close_inherited, args=(self.env,), name="evstore-forked-close", daemon=True)
        _inherited[os.path.realpath(self.path)] = t
        t.start()

    def iter_typenames(self, txn: lmdb.Transaction) -> Iterable[tuple[bytes, int]]:
        for k, v in txn.cursor(self.db["typenames"]):
            yield bytes(k), U32.unpack(v)[0]

    def size(self) -> int:
        return sum(os.path.getsize(os.path.join(self.path, f)) for f in os.listdir(self.path))


# -- typed readers: every key layout and cursor walk of the index is here ------------------------

Extent = tuple[int, int, int, int, int]  # first version, segment, offset, count, bytes
CommitLoc = tuple[int, int, int, int, int]  # first position, segment, offset, events, bytes


def head(index: Index, txn: lmdb.Transaction, key: bytes) -> Head | None:
    """The head of the stream with index key `key`, or None."""
    raw = txn.get(key, db=index.db["heads"])
    return None if raw is None else Head.unpack(raw)


def heads_from(index: Index, txn: lmdb.Transaction, prefix: bytes) -> list[tuple[bytes, Head]]:
    """(stream key, head) of every stream whose key starts with `prefix`, in key order."""
    cur = txn.cursor(index.db["heads"])
    out: list[tuple[bytes, Head]] = []
    if not cur.set_range(prefix):
        return out
    for kraw, v in cur:
        k = bytes(kraw)
        if prefix and not k.startswith(prefix):
            break
        out.append((k, Head.unpack(v)))
    return out


def extents(index: Index, txn: lmdb.Transaction, num: int, lo: int, hi: int) -> list[Extent]:
    """Stream `num`'s extents covering versions lo..hi, in version order."""
    db = index.db["extents"]
    raw = txn.get(EXTENT_KEY.pack(num, lo), db=db) if lo <= hi else None
    if raw is not None:  # an extent starts at lo (a whole stream's read): often it holds all of lo..hi
        seg, off, count, nbytes = EXTENT_VAL.unpack(raw)
        if lo + count > hi:
            return [(lo, seg, off, count, nbytes)]
    out: list[Extent] = []
    cur = txn.cursor(db)
    if not cur.set_range(EXTENT_KEY.pack(num, lo)) and not cur.last():
        return out  # no extents at all (a first commit not indexed yet)
    k = EXTENT_KEY.unpack(cur.key())
    if k[0] != num or k[1] > lo:
        cur.prev()
    for kraw, vraw in cur.iternext():
        n, v = EXTENT_KEY.unpack(kraw)
        if n != num or v > hi:
            break
        if n == num:
            out.append((v, *EXTENT_VAL.unpack(vraw)))
    return out


def head_raw(index: Index, txn: lmdb.Transaction, key: bytes) -> bytes | None:
    """The packed head of the stream with index key `key` (see `Head`), or None."""
    return txn.get(key, db=index.db["heads"])  # type: ignore[return-value]  # no buffers: bytes


def head_fields(raw: bytes) -> tuple[int, int, int, int]:
    """(stream number, version, hidden-up-to version, flags) of a packed head: `Head.unpack` without
    the lifecycle state, for the stream read path."""
    num, version, hidden, flags = HEAD.unpack_from(raw)
    return num, version, hidden, flags


def commit_holding(index: Index, txn: lmdb.Transaction, position: int) -> CommitLoc | None:
    """The indexed commit whose events include `position`, or None."""
    cur = txn.cursor(index.db["commits"])
    if not cur.set_range(COMMIT_KEY.pack(position)) or COMMIT_KEY.unpack(cur.key())[0] > position:
        if not cur.prev():
            return None
    first = COMMIT_KEY.unpack(cur.key())[0]
    seg, off, n, nbytes = EXTENT_VAL.unpack(cur.value())
    if position >= first + n:
        return None
    return first, seg, off, n, nbytes


def scan_start(index: Index, txn: lmdb.Transaction, gt: int) -> tuple[int, int, int]:
    """(first position, segment, offset) of the commit a scan of the log after `gt` starts at: the
    commit holding position gt + 1, else the first one (the index must hold a commit)."""
    cur = txn.cursor(index.db["commits"])
    if not cur.set_range(COMMIT_KEY.pack(gt + 1)) or COMMIT_KEY.unpack(cur.key())[0] > gt + 1:
        if not cur.prev():
            cur.first()
    first = COMMIT_KEY.unpack(cur.key())[0]
    seg, off = EXTENT_VAL.unpack(cur.value())[:2]
    return first, seg, off


def snapshots_below(index: Index, txn: lmdb.Transaction, num: int, hi: int, hidden: int) -> list[tuple[int, int]]:
    """(segment, offset) of stream `num`'s snapshots at versions hidden+1..hi, newest first."""
    cur = txn.cursor(index.db["snapshots"])
    locs = []
    ok = cur.prev() if cur.set_range(EXTENT_KEY.pack(num, hi + 1)) else cur.last()
    while ok:
        n, v = EXTENT_KEY.unpack(cur.key())
        if n != num or v <= hidden:
            break
        locs.append(SNAPSHOT_VAL.unpack(cur.value()))
        ok = cur.prev()
    return locs


def snapshot_keys(index: Index, txn: lmdb.Transaction, num: int | None) -> dict[int, list[bytes]]:
    """The snapshot keys of stream `num` (of every stream when None), by stream, oldest first."""
    cur = txn.cursor(index.db["snapshots"])
    ok = cur.set_range(EXTENT_KEY.pack(num, 0)) if num is not None else cur.first()
    per: dict[int, list[bytes]] = {}
    while ok:
        k = bytes(cur.key())
        n = EXTENT_KEY.unpack(k)[0]
        if num is not None and n != num:
            break
        per.setdefault(n, []).append(k)
        ok = cur.next()
    return per


def has_tracking(index: Index, txn: lmdb.Transaction, name: bytes, position: int) -> bool:
    """Whether a tracking record for exactly (`name`, `position`) is indexed."""
    return txn.get(name + b"\x00" + COMMIT_KEY.pack(position), db=index.db["tracking"]) is not None


def tracked(index: Index, txn: lmdb.Transaction, prefix: bytes) -> dict[bytes, int]:
    """The largest tracked position of every upstream whose name starts with `prefix`."""
    best: dict[bytes, int] = {}
    cur = txn.cursor(index.db["tracking"])
    if cur.set_range(prefix):
        for kraw in cur.iternext(values=False):
            k = bytes(kraw)
            if not k.startswith(prefix):
                break
            name, pos = k[:-9], int.from_bytes(k[-8:], "big")
            best[name] = max(best.get(name, 0), pos)
    return best


def id_position(index: Index, txn: lmdb.Transaction, event_id: bytes) -> int | None:
    """The position of the event with caller-given id `event_id` (16 bytes), or None."""
    raw = txn.get(event_id, db=index.db["ids"])
    return None if raw is None else int(U64.unpack(raw)[0])


def stream_count(index: Index, txn: lmdb.Transaction) -> int:
    return int(txn.stat(index.db["heads"])["entries"])


class _Txn:
    """An LMDB transaction that leaves the index's gate when it ends (see `Index.begin`)."""

    __slots__ = ("index", "txn")

    def __init__(self, index: Index, txn: lmdb.Transaction) -> None:
        self.index = index
        self.txn = txn

    def __enter__(self) -> lmdb.Transaction:
        return self.txn.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.txn.__exit__(*exc)
        finally:
            self.index._txn_done()


def stream_key(stream: Any) -> bytes:
    """Index key of a stream id (validated by the caller)."""
    if isinstance(stream, str):
        return b"s" + stream.encode("utf-8")
    return b"u" + bytes(stream.bytes)


def max_tracking(index: Index, txn: lmdb.Transaction, name: bytes) -> int | None:
    """The largest position tracked for upstream `name`, or None."""
    cur = txn.cursor(index.db["tracking"])
    prefix = name + b"\x00"
    if cur.set_range(prefix + b"\xff" * 8):
        if not cur.prev():
            return None
    elif not cur.last():
        return None
    k = bytes(cur.key())
    if not k.startswith(prefix) or len(k) != len(prefix) + 8:
        return None
    return int.from_bytes(k[-8:], "big")
