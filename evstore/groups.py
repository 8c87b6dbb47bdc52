"""Consumer groups: members in separate processes share a store's streams between them, each keeping
its position, with what its handler appends, in a store of its own.

Member i of a group of n handles exactly the streams whose `stream_hash` (CRC-32 of the stored id,
see `evstore.storage.postings`) modulo n is i, so every stream has one member and reaches it in
version order. A store has one writing process, and members run anywhere, readers included: so a
member does not commit into the store it reads. It commits into its *member store*,
`STORE/consumers/<name>/member-<i>-of-<n>.evs` (the name percent-encoded), an evstore store opened
for writing by that member alone (its LOCK keeps a second copy of the member out): the position
(tracking record `$consumer:<name>#<i>/<n>`) and the handler's `ctx.append(...)` commit together
there, exactly once, and survive the member's crash. What the members append is read from their
member stores (each is an ordinary store: read it, consume it, copy it).

A group's size is part of its identity: a member refuses to start when the group has member stores
of another size (moving streams between members would hand some events to a second member); a
group of a new size is started under a new name.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from evstore.consumer import CONSUMER_PREFIX, ConsumerStats, ConsumingStore, consume
from evstore.errors import EvstoreError
from evstore.records import RecordedEvent

GROUPS_DIR = "consumers"
_MEMBER = re.compile(r"member-(\d+)-of-(\d+)\.evs$")


def group_dir(store_path: str, name: str) -> str:
    """The directory of group `name`'s member stores."""
    return os.path.join(store_path, GROUPS_DIR, urllib.parse.quote(name, safe=""))


def member_path(store_path: str, name: str, member: int, size: int) -> str:
    """The member store of member `member` of `size` of group `name` of the store at `store_path`."""
    return os.path.join(group_dir(store_path, name), f"member-{member}-of-{size}.evs")


def tracking_name(name: str, member: int, size: int) -> str:
    """The consumer name a member's position is recorded under (in its member store)."""
    return f"{name}#{member}/{size}"


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member of a group, for `evstore consumers`."""

    group: str
    member: int
    size: int
    path: str
    position: int  # the store position up to which the member has handled its streams
    lag: int  # positions of the store after it


def _sizes(store_path: str, name: str) -> set[int]:
    d = group_dir(store_path, name)
    try:
        entries = os.listdir(d)
    except FileNotFoundError:
        return set()
    return {int(m.group(2)) for m in map(_MEMBER.match, entries) if m}


def consume_member(store: Any, name: str, handler: Callable[..., None], group: Any, opener: Callable[..., Any],
                   *, types: Iterable[str] | None, timeout: float | None, limit: int | None,
                   checkpoint_every: int, category: str | None) -> ConsumerStats:
    """`EventStore.consume(..., group=(member, size))`: see the module docstring. `opener` opens (and
    creates) the member store (`evstore.open`).

    Raises: TypeError, ValueError for a bad name or group (nothing is created); EvstoreError when the
    group has members of another size; StoreLocked when this member already runs elsewhere; what
    `evstore.consumer.consume` raises."""
    if not isinstance(name, str) or not name:
        raise ValueError("a consumer name must be a non-empty str")
    if not isinstance(group, tuple) or len(group) != 2 or not all(type(x) is int for x in group):
        raise TypeError(f"group must be a (member, size) tuple of ints, not {group!r}")
    member, size = group
    if not 1 <= size <= 1 << 16 or not 0 <= member < size:
        raise ValueError(f"group needs 1 <= size <= 65536 and 0 <= member < size, not {group!r}")
    store.subscribe(category=category, types=types, timeout=timeout, group=group).stop()  # checks, writes nothing
    other = _sizes(store.path, name) - {size}
    if other:
        raise EvstoreError(f"consumer group {name!r} has members of size {', '.join(map(str, sorted(other)))}; "
                           f"a group's size is fixed: start a group of {size} under a new name")
    path = member_path(store.path, name, member, size)
    with opener(path) as sink:
        return consume(store, name, handler, types=types, timeout=timeout, limit=limit,
                       checkpoint_every=checkpoint_every, category=category, group=group, sink=sink)


def members(store_path: str, head: int, opener: Callable[..., Any]) -> Iterator[MemberInfo]:
    """Every member store of every group of the store at `store_path`, with its position and lag
    behind `head`. `opener(path)` opens a member store read-only."""
    root = os.path.join(store_path, GROUPS_DIR)
    try:
        groups = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for g in groups:
        name = urllib.parse.unquote(g)
        for entry in sorted(os.listdir(os.path.join(root, g))):
            m = _MEMBER.match(entry)
            if not m:
                continue
            i, n = int(m.group(1)), int(m.group(2))
            path = os.path.join(root, g, entry)
            try:
                with opener(path) as s:
                    pos = s.max_tracking(CONSUMER_PREFIX + tracking_name(name, i, n)) or 0
            except EvstoreError:  # created but never written (no index yet): nothing handled
                pos = 0
            yield MemberInfo(name, i, n, path, pos, max(head - pos, 0))


__all__ = ["GROUPS_DIR", "MemberInfo", "consume_member", "group_dir", "member_path", "members", "tracking_name",
           "ConsumingStore", "RecordedEvent"]
