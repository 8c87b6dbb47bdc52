"""Combined appends (durability="fsync"): the thread at the front of the queue writes the fast-path
appends of the threads queued behind it, then syncs once for them all.

Appending threads that find the front taken queue their append and wait on a lock of their own:
they do not run the encoder or take the writer lock, so a round of N appends costs N queue entries
and N wake-ups instead of N threads taking turns at the writer lock (each C call under it releases
the GIL and lets a queued thread in, only to block it again). The front thread takes the whole queue,
checks and writes each append in order under the writer lock (`Writer.append_plain_once`, the same
checks and errors as an append of its own) and syncs (`GroupCommit.await_durable`, the group commit
of every thread). Then it wakes the threads of its batch and hands the front to the first thread
that queued meanwhile: the next batch gathers while this one syncs. (Handing the front on before the
sync, to write the next batch during it, was measured to give batches of one: each new front found
one thread queued.)

A lone appender finds the front free and nobody queued: it writes and syncs its own append, with no
queue entry, and wakes nobody. After a
batch of several, the next front thread first lets the other woken threads run (`time.sleep(0)`), so
that they queue behind it instead of each taking the front alone in turn (measured: batches of one
and of eight in alternation, without it).

Each thread returns its own append's result or raises its own error; every thread, woken or not,
then waits for its own commit's durability itself (at once, on the group's durable hint, when its
front thread synced it), so that a front thread interrupted before or during its sync leaves each
commit to be synced by its own thread. An interrupted front thread puts the appends it had not
written back at the head of the queue and hands the front on.

`lock` (a leaf: no lock is taken under it) guards `queue` and `front`; a request's fields are written
by the one front thread that took it, before its lock is released.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from evstore.records import AppendResult, Stream

if TYPE_CHECKING:
    from evstore.engine.writer import Writer

Fields = tuple[Sequence[object], Sequence[object], Sequence[object]]


class Request:
    """One queued append and what became of it."""

    __slots__ = ("args", "wait", "done", "result", "seq", "error")

    def __init__(self, args: tuple[Stream, list[Any], Any, Fields | None]) -> None:
        self.args = args
        self.wait: threading.Lock | None = None  # held while the thread waits; released to wake it
        self.done = False  # written, refused, or declined (result None): set by its front thread
        self.result: AppendResult | None = None
        self.seq = 0  # the commit's sequence number, for GroupCommit.await_durable
        self.error: Exception | None = None


_ALONE = Request(("", [], None, None))  # the front held by a thread that found nobody queued

# The most events a round writes in one commit; a larger round is written as several.
MAX_ROUND_EVENTS = 4096
# The longest a front thread waits for the threads of its last batch to queue again.
GATHER = 0.0003


class Combiner:
    """The queue of one store's fast-path appends (see the module docstring)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.lock = threading.Lock()
        self.queue: list[Request] = []  # GUARDED_BY(lock): appends waiting for a front thread
        self.front: Request | None = None  # GUARDED_BY(lock): the append whose thread has the front
        self.crowd = 0  # written by the front thread only: how many appends its last batch held

    def append(self, stream: Stream, events: list[Any], expected: Any, fields: Fields | None) -> AppendResult | None:
        """`Writer.append_plain`, combined with the other threads' (see the module docstring)."""
        with self.lock:
            alone = self.front is None and not self.queue and self.crowd <= 1
            if alone:
                self.front = r = _ALONE
            else:
                r = Request((stream, events, expected, fields))
                self.queue.append(r)
                if self.front is None:
                    self.front = r
                else:
                    w = r.wait = threading.Lock()
                    w.acquire()
        if alone:  # nobody queued: write and sync this append as an append of its own
            try:
                done = self.writer.append_plain_once(stream, events, expected, fields)
                if done is not None:
                    self.writer.core.group.await_durable(done[1])
            finally:
                self.hand_on([], r)
            return None if done is None else done[0]
        try:
            if r.wait is not None:
                r.wait.acquire()  # woken once written, or given the front
            if not r.done:
                self.lead(r)
        except BaseException:  # interrupted while waiting or before leading: leave nothing stuck
            if not r.done:
                self.give_up(r)
            raise
        if r.error is not None:
            raise r.error
        if r.result is None:
            return None
        self.writer.core.group.await_durable(r.seq)
        return r.result

    def lead(self, mine: Request) -> None:
        """As the front thread (`mine` is its own append): write the queue, sync, then wake the batch
        and hand the front to the first thread that queued meanwhile (the sync's time is when the
        next batch gathers)."""
        batch: list[Request] = []
        writer = self.writer
        core = writer.core
        top = 0
        try:
            if self.crowd > 1:
                # The threads of the last batch are waking now; let them queue behind this one, so
                # that they share this sync rather than wait for the next: yield the GIL until as
                # many are queued as the last batch held, or for at most GATHER seconds (the
                # queue's length read without the lock: a hint).
                deadline = time.perf_counter() + GATHER
                while True:
                    time.sleep(0)
                    if len(self.queue) >= self.crowd or time.perf_counter() > deadline:
                        break
            with self.lock:
                batch, self.queue = self.queue, []
            self.crowd = len(batch)
            with core.wlock:
                if len(batch) == 1:
                    top = self.write_one(batch[0])
                else:
                    top = self.write_round(batch)
            if top:
                core.group.await_durable(top)
        finally:  # also when interrupted: what was not written goes back, first; this thread's own
            # append (not written) is given up with the exception, so it is not put back
            self.hand_on([r for r in batch if not r.done and r is not mine], mine)
            for r in batch:
                if r.wait is not None and r.done:
                    r.wait.release()

    def write_one(self, r: Request) -> int:
        """Write one queued append as a commit of its own (`Writer.append_plain_once`); its sequence
        number (0: not written). Requires the writer lock."""
        recorded = self.writer.core.group.written_seq
        try:
            done = self.writer.append_plain_once(*r.args)
        except Exception as e:  # the append's own error, raised in its own thread
            r.error = e
            done = None
        except BaseException:  # interrupted: whether it was written decides if it goes back
            self.settle_interrupted([r], recorded)
            raise
        if done is not None:
            r.result, r.seq = done
        r.done = True
        return 0 if done is None else done[1]

    def write_round(self, batch: list[Request]) -> int:
        """Write a round's appends as one commit: each append checked on its own (a refused one is
        left out with its error, one not plain is declined), the others written together, so that
        the round costs one encoding, one write and one set of index entries. A stream met again
        starts a new commit (its checks see the one before), as does a round over MAX_ROUND_EVENTS.
        Returns the last commit's sequence number (0: none). Requires the writer lock."""
        writer = self.writer
        try:
            writer.core.group.check_writable()
        except Exception as e:
            for r in batch:
                r.error, r.done = e, True
            return 0
        top = 0
        group: list[tuple[Request, Any]] = []
        keys: set[bytes] = set()
        n = 0
        for r in batch:
            try:
                again = writer.stream_ids_of(r.args[0])[2] in keys
            except (TypeError, ValueError):
                again = False  # a bad stream id: `check` raises it
            if again:  # checked against the commit before it, written first
                top = self.write_group(group) or top
                group, keys, n = [], set(), 0
            part = self.check(r)
            if part is None:
                continue
            if n + len(part[0].events) > MAX_ROUND_EVENTS and group:
                top = self.write_group(group) or top
                group, keys, n = [], set(), 0
            group.append((r, part))
            keys.add(part[0].key)
            n += len(part[0].events)
        return self.write_group(group) or top

    def check(self, r: Request) -> Any:
        """`Writer.plain_part` of a queued append; None when it is done with (refused: its error
        set, or declined)."""
        try:
            part = self.writer.plain_part(*r.args)
        except Exception as e:  # the append's own error, raised in its own thread
            r.error, r.done = e, True
            return None
        if part is None:
            r.done = True
        return part

    def write_group(self, group: list[tuple[Request, Any]]) -> int:
        """Write checked appends (`check`) as one commit; its sequence number (0: none written)."""
        if not group:
            return 0
        writer = self.writer
        recorded = writer.core.group.written_seq
        try:
            results, seq = writer.write_parts([part for _r, part in group])
        except ValueError:  # too large for one commit together: each on its own (nothing was written)
            top = 0
            for r, _part in group:
                top = self.write_one(r) or top
            return top
        except Exception as e:  # nothing was written: every append of the commit raises this error
            for r, _part in group:
                r.error, r.done = e, True
            return 0
        except BaseException:  # interrupted: whether it was written decides if they go back
            self.settle_interrupted([r for r, _part in group], recorded)
            raise
        for (r, _part), res in zip(group, results):
            r.result, r.seq, r.done = res, seq, True
        return seq

    def settle_interrupted(self, reqs: list[Request], recorded: int) -> None:
        """After an interrupt in the write of `reqs` (one commit), with `recorded` the group commit's
        `written_seq` before it: recorded since, they are committed and get their results (their
        threads wait for the sync themselves); written but not recorded (the store latched), they
        get its refusal; otherwise they stay not done and go back to the queue. Under the writer lock."""
        group = self.writer.core.group
        if group.written_seq > recorded:
            for r, res in zip(reqs, self.writer.last_results):
                r.result, r.seq, r.done = res, recorded + 1, True
        elif group.failed is not None:
            for r in reqs:
                r.error, r.done = group.refusal(), True

    def hand_on(self, unwritten: list[Request], mine: Request) -> None:
        """Give the front to the first queued thread (after `unwritten`, appends taken but not
        written, are put back first), or free it; `mine`, the front's own append, leaves the queue."""
        with self.lock:
            queue = self.queue = [*unwritten, *(r for r in self.queue if r is not mine)]
            nxt = self.front = queue[0] if queue else None
        if nxt is not None and nxt.wait is not None:
            nxt.wait.release()

    def give_up(self, r: Request) -> None:
        """An interrupted thread's append `r`, not written: out of the queue, and the front handed on
        if it was this thread's."""
        with self.lock:
            if r in self.queue:
                self.queue.remove(r)
            ours = self.front is r
        if ours:
            self.hand_on([], r)
