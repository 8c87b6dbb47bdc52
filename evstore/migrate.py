"""Copy a store into any `eventsourcing` persistence module: the road to a server database.

Each event becomes a `StoredEvent(originator_id=stream, originator_version=version, topic=type,
state=data)` (under eventsourcing 10 the id is `str(stream)`) in the target's process recorder, in
position order, in batches. Each batch carries a tracking record (`evstore-copy:<name>`, last position
copied) in the same target transaction, so an interrupted copy resumes exactly where it stopped:
nothing is copied twice or skipped. Event metadata, ids and timestamps have no place in
eventsourcing's stored events and are not copied.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import evstore
from evstore.errors import EvstoreError

COPY_TRACKING = "evstore-copy"


def copy_to_module(path: str, module: str, *, env: Mapping[str, str] | None = None, name: str = COPY_TRACKING,
                   batch: int = 1000, progress: Callable[[int], None] | None = None,
                   stop_after: int | None = None, follow: bool = False, stop: Callable[[], bool] | None = None,
                   poll: float = 0.05, application: str = "") -> tuple[int, int]:
    """Copy every event not yet copied; returns (events copied now, last position copied).

    `env` configures the target as the library reads it (default: this process's environment) with
    PERSISTENCE_MODULE set to `module`; `application` names the application whose tables the events
    go to (the library names them after it, e.g. `ledger_events`; default: the unnamed ones), so that
    the application finds its events after its PERSISTENCE_MODULE is switched to the target.
    `stop_after` (events) interrupts the copy early, for tests.
    With `follow`, keeps copying new commits (looking every `poll` seconds) until `stop()` returns
    True, then returns after the batch under way. Every batch is one target transaction with its
    tracking record; after each, the follower's status (position, head, time) is written to
    `STORE/followers/<name>.json` for `evstore consumers`.

    Raises: EvstoreError when the module cannot be used or the store cannot be read; ValueError for
    a batch < 1 or a negative poll; what the target's recorder raises (the batch is not recorded).
    """
    from eventsourcing.persistence import InfrastructureFactory, StoredEvent
    from eventsourcing.utils import Environment

    # eventsourcing 9.5 or 10 (10 has str originator ids and names the tracking upstream `context_name`)
    from evstore.eventsourcing.compat import new_stored_event, new_tracking

    if type(batch) is not int or batch < 1:
        raise ValueError(f"batch must be an int >= 1, not {batch!r}")
    if not poll >= 0:
        raise ValueError(f"poll must be >= 0 seconds, not {poll!r}")
    settings = dict(os.environ if env is None else env)
    settings["PERSISTENCE_MODULE"] = module
    try:
        factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(Environment(name=application,
                                                                                          env=settings))
    except Exception as e:  # an unknown module, a missing driver, a missing setting
        raise EvstoreError(f"cannot use the persistence module {module!r}: {_reason(e)}") from e
    try:
        try:
            recorder = factory.process_recorder()
        except Exception as e:
            raise EvstoreError(f"cannot open a recorder of {module!r}: {_reason(e)}") from e
        done = recorder.max_tracking_id(name) or 0
        copied = 0
        last = done
        with evstore.open(path, readonly=True, create=False) as store:
            status = _Status(store.path, name, module)
            while True:
                pending: list[StoredEvent] = []
                head = store.head()
                for ev in store.read_all(gt=last, lte=head):
                    pending.append(new_stored_event(ev.stream, ev.version, ev.type, ev.data))
                    if len(pending) >= batch or (stop_after is not None and copied + len(pending) >= stop_after):
                        recorder.insert_events(pending, tracking=new_tracking(name, ev.position))
                        copied += len(pending)
                        last = ev.position
                        status.write(last, head)
                        if progress:
                            progress(len(pending))
                        pending = []
                        if (stop_after is not None and copied >= stop_after) or (stop is not None and stop()):
                            return copied, last
                if pending:  # the rest, up to the head (the position of the last event read)
                    recorder.insert_events(pending, tracking=new_tracking(name, head))
                    copied += len(pending)
                    last = head
                    if progress:
                        progress(len(pending))
                status.write(last, head)
                if not follow or (stop is not None and stop()):
                    break
                if store.head() == head:
                    _wait(poll, stop)
        return copied, last if copied else done
    finally:
        factory.close()


def _wait(seconds: float, stop: Callable[[], bool] | None) -> None:
    """Sleep `seconds`, in slices short enough to notice `stop()` quickly."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if stop is not None and stop():
            return
        time.sleep(min(left, 0.05))


FOLLOWERS_DIR = "followers"


class _Status:
    """The status file of a copy: where it is, for `evstore consumers` (advisory: the truth is the
    target's tracking record, so it is replaced atomically but not synced)."""

    def __init__(self, store_path: str, name: str, module: str) -> None:
        self.dir = os.path.join(store_path, FOLLOWERS_DIR)
        self.path = os.path.join(self.dir, urllib.parse.quote(name, safe="") + ".json")
        self.name = name
        self.module = module

    def write(self, position: int, head: int) -> None:
        doc = {"name": self.name, "module": self.module, "position": position, "head": head,
               "updated_ns": time.time_ns(), "pid": os.getpid()}
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)
        except OSError:  # a read-only store directory: the copy goes on without a status file
            pass


def followers(store_path: str) -> list[dict[str, object]]:
    """The status of every copy of the store at `store_path` (see `copy_to_module`), by name."""
    d = os.path.join(store_path, FOLLOWERS_DIR)
    out = []
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    for n in names:
        if n.endswith(".json"):
            try:
                with open(os.path.join(d, n), encoding="utf-8") as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                continue
    return out


def _reason(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    text = f"{type(e).__name__}: {e}"
    if isinstance(cause, ImportError):
        text += f" ({cause}; install the module's driver)"
    return " ".join(text.split())
