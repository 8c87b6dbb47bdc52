"""Durable names: create, replace, rename and remove files and directories so that a power cut
cannot undo them after the call returns.

A file's data is durable once it is fsynced; its *name* is durable only once the directory that
holds the entry is fsynced too (POSIX promises nothing else, and ext4, XFS and btrfs each lose
un-synced entries in some configuration). Every function here returns only when both are on disk.
The store, `recover`, `backup`, `import`, `reindex` and `compact-snapshots` create, rename and remove
everything through these functions, and acknowledge nothing before they return.

Errors are the `OSError` of the failing call; callers translate them (`StorageError`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

__all__ = [
    "fsync_dir", "make_dirs", "create_file", "replace_file", "rename", "remove", "remove_tree",
    "copy_file", "sync_file",
]


def fsync_dir(path: str) -> None:
    """fsync the directory `path`, making the entries it holds durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(path: str) -> None:
    """fsync the data and size of the file at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str, mode: int = 0o700) -> bool:
    """Create directory `path` and any missing parents, durably: each new directory is synced and so
    is the parent that received its entry. Returns True when anything was created. An existing
    directory is left as it is (but its entry is synced in its parent: an earlier run may have
    created it and been cut off before it could)."""
    path = os.path.abspath(path)
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
        fsync_dir(d)
        fsync_dir(os.path.dirname(d))
    if not missing:
        fsync_dir(path)
        parent = os.path.dirname(path)
        if parent != path:
            fsync_dir(parent)
    return bool(missing)


def create_file(path: str, data: bytes = b"", mode: int = 0o600) -> None:
    """Create the new file `path` holding `data` (FileExistsError if it exists), durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        _abandon(fd, path)
        raise
    os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def replace_file(path: str, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace (or create) `path` with `data`: write a temporary file, fsync it, rename it
    over `path`, fsync the directory. After a crash `path` holds the old bytes or the new, whole."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        _abandon(fd, tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def rename(src: str, dst: str) -> None:
    """Rename `src` to `dst` and sync both directories (the new entry first, then the removal)."""
    os.rename(src, dst)
    a = os.path.dirname(os.path.abspath(dst))
    b = os.path.dirname(os.path.abspath(src))
    fsync_dir(a)
    if b != a:
        fsync_dir(b)


def remove(path: str, missing_ok: bool = True) -> None:
    """Unlink the file `path` and sync its directory."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_tree(path: str) -> None:
    """Remove the directory tree `path` (if present) and sync its parent."""
    if not os.path.lexists(path):
        return
    shutil.rmtree(path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def copy_file(src: str, dst: str, *, limit: int | None = None, mode: int = 0o600,
              progress: Callable[[int], None] | None = None) -> int:
    """Copy `src` (its first `limit` bytes, or all of it) to the new file `dst`, durably (data fsynced,
    entry synced). Returns the bytes copied; raises EOFError when `src` holds fewer than `limit`."""
    copied = 0
    with open(src, "rb") as f:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            while limit is None or copied < limit:
                want = 1 << 20 if limit is None else min(1 << 20, limit - copied)
                chunk = f.read(want)
                if not chunk:
                    if limit is not None:
                        raise EOFError(f"{src} ended at {copied} bytes, before {limit}")
                    break
                _write_all(fd, chunk)
                copied += len(chunk)
                if progress is not None:
                    progress(len(chunk))
            os.fsync(fd)
        except BaseException:
            _abandon(fd, dst)
            raise
        os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))
    return copied


def _abandon(fd: int, path: str) -> None:
    """Close `fd` and remove the file `path` a failed create left behind (best effort)."""
    os.close(fd)
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]
