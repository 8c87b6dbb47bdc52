"""The store directory: what is a store, creating one durably, the writer's LOCK, and evstore.meta.

```
mystore/
  evstore.meta      format version, creation options (magic-tagged, checksummed)
  LOCK              flock held by the one writing process (its pid inside, for messages)
  log/              segment files (evstore.storage.segments)
  index/            the LMDB environment (evstore.storage.index): data.mdb, lock.mdb
```
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from types import ModuleType
from typing import Any

from evstore.format.layout import FORMAT_VERSION, READABLE_FORMATS
from evstore.storage.durable import make_dirs, remove, replace_file
from evstore.errors import CorruptedError, EvstoreError, StorageError, StoreLocked, UnsupportedFormat
from evstore.storage.index import U32
from evstore.storage.lmdbfiles import INDEX_FILES

META_MAGIC = b"EVSTMETA"
META_NAME = "evstore.meta"


def only_index_files(ipath: str) -> bool:
    """Whether `ipath` is absent or holds nothing but the index's own files."""
    try:
        return set(os.listdir(ipath)) <= set(INDEX_FILES)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


def prepare(path: str, *, create: bool, readonly: bool) -> None:
    """Check that `path` is a store (or, for a writer with `create`, make one, durably).

    Raises `EvstoreError` for a path that is not a store (a file, a directory of other things, an
    empty directory without `create`), `CorruptedError` for a store whose log/ is gone, and
    `StorageError` when the directories cannot be created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise EvstoreError(f"{path} is a file, not an evstore directory")
    if not os.path.exists(path) and (not create or readonly):
        raise EvstoreError(f"no store at {path}")
    log = os.path.join(path, "log")
    has_meta = os.path.exists(os.path.join(path, META_NAME))
    has_log = os.path.isdir(log)
    if has_meta and not has_log:
        if os.path.lexists(log):
            raise CorruptedError(log, 0, "log/ is not a directory")
        raise CorruptedError(log, 0, "the store has its evstore.meta but no log/ directory: every segment is missing")
    if not has_meta and not has_log and os.path.isdir(path):
        if not create or readonly:
            raise EvstoreError(f"no store at {path} (the directory holds no evstore.meta and no log/)")
        entries = set(os.listdir(path))
        if entries - {"LOCK", "index", META_NAME + ".tmp"} or not only_index_files(os.path.join(path, "index")):
            raise EvstoreError(f"{path} is a non-empty directory that is not an evstore store")
    if not readonly:
        if os.path.exists(os.path.join(path, "recover.journal")):
            raise EvstoreError(f"{path}: an `evstore recover` was interrupted; run it again before opening "
                               "the store for writing")
        try:
            make_dirs(path)
            make_dirs(log)
        except OSError as e:
            raise StorageError(path, e.errno, f"cannot create the store in {path}: {e.strerror}") from e
    elif not has_log:
        raise EvstoreError(f"no store at {path} (no log/ directory)")


WRITER_NAME = "evstore.writer"  # the durability of the last writer, replaced atomically


def last_writer_durability(path: str) -> str | None:
    """The durability the last writer of the store at `path` recorded ("fsync", "os"), or None."""
    try:
        with open(os.path.join(path, WRITER_NAME), "rb") as f:
            word = f.read(16).strip()
    except OSError:
        return None
    return word.decode("ascii", "replace") or None


def record_writer(path: str, durability: str) -> None:
    """Record the writer's durability in evstore.writer, atomically and durably: a crash during the
    write leaves the old word or the new one, never none (recovery reads it; see docs/log_format.md)."""
    try:
        replace_file(os.path.join(path, WRITER_NAME), durability.encode("ascii") + b"\n")
    except OSError as e:
        raise StorageError(path, e.errno, f"cannot write {WRITER_NAME} in {path}: {e.strerror}") from e


def take_lock(path: str, durability: str) -> tuple[int, str | None]:
    """Take the writer's LOCK of the store at `path` (its pid written inside, for messages) and
    record this writer's durability; returns the descriptor (closing it releases the lock) and the
    previous writer's durability (recovery needs it: an "os" writer leaves an unsynced tail, and
    "os" stays recorded until recovery has cut it). Raises `StoreLocked` with the holder's pid when
    another process writes the store."""
    lock_path = os.path.join(path, "LOCK")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StorageError(lock_path, e.errno, f"cannot open {lock_path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            pid: int | None = int(os.pread(fd, 32, 0).split()[0])
        except (ValueError, IndexError, OSError):
            pid = None
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise StoreLocked(path, pid) from None
        raise StorageError(lock_path, e.errno, f"cannot lock {lock_path}: {e.strerror}") from e
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        previous = last_writer_durability(path)
        if previous != "os" and previous != durability:
            record_writer(path, durability)
    except BaseException:
        os.close(fd)
        raise
    return fd, previous


def load_meta(path: str, impl: ModuleType, segment_size: int, readonly: bool) -> dict[str, Any]:
    """The store's meta; a writer creates it (durably) when it is missing."""
    mpath = os.path.join(path, META_NAME)
    try:
        with open(mpath, "rb") as f:
            raw = f.read(65536)
    except FileNotFoundError:
        meta = {"format": FORMAT_VERSION, "segment_size": segment_size, "created_ns": time.time_ns(),
                "first_position": 1}
        if not readonly:
            write_meta(mpath, impl, meta)
        return meta
    except OSError as e:
        raise StorageError(mpath, e.errno, f"cannot read {mpath}: {e.strerror}") from e
    if raw[:8] != META_MAGIC or len(raw) < 12:
        raise EvstoreError(f"{mpath} is not an evstore meta file")
    body = raw[12:]
    if impl.crc32c(body) != U32.unpack_from(raw, 8)[0]:
        raise CorruptedError(mpath, 8, "meta checksum mismatch (delete evstore.meta to rebuild it from the log)")
    try:
        meta = json.loads(body)
    except ValueError as e:
        raise CorruptedError(mpath, 12, "meta is not readable") from e
    if meta.get("format") not in READABLE_FORMATS:
        raise UnsupportedFormat(path, meta.get("format"), FORMAT_VERSION)
    if meta["format"] != FORMAT_VERSION and not readonly:
        # this writer's segments are of the current format: an older evstore must refuse the store
        meta["format"] = FORMAT_VERSION
        write_meta(mpath, impl, meta)
    return dict(meta)


def write_meta(mpath: str, impl: ModuleType, meta: dict[str, Any]) -> None:
    """Replace evstore.meta atomically and durably."""
    body = json.dumps(meta, sort_keys=True).encode()
    try:
        replace_file(mpath, META_MAGIC + U32.pack(impl.crc32c(body)) + body)
    except OSError as e:
        raise StorageError(mpath, e.errno, f"cannot write {mpath}: {e.strerror}") from e


def remove_index(ipath: str) -> None:
    """Remove the index's own files (nothing else that may be in the directory), durably."""
    try:
        for f in INDEX_FILES:
            remove(os.path.join(ipath, f))
    except OSError as e:
        raise StorageError(ipath, e.errno, f"cannot remove the damaged index in {ipath}: {e.strerror}") from e
