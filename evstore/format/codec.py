"""Choose the log implementation: the C library, or the pure-Python twin (`EVSTORE_PURE=1`)."""

from __future__ import annotations

import os
from types import ModuleType


def load(name: str | None = None) -> ModuleType:
    """The log module named `name` ("c" or "python"); by default C, unless EVSTORE_PURE=1 or C cannot load."""
    if name is None:
        name = "python" if os.environ.get("EVSTORE_PURE", "") not in ("", "0") else "auto"
    if name not in ("c", "python", "auto"):
        raise ValueError(f"log implementation must be 'c' or 'python', not {name!r}")
    if name == "python":
        from evstore.format import pylog

        return pylog
    try:
        from evstore.format import clog

        return clog
    except ImportError:
        if name == "c":
            raise
        from evstore.format import pylog

        return pylog
