"""The evstore exception hierarchy: every error a caller can catch derives from `EvstoreError`."""

from __future__ import annotations

from typing import Any


class EvstoreError(Exception):
    """Base class of every evstore error."""


class WrongExpectedVersion(EvstoreError):
    """An append's expected version (or expected state) did not match the stream; nothing was written."""

    def __init__(self, stream: Any, expected: Any, actual: Any, what: str = "version") -> None:
        super().__init__(
            f"stream {stream!r}: expected {what} {expected!r}, actual {what} is {actual!r}; "
            "nothing was written — re-read the stream and retry"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


ConcurrencyError = WrongExpectedVersion


class DuplicateEventId(EvstoreError):
    """An event id given to an append is already used by another event (or twice in the append)."""

    def __init__(self, event_id: Any, position: int | None = None) -> None:
        where = f" by the event at position {position}" if position else " twice in one append"
        super().__init__(f"event id {event_id} is already used{where}; nothing was written")
        self.event_id = event_id
        self.position = position


class CorruptedError(EvstoreError):
    """The log (or the index) holds bytes that do not check out; the store refuses to serve past them."""

    def __init__(self, path: str, offset: int, reason: str = "bad record") -> None:
        super().__init__(
            f"{path}: {reason} at offset {offset}; run `evstore verify` for details and "
            "`evstore recover` to salvage every intact commit before it"
        )
        self.path = path
        self.offset = offset
        self.reason = reason


class IndexAheadOfLog(CorruptedError):
    """The index covers commits the log no longer holds (a restored, truncated or lying disk)."""


class StoreLocked(EvstoreError):
    """Another process holds the store open for writing."""

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"{path} is open for writing by {holder}; open it with readonly=True, or stop that process"
        )
        self.path = path
        self.pid = pid


class StoreClosed(EvstoreError):
    """The store (or the handle used) has been closed."""

    def __init__(self, path: str = "") -> None:
        super().__init__(f"the store {path} is closed".replace("  ", " "))
        self.path = path


class ReadOnlyStore(EvstoreError):
    """A write was attempted through a store opened with readonly=True."""


class UnsupportedFormat(EvstoreError):
    """The store was written by a newer evstore (or is not an evstore store at all)."""

    def __init__(self, path: str, found: Any, supported: int) -> None:
        super().__init__(
            f"{path}: format version {found!r} is not supported (this evstore reads version "
            f"{supported}); upgrade evstore"
        )
        self.path = path
        self.found = found
        self.supported = supported


class StorageError(EvstoreError):
    """An operating-system error (e.g. a full disk) stopped a write; the commit was not written."""

    def __init__(self, path: str, errno: int | None, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class StoreFailed(EvstoreError):
    """A write failed in a way that may have left it half-durable (fsync failed); reopen the store."""


class TrackingConflict(EvstoreError):
    """A tracking record does not advance its upstream's position; nothing was written."""

    def __init__(self, name: str, position: int, current: int) -> None:
        super().__init__(
            f"tracking {name!r} at position {position} does not follow the recorded position {current}; "
            "nothing was written"
        )
        self.name = name
        self.position = position
        self.current = current
