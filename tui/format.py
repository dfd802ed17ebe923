"""How a call reads as one row of the main table: pure functions, no Textual, no clock.

Everything the table shows goes through here, so the rules are in one place and unit tested
(tests/tui/test_format.py):

- time: local time (the TZ of the terminal; the tests set TZ=UTC), to the millisecond, with the
  date, because `podshark open` shows captures that are years old; the header says the zone.
- status: the number as the protocol gave it, styled by `dissect.model.status_class` (the one
  vocabulary the table, stats and metrics share); no status is `—`.
- latency: the unit that fits, three significant digits (`850µs`, `12.3ms`, `1.25s`, `2m03s`).
- size: the response body's decoded size, or the request's when there is no response.
- endpoints: the workload's name (`Deployment/api` -> `api`) or else the pod, with the namespace
  (`shop/api`); without either, `ip:port`.
- column layout for a width (`layout`), and the caret lines under a filter with a syntax error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dissect.model import Call, Endpoint, status_class

MISSING = "—"
ELLIPSIS = "…"


# ---- cells


def format_time(ts_ns: int | None, *, date: bool = True) -> str:
    """`2009-11-18 20:58:04.844` (local time), or `20:58:04.844` with `date=False`."""
    if ts_ns is None:
        return MISSING
    secs, frac = divmod(ts_ns, 1_000_000_000)
    try:
        t = time.localtime(secs)
    except (OverflowError, OSError, ValueError):
        return MISSING
    clock = time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", t)
    return f"{clock}.{frac // 1_000_000:03d}"


def zone_name() -> str:
    """The local zone's abbreviation (`UTC`, `CET`), for the time column's header."""
    return time.strftime("%Z") or "local"


def format_latency(ns: int | None) -> str:
    """`850ns`, `850µs`, `1.23ms`, `12.3ms`, `123ms`, `1.25s`, `12.3s`, `2m03s`, `1h02m`."""
    if ns is None or ns < 0:
        return MISSING
    if ns < 1_000:
        return f"{ns}ns"
    for scale, unit, limit in ((1_000, "µs", 1000), (1_000_000, "ms", 1000), (1_000_000_000, "s", 60)):
        text = _sig3(ns / scale)
        if float(text) < limit:
            return text + unit
    secs = round(ns / 1_000_000_000)
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


def _sig3(v: float) -> str:
    """Three significant digits, no exponent: 1.23, 12.3, 123 (after rounding: 9.999 -> 10.0)."""
    text = f"{v:.0f}"
    for digits, below in ((2, 10), (1, 100)):
        text = f"{v:.{digits}f}"
        if float(text) < below:
            return text
    return f"{v:.0f}"


def format_size(n: int | None) -> str:
    """`0B`, `946B`, `2.6KiB`, `12MiB`, `1.5GiB`; None (no message at all) is `—`."""
    if n is None or n < 0:
        return MISSING
    if n < 1024:
        return f"{n}B"
    v = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        v /= 1024
        if v < 1024 or unit == "TiB":
            return f"{v:.1f}{unit}" if v < 10 else f"{v:.0f}{unit}"
    return f"{n}B"  # pragma: no cover - the loop always returns


def body_size(call: Call) -> int | None:
    """The response body's size, or the request's when the response never came."""
    if call.response is not None:
        return call.response.body_size
    if call.request is not None:
        return call.request.body_size
    return None


def workload_name(workload: str | None) -> str | None:
    """`Deployment/api` -> `api`; a name without a kind is kept."""
    if not workload:
        return None
    return workload.rsplit("/", 1)[-1] or None


def endpoint_label(ep: Endpoint) -> str:
    """`shop/api` (workload), `shop/api-7f9-xyz` (pod), `api` (no namespace) or `10.0.0.2:8080`."""
    name = workload_name(ep.workload) or ep.pod
    if name:
        return f"{ep.namespace}/{name}" if ep.namespace else name
    return ep.address()


def format_status(call: Call) -> str:
    return MISSING if call.status is None else str(call.status)


def status_style(call: Call) -> str:
    """The status class (`2xx`..`5xx`, `ok`, `error`, `none`, `other`): the row's colour."""
    return status_class(call.protocol, call.status)


def start_ns(call: Call) -> int | None:
    """The call's start time as the hub orders by: request_ts, else response_ts."""
    return call.request_ts if call.request_ts is not None else call.response_ts


def clean(text: str | None) -> str:
    """One line of printable text: control characters (a target may hold anything) become `·`."""
    if not text:
        return ""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "·" for ch in text)


# ---- the row


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    width: int
    right: bool = False  # right-aligned (numbers)


GAP = 1  # spaces between columns
TARGET_MIN = 12
ENDPOINT_WIDE = 26
ENDPOINT_NARROW = 14


def layout(width: int, zone: str = "") -> list[Column]:
    """The columns for a table `width` cells wide. The target takes what the others leave; when
    that is too little, the endpoints narrow first, then the time loses its date."""
    time_title = f"time ({zone})" if zone else "time"
    fixed = [
        ("proto", "proto", 5, False),
        ("method", "method", 8, False),
        ("status", "status", 6, True),
        ("latency", "latency", 7, True),
        ("size", "size", 7, True),
    ]
    gaps = GAP * 8
    rest = sum(w for _, _, w, _ in fixed) + gaps
    date, ep = True, ENDPOINT_WIDE
    for date, ep in ((True, ENDPOINT_WIDE), (True, ENDPOINT_NARROW), (False, ENDPOINT_NARROW)):
        if width - (_time_width(date) + 2 * ep + rest) >= TARGET_MIN + 10:
            break
    time_w = _time_width(date)
    used = time_w + 2 * ep + rest
    target = max(TARGET_MIN, width - used)
    cols = {k: Column(k, t, w, r) for k, t, w, r in fixed}
    return [
        Column("time", time_title if date else "time", time_w),
        cols["proto"],
        cols["method"],
        Column("target", "target", target),
        cols["status"],
        cols["latency"],
        Column("src", "source", ep),
        Column("dst", "destination", ep),
        cols["size"],
    ]


def _time_width(date: bool) -> int:
    return 23 if date else 12


def has_date(columns: list[Column]) -> bool:
    return columns[0].width >= 23


def cells(call: Call, *, date: bool = True) -> dict[str, str]:
    """The text of each column for one call (not yet fitted to widths)."""
    return {
        "time": format_time(start_ns(call), date=date),
        "proto": call.protocol,
        "method": clean(call.method) or MISSING,
        "target": clean(call.target) or MISSING,
        "status": format_status(call),
        "latency": format_latency(call.latency_ns),
        "src": clean(endpoint_label(call.src)),
        "dst": clean(endpoint_label(call.dst)),
        "size": format_size(body_size(call)),
    }


def fit(text: str, width: int, right: bool = False) -> str:
    """`text` cut (with `…`) or padded to exactly `width` cells (ASCII-width assumption, with
    wide characters counted by Rich's cell_len)."""
    from rich.cells import cell_len, set_cell_size

    if width <= 0:
        return ""
    n = cell_len(text)
    if n > width:
        return set_cell_size(text, width - 1) + ELLIPSIS if width > 1 else ELLIPSIS
    pad = " " * (width - n)
    return pad + text if right else text + pad


# ---- filter errors


def caret_lines(text: str, position: int, width: int) -> tuple[str, str]:
    """The filter text and a line with `^` under `position`, cut to `width` around the position
    (with `…` where text was cut), so the caret always points at the right character."""
    width = max(width, 8)
    position = max(0, min(position, len(text)))
    start = 0
    if len(text) + 1 > width:
        start = max(0, min(position - width // 2, len(text) + 1 - width))
    shown = text[start : start + width]
    prefix = ""
    if start > 0:
        prefix = ELLIPSIS
        shown = shown[1:]
        start += 1
    if start + len(shown) < len(text) and shown:
        shown = shown[:-1] + ELLIPSIS
    line = clean(prefix + shown)
    caret = " " * (len(prefix) + position - start) + "^"
    return line, caret
