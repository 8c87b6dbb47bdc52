"""A consumer process for the crash test: copies every 'in' event to the 'out' stream, slowly."""

from __future__ import annotations

import sys
import time

import evstore
from evstore.consumer import consume


def handler(event: evstore.RecordedEvent, ctx: object) -> None:
    if event.stream != "in":
        return
    time.sleep(0.001)
    ctx.append("out", [evstore.NewEvent("Copied", str(event.position).encode())])  # type: ignore[attr-defined]


if __name__ == "__main__":
    with evstore.open(sys.argv[1]) as store:
        print("ready", flush=True)
        consume(store, "copier", handler, timeout=float(sys.argv[2]))
