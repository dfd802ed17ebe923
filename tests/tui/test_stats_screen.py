"""The stats screen against a REAL hub process: every figure it shows must be the one
`GET /api/v1/stats` answers (fetched here with urllib, independently of the TUI's client), and a
hub that goes away must be reported and retried until it is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Coroutine
from typing import Any

from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable, Sparkline, Static

from tests.conftest import REPO
from tests.hub.test_service import TOKEN, hub_argv
from tests.tui.conftest import TuiHub, wait_for
from tui.client import HubClient
from tui.screens.stats import (
    BUCKETS,
    PROTOCOL_COLUMNS,
    TOP,
    StatsScreen,
    bucket_rates,
    count,
    protocol_row,
    rate,
    span,
    top_row,
)

SIZE = (140, 60)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


class Host(App[None]):
    def __init__(self, url: str, token: str | None) -> None:
        super().__init__()
        self.url, self.token = url, token
        self.client: HubClient
        self.closed = False

    def compose(self) -> ComposeResult:
        yield Static("host")

    async def on_mount(self) -> None:
        self.client = HubClient(self.url, self.token)

    async def on_unmount(self) -> None:
        await self.client.close()

    def open(self, screen: StatsScreen) -> None:
        self.push_screen(screen, lambda _: setattr(self, "closed", True))


def stats_api(url: str, **query: str) -> dict[str, Any]:
    full = url + "/api/v1/stats" + ("?" + urllib.parse.urlencode(query) if query else "")
    req = urllib.request.Request(full, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def rows(table: DataTable[Any]) -> list[tuple[str, ...]]:
    return [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


async def open_stats(pilot: Pilot[Any], filter_text: str = "", **kw: Any) -> StatsScreen:
    app: Host = pilot.app  # type: ignore[assignment]
    screen = StatsScreen(app.client, filter_text, **kw)
    app.open(screen)
    await wait_for(pilot, lambda: screen.refreshes >= 1 or bool(screen.error), timeout=30)
    await pilot.pause()
    return screen


def test_formatting() -> None:
    assert count(1234567) == "1,234,567" and count(None) == "—"
    assert rate(0) == "0/s" and rate(2.345) == "2.3/s" and rate(1234.5) == "1,234/s"
    # slow rates in the unit that shows them (a capture spread over years is ~0/s)
    assert rate(0.02) == "1.2/min" and rate(0.001) == "3.6/h" and rate(1.8e-7) == "0.02/d"
    assert rate(1e-9) == "<0.01/d"
    assert span(15 * 60 * 10**9) == "15m" and span(5400 * 10**9) == "1h30m" and span(3600 * 10**9) == "1h"
    assert span(510228609341368001) == "5905d10h" and span(500_000_000) == "500ms"
    assert bucket_rates([0, 5, 10], 5 * 10**9) == [0.0, 1.0, 2.0]
    p = {
        "protocol": "http",
        "calls": 3,
        "rate": 1.5,
        "errors": 1,
        "error_rate": 0.333333,
        "latency": {"p50": 1_500_000, "p90": 2_000_000, "p99": None, "max": 3_000_000_000},
    }
    assert protocol_row(p) == ("http", "3", "1.5/s", "1", "33.3%", "1.50ms", "2.00ms", "—", "3.00s")


def test_stats_screen_shows_the_hubs_numbers(hub: TuiHub) -> None:
    for text in ("", "dns or kafka"):
        want = stats_api(hub.url, filter=text, buckets=str(BUCKETS), top=str(TOP))
        assert want["total"]["calls"] > 0

        async def body(text: str = text, want: dict[str, Any] = want) -> None:
            app = Host(hub.url, hub.token)
            async with app.run_test(size=SIZE) as pilot:
                screen = await open_stats(pilot, text)
                assert screen.error == ""
                protocols = screen.query_one("#stats-protocols", DataTable)
                assert [str(c.label) for c in protocols.columns.values()] == list(PROTOCOL_COLUMNS)
                assert rows(protocols) == [protocol_row(p) for p in want["protocols"]]
                assert rows(screen.query_one("#stats-servers", DataTable)) == [
                    top_row(t) for t in want["top_servers"]
                ]
                assert rows(screen.query_one("#stats-clients", DataTable)) == [
                    top_row(t) for t in want["top_clients"]
                ]
                totals = str(screen.query_one("#stats-totals", Static).render())
                assert f"calls {count(want['total']['calls'])}" in totals
                assert f"errors {count(want['total']['errors'])}" in totals
                # one sparkline per protocol of the series, then the errors', each with its data
                series = want["series"]
                sparks = list(screen.query(Sparkline))
                assert len(sparks) == len(series["protocols"]) + 1
                assert screen.sparkline_names == [*series["protocols"], "errors"]
                for spark, counts in zip(sparks, [*series["protocols"].values(), series["errors"]]):
                    assert spark.data == bucket_rates(counts, series["bucket_ns"])
                    assert len(counts) == BUCKETS
                health = str(screen.query_one("#stats-health", Static).render())
                assert f"{count(want['ingest']['calls_stored'])} calls stored" in health
                assert "import" in health  # the import client is a known worker
                parts = want["store"]["partitions"]
                assert f"in {count(parts)} partition{'' if parts == 1 else 's'}" in health

        run(body())
    # the filter was applied: only DNS and Kafka rows
    assert {p["protocol"] for p in want["protocols"]} == {"dns", "kafka"}


def test_stats_keys_refresh_window_and_back(hub: TuiHub) -> None:
    async def body() -> None:
        app = Host(hub.url, hub.token)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_stats(pilot, interval=3600)  # only `r` refreshes
            assert screen.refreshes == 1
            await pilot.press("r")
            await wait_for(pilot, lambda: screen.refreshes == 2)
            # the captures are years old: the last 5 minutes hold nothing
            await pilot.press("w")
            await wait_for(pilot, lambda: screen.refreshes == 3)
            assert screen.window_label == "last 5 minutes"
            assert screen.query_one("#stats-protocols", DataTable).row_count == 0
            assert "last 5 minutes: no calls" in str(screen.query_one("#stats-window", Static).render())
            await pilot.press("escape")
            await pilot.pause()
            assert app.closed and app.screen is not screen

    run(body())


def test_unreachable_hub_is_reported_and_retried_until_back(fresh_hub: TuiHub) -> None:
    """The hub stops under the screen: the error shows, the screen keeps asking, and the figures
    come back by themselves when a hub listens on the same address again."""
    db = fresh_hub.process.db
    port = int(fresh_hub.url.rsplit(":", 1)[1])

    async def body() -> None:
        app = Host(fresh_hub.url, fresh_hub.token)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_stats(pilot, interval=0.2)
            assert screen.error == "" and screen.refreshes >= 1
            fresh_hub.process.stop()
            await wait_for(pilot, lambda: "cannot reach the hub" in screen.error)
            shown = str(screen.query_one("#stats-error", Static).render())
            assert "retrying every 0.2 s" in shown
            assert screen.query_one("#stats-error", Static).display
            env = {k: v for k, v in os.environ.items() if k != "PODSHARK_TOKEN"} | {"PODSHARK_TOKEN": TOKEN}
            log = (fresh_hub.process.log).open("ab")
            proc = subprocess.Popen(hub_argv(db, port), cwd=REPO, env=env, stdout=log, stderr=log)
            try:
                before = screen.refreshes
                await wait_for(pilot, lambda: screen.refreshes > before, timeout=30)
                assert screen.error == ""
                assert not screen.query_one("#stats-error", Static).display
            finally:
                proc.terminate()
                proc.wait(timeout=20)
                log.close()

    run(body())


def test_wrong_token_is_a_sentence(hub: TuiHub) -> None:
    async def body() -> None:
        app = Host(hub.url, "wrong")
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_stats(pilot)
            assert "401" in screen.error and "PODSHARK_TOKEN" in screen.error
            assert screen.stats is None

    run(body())
