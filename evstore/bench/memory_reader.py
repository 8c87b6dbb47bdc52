"""The replay that `replay_memory` measures, in a fresh process:
`python -m evstore.bench.memory_reader PATH BACKEND`.

Reads every event of the store (BACKEND "c" or "python": `read_all`) or of the SQLite recorder's
database ("sqlite": select_notifications in pages of 1,000) at PATH, touching each payload, and prints
one JSON object: the events read, VmRSS at the start, VmHWM at the end (reset to the RSS at the start
where the kernel allows), and the anonymous / file-backed resident memory. Nothing is imported before
the start figures but the reader itself and what the backend needs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any


def status_kb() -> dict[str, int]:
    """The kB figures of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0])
    return out


def _source(path: str, backend: str) -> tuple[Callable[[], Iterable[Any]], Callable[[Any], Any]]:
    """(the replay, the payload of one item)."""
    if backend == "sqlite":
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        rec = SQLiteApplicationRecorder(SQLiteDatastore(path))

        def items() -> Iterator[Any]:
            start = 1
            while True:
                ns = rec.select_notifications(start, 1000)
                if not ns:
                    return
                yield from ns
                start = ns[-1].id + 1

        return items, lambda e: e.state
    import evstore

    store = evstore.open(path, log_impl=backend)
    return store.read_all, lambda e: e.data


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    path, backend = args[0], args[1]
    items, get = _source(path, backend)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    base = status_kb()
    n = 0
    peak_anon = base.get("RssAnon", 0)
    for e in items():
        get(e)
        n += 1
        if n % 20000 == 0:
            peak_anon = max(peak_anon, status_kb().get("RssAnon", 0))
    end = status_kb()
    print(json.dumps({"n": n, "base_rss": base["VmRSS"], "hwm": end["VmHWM"], "end_rss": end["VmRSS"],
                      "base_anon": base.get("RssAnon", 0), "peak_anon": peak_anon,
                      "end_file": end.get("RssFile", 0)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
