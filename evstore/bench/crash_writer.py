"""The writer that `open_after_crash` kills: `python -m evstore.bench.crash_writer PATH IMPL N`.

Appends N events (commits of 100, durability="os") to the store at PATH with log IMPL ("c" or
"python"), prints "done" and waits to be killed with SIGKILL.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Sequence

import evstore


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    path, impl, n = args[0], args[1], int(args[2])
    store = evstore.open(path, log_impl=impl, durability="os")
    events = [evstore.NewEvent("Crash", b"c" * 200) for _ in range(100)]
    sid = uuid.uuid4()
    v = 0
    for _ in range(max(1, n // 100)):
        store.append(sid, events, expected_version=v if v else evstore.NO_STREAM)
        v += 100
    print("done", flush=True)
    time.sleep(600)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
