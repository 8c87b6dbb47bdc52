"""Checkpointed consumers: run a handler for each new event, exactly once within the store.

A consumer's position is a tracking record named `$consumer:<name>`. What the handler appends through
its context is committed in the same commit as the consumer's new position, so after a crash the
consumer resumes after the last event whose effects were committed: no effect is lost or doubled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from evstore.records import ANY, AppendResult, NewEvent, RecordedEvent, Stream


class ConsumingStore(Protocol):
    """What a consumer needs of a store (an `EventStore` has it)."""

    def max_tracking(self, upstream: str) -> int | None: ...
    def subscribe(self, *, gt: int = 0, types: Iterable[str] | None = None, timeout: float | None = None,
                  category: str | None = None, group: tuple[int, int] | None = None) -> Any: ...
    def append_many(self, appends: Iterable[tuple[Stream, Sequence[NewEvent], Any]], *,
                    tracking: tuple[str, int] | None = None, condition: Any = None) -> list[AppendResult]: ...

CONSUMER_PREFIX = "$consumer:"


class ConsumerContext:
    """What a handler may append; committed with the consumer's position after the handler returns."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[tuple[Stream, Sequence[NewEvent], Any]] = []  # the queued appends

    def append(self, stream: Stream, events: Sequence[NewEvent], *, expected_version: Any = ANY) -> None:
        """Queue an append, to commit atomically with the consumer's position."""
        self.parts.append((stream, list(events), expected_version))


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """What one `consume` call did."""

    name: str
    handled: int
    position: int


def consumer_position(store: ConsumingStore, name: str) -> int:
    """The position after which consumer `name` will resume (0 when it never ran)."""
    return store.max_tracking(CONSUMER_PREFIX + name) or 0


class ConsumerRun:
    """The bookkeeping of one `consume` call, written once for the thread and the asyncio drivers:
    where the consumer stands, which tracking record each step commits, and when it stops.

    A driver, for each event: runs the handler with a fresh `ConsumerContext`; when the handler queued
    appends, commits them with `tracking=run.effects_tracking(event)`; then calls `run.handled_one
    (event, committed)`, which returns a tracking record to commit alone when a lazy checkpoint is due
    (then `run.checkpointed()`); stops once `run.done`. On the way out it commits `run.final()`, if any.
    Touched by one driver at a time (no lock)."""

    __slots__ = ("name", "tracking", "limit", "every", "handled", "position", "saved")

    def __init__(self, name: str, start: int, limit: int | None, checkpoint_every: int) -> None:
        self.name = name
        self.tracking = CONSUMER_PREFIX + name
        self.limit = limit
        self.every = checkpoint_every
        self.handled = 0
        self.position = start  # every event up to here has been handled and its effects committed
        self.saved = start  # the position last committed as the checkpoint

    def effects_tracking(self, event: RecordedEvent) -> tuple[str, int]:
        """The tracking record that commits with the effects the handler queued for `event`."""
        return self.tracking, event.position

    def handled_one(self, event: RecordedEvent, committed: bool) -> tuple[str, int] | None:
        """Count `event` as handled (`committed`: its effects committed with its position); the
        checkpoint to commit now, if one is due."""
        if committed:
            self.saved = event.position
        self.position = event.position
        self.handled += 1
        if self.position - self.saved and self.handled % self.every == 0:
            return self.tracking, self.position
        return None

    def checkpointed(self) -> None:
        """The checkpoint `handled_one` asked for is committed."""
        self.saved = self.position

    @property
    def done(self) -> bool:
        return self.limit is not None and self.handled >= self.limit

    def final(self) -> tuple[str, int] | None:
        """The checkpoint to commit on the way out: only events that were handled whole."""
        return (self.tracking, self.position) if self.position > self.saved else None

    def stats(self) -> ConsumerStats:
        return ConsumerStats(self.name, self.handled, self.position)


def start_consumer(store: ConsumingStore, name: str, limit: int | None, checkpoint_every: int) -> ConsumerRun:
    """Check `consume`'s arguments and read where consumer `name` resumes.

    Raises: ValueError for an empty name, a limit that is not None or an int >= 0, or a
    checkpoint_every that is not an int >= 1."""
    if not isinstance(name, str) or not name:
        raise ValueError("a consumer name must be a non-empty str")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, not {limit!r}")
    if type(checkpoint_every) is not int or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1, not {checkpoint_every!r}")
    return ConsumerRun(name, consumer_position(store, name), limit, checkpoint_every)


def consume(store: ConsumingStore, name: str, handler: Callable[[RecordedEvent, ConsumerContext], None], *,
            types: Iterable[str] | None = None, timeout: float | None = None, limit: int | None = None,
            checkpoint_every: int = 100, category: str | None = None, group: tuple[int, int] | None = None,
            sink: ConsumingStore | None = None) -> ConsumerStats:
    """Run `handler(event, ctx)` for each event after the consumer's position, following new commits.

    Ends when no event arrives for `timeout` seconds, after `limit` events, or when the handler raises
    (the exception propagates; the failing event's effects are not committed and it is handled again
    next time). An event whose handler appended nothing advances the position lazily, every
    `checkpoint_every` events and on exit, so idle events cost no commit each. `group=(i, n)` reads
    only the streams of member i of n (see `EventStore.subscribe`) and names the position
    `<name>#<i>/<n>`; `sink` is the store the position and the handler's appends are committed to
    (default: `store`; a group member's own store, see evstore.groups).

    Raises: ValueError for a bad name, limit or checkpoint_every (see `start_consumer`); what
    `subscribe` raises for bad types, category or group; what `append_many` raises for the handler's
    appends (nothing of the failing event is committed); what the handler raises.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a consumer name must be a non-empty str")
    out = store if sink is None else sink
    if group is not None:
        if not isinstance(group, tuple) or len(group) != 2:
            raise TypeError(f"group must be a (member, size) tuple of ints, not {group!r}")
        name = f"{name}#{group[0]}/{group[1]}"
    run = start_consumer(out, name, limit, checkpoint_every)
    if limit == 0:
        return run.stats()
    sub = store.subscribe(gt=run.position, types=types, timeout=timeout, category=category, group=group)
    try:
        for event in sub:
            ctx = ConsumerContext()
            handler(event, ctx)
            if ctx.parts:
                # The event's effects and its position commit together; if the commit is refused the
                # event is not handled (the exception propagates) and the checkpoint stays before it.
                out.append_many(ctx.parts, tracking=run.effects_tracking(event))
            due = run.handled_one(event, bool(ctx.parts))
            if due is not None:
                out.append_many([], tracking=due)
                run.checkpointed()
            if run.done:
                break
        # A clean end: every event the subscription looked at was delivered and handled, so the
        # position may move past events this consumer does not select (its lag then reads 0).
        run.position = max(run.position, sub.position)
    finally:
        sub.stop()
        last = run.final()
        if last is not None:
            out.append_many([], tracking=last)
    return run.stats()
