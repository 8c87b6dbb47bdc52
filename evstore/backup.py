"""`evstore backup`: a consistent copy of a store, taken online, durable before it is reported.

The copy is built in a hidden sibling directory of the destination (`.<name>.partial-<pid>`): every
file written and synced, the copy's index built from its log, every directory synced. Only then is it
renamed to the destination (and the parent synced). A backup that fails or is killed half-way
therefore leaves no destination: at most the partial directory, which is removed on failure and
which no command takes for a store (it is named as a partial copy).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import evstore
from evstore.format import codec as _impl
from evstore.storage import durable
from evstore.storage.logfiles import list_segments
from evstore.errors import CorruptedError, EvstoreError
from evstore.recovery import store_dir

Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    pass


def check_target(path: str, what: str) -> str:
    """A path the CLI will create: refuse NUL bytes and an existing non-empty target."""
    if "\x00" in path:
        raise EvstoreError(f"{what} path must not contain NUL bytes")
    real = os.path.realpath(path)
    if os.path.exists(real) and (not os.path.isdir(real) or os.listdir(real)):
        raise EvstoreError(f"{what} {path} already exists and is not empty; choose a new path")
    return real


def partial_path(target: str) -> str:
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.partial-{os.getpid()}")


def sync_tree(root: str) -> None:
    """fsync every file and directory under `root` (directories after what they hold)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                durable.sync_file(p)
        durable.fsync_dir(dirpath)


def backup(path: str, dest: str, progress: Progress = _no_progress) -> int:
    """Copy a consistent prefix of the log (every indexed commit) to `dest`, online; returns the head.

    Sealed segments are copied whole, the active one up to the indexed checkpoint (a commit
    boundary); the copy's index is built from its log. `dest` (mode 0700) appears only once all of
    it is durable; on any failure nothing is left at `dest`."""
    real = store_dir(path)
    target = check_target(dest, "backup destination")
    with evstore.open(real, readonly=True, create=False) as s:
        cp = s.maintenance.index_checkpoint()
    if cp is None:
        raise EvstoreError(f"{path} has no indexed commits to back up")
    seg_first, end, _next = cp
    segs = [sg for sg in list_segments(os.path.join(real, "log"), _impl.load())
            if sg.well_named and sg.first is not None and sg.first <= seg_first]
    tmp = partial_path(target)
    durable.remove_tree(tmp)  # a leftover of this pid's earlier run
    try:
        durable.make_dirs(os.path.join(tmp, "log"), mode=0o700)
        os.chmod(tmp, 0o700)
        meta = os.path.join(real, "evstore.meta")
        if os.path.exists(meta):
            durable.copy_file(meta, os.path.join(tmp, "evstore.meta"))
        for sg in segs:
            limit = end if sg.first == seg_first else os.path.getsize(sg.path)
            try:
                durable.copy_file(sg.path, os.path.join(tmp, "log", sg.name), limit=limit, progress=progress)
            except EOFError:
                raise CorruptedError(sg.path, os.path.getsize(sg.path), "segment ended during backup") from None
        with evstore.open(tmp) as b:
            head = b.head()
        sync_tree(tmp)
        durable.rename(tmp, target)  # replaces an empty directory of that name (checked above)
    except BaseException as e:
        try:
            durable.remove_tree(tmp)
        except OSError:  # pragma: no cover - the partial directory stays, named as such
            pass
        if isinstance(e, OSError):
            raise EvstoreError(f"backup to {dest} failed: {e.strerror or e}; nothing was left at {dest}") from e
        raise
    return head


__all__ = ["backup", "check_target", "sync_tree"]
