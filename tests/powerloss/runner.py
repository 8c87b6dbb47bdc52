"""Record workloads, derive crash states, check them in worker processes, and summarise.

`record` runs a workload's setup (untraced), snapshots the root as the base state, runs the workload
under strace and replays the trace. `run_states` samples crash points and per-state choices from a
seed (state `i` of (workload, model) uses `random.Random(f"{seed}/{workload}/{model}/{i}")`), drops
states whose materialised tree is identical to one already checked, and checks each state twice:
with the index as it was on disk and with `index/` deleted.
"""

from __future__ import annotations

import json
import os
import queue
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .crash import MODELS, Prepared
from .replay import History, Replayer
from .strace import parse, run_traced
from .workloads import SPECS, Spec

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKLOADS = os.path.join(HERE, "workloads.py")
CHECKER = os.path.join(HERE, "checker.py")
INDEX_MODES = ("kept", "deleted")
STATE_TIMEOUT = 60.0


def env_for(spec: Spec) -> dict[str, str]:
    """The environment of workload and checker processes: the evstore under test first (this checkout,
    or the one EVSTORE_POWERLOSS_SRC names, e.g. an older commit's tree to compare); EVSTORE_PURE=1 for
    the Python log so that the tools (recover, backup, import) use it too."""
    env = dict(os.environ)
    src = os.environ.get("EVSTORE_POWERLOSS_SRC", REPO)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EVSTORE_PURE", None)
    if spec.impl == "python":
        env["EVSTORE_PURE"] = "1"
    return env


@dataclass
class Recording:
    spec: Spec
    workdir: str
    root: str
    ack_file: str
    base_acks: list[dict[str, Any]]
    history: History
    prepared: Prepared


def record(spec: Spec, workdir: str) -> Recording:
    """Run the workload's setup and its traced run in `workdir`; return the replayed history."""
    root = os.path.join(workdir, "root")
    ack = os.path.join(workdir, "acks.jsonl")
    os.makedirs(root, mode=0o700)
    env = env_for(spec)
    out = subprocess.run([sys.executable, WORKLOADS, spec.name, "setup", root, ack], env=env, cwd=workdir,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"setup of {spec.name} failed:\n{out.stderr[-4000:]}")
    base_acks = []
    if os.path.exists(ack):
        with open(ack) as f:
            base_acks = [d for d in map(json.loads, f) if d["t"] == "ack"]
    with open(os.path.join(workdir, "base-acks.json"), "w") as f:
        json.dump(base_acks, f)
    shutil.copytree(root, os.path.join(workdir, "base"), symlinks=True)  # for `load` (a reproduction)
    replayer = Replayer(root, ack)  # reads the base state now, before the traced run changes it
    trace_path = os.path.join(workdir, "trace.txt")
    run_traced([sys.executable, WORKLOADS, spec.name, "run", root, ack], trace_path, env=env, cwd=workdir)
    history = replayer.replay(parse(trace_path))
    return Recording(spec, workdir, root, ack, base_acks, history, Prepared(history))


def load(spec: Spec, workdir: str) -> Recording:
    """A recording `record` made in `workdir` earlier (its base copy, acks and trace): the same trace,
    so the same seed and state number give exactly the same crash state."""
    root = os.path.join(workdir, "root")
    ack = os.path.join(workdir, "acks.jsonl")
    with open(os.path.join(workdir, "base-acks.json")) as f:
        base_acks = json.load(f)
    history = Replayer(root, ack, base=os.path.join(workdir, "base")).replay(parse(os.path.join(workdir, "trace.txt")))
    return Recording(spec, workdir, root, ack, base_acks, history, Prepared(history))


# -- checker workers -----------------------------------------------------------------------------


class Worker:
    """One checker process; restarted after it dies or hangs."""

    def __init__(self, env: dict[str, str], logdir: str) -> None:
        self.env = env
        self.logdir = logdir
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        self.err = tempfile.NamedTemporaryFile("w+", dir=self.logdir, prefix="checker-", suffix=".err", delete=False)
        return subprocess.Popen([sys.executable, CHECKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self.err, text=True, env=self.env)

    def check(self, req: dict[str, Any]) -> list[tuple[str, str]]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        p = self.proc
        assert p.stdin is not None and p.stdout is not None
        try:
            p.stdin.write(json.dumps(req) + "\n")
            p.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([p.stdout], [], [], STATE_TIMEOUT)
        line = p.stdout.readline() if ready else ""
        if line:
            return [(str(c), str(d)) for c, d in json.loads(line)["failures"]]
        if p.poll() is None:
            p.kill()
            what = f"hung for more than {STATE_TIMEOUT:.0f} s"
        else:
            rc = p.returncode
            what = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"
        p.wait()
        self.err.seek(0)
        tail = self.err.read()[-600:].strip().replace("\n", " | ")
        self.proc = None
        return [("crash", f"the checking process {what}: {tail}")]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# -- states ----------------------------------------------------------------------------------------


@dataclass
class Result:
    workload: str
    model: str
    index: str
    state: int
    point: int
    seed: int
    failures: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)
    workdir: str = ""  # the recording (trace, base copy, acks): `--reuse` it for the very same state

    def describe(self) -> str:
        head = (f"{self.workload} model={self.model} index={self.index} seed={self.seed} state={self.state} "
                f"point={self.point}")
        body = "\n".join(f"    [{c}] {d}" for c, d in self.failures)
        notes = "\n".join(f"      - {n}" for n in self.notes[:6])
        repro = (f"    reproduce: python -m tests.powerloss --workload {self.workload} --model {self.model} "
                 f"--seed {self.seed} --only-state {self.state} --index {self.index} [--reuse {self.workdir}]")
        return f"{head}\n{body}\n      crash state:\n{notes}\n{repro}"


def run_states(rec: Recording, models: Iterable[str], states: int, seed: int, *, workers: int = 2,
               index_modes: Iterable[str] = INDEX_MODES, only_state: int | None = None,
               keep_failing: str | None = None) -> list[Result]:
    """Check `states` distinct crash states of `rec` per model (each in every index mode)."""
    spec = rec.spec
    tmp = tempfile.mkdtemp(prefix="states-", dir=rec.workdir)
    tasks: list[tuple[str, int, Any, str]] = []
    for model in models:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r} (choose from {MODELS})")
        seen: set[str] = set()
        numbers = [only_state] if only_state is not None else range(states * 4)
        for i in numbers:
            if only_state is None and len(seen) >= states:
                break
            rng = random.Random(f"{seed}/{spec.name}/{model}/{i}")
            st = rec.prepared.state(rec.prepared.choose_point(rng), model, rng)
            d = st.digest()
            if d in seen:
                continue
            seen.add(d)
            for mode in index_modes:
                tasks.append((model, i, st, mode))
    pool: queue.Queue[Worker] = queue.Queue()
    all_workers = [Worker(env_for(spec), tmp) for _ in range(max(1, workers))]
    for w in all_workers:
        pool.put(w)
    counter = iter(range(1 << 30))
    lock = threading.Lock()

    def one(task: tuple[str, int, Any, str]) -> Result:
        model, i, st, mode = task
        with lock:
            n = next(counter)
        dest = os.path.join(tmp, f"s{n}")
        st.write(dest, rec.root)
        acked = rec.base_acks + [a.record for a in rec.history.acks if a.seq < st.point and a.record["t"] == "ack"]
        req = {"dir": dest, "spec": asdict(spec), "ack_file": rec.ack_file, "acked": acked, "index": mode}
        w = pool.get()
        try:
            fails = w.check(req)
        finally:
            pool.put(w)
        if fails and keep_failing:
            os.makedirs(keep_failing, exist_ok=True)
            shutil.copytree(dest, os.path.join(keep_failing, f"{spec.name}-{model}-{mode}-{seed}-{i}"),
                            dirs_exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        return Result(spec.name, model, mode, i, st.point, seed, fails, st.notes, rec.workdir)

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
            results = list(ex.map(one, tasks))
    finally:
        for w in all_workers:
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def table(results: list[Result]) -> str:
    """workload x model x index mode -> states checked, failing states, failures by category."""
    rows: dict[tuple[str, str, str], list[Result]] = defaultdict(list)
    for r in results:
        rows[(r.workload, r.model, r.index)].append(r)
    lines = [f"{'workload':<16} {'model':<8} {'index':<8} {'states':>6} {'failed':>6}  categories",
             "-" * 90]
    total = failed = 0
    for key in sorted(rows):
        rs = rows[key]
        bad = [r for r in rs if r.failures]
        cats = Counter(c for r in bad for c in {c for c, _d in r.failures})
        total += len(rs)
        failed += len(bad)
        lines.append(f"{key[0]:<16} {key[1]:<8} {key[2]:<8} {len(rs):>6} {len(bad):>6}  "
                     + ", ".join(f"{c} {n}" for c, n in sorted(cats.items())))
    lines.append("-" * 90)
    lines.append(f"{'total':<34} {total:>6} {failed:>6}")
    return "\n".join(lines)


def representative(results: list[Result]) -> list[Result]:
    """One failing state per (workload, category): the examples a report shows."""
    out: dict[tuple[str, str], Result] = {}
    for r in results:
        for c, _d in r.failures:
            out.setdefault((r.workload, c), r)
    return list(out.values())


def all_specs() -> list[Spec]:
    return list(SPECS.values())


__all__ = ["INDEX_MODES", "Recording", "Result", "all_specs", "load", "record", "representative", "run_states", "table"]
