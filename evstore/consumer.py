"""Checkpointed consumers: run a handler for each new event, exactly once within the store.

A consumer's position is a tracking record named `$consumer:<name>`. What the handler appends through
its context is committed in the same commit as the consumer's new position, so after a crash the
consumer resumes after the last event whose effects were committed: no effect is lost or doubled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evstore.records import ANY, NewEvent, RecordedEvent, Stream

if TYPE_CHECKING:
    from evstore.store import EventStore

CONSUMER_PREFIX = "$consumer:"


class ConsumerContext:
    """What a handler may append; committed with the consumer's position after the handler returns."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[tuple[Stream, Sequence[NewEvent], Any]] = []

    def append(self, stream: Stream, events: Sequence[NewEvent], *, expected_version: Any = ANY) -> None:
        """Queue an append, to commit atomically with the consumer's position."""
        self._parts.append((stream, list(events), expected_version))


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """What one `consume` call did."""

    name: str
    handled: int
    position: int


def consumer_position(store: EventStore, name: str) -> int:
    """The position after which consumer `name` will resume (0 when it never ran)."""
    return store.max_tracking(CONSUMER_PREFIX + name) or 0


def consume(store: EventStore, name: str, handler: Callable[[RecordedEvent, ConsumerContext], None], *,
            types: Iterable[str] | None = None, timeout: float | None = None, limit: int | None = None,
            checkpoint_every: int = 100) -> ConsumerStats:
    """Run `handler(event, ctx)` for each event after the consumer's position, following new commits.

    Ends when no event arrives for `timeout` seconds, after `limit` events, or when the handler raises
    (the exception propagates; the failing event's effects are not committed and it is handled again
    next time). An event whose handler appended nothing advances the position lazily, every
    `checkpoint_every` events and on exit, so idle events cost no commit each.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a consumer name must be a non-empty str")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, not {limit!r}")
    if type(checkpoint_every) is not int or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1, not {checkpoint_every!r}")
    tracking = CONSUMER_PREFIX + name
    start = consumer_position(store, name)
    if limit == 0:
        return ConsumerStats(name, 0, start)
    handled = 0
    position = start
    unsaved = 0
    sub = store.subscribe(gt=start, types=types, timeout=timeout)
    try:
        for event in sub:
            ctx = ConsumerContext()
            handler(event, ctx)
            position = event.position
            handled += 1
            if ctx._parts:
                store.append_many(ctx._parts, tracking=(tracking, position))
                unsaved = 0
            else:
                unsaved += 1
                if unsaved >= checkpoint_every:
                    store.append_many([], tracking=(tracking, position))
                    unsaved = 0
            if limit is not None and handled >= limit:
                break
    finally:
        sub.stop()
        if unsaved:
            store.append_many([], tracking=(tracking, position))
    return ConsumerStats(name, handled, position)
