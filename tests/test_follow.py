"""`evstore copy --follow`: live replication into an eventsourcing persistence module, exactly once
through the target's tracking record, resuming after a kill, stopping cleanly on SIGINT/SIGTERM; and
the documented move of an application from evstore to PostgreSQL, end to end against a real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

import evstore
from evstore import NewEvent
from evstore.migrate import copy_to_module, followers

from conftest import python_env
from test_migrate import postgres, target_events  # noqa: F401  (the throwaway server fixture)

EXE = os.path.join(os.path.dirname(sys.executable), "evstore")


def _follower(path: str, module: str, env: dict[str, str], batch: int = 50, *app: str) -> subprocess.Popen[str]:
    return subprocess.Popen([EXE, "copy", path, "--to-module", module, "--follow", "--batch", str(batch), *app],
                            env=python_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _status(path: str) -> dict[str, Any]:
    rows = followers(path)
    return rows[0] if rows else {"position": 0}


def _wait_for(cond: Any, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_follow_copies_new_commits_until_stopped(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "s.evs")
    env = {"SQLITE_DBNAME": os.path.join(str(tmp_path), "t.sqlite"), "ORIGINATOR_ID_TYPE": "text"}
    with evstore.open(path) as s:
        for i in range(30):
            s.append(f"order-{i % 4}", [NewEvent("T", str(i).encode())])
        flag = threading.Event()
        result: list[tuple[int, int]] = []
        t = threading.Thread(target=lambda: result.append(copy_to_module(
            path, "eventsourcing.sqlite", env=env, batch=7, follow=True, stop=flag.is_set, poll=0.01)))
        t.start()
        _wait_for(lambda: _status(path)["position"] == 30)
        for i in range(30, 45):
            s.append(f"order-{i % 4}", [NewEvent("T", str(i).encode())])
        _wait_for(lambda: _status(path)["position"] == 45)
        flag.set()
        t.join(10)
        assert result == [(45, 45)]
        expected = [(e.stream, e.version, e.type, e.data) for e in s.read_all()]
    assert target_events("eventsourcing.sqlite", env) == expected
    st = _status(path)
    assert (st["name"], st["module"], st["head"]) == ("evstore-copy", "eventsourcing.sqlite", 45)
    with pytest.raises(ValueError):
        copy_to_module(path, "eventsourcing.sqlite", env=env, batch=0)


def test_follow_command_stops_cleanly_on_sigint_and_sigterm_and_shows_its_lag(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "s.evs")
    env = {"SQLITE_DBNAME": os.path.join(str(tmp_path), "t.sqlite"), "ORIGINATOR_ID_TYPE": "text"}
    with evstore.open(path) as s:
        s.append("order-1", [NewEvent("T", b"1")] * 10)
        for sig in (signal.SIGINT, signal.SIGTERM):
            p = _follower(path, "eventsourcing.sqlite", env)
            _wait_for(lambda: _status(path)["position"] == s.head())
            s.append("order-1", [NewEvent("T", b"2")] * 5)
            _wait_for(lambda: _status(path)["position"] == s.head())
            out = subprocess.run([EXE, "consumers", path], env=python_env(), capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("copy:")][0]
            assert line.split("\t")[:3] == ["copy:evstore-copy -> eventsourcing.sqlite", str(s.head()), "lag 0"]
            p.send_signal(sig)
            stdout, stderr = p.communicate(timeout=30)
            assert p.returncode == 0, stderr
            assert "stopped" in stdout
        expected = [(e.stream, e.version, e.type, e.data) for e in s.read_all()]
    assert target_events("eventsourcing.sqlite", env) == expected


# -- moving an application from evstore to PostgreSQL --------------------------------------------


def _app_events(env: dict[str, str], application: str) -> list[tuple[object, int, str, bytes]]:
    """(originator id, version, topic, state) of every notification of `application` in PostgreSQL."""
    from eventsourcing.persistence import InfrastructureFactory
    from eventsourcing.utils import Environment

    factory = InfrastructureFactory.construct(Environment(name=application, env={
        **env, "PERSISTENCE_MODULE": "eventsourcing.postgres"}))
    try:
        rec = factory.application_recorder()
        return [(n.originator_id, n.originator_version, n.topic, n.state)
                for n in rec.select_notifications(start=None, limit=1_000_000)]
    finally:
        factory.close()


def _app_classes() -> Any:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class Account(Aggregate):
        def __init__(self, owner: str) -> None:
            self.owner = owner
            self.entries: list[int] = []

        @event("Entered")
        def enter(self, amount: int) -> None:
            self.entries.append(amount)

    class Ledger(Application):
        pass

    return Account, Ledger


def test_an_application_moves_from_evstore_to_postgres_with_nothing_lost(tmp_path: object,
                                                                         postgres: dict[str, str]) -> None:
    Account, Ledger = _app_classes()
    root = os.path.join(str(tmp_path), "evstore")
    evs_env = {"PERSISTENCE_MODULE": "evstore.eventsourcing", "EVSTORE_PATH": root, "EVSTORE_DURABILITY": "os"}
    pg_env = {**postgres, "ORIGINATOR_ID_TYPE": "uuid"}
    app = Ledger(env=evs_env)
    accounts = []
    for i in range(20):
        a = Account(f"owner {i}")
        app.save(a)
        accounts.append(a.id)
    store_path = os.path.join(root, "Ledger", "events")
    assert os.path.isdir(store_path)
    # 1. follow: the copy catches up and keeps following while the application writes
    stop = threading.Event()
    written: list[tuple[uuid.UUID, int]] = []

    def write() -> None:
        i = 0
        while not stop.is_set():
            acc = app.repository.get(accounts[i % len(accounts)])
            acc.enter(i)
            app.save(acc)
            written.append((acc.id, i))
            i += 1
            time.sleep(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    app_arg = ("--application", "Ledger")
    follower = _follower(store_path, "eventsourcing.postgres", pg_env, 20, *app_arg)
    try:
        _wait_for(lambda: _status(store_path)["position"] > 100)
        follower.send_signal(signal.SIGKILL)  # killed mid-way: it resumes from the target's tracking record
        follower.wait()
        time.sleep(0.3)
        follower = _follower(store_path, "eventsourcing.postgres", pg_env, 20, *app_arg)
        time.sleep(0.5)
    finally:
        # 2. stop the writers
        stop.set()
        writer.join()
    with evstore.open(store_path, readonly=True) as s:
        head = s.head()
        expected = [(e.stream, e.version, e.type, e.data) for e in s.read_all()]
    # 3. wait for lag 0
    def lag() -> int:
        out = subprocess.run([EXE, "consumers", store_path], env=python_env(), capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("copy:")][0]
        return int(line.split("\t")[2].split()[1])

    _wait_for(lambda: lag() == 0)
    follower.send_signal(signal.SIGTERM)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert f"up to position {head:,}" in out
    app.close()
    got = _app_events(pg_env, "Ledger")
    assert got == expected  # every event, once, in order
    # 4. switch PERSISTENCE_MODULE: the application reads the same state from PostgreSQL
    moved = Ledger(env={**pg_env, "PERSISTENCE_MODULE": "eventsourcing.postgres"})
    try:
        want: dict[uuid.UUID, list[int]] = {a: [] for a in accounts}
        for aid, amount in written:
            want[aid].append(amount)
        for aid in accounts:
            got = moved.repository.get(aid)
            assert got.entries == want[aid]
        acc = moved.repository.get(accounts[0])
        acc.enter(-1)
        moved.save(acc)  # and goes on writing there
        assert moved.repository.get(accounts[0]).entries[-1] == -1
    finally:
        moved.close()
    assert _status(store_path)["position"] == head
