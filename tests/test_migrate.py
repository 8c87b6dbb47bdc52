"""Copying a store into eventsourcing's SQLite and PostgreSQL recorders, resumably."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import pytest

import evstore
from evstore import NewEvent
from evstore.migrate import copy_to_module

from conftest import python_env


def fill(path: str) -> list[tuple[object, int, str, bytes]]:
    with evstore.open(path, durability="os") as s:
        for i in range(250):
            stream: object = uuid.UUID(int=i % 7 + 1) if i % 2 else f"order-{i % 5}"
            s.append(stream, [NewEvent(f"T{i % 3}", f"payload {i}".encode())])  # type: ignore[arg-type]
        return [(e.stream, e.version, e.type, e.data) for e in s.read_all()]


def target_events(module: str, env: dict[str, str]) -> list[tuple[object, int, str, bytes]]:
    from eventsourcing.persistence import InfrastructureFactory
    from eventsourcing.utils import Environment

    factory = InfrastructureFactory.construct(Environment(env={**env, "PERSISTENCE_MODULE": module}))
    try:
        rec = factory.application_recorder()
        out = []
        for n in rec.select_notifications(start=None, limit=10_000):
            oid = n.originator_id
            if isinstance(oid, uuid.UUID) or not str(oid).startswith("order-"):
                oid = uuid.UUID(str(oid))
            out.append((oid, n.originator_version, n.topic, n.state))
        return out
    finally:
        factory.close()


def check_copy(path: str, module: str, env: dict[str, str]) -> None:
    expected = fill(path)
    copied, last = copy_to_module(path, module, env=env, batch=40, stop_after=100)  # interrupted
    assert (copied, last) == (100, 100)
    copied, last = copy_to_module(path, module, env=env, batch=40)  # resumed
    assert (copied, last) == (150, 250)
    assert copy_to_module(path, module, env=env) == (0, 250)  # nothing left to do
    assert target_events(module, env) == expected


def test_copy_into_sqlite_resumes_and_matches(tmp_path: object) -> None:
    env = {"SQLITE_DBNAME": os.path.join(str(tmp_path), "target.sqlite"), "ORIGINATOR_ID_TYPE": "text"}
    check_copy(os.path.join(str(tmp_path), "s.evs"), "eventsourcing.sqlite", env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL server on loopback (Debian's postgresql package)."""
    bindir = "/usr/lib/postgresql"
    versions = sorted(os.listdir(bindir)) if os.path.isdir(bindir) else []
    if not versions or not os.path.exists(os.path.join(bindir, versions[-1], "bin", "initdb")):
        pytest.skip("PostgreSQL server binaries are not installed (Debian package postgresql)")
    bin_ = os.path.join(bindir, versions[-1], "bin")
    tmp = tempfile.mkdtemp(prefix="evstore-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's postgres user
        shutil.chown(tmp, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(tmp, "data"), _free_port()
    subprocess.run([*run_as, os.path.join(bin_, "initdb"), "-D", data, "-A", "trust", "-U", "evstore"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, os.path.join(bin_, "pg_ctl"), "-D", data, "-l", os.path.join(tmp, "log"), "-w", "-o",
                    f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield {"POSTGRES_DBNAME": "postgres", "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port),
               "POSTGRES_USER": "evstore", "POSTGRES_PASSWORD": "", "ORIGINATOR_ID_TYPE": "text"}
    finally:
        subprocess.run([*run_as, os.path.join(bin_, "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def test_copy_into_postgres_resumes_and_matches(tmp_path: object, postgres: dict[str, str]) -> None:
    check_copy(os.path.join(str(tmp_path), "s.evs"), "eventsourcing.postgres", postgres)


def test_copy_command(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "s.evs")
    expected = fill(path)
    env = {"SQLITE_DBNAME": os.path.join(str(tmp_path), "t.sqlite"), "ORIGINATOR_ID_TYPE": "text"}
    exe = os.path.join(os.path.dirname(__import__("sys").executable), "evstore")
    out = subprocess.run([exe, "copy", path, "--to-module", "eventsourcing.sqlite"], env=python_env(**env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "copied 250 events" in out.stdout
    assert target_events("eventsourcing.sqlite", env) == expected
