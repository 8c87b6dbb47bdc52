"""File descriptors an event loop can watch: a `Doorbell` rung by other threads of this process (an
eventfd, or a pipe where there is none) and a `DirectoryWatch` that becomes readable when files in
a directory change (inotify, through ctypes; other processes' writes included).

Both are non-blocking and close-on-exec. `DirectoryWatch.open` returns None where inotify is not to
be had (not Linux, or the per-user limit of watches reached); callers then fall back to polling.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

# A file appearing under the directory (an index rebuilt elsewhere and renamed into place), or the
# directory itself going away: the watcher's owner should look again after a while, not only now.
REPLACED = IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW


class Doorbell:
    """A descriptor that becomes readable when `ring()` is called, from any thread.

    `ring` is one non-blocking write (safe to call under a lock); `drain` empties it. The owner
    must stop every ringer before `close()` (a descriptor number is reused once closed)."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.rfd = self.wfd = fd
        else:  # pragma: no cover - not Linux
            self.rfd, self.wfd = os.pipe()
            for f in (self.rfd, self.wfd):
                os.set_blocking(f, False)
        self.closed = False

    def fileno(self) -> int:
        """The descriptor to watch for reading. Never raises."""
        return self.rfd

    def ring(self) -> None:
        """Make the descriptor readable (a full pipe or counter is readable already). Never raises."""
        try:
            os.write(self.wfd, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        """Read everything rung so far. Never raises."""
        try:
            while os.read(self.rfd, 4096):
                if self.rfd == self.wfd:
                    break  # an eventfd returns its whole counter in one read
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Close the descriptors (idempotent). Raises OSError only if the OS refuses to close them."""
        if self.closed:
            return
        self.closed = True
        os.close(self.rfd)
        if self.wfd != self.rfd:
            os.close(self.wfd)


class DirectoryWatch:
    """An inotify descriptor watching one directory for writes to and renames into it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: str) -> DirectoryWatch | None:
        """Watch `path` (a directory); None where inotify is not available or the watch cannot be
        added (the caller polls instead)."""
        if not sys.platform.startswith("linux"):  # pragma: no cover
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            init = libc.inotify_init1
            add = libc.inotify_add_watch
        except (OSError, AttributeError):  # pragma: no cover
            return None
        init.argtypes = [ctypes.c_int]
        init.restype = ctypes.c_int
        add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        add.restype = ctypes.c_int
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        mask = IN_MODIFY | IN_CLOSE_WRITE | REPLACED
        if add(fd, os.fsencode(path), mask) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def fileno(self) -> int:
        """The inotify descriptor to watch for reading. Never raises."""
        return self.fd

    def drain(self) -> int:
        """Read the pending events; returns the union of their masks (0: none; `IN_Q_OVERFLOW` when
        the read failed, so that the caller looks again). Never raises."""
        mask = 0
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return mask
            except OSError as e:  # pragma: no cover
                return mask | (IN_Q_OVERFLOW if e.errno != errno.EAGAIN else 0)
            if not buf:
                return mask
            off = 0
            while off + _EVENT.size <= len(buf):
                _wd, m, _cookie, n = _EVENT.unpack_from(buf, off)
                mask |= m
                off += _EVENT.size + n

    def close(self) -> None:
        """Stop watching (idempotent). Raises OSError only if the OS refuses to close it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
