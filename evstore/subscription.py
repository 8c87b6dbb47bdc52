"""Subscriptions: catch up from a position, then follow new commits, never skipping or repeating one."""

from __future__ import annotations

import time
from collections import deque
import threading
from collections.abc import Callable, Iterator
from typing import Any

from evstore.records import RecordedEvent

Fetch = Callable[[int, int, int], list[RecordedEvent]]  # (after, up to, at most) -> events in position order

_BATCH = 1000
_POLL = 0.05  # seconds between looks at the index for commits by another process


class Subscription:
    """An iterator of the store's events after a position, in position order, that waits for new ones.

    Commits of this process wake it at once; commits of a writer in another process are seen within
    ~50 ms. `timeout` (seconds) ends the iteration when no event arrives for that long; `stop()` ends
    it from any thread. Use as a context manager to stop on exit.
    """

    def __init__(self, fetch: Fetch, head: Callable[[], int], notifier: threading.Condition, gt: int,
                 timeout: float | None) -> None:
        self._fetch = fetch
        self._head = head
        self._cond = notifier  # notified when commits of this process become durable or indexed
        self._last = gt
        self._timeout = timeout
        self._ready: deque[RecordedEvent] = deque()
        self._stopped = False

    @property
    def position(self) -> int:
        """The position up to which the log has been looked at (every event up to it was delivered)."""
        return self._last - (len(self._ready) and self._last - self._ready[0].position + 1)

    def stop(self) -> None:
        """End the iteration (a waiting `next()` returns within one poll interval)."""
        self._stopped = True
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __iter__(self) -> Iterator[RecordedEvent]:
        return self

    def __next__(self) -> RecordedEvent:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            if self._stopped:
                raise StopIteration
            if self._ready:
                return self._ready.popleft()
            if self._fill():
                continue
            cond = self._cond
            wait = _POLL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StopIteration
                wait = min(wait, left)
            with cond:
                if not self._stopped:
                    cond.wait(wait)

    def _fill(self) -> bool:
        """Read the next batch after the last position seen; False when there is nothing new."""
        head = self._head()
        if head <= self._last:
            return False
        batch = self._fetch(self._last, head, _BATCH)
        if len(batch) == _BATCH:
            self._last = batch[-1].position
        else:
            self._last = head  # everything up to head was looked at
        self._ready.extend(batch)
        return True
