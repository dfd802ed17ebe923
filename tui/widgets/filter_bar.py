"""The filter bar: the active filter always in view, edited with `/`.

Text is checked with `dissect.filter.parse` (the same parser the hub runs) as it is typed (after a
short pause) and on Enter, so a syntax error shows at once, under the text, with a caret at the
position and what the parser expected there; only a filter that parses is sent to the hub. Enter
with a good filter posts `FilterSubmitted`; Escape puts the active filter back and posts
`FilterCancelled`. Up/down walk the history of applied filters (`tui.filter_history`).
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Input, Label, Static

from dissect.filter import FilterError, parse
from tui import format as fmt
from tui.filter_history import FilterHistory
from tui.messages import FilterCancelled, FilterSubmitted
from tui.widgets.text_field import TextField

CHECK_DELAY = 0.35  # s of no typing before the text is checked
PLACEHOLDER = 'press / to filter, e.g.  http and status >= 500   dst.namespace == "shop"   dns'


class FilterInput(TextField):
    """The text field; up/down walk the history, Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "history_previous", "Older filter", show=False),
        Binding("down", "history_next", "Newer filter", show=False),
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    def action_history_previous(self) -> None:
        bar = self._bar()
        if bar is not None:
            bar.walk_history(older=True)

    def action_history_next(self) -> None:
        bar = self._bar()
        if bar is not None:
            bar.walk_history(older=False)

    def action_cancel(self) -> None:
        bar = self._bar()
        if bar is not None:
            bar.cancel()

    def _bar(self) -> FilterBar | None:
        for node in self.ancestors:
            if isinstance(node, FilterBar):
                return node
        return None


class FilterBar(Vertical):
    """`active` is the filter in force; the input shows it whenever it is not being edited."""

    DEFAULT_CSS = """
    FilterBar { height: auto; }
    FilterBar > Horizontal { height: 1; }
    FilterBar #filter-prompt { width: auto; padding: 0 1 0 0; }
    FilterBar FilterInput { width: 1fr; }
    FilterBar #filter-error { display: none; height: auto; }
    FilterBar.-error #filter-error { display: block; }
    """

    def __init__(self, history: FilterHistory | None = None, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = history or FilterHistory()
        self.active = ""
        self.error: FilterError | None = None
        self._check_timer: Timer | None = None
        self._walking = False  # the next Changed comes from the history, not the user

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Label("filter ❯", id="filter-prompt")
            yield FilterInput(placeholder=PLACEHOLDER, compact=True, id="filter-input", select_on_focus=False)
        yield Static("", id="filter-error")

    @property
    def input(self) -> FilterInput:
        return self.query_one(FilterInput)

    def set_active(self, text: str) -> None:
        """The screen applied `text`: show it, clear any error."""
        self.active = text
        self.input.value = text
        self.show_error(None)

    def edit(self) -> None:
        """`/`: focus the input with the cursor at the end."""
        self.input.focus()
        self.input.cursor_position = len(self.input.value)

    def cancel(self) -> None:
        self.history.reset()
        self._stop_timer()
        self.input.value = self.active
        self.show_error(None)
        self.post_message(FilterCancelled())

    def walk_history(self, *, older: bool) -> None:
        text = self.history.previous(self.input.value) if older else self.history.next()
        if text is None:
            self.app.bell()
            return
        self._walking = True
        self.input.value = text
        self.input.cursor_position = len(text)
        self.check(text)

    def check(self, text: str) -> FilterError | None:
        """Parse `text`; show (or clear) the inline error. Returns the error."""
        try:
            parse(text)
        except FilterError as e:
            self.show_error(e)
            return e
        self.show_error(None)
        return None

    def show_error(self, error: FilterError | None) -> None:
        self.error = error
        box = self.query_one("#filter-error", Static)
        if error is None:
            self.remove_class("-error")
            box.update("")
            return
        text = self.input.value
        width = max(20, self.input.size.width or (self.size.width - 10))
        line, caret = fmt.caret_lines(text, error.position, width)
        indent = " " * (len("filter ❯") + 1)
        out = Text()
        out.append(indent + line + "\n", style="bold")
        out.append(indent + caret, style="bold red")
        out.append(f" {error.detail}", style="red")
        if error.expected and error.expected not in error.detail:
            out.append(f" (expected {error.expected})", style="red")
        out.append(f"\n{indent}at position {error.position}; Enter applies once it parses, Escape cancels")
        box.update(out)
        self.add_class("-error")

    def _stop_timer(self) -> None:
        if self._check_timer is not None:
            self._check_timer.stop()
            self._check_timer = None

    @on(Input.Changed, "#filter-input")
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._walking:
            self._walking = False
        else:
            self.history.reset()
        if not self.input.has_focus:
            return
        self._stop_timer()
        self._check_timer = self.set_timer(CHECK_DELAY, lambda: self.check(self.input.value))

    @on(Input.Submitted, "#filter-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._stop_timer()
        text = event.value.strip()
        if self.check(text) is not None:
            return
        self.history.reset()
        self.post_message(FilterSubmitted(text))

    @on(Input.Blurred, "#filter-input")
    def _blurred(self, event: Input.Blurred) -> None:
        """Leaving the bar without Enter keeps the active filter (and its text) in view."""
        event.stop()
        self._stop_timer()
        if self.input.value != self.active:
            self.input.value = self.active
        self.show_error(None)
