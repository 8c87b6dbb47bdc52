"""The command line's errors and arguments: one line on stderr and exit 1 for every error, nothing
created on a path that is not a store, and `tail` counting the events it was asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import evstore
from evstore import NewEvent

from conftest import python_env
from test_tools_recover import SCRIPT, run


def one_line_error(out: subprocess.CompletedProcess[str]) -> bool:
    return (out.returncode == 1 and out.stderr.startswith("evstore: ") and out.stderr.count("\n") == 1
            and "Traceback" not in out.stderr)


@pytest.fixture
def filled(tmp_path: object) -> str:
    path = os.path.join(str(tmp_path), "s.evs")
    with evstore.open(path) as s:
        for i in range(40):
            s.append(f"order-{i % 4}", [NewEvent("Placed" if i % 10 == 0 else "Paid", b"{}")])
    return path


@pytest.mark.parametrize("cmd", [["info"], ["streams"], ["read", "x"], ["tail"], ["verify"], ["reindex"],
                                 ["recover"], ["backup", "DEST"], ["compact-snapshots"], ["export"],
                                 ["consumers"], ["copy", "--to-module", "eventsourcing.sqlite"]])
def test_commands_on_an_empty_directory_say_no_store_and_create_nothing(tmp_path: object, cmd: list[str]) -> None:
    empty = os.path.join(str(tmp_path), "empty")
    os.mkdir(empty)
    args = [a.replace("DEST", os.path.join(str(tmp_path), "dest")) for a in cmd]
    out = run(args[0], empty, *args[1:])
    assert one_line_error(out) and f"no store at {empty}" in out.stderr, out.stderr
    assert "create=True" not in out.stderr
    assert os.listdir(empty) == [] and sorted(os.listdir(str(tmp_path))) == ["empty"]


def test_read_only_commands_on_a_missing_store_make_sense_on_the_command_line(tmp_path: object) -> None:
    for cmd in (["read", "s"], ["streams"], ["tail"]):
        out = run(cmd[0], os.path.join(str(tmp_path), "absent"), *cmd[1:])
        assert one_line_error(out) and "no store at" in out.stderr and "create=True" not in out.stderr


def test_tail_type_prints_the_last_n_events_of_that_type(filled: str) -> None:
    out = run("tail", filled, "--type", "Placed", "-n", "3", "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    assert [json.loads(x)["position"] for x in out.stdout.splitlines()] == [11, 21, 31]
    out = run("tail", filled, "--type", "Placed", "-n", "10", "--format", "jsonl")
    assert [json.loads(x)["position"] for x in out.stdout.splitlines()] == [1, 11, 21, 31]


@pytest.mark.parametrize("args", [["tail", "-n", "-5"], ["read", "order-1", "--limit", "-1"],
                                  ["compact-snapshots", "--keep", "-1"], ["export", "--gt", "-3"]])
def test_negative_counts_are_refused(filled: str, args: list[str]) -> None:
    out = run(args[0], filled, *args[1:])
    assert one_line_error(out) and "0 or more" in out.stderr, out.stderr


LIFECYCLES = '''
import evstore
ORDER = evstore.Lifecycle("order", initial="new", transitions={("new", "Placed"): "open"}, final={"open"})
def BROKEN(stream):
    raise RuntimeError("no lifecycle table today")
'''


def run_with(tmp_path: object, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    with open(os.path.join(str(tmp_path), "shop_lc2.py"), "w") as f:
        f.write(LIFECYCLES)
    e = python_env(**env)
    e["PYTHONPATH"] = str(tmp_path) + os.pathsep + e["PYTHONPATH"]
    exe = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "evstore"]
    return subprocess.run([*exe, *args], env=e, capture_output=True, text=True, timeout=120)


def test_verify_lifecycles_takes_a_lifecycle_and_reports_a_failing_function(filled: str, tmp_path: object) -> None:
    out = run_with(tmp_path, "verify", filled, "--lifecycles", "shop_lc2:ORDER")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "lifecycle violation: order-0 v2" in out.stdout  # Paid after Placed has no transition
    out = run_with(tmp_path, "verify", filled, "--lifecycles", "shop_lc2:BROKEN")
    assert one_line_error(out) and "no lifecycle table today" in out.stderr, out.stderr
    out = run_with(tmp_path, "verify", filled, "--lifecycles", "shop_lc_nope:X")
    assert one_line_error(out), out.stderr


def test_copy_to_a_mistyped_module_or_without_its_driver_is_one_line(filled: str, tmp_path: object) -> None:
    out = run_with(tmp_path, "copy", filled, "--to-module", "eventsourcing.postgrs")
    assert one_line_error(out) and "eventsourcing.postgrs" in out.stderr, out.stderr
    fake = os.path.join(str(tmp_path), "psycopg")
    os.mkdir(fake)
    with open(os.path.join(fake, "__init__.py"), "w") as f:
        f.write("raise ImportError('no psycopg here')\n")
    out = run_with(tmp_path, "copy", filled, "--to-module", "eventsourcing.postgres", POSTGRES_DBNAME="x",
                   POSTGRES_HOST="127.0.0.1", POSTGRES_PORT="1", POSTGRES_USER="u", POSTGRES_PASSWORD="p")
    assert one_line_error(out), out.stderr


def test_usage_errors_are_one_line_too() -> None:
    out = run("tail")
    assert one_line_error(out) and "--help" in out.stderr
