"""Offline and online maintenance of a store: info, verify, reindex, recover, backup, export, import.

The jobs live in their own modules (`evstore.recovery`, `evstore.backup`, `evstore.exporting`); this
module is the one place the command line and callers import them from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import evstore
from evstore.backup import backup, check_target
from evstore.errors import CorruptedError, EvstoreError
from evstore.exporting import (
    ExportCount,
    ImportFileError,
    ImportResult,
    event_json,
    export,
    export_records,
    import_events,
    import_file,
)
from evstore.storage.segments import Log
from evstore.recovery import (
    Problem,
    RecoverReport,
    VerifyReport,
    index_head,
    recover,
    reindex,
    store_dir,
    verify,
)

Progress = Callable[[int], None]  # called with a number of bytes (or events) just done

_store_dir = store_dir


def _log(path: str) -> Log:
    from evstore.format import codec as _impl

    return Log(os.path.join(path, "log"), _impl.load(), segment_size=1 << 40, writable=False)


# -- info --------------------------------------------------------------------------------------


def info(path: str) -> dict[str, Any]:
    """Format, sizes, counts, head, segments and how far the index lags the log."""
    real = _store_dir(path)
    log = _log(real)
    out: dict[str, Any] = {"path": real}
    try:
        with open(os.path.join(real, "evstore.meta"), "rb") as f:
            out["meta"] = json.loads(f.read()[12:])
    except (OSError, ValueError):
        out["meta"] = None
    out["segments"] = [{"name": os.path.basename(s.path), "first_position": s.first,
                        "bytes": os.path.getsize(s.path)} for s in log.segments]
    out["log_bytes"] = sum(s["bytes"] for s in out["segments"])
    ipath = os.path.join(real, "index")
    out["index_bytes"] = sum(os.path.getsize(os.path.join(ipath, f)) for f in os.listdir(ipath)) \
        if os.path.isdir(ipath) else 0
    ihead = None
    streams = None
    checkpoint = None
    if os.path.exists(os.path.join(ipath, "data.mdb")):
        with evstore.open(real, readonly=True, create=False) as s:
            checkpoint = s.maintenance.index_checkpoint()
            ihead = 0 if checkpoint is None else checkpoint[2] - 1
            streams = s.maintenance.stream_count()
    log_head = ihead or 0
    try:
        for c in log.recover(checkpoint):
            log_head = c.first_position + c.n_events - 1 if c.n_events else log_head
    except CorruptedError as e:
        out["corruption"] = str(e)
    out["head"] = log_head
    out["index_head"] = ihead
    out["index_lag"] = None if ihead is None else log_head - ihead
    out["streams"] = streams
    out["format"] = (out["meta"] or {}).get("format")
    return out


def consumers(path: str) -> list[tuple[str, int, int]]:
    """(name, position, lag) of every checkpointed consumer (see evstore.consumer), then of every member
    of every consumer group, named `<group>#<member>/<size>` (see evstore.groups)."""
    from evstore.consumer import CONSUMER_PREFIX
    from evstore.groups import members, tracking_name

    real = _store_dir(path)
    with evstore.open(real, readonly=True, create=False) as s:
        head = s.head()
        best = {name[len(CONSUMER_PREFIX):]: pos for name, pos in s.maintenance.tracked(CONSUMER_PREFIX).items()}
        rows = [(n, p, head - p) for n, p in sorted(best.items())]
        for m in members(s.path, head, lambda p: evstore.open(p, readonly=True, create=False)):
            rows.append((tracking_name(m.group, m.member, m.size), m.position, m.lag))
    return rows


__all__ = ["import_events", "import_file", "ImportFileError", "ImportResult", "ExportCount", "consumers", "verify",
           "info", "reindex", "recover", "backup", "export", "export_records", "event_json", "check_target", "store_dir", "Problem",
           "VerifyReport", "RecoverReport", "index_head", "EvstoreError"]
