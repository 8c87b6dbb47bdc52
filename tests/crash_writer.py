"""A writer process for crash tests: appends random commits and reports each acknowledged one.

Usage: python crash_writer.py STORE SEED LOG_IMPL [SEGMENT_SIZE]

Every event's data is derived from (commit number, index in commit, events in commit), so that the
checker can tell a whole commit from a partial one and check every byte. Each line printed (and
flushed) after an append returns is an acknowledgement: a JSON list of [stream, last_version,
last_position] per part.
"""

from __future__ import annotations

import json
import random
import sys

import evstore


def payload(commit: int, i: int, n: int, size: int) -> bytes:
    head = f"{commit}:{i}:{n}:".encode()
    return head + bytes((commit * 31 + i * 7 + k) % 251 for k in range(size))


def main() -> None:
    path, seed, impl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    segment_size = int(sys.argv[4]) if len(sys.argv) > 4 else 1 << 20
    rnd = random.Random(seed)
    with evstore.open(path, log_impl=impl, segment_size=segment_size) as store:
        versions: dict[str, int] = {}
        commit = store.head() + 1  # unique across restarts: positions only grow
        print(json.dumps({"ready": True}), flush=True)
        while True:
            streams = rnd.sample([f"s{k}" for k in range(12)], rnd.randint(1, 3))
            counts = [rnd.randint(1, 5) for _ in streams]
            total = sum(counts)
            parts = []
            i = 0
            for s, c in zip(streams, counts):
                events = []
                for _ in range(c):
                    events.append(evstore.NewEvent(f"T{i % 3}", payload(commit, i, total, rnd.randint(0, 600))))
                    i += 1
                v = versions.get(s)
                if v is None:
                    v = store.stream_version(s)
                parts.append((s, events, v))
            results = store.append_many(parts)
            for r in results:
                versions[r.stream] = r.last_version
            print(json.dumps([[r.stream, r.last_version, r.last_position] for r in results]), flush=True)
            commit += total


if __name__ == "__main__":
    main()
