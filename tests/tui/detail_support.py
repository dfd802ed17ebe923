"""Helpers for the detail view's tests: a minimal app that holds a real `HubClient` and shows one
`DetailScreen`, a hub of its own holding JSON HTTP calls (the shared `hub` has none), the
deterministic ids of the fixture calls, and a way to read what a tab shows as plain text."""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from rich.console import Console
from textual.app import App
from textual.containers import VerticalScroll
from textual.pilot import Pilot
from textual.widgets import Static, Tree

from dissect.engine import dissect_path
from dissect.model import Call
from tests.conftest import FIXTURES
from tests.hub.test_service import TOKEN, import_ok, start_hub
from tests.tui.conftest import TuiHub, wait_for
from tui.client import HubClient
from tui.render.grpc import tree_lines
from tui.render.prerendered import Prerendered
from tui.screens.detail import TABS, DetailScreen

SIZE = (120, 40)  # the detail snapshots' terminal
JSON_FILES = (FIXTURES / "http1__ndpi_jsonrpc.pcap", FIXTURES / "http2__ndpi_5g-sbi-json.pcapng")


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A Pilot test written as a coroutine, run as a plain test (no async pytest plugin is
    installed); pytest still sees the coroutine's parameters, so fixtures work."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def fixture_call(name: str, index: int = 0) -> Call:
    """The `index`-th call of a capture in fixtures/pcaps (ids are deterministic)."""
    return list(dissect_path(FIXTURES / name))[index]


class DetailApp(App[None]):
    """Just enough app for the detail screen: `client` (the interface's contract) and the screen."""

    def __init__(self, url: str, token: str, call_id: str, summary: Call | None = None) -> None:
        super().__init__()
        self.client = HubClient(url, token)
        self.call_id = call_id
        self.summary = summary

    def on_mount(self) -> None:
        self.push_screen(DetailScreen(self.call_id, self.client, self.summary))

    async def on_unmount(self) -> None:
        await self.client.close()

    @property
    def detail(self) -> DetailScreen:
        screen = self.screen
        assert isinstance(screen, DetailScreen), f"the top screen is {screen!r}"
        return screen

    def notifications(self) -> list[str]:
        return [n.message for n in self._notifications]


def detail_app(hub: TuiHub, call_id: str, summary: Call | None = None) -> DetailApp:
    return DetailApp(hub.url, hub.token, call_id, summary)


async def until_settled(pilot: Pilot[Any]) -> None:
    """Wait until the screen fetched its call (or showed why not) and everything is drawn."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.settled)
    await until_drawn(pilot)


async def until_drawn(pilot: Pilot[Any]) -> None:
    """Wait until the bodies on show are rendered (they render in threads) and the screen is idle."""
    await pilot.pause()

    def bodies_drawn() -> bool:
        return all(w.rendered or w.content_size.width == 0 for w in pilot.app.screen.query(Prerendered))

    await wait_for(pilot, bodies_drawn)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def renderable_text(renderable: Any, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in out.splitlines())


def pane_text(screen: DetailScreen, tab: str) -> str:
    """Everything a tab holds, as plain text (Statics rendered, Trees as indented labels)."""
    assert tab in TABS
    parts: list[str] = []
    for w in screen.query_one(f"#scroll-{tab}", VerticalScroll).children:
        if isinstance(w, Static):
            parts.append(renderable_text(w.content))
        elif isinstance(w, Prerendered):
            parts.append(renderable_text(w.renderable))
        elif isinstance(w, Tree):
            parts.append("\n".join(tree_lines(w)))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def json_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuiHub]:
    """A hub of this module's own with HTTP/1 and HTTP/2 JSON calls."""
    d = tmp_path_factory.mktemp("json-hub")
    h = start_hub(d / "db", d / "hub.log")
    try:
        for f in JSON_FILES:
            import_ok(h, f)
        yield TuiHub(h.url, TOKEN, JSON_FILES, h)
    finally:
        h.stop()
