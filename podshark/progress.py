"""A small progress bar on stderr for long reads (no dependency, redraws at most ten times a second)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class Progress:
    """`update(done, packets, calls)` redraws; `close()` clears the line."""

    def __init__(
        self, total: int | None, label: str, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        """``total=None``: the size is not known in advance (a count without a bar)."""
        self.total = None if total is None else max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, packets: int, calls: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        rate = packets / max(now - self.start, 1e-6)
        if self.total is None:
            line = f"\r{self.label} {_human(done)}  {packets:,} packets  {calls:,} calls  {rate:,.0f} pkt/s"
        else:
            frac = min(done / self.total, 1.0)
            width = 24
            fill = int(frac * width)
            line = (
                f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% "
                f"{_human(done)}/{_human(self.total)}  {packets:,} packets  {calls:,} calls  "
                f"{rate:,.0f} pkt/s"
            )
        self.stream.write(line[:200])
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
