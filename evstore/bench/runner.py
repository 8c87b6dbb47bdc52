"""The run: the workloads in their order, `run()`, and the `evstore bench` command line
(`add_arguments`, `add_parser`, `main`)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from evstore.progress import Progress
from evstore.bench import adapters, aio, appends, categories, maintenance, reads, writepath
from evstore.bench.context import Ctx, Workload
from evstore.bench.results import BACKENDS, Row, Sizes, Target, format_table, json_doc, judge, machine, summary

# In the order they run: open_after_crash, last, appends to the shared datasets.
WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (*appends.WORKLOADS, *writepath.WORKLOADS, *reads.WORKLOADS, *aio.WORKLOADS,
                        *adapters.WORKLOADS, *maintenance.WORKLOADS, *categories.WORKLOADS)
}
TARGETS: dict[str, Target] = {w.name: w.target for w in WORKLOADS.values() if w.target is not None}
TARGETS["repository_get_snapshot"] = adapters.SNAPSHOT_TARGET  # rows of the repository_get workload


def run(*, scale: float = 1.0, quick: bool = False, sizes: Sizes | None = None,
        workloads: Sequence[str] | None = None, backends: Sequence[str] = BACKENDS, repeat: int = 3,
        directory: str | None = None, progress: bool | None = None,
        say: Callable[[str], None] | None = None) -> list[Row]:
    """Run the workloads and return their rows (see `Row`, `format_table`).

    `scale` multiplies every size of `sizes` (default `Sizes()`); `quick` is scale 0.02 and one
    repetition. `backends` picks among "c", "python", "sqlite", "popo", "ref". `progress`: a one-line progress report
    on stderr (default: only when stderr is a terminal). The stores live in a temporary folder under
    `directory` (default: the system's), removed at the end.
    """
    if quick:
        scale = min(scale, 0.02)
        repeat = 1
    sz = (sizes or Sizes()).scaled(scale)
    for n in workloads or ():
        if n not in WORKLOADS:
            raise ValueError(f"unknown workload {n!r}; choose from {', '.join(WORKLOADS)}")
    # Always in the canonical order: open_after_crash, last, appends to the shared datasets.
    names = [n for n in WORKLOADS if not workloads or n in workloads]
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    bar = Progress("evstore bench", "workloads", len(names), enabled=progress)

    def _say(msg: str) -> None:
        bar.set_note(msg[:60])
        if say is not None:
            say(msg)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="evstore-bench-", dir=directory) as tmp:
        ctx = Ctx(tmp, sz, repeat, backends, _say)
        try:
            for name in names:
                _say(name)
                rows.extend(WORKLOADS[name].measure(ctx))
                bar.update(1)
        finally:
            ctx.close()
            bar.close()
    judge(rows, TARGETS)
    return rows


# -- the command line ----------------------------------------------------------------------------

HELP = "compare evstore with the eventsourcing SQLite and in-memory recorders"
DESCRIPTION = ("Run evstore's workloads side by side with the eventsourcing library's SQLite (file) and "
               "in-memory recorders and the physical floor, in a temporary folder, and print one table.")


def _cmd(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(WORKLOADS))
        return 0
    sizes = Sizes()
    for f in ("stream", "total", "aggregate", "appends1", "appends100", "conflicts", "crash"):
        v = getattr(args, f, None)
        if v is not None:
            sizes = replace(sizes, **{f: v})
    backends = tuple(args.backends.split(",")) if args.backends else BACKENDS
    workloads = args.workloads.split(",") if args.workloads else None
    t = time.perf_counter()
    rows = run(scale=args.scale, quick=args.quick, sizes=sizes, workloads=workloads, backends=backends,
               repeat=args.repeat, directory=args.dir, progress=None if not args.no_progress else False)
    elapsed = time.perf_counter() - t
    m = machine()
    print(format_table(rows))
    print("\n" + summary(rows, m, elapsed))
    if args.json:
        doc = json_doc(rows, m, sys.argv, 0.02 if args.quick else args.scale, elapsed)
        with open(args.json, "w") as out:
            json.dump(doc, out, indent=1)
        print(f"figures written to {args.json}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a short run (scale 0.02, one repetition)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every size (default 1.0)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions of each read; best is kept (default 3)")
    p.add_argument("--json", metavar="PATH", help="also write the figures (and the machine) as JSON")
    p.add_argument("--workloads", metavar="A,B", help="run only these workloads (see --list)")
    p.add_argument("--backends", metavar="A,B", help=f"only these backends, of {','.join(BACKENDS)}")
    p.add_argument("--dir", metavar="DIR", help="where to make the temporary folder (default: the system's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    g = p.add_argument_group("sizes (before --scale)")
    g.add_argument("--total", type=int, help="events of the read dataset (default 1,000,000)")
    g.add_argument("--stream", type=int, help="events of the long stream (default 100,000)")
    g.add_argument("--aggregate", type=int, help="events of the aggregate for repository.get (default 10,000)")
    g.add_argument("--appends1", type=int, help="1-event fsync appends (default 2,000)")
    g.add_argument("--appends100", type=int, help="events appended in commits of 100 (default 20,000)")
    g.add_argument("--conflicts", type=int, help="rejected appends (default 5,000)")
    g.add_argument("--crash", type=int, help="events written after the index copy in open_after_crash (default 100,000)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `bench` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser("bench", help=HELP, description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=_cmd)
    return p  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """`evstore bench ARGS` (and `python -m evstore.bench ARGS`): parse ARGS and run."""
    parser = argparse.ArgumentParser(prog="evstore bench", description=DESCRIPTION)
    add_arguments(parser)
    return _cmd(parser.parse_args(argv))
