"""A consumer-group member process for the crash test: for each event of category 'order' of its
streams, appends a 'Handled' event naming it (stream, version, position) to its member store."""

from __future__ import annotations

import json
import sys
import time

import evstore


def handler(event: evstore.RecordedEvent, ctx: object) -> None:
    time.sleep(0.0005)
    body = json.dumps([event.stream, event.version, event.position]).encode()
    ctx.append("handled-" + str(event.stream), [evstore.NewEvent("Handled", body)])  # type: ignore[attr-defined]


if __name__ == "__main__":
    path, member, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with evstore.open(path, readonly=True) as store:
        print("ready", flush=True)
        store.consume("proj", handler, category="order", group=(member, size), timeout=float(sys.argv[4]))
