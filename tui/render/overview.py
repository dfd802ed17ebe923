"""The first thing the detail view shows: what the call was, how it ended, and where it ran."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from dissect.model import Call
from tui.render.status import status_text
from tui.render.units import duration, safe, value


def key_value_table() -> Table:
    """The two-column grid every section of the detail view uses (labels right-aligned, dim)."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold dim", justify="right", no_wrap=True)
    t.add_column(overflow="fold")
    return t


def title(call: Call) -> Text:
    """One line naming the call: `HTTP GET /path → 200 (2xx) · 18.034 ms`."""
    out = Text()
    out.append(call.protocol.upper(), style="bold reverse")
    out.append(" ")
    out.append(call.method or "?", style="bold")
    out.append(" ")
    out.append(call.target if call.target is not None else "(no request seen)")
    out.append("  →  ")
    out.append_text(status_text(call.protocol, call.status, call.info))
    if call.latency_ns is not None:
        out.append(f"  ·  {duration(call.latency_ns)}", style="dim")
    return out


def overview(call: Call) -> Table:
    """Protocol, method, target, status, transport, TLS and the ids (times and latency are the
    timing section's, shown right below it)."""
    t = key_value_table()
    t.add_row("protocol", Text(call.protocol, style="bold"))
    t.add_row("method", value(call.method))
    t.add_row("target", value(call.target))
    t.add_row("status", status_text(call.protocol, call.status, call.info))
    t.add_row("transport", call.transport)
    t.add_row("tls", tls_text(call))
    t.add_row("flow", value(call.flow_id))
    t.add_row("id", Text(call.id))
    return t


def tls_text(call: Call) -> Text:
    """`no`, or `yes · SNI api.example · plaintext from ebpf`."""
    if not call.tls:
        return Text("no", style="dim")
    parts = ["yes"]
    if call.sni:
        parts.append(f"SNI {call.sni}")
    source = call.info.get("tls_source")
    if source:
        parts.append(f"plaintext from {safe(str(source), one_line=True)}")
    elif call.protocol == "tls":
        parts.append("encrypted, plaintext not seen")
        why = call.info.get("keylog")
        if why:  # a key log was given: why it did not open this session
            parts.append(f"key log: {safe(str(why), one_line=True)}")
    return Text(" · ".join(parts))
