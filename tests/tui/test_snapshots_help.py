"""Snapshots (pytest-textual-snapshot) of the help screen, and of the replay dialog, over the real
app's main screen against a real hub process.

Deterministic by construction (tests/tui/conftest.py): a fixed terminal size, TZ=UTC, the hub
labelled `HUB_LABEL` instead of its random port, ids from the imported captures; the replay
dialog's "now" is the app's injected clock. Update with `--snapshot-update`, then read the SVGs'
text to check they show what they should.
"""

from __future__ import annotations

import calendar
from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot

from tests.tui.conftest import SIZE, TuiHub, make_app, until_ready, wait_for

BLINK_PERIOD = 0.5  # s, Textual's Input cursor
NOW = calendar.timegm((2025, 11, 21, 11, 0, 0)) * 10**9


def open_with(key: str, screen: str, *then: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """snap_compare's `run_before`: the main screen ready, `key` pressed, the screen named
    `screen` on top, then `then` keys pressed."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await until_ready(pilot)
        await pilot.press(key)
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == screen)
        if then:
            await pilot.press(*then)
        await pilot.pause()  # (no waiting for workers: the live stream's never completes)
        # Longer than one cursor-blink period (0.5 s): a text field whose cursor still blinks
        # under a headless app shows up here as a mismatch every time, not once in a while.
        await pilot.pause(BLINK_PERIOD + 0.2)

    return run_before


def test_help_screen(hub: TuiHub, snap_compare: Any) -> None:
    app = make_app(hub, frozen=True)
    assert snap_compare(app, terminal_size=SIZE, run_before=open_with("question_mark", "HelpScreen"))


def test_help_screen_scrolled_to_the_filter_language(hub: TuiHub, snap_compare: Any) -> None:
    app = make_app(hub, frozen=True)
    assert snap_compare(app, terminal_size=SIZE, run_before=open_with("question_mark", "HelpScreen", "G"))


def test_replay_dialog(hub: TuiHub, snap_compare: Any) -> None:
    app = make_app(hub, frozen=True, now_ns=lambda: NOW)
    assert snap_compare(app, terminal_size=SIZE, run_before=open_with("r", "ReplayDialog"))


def test_replay_dialog_inline_error(hub: TuiHub, snap_compare: Any) -> None:
    app = make_app(hub, frozen=True, now_ns=lambda: NOW)
    keys = ("backspace",) * 4 + tuple("-15x")
    assert snap_compare(app, terminal_size=SIZE, run_before=open_with("r", "ReplayDialog", *keys))
