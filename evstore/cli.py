"""The `evstore` command line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import evstore


def _demo(args: argparse.Namespace) -> int:
    """Create a temporary store, write and read an order's lifecycle, and time a short run."""
    with tempfile.TemporaryDirectory(prefix="evstore-demo-") as tmp:
        path = os.path.join(tmp, "orders.evs")
        with evstore.open(path) as store:
            r = store.append("order-1", [evstore.NewEvent("Placed", b'{"sku": 7}')],
                             expected_version=evstore.NO_STREAM)
            store.append("order-1", [evstore.NewEvent("Paid", b'{"amount": 12}')], expected_version=r.last_version)
            try:
                store.append("order-1", [evstore.NewEvent("Paid", b"{}")], expected_version=r.last_version)
            except evstore.WrongExpectedVersion as e:
                print(f"a stale writer was refused: {e}")
            print(f"store at {path} ({store.log_implementation} log)")
            for e in store.read_stream("order-1"):
                print(f"  {e.stream} v{e.version} @{e.position} {e.type} {e.data.decode()}")
            n, batch = args.events, 100
            payload = b'{"amount": 12, "note": "' + b"x" * 180 + b'"}'
            events = [evstore.NewEvent("ItemAdded", payload) for _ in range(batch)]
            t = time.perf_counter()
            for i in range(n // batch):
                store.append("cart-1", events)
            dt_w = time.perf_counter() - t
            t = time.perf_counter()
            got = store.read_stream("cart-1")
            dt_r = time.perf_counter() - t
            print(f"appended {len(got):,} events in commits of {batch} (fsync each): "
                  f"{len(got) / dt_w:,.0f} events/s")
            print(f"read the {len(got):,}-event stream back: {len(got) / dt_r:,.0f} events/s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evstore", description="Inspect, verify and exercise evstore stores.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="write and read a temporary store, with a short timing")
    p.add_argument("--events", type=int, default=20_000, help="events for the timing (default 20000)")
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except evstore.EvstoreError as e:
        print(f"evstore: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("evstore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
