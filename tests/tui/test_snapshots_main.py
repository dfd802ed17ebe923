"""Snapshots of the main screen (pytest-textual-snapshot): loaded from the real hub, and with a
filter syntax error shown inline. Deterministic: TZ=UTC, a fixed size, the hub labelled
`HUB_LABEL` instead of its random port, no wall-clock text on the screen, ids from the captures.

Update with `pytest tests/tui/test_snapshots_main.py --snapshot-update`, then LOOK at the SVGs in
tests/tui/__snapshots__/test_snapshots_main/.
"""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot

from tests.tui.conftest import SIZE, TuiHub, make_app, until_ready, wait_for


def test_main_screen(hub: TuiHub, snap_compare: Any) -> None:
    assert snap_compare(make_app(hub, frozen=True), terminal_size=SIZE, run_before=until_ready)


def test_filter_error(hub: TuiHub, snap_compare: Any) -> None:
    async def error(pilot: Pilot[Any]) -> None:
        await until_ready(pilot)
        await pilot.press("slash", *"http and status >= ", "enter")
        bar = pilot.app.query_one("#filter-bar")
        await wait_for(pilot, lambda: bar.has_class("-error"))
        await pilot.pause()

    assert snap_compare(make_app(hub, frozen=True), terminal_size=SIZE, run_before=error)
