"""A one-line progress report (count, rate, ETA) on a terminal; silent when stderr is not one."""

from __future__ import annotations

import sys
import time


class Progress:
    """Redraws one stderr line at most 5 times a second; `close()` ends the line."""

    def __init__(self, desc: str, unit: str, total: int | None = None, enabled: bool | None = None) -> None:
        self.desc = desc
        self.unit = unit
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.note = ""
        self._t0 = time.monotonic()
        self._shown = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.2:
            self._shown = now
            self._draw(False)

    def set_note(self, note: str) -> None:
        self.note = note
        if self.enabled:
            self._draw(False)

    def close(self) -> None:
        if self.enabled:
            self._draw(True)

    def _draw(self, final: bool) -> None:
        dt = max(time.monotonic() - self._t0, 1e-9)
        rate = self.done / dt
        line = f"\r{self.desc}: {self.done:,}"
        if self.total:
            line += f"/{self.total:,}"
        line += f" {self.unit} ({rate:,.0f} {self.unit}/s"
        if self.total and rate and not final:
            line += f", ETA {max(self.total - self.done, 0) / rate:.0f} s"
        line += ")"
        if self.note and not final:
            line += f" {self.note}"
        sys.stderr.write(line + ("\n" if final else "\x1b[K"))
        sys.stderr.flush()
