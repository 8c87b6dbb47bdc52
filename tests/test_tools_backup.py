"""`evstore backup`: durable before it says done, owner-only, and a backup that fails or is killed
half-way leaves nothing at the destination that could pass for a complete copy."""

from __future__ import annotations

import os
import stat

import pytest

import evstore
from evstore import NewEvent, backup as backup_mod
from evstore.storage import durable

from test_tools_recover import FAULTS, run  # noqa: F401  (FAULTS: the injection hooks run() installs)


@pytest.fixture
def big(tmp_path: object) -> str:
    path = os.path.join(str(tmp_path), "s.evs")
    with evstore.open(path, segment_size=64 * 1024) as s:
        for i in range(300):
            s.append(f"s-{i % 7}", [NewEvent("T", os.urandom(100)) for _ in range(10)])
    return path


def test_backup_syncs_every_file_and_directory_and_is_owner_only(big: str, tmp_path: object,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    synced: set[str] = set()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.add(os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    dest = os.path.join(str(tmp_path), "sub", "copy.evs")
    head = backup_mod.backup(big, dest)
    assert head == 3000
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    # after the rename, every file and directory of the copy had been synced (under its partial name)
    partial = os.path.realpath(backup_mod.partial_path(os.path.realpath(dest)))
    for root, dirs, files in os.walk(dest):
        for name in [*dirs, *files, "."]:
            p = os.path.realpath(os.path.join(root, name))
            assert p.replace(os.path.realpath(dest), partial, 1) in synced or p in synced, p
    assert os.path.realpath(os.path.dirname(dest)) in synced  # the entry of the copy itself
    out = run("verify", dest)
    assert out.returncode == 0 and "3,000 events" in out.stdout


def test_backup_failing_half_way_leaves_no_destination(big: str, tmp_path: object) -> None:
    dest = os.path.join(str(tmp_path), "copy.evs")
    out = run("backup", big, dest, EVSTORE_FAULT="enospc:200000")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "No space left" in out.stderr and "nothing was left" in out.stderr
    assert not os.path.exists(dest)
    assert os.listdir(str(tmp_path)) == ["s.evs"]  # nor a partial directory
    out = run("backup", big, dest)  # and once space returns, the backup works
    assert out.returncode == 0, out.stderr


def test_backup_onto_a_full_filesystem_leaves_no_destination(big: str, tmp_path: object) -> None:
    """The same on a real full disk: a 256 KiB tmpfs (needs root and mount; skipped otherwise)."""
    import subprocess

    mnt = os.path.join(str(tmp_path), "small")
    os.mkdir(mnt)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        dest = os.path.join(mnt, "copy.evs")
        out = run("backup", big, dest)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert "No space left" in out.stderr
        assert os.listdir(mnt) == []
        assert run("verify", dest).returncode == 1
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_backup_killed_at_any_step_never_leaves_a_partial_copy_at_the_destination(big: str,
                                                                                 tmp_path: object) -> None:
    count = os.path.join(str(tmp_path), "count")
    ref = os.path.join(str(tmp_path), "ref.evs")
    assert run("backup", big, ref, EVSTORE_FAULT="count", EVSTORE_FAULT_COUNT=count).returncode == 0
    steps = int(open(count).read())
    for k in range(1, steps + 1, 4):
        dest = os.path.join(str(tmp_path), f"k{k}.evs")
        out = run("backup", big, dest, EVSTORE_FAULT=f"kill:{k}")
        assert out.returncode == 137, out.stderr
        if os.path.exists(dest):  # only whole: the rename into place is the last step
            with evstore.open(dest, readonly=True) as b:
                assert b.head() == 3000
        for name in os.listdir(str(tmp_path)):
            assert not name.startswith(f"k{k}.evs") or name == f"k{k}.evs"
    assert durable  # the module whose calls are counted


def test_backup_refuses_a_path_that_is_not_a_store(tmp_path: object) -> None:
    empty = os.path.join(str(tmp_path), "empty")
    os.mkdir(empty)
    out = run("backup", empty, os.path.join(str(tmp_path), "copy"))
    assert out.returncode == 1 and "no store at" in out.stderr
    assert os.listdir(empty) == [] and not os.path.exists(os.path.join(str(tmp_path), "copy"))
