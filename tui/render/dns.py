"""DNS: the question, the response code and flags, and the answer, authority and additional
records as tables (name, type, TTL, data in presentation form), from `info` as
dissect/dns/dissector.py fills it."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from dissect.model import Call
from tui.render.overview import key_value_table
from tui.render.status import status_text
from tui.render.units import as_dict, as_list, safe, value

SECTIONS: tuple[tuple[str, str], ...] = (
    ("answers", "answers"),
    ("authority", "authority"),
    ("additional", "additional"),
)
MAX_ROWS = 500  # records shown per section (the dissector bounds them too)


def dns_summary(call: Call) -> Table:
    """Question, id, rcode, header flags, EDNS and anything odd the dissector noted."""
    info = call.info
    t = key_value_table()
    q = " ".join(
        safe(str(info[k]), one_line=True) for k in ("qname", "qtype", "qclass") if info.get(k) is not None
    )
    t.add_row("question", value(q))
    extra = as_list(info.get("questions"))
    if len(extra) > 1:
        t.add_row("questions", Text(f"{len(extra)} (the first is shown above)"))
    t.add_row("transaction id", value(info.get("id")))
    t.add_row("opcode", value(call.method))
    t.add_row("rcode", status_text("dns", call.status, info))
    flags = as_dict(info.get("flags"))
    on = [k for k, v in flags.items() if v]
    t.add_row("flags", Text(" ".join(on) if on else "none"))
    if as_dict(info.get("edns")):
        t.add_row("query EDNS", Text(_edns(info["edns"])))
    if as_dict(info.get("response_edns")):
        t.add_row("response EDNS", Text(_edns(info["response_edns"])))
    if info.get("variant"):
        t.add_row("variant", value(info["variant"]))
    if info.get("truncated"):
        t.add_row("truncated", Text("yes (TC): the client should retry over TCP", style="yellow"))
    if info.get("retransmits"):
        t.add_row("retransmits", value(info["retransmits"]))
    if info.get("omitted_records"):
        t.add_row("omitted records", value(info["omitted_records"]))
    if as_list(info.get("weird")):
        t.add_row(
            "weird", Text(safe(", ".join(str(w) for w in info["weird"]), one_line=True), style="yellow")
        )
    return t


def _edns(e: dict[str, Any]) -> str:
    parts = [f"udp {e['udp_size']}" if "udp_size" in e else "", "DO" if e.get("do") else ""]
    if e.get("version"):
        parts.append(f"version {e['version']}")
    if e.get("client_subnet"):
        parts.append(f"client subnet {e['client_subnet']}")
    if as_list(e.get("options")):
        parts.append(f"{len(e['options'])} options")
    return safe(" · ".join(p for p in parts if p), one_line=True)


def records_table(records: list[dict[str, Any]], title: str) -> Table:
    """One section's records: name, type, TTL, data."""
    t = Table(title=title, title_justify="left", title_style="bold", expand=True, show_edge=False)
    t.add_column("name", overflow="fold", ratio=2)
    t.add_column("type", no_wrap=True)
    t.add_column("ttl", justify="right", no_wrap=True)
    t.add_column("data", overflow="fold", ratio=3)
    for r in records[:MAX_ROWS]:
        r = as_dict(r)
        t.add_row(
            safe(str(r.get("name", "")), one_line=True),
            str(r.get("type", "")),
            str(r.get("ttl", "")),
            safe(str(r.get("data", "")), one_line=True),
        )
    if len(records) > MAX_ROWS:
        t.add_row(f"… {len(records) - MAX_ROWS} more", "", "", "")
    return t


def dns_view(call: Call) -> RenderableType:
    """Summary, then each non-empty record section; says so when the response had no answers."""
    parts: list[RenderableType] = [dns_summary(call), Text()]
    if call.response is None:
        parts.append(Text("no response was seen", style="yellow"))
        return Group(*parts)
    for key, title in SECTIONS:
        records = as_list(call.info.get(key))
        if records:
            parts += [records_table(records, f"{title} ({len(records)})"), Text()]
        elif key == "answers":
            parts += [Text("no answers", style="dim"), Text()]
    return Group(*parts)
