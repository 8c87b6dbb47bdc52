"""The C log library (src_c/*.c) under AddressSanitizer and UndefinedBehaviorSanitizer, driven by the harness
src_c/tests/evlog_fuzz.c: over logs written here (its verdicts must match evstore.format.pylog's), then over
mutations of them and of 20,000 logs it generates itself, and over 20,000 commits it encodes with
evl_encode_commit and scans back (with broken inputs, which must be refused without writing). Built
twice: with the SSE4.2 checksum where the CPU has it, and with the slice-by-8 table only. Where clang is
installed, the harness also runs as a libFuzzer target (scanning its input, and encoding commits made of
its bytes), from an empty corpus for a fixed number of runs."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from evstore._build_evlog import SOURCES
from evstore.format import pylog as _pylog
from evstore.format.layout import HEADER, HEADER_SIZE, KIND_AUX, KIND_COMMIT, KIND_EVENT, KIND_MARK, KIND_SNAPSHOT, \
    KIND_TRACKING, U64, LogFormatError

SRC = Path(__file__).resolve().parent.parent / "src_c"
LIBRARY = [str(SRC / name) for name in SOURCES]
GCC = shutil.which("gcc")
CLANG = shutil.which("clang")
ALL = 0b1111110


def rec(kind: int, stream: bytes = b"", type: bytes = b"", meta: bytes = b"", data: bytes = b"", position: int = 0,
        version: int = 0, schema: int = 0) -> bytes:
    length = HEADER_SIZE + len(stream) + len(type) + len(meta) + len(data)
    return HEADER.pack(0, length, kind, 0, len(type), len(stream), 0, position, version, 5, bytes(16), schema,
                       len(meta)) + stream + type + meta + data


def commit(first: int, *items: tuple[Any, ...]) -> bytes:
    """A commit of items (kind, stream, type, data): events numbered from `first`, then COMMIT."""
    body = b""
    events = 0
    for kind, stream, type, data in items:
        body += rec(kind, stream, type, b"m" if kind == KIND_EVENT else b"", data,
                    position=first + events if kind == KIND_EVENT else 0)
        events += kind == KIND_EVENT
    return body + rec(KIND_COMMIT, position=first, version=events, schema=len(items), data=U64.pack(len(body)))


def sealed(raw: bytes) -> bytes:
    buf = bytearray(raw)
    _pylog.seal(buf)
    return bytes(buf)


def inputs() -> dict[str, bytes]:
    """Valid logs sealed by the Python side, and damaged copies of one."""
    mixed = sealed(
        commit(1, (KIND_EVENT, b"order-1", b"Placed", b"{}"), (KIND_EVENT, b"order-1", b"A", b"x" * 40))
        + commit(3, (KIND_MARK, b"order-1", b"$closed", b""), (KIND_TRACKING, b"up", b"", b""))
        + commit(3, (KIND_SNAPSHOT, b"order-1", b"AB", b"snap"), (KIND_EVENT, b"order-2", b"AB", b""),
                 (KIND_AUX, b"ns", b"key", b"value"))
        + commit(4)
        + commit(4, (KIND_EVENT, b"order-2", b"Placed", b"y" * 200))
    )
    flipped = bytearray(mixed)
    flipped[200] ^= 4
    newer = bytearray(mixed)
    struct.pack_into("<B", newer, 8, 7)
    struct.pack_into("<I", newer, 0, _pylog.crc32c(newer[4:struct.unpack_from("<I", newer, 4)[0]]))
    return {
        "empty": b"",
        "one": sealed(commit(1, (KIND_EVENT, b"s", b"T", b"d"))),
        "mixed": mixed,
        "big": sealed(commit(1, *[(KIND_EVENT, b"stream-%d" % (i % 7), b"A", bytes(300)) for i in range(300)])),
        "torn": mixed[:-100],
        "zeros": mixed[:-100] + bytes(100),
        "flipped": bytes(flipped),
        "newer": bytes(newer),
    }


def describe(buf: bytes) -> str:
    """What the harness prints for a file, computed by the pure-Python twin."""
    n = len(buf)
    cap = n // HEADER_SIZE + 1
    r = _pylog.scan(buf, 0, n, next_position=0, kinds=ALL, max_out=cap)
    scan = " ".join(map(str, ["scan", r.code, r.end, r.next_position, r.commits, r.events, r.err_off, *r.offsets]))
    with pytest.raises(LogFormatError) as e:
        _pylog.walk(buf, 0, cap, n)
    return f"{scan} | find {_pylog.find_commit(buf, 0, n)} | walk {e.value.code} {e.value.offset}"


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("crc", ["hardware", "table"])
@pytest.mark.parametrize("iterations", [20_000, pytest.param(2_000_000, marks=pytest.mark.slow)])
def test_evlog_under_sanitizers(tmp_path: Path, crc: str, iterations: int) -> None:
    exe = tmp_path / "evlog_fuzz"
    build = [GCC, "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1", "-Wall", "-Wextra",
             "-Werror", "-std=c11", *(["-DEVL_NO_HWCRC"] if crc == "table" else []), f"-I{SRC}",
             *LIBRARY, str(SRC / "tests" / "evlog_fuzz.c"), "-o", str(exe)]
    done = subprocess.run(build, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr

    files = inputs()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    # The library allocates nothing, so leak checking would only test the harness.
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    run = subprocess.run([str(exe), "-i", str(iterations), "-s", "1", *(str(tmp_path / name) for name in files)],
                         capture_output=True, text=True, env=env, timeout=3600)
    assert run.returncode == 0, run.stderr[-5000:]
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr[-5000:]
    assert run.stdout.splitlines() == [describe(data) for data in files.values()]


@pytest.mark.skipif(CLANG is None, reason="clang is not installed")
def test_evlog_libfuzzer(tmp_path: Path) -> None:
    exe = tmp_path / "evlog_libfuzzer"
    build = [CLANG, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all", "-Wall",
             "-Wextra", "-Werror", "-DEVL_LIBFUZZER", f"-I{SRC}", *LIBRARY,
             str(SRC / "tests" / "evlog_fuzz.c"), "-o", str(exe)]
    done = subprocess.run(build, capture_output=True, text=True)
    if done.returncode != 0 and "libclang_rt.fuzzer" in done.stderr:
        pytest.skip("clang has no libFuzzer runtime")
    assert done.returncode == 0 and not done.stderr, done.stderr
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in inputs().items():
        (corpus / name).write_bytes(data)
    env = dict(os.environ, ASAN_OPTIONS="halt_on_error=1", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    run = subprocess.run([str(exe), "-runs=30000", "-seed=1", "-max_len=4096", str(corpus)], capture_output=True,
                         text=True, env=env, timeout=1800, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-5000:]
    assert "Sanitizer" not in run.stderr and "runtime error" not in run.stderr, run.stderr[-5000:]
