"""The status of a call as words and colour: `200 (2xx)`, `0 OK`, `3 NXDOMAIN`, `5 NOT_FOUND`.

Colour comes from `dissect.model.status_class`, the one vocabulary the table, stats and metrics
share, so a red row in the list is a red status here.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from dissect.model import status_class
from tui.render.units import safe

#: status class -> Rich style (the same classes the main table colours)
STYLES: dict[str, str] = {
    "1xx": "blue",
    "2xx": "green",
    "3xx": "cyan",
    "4xx": "yellow",
    "5xx": "bold red",
    "ok": "green",
    "error": "bold red",
    "other": "magenta",
    "none": "dim",
}

#: https://grpc.github.io/grpc/core/md_doc_statuscodes.html
GRPC_CODES: dict[int, str] = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def status_name(protocol: str, status: int | None, info: dict[str, Any]) -> str | None:
    """The code's name where the protocol has names for its codes."""
    if status is None:
        return None
    if protocol == "grpc":
        return GRPC_CODES.get(status)
    if protocol == "dns":
        name = info.get("rcode_name")
        return safe(str(name), one_line=True) if name else None
    if protocol == "kafka":
        from dissect.kafka.dissector import ERROR_NAMES

        return "NONE" if status == 0 else ERROR_NAMES.get(status)
    return None


def status_text(protocol: str, status: int | None, info: dict[str, Any] | None = None) -> Text:
    """The status, its name or class, coloured by class; `no status` when there is none."""
    cls = status_class(protocol, status)
    style = STYLES.get(cls, "")
    if status is None:
        return Text("no status", style=style)
    name = status_name(protocol, status, info or {})
    label = f"{status} {name}" if name else f"{status} ({cls})"
    return Text(label, style=style)
