"""What the workloads share: the state of one run (`Ctx`: the folder, the sizes, the read datasets),
the `Workload` entry each family module lists, and the small helpers they have in common."""

from __future__ import annotations

import collections
import gc
import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import evstore
from evstore.bench.results import BACKEND_NAME, Row, Sizes, Target

PAYLOAD = (b'{"note": "' + b"x" * 180 + b'", "n": 1}')  # 200 bytes
assert len(PAYLOAD) == 200
TOPICS = tuple(f"evstore.bench:Ev{i}" for i in range(4))  # the type filter selects TOPICS[0]: a quarter


# -- helpers -------------------------------------------------------------------------------------


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """(smallest time of `repeat` calls, the last result)."""
    lo = float("inf")
    out = None
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        lo = min(lo, dt)
    return lo, out


def count(it: Iterable[Any]) -> int:
    """Consume an iterator at C speed and return how many items it gave."""
    last = collections.deque(zip(it, itertools.count(1)), maxlen=1)
    return last[0][1] if last else 0


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def log_bytes(path: str) -> int:
    """Bytes of a store's log files, without the zeros of the space allocated after their commits
    (to within the few zero bytes a commit itself may end with)."""
    logdir = os.path.join(path, "log")
    total = 0
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name), "rb") as f:
            end = f.seek(0, os.SEEK_END)
            while end > 0:
                step = min(end, 1 << 20)
                f.seek(end - step)
                chunk = f.read(step).rstrip(b"\0")
                if chunk:
                    end = end - step + len(chunk)
                    break
                end -= step
        total += end
    return total


def es_module() -> Any:
    """evstore.eventsourcing; the benchmark compares with the eventsourcing library, so it needs it."""
    try:
        from evstore import eventsourcing as mod
    except ModuleNotFoundError as e:
        if e.name != "eventsourcing" and not (e.name or "").startswith("eventsourcing."):
            raise
        raise evstore.EvstoreError("evstore bench compares evstore with the eventsourcing library: "
                                   "pip install 'evstore[eventsourcing]'") from e
    return mod


def stored(oid: uuid.UUID, v: int) -> Any:
    from eventsourcing.persistence import StoredEvent

    # A UUID id under either eventsourcing version: 10 types originator_id as str, but its recorders
    # (evstore's, SQLite's, the in-memory one) take a UUID as 9.5's do, so one dataset serves the
    # native reads and the recorders of both versions alike.
    return StoredEvent(originator_id=oid, originator_version=v,  # type: ignore[arg-type,unused-ignore]
                       topic=TOPICS[v % 4], state=PAYLOAD)


def sqlite_recorder(path: str, pool_size: int = 5) -> Any:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    ds = SQLiteDatastore(path, pool_size=pool_size, max_overflow=16)
    rec = SQLiteApplicationRecorder(ds)
    rec.create_table()
    return rec


def popo_recorder() -> Any:
    from eventsourcing.popo import POPOApplicationRecorder

    return POPOApplicationRecorder()


def page_notifications(rec: Any, topics: Sequence[str] = (), page: int = 1_000) -> int:
    """Read every notification in pages of `page`; returns how many."""
    start = 1
    n = 0
    while True:
        ns = rec.select_notifications(start, page, topics=topics)
        if not ns:
            return n
        n += len(ns)
        start = ns[-1].id + 1


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def events_row(workload: str, backend: str, n: int, seconds: float, note: str = "") -> Row:
    """A row in events/s: n events in `seconds`."""
    return Row(workload, BACKEND_NAME[backend], n, rate(n, seconds), "events/s", note=note, seconds=seconds)


def subprocess_env() -> dict[str, str]:
    """The environment of a helper subprocess: this process's, with this evstore first on the path."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(evstore.__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- the datasets the read workloads share -------------------------------------------------------


@dataclass
class Dataset:
    """One backend's read dataset: a long stream plus streams of 100 events."""

    backend: str
    path: str  # "" for the in-memory recorder
    big: uuid.UUID
    small: list[uuid.UUID]
    total: int
    stream: int
    recorder: Any = None  # sqlite / popo
    filtered: int = 0  # events of TOPICS[0]
    build_seconds: float = 0.0


class Ctx:
    """State of one `run`: the folder, the sizes, the datasets built so far."""

    def __init__(self, tmp: str, sizes: Sizes, repeat: int, backends: Sequence[str],
                 say: Callable[[str], None]) -> None:
        self.tmp = tmp
        self.sizes = sizes
        self.repeat = repeat
        self.backends = tuple(backends)
        self.say = say
        self.datasets: dict[str, Dataset] = {}
        self.es = es_module()
        self._n = 0

    def path(self, name: str) -> str:
        self._n += 1
        return os.path.join(self.tmp, f"{self._n:03d}-{name}")

    def on(self, backend: str) -> bool:
        return backend in self.backends

    def dataset_sizes(self, backend: str) -> tuple[int, int]:
        """(long stream, total) of a backend's dataset."""
        s = self.sizes
        if backend == "python":
            f = s.python_fraction
            stream = max(1_000, int(s.stream * f))
            return stream, max(stream + s.streams * 100, int(s.total * f))
        if backend == "popo":
            return s.stream, min(s.total, s.popo_total)
        return s.stream, s.total

    def dataset(self, backend: str) -> Dataset:
        d = self.datasets.get(backend)
        if d is None:
            self.say(f"building the {BACKEND_NAME[backend]} dataset")
            t = time.perf_counter()
            d = self._build(backend)
            d.build_seconds = time.perf_counter() - t
            self.datasets[backend] = d
            # The datasets (the in-memory recorder's above all) are long-lived objects: keep them out
            # of the cyclic GC's way, so that a later timing does not pay for traversing them.
            gc.collect()
            gc.freeze()
        return d

    def _build(self, backend: str) -> Dataset:
        stream, total = self.dataset_sizes(backend)
        n_small = (total - stream) // 100
        big = uuid.uuid4()
        small = [uuid.uuid4() for _ in range(n_small)]
        total = stream + n_small * 100
        filtered = sum(1 for v in range(1, stream + 1) if v % 4 == 0) + n_small * 25
        if backend in ("c", "python"):
            path = self.path(f"dataset-{backend}.evs")
            # written through the eventsourcing recorder, so that one store serves the native reads
            # and select_events / select_notifications
            with evstore.open(path, durability="os", log_impl=backend) as store:
                rec = self.es.EvstoreApplicationRecorder(store)
                for v0 in range(1, stream + 1, 100):
                    rec.insert_events([stored(big, v) for v in range(v0, min(v0 + 100, stream + 1))])
                for oid in small:
                    rec.insert_events([stored(oid, v) for v in range(1, 101)])
            return Dataset(backend, path, big, small, total, stream, filtered=filtered)
        if backend == "sqlite":
            path = self.path("dataset.sqlite")
            rec = sqlite_recorder(path)
        else:
            path = ""
            rec = popo_recorder()
        for v0 in range(1, stream + 1, 100):
            rec.insert_events([stored(big, v) for v in range(v0, min(v0 + 100, stream + 1))])
        for oid in small:
            rec.insert_events([stored(oid, v) for v in range(1, 101)])
        return Dataset(backend, path, big, small, total, stream, recorder=rec, filtered=filtered)

    def close(self) -> None:
        for d in self.datasets.values():
            if d.backend == "sqlite" and d.recorder is not None:
                d.recorder.datastore.close()
        self.datasets.clear()


@dataclass(frozen=True)
class Workload:
    """One workload of `evstore bench`: its name (the `workload` of the rows it gives), the function
    that measures it, and the target its evstore (C log) row is judged against, if any."""

    name: str
    measure: Callable[[Ctx], list[Row]]
    target: Target | None = None
