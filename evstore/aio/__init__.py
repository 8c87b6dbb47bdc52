"""evstore for asyncio: `async with evstore.aio.open(path) as store:` — appends, reads, subscriptions
and consumers that never block the event loop. See docs/asyncio.md.

The modules: `store` (`open`, `AsyncEventStore`), `reading` (paged reads, subscriptions and what
wakes them), `worker` (the handle's one thread: durable waits and blocking operations).
"""

from evstore.aio.reading import MAX_PAGE, PAGE, AsyncEvents, AsyncSubscription, CaughtUp
from evstore.aio.store import AsyncEventStore, Opening, open

__all__ = ["MAX_PAGE", "PAGE", "AsyncEventStore", "AsyncEvents", "AsyncSubscription", "CaughtUp", "Opening", "open"]
