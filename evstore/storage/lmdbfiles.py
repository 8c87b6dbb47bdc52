"""LMDB's two files as the index meets them, before and around LMDB itself: the data file's meta
pages checked before it is mapped (`check_data_file`), the lock file's blocks allocated before it is
mapped for writing (`allocate_lock_file`), and which LMDB and OS errors are a lack of resources rather
than damage (`is_resource_error`)."""

from __future__ import annotations

import errno
import os
import struct

import lmdb

from evstore.errors import CorruptedError, IndexUnavailable

_MDB_MAGIC = 0xBEEFC0DE
_MDB_VERSION = 1
# MDB_meta inside a meta page: after the 16-byte page header, magic (u32), version (u32), address
# (8), map size (8), two MDB_db of 48 bytes (the first one's md_pad holds the page size), last page
# (8), transaction id (8).
_META = struct.Struct("<II8xQI44x48xQQ")
_META_OFF = 16
INDEX_FILES = ("data.mdb", "lock.mdb")  # the only files of index/ the store creates or removes


def check_data_file(path: str) -> None:
    """Raise `CorruptedError` unless `path` (a data.mdb) has a valid meta page and is at least as
    long as the newest valid meta says: the check that keeps LMDB from mapping missing pages."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise CorruptedError(path, 0, f"the index cannot be read ({e.strerror})") from e
    best: tuple[int, int, int] | None = None  # txnid, last page, page size
    psize = 0
    for page in range(2):
        if page == 1:
            if psize == 0:
                break
            if len(head) < psize + _META_OFF + _META.size:
                try:
                    with open(path, "rb") as f:
                        f.seek(psize)
                        head = head[:psize] + f.read(_META_OFF + _META.size)
                except OSError as e:  # pragma: no cover - read just worked
                    raise CorruptedError(path, 0, f"the index cannot be read ({e.strerror})") from e
        off = page * psize + _META_OFF
        if len(head) < off + _META.size:
            continue
        magic, version, _mapsize, ps, last_pg, txnid = _META.unpack_from(head, off)
        if magic != _MDB_MAGIC or version != _MDB_VERSION or ps < 512 or ps & (ps - 1) or ps > 65536:
            continue
        if page == 0:
            psize = ps
        elif ps != psize:
            continue
        if best is None or txnid > best[0]:
            best = (txnid, last_pg, ps)
    if best is None:
        raise CorruptedError(path, 0, "the index has no valid meta page")
    txnid, last_pg, ps = best
    need = (last_pg + 1) * ps
    if size < need:
        raise CorruptedError(path, size, f"the index file is {size} bytes but its meta page (transaction "
                             f"{txnid}) names pages up to byte {need}")


_RESOURCE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EACCES,
                    errno.EPERM, errno.EROFS, errno.EAGAIN)
_RESOURCE_TEXTS = tuple(os.strerror(n) for n in _RESOURCE_ERRNOS)


def is_resource_error(e: BaseException) -> bool:
    """Whether an LMDB or OS error is a lack of resources (space, memory, descriptors, permission),
    not damage: the index is then unavailable, never rebuilt over."""
    if isinstance(e, OSError):
        return e.errno in _RESOURCE_ERRNOS
    if isinstance(e, (lmdb.MapFullError, lmdb.ReadersFullError, lmdb.TxnFullError, lmdb.MemoryError)):
        return True
    return isinstance(e, lmdb.Error) and any(t in str(e) for t in _RESOURCE_TEXTS)


_LOCK_FILE_BYTES = 40960  # LMDB's reader table for max_readers=512 (64 bytes a slot) and its header


def allocate_lock_file(path: str, readonly: bool) -> None:
    """Allocate lock.mdb's blocks before LMDB maps it for writing: a page of a sparse file touched
    through a shared mapping on a full disk kills the process with SIGBUS, where a failed allocation
    here is a clean `IndexUnavailable`."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        if readonly and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return  # a reader on a read-only file system: LMDB will say what it can do
        raise IndexUnavailable(path, f"cannot open the index lock file {path}: {e.strerror}", e.errno) from e
    try:
        size = os.fstat(fd).st_size
        os.posix_fallocate(fd, 0, max(size, _LOCK_FILE_BYTES))
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL) and not (readonly and e.errno == errno.EBADF):
            raise IndexUnavailable(path, f"cannot allocate the index lock file {path}: {e.strerror} "
                                   "(free disk space)", e.errno) from e
    finally:
        os.close(fd)
