"""The physical floors the workloads are compared with: write (+ fdatasync) of the same bytes per
commit, a py-lmdb cursor scan of the same number of values, a memcpy of the same bytes."""

from __future__ import annotations

import os
import shutil
import threading
import time

from evstore.bench.context import PAYLOAD, Ctx, best, count


def raw_write(ctx: Ctx, commits: int, commit_bytes: int, sync: bool) -> float:
    """write (+ fdatasync) of `commits` buffers of `commit_bytes`, appending to a file."""
    path = ctx.path("raw.log")
    buf = b"r" * commit_bytes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, buf)
        os.fdatasync(fd)
        t = time.perf_counter()
        for _ in range(commits):
            os.write(fd, buf)
            if sync:
                os.fdatasync(fd)
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(path)
    return dt


def raw_pwrite(ctx: Ctx, commits: int, commit_bytes: int) -> float:
    """pwrite + fdatasync of `commits` buffers of `commit_bytes` into a file allocated beforehand
    (posix_fallocate, synced): no write changes the file's size, the device's best for a log."""
    path = ctx.path("raw-prealloc.log")
    buf = b"r" * commit_bytes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, (commits + 1) * commit_bytes)
        os.fsync(fd)
        os.pwrite(fd, buf, 0)
        os.fdatasync(fd)
        t = time.perf_counter()
        for i in range(1, commits + 1):
            os.pwrite(fd, buf, i * commit_bytes)
            os.fdatasync(fd)
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(path)
    return dt


def raw_pwrite_zeroed(ctx: Ctx, commits: int, commit_bytes: int, chunk: int = 1 << 20, ahead: int = 4 << 20) -> float:
    """pwrite + fdatasync of `commits` buffers of `commit_bytes` into allocated space that a second
    thread keeps written with zeros `ahead` bytes past the last commit, `chunk` bytes (and one
    fdatasync) at a time, its work timed with the commits': overwriting written blocks, an
    fdatasync commits no extent conversion to the journal (multi-block commits are faster so)."""
    path = ctx.path("raw-zeroed.log")
    buf = b"r" * commit_bytes
    size = (commits + 1) * commit_bytes + ahead + chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    zfd = os.open(path, os.O_WRONLY)
    cond = threading.Condition()
    state = {"tail": commit_bytes, "zeroed": commit_bytes, "stop": False}

    def zero() -> None:
        zeros = bytes(chunk)
        while True:
            with cond:
                while not state["stop"] and state["zeroed"] + chunk > state["tail"] + ahead:
                    cond.wait()
                if state["stop"]:
                    return
                at = max(state["zeroed"], state["tail"] + chunk)
            os.pwrite(zfd, zeros, at)
            os.fdatasync(zfd)
            with cond:
                state["zeroed"] = at + chunk

    th = threading.Thread(target=zero)
    try:
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
        os.pwrite(fd, buf, 0)
        os.fdatasync(fd)
        th.start()
        t = time.perf_counter()
        for i in range(1, commits + 1):
            os.pwrite(fd, buf, i * commit_bytes)
            os.fdatasync(fd)
            with cond:
                state["tail"] = (i + 1) * commit_bytes
                if state["zeroed"] + chunk <= state["tail"] + ahead:
                    cond.notify()
        dt = time.perf_counter() - t
    finally:
        with cond:
            state["stop"] = True
            cond.notify()
        if th.is_alive():
            th.join()
        os.close(zfd)
        os.close(fd)
        os.unlink(path)
    return dt


def lmdb_scan(ctx: Ctx, n: int) -> float:
    """Best time of a py-lmdb cursor scan over n entries (16-byte keys, 200-byte values)."""
    import lmdb

    path = ctx.path("ref.lmdb")
    env = lmdb.open(path, map_size=1 << 30, sync=False, metasync=False)
    try:
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(i.to_bytes(16, "big"), PAYLOAD, append=True)

        def scan() -> int:
            with env.begin() as txn:
                return count(txn.cursor().iternext(keys=True, values=True))

        dt, _ = best(scan, ctx.repeat)
    finally:
        env.close()
        shutil.rmtree(path, ignore_errors=True)
    return dt


def memcpy(ctx: Ctx, nbytes: int) -> float:
    """Best time of copying nbytes into an existing buffer (memcpy through a memoryview)."""
    src = bytearray(b"m" * nbytes)
    dst = bytearray(nbytes)  # an existing, already faulted-in buffer: the copy alone is timed
    view = memoryview(dst)

    def cp() -> None:
        view[:] = src

    dt, _ = best(cp, ctx.repeat)
    return dt
