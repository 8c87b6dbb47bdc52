"""Helpers shared by the test files: events, sizes on disk, the ORDER lifecycle, segment names."""

from __future__ import annotations

import os

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
    """The bytes of every segment of the store at `path`."""
    d = os.path.join(path, "log")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def segments(path: str) -> list[str]:
    """The file names in the store's log/ directory, sorted."""
    return sorted(os.listdir(os.path.join(path, "log")))
