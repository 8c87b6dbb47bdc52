"""The index built as the store runs equals the index rebuilt from the log, key by key; and every read
API turns damage in the log into CorruptedError."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any

import lmdb
import pytest

import evstore
from evstore.storage.index import DB_NAMES
from tests.support import ORDER, ev


def dump_index(path: str) -> dict[str, dict[bytes, bytes]]:
    env = lmdb.open(os.path.join(path, "index"), readonly=True, lock=False, max_dbs=len(DB_NAMES) + 2)
    try:
        out = {}
        for name in DB_NAMES:
            db = env.open_db(name, create=False)
            with env.begin() as txn:
                out[name.decode()] = {bytes(k): bytes(v) for k, v in txn.cursor(db)}
        return out
    finally:
        env.close()


def mixed_workload(s: evstore.EventStore) -> None:
    u = uuid.uuid4()
    s.append("order-1", [ev("Placed"), ev("Paid", tags=("vip", "eu"))])
    s.append(u, [ev("Thing", b"x" * 3000)])
    s.append_many([("order-2", [ev("Placed")], evstore.NO_STREAM), ("acct-1", [ev("Opened", tags=("eu",))],
                                                                     evstore.ANY)], tracking=("up", 5))
    s.save_snapshot("order-1", 2, b"snap", type="OrderState")
    s.append("order-1", [ev("Shipped", id=uuid.uuid4())])
    s.delete_stream("acct-1")
    s.append("acct-1", [ev("Reopened")])
    s.close_stream("order-2")
    s.append_many([], tracking=("up", 9))
    s.append("gone-1", [ev("A"), ev("B")])
    s.delete_stream("gone-1", tombstone=True)
    s.append("t-1", [ev("T", tags=("eu",))], condition=evstore.Condition([evstore.QueryItem(tags=["none"])], 0))
    for i in range(30):  # rolls at the small segment size
        s.append(f"bulk-{i % 4}", [ev("Bulk", b"%d" % i * 40)])
    s.save_snapshot(u, 1, b"u-snap", type="T")


def test_the_live_index_equals_the_index_rebuilt_from_the_log(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, segment_size=4096, lifecycles={"order": ORDER}) as s:
        mixed_workload(s)
    live = dump_index(store_path)
    shutil.rmtree(os.path.join(store_path, "index"))
    with evstore.open(store_path, log_impl=impl):
        pass
    rebuilt = dump_index(store_path)
    for name in live:
        assert live[name] == rebuilt[name], name
    assert sum(len(v) for v in live.values()) > 50


# -- every read API reports damage as CorruptedError --------------------------------------------------

READS: list[tuple[str, Callable[[evstore.EventStore], Any]]] = [
    ("read_stream", lambda s: s.read_stream("order-1")),
    ("read_all", lambda s: list(s.read_all())),
    ("read_all types", lambda s: list(s.read_all(types=["Paid"]))),
    ("query", lambda s: s.query([evstore.QueryItem(tags=["vip"])])),
    ("event_at", lambda s: s.event_at(2)),
    ("load_snapshot", lambda s: s.load_snapshot("order-1")),
    ("load", lambda s: s.load("order-1", apply=lambda st, e: st + [e.type], initial=[])),
    ("subscribe", lambda s: [e for e, _ in zip(s.subscribe(gt=0, timeout=0.2), range(100))]),
    ("stream_state", lambda s: s.stream_state("order-1")),
]


@pytest.mark.parametrize("name, read", READS, ids=[r[0] for r in READS])
def test_every_read_turns_damage_into_corrupted_error(store_path: str, impl: str, name: str,
                                                      read: Callable[[evstore.EventStore], Any]) -> None:
    with evstore.open(store_path, log_impl=impl) as s:  # no lifecycle: no recorded state to read instead
        s.append("order-1", [ev("Placed"), ev("Paid", tags=("vip",))])
        s.save_snapshot("order-1", 2, b"snap-bytes", type="OrderState")
        s.append("order-1", [ev("Shipped")])
    seg = os.path.join(store_path, "log", "00000000000000000001.seg")
    raw = open(seg, "rb").read()
    # damage a byte inside the payload of each record the reads touch: the events' and the snapshot's
    with open(seg, "r+b") as f:
        for marker in (b"Placed", b"Paid", b"snap-bytes", b"Shipped"):
            i = raw.index(marker)
            f.seek(i)
            f.write(bytes([raw[i] ^ 0x20]))
    with evstore.open(store_path, log_impl=impl, readonly=True, lifecycles={"order": ORDER}) as s:
        with pytest.raises(evstore.CorruptedError):
            read(s)
