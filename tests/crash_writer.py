"""A writer process for crash tests: random commits, each acknowledged on stdout once it returns.

Usage: python crash_writer.py STORE SEED LOG_IMPL [SEGMENT_SIZE]

Commits are single- and multi-stream appends (some with a tracking record), snapshots, soft deletes
and appends to lifecycle-bound `order-` streams (whose `$state` marks ride in the same commit).
Every event's data is derived from (commit number, index in commit, events in commit), so the
checker can tell a whole commit from a partial one and check every byte. Each line printed (and
flushed) after a call returns is an acknowledgement, a JSON object with its "kind".
"""

from __future__ import annotations

import json
import random
import sys

import evstore

ORDER = evstore.Lifecycle(
    "order", initial="new",
    transitions={("new", "Placed"): "open", ("open", "ItemAdded"): "open", ("open", "Paid"): "paid",
                 ("paid", "Refunded"): "open"},
    final=set(),
) if hasattr(evstore, "Lifecycle") else None


def payload(commit: int, i: int, n: int, size: int) -> bytes:
    head = f"{commit}:{i}:{n}:".encode()
    return head + bytes((commit * 31 + i * 7 + k) % 251 for k in range(size))


def order_types(state: str | None, n: int, rnd: random.Random) -> list[str]:
    """n event types that the ORDER lifecycle accepts from `state`."""
    out = []
    for _ in range(n):
        if state in (None, "new"):
            t, state = "Placed", "open"
        elif state == "open":
            t = rnd.choice(["ItemAdded", "ItemAdded", "Paid"])
            state = "paid" if t == "Paid" else "open"
        else:
            t, state = "Refunded", "open"
        out.append(t)
    return out


def main() -> None:
    path, seed, impl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    segment_size = int(sys.argv[4]) if len(sys.argv) > 4 else 1 << 20
    rnd = random.Random(seed)
    with evstore.open(path, log_impl=impl, segment_size=segment_size, lifecycles={"order": ORDER}) as store:
        versions: dict[str, int] = {}
        commit = seed * 1_000_000  # unique across restarts: each run has its own seed
        tracked = store.max_tracking("up") or 0
        print(json.dumps({"kind": "ready"}), flush=True)
        while True:
            roll = rnd.random()
            if roll < 0.08 and versions:
                s = rnd.choice(sorted(versions))
                v = store.stream_version(s)
                if v:
                    size = rnd.randint(0, 300)
                    try:
                        store.save_snapshot(s, v, payload(commit, 0, 1, size), type="Snap")
                    except ValueError:  # nothing visible since a soft delete: nothing to snapshot
                        continue
                    print(json.dumps({"kind": "snapshot", "stream": s, "version": v, "commit": commit,
                                      "size": size}), flush=True)
                    commit += 1
                continue
            if roll < 0.11 and versions:
                s = rnd.choice(sorted(k for k in versions if not k.startswith("order-")) or ["s0"])
                store.delete_stream(s)
                print(json.dumps({"kind": "delete", "stream": s, "version": store.stream_version(s)}), flush=True)
                continue
            names = [f"s{k}" for k in range(8)] + [f"order-{k}" for k in range(4)]
            streams = rnd.sample(names, rnd.randint(1, 3))
            counts = [rnd.randint(1, 5) for _ in streams]
            total = sum(counts)
            parts = []
            i = 0
            for s, c in zip(streams, counts):
                v = versions.get(s)
                if v is None:
                    v = store.stream_version(s)
                types = order_types(store.stream_state(s), c, rnd) if s.startswith("order-") \
                    else [f"T{(i + k) % 3}" for k in range(c)]
                events = []
                for t in types:
                    events.append(evstore.NewEvent(t, payload(commit, i, total, rnd.randint(0, 600))))
                    i += 1
                parts.append((s, events, v))
            tracking = None
            if rnd.random() < 0.3:
                tracked += rnd.randint(1, 3)
                tracking = ("up", tracked)
            results = store.append_many(parts, tracking=tracking)
            for r in results:
                versions[r.stream] = r.last_version
            print(json.dumps({"kind": "append", "parts": [[r.stream, r.last_version, r.last_position]
                                                          for r in results], "tracking": tracked if tracking else None}),
                  flush=True)
            commit += total


if __name__ == "__main__":
    main()
