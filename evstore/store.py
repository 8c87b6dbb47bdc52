"""The EventStore: appends with optimistic concurrency and group commit, and reads of streams and the log."""

from __future__ import annotations

import errno as _errno
import fcntl
import io
import json
import mmap
import os
import struct
import threading
from itertools import chain
import time
import functools
import uuid

import lmdb
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any, NamedTuple, TypeVar

from evstore import _impl
from evstore._format import (
    COMMIT_SIZE,
    EFULL,
    FLAG_CALLER_ID,
    FLAG_UUID_STREAM,
    FORMAT_VERSION,
    HEADER,
    HEADER_SIZE,
    KIND_COMMIT,
    KIND_EVENT,
    KIND_MARK,
    KIND_SNAPSHOT,
    KIND_TRACKING,
    U64,
    LogFormatError,
)
from evstore.durable import make_dirs, remove, replace_file
from evstore.errors import (
    ConditionFailed,
    CorruptedError,
    DuplicateEventId,
    EvstoreError,
    ForkedStore,
    IndexAheadOfLog,
    IndexDamaged,
    IndexUnavailable,
    InvalidTransition,
    ReadOnlyStore,
    StorageError,
    StoreClosed,
    StoreFailed,
    StoreLocked,
    StreamClosed,
    StreamDeleted,
    TrackingConflict,
    UnsupportedFormat,
    WrongExpectedVersion,
)
from evstore.index import (
    INDEX_FILES,
    is_resource_error,
    CHECKPOINT,
    COMMIT_KEY,
    EXTENT_KEY,
    EXTENT_VAL,
    HEAD_CLOSED,
    HEAD_TOMBSTONE,
    SNAPSHOT_VAL,
    TAG_VAL,
    TYPE_KEY,
    U32,
    Head,
    Index,
    IndexBatch,
    max_tracking,
    stream_key,
)
from evstore.lifecycle import Binding, Lifecycle, LifecycleViolation, make_binder
from evstore.log import EVENT_KINDS, Commit, Log
from evstore.snapshots import Loaded, Snapshot, decode_snapshot
from evstore.upcasting import Upcasters
from evstore.subscription import Subscription
from evstore.records import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    NewEvent,
    RecordedEvent,
    Stream,
    StreamInfo,
    _Expected,
    decode_stream,
    encode_tags,
)

MAX_NAME_BYTES = 400
MAX_EVENT_BYTES = 16 << 20
MAX_COMMIT_BYTES = 256 << 20
MAX_VERSION = (1 << 63) - 1
DEFAULT_SEGMENT_SIZE = 128 << 20
DEFAULT_MAP_SIZE = 1 << 30
DURABILITIES = ("fsync", "os")
META_MAGIC = b"EVSTMETA"

_new_record = tuple.__new__
# The header fields indexing needs, without the 16-byte id: length, kind, flags, type_len, stream_len,
# tags_len, position, version, meta_len.
_SLIM = struct.Struct("<4xIBBHHHQQ8x16x4xI")
assert _SLIM.size == HEADER_SIZE
_pack_header = HEADER.pack
_ZERO_ID = bytes(16)
_UUID4_MASK = int.from_bytes(b"\xff" * 6 + b"\x0f\xff\x3f" + b"\xff" * 7, "big")
_UUID4_BITS = int.from_bytes(b"\x00" * 6 + b"\x40\x00\x80" + b"\x00" * 7, "big")
_id_masks: dict[int, tuple[int, int]] = {}


def _random_ids(n: int) -> bytes:
    """n random version-4 UUIDs, as 16n bytes, in a few C-speed operations."""
    m = _id_masks.get(n)
    if m is None:
        m = (int.from_bytes(_UUID4_MASK.to_bytes(16, "big") * n, "big"),
             int.from_bytes(_UUID4_BITS.to_bytes(16, "big") * n, "big"))
        if n <= 1024:
            _id_masks[n] = m
    r = int.from_bytes(_entropy(16 * n), "big")
    return ((r & m[0]) | m[1]).to_bytes(16 * n, "big")


class _EntropyPool:
    """Bytes from os.urandom, drawn from a 64 KiB pool: one getrandom call serves thousands of ids.
    Reset in a forked child, which must not reuse its parent's random bytes."""

    def __init__(self) -> None:
        self.buf = b""
        self.used = 0
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.buf, self.used = b"", 0

    def take(self, n: int) -> bytes:
        if n > 4096:
            return os.urandom(n)
        with self.lock:
            if self.used + n > len(self.buf):
                self.buf, self.used = os.urandom(65536), 0
            start = self.used
            self.used += n
            return self.buf[start : start + n]


_entropy = _EntropyPool().take


# -- validation ------------------------------------------------------------------------------


def _check_stream(stream: Any) -> tuple[bytes, int]:
    """(stored bytes, flags) of a stream id; TypeError/ValueError when malformed."""
    if isinstance(stream, str):
        return _check_name(stream, "a stream id"), 0
    if isinstance(stream, uuid.UUID):
        return stream.bytes, FLAG_UUID_STREAM
    raise TypeError(f"a stream id must be a str or uuid.UUID, not {type(stream).__name__}")


def _check_name(name: Any, what: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} {name!r} is not valid Unicode text: {e.reason}") from None
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"{what} is {len(raw)} bytes in UTF-8; the limit is {MAX_NAME_BYTES}")
    return raw


def _check_bytes(value: Any, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _check_expected(expected: Any) -> Any:
    if isinstance(expected, _Expected):
        return expected
    if type(expected) is not int:
        raise TypeError(
            "expected_version must be ANY, NO_STREAM, STREAM_EXISTS or an int, "
            f"not {type(expected).__name__}"
        )
    if not 0 <= expected <= MAX_VERSION:
        raise ValueError(f"expected_version {expected} is out of range 0..{MAX_VERSION}")
    return expected


def _check_position(value: Any, what: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if type(value) is not int:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_VERSION:
        raise ValueError(f"{what} {value} is out of range 0..{MAX_VERSION}")
    return value


_type_cache: dict[str, bytes] = {}


def _encode_events(events: Any) -> list[tuple[bytes, bytes, bytes, bytes | None, int, bytes]]:
    """Validate events; return (type bytes, data, metadata, id bytes or None, schema, tags part) for each.

    The common case (a str type seen before, bytes payloads, no id or a UUID, an int schema) takes a
    few attribute reads and type checks per event; anything else goes through the full checks."""
    if isinstance(events, (NewEvent, str, bytes)) or not isinstance(events, Iterable):
        raise TypeError("events must be a list of evstore.NewEvent")
    out: list[tuple[bytes, bytes, bytes, bytes | None, int, bytes]] = []
    append = out.append
    cache = _type_cache
    for e in events:
        if type(e) is not NewEvent and not isinstance(e, NewEvent):
            raise TypeError(f"events must be evstore.NewEvent instances, not {type(e).__name__}")
        tb = cache.get(e.type) if type(e.type) is str else None
        if tb is None:
            tb = _check_name(e.type, "an event type")
            if len(cache) < 10_000:
                cache[e.type] = tb
        data = e.data
        if type(data) is not bytes:
            data = _check_bytes(data, "event data")
        meta = e.metadata
        if type(meta) is not bytes:
            meta = _check_bytes(meta, "event metadata")
        if len(data) + len(meta) > MAX_EVENT_BYTES:
            raise ValueError(f"an event's data and metadata are {len(data) + len(meta):,} bytes; the limit is "
                             f"{MAX_EVENT_BYTES:,} (16 MiB)")
        eid = e.id
        if eid is None:
            idb = None
        elif isinstance(eid, uuid.UUID):
            idb = eid.bytes
        else:
            raise TypeError(f"an event id must be a uuid.UUID or None, not {type(eid).__name__}")
        schema = e.schema
        if type(schema) is not int or schema < 0 or schema > _MAX_SCHEMA:
            raise (TypeError if type(schema) is not int else ValueError)(
                f"an event schema must be an int in 0..{_MAX_SCHEMA}, not {schema!r}"
            )
        append((tb, data, meta, idb, schema, encode_tags(e.tags) if e.tags else b""))
    if not out:
        raise ValueError("an append needs at least one event")
    return out


_MAX_SCHEMA = (1 << 32) - 1


class Extra(NamedTuple):
    """A non-event record of a commit: tracking records, stream marks, snapshots."""

    kind: int
    sb: bytes
    sflag: int
    tb: bytes
    version: int
    data: bytes
    schema: int


class _Part:
    """One stream's share of a commit. The stream and the expected version are checked at once; the
    events when first needed (under the writer lock, before anything is written), so that an append
    refused for its expected version does not pay for validating and encoding its events."""

    __slots__ = ("stream", "key", "sb", "sflag", "raw", "_events", "expected", "head", "expected_state")

    def __init__(self, stream: Stream, events: Any, expected: Any, expected_state: Any = None) -> None:
        self.sb, self.sflag = _check_stream(stream)
        self.stream = stream
        self.key = stream_key(stream)
        if isinstance(events, (NewEvent, str, bytes)) or not isinstance(events, Iterable):
            raise TypeError("events must be a list of evstore.NewEvent")
        self.raw = events if type(events) is list else list(events)
        if not self.raw:
            raise ValueError("an append needs at least one event")
        self._events: list[tuple[bytes, bytes, bytes, bytes | None, int, bytes]] | None = None
        self.expected = _check_expected(expected)
        self.head: Head | None = None
        self.expected_state: frozenset[str] | None = (
            None if expected_state is None else _check_expected_state(expected_state))

    @property
    def events(self) -> list[tuple[bytes, bytes, bytes, bytes | None, int, bytes]]:
        """The part's events, validated and encoded (once)."""
        ev = self._events
        if ev is None:
            ev = self._events = _encode_events(self.raw)
        return ev


def _check_expected_state(value: Any) -> frozenset[str]:
    """A frozenset of state names from a state name or a collection of them."""
    states = frozenset((value,)) if isinstance(value, str) else frozenset(value)
    if not states or not all(isinstance(s, str) and s for s in states):
        raise TypeError("expected_state must be a state name or a non-empty set of state names")
    return states


class QueryItem(NamedTuple):
    """Events of any of `types` (all types when empty) that carry every one of `tags`."""

    types: Sequence[str] = ()
    tags: Sequence[str] = ()


class Condition(NamedTuple):
    """An append condition: fail (`ConditionFailed`) if an event matching any of `items` has a
    position above `after` — the optimistic check of dynamic consistency boundaries."""

    items: Sequence[QueryItem]
    after: int = 0


def _query_items(items: Any) -> list[tuple[frozenset[bytes] | None, tuple[bytes, ...]]]:
    """Validated query items as (type names or None for all, tag names)."""
    if isinstance(items, (str, bytes, QueryItem)) or not isinstance(items, Iterable):
        raise TypeError("a query is a list of evstore.QueryItem(types=..., tags=...)")
    out = []
    for it in items:
        if not isinstance(it, tuple) or len(it) != 2:
            raise TypeError("a query item is an evstore.QueryItem(types=..., tags=...) or a (types, tags) pair")
        types, tags = it
        if isinstance(types, str) or isinstance(tags, str):
            raise TypeError("a query item's types and tags are collections of str, not a str")
        tb = frozenset(_check_name(t, "an event type") for t in types)
        gb = encode_tags(tuple(tags))
        names = []
        i = 0
        while i < len(gb):
            names.append(gb[i + 1 : i + 1 + gb[i]])
            i += 1 + gb[i]
        out.append((tb or None, tuple(names)))
    return out


class _NeedFlush(Exception):
    """Raised under the writer lock when a check needs commits that are written but not yet indexed."""


# Seconds the indexer waits after a commit before it writes the index, batching the commits of that
# time into one durable transaction.
_INDEX_DELAY = {"fsync": 0.005, "os": 0.02}

_MARK_STATE = b"$state"
_MARK_CLOSED = b"$closed"
_MARK_DELETED = b"$deleted"
_MARK_TOMBSTONE = b"$tombstone"
_NO_ROW: dict[bytes, str] = {}


# -- the shared, per-process state of one store -------------------------------------------------


_registry: dict[str, _Core] = {}
_registry_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """In a forked child: the parent's stores are not the child's. Each handle raises `ForkedStore`
    from now on, and the child may open the store anew (it does not inherit the writer's role)."""
    for core in _registry.values():
        core.forked = True
        # LMDB refuses to open an environment twice in a process, and the child inherited the
        # parent's: close the child's copy (this touches neither the parent's reader slots nor its
        # locks, which belong to the parent's pid) so the child can open the store itself.
        if core.index is not None:
            try:
                core.index.close()
            except Exception:  # pragma: no cover - best effort in a child
                pass
    _registry.clear()
    global _registry_lock
    _registry_lock = threading.Lock()  # the parent may have held it while forking


os.register_at_fork(after_in_child=_after_fork_in_child)


def _only_index_files(ipath: str) -> bool:
    """Whether `ipath` is absent or holds nothing but the index's own files."""
    try:
        return set(os.listdir(ipath)) <= set(INDEX_FILES)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


class _Core:
    """Everything one open store shares between the handles of this process.

    Locks, in the order they may be taken: `wlock` (the writer lock: every check and write of a
    commit, the log's active segment, `next_position`, `heads`, `tracking`, `pending`, `pending_ids`,
    `written_seq`, `closing`), then `index_lock` (one index transaction at a time; `indexed_seq`),
    then `queue_lock` (`unindexed`, `unindexed_seq`), then `sync_cond` (`syncing`, `durable_seq`,
    `failed`). `commit_cond` only wakes subscribers. Constant after construction: `path`, `readonly`,
    `durability`, `impl`, `meta`, `pid`. `refs` is guarded by the module's `_registry_lock`.
    """

    def __init__(self, path: str, *, create: bool, readonly: bool, durability: str, segment_size: int,
                 map_size: int, log_impl: str | None) -> None:
        self.path = path
        self.readonly = readonly
        self.durability = durability
        self.impl: ModuleType = _impl.load(log_impl)
        self.options = (readonly, durability, str(self.impl.IMPL))
        self.pid = os.getpid()
        self.forked = False  # set in a forked child: every use of the store raises ForkedStore
        self.refs = 0
        self.closed = False
        self.closing = False
        self.lock_fd = -1
        self.failed: BaseException | None = None
        self.map_size = map_size
        self.index: Index | None = None  # type: ignore[assignment]
        self.log: Log | None = None  # type: ignore[assignment]
        # writer state
        self.wlock = threading.RLock()
        self.sync_cond = threading.Condition(threading.Lock())
        self.syncing = False
        self.written_seq = 0
        self.durable_seq = 0
        self.pending: list[IndexBatch] = []  # written, not yet durable
        self.pending_ids: dict[bytes, int] = {}  # caller ids written, not yet indexed
        self.unindexed: list[IndexBatch] = []  # durable, not yet indexed
        self.unindexed_seq = 0
        self.indexed_seq = 0
        self.queue_lock = threading.Lock()
        self.index_lock = threading.Lock()
        self.indexer: threading.Thread | None = None
        self.index_wake = threading.Event()
        self.stopping = False
        self.index_error: BaseException | None = None  # the last failed index write (cleared on success)
        try:
            self._prepare_dir(create)
            if not readonly:
                self._take_lock()
            self.meta = self._load_meta(segment_size)
            self.log = Log(os.path.join(path, "log"), self.impl, segment_size=self.meta["segment_size"],
                           writable=not readonly, first_position=int(self.meta.get("first_position", 1)))
            self._open_index_and_catch_up(map_size)
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

    def _prepare_dir(self, create: bool) -> None:
        p = self.path
        if os.path.exists(p) and not os.path.isdir(p):
            raise EvstoreError(f"{p} is a file, not an evstore directory")
        if not os.path.exists(p):
            if not create or self.readonly:
                raise EvstoreError(f"no store at {p}")
        has_meta = os.path.exists(os.path.join(p, "evstore.meta"))
        has_log = os.path.isdir(os.path.join(p, "log"))
        if has_meta and not has_log:
            if os.path.lexists(os.path.join(p, "log")):
                raise CorruptedError(os.path.join(p, "log"), 0, "log/ is not a directory")
            raise CorruptedError(os.path.join(p, "log"), 0, "the store has its evstore.meta but no log/ directory: "
                                 "every segment is missing")
        if not has_meta and not has_log and os.path.isdir(p):
            if not create or self.readonly:
                raise EvstoreError(f"no store at {p} (the directory holds no evstore.meta and no log/)")
            entries = set(os.listdir(p))
            if entries - {"LOCK", "index", "evstore.meta.tmp"} or not _only_index_files(os.path.join(p, "index")):
                raise EvstoreError(f"{p} is a non-empty directory that is not an evstore store")
        if not self.readonly:
            try:
                make_dirs(p)
                make_dirs(os.path.join(p, "log"))
            except OSError as e:
                raise StorageError(p, e.errno, f"cannot create the store in {p}: {e.strerror}") from e
        elif not has_log:
            raise EvstoreError(f"no store at {p} (no log/ directory)")

    def _take_lock(self) -> None:
        lock_path = os.path.join(self.path, "LOCK")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StorageError(lock_path, e.errno, f"cannot open {lock_path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                pid = int(os.pread(fd, 32, 0).split()[0])
            except (ValueError, IndexError, OSError):
                pid = None
            os.close(fd)
            if e.errno in (_errno.EAGAIN, _errno.EACCES, _errno.EWOULDBLOCK):
                raise StoreLocked(self.path, pid) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.lock_fd = fd

    def _release_lock(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # closing the descriptor drops the flock
            self.lock_fd = -1

    def _load_meta(self, segment_size: int) -> dict[str, Any]:
        path = os.path.join(self.path, "evstore.meta")
        try:
            with io.open(path, "rb") as f:
                raw = f.read(65536)
        except FileNotFoundError:
            meta = {"format": FORMAT_VERSION, "segment_size": segment_size, "created_ns": time.time_ns(),
                    "first_position": 1}
            if not self.readonly:
                self._write_meta(path, meta)
            return meta
        if raw[:8] != META_MAGIC or len(raw) < 12:
            raise EvstoreError(f"{path} is not an evstore meta file")
        body = raw[12:]
        if self.impl.crc32c(body) != U32.unpack_from(raw, 8)[0]:
            raise CorruptedError(path, 8, "meta checksum mismatch (delete evstore.meta to rebuild it from the log)")
        try:
            meta = json.loads(body)
        except ValueError as e:
            raise CorruptedError(path, 12, "meta is not readable") from e
        if meta.get("format") != FORMAT_VERSION:
            raise UnsupportedFormat(self.path, meta.get("format"), FORMAT_VERSION)
        return dict(meta)

    def _write_meta(self, path: str, meta: dict[str, Any]) -> None:
        body = json.dumps(meta, sort_keys=True).encode()
        try:
            replace_file(path, META_MAGIC + U32.pack(self.impl.crc32c(body)) + body)
        except OSError as e:
            raise StorageError(path, e.errno, f"cannot write {path}: {e.strerror}") from e

    def _open_index_and_catch_up(self, map_size: int) -> None:
        """Open the index, check that it describes this log, and catch it up with the log's tail.

        A writer rebuilds an index that is missing, damaged (any LMDB error, a file shorter than its
        meta pages claim, a checkpoint that is not a commit boundary of this log) from the log; a
        reader raises `CorruptedError`. An index ahead of the log raises `IndexAheadOfLog`."""
        ipath = os.path.join(self.path, "index")
        if self.readonly and not os.path.exists(os.path.join(ipath, "data.mdb")):
            raise EvstoreError(f"{self.path} has no index yet; open it once for writing to rebuild it from the log")
        for attempt in range(2):
            try:
                self.index = Index(ipath, readonly=self.readonly, map_size=map_size)
                self._init_state()
                return
            except IndexAheadOfLog:
                raise
            except (CorruptedError, lmdb.Error, struct.error) as e:
                if not isinstance(e, CorruptedError) and is_resource_error(e):
                    if self.index is not None:
                        self.index.close()
                        self.index = None  # type: ignore[assignment]
                    raise IndexUnavailable(ipath, f"the index cannot be used ({e}); free the resource and "
                                           "open the store again") from e
                if self.index is not None:
                    self.index.close()
                    self.index = None  # type: ignore[assignment]
                if isinstance(e, CorruptedError) and not isinstance(e, IndexDamaged) and e.path.startswith(
                        os.path.join(self.path, "log")):
                    raise  # damage in the log itself: not the index's to repair
                if self.readonly or attempt:
                    if isinstance(e, CorruptedError):
                        raise
                    raise CorruptedError(ipath, 0, f"the index is damaged ({e}); open the store for writing "
                                         "to rebuild it from the log") from e
            # A lost or damaged index is rebuilt from the log.
            self._remove_index(ipath)

    @staticmethod
    def _remove_index(ipath: str) -> None:
        """Remove the index's own files (nothing else that may be in the directory), durably."""
        try:
            for f in INDEX_FILES:
                remove(os.path.join(ipath, f))
        except OSError as e:
            raise StorageError(ipath, e.errno, f"cannot remove the damaged index in {ipath}: {e.strerror}") from e

    def _init_state(self) -> None:
        with self.index.begin() as txn:
            checkpoint = self.index.get_checkpoint(txn)
            self.next_stream = self.index.counter(txn, b"next_stream") or 1
            self.type_ids = {name: tid for name, tid in self.index.iter_typenames(txn)}
            last = self.index.last_commit(txn)
        if checkpoint is not None:
            self.log.check_checkpoint(checkpoint, last)
        elif last is not None:
            raise IndexDamaged(self.index.path, 0, "the index holds commits but no checkpoint")
        self.heads: dict[bytes, Head] = {}
        self.tracking: dict[bytes, int] = {}
        self.commit_cond = threading.Condition(threading.Lock())
        self.catch_up(checkpoint)
        with self.index.begin() as txn:
            cp = self.index.get_checkpoint(txn)
        self.next_position = cp[2] if cp else self.log.next_position

    def catch_up(self, checkpoint: tuple[int, int, int] | None) -> int:
        """Index every commit the log holds past `checkpoint`; returns how many."""
        batch = IndexBatch()
        n = 0
        events = 0
        synced = False
        for c in self.log.recover(checkpoint):
            self._index_commit(batch, c)
            n += 1
            events += c.n_events
            if events >= 50_000 and not self.readonly:
                if not synced:  # never make the index durable ahead of the log it describes
                    self.log.sync_all()
                    synced = True
                self.index.write(batch)
                batch = IndexBatch()
                events = 0
        if n and not self.readonly:
            if not synced:
                self.log.sync_all()
            self.index.write(batch)
        if n and self.readonly:
            self.heads = {}
        return n

    def _index_commit(self, batch: IndexBatch, c: Commit) -> None:
        """Add the index entries of a commit found in the log (catch-up and rebuild)."""
        buf = c.segment.buffer(c.end)
        unpack = _SLIM.unpack_from
        rows = []
        marks = []
        for o in c.records[:-1]:
            ln, kind, flags, tl, sl, gl, pos, ver, ml = unpack(buf, o)
            s = o + HEADER_SIZE
            t = s + sl
            key = (b"u" if flags & FLAG_UUID_STREAM else b"s") + buf[s:t]
            if kind == KIND_EVENT:
                caller = bytes(buf[o + 40 : o + 56]) if flags & FLAG_CALLER_ID else None
                rows.append((key, ver, buf[t : t + tl], caller, pos, o, ln))
                if gl:
                    g = t + tl + ml
                    self.index_tags(batch, c.segment.first, [(bytes(buf[g : g + gl]), pos, o)])
            else:
                marks.append((HEADER.unpack_from(buf, o), key, buf, o))
        self.index_rows(batch, c.segment.first, c.offset, c.end, c.first_position, c.n_events, rows)
        for h, key, b, o in marks:
            self.apply_record(batch, h, key, b, o, c.segment.first)
        batch.checkpoint = CHECKPOINT.pack(c.segment.first, c.end, c.first_position + c.n_events)

    def apply_record(self, batch: IndexBatch, h: tuple[Any, ...], key: bytes, buf: Any, off: int,
                     seg: int = 0) -> None:
        """Index a non-event record found in the log (catch-up and rebuild); `seg` names its segment."""
        s = off + HEADER_SIZE
        sb = bytes(buf[s : s + h[5]])
        tb = bytes(buf[s + h[5] : s + h[5] + h[4]])
        d = s + h[5] + h[4] + h[12] + h[6]
        self.index_extra(batch, Extra(h[2], sb, h[3] & FLAG_UUID_STREAM, tb, h[8], bytes(buf[d : off + h[1]]), h[11]),
                         seg, off)

    def index_extra(self, batch: IndexBatch, x: Extra, seg: int = 0, off: int = 0) -> None:
        """Index entries and in-memory state of one non-event record (live writes and catch-up alike).

        `seg`, `off` locate the record in the log (snapshots are indexed by where they are)."""
        kind = x.kind
        if kind == KIND_TRACKING:
            batch.extra.append((b"tracking", x.sb + b"\x00" + COMMIT_KEY.pack(x.version), b""))
            if x.version > self.tracking_max(x.sb):
                self.tracking[x.sb] = x.version
        elif kind == KIND_MARK:
            key = (b"u" if x.sflag & FLAG_UUID_STREAM else b"s") + x.sb
            h = self._head_for_mark(batch, key)
            name = x.tb
            if name == _MARK_STATE:
                h.state = x.data.decode("utf-8") or None
            elif name == _MARK_CLOSED:
                h.flags |= HEAD_CLOSED
            elif name == _MARK_DELETED:
                h.hidden = max(h.hidden, x.version)
                h.state = None  # the lifecycle starts again with the stream's visible history
            elif name == _MARK_TOMBSTONE:
                h.flags |= HEAD_TOMBSTONE
                h.hidden = max(h.hidden, x.version)
                h.state = None
            batch.heads[key] = h.pack()
        elif kind == KIND_SNAPSHOT:
            key = (b"u" if x.sflag & FLAG_UUID_STREAM else b"s") + x.sb
            h = self._head_for_mark(batch, key)
            batch.extra.append((b"snapshots", EXTENT_KEY.pack(h.num, x.version), SNAPSHOT_VAL.pack(seg, off)))

    def _head_for_mark(self, batch: IndexBatch, key: bytes) -> Head:
        """The head of stream `key`, created (with a new stream number) when the stream is new."""
        h = self.head_of(key)
        if h is None:
            h = self.heads[key] = Head(self.next_stream)
            self.next_stream += 1
            batch.counters[b"next_stream"] = U64.pack(self.next_stream)
        return h

    def tracking_max(self, name: bytes) -> int:
        """The largest tracked position of upstream `name` (0 when none), for the writer."""
        v = self.tracking.get(name)
        if v is None:
            with self.index.begin() as txn:
                v = max_tracking(self.index, txn, name) or 0
            self.tracking[name] = v
        return v

    def head_of(self, key: bytes, txn: Any = None) -> Head | None:
        h = self.heads.get(key)
        if h is None:
            if txn is None:
                with self.index.begin() as t:
                    raw = t.get(key, db=self.index.db["heads"])
            else:
                raw = txn.get(key, db=self.index.db["heads"])
            if raw is None:
                return None
            h = Head.unpack(raw)
            self.heads[key] = h
        return h

    def type_id(self, tb: bytes, batch: IndexBatch) -> int:
        tid = self.type_ids.get(tb)
        if tid is None:
            tid = len(self.type_ids) + 1
            self.type_ids[tb] = tid
            batch.typenames.append((tb, U32.pack(tid)))
        return tid

    @staticmethod
    def index_tags(batch: IndexBatch, seg: int, tagged: list[tuple[bytes, int, int]]) -> None:
        """Tag index entries of events: (tags part, position, offset) each."""
        for gb, pos, off in tagged:
            loc = TAG_VAL.pack(seg, off)
            pk = b"\x00" + COMMIT_KEY.pack(pos)
            i = 0
            while i < len(gb):
                n = gb[i]
                batch.tags.append((gb[i + 1 : i + 1 + n] + pk, loc))
                i += 1 + n

    def index_rows(self, batch: IndexBatch, seg: int, commit_off: int, commit_end: int, first_position: int,
                   n_events: int, rows: list[tuple[bytes, int, bytes, bytes | None, int, int, int]]) -> None:
        """Index entries of one commit's events found in the log: rows of (stream key, version, type,
        caller id, position, offset, length), in log order (grouped into runs for `index_runs`)."""
        runs: list[tuple[bytes, int, int, int, int]] = []
        types: dict[bytes, None] = {}
        ids = []
        key = None
        for k, version, tb, idb, pos, off, ln in rows:
            if k != key or version != runs[-1][2] + 1:
                runs.append((k, version, version, off, ln))
                key = k
            else:
                k0, v0, _v1, o0, nb = runs[-1]
                runs[-1] = (k0, v0, version, o0, nb + ln)
            types[tb] = None
            if idb is not None:
                ids.append((idb, pos))
        self.index_runs(batch, seg, commit_off, commit_end, first_position, n_events, runs, types, ids)

    def index_runs(self, batch: IndexBatch, seg: int, commit_off: int, commit_end: int, first_position: int,
                   n_events: int, runs: list[tuple[bytes, int, int, int, int]], types: Iterable[bytes],
                   ids: list[tuple[bytes, int]]) -> None:
        """Index entries of one commit: runs of one stream's consecutive events (stream key, first and
        last version, offset, bytes), the types it holds and the caller-given ids (id, position). Streams
        get one extent per run; types one posting per commit that holds them (a read by type scans
        those commits in C with the type filter). Updates the in-memory heads."""
        if not n_events:
            return
        where = EXTENT_VAL.pack(seg, commit_off, n_events, commit_end - commit_off)
        batch.commits.append((COMMIT_KEY.pack(first_position), where))
        heads = self.heads
        for key, v0, v1, off, nbytes in runs:
            h = self.head_of(key)
            if h is None:
                h = heads[key] = Head(self.next_stream)
                self.next_stream += 1
                batch.counters[b"next_stream"] = U64.pack(self.next_stream)
            h.version = v1
            batch.extents.append((EXTENT_KEY.pack(h.num, v0), EXTENT_VAL.pack(seg, off, v1 - v0 + 1, nbytes)))
            batch.heads[key] = h.pack()
        for tb in types:
            batch.types.append((TYPE_KEY.pack(self.type_id(tb, batch), first_position), where))
        for idb, pos in ids:
            batch.ids.append((idb, U64.pack(pos)))

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the appends under way, make everything written durable (the log, then the index)
        and release the store. Appends that start after this began raise `StoreClosed`. The writer
        lock and every resource are released even when a step fails (the error is raised after)."""
        if self.closed:
            return
        err: BaseException | None = None
        if not self.readonly:
            with self.wlock:
                self.closing = True  # appends that take the writer lock from now on are refused
            try:
                self._flush_pending()
            except BaseException as e:
                err = e
            self.stopping = True
            if self.indexer is not None:
                self.index_wake.set()
                self.indexer.join()
            if err is None and self.failed is None:
                try:
                    self.index.sync()
                except BaseException as e:  # the log still holds everything; the next open catches up
                    err = e
        self.closed = True
        try:
            self.index.close()
        finally:
            self.log.close()
            self._release_lock()
        if err is not None and not isinstance(err, (EvstoreError, OSError, lmdb.Error)):
            raise err

    def _flush_pending(self) -> None:
        """Wait until every written commit is durable and indexed (never under the writer lock: the
        syncer needs it)."""
        if self.durable_seq < self.written_seq and self.failed is None:
            self.await_durable(self.written_seq)
        if self.failed is None:
            self.flush_index()

    def log_damage(self, path: str, offset: int, reason: str) -> CorruptedError:
        """The error for damaged log bytes met by a read; the writer latches it and refuses every later
        append (StoreFailed) so that nothing is acknowledged after damage that `recover` would cut off."""
        err = CorruptedError(path, offset, reason)
        if not self.readonly and self.failed is None:
            with self.sync_cond:
                if self.failed is None:
                    self.failed = err
        return err

    def refusal(self) -> StoreFailed:
        """The error every write raises once the store has latched a failure."""
        if isinstance(self.failed, CorruptedError):
            return StoreFailed(f"the store refuses writes: a read found the log damaged ({self.failed})")
        return StoreFailed(f"the store stopped accepting writes after an I/O failure ({self.failed}); reopen it")

    def check_usable(self) -> None:
        """Raise unless this process may use the store: `ForkedStore` in a forked child, `StoreClosed`
        once closed."""
        if self.forked:
            raise ForkedStore(self.path, self.pid)
        if self.closed:
            raise StoreClosed(self.path)

    # -- writing ---------------------------------------------------------------------------

    def commit(self, parts: list[_Part], extras: Sequence[Extra] = (),
               binder: Callable[[Any], Lifecycle | None] | None = None, ts: int | None = None,
               condition: _Cond | None = None) -> list[AppendResult]:
        """Validate, write and (per durability) sync one commit of several streams' events.

        `binder` gives each stream's lifecycle (None: no lifecycles): every event is checked against
        it and a `$state` mark is added to the commit when a stream's state changes. `ts` overrides
        the commit time (imports keep the original times)."""
        for _attempt in range(100):
            try:
                return self._commit(parts, extras, binder, ts, condition)
            except _NeedFlush:
                self.await_durable(self.written_seq)  # index what is written, then check again
                self.flush_index()
        try:
            return self._commit(parts, extras, binder, ts, condition)
        except _NeedFlush:
            raise EvstoreError("other writers kept the index behind: the append's checks (condition or "
                               "lifecycle state) could not be made; retry") from None

    def _commit(self, parts: list[_Part], extras: Sequence[Extra],
                binder: Callable[[Any], Lifecycle | None] | None, ts: int | None,
                condition: _Cond | None = None) -> list[AppendResult]:
        if self.failed is not None:
            raise self.refusal()
        with self.wlock:
            if self.closing:
                raise StoreClosed(self.path)
            done = self._idempotent(parts)
            if done is not None:
                return done
            if condition is not None:
                if self.indexed_seq < self.written_seq:
                    raise _NeedFlush  # the check reads the index: index what is written first
                hit = self.query(condition[0], condition[1], None, 1)
                if hit:
                    raise ConditionFailed(condition[2], hit[0].position)
            for x in extras:
                if x.kind == KIND_TRACKING and x.version <= self.tracking_max(x.sb):
                    raise TrackingConflict(x.sb.decode(), x.version, self.tracking_max(x.sb))
            for p in parts:
                h = self.head_of(p.key)
                p.head = h
                actual = 0 if h is None else h.version
                self.check_writable(p, h)
                e = p.expected
                if e is ANY:
                    pass
                elif e is NO_STREAM:
                    if actual != 0:
                        raise WrongExpectedVersion(p.stream, e, actual)
                elif e is STREAM_EXISTS:
                    if actual == 0:
                        raise WrongExpectedVersion(p.stream, e, actual)
                elif e != actual:
                    raise WrongExpectedVersion(p.stream, e, actual)
                if binder is not None or p.expected_state is not None:
                    mark = self._check_state(p, h, binder)
                    if mark is not None:
                        extras = [*extras, mark]
            if len({p.key for p in parts}) != len(parts):
                raise ValueError("append_many names a stream twice; put its events in one entry")
            results, seq = self._write(parts, extras, ts)
        self.await_durable(seq)
        return results

    def check_writable(self, part: _Part, head: Head | None) -> None:
        """Refuse appends to streams that cannot take them: tombstoned or closed streams."""
        if head is not None and head.flags:
            if head.flags & HEAD_TOMBSTONE:
                raise StreamDeleted(part.stream)
            if head.flags & HEAD_CLOSED:
                raise StreamClosed(part.stream)

    def _check_state(self, p: _Part, h: Head | None,
                     binder: Callable[[Any], Lifecycle | None] | None) -> Extra | None:
        """Check expected_state and the lifecycle of one part; the `$state` mark to write, if any."""
        lc = binder(p.stream) if binder is not None else None
        state = None if h is None else h.state
        if lc is not None and state is None:
            state = self.derive_state(p.stream, p.key, h, lc)
        es = p.expected_state
        if es is not None and state not in es:
            raise WrongExpectedVersion(p.stream, next(iter(es)) if len(es) == 1 else set(es), state, "state")
        if lc is None:
            return None
        rows = lc._rows
        cur: str = state  # type: ignore[assignment]
        row = rows.get(cur, _NO_ROW)
        for e in p.events:
            nxt = row.get(e[0])  # the one dict lookup per event
            if nxt is None:
                raise InvalidTransition(p.stream, cur, e[0].decode("utf-8"), lc.allowed(cur), lc.name)
            if nxt is not cur:
                cur = nxt
                row = rows.get(cur, _NO_ROW)
        if h is not None and cur == h.state:
            return None
        return Extra(KIND_MARK, p.sb, p.sflag, _MARK_STATE, (0 if h is None else h.version) + len(p.events),
                     cur.encode("utf-8"), 0)

    def derive_state(self, stream: Stream, key: bytes, h: Head | None, lc: Lifecycle) -> str:
        """The state that a stream's visible history leads to in `lc` (for streams with no recorded state).

        Raises `InvalidTransition` when the history does not fit the lifecycle, and `_NeedFlush` (under
        the writer lock) when the stream has written events that are not indexed yet."""
        if h is None or h.version <= h.hidden:
            return lc.initial
        with self.index.begin() as txn:
            extents = self.extents(txn, h.num, h.hidden + 1, h.version)
        records = self.walk_extents(extents, h.hidden + 1, h.version, stream)
        if not records or records[-1].version != h.version:
            raise _NeedFlush()
        state = lc.initial
        table = lc.transitions
        for r in records:
            nxt = table.get((state, r.type))
            if nxt is None:
                raise InvalidTransition(stream, state, r.type, lc.allowed(state), lc.name)
            state = nxt
        return state

    def write_marks(self, key: bytes, make: Callable[[Head | None], list[Extra]]) -> int:
        """Write, in a commit of their own, the records `make(head)` returns (none: nothing is written).

        `make` runs under the writer lock with the stream's current head and may raise to refuse.
        Returns the number of records written."""
        if self.failed is not None:
            raise self.refusal()
        with self.wlock:
            if self.closing:
                raise StoreClosed(self.path)
            extras = make(self.head_of(key))
            if not extras:
                return 0
            _, seq = self._write([], extras)
        self.await_durable(seq)
        return len(extras)

    def _idempotent(self, parts: list[_Part]) -> list[AppendResult] | None:
        """The original results when every event id of this append is already committed in this shape."""
        if not any(getattr(e, "id", None) is not None for p in parts for e in p.raw):
            return None  # no caller ids: nothing to look up, and no need to encode the events yet
        ids = [e[3] for p in parts for e in p.events if e[3] is not None]
        if len(set(ids)) != len(ids):
            seen: set[bytes] = set()
            for i in ids:
                if i in seen:
                    raise DuplicateEventId(uuid.UUID(bytes=i))
                seen.add(i)
        found = {}
        with self.index.begin() as txn:
            db = self.index.db["ids"]
            for i in ids:
                if i in self.pending_ids:
                    raise _NeedFlush  # a retry of a commit not indexed yet: index it, then compare
                raw = txn.get(i, db=db)
                if raw is not None:
                    found[i] = U64.unpack(raw)[0]
        if not found:
            return None
        results = []
        if len(found) == len(ids) == sum(len(p.events) for p in parts):
            for p in parts:
                positions = [found[e[3]] for e in p.events]  # type: ignore[index]
                first = positions[0]
                if positions != list(range(first, first + len(positions))):
                    break
                rec = self.record_at(first)
                if rec is None or stream_key(rec.stream) != p.key:
                    break
                if not self._same_events(p, positions):
                    break  # the ids are those of a committed append, the events are not
                v = rec.version
                results.append(AppendResult(p.stream, v, v + len(positions) - 1, first, positions[-1]))
            else:
                return results
        i, pos = next(iter(found.items()))
        raise DuplicateEventId(uuid.UUID(bytes=i), pos)

    def _same_events(self, part: _Part, positions: list[int]) -> bool:
        """Whether the committed events at `positions` are `part`'s events: same type, data, metadata,
        schema and tags (a retry must repeat the append, not reuse its ids for other events)."""
        for (tb, data, meta, _idb, schema, gb), pos in zip(part.events, positions):
            rec = self.record_at(pos)
            if (rec is None or rec.type.encode("utf-8") != tb or rec.data != data or rec.metadata != meta
                    or rec.schema != schema or encode_tags(rec.tags) != gb):
                return False
        return True

    def _write(self, parts: list[_Part], extras: Sequence[Extra],
               ts: int | None = None) -> tuple[list[AppendResult], int]:
        if ts is None:
            ts = time.time_ns()
        pos = self.next_position
        first_pos = pos
        chunks: list[bytes] = []
        add = chunks.extend
        results = []
        runs: list[tuple[bytes, int, int, int, int]] = []  # (stream key, first version, last, offset, bytes)
        types: dict[bytes, None] = {}
        ids: list[tuple[bytes, int]] = []
        tagged: list[tuple[bytes, int, int]] = []
        offset = 0
        n_random = sum(1 for p in parts for e in p.events if e[3] is None)
        rnd = _random_ids(n_random) if n_random else b""
        r = 0
        pack = _pack_header
        for p in parts:
            sb, slen, sflag = p.sb, len(p.sb), p.sflag
            ver = 0 if p.head is None else p.head.version
            if ver + len(p.events) > MAX_VERSION:
                raise ValueError(f"stream {p.stream!r} would pass the largest version {MAX_VERSION}")
            v0 = ver + 1
            first = pos
            start = offset
            for tb, data, meta, idb, schema, gb in p.events:
                ver += 1
                if idb is None:
                    idb = rnd[r : r + 16]
                    r += 16
                    flags = sflag
                else:
                    flags = sflag | FLAG_CALLER_ID
                    ids.append((idb, pos))
                tl = len(tb)
                ml = len(meta)
                gl = len(gb)
                ln = HEADER_SIZE + slen + tl + ml + gl + len(data)
                add((pack(0, ln, KIND_EVENT, flags, tl, slen, gl, pos, ver, ts, idb, schema, ml), sb, tb, meta, gb,
                     data))
                if tb not in types:
                    types[tb] = None
                if gl:
                    tagged.append((gb, pos, offset))
                offset += ln
                pos += 1
            runs.append((p.key, v0, ver, start, offset - start))
            results.append(AppendResult(p.stream, v0, ver, first, pos - 1))
        n_events = pos - first_pos
        records = n_events
        x_offs = []
        for x in extras:
            x_offs.append(offset)
            ln = HEADER_SIZE + len(x.sb) + len(x.tb) + len(x.data)
            add((_pack_header(0, ln, x.kind, x.sflag, len(x.tb), len(x.sb), 0, pos, x.version, ts, _ZERO_ID,
                              x.schema, 0), x.sb, x.tb, x.data))
            offset += ln
            records += 1
        if offset > MAX_COMMIT_BYTES:
            raise ValueError(f"a commit of {offset} bytes exceeds the limit of {MAX_COMMIT_BYTES}")
        add((_pack_header(0, COMMIT_SIZE, KIND_COMMIT, 0, 0, 0, 0, first_pos, n_events, ts, _ZERO_ID, records, 0),
             U64.pack(offset)))
        buf = bytearray().join(chunks)
        self.impl.seal(buf)
        seg, off = self.log.append(buf, first_pos, n_events)
        # The commit is in the log: from here on, state changes are installed.
        batch = IndexBatch()
        self.index_runs(batch, seg.first, off, off + len(buf), first_pos, n_events,
                        [(k, v0, v1, o + off, nb) for k, v0, v1, o, nb in runs], types, ids)
        if tagged:
            self.index_tags(batch, seg.first, [(gb, ps, o + off) for gb, ps, o in tagged])
        for x, xo in zip(extras, x_offs):
            self.index_extra(batch, x, seg.first, off + xo)
        batch.checkpoint = CHECKPOINT.pack(seg.first, off + len(buf), pos)
        self.next_position = pos
        for idb, p_ in ids:
            self.pending_ids[idb] = p_
        self.pending.append(batch)
        self.written_seq += 1
        return results, self.written_seq

    def await_durable(self, seq: int) -> None:
        """Return once commit `seq` is durable (per the durability mode).

        Group commit: one thread syncs every commit written so far while the others wait; commits
        written during that sync are served by the next one. Waiters are released as soon as the
        sync returns; the syncer then indexes (durability="fsync"), or leaves the indexing to the
        next read, a batch of 512 commits or the indexer thread 20 ms on (durability="os"). Every read of this
        process first indexes what is durable, so a caller always reads its own writes.
        """
        cond = self.sync_cond
        with cond:
            while self.durable_seq < seq:
                if self.failed is not None:
                    raise StoreFailed(f"the commit may not be durable: {self.failed}; reopen the store")
                if self.syncing:
                    cond.wait()
                    continue
                self.syncing = True
                break
            else:
                return
        err: BaseException | None = None
        interrupted: BaseException | None = None
        target = seq
        batches: list[IndexBatch] = []
        try:
            with self.wlock:
                target = self.written_seq
                batches, self.pending = self.pending, []
                fd = self.log.sync_fd()
                retired, self.log.retired_fds = self.log.retired_fds, []
            try:
                if self.durability == "fsync" and fd >= 0:
                    os.fdatasync(fd)
            finally:
                for rfd in retired:
                    os.close(rfd)
        except OSError as e:  # an fsync failure: the kernel may have dropped the pages; stop writing
            err = e
        except BaseException as e:  # KeyboardInterrupt and the like: the commits stay pending
            interrupted = e
            with self.wlock:
                self.pending[:0] = batches
        if err is None and interrupted is None:
            with self.queue_lock:
                self.unindexed.extend(batches)
                self.unindexed_seq = target
        with cond:
            self.syncing = False
            if err is None and interrupted is None:
                self.durable_seq = max(self.durable_seq, target)
            elif err is not None:
                self.failed = err
            cond.notify_all()
        if interrupted is not None:
            raise interrupted
        if err is not None:
            raise StoreFailed(f"the commit may not be durable: {err}; reopen the store") from err
        with self.commit_cond:
            self.commit_cond.notify_all()
        self._kick_indexer()

    def flush_index(self) -> None:
        """Write the index entries of every durable commit not indexed yet, in one durable LMDB
        transaction that carries their checkpoint.

        With durability="os" the log is fdatasynced first, so that the index on disk never covers a
        commit the log might lose. A failed index write (a full disk) keeps the entries queued, in
        order, for the next flush and raises `IndexUnavailable`; the commits themselves are in the
        log, so nothing is lost and no later flush can skip them."""
        with self.index_lock:
            with self.queue_lock:
                batches, self.unindexed = self.unindexed, []
                target = self.unindexed_seq
            if not batches:
                return
            try:
                if self.durability == "os":
                    self._sync_log()
                batch = IndexBatch()
                for b in batches:
                    batch.merge(b)
                self.index.write(batch)
            except BaseException as e:
                with self.queue_lock:
                    self.unindexed[:0] = batches  # keep them, first, for the next attempt
                if isinstance(e, StoreFailed):
                    raise
                if isinstance(e, (OSError, lmdb.Error)):
                    self.index_error = e
                    self._reset_index_after(e)
                    raise IndexUnavailable(self.index.path, f"the index could not be written ({e}); every "
                                           "acknowledged commit is in the log and will be indexed once the "
                                           "index can be written (free disk space)",
                                           getattr(e, "errno", None)) from e
                raise
            self.index_error = None
            with self.wlock:
                for k, _v in batch.ids:
                    self.pending_ids.pop(k, None)
            self.indexed_seq = target
        with self.commit_cond:
            self.commit_cond.notify_all()

    def _sync_log(self) -> None:
        """fdatasync the active segment (sealed ones were synced when they were sealed). A failure
        latches the store failed, as a failed fsync of an append does."""
        with self.wlock:
            fd = self.log.sync_fd()
            fd = os.dup(fd) if fd >= 0 else -1
        if fd < 0:
            return
        try:
            os.fdatasync(fd)
        except OSError as e:
            with self.sync_cond:
                self.failed = e
            raise StoreFailed(f"the log could not be synced ({e}); reopen the store") from e
        finally:
            os.close(fd)

    def _reset_index_after(self, e: BaseException) -> None:
        """After a failed index transaction: LMDB refuses every later call once it has panicked (a
        failed meta write); reopen the environment so that the next flush can succeed."""
        if not isinstance(e, lmdb.PanicError) and "MDB_PANIC" not in str(e):
            return
        try:
            self.index.close()
        except lmdb.Error:  # pragma: no cover
            pass
        self.index = Index(os.path.join(self.path, "index"), readonly=False, map_size=self.map_size)

    def sync(self) -> None:
        """Make every commit written so far durable, and the index with it."""
        self.check_usable()
        if self.failed is not None:
            raise self.refusal()
        self.await_durable(self.written_seq)
        self._sync_log()
        self.flush_index()
        try:
            self.index.sync()
        except lmdb.Error as e:
            raise IndexUnavailable(self.index.path, f"the index could not be synced ({e})") from e

    def refresh(self) -> None:
        """Index every durable commit before a read (read-your-writes); cheap when there is none."""
        if self.indexed_seq < self.durable_seq:
            self.flush_index()

    def _kick_indexer(self) -> None:
        """Have the indexer thread index the durable commits after a short batching delay.

        Index transactions are durable (an fdatasync of data.mdb each), so they are kept off the
        append path: appenders return once the log is durable, and the indexer writes many commits in
        one transaction. A read of this process indexes first, so a caller always reads its own
        writes."""
        if self.indexer is None:
            self.indexer = threading.Thread(target=self._indexer_loop, name=f"evstore-indexer {self.path}",
                                            daemon=True)
            self.indexer.start()
        self.index_wake.set()

    def _indexer_loop(self) -> None:
        delay = _INDEX_DELAY[self.durability]
        while True:
            self.index_wake.wait()
            self.index_wake.clear()  # before the check: a wake during the work below is not lost
            if self.stopping:
                return
            time.sleep(delay)
            try:
                self.flush_index()
            except EvstoreError:  # kept queued (or latched in self.failed); retried on the next wake
                if not self.stopping and self.failed is None:
                    time.sleep(0.2)
                    self.index_wake.set()

    # -- reading ---------------------------------------------------------------------------

    def extents(self, txn: Any, num: int, lo: int, hi: int) -> list[tuple[int, int, int, int, int]]:
        """(first version, segment, offset, count, bytes) of stream `num`'s extents covering lo..hi."""
        extents = []
        cur = txn.cursor(self.index.db["extents"])
        if not cur.set_range(EXTENT_KEY.pack(num, lo)):
            cur.last()
        k = EXTENT_KEY.unpack(cur.key())
        if k[0] != num or k[1] > lo:
            cur.prev()
        for kraw, vraw in cur.iternext():
            n, v = EXTENT_KEY.unpack(kraw)
            if n != num or v > hi:
                break
            if n == num:
                extents.append((v, *EXTENT_VAL.unpack(vraw)))
        return extents

    def walk_extents(self, extents: list[tuple[int, int, int, int, int]], lo: int, hi: int,
                     stream: Stream, up: Upcasters | None = None) -> list[RecordedEvent]:
        """The records of versions lo..hi held by `extents` (verified by the log implementation),
        upcast by `up` where an extent's bytes hold a type it upcasts."""
        out: list[RecordedEvent] = []
        for buf, offsets, start, end in self.extent_chunks(extents, lo, hi):
            recs = [_new_record(RecordedEvent, (buf, o, stream)) for o in offsets]
            if up is not None and up.region_needs(buf, start, end):
                recs = up.apply_list(recs)
            out.extend(recs)
        return out

    def extent_chunks(self, extents: list[tuple[int, int, int, int, int]], lo: int,
                      hi: int) -> list[tuple[Any, list[int], int, int]]:
        """(mapping, record offsets, region start, region end) of versions lo..hi held by `extents`,
        verified by the log implementation: the raw form of a stream read."""
        out = []
        walk = self.impl.walk
        segment = self.log.segment
        for v, seg, off, count, nbytes in extents:
            if v + count <= lo:
                continue
            buf = segment(seg).buffer(off + nbytes)
            upto = min(hi - v + 1, count)  # walk (and verify) no further than the last record wanted
            try:
                offsets = walk(buf, off, upto, off + nbytes)
            except LogFormatError as e:
                raise self.log_damage(segment(seg).path, e.offset, str(e)) from None
            out.append((buf, offsets[max(lo - v, 0) :], off, off + nbytes))
        return out

    def query(self, items: list[tuple[frozenset[bytes] | None, tuple[bytes, ...]]], gt: int, lte: int | None,
              limit: int | None) -> list[RecordedEvent]:
        """Events after `gt` (up to `lte`) matching any item, in position order: tag postings (for
        items with tags, checking type and the other tags from each candidate's header) or type postings
        (items with types only) from the index; an item with neither matches every event."""
        index = self.index
        with index.begin() as txn:
            cp = index.get_checkpoint(txn)
            if cp is None:
                return []
            stop = cp[2] - 1 if lte is None else min(lte, cp[2] - 1)
            if gt >= stop:
                return []
            found: dict[int, RecordedEvent] = {}
            for types, tags in items:
                if not tags and types is None:
                    return self.read_range(gt, stop, limit)
                if not tags:
                    tf = tuple(sorted(types or ()))
                    runs = EventStore._type_runs(self, txn, tf, gt, stop)
                    for buf, offsets, _s, _e in EventStore._run_chunks(self, runs, gt, stop, None, tf):
                        for o in offsets:
                            found.setdefault(HEADER.unpack_from(buf, o)[7], _new_record(RecordedEvent, (buf, o, None)))
                    continue
                first = tags[0] + b"\x00"
                cur = txn.cursor(index.db["tags"])
                if not cur.set_range(first + COMMIT_KEY.pack(gt + 1)):
                    continue
                for kraw, v in cur:
                    k = bytes(kraw)
                    if not k.startswith(first):
                        break
                    pos = COMMIT_KEY.unpack_from(k, len(first))[0]
                    if pos > stop:
                        break
                    if pos in found:
                        continue
                    seg, off = TAG_VAL.unpack(v)
                    rec = self._record(seg, off)
                    if (types is None or rec.type.encode("utf-8") in types) and set(tags) <= _tag_set(rec):
                        found[pos] = rec
        out = [found[p] for p in sorted(found)]
        if limit is not None:
            del out[limit:]
        return out

    def read_range(self, gt: int, stop: int, limit: int | None) -> list[RecordedEvent]:
        """Every event with gt < position <= stop (at most `limit`), from the log."""
        out = []
        for r in self.log_records(gt, stop):
            out.append(r)
            if limit is not None and len(out) >= limit:
                break
        return out

    def log_records(self, gt: int, stop: int) -> Iterator[RecordedEvent]:
        with self.index.begin() as txn:
            cur = txn.cursor(self.index.db["commits"])
            if not cur.set_range(COMMIT_KEY.pack(gt + 1)) or COMMIT_KEY.unpack(cur.key())[0] > gt + 1:
                if not cur.prev():
                    cur.first()
            next_pos = COMMIT_KEY.unpack(cur.key())[0]
            seg_first, off = EXTENT_VAL.unpack(cur.value())[:2]
        for batch in _scan_batches(self, None, seg_first, off, next_pos, gt, stop, None, None):
            yield from batch

    def _walk(self, seg: int, buf: Any, off: int, count: int, end: int) -> list[int]:
        try:
            return self.impl.walk(buf, off, count, end)  # type: ignore[no-any-return]
        except LogFormatError as e:
            raise self.log_damage(self.log.segment(seg).path, e.offset, str(e)) from None

    def _record(self, seg: int, off: int) -> RecordedEvent:
        """The verified event record at (segment, offset)."""
        s = self.log.segment(seg)
        buf = s.buffer(off + HEADER_SIZE)
        n = HEADER.unpack_from(buf, off)[1]
        if off + n > len(buf):
            buf = s.buffer(off + n)
        self._walk(seg, buf, off, 1, off + n)
        return _new_record(RecordedEvent, (buf, off, None))

    def record_at(self, position: int) -> RecordedEvent | None:
        """The event at a global position (indexed commits only), or None."""
        with self.index.begin() as txn:
            cur = txn.cursor(self.index.db["commits"])
            if not cur.set_range(COMMIT_KEY.pack(position)) or COMMIT_KEY.unpack(cur.key())[0] > position:
                if not cur.prev():
                    return None
            first = COMMIT_KEY.unpack(cur.key())[0]
            seg, off, n, nbytes = EXTENT_VAL.unpack(cur.value())
        if position >= first + n:
            return None
        buf = self.log.segment(seg).buffer(off + nbytes)
        offsets = self._walk(seg, buf, off, position - first + 1, off + nbytes)
        return _new_record(RecordedEvent, (buf, offsets[-1], None))


# -- the public handle --------------------------------------------------------------------------


_F = TypeVar("_F", bound=Callable[..., Any])


def _index_errors(fn: _F) -> _F:
    """Translate an LMDB error escaping a public method: `StoreClosed` when the store was closed under
    the call (a read racing `close()`), `IndexUnavailable` for a lack of resources, else
    `CorruptedError` (the index is damaged: a writer's next open rebuilds it)."""

    @functools.wraps(fn)
    def wrapper(self: EventStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except lmdb.Error as e:
            core = self._core
            ipath = os.path.join(self.path, "index")
            if core is None or core.closed or core.closing:
                raise StoreClosed(self.path) from e
            if is_resource_error(e):
                raise IndexUnavailable(ipath, f"the index cannot be read or written ({e})") from e
            raise CorruptedError(ipath, 0, f"the index failed ({e}); reopen the store for writing to rebuild "
                                 "it from the log") from e

    return wrapper  # type: ignore[return-value]


class EventStore:
    """An open store. Use as a context manager, or call `close()`.

    Thread-safe: any number of threads may append and read through one handle.
    """

    def __init__(self, core: _Core, readonly: bool,
                 binder: Callable[[Any], Lifecycle | None] | None = None) -> None:
        self._core: _Core | None = core
        self.path = core.path
        self.readonly = readonly
        self._binder = binder
        self._up: Upcasters | None = None

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._core is None else ("read-only" if self.readonly else "open")
        return f"<evstore.EventStore {self.path!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._core is None

    def close(self) -> None:
        """Close this handle; the store closes when the last handle in the process does. Idempotent."""
        core = self._core
        if core is None:
            return
        self._core = None
        if core.forked:  # the parent's store: the child must not close (or sync) what the parent uses
            return
        with _registry_lock:
            core.refs -= 1
            if core.refs == 0:
                _registry.pop(core.path, None)
                core.close()

    def _c(self) -> _Core:
        core = self._core
        if core is None:
            raise StoreClosed(self.path)
        if core.forked:
            raise ForkedStore(self.path, core.pid)
        return core

    def _r(self) -> _Core:
        """The core, for a read: every durable commit of this process is indexed first."""
        core = self._c()
        if core.indexed_seq < core.durable_seq:
            core.flush_index()
        return core

    def _w(self) -> _Core:
        core = self._c()
        if self.readonly:
            raise ReadOnlyStore(f"{self.path} was opened with readonly=True")
        return core

    @property
    def durability(self) -> str:
        return self._c().durability

    @property
    def log_implementation(self) -> str:
        """"c" or "python": which implementation of the log format this store uses."""
        return str(self._c().impl.IMPL)

    # -- writing ---------------------------------------------------------------------------

    @_index_errors
    def append(self, stream: Stream, events: Sequence[NewEvent], *, expected_version: Any = ANY,
               expected_state: str | Iterable[str] | None = None, condition: Condition | None = None) -> AppendResult:
        """Append events to one stream in one atomic commit.

        Raises `WrongExpectedVersion` when the stream's version is not `expected_version` (or its
        lifecycle state is not `expected_state`, a state name or a set of them), `InvalidTransition`
        when an event is not allowed by the stream's lifecycle, `StreamClosed`/`StreamDeleted` for closed
        and tombstoned streams, and `DuplicateEventId` when an event id is already used by another
        append; a retry of a committed append with the same event ids returns the original result.
        `condition` (an `evstore.Condition`) refuses the append with `ConditionFailed` when an event
        matching its query was committed after its position (checked atomically with the write).
        Nothing is written on any error. With durability="fsync" the events are on disk when this returns.
        """
        core = self._w()
        return core.commit([_Part(stream, events, expected_version, expected_state)], (), self._binder,
                           condition=_check_condition(condition))[0]

    @_index_errors
    def append_many(self, appends: Iterable[tuple[Stream, Sequence[NewEvent], Any]], *,
                    tracking: tuple[str, int] | None = None,
                    condition: Condition | None = None) -> list[AppendResult]:
        """Append to several streams in one atomic commit: every part is written, or none is.

        Each item is `(stream, events, expected_version)`; the results are in the same order.
        `tracking=(upstream, position)` records, in the same commit, how far this store has processed
        another log (exactly-once processing); it raises `TrackingConflict` unless the position is
        above every position recorded for that upstream. With tracking, `appends` may be empty.
        """
        core = self._w()
        parts = []
        for item in appends:
            if not isinstance(item, tuple) or len(item) != 3:
                raise TypeError("append_many takes (stream, events, expected_version) tuples")
            parts.append(_Part(*item))
        extras = []
        if tracking is not None:
            extras.append(_tracking_record(tracking))
        if not parts and not extras:
            raise ValueError("append_many needs at least one (stream, events, expected_version)")
        return core.commit(parts, extras, self._binder, condition=_check_condition(condition))

    @_index_errors
    def max_tracking(self, upstream: str) -> int | None:
        """The largest position recorded with `tracking=(upstream, ...)`, or None."""
        core = self._r()
        name = _tracking_name(upstream)
        with core.index.begin() as txn:
            return max_tracking(core.index, txn, name)

    @_index_errors
    def has_tracking(self, upstream: str, position: int) -> bool:
        """Whether a tracking record for exactly (`upstream`, `position`) was committed."""
        core = self._r()
        name = _tracking_name(upstream)
        _check_position(position, "position", allow_none=False)
        with core.index.begin() as txn:
            return txn.get(name + b"\x00" + COMMIT_KEY.pack(position), db=core.index.db["tracking"]) is not None

    @_index_errors
    def query(self, items: Sequence[QueryItem], *, gt: int = 0, lte: int | None = None,
              limit: int | None = None) -> list[RecordedEvent]:
        """Events with `gt < position <= lte` that match any of `items` (an event matches an item when
        its type is one of the item's types, or the item names none, and it carries every tag of the
        item), in position order, at most `limit`. Served by the tag and type indexes."""
        core = self._r()
        start = _check_position(gt, "gt", allow_none=False)
        lte = _check_position(lte, "lte")
        limit = _check_position(limit, "limit")
        out = core.query(_query_items(items), start or 0, lte, limit)
        if self._up is not None:
            out = self._up.apply_list(out)
        return out

    def consume(self, name: str, handler: Callable[..., None], *, types: Iterable[str] | None = None,
                timeout: float | None = None, limit: int | None = None, checkpoint_every: int = 100) -> Any:
        """Run `handler(event, ctx)` for each event after consumer `name`'s position, following new
        commits; what the handler appends with `ctx.append(...)` commits together with the consumer's
        new position (exactly once within the store). See `evstore.consumer.consume`."""
        from evstore.consumer import consume

        return consume(self, name, handler, types=types, timeout=timeout, limit=limit,
                       checkpoint_every=checkpoint_every)

    def _import_commit(self, parts: list[tuple[Stream, Sequence[NewEvent], Any]], recorded_at_ns: int,
                       extras: Sequence[Extra] = ()) -> list[AppendResult]:
        """One commit of imported records keeping their original commit time (for `evstore import`):
        the events of `parts`, then the non-event records `extras` (marks, snapshots, tracking, aux)
        as they were exported. No lifecycle applies: the `$state` marks come from the file."""
        core = self._w()
        if not parts and not extras:
            raise ValueError("an imported commit needs at least one record")
        return core.commit([_Part(*p) for p in parts], list(extras), None, recorded_at_ns)

    def subscribe(self, *, gt: int = 0, types: Iterable[str] | None = None,
                  timeout: float | None = None) -> Subscription:
        """Events after position `gt` (of the given types), then new ones as they commit, from this
        process or another; never skips or repeats one. See `Subscription`."""
        core = self._r()
        gt = _check_position(gt, "gt") or 0
        timeout = _check_timeout(timeout)
        return Subscription(self, core, gt, _type_filter(types), timeout)

    # -- reading ---------------------------------------------------------------------------

    @_index_errors
    def stream_version(self, stream: Stream) -> int:
        """The stream's last version (0 when it has no events)."""
        core = self._r()
        _check_stream(stream)
        with core.index.begin() as txn:
            raw = txn.get(stream_key(stream), db=core.index.db["heads"])
        return 0 if raw is None else Head.unpack(raw).version

    @_index_errors
    def head(self) -> int:
        """The position of the last committed event (0 when the store is empty)."""
        core = self._r()
        with core.index.begin() as txn:
            cp = core.index.get_checkpoint(txn)
        return 0 if cp is None else cp[2] - 1

    @_index_errors
    def read_stream(self, stream: Stream, *, gt: int | None = None, lte: int | None = None, desc: bool = False,
                    limit: int | None = None) -> list[RecordedEvent]:
        """The stream's events with `gt < version <= lte`, oldest first (newest first with desc=True),
        at most `limit` of them. An absent stream reads as empty."""
        core = self._r()
        found = self._stream_range(core, stream, gt, lte, desc, limit)
        if found is None:
            return []
        out = core.walk_extents(*found, stream, self._up)
        if desc:
            out.reverse()
        return out

    def _stream_range(self, core: _Core, stream: Stream, gt: int | None, lte: int | None, desc: bool,
                      limit: int | None) -> tuple[list[tuple[int, int, int, int, int]], int, int] | None:
        """(extents, lo, hi) of a stream read, or None when it reads nothing (arguments checked)."""
        _check_stream(stream)
        gt = _check_position(gt, "gt")
        lte = _check_position(lte, "lte")
        limit = _check_position(limit, "limit")
        key = stream_key(stream)
        index = core.index
        with index.begin() as txn:
            raw = txn.get(key, db=index.db["heads"])
            if raw is None:
                return None
            head = Head.unpack(raw)
            self._check_readable(stream, head)
            lo = max(gt or 0, head.hidden) + 1
            hi = head.version if lte is None else min(lte, head.version)
            if lo > hi or limit == 0:
                return None
            if limit is not None:  # versions are contiguous: fetch only the records asked for
                if desc:
                    lo = max(lo, hi - limit + 1)
                else:
                    hi = min(hi, lo + limit - 1)
            return core.extents(txn, head.num, lo, hi), lo, hi

    @_index_errors
    def _stream_chunks(self, stream: Stream, *, gt: int | None = None, lte: int | None = None,
                       desc: bool = False, limit: int | None = None) -> list[tuple[Any, list[int]]]:
        """`read_stream` in raw form, for adapters that build their own objects: (mapping, record
        offsets) pairs in read order. Records are as stored (upcasters are not applied)."""
        core = self._r()
        found = self._stream_range(core, stream, gt, lte, desc, limit)
        if found is None:
            return []
        chunks = [(buf, offs) for buf, offs, _s, _e in core.extent_chunks(*found)]
        if desc:
            chunks = [(buf, offs[::-1]) for buf, offs in reversed(chunks)]
        return chunks

    def _check_readable(self, stream: Stream, head: Head) -> None:
        if head.flags & HEAD_TOMBSTONE:
            raise StreamDeleted(stream)

    @_index_errors
    def read_all(self, *, gt: int = 0, lte: int | None = None, limit: int | None = None,
                 types: Iterable[str] | None = None) -> Iterator[RecordedEvent]:
        """Every event with `gt < position <= lte` in position order (of the given types, if any),
        as of the moment of the call; at most `limit`. Streams the log: memory stays flat."""
        core = self._r()
        start = _check_position(gt, "gt")
        lte = _check_position(lte, "lte")
        limit = _check_position(limit, "limit")
        return self._read_all(core, start or 0, lte, limit, _type_filter(types))

    @_index_errors
    def _read_all(self, core: _Core, gt: int, lte: int | None, limit: int | None,
                  tfilter: tuple[bytes, ...] | None) -> Iterator[RecordedEvent]:
        """Fix the snapshot (the head and where to start) now; the returned iterator scans lazily."""
        plan = self._all_plan(core, gt, lte, tfilter)
        if plan is None:
            return iter(())
        if plan[0] == "runs":
            return chain.from_iterable(self._run_batches(core, plan[1], gt, plan[2], limit, tfilter or ()))
        _kind, seg_first, off, next_pos, stop = plan
        return chain.from_iterable(self._scan_batches(core, seg_first, off, next_pos, gt, stop, limit, tfilter))

    def _all_chunks(self, *, gt: int = 0, lte: int | None = None, limit: int | None = None,
                    types: Iterable[str] | None = None) -> Iterator[tuple[Any, list[int]]]:
        """`read_all` in raw form, for adapters that build their own objects: (mapping, record offsets)
        pairs in position order. Records are as stored (upcasters are not applied)."""
        core = self._r()
        tfilter = _type_filter(types)
        plan = self._all_plan(core, gt, lte, tfilter)
        if plan is None:
            return
        if plan[0] == "runs":
            chunks = self._run_chunks(core, plan[1], gt, plan[2], limit, tfilter)  # type: ignore[arg-type]
        else:
            _kind, seg_first, off, next_pos, stop = plan
            chunks = _scan_chunks(core, seg_first, off, next_pos, gt, stop, limit, tfilter)
        for buf, offs, _s, _e in chunks:
            yield buf, offs

    @_index_errors
    def _all_plan(self, core: _Core, gt: int, lte: int | None, tfilter: tuple[bytes, ...] | None) -> Any:
        """How a read of the log after `gt` goes, fixed now: None (nothing to read), ("runs", commits holding the types,
        stop) or ("scan", segment, offset, first position there, stop)."""
        if tfilter == ():
            return None
        with core.index.begin() as txn:
            cp = core.index.get_checkpoint(txn)
            if cp is None:
                return None
            stop = cp[2] - 1 if lte is None else min(lte, cp[2] - 1)
            if gt >= stop:
                return None
            if tfilter is not None:
                return "runs", self._type_runs(core, txn, tfilter, gt, stop), stop
            cur = txn.cursor(core.index.db["commits"])
            if not cur.set_range(COMMIT_KEY.pack(gt + 1)) or COMMIT_KEY.unpack(cur.key())[0] > gt + 1:
                if not cur.prev():
                    cur.first()
            next_pos = COMMIT_KEY.unpack(cur.key())[0]
            seg_first, off = EXTENT_VAL.unpack(cur.value())[:2]
        return "scan", seg_first, off, next_pos, stop

    @staticmethod
    def _type_runs(core: _Core, txn: Any, tfilter: tuple[bytes, ...], gt: int,
                   stop: int) -> list[tuple[int, int, int, int, int]]:
        """(first position, segment, offset, events, bytes) of the commits holding events of the given
        types with positions in gt+1..stop, in position order (from the type postings)."""
        commits: dict[int, tuple[int, int, int, int, int]] = {}
        db = core.index.db["types"]
        for tb in tfilter:
            raw = txn.get(tb, db=core.index.db["typenames"])
            if raw is None:
                continue
            tid = U32.unpack(raw)[0]
            cur = txn.cursor(db)
            if not cur.set_range(TYPE_KEY.pack(tid, gt + 1)):
                cur.last()
            t, p = TYPE_KEY.unpack(cur.key())
            if t != tid or p > gt + 1:  # the commit before may still hold positions above gt
                if cur.prev():
                    t, p = TYPE_KEY.unpack(cur.key())
                    if t != tid or p + EXTENT_VAL.unpack(cur.value())[2] <= gt + 1:
                        cur.next()
                else:
                    cur.first()
            for k, v in cur:
                t, p = TYPE_KEY.unpack(k)
                if t != tid or p > stop:
                    break
                if p not in commits:
                    commits[p] = (p, *EXTENT_VAL.unpack(v))
        return [commits[p] for p in sorted(commits)]

    def _run_batches(self, core: _Core, runs: list[tuple[int, int, int, int, int]], gt: int, stop: int,
                     limit: int | None, tfilter: tuple[bytes, ...]) -> Iterator[list[RecordedEvent]]:
        """Lists of the records of the given types in each listed commit, within gt < position <= stop."""
        up = self._up
        for buf, offsets, start, end in self._run_chunks(core, runs, gt, stop, limit, tfilter):
            batch = [_new_record(RecordedEvent, (buf, o, None)) for o in offsets]
            if up is not None and up.region_needs(buf, start, end):
                batch = up.apply_list(batch)
            yield batch

    @staticmethod
    def _run_chunks(core: _Core, runs: list[tuple[int, int, int, int, int]], gt: int, stop: int,
                    limit: int | None, tfilter: tuple[bytes, ...]) -> Iterator[tuple[Any, list[int], int, int]]:
        """(mapping, offsets, region start, region end) of the events of the given types in each listed
        commit (scanned and verified in C with the type filter), within gt < position <= stop."""
        left = -1 if limit is None else limit
        scan = core.impl.scan
        unpack = HEADER.unpack_from
        for p, seg_first, off, count, nbytes in runs:
            seg = core.log.segment(seg_first)
            buf = seg.buffer(off + nbytes)
            r = scan(buf, off, off + nbytes, next_position=p, kinds=EVENT_KINDS, types=tfilter,
                     max_out=count + 1)
            if r.code != 0:
                raise core.log_damage(seg.path, r.err_off, "bad record")
            offsets = r.offsets
            if p <= gt or p + count - 1 > stop:  # a commit across a bound: look at the positions
                offsets = [o for o in offsets if gt < unpack(buf, o)[7] <= stop]
            if left >= 0:
                del offsets[left:]
                left -= len(offsets)
            if offsets:
                yield buf, offsets, off, off + nbytes
            if left == 0:
                return

    def _scan_batches(self, core: _Core, seg_first: int, off: int, next_pos: int, gt: int, stop: int,
                      limit: int | None, tfilter: tuple[bytes, ...] | None) -> Iterator[list[RecordedEvent]]:
        return _scan_batches(core, self._up, seg_first, off, next_pos, gt, stop, limit, tfilter)

    @_index_errors
    def event_at(self, position: int) -> RecordedEvent | None:
        """The event at a global position, or None."""
        core = self._r()
        _check_position(position, "position", allow_none=False)
        r = core.record_at(position) if position > 0 else None
        if r is not None and self._up is not None:
            r = self._up.upcast(r)
        return r

    def streams(self, *, prefix: str | None = "") -> Iterator[tuple[Stream, int]]:
        """(stream, version) of every stream, string ids in UTF-8 order (those starting with `prefix`),
        then UUID ids when no prefix is given (None or "")."""
        if prefix is None:
            prefix = ""
        elif not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str or None, not {type(prefix).__name__}")
        return iter(self._streams(prefix))

    @_index_errors
    def _streams(self, prefix: str) -> list[tuple[Stream, int]]:
        core = self._r()
        p = b"s" + prefix.encode("utf-8")
        with core.index.begin() as txn:
            cur = txn.cursor(core.index.db["heads"])
            start = p if prefix else b""
            rows: list[tuple[Stream, int]] = []
            if not cur.set_range(start):
                return rows
            for kraw, v in cur:
                k = bytes(kraw)
                if prefix and not k.startswith(p):
                    break
                rows.append((decode_stream(k[1:], FLAG_UUID_STREAM if k[:1] == b"u" else 0),
                             Head.unpack(v).version))
        return rows

    # -- stream states: lifecycles and marks ------------------------------------------------

    def _head(self, core: _Core, stream: Stream) -> Head | None:
        _check_stream(stream)
        with core.index.begin() as txn:
            raw = txn.get(stream_key(stream), db=core.index.db["heads"])
        return None if raw is None else Head.unpack(raw)

    def lifecycle_of(self, stream: Stream) -> Lifecycle | None:
        """The lifecycle this handle binds to `stream` (from `open(lifecycles=...)`), or None."""
        _check_stream(stream)
        return None if self._binder is None else self._binder(stream)

    @_index_errors
    def stream_state(self, stream: Stream) -> str | None:
        """The stream's lifecycle state: the recorded one, else (for a stream bound to a lifecycle) the
        state its visible history leads to (the initial state for a new stream), else None."""
        core = self._r()
        h = self._head(core, stream)
        if h is not None and h.state is not None:
            return h.state
        lc = self.lifecycle_of(stream)
        if lc is None:
            return None
        if h is None or h.version <= h.hidden:
            return lc.initial
        return lc.replay(e.type for e in self.read_stream(stream))

    @_index_errors
    def stream_info(self, stream: Stream) -> StreamInfo | None:
        """What the index holds on the stream's head (version, marks, recorded state), or None."""
        core = self._r()
        h = self._head(core, stream)
        if h is None:
            return None
        tombstoned = bool(h.flags & HEAD_TOMBSTONE)
        deleted = tombstoned or (h.hidden > 0 and h.version <= h.hidden)  # nothing visible since the delete
        return StreamInfo(stream, h.version, bool(h.flags & HEAD_CLOSED), deleted, tombstoned, h.state)

    @_index_errors
    def close_stream(self, stream: Stream) -> None:
        """Close the stream: it stays readable, and further appends raise `StreamClosed`.

        Written to the log as a `$closed` mark in a commit of its own (closing a closed stream writes
        nothing). A stream with no events can be closed too. Raises `StreamDeleted` when tombstoned."""
        core = self._w()
        sb, sflag = _check_stream(stream)

        def make(h: Head | None) -> list[Extra]:
            if h is not None and h.flags & HEAD_TOMBSTONE:
                raise StreamDeleted(stream)
            if h is not None and h.flags & HEAD_CLOSED:
                return []
            return [Extra(KIND_MARK, sb, sflag, _MARK_CLOSED, 0 if h is None else h.version, b"", 0)]
        core.write_marks(stream_key(stream), make)

    @_index_errors
    def delete_stream(self, stream: Stream, *, tombstone: bool = False) -> None:
        """Delete the stream, softly (default) or for ever (`tombstone=True`).

        Soft: `read_stream` returns nothing up to the current version, `stream_version` still returns
        it, and an append continues after it (its lifecycle starts again at the initial state).
        `read_all` still yields the old events. Tombstone: `read_stream` and `append` raise
        `StreamDeleted` and the name can never be used again. Either is a mark in a commit of its own,
        so it survives crashes and index rebuilds. Soft-deleting a stream with nothing visible writes
        nothing; any operation on a tombstoned stream raises `StreamDeleted`."""
        core = self._w()
        sb, sflag = _check_stream(stream)
        if type(tombstone) is not bool:
            raise TypeError(f"tombstone must be True or False, not {tombstone!r}")

        def make(h: Head | None) -> list[Extra]:
            if h is not None and h.flags & HEAD_TOMBSTONE:
                raise StreamDeleted(stream)
            version = 0 if h is None else h.version
            if tombstone:
                return [Extra(KIND_MARK, sb, sflag, _MARK_TOMBSTONE, version, b"", 0)]
            if h is None or (version <= h.hidden and h.state is None):
                return []
            return [Extra(KIND_MARK, sb, sflag, _MARK_DELETED, version, b"", 0)]
        core.write_marks(stream_key(stream), make)

    @_index_errors
    def check_lifecycles(self) -> list[LifecycleViolation]:
        """Replay the event types of every stream bound to a lifecycle and list each event it refuses.

        For lifecycles introduced after data exists. A refused event is skipped (the state stays) so
        that later violations are found too. Only the visible history is checked (after a soft delete)."""
        self._r()
        if self._binder is None:
            return []
        out: list[LifecycleViolation] = []
        for stream, _version in self.streams():
            lc = self._binder(stream)
            if lc is None:
                continue
            try:
                events = self.read_stream(stream)
            except StreamDeleted:
                continue
            state = lc.initial
            table = lc.transitions
            for e in events:
                t = e.type
                nxt = table.get((state, t))
                if nxt is None:
                    out.append(LifecycleViolation(stream, lc.name, e.version, e.position, state, t, lc.allowed(state)))
                else:
                    state = nxt
        return out

    # -- snapshots ---------------------------------------------------------------------------

    @_index_errors
    def save_snapshot(self, stream: Stream, version: int, data: bytes, *, type: str, schema: int = 1) -> None:
        """Save `data` as the stream's state at `version` (1 .. the stream's version).

        Stored as a SNAPSHOT record in a commit of its own and indexed, so it survives a rebuild of the
        index. `type` and `schema` describe the data; `load` uses only snapshots of its schema."""
        core = self._w()
        sb, sflag = _check_stream(stream)
        tb = _check_name(type, "a snapshot type")
        raw = _check_bytes(data, "snapshot data")
        _check_position(version, "version", allow_none=False)
        if isinstance(schema, bool) or not isinstance(schema, int):
            raise TypeError(f"a snapshot schema must be an int, not {type(schema).__name__}")
        if not 0 <= schema < (1 << 32):
            raise ValueError(f"a snapshot schema must be an int in 0..{(1 << 32) - 1}, not {schema!r}")
        if len(raw) > MAX_EVENT_BYTES:
            raise ValueError(f"a snapshot of {len(raw):,} bytes exceeds the limit of {MAX_EVENT_BYTES:,} (16 MiB)")

        def make(h: Head | None) -> list[Extra]:
            if h is not None and h.flags & HEAD_TOMBSTONE:
                raise StreamDeleted(stream)
            current = 0 if h is None else h.version
            low = 1 if h is None else h.hidden + 1  # at or below a soft delete it could never be loaded
            if not low <= version <= current:
                raise ValueError(f"a snapshot of {stream!r} must be at a visible version in {low}..{current}, "
                                 f"not {version}")
            return [Extra(KIND_SNAPSHOT, sb, sflag, tb, version, raw, schema)]
        core.write_marks(stream_key(stream), make)

    def _snapshots(self, core: _Core, stream: Stream, h: Head, lte: int | None) -> Iterator[Snapshot]:
        """The stream's indexed snapshots at or below `lte` and above its delete watermark, newest first."""
        hi = h.version if lte is None else min(lte, h.version)
        if hi <= h.hidden:
            return
        with core.index.begin() as txn:
            cur = txn.cursor(core.index.db["snapshots"])
            locs = []
            if cur.set_range(EXTENT_KEY.pack(h.num, hi + 1)):
                ok = cur.prev()
            else:
                ok = cur.last()
            while ok:
                num, v = EXTENT_KEY.unpack(cur.key())
                if num != h.num or v <= h.hidden:
                    break
                locs.append(SNAPSHOT_VAL.unpack(cur.value()))
                ok = cur.prev()
        for seg_first, off in locs:
            seg = core.log.segment(seg_first)
            buf = seg.buffer(off + HEADER_SIZE)
            ln = HEADER.unpack_from(buf, off)[1]
            buf = seg.buffer(off + ln)
            try:
                core.impl.walk(buf, off, 1, off + ln)
            except LogFormatError as e:
                raise core.log_damage(seg.path, e.offset, str(e)) from None
            yield decode_snapshot(buf, off, stream)

    @_index_errors
    def load_snapshot(self, stream: Stream, *, lte: int | None = None) -> Snapshot | None:
        """The latest snapshot of the stream at or below version `lte`, or None.

        Snapshots at or below a soft delete are not returned; a tombstoned stream raises `StreamDeleted`."""
        core = self._r()
        lte = _check_position(lte, "lte")
        h = self._head(core, stream)
        if h is None:
            return None
        self._check_readable(stream, h)
        return next(self._snapshots(core, stream, h, lte), None)

    @_index_errors
    def prune_snapshots(self, stream: Stream | None = None, *, keep: int = 1) -> int:
        """Drop the index entries of all but the newest `keep` snapshots of `stream` (of every stream
        when None); returns how many were dropped. The log keeps their bytes: a rebuild of the index
        from the log brings them back."""
        core = self._w()
        core.refresh()
        if type(keep) is not int or keep < 0:
            raise ValueError("keep must be an int >= 0")
        num = None
        if stream is not None:
            h = self._head(core, stream)
            if h is None:
                return 0
            num = h.num
        batch = IndexBatch()
        with core.index.begin() as txn:
            cur = txn.cursor(core.index.db["snapshots"])
            ok = cur.set_range(EXTENT_KEY.pack(num, 0)) if num is not None else cur.first()
            per: dict[int, list[bytes]] = {}
            while ok:
                k = bytes(cur.key())
                n = EXTENT_KEY.unpack(k)[0]
                if num is not None and n != num:
                    break
                per.setdefault(n, []).append(k)
                ok = cur.next()
        for keys in per.values():
            for k in keys[: max(len(keys) - keep, 0)]:
                batch.extra.append((b"snapshots", k, None))
        if batch.extra:
            with core.wlock:
                core.index.write(batch)
        return len(batch.extra)

    @_index_errors
    def load(self, stream: Stream, *, apply: Callable[[Any, RecordedEvent], Any], initial: Any,
             decode_snapshot: Callable[[Snapshot], Any] | None = None, schema: int = 1,
             snapshot_every: int | None = None, encode_snapshot: Callable[[Any], bytes] | None = None,
             snapshot_type: str = "snapshot") -> Loaded[Any]:
        """Fold the stream into a state: `state = apply(state, event)` over its (upcast) events.

        Starts from `decode_snapshot(snapshot)` of the latest snapshot of `schema` (older schemas are
        ignored; no decoder: no snapshot is used) or from `initial`. With `snapshot_every=N` and
        `encode_snapshot`, saves a new snapshot (`encode_snapshot(state)`, of `snapshot_type` and
        `schema`) when more than N events were replayed (not on a read-only handle). The returned
        `version` is what the next append expects."""
        core = self._r()
        if snapshot_every is not None and (type(snapshot_every) is not int or snapshot_every < 0
                                           or encode_snapshot is None):
            raise ValueError("snapshot_every needs an int >= 0 and an encode_snapshot function")
        h = self._head(core, stream)
        if h is None:
            return Loaded(initial, 0)
        self._check_readable(stream, h)
        state = initial
        start = h.hidden
        if decode_snapshot is not None:
            for snap in self._snapshots(core, stream, h, None):
                if snap.schema == schema:
                    state = decode_snapshot(snap)
                    start = snap.version
                    break
        n = 0
        for e in self.read_stream(stream, gt=start, lte=h.version):
            state = apply(state, e)
            n += 1
        if (snapshot_every is not None and n > snapshot_every and not self.readonly
                and encode_snapshot is not None and h.version > 0):
            try:
                self.save_snapshot(stream, h.version, encode_snapshot(state), type=snapshot_type, schema=schema)
            except (StreamDeleted, StreamClosed):  # pragma: no cover - raced with a delete
                pass
        return Loaded(state, h.version)

    # -- upcasting ---------------------------------------------------------------------------

    def register_upcaster(self, event_type: str, from_schema: int,
                          fn: Callable[[RecordedEvent], tuple[str, bytes, bytes]]) -> None:
        """Read events of `event_type` with schema `from_schema` as `fn(event) -> (type, data, metadata)`
        of schema from_schema + 1, on every read path of this handle (read_stream, read_all, event_at,
        load, subscriptions). Steps chain; the stored bytes never change.

        A type's chain must be contiguous: a new step goes right above the highest (or below the lowest)
        registered from_schema; anything else raises `InvalidUpcaster`. `types=` filters of read_all and
        subscribe match the stored type."""
        self._c()
        up = self._up or Upcasters()
        up.register(event_type, from_schema, fn)
        self._up = up

    def sync(self) -> None:
        """Make everything written so far durable, the index included (useful with durability="os").

        Raises `StoreFailed` when the log cannot be synced (the store then refuses writes until it is
        reopened) and `IndexUnavailable` when the index cannot be written (the log is durable)."""
        self._w().sync()


def _scan_batches(core: _Core, up: Upcasters | None, seg_first: int, off: int, next_pos: int, gt: int, stop: int,
                  limit: int | None, tfilter: tuple[bytes, ...] | None) -> Iterator[list[RecordedEvent]]:
    """Lists of records from scanning the log (C: verify and filter whole commits) from `off`."""
    for buf, offs, start, end in _scan_chunks(core, seg_first, off, next_pos, gt, stop, limit, tfilter):
        batch = [_new_record(RecordedEvent, (buf, o, None)) for o in offs]
        if up is not None and up.region_needs(buf, start, end):
            batch = up.apply_list(batch)
        yield batch


def _scan_chunks(core: _Core, seg_first: int, off: int, next_pos: int, gt: int, stop: int,
                 limit: int | None, tfilter: tuple[bytes, ...] | None) -> Iterator[tuple[Any, list[int], int, int]]:
    """(mapping, offsets, region start, region end) of each scanned batch of event records."""
    log = core.log
    scan = core.impl.scan
    unpack = HEADER.unpack_from
    left = limit if limit is not None else -1
    seg = log.segment(seg_first)
    max_out = 8192 if limit is None else min(8192, limit + 16)  # a page reads little more than it returns
    while True:
        buf = seg.full_buffer()
        n = len(buf)
        while off < n and next_pos <= stop:
            r = scan(buf, off, n, next_position=next_pos, kinds=EVENT_KINDS, types=tfilter, max_out=max_out,
                     stop_position=stop)
            offs = r.offsets
            if r.code == EFULL:
                max_out *= 4
                continue
            if offs:
                if unpack(buf, offs[0])[7] <= gt:
                    offs = [o for o in offs if unpack(buf, o)[7] > gt]
                if offs and unpack(buf, offs[-1])[7] > stop:
                    offs = [o for o in offs if unpack(buf, o)[7] <= stop]
                if left >= 0:
                    del offs[left:]
                    left -= len(offs)
                yield buf, offs, off, r.end
                if left == 0:
                    return
                _release(buf, off, r.end)
            off, next_pos = r.end, r.next_position
            if r.code != 0:
                if next_pos > stop:
                    return
                raise core.log_damage(seg.path, r.err_off, "bad record")
            if r.commits == 0:
                break
        if next_pos > stop:
            return
        i = log.segments.index(seg)
        if i + 1 >= len(log.segments):
            log.load_segments()
            if i + 1 >= len(log.segments):
                raise core.log_damage(seg.path, off, f"the log ends before position {stop}")
        seg = log.segments[i + 1]
        off = 32



_PAGE = mmap.PAGESIZE


def _release(buf: Any, start: int, end: int) -> None:
    """Drop the mapped pages of a region a replay has moved past, so that replaying a large log keeps a
    flat resident size. Safe for records still held: their pages fault back in from the page cache."""
    a = (start + _PAGE - 1) // _PAGE * _PAGE
    b = end // _PAGE * _PAGE
    if b > a and isinstance(buf, mmap.mmap):
        try:
            buf.madvise(mmap.MADV_DONTNEED, a, b - a)
        except (OSError, ValueError):  # pragma: no cover - advice only
            pass


_Cond = tuple[list[tuple[frozenset[bytes] | None, tuple[bytes, ...]]], int, Any]


def _check_condition(condition: Any) -> _Cond | None:
    if condition is None:
        return None
    if not isinstance(condition, Condition):
        raise TypeError("condition must be an evstore.Condition(items, after)")
    after = _check_position(condition.after, "condition.after", allow_none=False)
    return (_query_items(condition.items), after or 0, condition)


def _check_timeout(timeout: Any) -> float | None:
    """A timeout in seconds: None (wait for ever) or a real number >= 0 (inf is for ever)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, not {type(timeout).__name__}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return None if timeout == float("inf") else float(timeout)


def _tag_set(rec: RecordedEvent) -> set[bytes]:
    return {t.encode("utf-8") for t in rec.tags}


def _type_filter(types: Iterable[str] | None) -> tuple[bytes, ...] | None:
    if types is None:
        return None
    if isinstance(types, str):
        raise TypeError("types must be a collection of type names, not a str")
    return tuple(sorted({_check_name(t, "an event type") for t in types}))


def _tracking_name(upstream: Any) -> bytes:
    raw = _check_name(upstream, "a tracking upstream name")
    if b"\x00" in raw:
        raise ValueError("a tracking upstream name must not contain NUL")
    return raw


def _tracking_record(tracking: Any) -> Extra:
    if not isinstance(tracking, tuple) or len(tracking) != 2:
        raise TypeError("tracking must be an (upstream name, position) tuple")
    name, position = tracking
    _check_position(position, "tracking position", allow_none=False)
    if position < 1:
        raise ValueError("a tracking position must be >= 1")
    return Extra(KIND_TRACKING, _tracking_name(name), 0, b"", position, b"", 0)


def open(path: str | os.PathLike[str], *, create: bool = True, readonly: bool = False,
         durability: str | None = None, segment_size: int = DEFAULT_SEGMENT_SIZE,
         map_size: int = DEFAULT_MAP_SIZE, log_impl: str | None = None,
         lifecycles: Binding | None = None) -> EventStore:
    """Open (and by default create) the store in directory `path`.

    One process may write a store at a time (`StoreLocked` otherwise); any number may open it with
    readonly=True. Opening the same path twice in one process shares one open store. On open, a torn
    tail left by a crash is cut off and the index catches up with the log.

    `durability`: "fsync" (the default: an append returns once its bytes are on disk) or "os" (handed
    to the OS: survives a killed process, not a power cut; the last commits may be lost, never a part
    of one). None takes the default, or the options of the store if it is already open in this
    process; other options than those it was opened with raise `EvstoreError`. `log_impl`: "c" or "python" (default: C unless
    EVSTORE_PURE=1). `lifecycles`: a {category: Lifecycle} mapping (a stream's category is its id up
    to the first "-") or a function stream -> Lifecycle | None; appends through this handle are
    checked against them (see `Lifecycle`).
    """
    binder = make_binder(lifecycles)
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError("path must be a str or os.PathLike[str]")
    if "\x00" in p:
        raise ValueError("path must not contain NUL bytes")
    if durability is not None and durability not in DURABILITIES:
        raise ValueError(f"durability must be one of {DURABILITIES}, not {durability!r}")
    for name, v, lo in (("segment_size", segment_size, 4096), ("map_size", map_size, 1 << 20)):
        if type(v) is not int:
            raise TypeError(f"{name} must be an int")
        if not lo <= v <= (1 << 40):
            raise ValueError(f"{name} must be between {lo} and 2**40 bytes")
    real = os.path.realpath(p)
    with _registry_lock:
        core = _registry.get(real)
        if core is not None:
            if core.readonly and not readonly:
                raise EvstoreError(f"{real} is already open read-only in this process; close it first")
            if not readonly and durability is not None and durability != core.durability:
                raise EvstoreError(f"{real} is already open in this process with durability={core.durability!r}; "
                                   f"open it with the same options, or close it first")
            if log_impl is not None and _impl.load(log_impl).IMPL != core.impl.IMPL:
                raise EvstoreError(f"{real} is already open in this process with log_impl={core.impl.IMPL!r}; "
                                   f"open it with the same options, or close it first")
        else:
            core = _Core(real, create=create, readonly=readonly, durability=durability or "fsync",
                         segment_size=segment_size, map_size=map_size, log_impl=log_impl)
            _registry[real] = core
        core.refs += 1
        return EventStore(core, readonly, binder)
