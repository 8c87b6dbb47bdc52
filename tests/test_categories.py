"""Categories: a stream's category is its id before the first "-"; reads, subscriptions and queries by
category are served by the category postings, in position order, never skipping or repeating an
event, also across processes and after the index is rebuilt (or was built before categories)."""

from __future__ import annotations

import os
import random
import subprocess
import uuid

import lmdb
import pytest

import evstore
from evstore import ANY, NewEvent
from evstore.lifecycle import category
from evstore.storage.index import DB_NAMES

from conftest import PY, python_env


def ev(t: str = "A", data: bytes = b"x") -> NewEvent:
    return NewEvent(t, data)


def fill(store: evstore.EventStore, n: int, seed: int = 1) -> None:
    """Commits of one stream, and mixed commits (several categories, UUIDs, ids with no category)."""
    rnd = random.Random(seed)
    cats = ["order", "user", "cart", "ord"]
    for i in range(n):
        c = rnd.choice(cats)
        r = rnd.random()
        if r < 0.3:
            store.append_many([(f"{c}-{i}", [ev("A")], ANY), (f"user-m{i}", [ev("B"), ev("A")], ANY),
                               (uuid.uuid4(), [ev("A")], ANY), ("nocategory", [ev("B")], ANY)])
        elif r < 0.35:
            store.close_stream(f"{c}-closed{i}")  # an event-less commit between postings
        else:
            store.append(f"{c}-{i % 37}", [ev("A" if i % 2 else "B")] * rnd.randint(1, 4))


def expected(store: evstore.EventStore, cat: str, types: set[str] | None = None) -> list[int]:
    return [e.position for e in store.read_all() if category(e.stream) == cat and (types is None or e.type in types)]


def test_category_read_returns_exactly_the_category_in_position_order(store: evstore.EventStore) -> None:
    fill(store, 400)
    for cat in ("order", "user", "cart", "ord", "none"):
        want = expected(store, cat)
        assert [e.position for e in store.read_all(category=cat)] == want
        assert all(category(e.stream) == cat for e in store.read_all(category=cat))
        head = store.head()
        for gt in (0, 1, 17, head // 2, head - 1, head):
            for lte in (None, head // 3, head):
                for limit in (None, 0, 1, 5, 1000):
                    got = [e.position for e in store.read_all(category=cat, gt=gt, lte=lte, limit=limit)]
                    w = [p for p in want if gt < p <= (head if lte is None else lte)]
                    assert got == w[:limit], (cat, gt, lte, limit)
        for types in (["A"], ["B"], ["A", "B"], ["C"]):
            assert [e.position for e in store.read_all(category=cat, types=types)] == expected(store, cat, set(types))
        chunks = store.all_chunks(category=cat)
        assert sum(len(offs) for _buf, offs in chunks) == len(want)


def test_a_category_read_pages_its_postings(store: evstore.EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from evstore.engine import categories

    monkeypatch.setattr(categories, "PAGE", 3)
    monkeypatch.setattr(categories, "FIRST_PAGE", 1)
    monkeypatch.setattr(categories, "REGION_EVENTS", 2)
    fill(store, 150, seed=3)
    for cat in ("order", "user"):
        want = expected(store, cat)
        assert [e.position for e in store.read_all(category=cat)] == want
        for limit in (1, 2, 3, 4, 7):
            assert [e.position for e in store.read_all(category=cat, limit=limit, gt=5)] == [
                p for p in want if p > 5][:limit]


def test_a_category_is_the_id_before_the_first_dash(store: evstore.EventStore) -> None:
    store.append("a-b-c", [ev()])
    store.append("a", [ev()])  # no dash: no category
    store.append("ab-1", [ev()])
    store.append("a-", [ev()])
    store.append(uuid.UUID(bytes=b"a-" + b"\x00" * 14), [ev()])  # a UUID has no category
    assert [e.stream for e in store.read_all(category="a")] == ["a-b-c", "a-"]
    assert [e.stream for e in store.read_all(category="ab")] == ["ab-1"]
    assert list(store.read_all(category="b")) == []


@pytest.mark.parametrize("bad, exc", [("", ValueError), ("a-b", ValueError), (3, TypeError), (b"a", TypeError),
                                      ("x" * 401, ValueError)])
def test_a_bad_category_is_refused(store: evstore.EventStore, bad: object, exc: type[Exception]) -> None:
    store.append("a-1", [ev()])
    with pytest.raises(exc):
        store.read_all(category=bad)  # type: ignore[arg-type]
    with pytest.raises(exc):
        store.subscribe(category=bad)  # type: ignore[arg-type]
    with pytest.raises(exc):
        store.query([evstore.QueryItem(types=["A"])], category=bad)  # type: ignore[arg-type]


def test_subscribe_and_query_by_category(store: evstore.EventStore) -> None:
    fill(store, 100, seed=5)
    want = expected(store, "order")
    with store.subscribe(category="order", timeout=0.2) as sub:
        got = [e.position for e in sub]
    assert got == want
    with store.subscribe(category="order", gt=want[2], timeout=0.5) as sub:
        seen = [next(sub).position for _ in range(len(want) - 3)]
        store.append("order-new", [ev(), ev()])
        store.append("user-new", [ev()])
        seen += [next(sub).position, next(sub).position]
    assert seen == want[3:] + [store.head() - 2, store.head() - 1]
    q = store.query([evstore.QueryItem(types=["A"])], category="user")
    assert [e.position for e in q] == expected(store, "user", {"A"})


def test_category_reads_survive_a_reindex(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        fill(s, 120, seed=7)
        want = {c: expected(s, c) for c in ("order", "user", "cart")}
    from evstore.recovery import reindex

    reindex(store_path)
    with evstore.open(store_path, log_impl=impl) as s:
        for c, w in want.items():
            assert [e.position for e in s.read_all(category=c)] == w


def _make_old_index(path: str) -> None:
    """Turn a store's index into one an evstore before category postings built: no `categories`, no
    `index_version`."""
    env = lmdb.open(os.path.join(path, "index"), max_dbs=len(DB_NAMES) + 2)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"categories", txn=txn), delete=True)
        txn.delete(b"index_version", db=env.open_db(b"meta", txn=txn))
    env.close()


def test_an_index_from_before_categories_is_rebuilt_not_read_as_empty(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl) as s:
        fill(s, 60, seed=9)
        want = expected(s, "order")
    assert want
    _make_old_index(store_path)
    with pytest.raises(evstore.CorruptedError, match="rebuil"):
        evstore.open(store_path, readonly=True, log_impl=impl)  # a reader cannot rebuild: it says so
    with evstore.open(store_path, log_impl=impl) as s:  # a writer rebuilds it from the log
        assert [e.position for e in s.read_all(category="order")] == want
    with evstore.open(store_path, readonly=True, log_impl=impl) as r:
        assert [e.position for e in r.read_all(category="order")] == want
    # an old index whose `categories` table exists but is empty (a writer of this version opened it)
    _make_old_index(store_path)
    env = lmdb.open(os.path.join(store_path, "index"), max_dbs=len(DB_NAMES) + 2)
    env.open_db(b"categories")
    env.close()
    with pytest.raises(evstore.CorruptedError, match="older evstore"):
        evstore.open(store_path, readonly=True, log_impl=impl)
    with evstore.open(store_path, log_impl=impl) as s:
        assert [e.position for e in s.read_all(category="order")] == want


READER = r"""
import sys, evstore
path, n = sys.argv[1], int(sys.argv[2])
with evstore.open(path, readonly=True) as s:
    got = []
    with s.subscribe(category="order", timeout=10) as sub:
        for e in sub:
            assert e.stream.startswith("order-"), e.stream
            got.append(e.position)
            if len(got) == n:
                break
print(" ".join(map(str, got)))
"""


def test_a_reader_process_follows_a_category_while_the_writer_appends(store_path: str, impl: str) -> None:
    with evstore.open(store_path, log_impl=impl, durability="os") as s:
        s.append("order-0", [ev()])
        s.append("user-0", [ev()])
        n = 1 + 150
        p = subprocess.Popen([PY, "-c", READER, store_path, str(n)], env=python_env(EVSTORE_PURE="1" if impl ==
                             "python" else ""), stdout=subprocess.PIPE, text=True)
        rnd = random.Random(2)
        for i in range(300):
            if i % 2:
                s.append(f"order-{rnd.randint(0, 9)}", [ev()])
            else:
                s.append_many([(f"user-{i}", [ev()], ANY), (f"order-x{i}", [ev()], ANY)] if i % 4 == 0
                              else [(f"user-{i}", [ev()], ANY)])
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        want = expected(s, "order")[:n]
    assert [int(x) for x in out.split()] == want


def test_cli_read_and_tail_by_category(store_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from evstore.cli import main

    with evstore.open(store_path) as s:
        fill(s, 80, seed=11)
        want = expected(s, "cart")
    assert main(["read", store_path, "--category", "cart", "--format", "jsonl"]) == 0
    got = [json.loads(line)["position"] for line in capsys.readouterr().out.splitlines()]
    assert got == want
    assert main(["read", store_path, "--category", "cart", "--desc", "--limit", "3", "--format", "jsonl"]) == 0
    assert [json.loads(x)["position"] for x in capsys.readouterr().out.splitlines()] == want[::-1][:3]
    assert main(["read", store_path, "--category", "cart", "--from", str(want[2]), "--to", str(want[4]),
                 "--format", "jsonl"]) == 0
    assert [json.loads(x)["position"] for x in capsys.readouterr().out.splitlines()] == want[2:5]
    assert main(["tail", store_path, "--category", "cart", "-n", "4", "--type", "A", "--format", "jsonl"]) == 0
    with evstore.open(store_path, readonly=True) as r:
        assert [json.loads(x)["position"] for x in capsys.readouterr().out.splitlines()] == expected(
            r, "cart", {"A"})[-4:]
    assert main(["read", store_path, "cart-1", "--category", "cart"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["read", store_path]) == 1
    assert main(["read", store_path, "--category", "a-b"]) == 1
    assert "first '-'" in capsys.readouterr().err


def test_consume_a_category(store: evstore.EventStore) -> None:
    fill(store, 60, seed=13)
    want = expected(store, "cart")
    seen: list[int] = []

    def handler(e: evstore.RecordedEvent, ctx: object) -> None:
        seen.append(e.position)

    stats = store.consume("carts", handler, category="cart", timeout=0.1)
    assert seen == want and stats.handled == len(want)
    store.append("cart-late", [ev()])
    store.append("user-late", [ev()])
    store.consume("carts", handler, category="cart", timeout=0.1)
    assert seen == want + [store.head() - 1]
