"""Index lookups for maintenance tools (`info`, `consumers`, `backup`, `import`): what the event store
API does not offer but the tools need, behind one small object instead of the engine's internals.

Each call indexes this process's durable commits first (as every read does) and raises like a read.
"""

from __future__ import annotations

from collections.abc import Callable

from evstore.engine.core import Core
from evstore.records import Stream
from evstore.storage import index as ix
from evstore.storage.index import HEAD_CLOSED, HEAD_TOMBSTONE, stream_key


class Maintenance:
    """Lookups over one store's index (see the module docstring)."""

    def __init__(self, core_for_read: Callable[[], Core]) -> None:
        self._core = core_for_read

    def index_checkpoint(self) -> tuple[int, int, int] | None:
        """The index's checkpoint (segment, end offset, next position), or None when it has none."""
        core = self._core()
        with core.index.begin() as txn:
            return core.index.get_checkpoint(txn)

    def event_id_position(self, event_id: bytes) -> int | None:
        """The position of the event with caller-given id `event_id` (16 bytes), or None."""
        core = self._core()
        with core.index.begin() as txn:
            return ix.id_position(core.index, txn, event_id)

    def stream_head(self, stream: Stream) -> tuple[int, int, bool, bool] | None:
        """(version, hidden-up-to version, closed, tombstoned) of a stream, or None."""
        core = self._core()
        with core.index.begin() as txn:
            h = ix.head(core.index, txn, stream_key(stream))
        return None if h is None else (h.version, h.hidden, bool(h.flags & HEAD_CLOSED),
                                       bool(h.flags & HEAD_TOMBSTONE))

    def tracked(self, prefix: str = "") -> dict[str, int]:
        """The largest tracked position of each upstream whose name starts with `prefix`."""
        core = self._core()
        with core.index.begin() as txn:
            rows = ix.tracked(core.index, txn, prefix.encode("utf-8"))
        return {k.decode("utf-8"): v for k, v in rows.items()}

    def stream_count(self) -> int:
        """How many streams the index knows."""
        core = self._core()
        with core.index.begin() as txn:
            return ix.stream_count(core.index, txn)
