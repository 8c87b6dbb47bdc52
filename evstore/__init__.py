"""evstore: an embedded event store — a checksummed append-only log with LMDB indexes."""

from evstore.errors import (
    ConditionFailed,
    ConcurrencyError,
    CorruptedError,
    DuplicateEventId,
    EvstoreError,
    ForkedStore,
    IndexAheadOfLog,
    IndexUnavailable,
    InvalidLifecycle,
    InvalidTransition,
    InvalidUpcaster,
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
from evstore.lifecycle import Lifecycle, LifecycleViolation
from evstore.records import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, NewEvent, RecordedEvent, StreamInfo
from evstore.snapshots import Loaded, Snapshot
from evstore.subscription import Subscription
from evstore.store import Condition, QueryItem
from evstore.store import MAX_COMMIT_BYTES, MAX_EVENT_BYTES, MAX_NAME_BYTES, EventStore, open

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`evstore.aio` (the asyncio API) is imported on first use: `import evstore` stays light."""
    if name == "aio":
        import importlib

        return importlib.import_module("evstore.aio")
    raise AttributeError(f"module 'evstore' has no attribute {name!r}")

__all__ = [
    "Condition",
    "ConditionFailed",
    "QueryItem",
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "MAX_COMMIT_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_NAME_BYTES",
    "AppendResult",
    "ConcurrencyError",
    "CorruptedError",
    "DuplicateEventId",
    "EventStore",
    "EvstoreError",
    "ForkedStore",
    "IndexAheadOfLog",
    "IndexUnavailable",
    "InvalidLifecycle",
    "InvalidTransition",
    "InvalidUpcaster",
    "Lifecycle",
    "LifecycleViolation",
    "Loaded",
    "NewEvent",
    "ReadOnlyStore",
    "RecordedEvent",
    "Snapshot",
    "StorageError",
    "StoreClosed",
    "StoreFailed",
    "StoreLocked",
    "StreamClosed",
    "StreamDeleted",
    "StreamInfo",
    "Subscription",
    "TrackingConflict",
    "UnsupportedFormat",
    "WrongExpectedVersion",
    "open",
]
