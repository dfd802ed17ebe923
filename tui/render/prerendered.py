"""A large renderable (a body: 64 KiB of highlighted JSON is a few thousand lines) drawn off the
event loop.

A `Static` lays out and wraps its whole renderable on the UI thread when it is first shown —
most of a second for a big highlighted body, during which no key works. `Prerendered` does that
work in a thread worker (`render_strips`, pure: a renderable and a width in, lines of segments
out), then shows the lines through Textual's line API: only the rows on screen are drawn, and the
enclosing scroll container scrolls it like any other widget. A width change (terminal resize)
renders again in the background; until then the old lines are shown cut or padded.
"""

from __future__ import annotations

import io

from rich.console import Console, RenderableType
from rich.segment import Segment
from textual import work
from textual.events import Resize
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget


def render_strips(renderable: RenderableType, width: int) -> list[Strip]:
    """`renderable` as lines `width` cells wide (a console of its own: safe in any thread)."""
    console = Console(
        file=io.StringIO(),
        width=width,
        color_system="truecolor",
        force_terminal=True,
        legacy_windows=False,
        markup=False,
        highlight=False,
        emoji=False,
    )
    options = console.options.update_width(width)
    lines = console.render_lines(renderable, options, pad=True)
    return [Strip(line, width) for line in lines]


class Prerendered(Widget):
    """Shows `renderable`, rendered in a thread for the widget's width."""

    DEFAULT_CSS = """
    Prerendered {
        height: auto;
    }
    """

    def __init__(
        self, renderable: RenderableType, *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.renderable = renderable
        self._lines: list[Strip] = []
        self._width = 0  # the width `_lines` were rendered for
        self.rendered = False  # lines for the current width are in (tests wait on it)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(len(self._lines), 1)

    def on_resize(self, event: Resize) -> None:
        width = self.content_size.width
        if width > 0 and width != self._width:
            self.rendered = False
            self._render_in_thread(width)

    @work(thread=True, exclusive=True, group="prerender", exit_on_error=False)
    def _render_in_thread(self, width: int) -> None:
        lines = render_strips(self.renderable, width)
        try:
            self.app.call_from_thread(self._show, width, lines)
        except RuntimeError:  # the app closed while this ran: nothing left to show it in
            pass

    def _show(self, width: int, lines: list[Strip]) -> None:
        if width != self.content_size.width:  # resized meanwhile: the newer render will come
            return
        self._lines, self._width = lines, width
        self.rendered = True
        self.refresh(layout=True)

    def render_line(self, y: int) -> Strip:
        width = self.content_size.width
        style = self.rich_style
        if y >= len(self._lines):
            return Strip.blank(width, style)
        line = self._lines[y]
        return Strip(Segment.apply_style(line, style)).crop_extend(0, width, style)
