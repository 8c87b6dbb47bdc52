"""Fault injection for subprocess tests, active only when EVSTORE_FAULT is set (this directory is put
on PYTHONPATH by the tests that use it).

EVSTORE_FAULT=count            count the calls of evstore.storage.durable's functions into $EVSTORE_FAULT_COUNT
EVSTORE_FAULT=kill:N           end the process (exit 137, no cleanup) just before the N-th such call
EVSTORE_FAULT=enospc:N         make every durable write fail with ENOSPC once N bytes were written
"""

from __future__ import annotations

import errno
import os

_spec = os.environ.get("EVSTORE_FAULT", "")
if _spec:
    import evstore.storage.durable as _d

    _mode, _, _arg = _spec.partition(":")
    _limit = int(_arg or 0)
    _calls = [0]
    _out = os.environ.get("EVSTORE_FAULT_COUNT")

    if _mode in ("count", "kill"):
        def _wrap(fn):  # type: ignore[no-untyped-def]
            def wrapper(*a, **k):  # type: ignore[no-untyped-def]
                _calls[0] += 1
                if _mode == "kill" and _calls[0] == _limit:
                    os._exit(137)
                result = fn(*a, **k)
                if _out:
                    with open(_out, "w") as f:
                        f.write(str(_calls[0]))
                return result
            return wrapper

        for _name in _d.__all__:
            setattr(_d, _name, _wrap(getattr(_d, _name)))
    elif _mode == "enospc":
        _orig = _d._write_all
        _written = [0]

        def _write_all(fd: int, data: bytes) -> None:
            if _written[0] + len(data) > _limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            _written[0] += len(data)
            _orig(fd, data)

        _d._write_all = _write_all
