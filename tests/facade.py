"""One face for the threaded and the asyncio API, so that a behavioural check is written once and run
against both (the `api` fixture of conftest.py): the asyncio side runs each call to completion on
an event loop of its own, and collects paged reads and subscriptions into lists."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import evstore
import evstore.aio
from evstore.consumer import ConsumerStats, consume

Appends = Sequence[tuple[Any, Sequence[evstore.NewEvent]]]


class SyncApi:
    """The threaded `EventStore`."""

    mode = "sync"

    def __init__(self, store: evstore.EventStore) -> None:
        self.store = store
        self.path = store.path

    def append(self, *a: Any, **kw: Any) -> evstore.AppendResult:
        return self.store.append(*a, **kw)

    def append_many(self, *a: Any, **kw: Any) -> list[evstore.AppendResult]:
        return self.store.append_many(*a, **kw)

    def head(self) -> int:
        return self.store.head()

    def stream_version(self, stream: Any) -> int:
        return self.store.stream_version(stream)

    def max_tracking(self, upstream: str) -> int | None:
        return self.store.max_tracking(upstream)

    def has_tracking(self, upstream: str, position: int) -> bool:
        return self.store.has_tracking(upstream, position)

    def read_stream(self, *a: Any, **kw: Any) -> list[evstore.RecordedEvent]:
        return self.store.read_stream(*a, **kw)

    def read_all(self, **kw: Any) -> list[evstore.RecordedEvent]:
        return list(self.store.read_all(**kw))

    def query(self, *a: Any, **kw: Any) -> list[evstore.RecordedEvent]:
        return self.store.query(*a, **kw)

    def follow(self, *, until: int | None = None, appends: Appends = (), **kw: Any) -> list[int]:
        """The positions a subscription (`subscribe(**kw)`) delivers while `appends` are made
        concurrently, up to position `until` (or the end of the iteration)."""
        got: list[int] = []
        with self.store.subscribe(**kw) as sub:
            t = threading.Thread(target=lambda: [self.store.append(s, evs) for s, evs in appends])
            t.start()
            for e in sub:
                got.append(e.position)
                if e.position == until:
                    break
            t.join()
        return got

    def consume(self, name: str, handler: Callable[..., None], **kw: Any) -> ConsumerStats:
        return consume(self.store, name, handler, **kw)


class AsyncApi:
    """`evstore.aio.AsyncEventStore`, each call run to completion on `loop`."""

    mode = "async"

    def __init__(self, loop: asyncio.AbstractEventLoop, store: evstore.aio.AsyncEventStore) -> None:
        self.loop = loop
        self.store = store
        self.path = store.path

    def _run(self, aw: Any) -> Any:
        return self.loop.run_until_complete(aw)

    def append(self, *a: Any, **kw: Any) -> evstore.AppendResult:
        return self._run(self.store.append(*a, **kw))  # type: ignore[no-any-return]

    def append_many(self, *a: Any, **kw: Any) -> list[evstore.AppendResult]:
        return self._run(self.store.append_many(*a, **kw))  # type: ignore[no-any-return]

    def head(self) -> int:
        return self._run(self.store.head())  # type: ignore[no-any-return]

    def stream_version(self, stream: Any) -> int:
        return self._run(self.store.stream_version(stream))  # type: ignore[no-any-return]

    def max_tracking(self, upstream: str) -> int | None:
        return self._run(self.store.max_tracking(upstream))  # type: ignore[no-any-return]

    def has_tracking(self, upstream: str, position: int) -> bool:
        return self._run(self.store.has_tracking(upstream, position))  # type: ignore[no-any-return]

    def read_stream(self, *a: Any, **kw: Any) -> list[evstore.RecordedEvent]:
        return self._run(self.store.read_stream(*a, **kw).to_list())  # type: ignore[no-any-return]

    def read_all(self, **kw: Any) -> list[evstore.RecordedEvent]:
        return self._run(self.store.read_all(**kw).to_list())  # type: ignore[no-any-return]

    def query(self, *a: Any, **kw: Any) -> list[evstore.RecordedEvent]:
        return self._run(self.store.query(*a, **kw).to_list())  # type: ignore[no-any-return]

    def follow(self, *, until: int | None = None, appends: Appends = (), **kw: Any) -> list[int]:
        async def go() -> list[int]:
            got: list[int] = []

            async def write() -> None:
                for s, evs in appends:
                    await self.store.append(s, evs)

            async with self.store.subscribe(**kw) as sub:
                task = asyncio.ensure_future(write())
                async for e in sub:
                    got.append(e.position)
                    if e.position == until:
                        break
                await task
            return got

        return self._run(go())  # type: ignore[no-any-return]

    def consume(self, name: str, handler: Callable[..., None], **kw: Any) -> ConsumerStats:
        return self._run(self.store.consume(name, handler, **kw))  # type: ignore[no-any-return]
