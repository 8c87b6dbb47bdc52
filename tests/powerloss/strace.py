"""Record a workload under strace and parse the trace into completed system calls.

The trace is taken with `strace -f -tt -y -xx -s <big>`: `-xx` prints every string (paths included)
as `\\xNN` escapes, so that quotes, commas and brackets inside strings never confuse the parser, and
`-y` annotates descriptors with the path they refer to (used for `*at()` directory descriptors).

Threads: strace prints a call that another thread interrupts as `name(args <unfinished ...>` and
later `<... name resumed>rest) = ret`. A `Call` is made at the resumed line: `seq` is the index of
the line where the call *completed* and `start` the index of the line where it began. Everything
downstream orders events by these indexes: a write is issued when it completes, an fsync covers the
writes completed before its `start`, and is done at its `seq`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

# Every call that can change what a file system holds, or that the model needs to follow
# descriptors (dup, lseek, clone, ...). Reads are left out: they change nothing.
TRACED = (
    "open,openat,openat2,creat,write,pwrite64,writev,pwritev,pwritev2,ftruncate,truncate,fallocate,"
    "fsync,fdatasync,sync_file_range,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,rmdir,"
    "link,linkat,symlink,symlinkat,close,close_range,sync,syncfs,msync,mmap,clone,clone3,fork,vfork,lseek,sendfile,"
    "copy_file_range,dup,dup2,dup3,fcntl,execve"
)
STRING_LIMIT = 1 << 24  # longer than any single write of the workloads (a truncated string is an error)

_LINE = re.compile(r"^(\d+)\s+(\d\d:\d\d:\d\d\.\d+)\s+(.*)$")
_DONE = re.compile(r"^([\w?]+)\((.*)\)\s+=\s+(.*)$", re.S)
_UNFINISHED = re.compile(r"^([\w?]+)\((.*?)\s*<unfinished \.\.\.>$", re.S)
_RESUMED = re.compile(r"^<\.\.\. ([\w?]+) resumed>(.*)\)\s+=\s+(.*)$", re.S)
_RESUMED_NORET = re.compile(r"^<\.\.\. (\w+) resumed>")
_RET = re.compile(r"^(-?\d+|0x[0-9a-f]+|\?)(?:<(.*?)>)?(?:\s+(E[A-Z0-9]+)\b.*)?")
_HEX = re.compile(r"(?:\\x[0-9a-f]{2})+")


class TraceError(Exception):
    """The trace holds something the parser or the model cannot follow (the run is not usable)."""


@dataclass
class Call:
    """One completed system call."""

    seq: int  # index of the line where it completed
    start: int  # index of the line where it began (== seq unless it was interrupted)
    tid: int
    name: str
    args: list[str]
    ret: int | None  # None for "?" (the process died in the call)
    ret_path: str | None  # the -y annotation of a returned descriptor
    errno: str | None

    @property
    def ok(self) -> bool:
        return self.ret is not None and self.ret >= 0 and self.errno is None


@dataclass
class Trace:
    calls: list[Call] = field(default_factory=list)
    lines: int = 0
    clones: dict[int, tuple[int, bool]] = field(default_factory=dict)  # child tid -> (parent, shares fds)


def strace_binary() -> str:
    """The strace to use (PATH first, then /usr/bin/strace); TraceError when there is none."""
    found = shutil.which("strace") or ("/usr/bin/strace" if os.path.exists("/usr/bin/strace") else None)
    if found is None:
        raise TraceError("strace is not installed (the CI script installs it: apt-get install -y strace)")
    return found


def run_traced(argv: list[str], trace_path: str, *, env: dict[str, str], cwd: str, timeout: float = 300) -> None:
    """Run `argv` under strace, writing the trace to `trace_path`; raise on a failing workload."""
    cmd = [strace_binary(), "-f", "-tt", "-y", "-xx", "-s", str(STRING_LIMIT), "-o", trace_path,
           "-e", f"trace={TRACED}", *argv]
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise TraceError(f"traced workload failed ({out.returncode}): {' '.join(argv)}\n{out.stderr[-4000:]}")


def decode(s: str) -> bytes:
    """The bytes of a strace string argument `"\\x41..."` (quotes included); TraceError if truncated."""
    s = s.strip()
    if s.endswith("..."):
        raise TraceError(f"strace cut a string short (raise STRING_LIMIT): {s[:80]}")
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        raise TraceError(f"not a string argument: {s[:80]}")
    body = s[1:-1]
    if not body:
        return b""
    if _HEX.fullmatch(body) is None:
        raise TraceError(f"string not in \\xNN form: {body[:80]}")
    return bytes.fromhex(body.replace("\\x", ""))


def unhex(text: str) -> str:
    """`text` with every run of \\xNN escapes replaced by the characters (paths in -y annotations)."""
    return _HEX.sub(lambda m: bytes.fromhex(m.group(0).replace("\\x", "")).decode("utf-8", "surrogateescape"),
                    text)


def split_args(text: str) -> list[str]:
    """Split an argument list at top-level commas (not inside "", [], {}, () or a <path>)."""
    out: list[str] = []
    depth = 0
    angle = 0
    quote = False
    cur: list[str] = []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == '"':
                quote = False
            continue
        if ch == '"':
            quote = True
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == "," and depth == 0 and angle == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    tail = "".join(cur).strip()
    if tail:
        out.append(tail)
    return out


def fd_of(arg: str) -> tuple[int | None, str | None]:
    """(descriptor, -y path) of an argument like `3</path>`, `AT_FDCWD</cwd>` (fd None) or `-1`."""
    m = re.match(r"^(-?\d+|AT_FDCWD)(?:<(.*)>)?(?:\(deleted\))?$", arg.strip())
    if m is None:
        raise TraceError(f"not a descriptor argument: {arg[:80]}")
    path = unhex(m.group(2)) if m.group(2) is not None else None
    return (None if m.group(1) == "AT_FDCWD" else int(m.group(1))), path


def _ret(text: str) -> tuple[int | None, str | None, str | None]:
    m = _RET.match(text.strip())
    if m is None:
        raise TraceError(f"cannot read the return value {text[:80]!r}")
    v = m.group(1)
    val = None if v == "?" else int(v, 0)
    return val, (unhex(m.group(2)) if m.group(2) is not None else None), m.group(3)


def _clone_shares_files(name: str, args: str) -> bool:
    return name in ("clone", "clone3") and "CLONE_FILES" in args


def parse(trace_path: str) -> Trace:
    """Every completed call of the trace, in completion order, and who cloned whom."""
    tr = Trace()
    pending: dict[int, tuple[str, str, int]] = {}
    with open(trace_path, encoding="ascii", errors="strict") as f:
        lines = f.read().split("\n")
    for idx, raw in enumerate(lines):
        if not raw:
            continue
        m = _LINE.match(raw)
        if m is None:
            raise TraceError(f"unexpected trace line {idx}: {raw[:120]}")
        tid = int(m.group(1))
        body = m.group(3)
        if body.startswith(("+++", "---")):
            if "killed by" in body or "exited with" in body:
                pending.pop(tid, None)  # a call cut off by the death of its process never completed
            continue
        done = _DONE.match(body)
        if body.endswith("<unfinished ...>"):
            u = _UNFINISHED.match(body)
            if u is None:
                raise TraceError(f"unreadable unfinished call at line {idx}: {raw[:120]}")
            pending[tid] = (u.group(1), u.group(2), idx)
            continue
        if body.startswith("<..."):
            r = _RESUMED.match(body)
            if r is None:
                if _RESUMED_NORET.match(body):  # "<... x resumed> <unfinished ...>)" of a dying thread
                    pending.pop(tid, None)
                    continue
                raise TraceError(f"unreadable resumed call at line {idx}: {raw[:120]}")
            name, rest, ret = r.group(1), r.group(2), r.group(3)
            if tid not in pending or pending[tid][0] != name:
                raise TraceError(f"line {idx}: {name} resumed without its start")
            _n, head, start = pending.pop(tid)
            arg_text = head + rest
        elif done is not None:
            name, arg_text, ret = done.group(1), done.group(2), done.group(3)
            start = idx
        else:
            raise TraceError(f"unreadable trace line {idx}: {raw[:160]}")
        val, rpath, err = _ret(ret)
        if name in ("clone", "clone3", "fork", "vfork") and val is not None and val > 0:
            tr.clones[val] = (tid, _clone_shares_files(name, arg_text))
        tr.calls.append(Call(idx, start, tid, name, split_args(arg_text), val, rpath, err))
    tr.lines = len(lines)
    return tr
