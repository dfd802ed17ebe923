"""Shared fixtures for the TUI tests: a REAL hub process loaded from corpus captures, and helpers
that build the real `PodsharkApp` against it for Pilot (`app.run_test(size=SIZE)`) and for
pytest-textual-snapshot's `snap_compare`.

Determinism for snapshots: TZ=UTC (set here, at import and in the fixture, so times in the table
do not depend on the machine); a fixed terminal size (`SIZE`); the hub's random port is never shown
(`make_app(..., frozen=True)` labels the hub `HUB_LABEL`); the app shows no wall-clock text; call
ids come from the imported captures (`<sha256 prefix>/<index>`), so they are the same every run.

Use:

    def test_x(hub: TuiHub) -> None:
        async def main() -> None:
            app = make_app(hub)
            async with app.run_test(size=SIZE) as pilot:
                await until_ready(pilot)
                ...
        run(main())

    def test_snap(hub: TuiHub, snap_compare) -> None:
        assert snap_compare(make_app(hub, frozen=True), terminal_size=SIZE, run_before=until_ready)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dissect.engine import dissect_path
from dissect.filter import parse
from dissect.model import Call
from tests.conftest import FIXTURES
from tests.hub.test_service import TOKEN, Hub, import_ok, start_hub

if TYPE_CHECKING:
    from textual.pilot import Pilot

    from tui.app import PodsharkApp

os.environ["TZ"] = "UTC"
time.tzset()

SIZE = (160, 48)
HUB_LABEL = "http://hub.test:8898"  # shown instead of the random loopback port in snapshots

# one or more captures per protocol; ~90 calls in all (the newest page holds them all)
FILES: tuple[Path, ...] = (
    FIXTURES / "http1__zeek_pipelined-requests.pcap",
    FIXTURES / "http1__arkime_http-500-head.pcap",
    FIXTURES / "http2__sv_http2-range.pcap",
    FIXTURES / "grpc__deepflow_grpc-unary.pcap",
    FIXTURES / "grpc__deepflow_grpc-server-stream.pcap",
    FIXTURES / "dns__zeek_dns-edns-ecs.pcap",
    FIXTURES / "dns__deepflow_nxdomain.pcap",
    FIXTURES / "kafka__deepflow_produce-v9.pcap",
)


@dataclass(frozen=True)
class TuiHub:
    """A running hub: its URL and token, the captures loaded into it, and the process."""

    url: str
    token: str
    files: tuple[Path, ...]
    process: Hub

    def oracle(self, text: str = "") -> list[Call]:
        """What the hub must answer for `text`: the captures' calls through `dissect_path`,
        filtered by `dissect.filter`'s predicate (in capture order, not sorted)."""
        return oracle(self.files, text)


def oracle(files: tuple[Path, ...] | list[Path], text: str = "") -> list[Call]:
    f = parse(text)
    return [c for path in files for c in dissect_path(path) if f.matches(c)]


def newest_first(calls: list[Call]) -> list[Call]:
    """The table's order: newest start time first (request_ts, else response_ts), id breaking ties
    the way the hub does (descending)."""
    return sorted(calls, key=lambda c: (c.request_ts or c.response_ts or 0, c.id), reverse=True)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TuiHub]:
    """One hub per test session (per xdist worker), loaded with FILES. Tests must not add calls
    to it (use `fresh_hub` for that): the snapshot and ordering tests rely on its contents."""
    os.environ["TZ"] = "UTC"
    time.tzset()
    d = tmp_path_factory.mktemp("tui-hub")
    h = start_hub(d / "db", d / "hub.log")
    try:
        for f in FILES:
            import_ok(h, f)
        yield TuiHub(h.url, TOKEN, FILES, h)
    finally:
        h.stop()


@pytest.fixture
def fresh_hub(tmp_path: Path) -> Iterator[TuiHub]:
    """An empty hub of this test's own, for tests that ingest calls or stop the hub."""
    h = start_hub(tmp_path / "db", tmp_path / "hub.log")
    try:
        yield TuiHub(h.url, TOKEN, (), h)
    finally:
        h.stop()


def make_app(hub: TuiHub, *, frozen: bool = False, whole_history: bool = True, **kw: Any) -> PodsharkApp:
    """The real app against `hub`. `frozen=True` for snapshots: the hub is labelled HUB_LABEL.
    Extra keyword arguments go to `PodsharkApp` (e.g. `page_size`, `token`)."""
    from tui.app import PodsharkApp

    kw.setdefault("token", hub.token)
    if frozen:
        kw.setdefault("hub_label", HUB_LABEL)
    return PodsharkApp(hub.url, whole_history=whole_history, **kw)


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a Pilot test coroutine (no async pytest plugin is installed: tests stay sync)."""
    asyncio.run(coro)


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Let the app run until `predicate()` is true; fail with the predicate's name after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(predicate, '__name__', predicate)}")
        await pilot.pause(0.05)


async def until_ready(pilot: Pilot[Any]) -> None:
    """Wait until the main screen has loaded its first page and the live stream is connected
    (or has given its first answer), then let the screen settle. Usable as snap_compare's
    `run_before`."""
    app: PodsharkApp = pilot.app  # type: ignore[assignment]
    await wait_for(pilot, lambda: app.ready, timeout=20.0)
    await pilot.pause()
    await asyncio.sleep(0)
    await pilot.pause()
