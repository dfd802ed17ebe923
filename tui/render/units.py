"""How times, durations and sizes read in the detail view.

Times are always UTC (the brief, and snapshots that must not depend on the machine's zone), with
nanoseconds only when the capture had them: a pcap's microsecond stamps would otherwise end in
three meaningless zeros on every line.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.text import Text

MISSING = "—"

# C0 controls (but tab and newline), DEL and C1 controls: shown as \xHH, never sent to the terminal
# (captured bytes are attacker-controlled; an ESC in a header must not drive the user's terminal)
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (9, 10)}
_CONTROLS_ONE_LINE = {**_CONTROLS, 10: "\\n"}


def safe(s: str, one_line: bool = False) -> str:
    """Captured text made harmless for a terminal: control characters become visible escapes."""
    return s.translate(_CONTROLS_ONE_LINE if one_line else _CONTROLS)


def utc(ts_ns: int | None) -> str:
    """`2009-11-18 20:58:04.844956 UTC` (9 digits when the stamp has sub-microsecond precision)."""
    if ts_ns is None:
        return MISSING
    secs, frac = divmod(ts_ns, 1_000_000_000)
    try:
        base = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ts_ns} ns since the epoch"
    digits = f"{frac:09d}" if frac % 1000 else f"{frac // 1000:06d}"
    return f"{base}.{digits} UTC"


def utc_ms(ts_ms: int | None) -> str:
    """A millisecond epoch stamp (Kafka record timestamps) in UTC; -1 (Kafka's "none") is `—`."""
    if ts_ms is None or ts_ms < 0:
        return MISSING
    secs, ms = divmod(ts_ms, 1000)
    try:
        base = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{ts_ms} ms since the epoch"
    return f"{base}.{ms:03d} UTC"


def duration(ns: int | None) -> str:
    """`18.034 ms`, `301 µs`, `1.250 s`: three significant decimals in the unit that fits."""
    if ns is None:
        return MISSING
    sign = "-" if ns < 0 else ""
    n = abs(ns)
    if n < 1_000:
        return f"{sign}{n} ns"
    if n < 1_000_000:
        return f"{sign}{n / 1_000:.3g} µs" if n < 10_000 else f"{sign}{n / 1_000:.0f} µs"
    if n < 1_000_000_000:
        return f"{sign}{n / 1_000_000:.3f} ms"
    return f"{sign}{n / 1_000_000_000:.3f} s"


def size(n: object) -> str:
    """`946 B`, `2,675 B (2.6 KiB)`: exact bytes always, a rounded unit when it helps."""
    if not isinstance(n, int) or isinstance(n, bool):
        return MISSING
    exact = f"{n:,} B"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{exact} ({n / scale:.1f} {unit})"
    return exact


def value(v: object) -> Text:
    """A field value, or a dim dash when it is unknown."""
    if v is None or v == "" or v == {}:
        return Text(MISSING, style="dim")
    return Text(safe(str(v)))


def as_dict(v: object) -> dict[str, Any]:
    """`v` if it is a dict, else empty: `info` comes from workers over the wire and its shape is
    only a convention, so renderers read it through these and never fail on a surprise."""
    return v if isinstance(v, dict) else {}


def as_list(v: object) -> list[Any]:
    """`v` if it is a list, else empty (see `as_dict`)."""
    return v if isinstance(v, list) else []
