"""Replay a parsed trace against a model of the file system under the workload's root.

The replay follows the *live* state (what a process sees: the page cache) and records, in completion
order, everything a crash could keep or lose:

* `DataOp`: a write, truncate or fallocate of one inode (with its bytes);
* `MetaOp`: a directory entry operation (create, mkdir, link, rename, unlink, rmdir), keyed by the
  (directory inode, name) pairs it touches;
* `Sync`: an fsync/fdatasync of one inode (file or directory), or a global sync/syncfs;
* `Ack`: a line the workload wrote to its acknowledgement file (outside the root).

Descriptors are followed per file-descriptor table (threads made with CLONE_FILES share one; a fork
copies it), with open-file offsets, O_APPEND and O_DSYNC/O_SYNC. Paths outside the root are ignored,
except the ack file. Anything the model cannot follow inside the root raises `TraceError`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from .strace import Call, Trace, TraceError, decode, fd_of


@dataclass
class DataOp:
    seq: int
    ino: int
    kind: str  # "w" write, "t" truncate (size), "z" zero range (fallocate punch/zero)
    off: int
    data: bytes = b""
    size: int = 0
    dsync: bool = False  # written through O_DSYNC/O_SYNC or RWF_DSYNC: durable when it completes


@dataclass
class MetaOp:
    seq: int
    kind: str  # "create", "mkdir", "link", "rename", "unlink", "rmdir"
    keys: list[tuple[int, str]]  # the (dir inode, name) entries it changes, in (src, dst) order
    ino: int  # the inode the entry names (the new entry for create/mkdir/link/rename)
    desc: str  # for reports: the path(s) relative to the root


@dataclass
class Sync:
    start: int
    seq: int
    ino: int | None  # None: sync()/syncfs(), everything
    is_dir: bool


@dataclass
class Ack:
    seq: int
    record: dict[str, object]


@dataclass
class _Ofd:
    """An open file description."""

    ino: int | None  # None: outside the root
    path: str
    flags: set[str]
    offset: int = 0


@dataclass
class History:
    """What the replay recorded: the base state and every later operation, in completion order."""

    root: str
    base_files: dict[int, bytes]
    base_dirs: dict[int, dict[str, int]]
    root_ino: int
    is_dir: dict[int, bool] = field(default_factory=dict)
    links: dict[int, str] = field(default_factory=dict)  # symbolic link inode -> target
    data: list[DataOp] = field(default_factory=list)
    meta: list[MetaOp] = field(default_factory=list)
    syncs: list[Sync] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    points: list[int] = field(default_factory=list)  # seq of every recorded operation
    interesting: list[int] = field(default_factory=list)  # just after an ack, a sync, a rename
    end: int = 0  # one past the last seq


_WRITES = frozenset({"write", "pwrite64", "writev", "pwritev", "pwritev2"})
_ALL = 1 << 62  # "every byte given" for a write whose return value the trace does not have


class Replayer:
    """Builds a `History`: made before the traced run (it reads the root's base state from disk),
    then fed the parsed trace with `replay`."""

    def __init__(self, root: str, ack_path: str, base: str | None = None) -> None:
        self.root = os.path.realpath(root)
        self.ack_path = os.path.realpath(ack_path)
        self.next_ino = 1
        self.files: dict[int, bytearray] = {}
        self.dirs: dict[int, dict[str, int]] = {}
        self.links: dict[int, str] = {}
        self.root_ino = self._new_dir()
        base_files: dict[int, bytes] = {}
        self._load_base(base or self.root, self.root_ino, base_files)  # a saved copy, or the root itself
        self.h = History(self.root, base_files, {d: dict(e) for d, e in self.dirs.items()}, self.root_ino)
        self.tables: dict[int, dict[int, _Ofd]] = {}
        self.group: dict[int, int] = {}
        self.ack_buf = b""

    # -- base state ----------------------------------------------------------------------------

    def _new_dir(self) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.dirs[ino] = {}
        return ino

    def _new_file(self, content: bytes = b"") -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.files[ino] = bytearray(content)
        return ino

    def _new_link(self, target: str) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.links[ino] = target
        return ino

    def _load_base(self, path: str, ino: int, out: dict[int, bytes]) -> None:
        for name in sorted(os.listdir(path)):
            p = os.path.join(path, name)
            if os.path.islink(p):
                self.dirs[ino][name] = self._new_link(os.readlink(p))
            elif os.path.isdir(p):
                child = self._new_dir()
                self.dirs[ino][name] = child
                self._load_base(p, child, out)
            else:
                with open(p, "rb") as f:
                    content = f.read()
                child = self._new_file(content)
                out[child] = content
                self.dirs[ino][name] = child

    # -- paths -----------------------------------------------------------------------------------

    def _rel(self, path: str) -> list[str] | None:
        """Components of `path` below the root, or None when it is outside."""
        p = os.path.normpath(path)
        if p == self.root:
            return []
        if not p.startswith(self.root + os.sep):
            return None
        return p[len(self.root) + 1 :].split(os.sep)

    def lookup(self, path: str, follow: bool = True, depth: int = 0) -> int | None:
        """The inode `path` names (following symbolic links, the last one only if `follow`)."""
        parts = self._rel(path)
        if parts is None or depth > 40:
            return None
        ino = self.root_ino
        cur = self.root
        for i, name in enumerate(parts):
            entries = self.dirs.get(ino)
            if entries is None or name not in entries:
                return None
            child = entries[name]
            if child in self.links and (follow or i < len(parts) - 1):
                target = os.path.normpath(os.path.join(cur, self.links[child]))
                return self.lookup(os.path.join(target, *parts[i + 1 :]), follow, depth + 1)
            ino = child
            cur = os.path.join(cur, name)
        return ino

    def parent(self, path: str) -> tuple[int, str] | None:
        """(dir inode, name) of `path` when it is strictly under the root."""
        parts = self._rel(path)
        if not parts:
            return None
        d = self.lookup(os.path.join(self.root, *parts[:-1])) if len(parts) > 1 else self.root_ino
        if d is None or d not in self.dirs:
            raise TraceError(f"the parent of {path} is not a directory the model knows")
        return d, parts[-1]

    def _path(self, call: Call, dir_arg: str | None, path_arg: str) -> str:
        p = decode(path_arg).decode("utf-8", "surrogateescape")
        if os.path.isabs(p):
            return os.path.normpath(p)
        if dir_arg is None:
            raise TraceError(f"line {call.seq}: relative path {p!r} without a directory")
        _fd, base = fd_of(dir_arg)
        if base is None:
            raise TraceError(f"line {call.seq}: no -y path for {dir_arg!r}")
        return os.path.normpath(os.path.join(base, p))

    # -- descriptors -----------------------------------------------------------------------------

    def _table(self, tid: int, clones: dict[int, tuple[int, bool]]) -> dict[int, _Ofd]:
        g = self.group.get(tid)
        if g is not None:
            return self.tables[g]
        parent = clones.get(tid)
        if parent is None:
            self.group[tid] = tid
            self.tables[tid] = {}
        else:
            ptab = self._table(parent[0], clones)
            if parent[1]:
                self.group[tid] = self.group[parent[0]]
            else:
                self.group[tid] = tid
                self.tables[tid] = dict(ptab)  # a fork shares the open file descriptions
        return self.tables[self.group[tid]]

    def _ofd(self, table: dict[int, _Ofd], call: Call, arg: str) -> _Ofd | None:
        fd, path = fd_of(arg)
        if fd is None:
            return None
        o = table.get(fd)
        if o is None:
            if path is not None and self._rel(path) is not None:
                raise TraceError(f"line {call.seq}: descriptor {fd} of {path} was opened before the trace")
            return None
        return o

    # -- recording -------------------------------------------------------------------------------

    def _point(self, seq: int, interesting: bool = False) -> None:
        self.h.points.append(seq)
        if interesting:
            self.h.interesting.append(seq)

    def _write(self, call: Call, o: _Ofd, data: bytes, off: int | None, dsync: bool = False) -> None:
        """A write of `data` at `off` (None: the description's offset, or the end with O_APPEND)."""
        if o.ino is None:
            if o.path == self.ack_path:
                self._ack(call.seq, data)
            return
        content = self.files.get(o.ino)
        if content is None:
            raise TraceError(f"line {call.seq}: write to a directory {o.path}")
        if off is None:
            at = len(content) if "O_APPEND" in o.flags else o.offset
            o.offset = at + len(data)
        else:
            at = off
        if at > len(content):
            content.extend(bytes(at - len(content)))
        content[at : at + len(data)] = data
        dsync = dsync or bool(o.flags & {"O_DSYNC", "O_SYNC"})
        self.h.data.append(DataOp(call.seq, o.ino, "w", at, data, dsync=dsync))
        self._point(call.seq)

    def _truncate(self, seq: int, ino: int, size: int) -> None:
        content = self.files[ino]
        if size < len(content):
            del content[size:]
        else:
            content.extend(bytes(size - len(content)))
        self.h.data.append(DataOp(seq, ino, "t", 0, size=size))
        self._point(seq)

    def _ack(self, seq: int, data: bytes) -> None:
        self.ack_buf += data
        while b"\n" in self.ack_buf:
            line, self.ack_buf = self.ack_buf.split(b"\n", 1)
            if line.strip():
                self.h.acks.append(Ack(seq, json.loads(line)))
                self._point(seq, interesting=True)

    def _meta(self, seq: int, kind: str, keys: list[tuple[int, str]], ino: int, desc: str) -> None:
        self.h.meta.append(MetaOp(seq, kind, keys, ino, desc))
        self._point(seq, interesting=kind == "rename")

    def _relname(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    # -- the calls ---------------------------------------------------------------------------------

    def replay(self, trace: Trace) -> History:
        for call in trace.calls:
            table = self._table(call.tid, trace.clones)
            # A write cut off by the death of its process (`= ?`, SIGKILL) is taken as done in full:
            # the kernel finishes the copy of a write already under way (a fatal signal is seen only
            # between pages), and the processes after it read what it wrote (a reopen finds the commit).
            if call.ok or (call.ret is None and call.errno is None and call.name in _WRITES):
                handler = getattr(self, "_do_" + call.name, None)
                if handler is not None:
                    handler(call, table)
        self.h.end = trace.lines + 1
        self.h.is_dir = {i: True for i in self.dirs} | {i: False for i in self.files} | {i: False for i in self.links}
        self.h.links = dict(self.links)
        return self.h

    def _open(self, call: Call, table: dict[int, _Ofd], dir_arg: str | None, path_arg: str, flags_arg: str) -> None:
        path = self._path(call, dir_arg, path_arg)
        flags = set(flags_arg.split("|"))
        fd = call.ret
        assert fd is not None
        ino = self.lookup(path)
        if self._rel(path) is not None:
            if ino is None:
                if "O_CREAT" not in flags:
                    raise TraceError(f"line {call.seq}: {path} opened but unknown to the model")
                d, name = self.parent(path) or (None, "")
                assert d is not None
                ino = self._new_file()
                self.dirs[d][name] = ino
                self._meta(call.seq, "create", [(d, name)], ino, self._relname(path))
            elif "O_TRUNC" in flags and ino in self.files and ({"O_WRONLY", "O_RDWR"} & flags):
                self._truncate(call.seq, ino, 0)
        table[fd] = _Ofd(ino, path, flags)

    def _do_open(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._open(call, table, None, call.args[0], call.args[1])

    def _do_openat(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._open(call, table, call.args[0], call.args[1], call.args[2])

    def _do_openat2(self, call: Call, table: dict[int, _Ofd]) -> None:
        m = re.search(r"flags=([A-Z_|0-9]+)", call.args[2])
        self._open(call, table, call.args[0], call.args[1], m.group(1) if m else "O_RDONLY")

    def _do_creat(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._open(call, table, None, call.args[0], "O_WRONLY|O_CREAT|O_TRUNC")

    def _do_close(self, call: Call, table: dict[int, _Ofd]) -> None:
        fd, _p = fd_of(call.args[0])
        table.pop(fd, None)  # type: ignore[arg-type]

    def _do_close_range(self, call: Call, table: dict[int, _Ofd]) -> None:
        lo, hi = int(call.args[0]), int(call.args[1], 0)
        for fd in [f for f in table if lo <= f <= hi]:
            del table[fd]

    def _do_execve(self, call: Call, table: dict[int, _Ofd]) -> None:
        for fd in [f for f, o in table.items() if "O_CLOEXEC" in o.flags]:
            del table[fd]

    def _dup_to(self, call: Call, table: dict[int, _Ofd], src: str) -> None:
        o = self._ofd(table, call, src)
        if o is not None and call.ret is not None:
            table[call.ret] = o

    def _do_dup(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._dup_to(call, table, call.args[0])

    _do_dup2 = _do_dup
    _do_dup3 = _do_dup

    def _do_fcntl(self, call: Call, table: dict[int, _Ofd]) -> None:
        if call.args[1].startswith("F_DUPFD"):
            self._dup_to(call, table, call.args[0])

    def _do_lseek(self, call: Call, table: dict[int, _Ofd]) -> None:
        o = self._ofd(table, call, call.args[0])
        if o is not None and call.ret is not None:
            o.offset = call.ret

    def _do_write(self, call: Call, table: dict[int, _Ofd]) -> None:
        o = self._ofd(table, call, call.args[0])
        if o is not None:
            self._write(call, o, decode(call.args[1])[: call.ret], None)

    def _iov(self, arg: str, n: int) -> bytes:
        parts = re.findall(r'iov_base=("(?:\\x[0-9a-f]{2})*"(?:\.\.\.)?)', arg)
        return b"".join(decode(p) for p in parts)[:n]

    def _do_writev(self, call: Call, table: dict[int, _Ofd]) -> None:
        o = self._ofd(table, call, call.args[0])
        if o is not None:
            self._write(call, o, self._iov(call.args[1], _ALL if call.ret is None else call.ret), None)

    def _do_pwrite64(self, call: Call, table: dict[int, _Ofd]) -> None:
        o = self._ofd(table, call, call.args[0])
        if o is not None:
            self._write(call, o, decode(call.args[1])[: call.ret], int(call.args[3]))

    def _do_pwritev(self, call: Call, table: dict[int, _Ofd]) -> None:
        o = self._ofd(table, call, call.args[0])
        if o is not None:
            off = int(call.args[3])
            flags = call.args[4] if len(call.args) > 4 else ""
            self._write(call, o, self._iov(call.args[1], _ALL if call.ret is None else call.ret),
                        None if off == -1 else off,
                        dsync="RWF_DSYNC" in flags or "RWF_SYNC" in flags)

    _do_pwritev2 = _do_pwritev

    def _do_sendfile(self, call: Call, table: dict[int, _Ofd]) -> None:
        out = self._ofd(table, call, call.args[0])
        src = self._ofd(table, call, call.args[1])
        n = call.ret or 0
        if out is None or n == 0:
            return
        if src is None or src.ino is None:
            raise TraceError(f"line {call.seq}: sendfile into the root from outside it")
        m = re.match(r"^\[(\d+)\]", call.args[2])
        if m is not None:
            off = int(m.group(1))
        else:
            off = src.offset
            src.offset += n
        self._write(call, out, bytes(self.files[src.ino][off : off + n]), None)

    def _do_copy_file_range(self, call: Call, table: dict[int, _Ofd]) -> None:
        src = self._ofd(table, call, call.args[0])
        out = self._ofd(table, call, call.args[2])
        n = call.ret or 0
        if out is None or n == 0:
            return
        if src is None or src.ino is None:
            raise TraceError(f"line {call.seq}: copy_file_range into the root from outside it")
        mi = re.match(r"^\[(\d+)\]", call.args[1])
        mo = re.match(r"^\[(\d+)\]", call.args[3])
        off = int(mi.group(1)) if mi else src.offset
        if not mi:
            src.offset += n
        self._write(call, out, bytes(self.files[src.ino][off : off + n]), int(mo.group(1)) if mo else None)

    def _do_ftruncate(self, call: Call, table: dict[int, _Ofd]) -> None:
        o = self._ofd(table, call, call.args[0])
        if o is not None and o.ino is not None:
            self._truncate(call.seq, o.ino, int(call.args[1]))

    def _do_truncate(self, call: Call, table: dict[int, _Ofd]) -> None:
        path = self._path(call, None, call.args[0])
        ino = self.lookup(path)
        if ino is not None:
            self._truncate(call.seq, ino, int(call.args[1]))

    def _do_fallocate(self, call: Call, table: dict[int, _Ofd]) -> None:
        o = self._ofd(table, call, call.args[0])
        if o is None or o.ino is None:
            return
        mode, off, ln = call.args[1], int(call.args[2]), int(call.args[3])
        content = self.files[o.ino]
        if "PUNCH_HOLE" in mode or "ZERO_RANGE" in mode:
            end = min(off + ln, len(content)) if "KEEP_SIZE" in mode else off + ln
            if end > off:
                self._write(call, o, bytes(end - off), off)
        elif "KEEP_SIZE" not in mode and off + ln > len(content):
            self._truncate(call.seq, o.ino, off + ln)

    def _sync(self, call: Call, table: dict[int, _Ofd]) -> None:
        o = self._ofd(table, call, call.args[0])
        if o is not None and o.ino is not None:
            self.h.syncs.append(Sync(call.start, call.seq, o.ino, o.ino in self.dirs))
            self._point(call.seq, interesting=True)

    _do_fsync = _sync
    _do_fdatasync = _sync

    def _do_sync(self, call: Call, table: dict[int, _Ofd]) -> None:
        self.h.syncs.append(Sync(call.start, call.seq, None, False))
        self._point(call.seq, interesting=True)

    _do_syncfs = _do_sync

    def _do_mmap(self, call: Call, table: dict[int, _Ofd]) -> None:
        """A shared writable mapping of a file under the root would write behind strace's back: refused,
        except LMDB's lock.mdb (reader slots, reinitialised by the first process to open the index)."""
        if len(call.args) < 5 or call.args[4].startswith("-1") or "MAP_SHARED" not in call.args[3]:
            return
        o = self._ofd(table, call, call.args[4])
        if o is not None and o.ino is not None and "PROT_WRITE" in call.args[2] \
                and os.path.basename(o.path) != "lock.mdb":
            raise TraceError(f"line {call.seq}: {o.path} is mapped shared and writable; such writes are not traced")

    def _do_msync(self, call: Call, table: dict[int, _Ofd]) -> None:
        raise TraceError(f"line {call.seq}: msync: writes through a shared writable mapping are not modelled")

    def _entry_op(self, call: Call, kind: str, path: str) -> None:
        loc = self.parent(path)
        if loc is None:
            return
        d, name = loc
        ino = self.dirs[d].pop(name, None)
        if ino is None:
            raise TraceError(f"line {call.seq}: {kind} of {path}, unknown to the model")
        self._meta(call.seq, kind, [(d, name)], ino, self._relname(path))

    def _do_unlink(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._entry_op(call, "unlink", self._path(call, None, call.args[0]))

    def _do_unlinkat(self, call: Call, table: dict[int, _Ofd]) -> None:
        path = self._path(call, call.args[0], call.args[1])
        self._entry_op(call, "rmdir" if "AT_REMOVEDIR" in call.args[2] else "unlink", path)

    def _do_rmdir(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._entry_op(call, "rmdir", self._path(call, None, call.args[0]))

    def _mkdir(self, call: Call, path: str) -> None:
        loc = self.parent(path)
        if loc is None:
            return
        ino = self._new_dir()
        self.dirs[loc[0]][loc[1]] = ino
        self._meta(call.seq, "mkdir", [loc], ino, self._relname(path))

    def _do_mkdir(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._mkdir(call, self._path(call, None, call.args[0]))

    def _do_mkdirat(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._mkdir(call, self._path(call, call.args[0], call.args[1]))

    def _rename(self, call: Call, src: str, dst: str, flags: str = "") -> None:
        if "RENAME_EXCHANGE" in flags:
            raise TraceError(f"line {call.seq}: RENAME_EXCHANGE is not modelled")
        a, b = self.parent(src), self.parent(dst)
        if a is None and b is None:
            return
        if a is None or b is None:
            raise TraceError(f"line {call.seq}: rename across the root's boundary: {src} -> {dst}")
        ino = self.dirs[a[0]].pop(a[1], None)
        if ino is None:
            raise TraceError(f"line {call.seq}: rename of {src}, unknown to the model")
        self.dirs[b[0]][b[1]] = ino
        self._meta(call.seq, "rename", [a, b], ino, f"{self._relname(src)} -> {self._relname(dst)}")

    def _do_rename(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._rename(call, self._path(call, None, call.args[0]), self._path(call, None, call.args[1]))

    def _do_renameat(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._rename(call, self._path(call, call.args[0], call.args[1]), self._path(call, call.args[2], call.args[3]),
                     call.args[4] if len(call.args) > 4 else "")

    _do_renameat2 = _do_renameat

    def _link(self, call: Call, src: str, dst: str) -> None:
        ino = self.lookup(src)
        b = self.parent(dst)
        if b is None:
            return
        if ino is None:
            raise TraceError(f"line {call.seq}: link into the root from outside it: {src}")
        self.dirs[b[0]][b[1]] = ino
        self._meta(call.seq, "link", [b], ino, f"{self._relname(src)} => {self._relname(dst)}")

    def _do_link(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._link(call, self._path(call, None, call.args[0]), self._path(call, None, call.args[1]))

    def _do_linkat(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._link(call, self._path(call, call.args[0], call.args[1]), self._path(call, call.args[2], call.args[3]))

    def _symlink(self, call: Call, target: str, path: str) -> None:
        loc = self.parent(path)
        if loc is None:
            return
        ino = self._new_link(target)
        self.dirs[loc[0]][loc[1]] = ino
        self._meta(call.seq, "create", [loc], ino, f"{self._relname(path)} -> {target}")

    def _do_symlink(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._symlink(call, decode(call.args[0]).decode("utf-8", "surrogateescape"),
                      self._path(call, None, call.args[1]))

    def _do_symlinkat(self, call: Call, table: dict[int, _Ofd]) -> None:
        self._symlink(call, decode(call.args[0]).decode("utf-8", "surrogateescape"),
                      self._path(call, call.args[1], call.args[2]))


__all__ = ["Ack", "DataOp", "History", "MetaOp", "Replayer", "Sync"]
