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


class IndexDamaged(CorruptedError):
    """The index does not describe this log (its checkpoint is not a commit boundary, or its entries
    disagree with it); a writer rebuilds it from the log."""


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


class IndexUnavailable(StorageError):
    """The index could not be written or opened (e.g. the disk is full). The log still holds every
    acknowledged commit; reads that need the index raise this until it can be written again."""

    def __init__(self, path: str, message: str, errno: int | None = None) -> None:
        super().__init__(path, errno, message)


class ForkedStore(EvstoreError):
    """A store handle was used in a child process forked after it was opened; open the store anew in
    the child (the parent's writer lock, index environment and buffers belong to the parent)."""

    def __init__(self, path: str, owner: int) -> None:
        super().__init__(f"the store {path} was opened by process {owner} and cannot be used in the forked "
                         "child process; open it again in the child (readonly=True while the parent writes)")
        self.path = path
        self.owner = owner


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


class StreamClosed(EvstoreError):
    """The stream was closed with `close_stream`: it can be read, but not appended to."""

    def __init__(self, stream: Any) -> None:
        super().__init__(f"stream {stream!r} is closed: it can be read but takes no more events")
        self.stream = stream


class StreamDeleted(EvstoreError):
    """The stream was deleted with `delete_stream(..., tombstone=True)`: its name can never be used again."""

    def __init__(self, stream: Any) -> None:
        super().__init__(f"stream {stream!r} is deleted (tombstoned): it can be neither read nor written again")
        self.stream = stream


class InvalidLifecycle(EvstoreError, ValueError):
    """A lifecycle declaration is inconsistent; `problems` lists each thing to fix."""

    def __init__(self, name: str, problems: list[str]) -> None:
        super().__init__(f"lifecycle {name!r} is invalid: " + "; ".join(problems))
        self.name = name
        self.problems = problems


class InvalidTransition(EvstoreError):
    """An appended event has no transition from the stream's current lifecycle state; nothing was written.

    `allowed` holds the event types that the state does accept (empty for a final state).
    """

    def __init__(self, stream: Any, state: str | None, event_type: str, allowed: tuple[str, ...],
                 lifecycle: str = "") -> None:
        what = f"lifecycle {lifecycle!r}" if lifecycle else "its lifecycle"
        if allowed:
            hint = "allowed here: " + ", ".join(repr(t) for t in allowed)
        else:
            hint = "the state takes no events (a final state)"
        super().__init__(
            f"stream {stream!r} is in state {state!r} of {what}: event {event_type!r} is not a valid "
            f"transition ({hint}); nothing was written"
        )
        self.stream = stream
        self.state = state
        self.event_type = event_type
        self.allowed = allowed
        self.lifecycle = lifecycle


class InvalidUpcaster(EvstoreError, ValueError):
    """An upcaster registration would leave a gap (or a duplicate) in an event type's schema chain."""

    def __init__(self, event_type: str, from_schema: int, registered: tuple[int, ...], reason: str) -> None:
        super().__init__(
            f"upcaster for {event_type!r} from schema {from_schema}: {reason} "
            f"(registered from-schemas: {list(registered)})"
        )
        self.event_type = event_type
        self.from_schema = from_schema
        self.registered = registered


class ConditionFailed(EvstoreError):
    """An append condition failed: an event matching its query was committed after its position."""

    def __init__(self, condition: Any, position: int) -> None:
        super().__init__(
            f"the append condition failed: the event at position {position} matches its query and is after "
            f"position {getattr(condition, 'after', '?')}; nothing was written — re-read and decide again"
        )
        self.condition = condition
        self.position = position
