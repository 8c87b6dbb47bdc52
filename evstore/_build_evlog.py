"""cffi build script (API mode, out of line) for the C log library: `evstore._evlog_c`.

setup.py uses it through `cffi_modules=["evstore/_build_evlog.py:ffi"]`, from the repo root.
Run it directly to build the module in place, into evstore/, for development and tests.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "src_c", "evlog.h")
SOURCES = ("evlog.c", "encode.c", "crc32c.c")  # the reader, the encoder and writer, the checksum


def declarations(header_text: str) -> str:
    """The header as cffi's cdef takes it: comments and preprocessor lines dropped, except that
    `#define NAME value` becomes `#define NAME ...` (the compiler supplies the value)."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", header_text, flags=re.S)
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            m = re.match(r"\s*#\s*define\s+(\w+)\s+\S", line)
            if m:
                lines.append(f"#define {m.group(1)} ...")
        else:
            lines.append(line)
    return "\n".join(lines)


def make_ffi(root: str) -> FFI:
    """An FFI whose source paths start at `root` (the repo root, relative or absolute)."""
    with open(HEADER, encoding="utf-8") as f:
        cdef = declarations(f.read())
    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        "evstore._evlog_c",
        '#include "evlog.h"',
        sources=[os.path.normpath(os.path.join(root, "src_c", name)) for name in SOURCES],
        include_dirs=[os.path.normpath(os.path.join(root, "src_c"))],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=c11"],
    )
    return ffi


# setup.py runs from the repo root and wants relative paths there.
ffi = make_ffi(os.path.relpath(ROOT))

if __name__ == "__main__":
    # ffi.compile() changes into its tmpdir, so this build needs absolute paths.
    with tempfile.TemporaryDirectory() as tmp:
        built = make_ffi(ROOT).compile(tmpdir=tmp, verbose=True)
        target = os.path.join(ROOT, "evstore", os.path.basename(built))
        shutil.copyfile(built, target)
    print(target, file=sys.stderr)
