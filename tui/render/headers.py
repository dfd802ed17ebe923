"""Headers and trailers exactly as sent: order, case and repeats kept (the record keeps them so;
a dict would lose all three). HTTP/2 pseudo-headers (`:path`…) are set apart by colour."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from dissect.model import Header
from tui.render.units import safe


def headers_table(headers: list[Header], empty: str = "no headers") -> Table | Text:
    """Name/value rows in wire order; long values fold instead of being cut."""
    if not headers:
        return Text(empty, style="dim")
    t = Table.grid(padding=(0, 1))
    t.add_column(no_wrap=False, overflow="fold", max_width=40)
    t.add_column(overflow="fold")
    for name, val in headers:
        style = "bold magenta" if name.startswith(":") else "bold cyan"
        t.add_row(Text(safe(name, one_line=True) + ":", style=style), Text(safe(val, one_line=True)))
    return t
