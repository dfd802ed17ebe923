"""Who talked to whom: both ends of the call side by side (client = `src`, server = `dst`), with
every identity podshark could attach — pod, namespace, workload, service, node, container,
process and labels — and a dim dash where it could not."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from dissect.model import Call, Endpoint
from tui.render.units import MISSING

ROWS: tuple[str, ...] = (
    "address",
    "pod",
    "namespace",
    "workload",
    "service",
    "node",
    "container",
    "process",
    "labels",
)


def cell(ep: Endpoint, row: str) -> Text:
    """One identity field of one end, as shown."""
    if row == "address":
        return Text(ep.address(), style="bold")
    if row == "process":
        if ep.process is None and ep.pid is None:
            return Text(MISSING, style="dim")
        name = ep.process or "?"
        return Text(f"{name} (pid {ep.pid})" if ep.pid is not None else name)
    if row == "labels":
        if not ep.labels:
            return Text(MISSING, style="dim")
        return Text("\n".join(f"{k}={v}" for k, v in sorted(ep.labels.items())))
    v = getattr(ep, row)
    return Text(MISSING, style="dim") if v in (None, "") else Text(str(v))


def identity(call: Call) -> Table:
    """A three-column table: field, client, server."""
    t = Table(box=None, padding=(0, 2), show_edge=False, header_style="bold")
    t.add_column("", style="bold dim", justify="right", no_wrap=True)
    t.add_column("client (src)", overflow="fold", ratio=1)
    t.add_column("server (dst)", overflow="fold", ratio=1)
    for row in ROWS:
        t.add_row(row, cell(call.src, row), cell(call.dst, row))
    return t
