"""A throwaway PostgreSQL server for the benchmark (Debian's postgresql package binaries): started on
loopback in a temporary folder, removed at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

BINDIR = "/usr/lib/postgresql"


def server_bin() -> str | None:
    """The newest installed server's bin/ folder, or None."""
    versions = sorted(os.listdir(BINDIR)) if os.path.isdir(BINDIR) else []
    for v in reversed(versions):
        b = os.path.join(BINDIR, v, "bin")
        if os.path.exists(os.path.join(b, "initdb")):
            return b
    return None


@contextlib.contextmanager
def server() -> Iterator[dict[str, str]]:
    """The eventsourcing POSTGRES_* settings of a new server, stopped and removed on exit. Raises
    RuntimeError when no server binaries are installed."""
    bin_ = server_bin()
    if bin_ is None:
        raise RuntimeError("PostgreSQL server binaries are not installed (Debian package postgresql)")
    tmp = tempfile.mkdtemp(prefix="evstore-bench-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's postgres user
        shutil.chown(tmp, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    data = os.path.join(tmp, "data")
    try:
        subprocess.run([*run_as, os.path.join(bin_, "initdb"), "-D", data, "-A", "trust", "-U", "evstore"],
                       check=True, capture_output=True)
        subprocess.run([*run_as, os.path.join(bin_, "pg_ctl"), "-D", data, "-l", os.path.join(tmp, "log"), "-w",
                        "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start"], check=True,
                       capture_output=True)
        yield {"POSTGRES_DBNAME": "postgres", "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port),
               "POSTGRES_USER": "evstore", "POSTGRES_PASSWORD": "", "ORIGINATOR_ID_TYPE": "text"}
    finally:
        subprocess.run([*run_as, os.path.join(bin_, "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
