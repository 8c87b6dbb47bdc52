"""Helpers shared by the test files: events, sizes on disk, the ORDER lifecycle, segment names,
threads run to their end."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import evstore
from evstore import NewEvent

ORDER = evstore.Lifecycle(
    "order", initial="new",
    transitions={("new", "Placed"): "open", ("open", "ItemAdded"): "open", ("open", "Paid"): "paid",
                 ("paid", "Shipped"): "shipped", ("open", "Cancelled"): "cancelled"},
    final={"shipped", "cancelled"},
)


def ev(t: str = "Happened", data: bytes = b"{}", **kw: object) -> NewEvent:
    """A new event of type `t` (keywords: metadata, id, schema, tags)."""
    return NewEvent(t, data, **kw)  # type: ignore[arg-type]


def log_bytes(path: str) -> int:
    """The bytes of every segment of the store at `path` up to the end of its commits (the space
    allocated after them holds nothing: a commit written there counts)."""
    d = os.path.join(path, "log")
    return sum(commits_end(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".seg"))


def segments(path: str) -> list[str]:
    """The file names in the store's log/ directory, sorted."""
    return sorted(os.listdir(os.path.join(path, "log")))


def commits_end(seg: str) -> int:
    """Where the commits of the segment file `seg` end: a walk of its records' lengths from the
    segment header to the end of the file or to a zero record header (the space the writer
    allocates ahead of its tail), independent of the store's own scanner."""
    with open(seg, "rb") as f:
        raw = f.read()
    off = 32
    while off + 64 <= len(raw):
        length = int.from_bytes(raw[off + 4 : off + 8], "little")
        if length < 64 or off + length > len(raw):
            break
        off += length
    return off


def run_threads(work: Callable[[int], object], n: int) -> None:
    """Run `work(0)` .. `work(n - 1)` each on a thread of its own, all at once, until every one
    ends; then raise the first exception any of them raised (an AssertionError naming them all)."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as e:  # reported below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
