"""Read-your-writes without an index write: the heads and extents of the streams of durable commits
that are not indexed yet, for this process's stream reads.

The indexer writes the index a few milliseconds after the commits it covers (one durable LMDB
transaction for the commits of that time). Until then a stream read of this process finds those
commits' stream heads and extents here, and needs no index write of its own (a transaction and
its fdatasync, on the read path). Reads that need the index's other tables (positions, types, tags,
ids, snapshots, tracking) still index the durable commits first.

Entries are added when commits become durable, in commit order, and removed once the index
transaction holding them has committed. A reader copies a stream's entry *before* it begins its
LMDB transaction: an entry removed after the copy is in the index the reader then reads, and an
entry in both (the copy raced the indexer) is taken once, from the index.

`lock` (a leaf: nothing is taken under it) guards `streams` and every entry in it.
"""

from __future__ import annotations

import threading

from evstore.storage.index import EXTENT_KEY, EXTENT_VAL, Extent, IndexBatch


class _Entry:
    """A stream's durable, unindexed state: its latest head (packed) and the batch it came from, and
    its unindexed extents with their batches."""

    __slots__ = ("head", "batch", "extents")

    def __init__(self, head: bytes, batch: IndexBatch) -> None:
        self.head = head
        self.batch = batch
        self.extents: list[tuple[IndexBatch, bytes, bytes]] = []


class Overlay:
    """The durable, unindexed stream heads and extents of one store (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: dict[bytes, _Entry] = {}  # GUARDED_BY(lock): stream key -> entry
        self.valid = True  # GUARDED_BY(lock); False for good once an add was interrupted half-way

    def invalidate(self) -> None:
        """Give the overlay up (an add did not finish): every read indexes first from now on."""
        with self.lock:
            self.valid = False
            self.streams = {}

    def add(self, batches: list[IndexBatch]) -> None:
        """Commits became durable: their batches, in commit order."""
        with self.lock:
            if not self.valid:
                return
            streams = self.streams
            for b in batches:
                heads = b.heads
                if len(heads) == 1:  # the common commit: one stream
                    [(key, packed)] = heads.items()
                    e = streams.get(key)
                    if e is None:
                        e = streams[key] = _Entry(packed, b)
                    else:
                        e.head, e.batch = packed, b
                    # Every extent of a batch is of a stream whose head it holds: here, this one's.
                    for k, v in b.extents:
                        e.extents.append((b, k, v))
                    continue
                by_num: dict[bytes, _Entry] = {}
                for key, packed in heads.items():
                    e = streams.get(key)
                    if e is None:
                        e = streams[key] = _Entry(packed, b)
                    else:
                        e.head, e.batch = packed, b
                    by_num[packed[7::-1]] = e  # the head's stream number (LE) as an extent key's (BE)
                for k, v in b.extents:
                    e = by_num.get(k[:8])
                    if e is not None:
                        e.extents.append((b, k, v))

    def remove(self, batches: list[IndexBatch]) -> None:
        """The index transaction holding `batches` has committed: the index has their entries."""
        done = {id(b) for b in batches}
        keys = {key: None for b in batches for key in b.heads}  # each stream once: a hot stream has
        with self.lock:                                         # an extent in many of the batches
            streams = self.streams
            for key in keys:
                e = streams.get(key)
                if e is None:
                    continue
                if id(e.batch) in done:
                    del streams[key]
                else:
                    e.extents = [x for x in e.extents if id(x[0]) not in done]

    def stream(self, key: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """A copy of stream `key`'s entry: (packed head, [(extent key, extent value)]), or None."""
        if not self.streams:  # a hint: nothing unindexed (read without the lock)
            return None
        with self.lock:
            e = self.streams.get(key)
            return None if e is None else (e.head, [(k, v) for _b, k, v in e.extents])


def merge_extents(indexed: list[Extent], unindexed: list[tuple[bytes, bytes]], lo: int, hi: int) -> list[Extent]:
    """`indexed` (a stream's extents from the index, for versions lo..hi) followed by the unindexed
    ones of the overlay that hold versions in lo..hi and come after every indexed one."""
    top = indexed[-1][0] if indexed else 0
    out = indexed
    for k, v in unindexed:
        v0 = EXTENT_KEY.unpack(k)[1]
        if v0 <= top or v0 > hi:
            continue
        seg, off, count, nbytes = EXTENT_VAL.unpack(v)
        if v0 + count > lo:
            if out is indexed:
                out = list(indexed)
            out.append((v0, seg, off, count, nbytes))
    return out
