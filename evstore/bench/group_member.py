"""A consumer for the consumer-group benchmark, in a process of its own: `python -m
evstore.bench.group_member STORE CATEGORY MEMBER SIZE` consumes the category's events with a no-op
handler (as member MEMBER of SIZE; SIZE 0: a single consumer) until it has caught up, and prints how
many it handled."""

from __future__ import annotations

import sys

import evstore


def main(argv: list[str]) -> int:
    path, category, member, size = argv[0], argv[1], int(argv[2]), int(argv[3])
    with evstore.open(path, readonly=True) as store:
        group = None if size == 0 else (member, size)
        name = "bench-single" if size == 0 else "bench-group"
        if size == 0:
            # a single consumer commits to a member store too (a group of one), as a reader must
            group = (0, 1)
        stats = store.consume(name, lambda e, ctx: None, category=category, group=group, timeout=0,
                              checkpoint_every=100_000)
    print(stats.handled, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
