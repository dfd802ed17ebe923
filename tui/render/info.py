"""Everything else the dissector put in `info`, as highlighted JSON: the protocol tab shows it
below the protocol's own view so nothing the record holds is hidden from the reader."""

from __future__ import annotations

import json
from typing import Any

from rich.console import RenderableType
from rich.text import Text

from dissect.model import Call
from tui.render.body import TEXT_LIMIT, highlighted
from tui.render.units import safe

#: keys another section of the detail view already shows in full
SHOWN_ELSEWHERE: dict[str, frozenset[str]] = {
    "grpc": frozenset(
        {"messages", "message_counts", "grpc_service", "grpc_method", "grpc_message", "http_status"}
        | {"http_version", "stream_id", "grpc_encoding"}
    ),
    "dns": frozenset(
        {"answers", "authority", "additional", "id", "qname", "qtype", "qclass", "flags", "rcode_name"}
        | {"edns", "response_edns", "variant", "truncated", "retransmits", "omitted_records", "weird"}
    ),
    "kafka": frozenset({"api_key", "api_version", "correlation_id", "client_id", "record_count", "error"}),
    "http": frozenset({"http_version", "interim", "upgrade"}),
    "http2": frozenset({"http_version", "stream_id", "interim", "rst_error", "goaway_error"}),
}


def rest_of_info(call: Call) -> dict[str, Any]:
    """What `info` holds that no other section shows."""
    skip = SHOWN_ELSEWHERE.get(call.protocol, frozenset())
    return {k: v for k, v in call.info.items() if k not in skip}


def info_json(call: Call, limit: int = TEXT_LIMIT) -> RenderableType:
    """`info` pretty-printed (bounded), without what another section already shows."""
    rest = rest_of_info(call)
    if not rest:
        return Text("no details beyond the other tabs", style="dim")
    text = safe(json.dumps(rest, indent=2, ensure_ascii=False, default=str))
    if len(text) > limit:
        text = text[:limit] + "\n… (cut for display)"
    return highlighted(text, "json")
