"""Snapshots: a stream's folded state saved at a version, so that loading replays only what follows it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from evstore.format.layout import HEADER, HEADER_SIZE
from evstore.records import Stream, type_name

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A saved state of `stream` as of `version`: opaque `data` bytes of snapshot `type` and `schema`.

    `recorded_at` is when it was saved (aware UTC datetime). Snapshots are an optimisation: the events
    remain the truth, and a lost or ignored snapshot only costs a longer replay.
    """

    stream: Stream
    version: int
    type: str
    data: bytes
    schema: int
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Loaded(Generic[S]):
    """The result of `EventStore.load`: the folded `state` and the stream `version` it reflects.

    `version` is what the next `append` expects (`expected_version=loaded.version`).
    """

    state: S
    version: int


def decode_snapshot(buf: Any, off: int, stream: Stream) -> Snapshot:
    """The Snapshot held by the (already verified) SNAPSHOT record at `off` of `buf`."""
    h = HEADER.unpack_from(buf, off)
    t = off + HEADER_SIZE + h[5]
    d = t + h[4] + h[12] + h[6]
    ns = h[9]
    return Snapshot(stream, h[8], type_name(buf[t : t + h[4]]), bytes(buf[d : off + h[1]]), h[11],
                    datetime.fromtimestamp(ns // 1000 / 1e6, tz=timezone.utc))
