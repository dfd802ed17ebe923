"""When the request left and the answer came back, plus the transport details that explain
timing: the HTTP version, the HTTP/2 stream, interim (1xx) responses, resets."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from dissect.model import Call
from tui.render.overview import key_value_table
from tui.render.units import duration, safe, utc

#: info keys worth a line in the timing section, with their label (in this order)
TIMING_INFO: tuple[tuple[str, str], ...] = (
    ("http_version", "HTTP version"),
    ("stream_id", "HTTP/2 stream"),
    ("interim", "interim responses"),
    ("upgrade", "upgraded to"),
    ("rst_error", "stream reset"),
    ("goaway_error", "connection GOAWAY"),
    ("retransmits", "retransmits"),
    ("no_response", "no response expected"),
)


def timing(call: Call) -> Table:
    """`request → response` with the latency between them, then the relevant `info` lines."""
    t = key_value_table()
    t.add_row("request", Text(utc(call.request_ts)))
    latency = call.latency_ns
    if latency is not None:
        t.add_row("", Text(f"↓ {duration(latency)}", style="bold"))
    elif call.request_ts is not None and call.response_ts is None:
        t.add_row("", Text("↓ no response seen", style="yellow"))
    t.add_row("response", Text(utc(call.response_ts)))
    for key, label in TIMING_INFO:
        if key in call.info:
            t.add_row(label, Text(safe(_show(call.info[key]), one_line=True)))
    return t


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) if v else "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)
