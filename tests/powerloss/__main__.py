"""Standalone runs: python -m tests.powerloss --workload NAME --states N --model posix|journal --seed S

Prints the table of states checked and failures per workload, model and index mode, then every
failing state with its category and what was expected against what was found. Exit status 1 when
any state failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from .crash import MODELS
from .runner import INDEX_MODES, all_specs, load, record, run_states, table
from .workloads import SPECS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.powerloss", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", action="append", choices=sorted(SPECS) + ["all"], default=None,
                    help="workload name (repeatable; default all)")
    ap.add_argument("--states", type=int, default=20, help="distinct crash states per workload and model")
    ap.add_argument("--model", action="append", choices=[*MODELS, "both"], default=None)
    ap.add_argument("--index", action="append", choices=INDEX_MODES, default=None,
                    help="index mode (repeatable; default both)")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("EVSTORE_POWERLOSS_SEED", "1")))
    ap.add_argument("--only-state", type=int, default=None, help="check only state number N (a reproduction)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--keep", default=None, help="keep the recordings (trace, root) and failing states here")
    ap.add_argument("--reuse", default=None,
                    help="a recording directory kept earlier (one workload): check its trace again instead of "
                         "recording anew, so that --seed and --only-state give exactly the same state")
    ap.add_argument("--max-failures", type=int, default=40, help="failing states to print in full")
    args = ap.parse_args(argv)
    names = [s.name for s in all_specs()] if not args.workload or "all" in args.workload else args.workload
    if args.reuse and len(names) != 1:
        ap.error("--reuse needs exactly one --workload (the one recorded there)")
    models = list(MODELS) if not args.model or "both" in args.model else args.model
    modes = args.index or list(INDEX_MODES)
    results = []
    t0 = time.monotonic()
    base = args.keep or tempfile.mkdtemp(prefix="evstore-powerloss-")
    os.makedirs(base, exist_ok=True)
    for name in names:
        if args.reuse:
            rec = load(SPECS[name], args.reuse)
        else:
            rec = record(SPECS[name], tempfile.mkdtemp(prefix=f"{name}-", dir=base))
        h = rec.history
        print(f"{name}: {len(h.points)} operations ({len(h.data)} data, {len(h.meta)} entry, {len(h.syncs)} syncs, "
              f"{len(h.acks)} ack lines) {'loaded from' if args.reuse else 'recorded in'} {rec.workdir}", file=sys.stderr)
        results += run_states(rec, models, args.states, args.seed, workers=args.workers, index_modes=modes,
                              only_state=args.only_state,
                              keep_failing=os.path.join(base, "failing") if args.keep else None)
    print(table(results))
    print(f"seed {args.seed}, {time.monotonic() - t0:.1f} s")
    bad = [r for r in results if r.failures]
    for r in bad[: args.max_failures]:
        print()
        print(r.describe())
    if len(bad) > args.max_failures:
        print(f"\n... and {len(bad) - args.max_failures} more failing states")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
