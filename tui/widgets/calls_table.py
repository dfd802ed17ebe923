"""The calls table: a window of rows, newest first, that follows new arrivals like `tail -f`.

Why not Textual's DataTable: it only appends rows, and a live view inserts at the top many times a
second while a history view drops far-away rows at either end. This is a Line API widget
(`ScrollView.render_line`) over a plain list, so it draws only the visible lines and a batch of new
rows is one list splice, whatever the rate.

The window. `rows` is a contiguous slice of the calls, newest first, at most `max_rows` long (a few
thousand: memory stays bounded with millions stored). The widget does no I/O: near the bottom it
posts `NeedOlder(before=last call)` and the screen answers with `add_older(page, more)`; when newer
rows were dropped and the view reaches the top it posts `NeedNewer(after=first call)`, answered by
`add_newer`. Rows dropped at one end to make room are reloaded from the hub when needed again.

Following. New calls (`push_live`, also used for replay) are buffered and applied by a timer a few
times a second, as one splice (`FLUSH_INTERVAL`). While the cursor is on the top row of the newest
window (and the view is scrolled to the top) the table is *following*: new rows appear on top and
the cursor stays on the newest. Once the user moves away, arrivals are kept aside (`new`, shown in
the status line) and the view does not move; returning to the top row (k, Home, g, the mouse)
applies them. If more arrive than the window holds, they are dropped and `g` reloads the newest
page from the hub instead. A `missed` event from the hub becomes a row of its own, where the gap is.
Live rows stay in arrival order (what `tail -f` shows); pages from the hub are in start-time order.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from dissect.model import Call
from tui import format as fmt
from tui.messages import NeedNewer, NeedOlder, OpenCall, ReloadNewest, TableChanged

FLUSH_INTERVAL = 0.15  # s: arrivals are applied at most ~7 times a second
MAX_ROWS = 5000
PAGE_SIZE = 200
MARGIN = 5  # rows kept beyond the view when the window drops rows at the far end
SKIPPED = "skipped here: they arrived faster than the table could show them"
MISSED = "missed here: the hub dropped them because the TUI read too slowly"


class Row:
    """One line: a call, or a marker for calls the hub could not send us (`missed`)."""

    __slots__ = ("_cells", "_date", "call", "local", "missed")

    def __init__(self, call: Call | None, missed: int = 0, local: bool = False) -> None:
        self.call = call
        self.missed = missed
        self.local = local  # skipped here (arrivals outran the screen), not dropped by the hub
        self._cells: dict[str, str] | None = None
        self._date = True

    def cells(self, date: bool) -> dict[str, str]:
        """The formatted text of each column, computed once per row (and date setting)."""
        if self._cells is None or self._date != date:
            assert self.call is not None
            self._cells = fmt.cells(self.call, date=date)
            self._date = date
        return self._cells


class CallsTable(ScrollView, can_focus=True):
    """See the module docstring. The screen drives it with `reset`, `start_history`, `push_live`,
    `push_missed`, `add_older`, `add_newer`; it reports with the `tui.messages` messages."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup,ctrl+b", "page_up", "Page up", show=False),
        Binding("pagedown,ctrl+f", "page_down", "Page down", show=False),
        Binding("home,g", "top", "Newest/follow", key_display="g"),
        Binding("end,G", "bottom", "Oldest loaded", key_display="G", show=False),
        Binding("enter", "open", "Details"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "calls-table--header",
        "calls-table--cursor",
        "calls-table--missed",
        "calls-table--note",
        "calls-table--proto",
        "calls-table--2xx",
        "calls-table--3xx",
        "calls-table--4xx",
        "calls-table--5xx",
        "calls-table--1xx",
        "calls-table--ok",
        "calls-table--error",
        "calls-table--none",
        "calls-table--other",
    }

    DEFAULT_CSS = """
    CallsTable {
        overflow-x: hidden;
        overflow-y: auto;
    }
    """

    def __init__(
        self, *, max_rows: int = MAX_ROWS, page_size: int = PAGE_SIZE, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.max_rows = max(10, max_rows)
        self.page_size = page_size
        self.rows: list[Row] = []
        self.cursor = 0
        self.at_newest = True  # the first row is the newest call we know of
        self.paging = True  # False in replay: no history pages
        self.older_more = False  # older calls may be loaded (asked for, and not exhausted)
        self.exhausted = False  # the hub said there is nothing older
        self.new = 0
        self.missed = 0
        self.empty_text = ""
        self._ids: set[str] = set()
        self._incoming: deque[Row] = deque(maxlen=self.max_rows)
        self._pending: list[Row] = []
        self._skipped = 0
        self._older_asked = False
        self._newer_asked = False
        self._zone = fmt.zone_name()
        self._columns: list[fmt.Column] = fmt.layout(160, self._zone)
        self._columns_width = 160
        self._reported: tuple[int, int, int, bool] | None = None

    # ---- lifecycle

    def on_mount(self) -> None:
        self.set_interval(FLUSH_INTERVAL, self.flush)
        self._update_size()

    def on_resize(self, event: events.Resize) -> None:
        self._update_size()
        self.refresh()

    def _layout(self, width: int) -> list[fmt.Column]:
        """Columns for the width available now (it changes when the scrollbar comes and goes)."""
        if width != self._columns_width:
            self._columns = fmt.layout(width, self._zone)
            self._columns_width = width
        return self._columns

    def _width(self) -> int:
        return self.scrollable_content_region.width or self.size.width

    def _body_height(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _update_size(self) -> None:
        extra = 1 if self._older_asked and self.paging else 0
        self.virtual_size = Size(0, len(self.rows) + 1 + extra)

    # ---- state the screen reads

    @property
    def following(self) -> bool:
        return self.at_newest and self.cursor == 0 and round(self.scroll_y) == 0

    @property
    def current_call(self) -> Call | None:
        if 0 <= self.cursor < len(self.rows):
            return self.rows[self.cursor].call
        return None

    def has(self, call_id: str) -> bool:
        """Whether the call is one of the rows loaded."""
        return call_id in self._ids

    def calls(self) -> list[Call]:
        """The calls loaded, top to bottom (for tests and the command palette)."""
        return [r.call for r in self.rows if r.call is not None]

    # ---- driving it

    def reset(self, *, paging: bool = True, empty_text: str = "") -> None:
        """Empty the table (new filter, replay, back to live)."""
        self.rows.clear()
        self._ids.clear()
        self._incoming.clear()
        self._pending.clear()
        self._skipped = 0
        self.cursor = 0
        self.at_newest = True
        self.paging = paging
        self.older_more = False
        self.exhausted = False
        self.new = 0
        self.missed = 0
        self._older_asked = False
        self._newer_asked = False
        self.empty_text = empty_text
        self._update_size()
        self.scroll_to(y=0, animate=False, force=True)
        self.refresh()
        self._report()

    def start_history(self) -> None:
        """Load stored calls below what is shown (the newest page first, then on scrolling)."""
        if self.paging and not self.exhausted:
            self.older_more = True
            self._check_edges()

    def push_live(self, calls: list[Call]) -> None:
        """New calls, oldest first (as the live stream and a replay send them). Applied on the
        next flush. The buffer is bounded: if the screen falls a whole window behind, the oldest
        buffered arrivals give way and a marker row says how many were skipped there."""
        overflow = len(self._incoming) + len(calls) - (self._incoming.maxlen or 0)
        if overflow > 0:
            dropped = list(self._incoming)[:overflow]
            lost = sum(1 for r in dropped if r.call is not None) + max(0, overflow - len(self._incoming))
            self.missed += lost
            self._skipped += lost + sum(r.missed for r in dropped if r.call is None)
        self._incoming.extend(Row(c) for c in calls)

    def push_missed(self, count: int) -> None:
        self.missed += count
        self._incoming.append(Row(None, missed=count))

    def flush(self) -> None:
        """Apply buffered arrivals in one batch (the timer calls this)."""
        if not self._incoming and not self._skipped:
            return
        batch = list(self._incoming)
        self._incoming.clear()
        if self._skipped:
            batch.insert(0, Row(None, missed=self._skipped, local=True))
            self._skipped = 0
        if self.following:
            self._prepend(batch)
        else:
            self.new += sum(1 for r in batch if r.call is not None)
            if self.at_newest:
                self._pending.extend(batch)
                if len(self._pending) > self.max_rows:
                    self._overflow_pending()
        self._report()

    def _overflow_pending(self) -> None:
        """More arrived while the user looked elsewhere than the window holds. With history
        (live), drop them all: following again reloads the newest page from the hub. Without
        (a replay, which cannot be asked again), keep the newest and mark the gap with a row."""
        if self.paging:
            self._pending.clear()
            self.at_newest = False
            return
        over = len(self._pending) - self.max_rows + 1
        dropped, self._pending = self._pending[:over], self._pending[over:]
        lost = sum(1 for r in dropped if r.call is not None)
        self.missed += lost
        gap = lost + sum(r.missed for r in dropped if r.call is None)
        self._pending.insert(0, Row(None, missed=gap, local=True))

    def add_older(self, calls: list[Call], more: bool) -> int:
        """A page of older calls (newest first) for the bottom; `more`: the hub has older ones.
        Returns how many rows were new."""
        self._older_asked = False
        self.exhausted = not more
        self.older_more = more
        added = [Row(c) for c in calls if c.id not in self._ids]
        self._ids.update(r.call.id for r in added if r.call is not None)
        self.rows.extend(added)
        drop = min(len(self.rows) - self.capacity, self._spare_above())
        if drop > 0:  # the newest rows go, far above the view (which is near the bottom)
            self._drop(self.rows[:drop])
            del self.rows[:drop]
            self.at_newest = False
            self._pending.clear()
            self.cursor -= drop
            self._update_size()
            self.scroll_to(y=self.scroll_y - drop, animate=False, force=True)
        self._update_size()
        self.refresh()
        self._check_edges()
        return len(added)

    def add_newer(self, calls: list[Call], newest: bool) -> int:
        """A page of newer calls (oldest first, as `order=asc` gives them) for the top, keeping
        the view on the same rows; `newest`: nothing newer exists. Returns how many were new."""
        self._newer_asked = False
        added = [Row(c) for c in reversed(calls) if c.id not in self._ids]
        self._ids.update(r.call.id for r in added if r.call is not None)
        self.rows[0:0] = added
        if newest:
            self.at_newest = True
            self.new = 0
        self.cursor += len(added)
        self._update_size()
        self.scroll_to(y=self.scroll_y + len(added), animate=False, force=True)
        self._trim_bottom()
        self._update_size()
        self.refresh()
        self._check_edges()
        return len(added)

    # ---- internals

    @property
    def capacity(self) -> int:
        """Rows kept at most: `max_rows`, but never less than the view, a page and margins, so a
        page never has to push out rows that are on screen."""
        return max(self.max_rows, self.page_size + 3 * self._body_height() + 2 * MARGIN)

    def _spare_above(self) -> int:
        """Rows above the view (and its margin) that may be dropped."""
        return max(0, min(self.cursor, round(self.scroll_y)) - MARGIN)

    def _spare_below(self) -> int:
        """Rows below the view (and its margin) that may be dropped."""
        last_seen = max(self.cursor, round(self.scroll_y) + self._body_height() - 1)
        return max(0, len(self.rows) - 1 - last_seen - MARGIN)

    def _prepend(self, batch: list[Row]) -> None:
        fresh: list[Row] = []
        for r in reversed(batch):
            if r.call is not None:
                if r.call.id in self._ids:
                    continue
                self._ids.add(r.call.id)
            fresh.append(r)
        self.rows[0:0] = fresh
        self._trim_bottom()
        self._update_size()
        self.refresh()

    def _trim_bottom(self) -> None:
        drop = min(len(self.rows) - self.capacity, self._spare_below())
        if drop > 0:
            self._drop(self.rows[-drop:])
            del self.rows[-drop:]
            if self.paging:
                self.exhausted = False
                self.older_more = True

    def _drop(self, rows: list[Row]) -> None:
        for r in rows:
            if r.call is not None:
                self._ids.discard(r.call.id)

    def _catch_up(self) -> None:
        """Back on the top row: show what arrived meanwhile."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._prepend(pending)
        self.new = 0

    def _report(self) -> None:
        state = (len(self.rows), self.new, self.missed, self.following)
        if state != self._reported:
            self._reported = state
            self.post_message(TableChanged(*state))

    def _check_edges(self) -> None:
        """Ask for pages when the view nears either end of the window (within a screen); catch
        up with the arrivals kept aside when back on the newest row."""
        top = round(self.scroll_y)
        body = self._body_height()
        if self.cursor == 0 and top == 0 and self.at_newest:
            self._catch_up()
        if (
            not self.at_newest
            and self.paging
            and not self._newer_asked
            and min(self.cursor, top) < body
            and self.rows
            and self.rows[0].call is not None
            and len(self.rows) + self.page_size - self._spare_below() <= self.capacity
        ):
            self._newer_asked = True
            self.post_message(NeedNewer(self.rows[0].call))
        if (
            self.paging
            and self.older_more
            and not self._older_asked
            and len(self.rows) - 1 - max(self.cursor, top + body - 1) < body
            and len(self.rows) + self.page_size - self._spare_above() <= self.capacity
        ):
            before = next((r.call for r in reversed(self.rows) if r.call is not None), None)
            self._older_asked = True
            self._update_size()
            self.post_message(NeedOlder(before))
        self._report()

    # ---- cursor and scrolling

    def move_cursor(self, index: int) -> None:
        if not self.rows:
            self.cursor = 0
            self._check_edges()
            return
        index = max(0, min(index, len(self.rows) - 1))
        self.cursor = index
        top = round(self.scroll_y)
        body = self._body_height()
        if index < top:
            self.scroll_to(y=index, animate=False, force=True)
        elif index >= top + body:
            self.scroll_to(y=index - body + 1, animate=False, force=True)
        self.refresh()
        self._check_edges()

    def _want_history(self) -> None:
        """The user pushed past the last row: load older calls if there are any."""
        if self.paging and not self.exhausted and not self.older_more:
            self.older_more = True
        self._check_edges()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if round(old_value) != round(new_value):
            self._check_edges()

    def action_cursor_up(self) -> None:
        self.move_cursor(self.cursor - 1)

    def action_cursor_down(self) -> None:
        if self.cursor >= len(self.rows) - 1:
            self._want_history()
        self.move_cursor(self.cursor + 1)

    def action_page_up(self) -> None:
        self.move_cursor(self.cursor - self._body_height())

    def action_page_down(self) -> None:
        if self.cursor + self._body_height() >= len(self.rows) - 1:
            self._want_history()
        self.move_cursor(self.cursor + self._body_height())

    def action_top(self) -> None:
        """Newest row, following again; reload the newest page if it is no longer loaded."""
        if not self.at_newest and self.paging:
            self.post_message(ReloadNewest())
            return
        self.cursor = 0
        self.scroll_to(y=0, animate=False, force=True)
        self.refresh()
        self._check_edges()

    def action_bottom(self) -> None:
        self._want_history()
        self.move_cursor(len(self.rows) - 1)

    def action_open(self) -> None:
        call = self.current_call
        if call is not None:
            self.post_message(OpenCall(call))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        index = round(self.scroll_y) + offset.y - 1
        if 0 <= index < len(self.rows):
            self.move_cursor(index)
            if event.chain >= 2:
                self.action_open()

    # ---- drawing

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"calls-table--{name}", partial=True)

    def render_line(self, y: int) -> Strip:
        width = self._width()
        base = self.rich_style
        if y == 0:
            return self._header(width, base)
        index = round(self.scroll_y) + y - 1
        if index >= len(self.rows):
            return self._after_rows(index, width, base)
        row = self.rows[index]
        style = base
        if index == self.cursor:
            style = base + self._style("cursor")
        if row.call is None:
            why = SKIPPED if row.local else MISSED
            text = f"⋯ {row.missed:,} calls {why}"
            return self._strip([Segment(fmt.fit(text, width), style + self._style("missed"))], width, style)
        columns = self._layout(width)
        date = fmt.has_date(columns)
        values = row.cells(date)
        status_style = style + self._style(fmt.status_style(row.call))
        segments: list[Segment] = []
        gap = Segment(" " * fmt.GAP, style)
        for col in columns:
            text = fmt.fit(values[col.key], col.width, col.right)
            if col.key == "status":
                segments.append(Segment(text, status_style))
            elif col.key == "proto":
                segments.append(Segment(text, style + self._style("proto")))
            else:
                segments.append(Segment(text, style))
            segments.append(gap)
        return self._strip(segments, width, style)

    def _header(self, width: int, base: Style) -> Strip:
        style = base + self._style("header")
        segments: list[Segment] = []
        for col in self._layout(width):
            segments.append(Segment(fmt.fit(col.title, col.width, col.right), style))
            segments.append(Segment(" " * fmt.GAP, style))
        return self._strip(segments, width, style)

    def _after_rows(self, index: int, width: int, base: Style) -> Strip:
        note = ""
        if index == len(self.rows):
            if self._older_asked and self.paging:
                note = "⋯ loading older calls"
            elif not self.rows and self.empty_text:
                note = self.empty_text
        if not note:
            return Strip.blank(width, base)
        return self._strip([Segment(fmt.fit(note, width), base + self._style("note"))], width, base)

    @staticmethod
    def _strip(segments: list[Segment], width: int, style: Style) -> Strip:
        return Strip(segments).crop_extend(0, width, style)
