"""Every text field in the TUI is a `tui.widgets.text_field.TextField`, whose cursor does not
blink under a headless app.

A bare `Input` blinks: its cursor toggles every 0.5 s once focused, so a snapshot taken on a loaded
machine sometimes shows it and sometimes not (this made the replay dialog's snapshots fail about
two runs in five with three busy CPU loops beside them). The scan keeps a new dialog from bringing
that back; the Pilot test checks the widget itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

from textual.app import App, ComposeResult

from tests.tui.conftest import run
from tui.widgets.text_field import TextField

TUI = Path(__file__).resolve().parents[2] / "tui"


def bare_inputs(source: str) -> list[int]:
    """Line numbers where `source` calls `Input(...)` directly."""
    tree = ast.parse(source)
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Input"
    ]


def test_the_scan_finds_a_bare_input() -> None:
    assert bare_inputs("from textual.widgets import Input\nx = 1\nyield_ = Input('a', id='b')\n") == [3]
    assert bare_inputs("field = TextField('a')\n") == []


def test_no_screen_or_widget_creates_a_bare_input() -> None:
    found = {
        str(path.relative_to(TUI.parent)): lines
        for path in sorted(TUI.rglob("*.py"))
        if (lines := bare_inputs(path.read_text()))
    }
    assert found == {}, f"use tui.widgets.text_field.TextField instead of Input at {found}"


class OneField(App[None]):
    def compose(self) -> ComposeResult:
        yield TextField("value", id="field")

    def on_mount(self) -> None:
        self.query_one(TextField).focus()


def test_the_cursor_stays_shown_under_a_headless_app() -> None:
    async def main() -> None:
        app = OneField()
        async with app.run_test() as pilot:
            field = app.query_one(TextField)
            assert field.has_focus
            assert field.cursor_blink is False
            seen = set()
            for _ in range(8):  # 1.2 s: more than two blink periods
                await pilot.pause(0.15)
                seen.add(field._cursor_visible)
            assert seen == {True}

    run(main())
