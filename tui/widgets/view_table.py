"""`ViewTable`: the row-cursor table of the map and alerts views, with the main table's keys.

Textual's `DataTable` moves with the arrows, PgUp/PgDn and Home/End; the calls table also takes the
vim keys (j/k, g/G), so a user who learned them there finds them here too. `EdgeTable` is the map's
table: Enter (or a click on the highlighted row) picks the edge, and the key says what it does in
the footer and on the help screen instead of DataTable's generic "Select".
"""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import DataTable


class ViewTable(DataTable[object]):
    """A read-only table with a row cursor and the vim keys."""

    BINDING_GROUP_TITLE = "Table"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "First row", show=False),
        Binding("G", "scroll_bottom", "Last row", show=False),
    ]

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)


class EdgeTable(ViewTable):
    """The service map's edges; Enter shows the selected edge's calls in the call list."""

    BINDING_GROUP_TITLE = "Edges"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Calls of edge", key_display="⏎"),
    ]
