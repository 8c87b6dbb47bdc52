"""Copy a store into any `eventsourcing` persistence module: the road to a server database.

Each event becomes a `StoredEvent(originator_id=stream, originator_version=version, topic=type,
state=data)` (under eventsourcing 10 the id is `str(stream)`) in the target's process recorder, in
position order, in batches. Each batch carries a tracking record (`evstore-copy:<name>`, last position
copied) in the same target transaction, so an interrupted copy resumes exactly where it stopped:
nothing is copied twice or skipped. Event metadata, ids and timestamps have no place in
eventsourcing's stored events and are not copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import evstore
from evstore.errors import EvstoreError

COPY_TRACKING = "evstore-copy"


def copy_to_module(path: str, module: str, *, env: Mapping[str, str] | None = None, name: str = COPY_TRACKING,
                   batch: int = 1000, progress: Callable[[int], None] | None = None,
                   stop_after: int | None = None) -> tuple[int, int]:
    """Copy every event not yet copied; returns (events copied now, last position copied).

    `env` configures the target as the library reads it (default: this process's environment) with
    PERSISTENCE_MODULE set to `module`. `stop_after` (events) interrupts the copy early, for tests.
    """
    from eventsourcing.persistence import InfrastructureFactory, StoredEvent
    from eventsourcing.utils import Environment

    # eventsourcing 9.5 or 10 (10 has str originator ids and names the tracking upstream `context_name`)
    from evstore.eventsourcing.compat import new_stored_event, new_tracking

    settings = dict(os.environ if env is None else env)
    settings["PERSISTENCE_MODULE"] = module
    try:
        factory: InfrastructureFactory[Any] = InfrastructureFactory.construct(Environment(env=settings))
    except Exception as e:  # an unknown module, a missing driver, a missing setting
        raise EvstoreError(f"cannot use the persistence module {module!r}: {_reason(e)}") from e
    try:
        try:
            recorder = factory.process_recorder()
        except Exception as e:
            raise EvstoreError(f"cannot open a recorder of {module!r}: {_reason(e)}") from e
        done = recorder.max_tracking_id(name) or 0
        copied = 0
        with evstore.open(path, readonly=True, create=False) as store:
            pending: list[StoredEvent] = []
            last = done
            for ev in store.read_all(gt=done):
                pending.append(new_stored_event(ev.stream, ev.version, ev.type, ev.data))
                last = ev.position
                if len(pending) >= batch or (stop_after is not None and copied + len(pending) >= stop_after):
                    recorder.insert_events(pending, tracking=new_tracking(name, last))
                    copied += len(pending)
                    if progress:
                        progress(len(pending))
                    pending = []
                    if stop_after is not None and copied >= stop_after:
                        return copied, last
            if pending:
                recorder.insert_events(pending, tracking=new_tracking(name, last))
                copied += len(pending)
                if progress:
                    progress(len(pending))
        return copied, last if copied else done
    finally:
        factory.close()


def _reason(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    text = f"{type(e).__name__}: {e}"
    if isinstance(cause, ImportError):
        text += f" ({cause}; install the module's driver)"
    return " ".join(text.split())
