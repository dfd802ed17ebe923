"""The service map (`m`): who talks to whom over a window, from `GET /api/v1/map`, every 5 seconds.

One row per edge — client node → server node, protocol/transport — with calls, calls/s, error
rate, p50/p99 latency, bytes/s and connections. Nodes are the hub's (`hub/nodes.py`): a workload
(`shop/Deployment/web`), a bare pod (`shop/pod/debug`), a service, an address inside the cluster
(`ip/10.1.0.21`) or outside it (`external/93.184.216.34`, marked ↗ and coloured, so unexpected egress
stands out). Every figure is the hub's; this screen formats and sorts them.

Enter on an edge goes back to the call list filtered to that edge: the hub gives each edge the
filter expression that selects exactly its calls, and it is combined with the filter that was
active (`(current) and (edge)`, via `tui.quick_filters.combine`). An edge without one (the
aggregates' overflow edge `other`, or a name the filter language cannot spell) says why instead.

Window. `w` cycles through the windows of `windows_for`: when the call list is replaying, the
replay's window first; for `podshark open` (a stored capture) all stored calls first, whose span is
the first and last matching call's start times (two one-row queries; at least a second), so an old
capture's rates are over its own duration; then the last 15 minutes, hour, 6 hours, day and 7 days. Without a
filter the hub answers from its per-minute aggregates (calls *and* flows: traffic that was never
dissected is an edge with bytes and no calls); with one, from the calls that match.

Sorting: `o` picks the next column, `O` reverses, a click on a header sorts by it (again: reverse).
Ties keep the hub's order (busiest first). The selected edge stays selected across refreshes.

Failures (hub down, token refused, a filter the hub rejects) are shown in a line above the table
with the last map kept below it, and the timer keeps asking until the hub answers again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui.client import MAP_LIMIT, HubClient, HubError, MapEdge, MapNode, ServiceMap
from tui.format import MISSING, clean, format_latency, format_size, format_time, start_ns
from tui.quick_filters import combine
from tui.screens.stats import count, percent, rate, span
from tui.widgets.view_table import EdgeTable

MAP_TCSS = "../map.tcss"
REFRESH_S = 5.0
MINUTE_NS = 60 * 10**9
MIN_SPAN_NS = 10**9  # the shortest span of "all stored calls"


@dataclass(frozen=True)
class MapWindow:
    """A window to map: the last `back_ns` before now, fixed `bounds`, or (neither) the span of
    the stored calls that match the filter."""

    label: str
    back_ns: int | None = None
    bounds: tuple[int, int] | None = None


RECENT: tuple[MapWindow, ...] = (
    MapWindow("last 15 minutes", 15 * MINUTE_NS),
    MapWindow("last hour", 60 * MINUTE_NS),
    MapWindow("last 6 hours", 360 * MINUTE_NS),
    MapWindow("last day", 1440 * MINUTE_NS),
    MapWindow("last 7 days", 7 * 1440 * MINUTE_NS),
)
ALL_STORED = MapWindow("all stored calls")


def windows_for(*, whole_history: bool, replay: tuple[int, int] | None = None) -> list[MapWindow]:
    """The windows `w` cycles through, the first one shown first: the replay's when replaying,
    all stored calls for a stored capture (`podshark open`), else the last 15 minutes."""
    first = [MapWindow("replay window", bounds=replay)] if replay is not None else []
    if whole_history:
        return [*first, ALL_STORED, *RECENT]
    return [*first, *RECENT, ALL_STORED]


# ---- columns: (key, header, sort key, descending first)


def _text(v: str | None) -> str:
    return v or ""


def _num(v: float | None) -> float:
    return -1.0 if v is None else float(v)


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    sort_key: Callable[[MapEdge], Any]  # values of one column compare with each other
    descending: bool  # the first click/`o` on it: numbers biggest first, names A to Z


COLUMNS: tuple[Column, ...] = (
    Column("src", "source", lambda e: e.src, False),
    Column("dst", "destination", lambda e: e.dst, False),
    Column("protocol", "protocol", lambda e: (_text(e.protocol), e.transport), False),
    Column("calls", "calls", lambda e: e.calls, True),
    Column("calls_per_s", "calls/s", lambda e: e.calls_per_s, True),
    Column("error_rate", "errors", lambda e: _num(e.error_rate), True),
    Column("p50", "p50", lambda e: _num(e.p50_ms), True),
    Column("p99", "p99", lambda e: _num(e.p99_ms), True),
    Column("bytes_per_s", "bytes/s", lambda e: e.bytes_per_s, True),
    Column("connections", "conns", lambda e: e.connections, True),
)
DEFAULT_SORT = 4  # calls/s, busiest first: the hub's own order


def sort_edges(edges: list[MapEdge], column: int, descending: bool) -> list[MapEdge]:
    """`edges` by `COLUMNS[column]`; equal ones keep their order (the hub's: busiest first)."""
    return sorted(edges, key=COLUMNS[column].sort_key, reverse=descending)


def node_label(node: MapNode) -> Text:
    """The node's id; external ones marked ↗ and in the warning colour, the overflow node dim."""
    name = clean(node.id)
    if node.external or node.kind == "external":
        return Text(f"↗ {name}", style="bold yellow")
    if node.kind == "other":
        return Text(f"{name} (folded)", style="dim")
    return Text(name)


def protocol_label(edge: MapEdge) -> str:
    """`http/tcp`, `dns/udp`; traffic no dissector took is just its transport."""
    if edge.protocol:
        proto = clean(edge.protocol)
        return f"{proto}/{clean(edge.transport)}" if edge.transport else proto
    return clean(edge.transport) or MISSING


def _ms(v: float | None) -> str:
    return format_latency(None if v is None else round(v * 1e6))


def bytes_rate(per_s: float) -> str:
    return f"{format_size(round(per_s))}/s"


def edge_cells(edge: MapEdge, smap: ServiceMap) -> tuple[Text, ...]:
    """The row of `edge`, in `COLUMNS` order."""
    errors = Text(percent(edge.error_rate), justify="right")
    if edge.errors:
        errors.stylize("bold red")
    right = [
        count(edge.calls),
        rate(edge.calls_per_s),
        None,
        _ms(edge.p50_ms),
        _ms(edge.p99_ms),
        bytes_rate(edge.bytes_per_s),
        count(edge.connections),
    ]
    cells = [node_label(smap.node(edge.src)), node_label(smap.node(edge.dst)), Text(protocol_label(edge))]
    cells += [errors if v is None else Text(v, justify="right") for v in right]
    return tuple(cells)


def edge_row_text(edge: MapEdge, smap: ServiceMap) -> tuple[str, ...]:
    """The row as plain text (what tests compare)."""
    return tuple(c.plain for c in edge_cells(edge, smap))


class MapScreen(Screen[str | None]):
    """The edges of a window for the current filter; dismissed with the filter to apply (Enter on
    an edge) or None (Escape)."""

    CSS_PATH = MAP_TCSS
    BINDING_GROUP_TITLE = "Service map"
    HELP = (
        "One row per edge: client → server, protocol/transport, over the window shown above the "
        "table. Nodes are workloads (namespace/Kind/name), bare pods (namespace/pod/name), services "
        "(namespace/svc/name) or addresses: ip/… inside the cluster, ↗ external/… outside it.\n"
        "Without a filter the hub answers from its per-minute aggregates (calls and flows, so "
        "traffic podshark does not dissect is an edge with bytes and no calls); with a filter, from "
        "the matching calls. Enter shows the edge's calls in the call list: the active filter "
        "and the edge's own filter."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("w", "next_window", "Window"),
        Binding("o", "sort_next", "Sort"),
        Binding("O", "sort_reverse", "Reverse"),
        Binding("r", "refresh_map", "Refresh"),
    ]

    def __init__(
        self,
        client: HubClient,
        filter_text: str,
        windows: list[MapWindow] | None = None,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        interval: float = REFRESH_S,
        limit: int = MAP_LIMIT,
    ) -> None:
        """`windows`: what `w` cycles through (`windows_for`), the first shown first. `limit`: the
        most edges asked for (the busiest; the rest are counted and said to be left out)."""
        super().__init__()
        self.client = client
        self.limit = limit
        self.filter_text = filter_text
        self.windows = windows or windows_for(whole_history=False)
        self._now_ns = now_ns
        self._interval = interval
        self.window_index = 0
        self.sort_column = DEFAULT_SORT
        self.descending = True
        self.map: ServiceMap | None = None  # the last answer shown
        self.shown: list[MapEdge] = []  # the rows, in display order
        self.error = ""  # why the last refresh failed ("" when it did not)
        self.empty_reason = ""  # why there is nothing to map ("" when there is a map)
        self.refreshes = 0  # answers shown (maps or "nothing stored"), for tests

    # ---- layout

    def compose(self) -> ComposeResult:
        with Vertical(id="map-head"):
            yield Static(self._title(), id="map-title")
            yield Static("", id="map-window")
            yield Static("loading…", id="map-error")
            yield Static("", id="map-note")
        yield EdgeTable(id="map-edges")
        yield Footer()

    def _title(self) -> Text:
        out = Text("Service map", style="bold")
        out.append("   filter ", style="dim")
        out.append(clean(self.filter_text) or "none (every call)")
        return out

    @property
    def table(self) -> EdgeTable:
        return self.query_one(EdgeTable)

    @property
    def window(self) -> MapWindow:
        return self.windows[self.window_index]

    def on_mount(self) -> None:
        self._columns()
        self.table.focus()
        self.action_refresh_map()
        self.set_interval(self._interval, self.action_refresh_map)

    def _columns(self) -> None:
        table = self.table
        table.clear(columns=True)
        for i, col in enumerate(COLUMNS):
            label = col.label
            if i == self.sort_column:
                label += " ▼" if self.descending else " ▲"
            table.add_column(label, key=col.key)

    # ---- actions

    def action_back(self) -> None:
        self.dismiss(None)

    def action_refresh_map(self) -> None:
        fetching = any(w.node is self and w.group == "map" and not w.is_finished for w in self.workers)
        if not fetching:  # a slow answer is waited for, not cancelled by the next tick
            self._fetch()

    def action_next_window(self) -> None:
        self.window_index = (self.window_index + 1) % len(self.windows)
        self.query_one("#map-window", Static).update(Text(f"window: {self.window.label} · loading…"))
        self._fetch()  # exclusive: replaces a fetch of the previous window

    def action_sort_next(self) -> None:
        self.sort_by((self.sort_column + 1) % len(COLUMNS))

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column, not self.descending)

    def sort_by(self, column: int, descending: bool | None = None) -> None:
        """Sort the rows by `COLUMNS[column]` (its natural direction unless `descending` is given)."""
        keep = self.selected_key()  # (clearing the columns moves the cursor to the top)
        self.sort_column = column
        self.descending = COLUMNS[column].descending if descending is None else descending
        self._columns()
        if self.map is not None:
            self._rows(self.map, force=True, keep=keep)

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        if event.column_index == self.sort_column:
            self.sort_by(event.column_index, not self.descending)
        else:
            self.sort_by(event.column_index)

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if self.map is None or not 0 <= event.cursor_row < len(self.shown):
            return
        self.choose(self.shown[event.cursor_row])

    def choose(self, edge: MapEdge) -> None:
        """Back to the call list filtered to `edge` — or, when it has no filter, say why."""
        assert self.map is not None
        if not edge.filter:
            why = self.map.unfilterable_reason(edge)
            self.notify(
                f"{clean(edge.src)} → {clean(edge.dst)} cannot be filtered: {why}",
                title="service map",
                severity="warning",
                markup=False,
            )
            return
        if edge.calls == 0:
            self.notify(
                "this edge carried bytes but no dissected calls in the window (a protocol podshark does "
                "not parse, or TLS without keys): the call list may stay empty",
                title="service map",
                markup=False,
            )
        self.dismiss(combine(self.filter_text, edge.filter))

    # ---- fetching

    async def _bounds(self) -> tuple[int, int] | None:
        """[from, to) of the window now; None when it is the stored calls' span and none match."""
        window = self.window
        if window.bounds is not None:
            return window.bounds
        now = self._now_ns()
        if window.back_ns is not None:
            return now - window.back_ns, now
        oldest, _ = await self.client.calls(self.filter_text, limit=1, order="asc")
        newest, _ = await self.client.calls(self.filter_text, limit=1, order="desc")
        lo = start_ns(oldest[0]) if oldest else None
        hi = start_ns(newest[0]) if newest else None
        if lo is None or hi is None:
            return None
        # at least a second: calls that all started at one instant would otherwise be a rate per
        # nanosecond
        return lo, max(hi + 1, lo + MIN_SPAN_NS)

    @work(exclusive=True, group="map")
    async def _fetch(self) -> None:
        index = self.window_index
        try:
            bounds = await self._bounds()
            smap = None
            if bounds is not None:
                smap = await self.client.map(
                    self.filter_text, from_ns=bounds[0], to_ns=bounds[1], limit=self.limit
                )
        except HubError as e:
            if index == self.window_index:
                self._failed(str(e))
            return
        if index != self.window_index:
            return  # the user picked another window meanwhile
        self.error = ""
        self.query_one("#map-error", Static).display = False
        self.refreshes += 1
        if smap is None:
            self.map = None
            self.shown = []
            self.table.clear()
            self.empty_reason = "no stored calls match the filter — w picks a recent window (flows included)"
            self.query_one("#map-window", Static).update(Text(f"window: {self.window.label}"))
            self._note(self.empty_reason)
            return
        self.empty_reason = ""
        self.show(smap)

    def _failed(self, message: str) -> None:
        self.error = message
        line = self.query_one("#map-error", Static)
        line.update(Text(f"{message} — retrying every {self._interval:g} s", style="bold red"))
        line.display = True

    def _note(self, text: str) -> None:
        note = self.query_one("#map-note", Static)
        note.update(Text(text, style="italic"))
        note.display = bool(text)

    def show(self, smap: ServiceMap) -> None:
        """Put one map answer on screen."""
        self.query_one("#map-window", Static).update(self._window_text(smap))
        notes = []
        if not smap.edges:
            notes.append("no traffic in this window — w picks another window")
        if smap.edges_omitted > 0:
            notes.append(
                f"{smap.edges_omitted:,} more edge{'' if smap.edges_omitted == 1 else 's'} not shown: "
                f"the busiest {len(smap.edges):,} are (a filter with / narrows the map)"
            )
        self._note("   ".join(notes))
        self._rows(smap)

    def _window_text(self, smap: ServiceMap) -> Text:
        out = Text()
        out.append("window ", style="dim")
        out.append(self.window.label, style="bold")
        out.append(f"  {format_time(smap.from_ns)} – {format_time(smap.to_ns)}")
        out.append(f" ({span(max(smap.to_ns - smap.from_ns, 1))})")
        out.append("   from ", style="dim")
        out.append(
            "the aggregates (calls and flows)" if smap.source == "aggregates" else "the calls that match"
        )
        nodes = len(smap.nodes)
        external = sum(n.external for n in smap.nodes)
        out.append("   ", style="dim")
        out.append(f"{len(smap.edges):,} edges, {nodes:,} nodes")
        if external:
            out.append(f", {external:,} external", style="bold yellow")
        return out

    def selected_key(self) -> tuple[str, str, str, str] | None:
        """The key of the edge under the cursor (None when there is none)."""
        row = self.table.cursor_row
        return self.shown[row].key if 0 <= row < len(self.shown) else None

    def _rows(
        self, smap: ServiceMap, *, force: bool = False, keep: tuple[str, str, str, str] | None = None
    ) -> None:
        """Fill the table with `smap`'s edges in the chosen order, the selected edge (or `keep`)
        kept selected."""
        if not force and smap == self.map:
            return  # the same answer: leave the table (and the cursor) alone
        table = self.table
        keep = keep or self.selected_key()
        self.map = smap
        self.shown = sort_edges(smap.edges, self.sort_column, self.descending)
        table.clear()
        for i, edge in enumerate(self.shown):
            table.add_row(*edge_cells(edge, smap), key=str(i))
        if keep is not None:
            for i, edge in enumerate(self.shown):
                if edge.key == keep:
                    table.move_cursor(row=i, animate=False)
                    break
