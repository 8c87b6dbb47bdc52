"""Zeros over a range of a file without writing them and without changing its size: Linux's
`fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` (ext4, XFS, btrfs, tmpfs), through ctypes.

The range's whole blocks are freed and its partial ones zeroed, so it needs no free space (unlike a
write of zeros, which may need a block the disk no longer has), and its pages leave the page cache:
every reader then reads zeros there, through a mapping too, and a mapping past the range stays valid
(the file does not shrink, as a cut with `ftruncate` would: a process reading the file through a
mapping would fault on the pages cut off).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from typing import Any

__all__ = ["punch_zeros"]

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_fallocate: Any = None


def _bind() -> Any:
    """libc's 64-bit `fallocate`, or None where there is none (not Linux, no libc found)."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):  # pragma: no cover
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def punch_zeros(fd: int, off: int, n: int) -> None:
    """Make bytes off..off+n of the file open as `fd` read as zeros, its size unchanged. Raises
    OSError: EOPNOTSUPP where the file system cannot, ENOSYS where the system has no fallocate, or
    the call's own error (EIO on a failing device, EBADF)."""
    global _fallocate
    if n <= 0:
        return
    if _fallocate is None:
        _fallocate = _bind() or False
    if _fallocate is False:  # pragma: no cover - not Linux
        raise OSError(errno.ENOSYS, "fallocate is not available on this system")
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
