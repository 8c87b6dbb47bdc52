"""`evstore bench`: evstore against the `eventsourcing` library's SQLite and in-memory recorders and
against the physical floor (raw write+fdatasync, an LMDB cursor scan, a memcpy of the same bytes).

Every workload runs each backend side by side in one process, in one temporary folder, so that the
ratios hold on a noisy machine even when the absolute rates move. Each figure is the best of
`repeat` timed runs (reads) or one timed run over fresh events (appends).

Use from Python::

    from evstore import bench
    rows = bench.run(scale=0.1)
    print(bench.format_table(rows))

or from the command line (`evstore bench --quick`, `evstore bench --json out.json`).

The modules: `results` (Row, Sizes, Target, the table and JSON), `context` (the state of one run, the
shared datasets, `Workload`), the workload families `appends`, `reads`, `adapters` (the eventsourcing
recorders and application), `maintenance` (verify, bytes on disk, replay memory, open clean / after a
crash) and `references` (the physical floors), `runner` (`run`, the command line), and the helper
processes `crash_writer` and `memory_reader`. Importing this package imports none of them: each name
below loads its module on first use, so that `python -m evstore.bench.memory_reader` starts light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evstore.bench.adapters import BenchAggregate as BenchAggregate
    from evstore.bench.context import PAYLOAD as PAYLOAD
    from evstore.bench.context import TOPICS as TOPICS
    from evstore.bench.context import Ctx as Ctx
    from evstore.bench.context import Dataset as Dataset
    from evstore.bench.context import Workload as Workload
    from evstore.bench.results import BACKENDS as BACKENDS
    from evstore.bench.results import POPO as POPO
    from evstore.bench.results import PY as PY
    from evstore.bench.results import REF as REF
    from evstore.bench.results import SQLITE as SQLITE
    from evstore.bench.results import C as C
    from evstore.bench.results import Row as Row
    from evstore.bench.results import Sizes as Sizes
    from evstore.bench.results import Target as Target
    from evstore.bench.results import format_table as format_table
    from evstore.bench.results import machine as machine
    from evstore.bench.runner import TARGETS as TARGETS
    from evstore.bench.runner import WORKLOADS as WORKLOADS
    from evstore.bench.runner import add_arguments as add_arguments
    from evstore.bench.runner import add_parser as add_parser
    from evstore.bench.runner import main as main
    from evstore.bench.runner import run as run

_WHERE = {
    "BenchAggregate": "adapters",
    **dict.fromkeys(("PAYLOAD", "TOPICS", "Ctx", "Dataset", "Workload"), "context"),
    **dict.fromkeys(("BACKENDS", "C", "PY", "SQLITE", "POPO", "REF", "Row", "Sizes", "Target", "format_table",
                     "machine"), "results"),
    **dict.fromkeys(("TARGETS", "WORKLOADS", "add_arguments", "add_parser", "main", "run"), "runner"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
