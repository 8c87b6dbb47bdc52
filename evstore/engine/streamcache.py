"""The verified records of small streams, kept between reads: an aggregate loaded again costs a look
at its head instead of an index walk and a verification of its records.

An entry holds, for one stream, the head it was read under (packed, as the index stores it), the
index generation it was read at, and where its visible records are: (segment, verified record
offsets, region start, region end) per extent. Only whole reads (no `gt`, `lte`, `limit`) of streams
of at most `MAX_STREAM` visible events that the overlay did not serve are kept. An entry is current:

- in the writing process, while the index's `generation` is unchanged and the overlay holds nothing
  of the stream. This process is the only one that writes the index (it holds `LOCK`), and every
  change of a stream's head or extents reaches a read through the overlay until the index
  transaction holding it has committed and bumped the generation (the overlay entry is removed only
  after that). A reader looks at the overlay before the generation, and notes the generation before
  its transaction: an entry is never newer than the generation it carries says, only older, and then
  the overlay sends the read past it;
- in a read-only process (other processes write), while the stream's head in the index is
  byte-for-byte the one it was read under: extents are only ever added, with the head's version, in
  the transaction that moves the head, and a delete, tombstone or close changes the head too.

Entries are tied to one `Index` object: one reopened or followed after a rebuild starts empty.
Log bytes are immutable once a commit is durable, so records verified once are not verified again;
the mapping is taken from the segment at each hit, so an entry pins no old mapping.

An entry found stale by its generation but current by its head is stamped with the new generation.
A stream is kept from its second whole read on (`admit`): a store that loads each aggregate once
pays nothing for the cache, neither the copy of what it read nor the collector's walks over entries
that would never be used. At most `MAX_EVENTS` records are kept; the oldest entries go first.
`lock` guards `entries`, `events`, `index` and `seen` for writes; lookups read `entries` without it
(a dict lookup is atomic, and entries are immutable).
"""

from __future__ import annotations

import threading
from typing import Any

MAX_STREAM = 256  # visible events of the largest stream kept
MAX_EVENTS = 1 << 18  # records kept in all (about 10 MB)
MAX_SEEN = 1 << 16  # streams read once that are remembered (all forgotten when there are more)

Part = tuple[Any, tuple[int, ...], int, int]  # segment, verified record offsets, region start, region end
Entry = tuple[Any, int, bytes, tuple[Part, ...], int]  # index, generation, packed head, parts, events


class StreamCache:
    """The kept reads of one store (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[bytes, Entry] = {}  # GUARDED_BY(lock) for writes: stream key -> entry
        self.events = 0  # GUARDED_BY(lock): records held by `entries`
        self.index: Any = None  # GUARDED_BY(lock): the index the entries were read from
        self.seen: set[bytes] = set()  # GUARDED_BY(lock): streams read whole once, not kept yet

    def admit(self, key: bytes) -> bool:
        """Whether a whole read of stream `key` is to be kept: True from its second read on."""
        seen = self.seen
        if key in seen:
            return True
        with self.lock:
            if len(seen) >= MAX_SEEN:
                seen.clear()
            seen.add(key)
        return False

    def get(self, key: bytes, index: Any) -> Entry | None:
        """Stream `key`'s entry read from `index`, or None; the caller decides whether it is current."""
        e = self.entries.get(key)
        return e if e is not None and e[0] is index else None

    def put(self, key: bytes, index: Any, generation: int, head: bytes, parts: tuple[Part, ...]) -> None:
        """Keep a read of stream `key` from `index`, made under the packed `head` at `generation`."""
        n = 0
        for p in parts:
            n += len(p[1])
        if n > MAX_STREAM:
            return
        with self.lock:
            entries = self.entries
            if index is not self.index:  # a new index: what was kept describes another one
                entries = self.entries = {}
                self.events = 0
                self.index = index
            old = entries.pop(key, None)
            if old is not None:
                self.events -= old[4]
            while entries and self.events + n > MAX_EVENTS:
                self.events -= entries.pop(next(iter(entries)))[4]
            entries[key] = (index, generation, head, parts, n)
            self.events += n


__all__ = ["MAX_EVENTS", "MAX_SEEN", "MAX_STREAM", "StreamCache"]
