"""The `evstore` command line: inspect, verify, repair, copy and exercise stores.

Output formats are stable: `--format jsonl` prints one JSON object per event with the keys
position, stream, stream_kind, version, type, id, schema, recorded_at_ns, and data/metadata (as JSON
when the bytes are JSON, else data_b64/metadata_b64). Errors print one line on stderr and exit 1;
Ctrl-C exits 130 without damaging the store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import evstore
from evstore import tools
from evstore.progress import Progress


@contextlib.contextmanager
def _progress(total: int | None, unit: str, desc: str) -> Iterator[tools.Progress]:
    """A one-line progress report with rate and ETA on a terminal; nothing when stderr is piped."""
    bar = Progress(desc, unit, total)
    yield bar.update
    bar.close()


def _print_events(events: Any, fmt: str) -> int:
    n = 0
    if fmt == "json":
        print(json.dumps([tools.event_json(e, exact=False) for e in events], indent=2))
        return 0
    for e in events:
        if fmt == "jsonl":
            print(json.dumps(tools.event_json(e, exact=False), separators=(",", ":")), flush=True)
        else:
            data = e.data
            try:
                text = json.dumps(json.loads(data)) if data else ""
            except ValueError:
                import base64

                text = "b64:" + base64.b64encode(data).decode()
            if len(text) > 60:
                text = text[:57] + "..."
            print(f"{e.position:>10} {str(e.stream):<24} {e.version:>8} {e.type:<20} {text}", flush=True)
        n += 1
    return n


def _store(path: str) -> str:
    """The store at `path`, or "no store at PATH" (nothing is created)."""
    return tools.store_dir(path)


def _open_ro(path: str) -> evstore.EventStore:
    real = _store(path)
    if not os.path.exists(os.path.join(real, "index", "data.mdb")):
        raise evstore.EvstoreError(f"{path} has no index yet; run `evstore reindex {path}` to build it from the log")
    return evstore.open(real, readonly=True, create=False)


def _count(text: str) -> int:
    """An argparse type: an int >= 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def _positive(text: str) -> int:
    """An argparse type: an int >= 1."""
    n = _count(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


def cmd_info(a: argparse.Namespace) -> int:
    d = tools.info(a.path)
    if a.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"store         {d['path']}")
    print(f"format        {d['format']}")
    print(f"head          {d['head']:,} (index at {d['index_head']}, lag {d['index_lag']})")
    print(f"streams       {d['streams']}")
    print(f"log bytes     {d['log_bytes']:,} in {len(d['segments'])} segment(s)")
    print(f"index bytes   {d['index_bytes']:,}")
    for s in d["segments"]:
        print(f"  {s['name']}  first position {s['first_position']:,}  {s['bytes']:,} bytes")
    if "corruption" in d:
        print(f"CORRUPTION    {d['corruption']}")
        return 1
    return 0


def cmd_streams(a: argparse.Namespace) -> int:
    with _open_ro(a.path) as s:
        for stream, version in s.streams(prefix=a.prefix):
            print(f"{stream}\t{version}")
    return 0


def cmd_read(a: argparse.Namespace) -> int:
    with _open_ro(a.path) as s:
        stream: Any = a.stream
        if a.uuid:
            import uuid

            stream = uuid.UUID(a.stream)
        gt = None if a.from_ is None else max(a.from_ - 1, 0)
        if a.category is not None:
            if a.stream is not None or a.uuid:
                raise ValueError("read takes a STREAM or --category, not both")
            events = list(s.read_all(gt=gt, lte=a.to, category=a.category, limit=None if a.desc else a.limit))
            if a.desc:
                events = events[::-1][: a.limit]
        elif a.stream is None:
            raise ValueError("read needs a STREAM (or --category C)")
        else:
            events = s.read_stream(stream, gt=gt, lte=a.to, desc=a.desc, limit=a.limit)
        _print_events(events, a.format)
    return 0


def _last_events(s: evstore.EventStore, n: int, types: list[str] | None,
                 category: str | None = None) -> tuple[list[Any], int]:
    """The last `n` events (of `types`, of `category`) and the head they were read at: windows back
    from the head, doubled until they hold `n` matching events or reach the start."""
    head = s.head()
    if n == 0:
        return [], head
    if types is None and category is None:
        return list(s.read_all(gt=max(head - n, 0), lte=head)), head
    window = max(n * 4, 1024)
    while True:
        gt = max(head - window, 0)
        found = list(s.read_all(gt=gt, lte=head, types=types, category=category))
        if len(found) >= n or gt == 0:
            return found[-n:], head
        window *= 4


def cmd_tail(a: argparse.Namespace) -> int:
    types = [a.type] if a.type else None
    with _open_ro(a.path) as s:
        events, head = _last_events(s, a.lines, types, a.category)
        _print_events(events, a.format)
        if not a.follow:
            return 0
        with s.subscribe(gt=head, types=types, category=a.category) as sub:
            for e in sub:
                _print_events([e], a.format)
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    real = _store(a.path)
    logdir = os.path.join(real, "log")
    total = sum(os.path.getsize(os.path.join(logdir, f)) for f in os.listdir(logdir))
    with _progress(total, "B", "verify") as bar:
        rep = tools.verify(a.path, bar)
    rate = rep.bytes / rep.seconds / 1e9 if rep.seconds else 0.0
    print(f"{rep.segments} segment(s), {rep.commits:,} commits, {rep.events:,} events, "
          f"{rep.bytes:,} bytes checked in {rep.seconds:.3f} s ({rate:.2f} GB/s)")
    for p in rep.problems:
        kind = "torn tail (cut off on the next open for writing)" if p.torn_tail else "CORRUPT"
        print(f"{kind}: {p.path} at offset {p.offset}: {p.reason}")
    if not rep.ok:
        print(f"evstore: the log is damaged; run `evstore recover {a.path}` to salvage every intact commit "
              "before the damage", file=sys.stderr)
        return 1
    if a.lifecycles:
        violations = _check_lifecycles(a.path, a.lifecycles)
        for v in violations:
            print(f"lifecycle violation: {v.stream} v{v.version} @{v.position}: {v.event_type!r} in state "
                  f"{v.state!r} of {v.lifecycle!r} (allowed: {', '.join(sorted(v.allowed)) or 'nothing'})")
        print(f"{len(violations)} lifecycle violation(s)")
        return 1 if violations else 0
    return 0


def _check_lifecycles(path: str, spec: str) -> list[Any]:
    from evstore.lifecycle import Lifecycle, load_object

    try:
        obj = load_object(spec)
    except (ImportError, AttributeError, ValueError) as e:
        raise evstore.EvstoreError(f"cannot load the lifecycles {spec!r}: {e}") from None
    if isinstance(obj, Lifecycle):
        lc = obj
        if lc.name and "-" not in lc.name:
            obj = {lc.name: lc}  # the streams of the category it is named for
        else:
            obj = lambda _stream: lc  # noqa: E731 - every stream
    elif not callable(obj) and not isinstance(obj, dict):
        raise evstore.EvstoreError(f"{spec} is a {type(obj).__name__}: give a dict category -> Lifecycle, a "
                                   "Lifecycle, or a function stream -> Lifecycle | None")
    try:
        with evstore.open(_store(path), readonly=True, create=False, lifecycles=obj) as s:
            return list(s.check_lifecycles())
    except evstore.EvstoreError:
        raise
    except Exception as e:  # the user's lifecycles function (or mapping) failed
        raise evstore.EvstoreError(f"the lifecycles {spec} failed: {type(e).__name__}: {e}") from None


def cmd_reindex(a: argparse.Namespace) -> int:
    t = time.perf_counter()
    head = tools.reindex(a.path)
    print(f"index rebuilt from the log: head {head:,} in {time.perf_counter() - t:.2f} s")
    return 0


def cmd_recover(a: argparse.Namespace) -> int:
    rep = tools.recover(a.path)
    before = "unknown (no readable index)" if rep.head_before is None else f"{rep.head_before:,}"
    print(f"head before: {before}, after: {rep.head_after:,}")
    for f in rep.findings:
        print(f"found: {f}")
    if rep.damaged:
        print(f"dropped {rep.dropped_bytes:,} bytes after the damage; the damaged files are kept in {rep.moved_to}:")
        for p in rep.damaged:
            print(f"  {p}")
    else:
        print("no damaged segment; the index was rebuilt from the log")
    return 0


def cmd_backup(a: argparse.Namespace) -> int:
    with _progress(None, "B", "backup") as bar:
        head = tools.backup(a.path, a.dest, bar)
    print(f"backed up {head:,} events to {a.dest}")
    return 0


def cmd_compact_snapshots(a: argparse.Namespace) -> int:
    with evstore.open(_store(a.path), create=False) as s:
        n = s.prune_snapshots(keep=a.keep)
    print(f"dropped {n:,} older snapshot(s) from the index, keeping the newest {a.keep} of each stream")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    with _progress(None, "ev", "export") as bar:
        if a.output in (None, "-"):
            n = tools.export_records(a.path, sys.stdout, gt=a.gt, progress=bar)
            sys.stdout.flush()
        else:
            n = _export_file(a, bar)
    print(f"exported {n.events:,} events and {n.records:,} other records in {n.commits:,} commits",
          file=sys.stderr)
    return 0


def _export_file(a: argparse.Namespace, bar: tools.Progress) -> tools.ExportCount:
    """Export into a new file, durably: written as FILE.partial, synced, renamed to FILE."""
    from evstore.storage import durable

    _store(a.path)
    target = tools.check_target(a.output, "export file")
    tmp = target + ".partial"
    durable.remove(tmp)
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            n = tools.export_records(a.path, f, gt=a.gt, progress=bar)
            f.flush()
            os.fsync(f.fileno())
        if os.path.lexists(target):
            raise evstore.EvstoreError(f"export file {a.output} appeared during the export; the export is in {tmp}")
        durable.rename(tmp, target)
    except BaseException:
        if not os.path.lexists(target) or os.path.lexists(tmp):
            durable.remove(tmp)
        raise
    return n


def cmd_import(a: argparse.Namespace) -> int:
    with open(a.file, encoding="utf-8") as f, _progress(None, "ev", "import") as bar:
        r = tools.import_file(a.path, f, merge=a.merge, progress=bar)
    print(f"imported {r.events:,} events and {r.records:,} other records in {r.commits:,} commits"
          + (f"; {r.skipped_events:,} events were in the store already" if r.skipped_events else ""))
    return 0


def cmd_copy(a: argparse.Namespace) -> int:
    from evstore.migrate import copy_to_module

    _store(a.path)
    stopping: list[int] = []
    if a.follow:  # SIGINT / SIGTERM: finish the batch under way, then stop cleanly
        def on_signal(signum: int, _frame: Any) -> None:
            stopping.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    with _progress(None, "ev", "copy") as bar:
        n, last = copy_to_module(a.path, a.to_module, batch=a.batch, progress=bar, follow=a.follow,
                                 stop=lambda: bool(stopping), application=a.application)
    print(f"copied {n:,} events to {a.to_module}; the target holds every event up to position {last:,}"
          + ("; stopped" if stopping else ""))
    return 0


def cmd_consumers(a: argparse.Namespace) -> int:
    rows = tools.consumers(a.path)
    for name, position, lag in rows:
        print(f"{name}\t{position}\tlag {lag}")
    from evstore.migrate import followers

    with evstore.open(_store(a.path), readonly=True, create=False) as s:
        head = s.head()
    for f in followers(_store(a.path)):
        age = max(0.0, (time.time_ns() - int(f["updated_ns"])) / 1e9)  # type: ignore[call-overload]
        pos = int(f["position"])  # type: ignore[call-overload]
        print(f"copy:{f['name']} -> {f['module']}\t{pos}\tlag {max(head - pos, 0)}\t(updated {age:.1f} s ago, "
              f"pid {f['pid']})")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Create a temporary store, write and read an order's lifecycle, and time a short run."""
    with tempfile.TemporaryDirectory(prefix="evstore-demo-") as tmp:
        path = os.path.join(tmp, "orders.evs")
        with evstore.open(path) as store:
            r = store.append("order-1", [evstore.NewEvent("Placed", b'{"sku": 7}')],
                             expected_version=evstore.NO_STREAM)
            store.append("order-1", [evstore.NewEvent("Paid", b'{"amount": 12}')], expected_version=r.last_version)
            try:
                store.append("order-1", [evstore.NewEvent("Paid", b"{}")], expected_version=r.last_version)
            except evstore.WrongExpectedVersion as e:
                print(f"a stale writer was refused: {e}")
            print(f"store at {path} ({store.log_implementation} log)")
            for rec in store.read_stream("order-1"):
                print(f"  {rec.stream} v{rec.version} @{rec.position} {rec.type} {rec.data.decode()}")
            n, batch = a.events, 100
            payload = b'{"amount": 12, "note": "' + b"x" * 180 + b'"}'
            events = [evstore.NewEvent("ItemAdded", payload) for _ in range(batch)]
            t = time.perf_counter()
            for _ in range(max(n // batch, 1)):
                store.append("cart-1", events)
            dt_w = time.perf_counter() - t
            t = time.perf_counter()
            got = store.read_stream("cart-1")
            dt_r = time.perf_counter() - t
            print(f"appended {len(got):,} events in commits of {batch} (fsync each): {len(got) / dt_w:,.0f} events/s")
            print(f"read the {len(got):,}-event stream back: {len(got) / dt_r:,.0f} events/s")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as every other error: one line on stderr, exit 1."""

    def error(self, message: str) -> NoReturn:
        print(f"evstore: {_one_line(message)} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evstore", description="Inspect, verify, repair and exercise evstore stores.")
    parser.add_argument("--version", action="version", version=f"evstore {evstore.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("info", help="format, counts, sizes, head, segments and index lag")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("streams", help="list streams and their versions")
    p.add_argument("path")
    p.add_argument("--prefix", default="", help="only streams whose id starts with this")
    p.set_defaults(func=cmd_streams)

    fmt = {"choices": ["table", "json", "jsonl"], "default": "table", "help": "output format (default table)"}
    p = sub.add_parser("read", help="print a stream's events, or a category's")
    p.add_argument("path")
    p.add_argument("stream", nargs="?")
    p.add_argument("--uuid", action="store_true", help="the stream id is a UUID")
    p.add_argument("--category", help="the events of every stream of this category (the ids before their "
                   "first '-'), in position order; --from/--to are then positions")
    p.add_argument("--from", dest="from_", type=_count, help="first version to print")
    p.add_argument("--to", type=_count, help="last version to print")
    p.add_argument("--desc", action="store_true", help="newest first")
    p.add_argument("--limit", type=_count)
    p.add_argument("--format", **fmt)  # type: ignore[arg-type]
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("tail", help="print the last events of the log; --follow waits for new ones")
    p.add_argument("path")
    p.add_argument("-n", "--lines", type=_count, default=10,
                   help="how many of the last events (of --type, if given) to print (default 10)")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--type", help="only events of this type")
    p.add_argument("--category", help="only events of streams of this category")
    p.add_argument("--format", **fmt)  # type: ignore[arg-type]
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("verify", help="check every checksum and commit of the log")
    p.add_argument("path")
    p.add_argument("--lifecycles", metavar="MODULE:ATTR",
                   help="also replay every stream through these lifecycles (a dict category -> Lifecycle, "
                        "a Lifecycle (for the streams of the category it is named for), or a function "
                        "stream -> Lifecycle | None) and list each violation")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("reindex", help="rebuild the index from the log")
    p.add_argument("path")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("recover", help="salvage every intact commit before a corruption")
    p.add_argument("path")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("backup", help="a consistent copy of a store, online")
    p.add_argument("path")
    p.add_argument("dest")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("compact-snapshots", help="keep only the newest snapshots of each stream in the index")
    p.add_argument("path")
    p.add_argument("--keep", type=_count, default=1, help="snapshots to keep per stream (default 1)")
    p.set_defaults(func=cmd_compact_snapshots)

    p = sub.add_parser("export", help="every event as JSON lines (byte-exact, base64 payloads)")
    p.add_argument("path")
    p.add_argument("--gt", type=_count, default=0, help="only events after this position")
    p.add_argument("-o", "--output", help="file to create (default: standard output)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="append the events of an export file (checked whole first)")
    p.add_argument("path")
    p.add_argument("file")
    p.add_argument("--merge", action="store_true", help="allow importing into a non-empty store")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("copy", help="copy every event into an eventsourcing persistence module (resumable)")
    p.add_argument("path")
    p.add_argument("--to-module", required=True, help="e.g. eventsourcing.postgres, configured by environment")
    p.add_argument("--batch", type=_positive, default=1000, help="events per target transaction (default 1000)")
    p.add_argument("--application", default="", metavar="NAME",
                   help="the application whose tables receive the events (e.g. the class name: Ledger)")
    p.add_argument("--follow", action="store_true", help="after the catch-up, keep copying new commits until "
                   "SIGINT or SIGTERM (a clean stop; its position is shown by `evstore consumers`)")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("consumers", help="list checkpointed consumers and their lag")
    p.add_argument("path")
    p.set_defaults(func=cmd_consumers)

    p = sub.add_parser("demo", help="write and read a temporary store, with a short timing")
    p.add_argument("--events", type=int, default=20_000, help="events for the timing (default 20000)")
    p.set_defaults(func=cmd_demo)

    from evstore import lifecycle

    lifecycle.add_draw_parser(sub)
    # `evstore bench` parses its own arguments (evstore.bench.runner, imported only when it runs): this
    # parser takes every argument after "bench" as they are, --help included.
    p = sub.add_parser("bench", help="compare evstore with the eventsourcing SQLite and in-memory recorders",
                       add_help=False, prefix_chars="\0")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def cmd_bench(a: argparse.Namespace) -> int:
    from evstore.bench.runner import main as bench_main

    return bench_main(a.args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `evstore read ... | head`
        return 0
    except KeyboardInterrupt:
        print("evstore: interrupted; the store is unchanged past its last commit", file=sys.stderr)
        return 130
    except (evstore.EvstoreError, OSError, ValueError, ImportError, AttributeError) as e:
        print(f"evstore: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback: name what failed, on one line
        print(f"evstore: {type(e).__name__}: {_one_line(str(e))}", file=sys.stderr)
        return 1


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
