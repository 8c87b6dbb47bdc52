"""Postings: the index entries that find events by what they are rather than by stream — event types,
categories and tags — and their cursor walks. The sub-databases are created and written by
`evstore.storage.index` (its table lists them); this module owns their key layouts.

| db | key | value |
|---|---|---|
| `types` | type id (u32), first position | segment, offset, events, bytes of the commit |
| `categories` | category length (u16), category (UTF-8), first position | segment, offset, events, bytes of the commit; events of the category in it; the `stream_hash` of its stream and 1 when they are all of one stream (else 0, 0) |
| `tags` | tag (UTF-8), NUL, position | segment, offset of the event |

A stream's category is its id up to the first "-" (`evstore.lifecycle.category`); UUID streams and
ids without a "-" have none. Keys are big-endian so that they sort by position.

A stream's hash (`stream_hash`) is the CRC-32 (zlib's, ISO-HDLC polynomial) of its stored id: the
UTF-8 bytes of a text id, the 16 bytes of a UUID. It decides which member of a consumer group handles
the stream (hash modulo the group's size); it is computed in Python from the id alone, so it is the
same for both log implementations, on every platform and across restarts.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator

import lmdb

from evstore.storage.index import COMMIT_KEY, EXTENT_VAL, TAG_VAL, TYPE_KEY, U32, CommitLoc, Index

CATEGORY_LEN = struct.Struct(">H")
# segment, offset, events, bytes of the commit; events of the category; its one stream's hash, one stream
CATEGORY_VAL = struct.Struct("<QQIIIIB")
# first position, segment, offset, events, bytes, events of the category, stream hash, one stream (1 or 0)
CategoryLoc = tuple[int, int, int, int, int, int, int, int]


def stream_hash(stored: bytes) -> int:
    """The hash of a stream id as stored (UTF-8, or the 16 bytes of a UUID): see the module docstring."""
    return zlib.crc32(stored)


def category_of_key(key: bytes) -> bytes | None:
    """The category (UTF-8) of a stream with index key `key` (`s` + UTF-8 or `u` + UUID), or None."""
    if key[:1] != b"s":
        return None
    i = key.find(b"-", 1)
    return key[1:i] if i > 0 else None


def category_prefix(category: bytes) -> bytes:
    """The key prefix of a category's postings."""
    return CATEGORY_LEN.pack(len(category)) + category


def category_postings_of(runs: Iterable[tuple[bytes, int, int]]) -> dict[bytes, tuple[int, int, int]]:
    """Category -> (events of it, its one stream's hash, 1) or (events, 0, 0) when several of its
    streams are in the commit, of a commit's runs (stream key, first version, last version)."""
    counts: dict[bytes, tuple[int, int, int]] = {}
    keys: dict[bytes, bytes | None] = {}
    for key, v0, v1 in runs:
        cat = category_of_key(key)
        if cat is not None:
            n = counts[cat][0] if cat in counts else 0
            counts[cat] = (n + v1 - v0 + 1, 0, 0)
            keys[cat] = key if keys.get(cat, key) == key else None
    for cat, one in keys.items():
        if one is not None:
            counts[cat] = (counts[cat][0], stream_hash(one[1:]), 1)
    return counts


def category_postings(index: Index, txn: lmdb.Transaction, category: bytes, gt: int, stop: int,
                      most: int) -> list[CategoryLoc]:
    """The first `most` commits holding events of `category` with positions in gt+1..stop, in
    position order, as (first position, segment, offset, events, bytes, events of the category)."""
    prefix = category_prefix(category)
    plen = len(prefix)
    want = plen + 8
    unpack_key = COMMIT_KEY.unpack_from
    unpack_val = CATEGORY_VAL.unpack
    out: list[CategoryLoc] = []
    cur = txn.cursor(index.db["categories"])
    ok = cur.prev() if cur.set_range(prefix + COMMIT_KEY.pack(gt + 1)) else cur.last()
    if not ok:
        ok = cur.first()
    else:  # the commit before gt + 1 may still hold positions above gt; else start after it
        k = cur.key()
        if len(k) != want or k[:plen] != prefix or unpack_key(k, plen)[0] + unpack_val(cur.value())[2] <= gt + 1:
            ok = cur.next()
    if not ok:
        return out
    hi = prefix + COMMIT_KEY.pack(stop)  # every key of the category up to stop sorts at or below it
    append = out.append
    for k, v in cur.iternext():
        if hi < k or k[:plen] != prefix:  # type: ignore[operator]  # keys are bytes (buffers=False)
            break
        append((unpack_key(k, plen)[0],) + unpack_val(v))
        if len(out) >= most:
            break
    return out


def category_names(index: Index, txn: lmdb.Transaction) -> list[bytes]:
    """Every category with postings, in key order (shorter names first)."""
    out: list[bytes] = []
    cur = txn.cursor(index.db["categories"])
    ok = cur.first()
    while ok:
        k = bytes(cur.key())
        n = CATEGORY_LEN.unpack_from(k)[0]
        cat = k[2 : 2 + n]
        out.append(cat)
        ok = cur.set_range(CATEGORY_LEN.pack(n) + cat + b"\xff" * 9)
    return out


def type_postings(index: Index, txn: lmdb.Transaction, names: tuple[bytes, ...], gt: int,
                  stop: int) -> list[CommitLoc]:
    """The commits holding events of any of the type `names` with positions in gt+1..stop, in
    position order (one posting per type per commit)."""
    commits: dict[int, CommitLoc] = {}
    db = index.db["types"]
    for tb in names:
        raw = txn.get(tb, db=index.db["typenames"])
        if raw is None:
            continue
        tid = U32.unpack(raw)[0]
        cur = txn.cursor(db)
        if not cur.set_range(TYPE_KEY.pack(tid, gt + 1)):
            cur.last()
        t, p = TYPE_KEY.unpack(cur.key())
        if t != tid or p > gt + 1:  # the commit before may still hold positions above gt
            if cur.prev():
                t, p = TYPE_KEY.unpack(cur.key())
                if t != tid or p + EXTENT_VAL.unpack(cur.value())[2] <= gt + 1:
                    cur.next()
            else:
                cur.first()
        for k, v in cur:
            t, p = TYPE_KEY.unpack(k)
            if t != tid or p > stop:
                break
            if p not in commits:
                commits[p] = (p, *EXTENT_VAL.unpack(v))
    return [commits[p] for p in sorted(commits)]


def tag_postings(index: Index, txn: lmdb.Transaction, tag: bytes, gt: int,
                 stop: int) -> Iterator[tuple[int, int, int]]:
    """(position, segment, offset) of the events carrying `tag` with positions in gt+1..stop."""
    first = tag + b"\x00"
    cur = txn.cursor(index.db["tags"])
    if not cur.set_range(first + COMMIT_KEY.pack(gt + 1)):
        return
    for kraw, v in cur:
        k = bytes(kraw)
        if not k.startswith(first):
            break
        pos = COMMIT_KEY.unpack_from(k, len(first))[0]
        if pos > stop:
            break
        seg, off = TAG_VAL.unpack(v)
        yield pos, seg, off
