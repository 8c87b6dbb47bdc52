"""Helpers of the combiner's hostile tests (tests/test_hostile_combiner_*.py): running appending
threads to their end, and checking a store against the appends acknowledged to them."""

from __future__ import annotations

import threading
from typing import Any


def _run(threads: list[threading.Thread], timeout: float = 30) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "an appending thread never returned"


def _all(s: Any) -> list[tuple[str, int, int, bytes]]:
    return [(str(e.stream), e.version, e.position, bytes(e.data)) for e in s.read_all()]


def _check_store(s: Any, acked: dict[bytes, tuple[str, int, int]], allowed_extra: set[bytes] = frozenset()) -> None:
    """Every acknowledged payload is in the store exactly once, at its acknowledged (stream, version,
    position); positions are contiguous, versions of each stream contiguous; nothing else but
    `allowed_extra` payloads is there."""
    evs = _all(s)
    assert [p for _s, _v, p, _d in evs] == list(range(1, len(evs) + 1))
    per: dict[str, list[int]] = {}
    for st, v, _p, _d in evs:
        per.setdefault(st, []).append(v)
    for st, vs in per.items():
        assert vs == list(range(1, len(vs) + 1)), (st, vs)
    datas = [d for *_x, d in evs]
    dup = {d for d in datas if datas.count(d) > 1}
    assert not dup, f"duplicated events: {sorted(dup)[:5]}"
    where = {d: (st, v, p) for st, v, p, d in evs}
    missing = [d for d in acked if d not in where]
    assert not missing, f"acknowledged but missing: {missing[:5]}"
    wrong = [(d, acked[d], where[d]) for d in acked if acked[d] != where[d]]
    assert not wrong, f"acknowledged elsewhere: {wrong[:5]}"
    extra = set(where) - set(acked) - set(allowed_extra)
    assert not extra, f"written but never acknowledged (and not allowed): {sorted(extra)[:5]}"
