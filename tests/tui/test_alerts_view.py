"""The alerts view (`!`) and the status line's alert badge.

Against a REAL hub (`podshark hub --alerts FILE`, rules evaluated every second): calls sent through
the ingest WebSocket make one rule fire (calls/s above 1 over 10 s: 20 calls are 2/s) and keep
another pending (the same condition, held for an hour), while a flow rule stays ok; the badge, the
notifications and the view must show exactly that, and then the resolution when the calls leave the
window. The rows are held to `GET /api/v1/alerts` fetched here with urllib, and the values to what
the test sent.

An aiohttp stand-in (in its own thread, so it serves any event loop, snap_compare's included) is
used where a real hub cannot give what the check needs, each time for the reason given there: an
older hub without the endpoint (404), fixed times and values for the snapshots (a real hub stamps
wall-clock times), a hub answering 500 or in another shape, and events appearing on cue.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from dissect.model import Call, Endpoint, Message
from tests.hub.test_map import _send
from tests.hub.test_map import start_hub as start_map_hub
from tests.hub.test_service import TOKEN, Hub, get
from tests.tui.conftest import HUB_LABEL, SIZE, TuiHub, make_app, run, until_ready, wait_for
from tui.app import PodsharkApp
from tui.client import AlertRule, Alerts, HubClient, Unauthorized, _AlertsBody
from tui.screens.alerts import (
    EVENT_COLUMNS,
    NO_RULES,
    RULE_COLUMNS,
    UNSUPPORTED,
    AlertsScreen,
    event_cells,
    format_measure,
    plain,
    rule_cells,
)
from tui.widgets.alert_badge import AlertBadge, badge_text

SECOND = 10**9
NOW = calendar.timegm((2025, 11, 21, 11, 0, 0)) * SECOND  # the snapshots' clock

RULES = """\
evaluate_every: 1s
rules:
  - name: burst
    description: more than one call a second
    measure: calls_per_s
    window: 10s
    above: 1
  - name: slow-burn
    measure: calls_per_s
    filter: 'http'
    window: 10s
    above: 1
    for: 1h
  - name: egress
    description: bytes to outside the cluster
    measure: bytes_per_s
    edges: {dst: "external/*"}
    window: 1m
    above: 100000
"""
BURST_CALLS = 20  # in the last second: 20 calls over the 10 s window are 2/s, above 1
WINDOW_S = 10


def rows(table: DataTable[Any]) -> list[tuple[str, ...]]:
    return [tuple(getattr(c, "plain", str(c)) for c in table.get_row_at(i)) for i in range(table.row_count)]


def api_alerts(hub: Hub) -> Alerts:
    """`GET /api/v1/alerts` through urllib (not the TUI's client)."""
    status, body = get(hub, "/api/v1/alerts")
    assert status == 200, body
    decoded = msgspec.json.decode(json.dumps(body), type=_AlertsBody)
    return Alerts(decoded.rules, decoded.events)


def burst(now: int) -> list[Call]:
    """BURST_CALLS calls that all start at one instant, so the rate over the window is 2/s until
    the window passes them, then 0: never a value in between."""
    web_ = Endpoint(ip="10.1.0.7", port=51000, namespace="shop", workload="Deployment/web")
    api = Endpoint(ip="10.1.0.9", port=8080, namespace="shop", workload="Deployment/api")
    return [
        Call(
            id=f"tui-alerts/{i:03d}",
            protocol="http",
            transport="tcp",
            src=web_,
            dst=api,
            request_ts=now - 100_000_000,
            response_ts=now - 100_000_000 + 1_000_000 + i,
            method="GET",
            target="/retry",
            status=503,
            request=Message(wire_size=100),
            response=Message(wire_size=200),
        ).finish()
        for i in range(BURST_CALLS)
    ]


def badge(app: PodsharkApp) -> AlertBadge:
    return app.main.query_one(AlertBadge)


def messages(app: PodsharkApp) -> list[str]:
    return [n.message for n in app._notifications]


async def open_alerts(pilot: Pilot[Any]) -> AlertsScreen:
    await pilot.press("exclamation_mark")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, AlertsScreen))
    screen = pilot.app.screen
    assert isinstance(screen, AlertsScreen)
    await wait_for(pilot, lambda: screen.refreshes >= 1 or bool(screen.error))
    return screen


# ---- the real hub


def test_a_rule_fires_and_resolves_on_the_real_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tui.screens.main.ALERTS_POLL_S", 0.3)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    h = start_map_hub(tmp_path, "--alerts", str(rules))

    async def body() -> None:
        app = make_app(TuiHub(h.url, TOKEN, (), h), whole_history=False)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await wait_for(pilot, lambda: app.main.alert_polls >= 2)
            assert not badge(app).display  # every rule ok: nothing shown

            await _send(h.url, burst(time.time_ns()))
            await wait_for(pilot, lambda: (badge(app).firing, badge(app).pending) == (1, 1), timeout=20)
            assert badge(app).display and badge(app).has_class("-firing")
            assert str(badge(app).render()) == "⚠ 1 alert firing · 1 pending — ! alerts"
            await wait_for(pilot, lambda: any("burst is firing" in m for m in messages(app)))

            screen = await open_alerts(pilot)
            await wait_for(pilot, lambda: screen.alerts is not None and screen.alerts.firing == 1)
            assert screen.alerts is not None
            shown = {r[1]: r for r in rows(screen.rules_table)}
            assert set(shown) == {"burst", "slow-burn", "egress"}
            # the values from what was sent: 20 calls over the 10 s window
            rate = f"{BURST_CALLS / WINDOW_S:.1f}/s"
            assert shown["burst"][0] == "● firing" and shown["burst"][4:6] == (rate, "1.0/s")
            assert shown["burst"][3] == "above 1" and shown["burst"][7] == "every call"
            assert shown["slow-burn"][0] == "◐ pending" and shown["slow-burn"][7] == "http"
            assert shown["egress"][0] == "○ ok" and shown["egress"][7] == "edges * → external/*"
            assert shown["egress"][4:6] == ("0B/s", format_measure("bytes_per_s", 100000))
            (firing,) = rows(screen.events_table)
            assert firing[1:4] == ("burst", "● firing", rate)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.main)

            # the calls leave the 10 s window: resolved, the badge goes away
            await wait_for(pilot, lambda: not badge(app).display, timeout=40)
            await wait_for(pilot, lambda: any("burst resolved" in m for m in messages(app)))
            screen = await open_alerts(pilot)
            want = api_alerts(h)
            await wait_for(pilot, lambda: screen.alerts == want)  # (settled: nothing changes now)
            assert [r.state for r in want.rules] == ["ok", "ok", "ok"]
            assert rows(screen.rules_table) == [plain(rule_cells(r, screen.shown_at)) for r in want.rules]
            measures = {r.name: r.measure for r in want.rules}
            assert rows(screen.events_table) == [plain(event_cells(e, measures)) for e in want.events]
            assert [(e.rule, e.state) for e in want.events] == [("burst", "resolved"), ("burst", "firing")]
            assert want.events[0].ts >= want.events[1].ts
            assert want.events[1].value == BURST_CALLS / WINDOW_S
            assert want.events[0].value is not None and want.events[0].value <= 1.0

    try:
        run(body())
    finally:
        h.stop()


def test_a_hub_without_rules_says_how_to_add_them(hub: TuiHub) -> None:
    async def body() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await wait_for(pilot, lambda: app.main.alert_polls >= 1)
            assert not badge(app).display
            screen = await open_alerts(pilot)
            assert screen.error == "" and screen.alerts is not None and screen.alerts.supported
            note = screen.query_one("#alerts-rules-note", Static)
            assert note.display and str(note.render()) == NO_RULES
            assert screen.rules_table.row_count == 0 and screen.events_table.row_count == 0
            assert [str(c.label) for c in screen.rules_table.ordered_columns] == list(RULE_COLUMNS)
            assert [str(c.label) for c in screen.events_table.ordered_columns] == list(EVENT_COLUMNS)

    run(body())


# ---- the stand-in


class StandIn:
    """An aiohttp server in its own thread serving `answer` (JSON, or `status` with an error) at
    GET /api/v1/alerts — or nothing there (`alerts=False`: a 404, like an older hub) — and enough of
    the rest of the hub's API for the main screen: an empty page of calls and a live stream that
    sends nothing. The bearer token is checked like the hub does."""

    def __init__(self, answer: Any, *, alerts: bool = True) -> None:
        self.answer = answer
        self.status = 200
        self.asked = 0
        self._alerts = alerts
        self._loop = asyncio.new_event_loop()
        self._sockets: set[web.WebSocketResponse] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def __enter__(self) -> StandIn:
        self._thread.start()
        assert self._ready.wait(10), "the stand-in did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        if self._alerts:
            app.router.add_get("/api/v1/alerts", self._get_alerts)
        app.router.add_get("/api/v1/calls", self._calls)
        app.router.add_get("/api/v1/live", self._live)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _get_alerts(self, request: web.Request) -> web.Response:
        self.asked += 1
        if self.status != 200:
            return web.json_response({"error": "the alert engine is restarting"}, status=self.status)
        return web.json_response(self.answer)

    async def _calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": [], "next_cursor": None})

    async def _live(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            self._sockets.discard(ws)
        return ws


def rule(name: str, state: str, value: float | None, since: int | None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "description": "",
        "measure": "calls_per_s",
        "filter": "",
        "edges": None,
        "condition": "above 50",
        "state": state,
        "value": value,
        "threshold": 50.0,
        "since": since,
    }
    out.update(kw)
    return out


def event(rule_name: str, state: str, ts: int, value: float | None, threshold: float) -> dict[str, Any]:
    return {"rule": rule_name, "state": state, "ts": ts, "value": value, "threshold": threshold}


# A recorded answer of the documented shape (the real hub's: see the test above), with fixed times.
ANSWER: dict[str, Any] = {
    "rules": [
        rule(
            "api-retry-storm",
            "firing",
            212.4,
            NOW - 192 * SECOND,
            description="clients hammer the api",
            filter='dst.workload == "Deployment/api"',
            condition="3x baseline (min 5)",
            threshold=61.5,
        ),
        rule(
            "api-errors",
            "pending",
            0.125,
            NOW - 20 * SECOND,
            measure="error_rate",
            filter='dst.workload == "Deployment/api"',
            condition="above 0.05",
            threshold=0.05,
        ),
        rule(
            "checkout-p99",
            "ok",
            41.7,
            NOW - 7200 * SECOND,
            measure="p99_latency_ms",
            filter='dst.workload == "Deployment/checkout"',
            condition="above 250",
            threshold=250.0,
        ),
        rule(
            "unexpected-egress",
            "ok",
            0.0,
            NOW - 86400 * SECOND,
            measure="bytes_per_s",
            filter="",
            edges={"src": "shop/*", "dst": "external/*"},
            condition="above 100000",
            threshold=100000.0,
            description="bytes to outside the cluster",
        ),
    ],
    "events": [
        event("api-retry-storm", "firing", NOW - 192 * SECOND, 188.0, 61.5),
        event("unexpected-egress", "resolved", NOW - 86400 * SECOND, 120.0, 100000.0),
        event("unexpected-egress", "firing", NOW - 86700 * SECOND, 250000.0, 100000.0),
    ],
}


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(ANSWER) as s:
        yield s


def standin_app(s: StandIn) -> PodsharkApp:
    from tui.app import PodsharkApp

    return PodsharkApp(s.url, TOKEN, hub_label=HUB_LABEL, now_ns=lambda: NOW)


def test_the_view_shows_each_state_and_unit(standin: StandIn) -> None:
    """Fixed times and values (why the stand-in: see the module docstring)."""

    async def body() -> None:
        app = standin_app(standin)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await wait_for(pilot, lambda: app.main.alert_polls >= 1)
            assert str(badge(app).render()) == "⚠ 1 alert firing · 1 pending — ! alerts"
            assert not messages(app)  # events already there at the first poll are not news
            screen = await open_alerts(pilot)
            assert rows(screen.rules_table) == [
                (
                    "● firing",
                    "api-retry-storm",
                    "calls_per_s",
                    "3x baseline (min 5)",
                    "212/s",
                    "61.5/s",
                    "for 3m12s",
                    'dst.workload == "Deployment/api"',
                    "clients hammer the api",
                ),
                (
                    "◐ pending",
                    "api-errors",
                    "error_rate",
                    "above 0.05",
                    "12.5%",
                    "5.0%",
                    "for 20s",
                    'dst.workload == "Deployment/api"',
                    "",
                ),
                (
                    "○ ok",
                    "checkout-p99",
                    "p99_latency_ms",
                    "above 250",
                    "41.7ms",
                    "250ms",
                    "for 2h",
                    'dst.workload == "Deployment/checkout"',
                    "",
                ),
                (
                    "○ ok",
                    "unexpected-egress",
                    "bytes_per_s",
                    "above 100000",
                    "0B/s",
                    "98KiB/s",
                    "for 1d",
                    "edges shop/* → external/*",
                    "bytes to outside the cluster",
                ),
            ]
            assert rows(screen.events_table) == [
                ("2025-11-21 10:56:48.000", "api-retry-storm", "● firing", "188/s", "61.5/s"),
                ("2025-11-20 11:00:00.000", "unexpected-egress", "○ resolved", "120B/s", "98KiB/s"),
                ("2025-11-20 10:55:00.000", "unexpected-egress", "● firing", "244KiB/s", "98KiB/s"),
            ]
            summary = str(screen.query_one("#alerts-summary", Static).render())
            assert summary == "4 rules   1 firing   1 pending"

    run(body())


def test_new_events_are_notified_once(standin: StandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events on cue (why the stand-in: see the module docstring): one new firing event is one
    notification; five at once are three and a sum; none again on the next polls."""
    monkeypatch.setattr("tui.screens.main.ALERTS_POLL_S", 0.2)

    async def body() -> None:
        app = standin_app(standin)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await wait_for(pilot, lambda: app.main.alert_polls >= 1)
            assert not messages(app)
            resolved = event("api-retry-storm", "resolved", NOW + SECOND, 3.0, 61.5)
            storm_ok = rule("api-retry-storm", "ok", 3.0, NOW + SECOND)
            standin.answer = {
                "rules": [storm_ok, *ANSWER["rules"][1:]],
                "events": [resolved, *ANSWER["events"]],
            }
            await wait_for(pilot, lambda: messages(app) == ["api-retry-storm resolved — ! shows the alerts"])
            assert str(badge(app).render()) == "⚠ 1 alert pending — ! alerts"
            assert badge(app).has_class("-pending") and not badge(app).has_class("-firing")
            polls = app.main.alert_polls
            await wait_for(pilot, lambda: app.main.alert_polls >= polls + 3)
            assert len(messages(app)) == 1  # not again
            many = [event(f"r{i}", "firing", NOW + (10 + i) * SECOND, 1.0, 0.5) for i in range(5)]
            standin.answer = {
                "rules": ANSWER["rules"],
                "events": [*reversed(many), resolved, *ANSWER["events"]],
            }
            await wait_for(pilot, lambda: len(messages(app)) == 5)
            assert messages(app)[1:] == [
                "r4 is firing — ! shows the alerts",
                "r3 is firing — ! shows the alerts",
                "r2 is firing — ! shows the alerts",
                "and 2 more alert events — ! shows them",
            ]

    run(body())


def test_an_older_hub_without_alerts_is_not_an_error() -> None:
    """A hub older than alerts has no endpoint (a 404: why the stand-in, see the module docstring)."""

    async def body(s: StandIn) -> None:
        assert (await _alerts(s.url)) == Alerts([], [], supported=False)
        app = standin_app(s)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await wait_for(pilot, lambda: app.main.alert_polls >= 1)
            assert not badge(app).display and not messages(app)
            screen = await open_alerts(pilot)
            assert screen.error == ""
            note = screen.query_one("#alerts-rules-note", Static)
            assert note.display and str(note.render()) == UNSUPPORTED
            assert "not available" in str(screen.query_one("#alerts-summary", Static).render())

    with StandIn(None, alerts=False) as s:
        run(body(s))


async def _alerts(url: str, token: str = TOKEN) -> Alerts:
    client = HubClient(url, token)
    try:
        return await client.alerts()
    finally:
        await client.close()


def test_failures_are_shown_and_retried(standin: StandIn) -> None:
    """A hub answering 500, then an answer of another shape, then a good one (why the stand-in:
    see the module docstring); and a refused token."""

    async def body() -> None:
        app = standin_app(standin)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await wait_for(pilot, lambda: app.main.alert_polls >= 1)
            standin.status = 500
            screen = AlertsScreen(app.client, now_ns=lambda: NOW, interval=0.2)
            app.push_screen(screen)
            await wait_for(pilot, lambda: bool(screen.error))
            assert "the hub answered 500: the alert engine is restarting" in screen.error
            line = screen.query_one("#alerts-error", Static)
            assert line.display and "retrying every 0.2 s" in str(line.render())
            standin.status = 200
            standin.answer = {"rules": [{"name": 7}], "events": []}
            await wait_for(pilot, lambda: "not one this UI understands" in screen.error)
            standin.answer = ANSWER
            await wait_for(pilot, lambda: screen.error == "" and screen.rules_table.row_count == 4)
            assert not line.display

    run(body())
    with pytest.raises(Unauthorized, match="refused the token"):
        asyncio.run(_alerts(standin.url, "wrong"))


def test_formatting() -> None:
    assert format_measure("calls_per_s", 2.0) == "2.0/s" and format_measure("errors_per_s", 0.02) == "1.2/min"
    assert (
        format_measure("error_rate", 0.125) == "12.5%" and format_measure("p50_latency_ms", 0.85) == "850µs"
    )
    assert format_measure("bytes_per_s", 1536.0) == "1.5KiB/s" and format_measure("packets_per_s", 0) == "0/s"
    assert format_measure("connections_per_s", None) == "—" and format_measure("new_measure", 1.5) == "1.5"
    assert badge_text(0, 0) == "" and badge_text(2, 0) == "⚠ 2 alerts firing — ! alerts"
    assert badge_text(0, 2) == "⚠ 2 alerts pending — ! alerts"
    hostile = AlertRule(name="a\x1b[2Jb", state="firing\n", measure="calls_per_s", value=1.0)
    cells = plain(rule_cells(hostile, NOW))
    assert cells[1] == "a·[2Jb" and cells[0] == "? firing·"


# ---- snapshots (fixed clock, the stand-in's fixed answer, the hub labelled HUB_LABEL)


async def _alerts_open(pilot: Pilot[Any]) -> None:
    await until_ready(pilot)
    app: PodsharkApp = pilot.app  # type: ignore[assignment]
    await wait_for(pilot, lambda: app.main.alert_polls >= 1)
    screen = await open_alerts(pilot)
    await wait_for(pilot, lambda: screen.rules_table.row_count == 4)
    await pilot.pause()


async def _badge_shown(pilot: Pilot[Any]) -> None:
    await until_ready(pilot)
    app: PodsharkApp = pilot.app  # type: ignore[assignment]
    await wait_for(pilot, lambda: app.main.alert_polls >= 1 and badge(app).display)
    await pilot.pause()


def test_snapshot_alerts_view(standin: StandIn, snap_compare: Any) -> None:
    assert snap_compare(standin_app(standin), terminal_size=SIZE, run_before=_alerts_open)


def test_snapshot_alert_badge(standin: StandIn, snap_compare: Any) -> None:
    assert snap_compare(standin_app(standin), terminal_size=SIZE, run_before=_badge_shown)
