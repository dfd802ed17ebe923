"""The service map view (`m`) against a REAL hub process: the edges it shows are the ones
`GET /api/v1/map` answers (fetched here with urllib, independently of the TUI's client) and the
ones this test made (calls with Kubernetes identity sent through the ingest WebSocket like a
worker's, and a flow aggregate of traffic that was never dissected); Enter on an edge puts the
edge's filter in the call list, which then shows exactly the calls the test sent on that edge.

One case uses an aiohttp stand-in instead of the hub, and says why: the hub gives an edge no filter
only for its overflow node `other` (past `max_open_keys` edges in memory, far more than a test
should make) and for names the filter language cannot spell (lone surrogates, which JSON ingest
refuses) — the stand-in serves such an edge so the view's answer to it can be checked, and an answer
of the wrong shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from dissect.filter import ERRORS, parse
from dissect.model import Call, Endpoint, Message
from tests.conftest import REPO
from tests.hub.test_aggregates import flow, send_flows
from tests.hub.test_map import _send
from tests.hub.test_map import start_hub as start_map_hub
from tests.hub.test_service import TOKEN, Hub, get, hub_argv
from tests.tui.conftest import SIZE, TuiHub, make_app, run, until_ready, wait_for
from tui.app import PodsharkApp
from tui.client import HubClient, ServiceMap
from tui.quick_filters import combine
from tui.screens.help import HelpScreen
from tui.screens.map import (
    COLUMNS,
    DEFAULT_SORT,
    MapScreen,
    MapWindow,
    bytes_rate,
    edge_row_text,
    windows_for,
)
from tui.screens.stats import count
from tui.widgets.calls_table import CallsTable

MIN = 60 * 10**9

# ---- what the test sends: known edges with Kubernetes identity

WEB = dict(namespace="shop", workload="Deployment/web", pod="web-5d9c7-abcde")
API = dict(namespace="shop", workload="Deployment/api", pod="api-7f9-xyz", service="api")
INV = dict(namespace="shop", workload="StatefulSet/inventory", pod="inventory-0", service="inventory")
DNS = dict(namespace="kube-system", workload="Deployment/coredns", pod="coredns-1", service="kube-dns")
DEBUG = dict(namespace="shop", pod="debug")  # a bare pod
PG = dict(namespace="data", workload="StatefulSet/pg", pod="pg-0")
EGRESS_IP = "93.184.216.34"  # outside every default cluster range: an external node

# node ids spelled from the rules (namespace/Kind/name, namespace/pod/name, external/address)
WEB_ID, API_ID, INV_ID = "shop/Deployment/web", "shop/Deployment/api", "shop/StatefulSet/inventory"
DNS_ID, DEBUG_ID, PG_ID = "kube-system/Deployment/coredns", "shop/pod/debug", "data/StatefulSet/pg"
EXT_ID = f"external/{EGRESS_IP}"

FLOW_BYTES = [3000, 120_000]  # the never-dissected web -> pg traffic
FLOW_OPENED = 3

EdgeKey = tuple[str, str, str, str]


def make_calls(now: int) -> dict[EdgeKey, list[Call]]:
    """The calls of each edge, between five minutes and one minute before `now`."""
    out: dict[EdgeKey, list[Call]] = {}
    n = 0

    def add(key: EdgeKey, src: Endpoint, dst: Endpoint, count: int, status: Any) -> None:
        nonlocal n
        calls = out.setdefault(key, [])
        for i in range(count):
            n += 1
            start = now - 5 * MIN + n * 3 * 10**9
            calls.append(
                Call(
                    id=f"tui-map/{n:04d}",
                    protocol=key[2],
                    transport=key[3],
                    src=src,
                    dst=dst,
                    request_ts=start,
                    response_ts=start + 2_000_000 + n * 50_000,
                    method="GET",
                    target=f"/x/{i}",
                    status=status(i),
                    request=Message(wire_size=200 + i),
                    response=Message(wire_size=900 + i),
                    flow_id=f"tui-map/{key[2]}/{n % 3}",
                ).finish()
            )

    web = Endpoint(ip="10.1.0.7", port=51000, **WEB)
    add(
        (WEB_ID, API_ID, "http", "tcp"),
        web,
        Endpoint(ip="10.1.0.9", port=8080, **API),
        24,
        lambda i: 500 if i % 8 == 0 else 200,
    )
    add(
        (WEB_ID, INV_ID, "grpc", "tcp"),
        web,
        Endpoint(ip="10.1.0.11", port=50051, **INV),
        12,
        lambda i: 5 if i % 6 == 0 else 0,
    )
    add((WEB_ID, DNS_ID, "dns", "udp"), web, Endpoint(ip="10.96.0.10", port=53, **DNS), 10, lambda i: 0)
    add(
        (DEBUG_ID, EXT_ID, "http", "tcp"),
        Endpoint(ip="10.1.0.20", port=40000, **DEBUG),
        Endpoint(ip=EGRESS_IP, port=80),
        4,
        lambda i: 200,
    )
    return out


@dataclass
class MapHub:
    hub: Hub
    now: int  # the app's clock: the calls are 1-5 minutes before it
    edges: dict[EdgeKey, list[Call]]

    @property
    def tui(self) -> TuiHub:
        return TuiHub(self.hub.url, TOKEN, (), self.hub)

    def api(self, from_ns: int, to_ns: int, **query: str) -> dict[str, Any]:
        status, body = get(self.hub, "/api/v1/map", **{"from": str(from_ns), "to": str(to_ns)}, **query)
        assert status == 200, body
        return dict(body)


@pytest.fixture(scope="module")
def maphub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MapHub]:
    d = tmp_path_factory.mktemp("tui-map")
    h = start_map_hub(d)
    try:
        now = time.time_ns()
        edges = make_calls(now)
        asyncio.run(_send(h.url, [c for calls in edges.values() for c in calls]))
        pg = Endpoint(ip="10.2.0.5", port=5432, **PG)
        web = Endpoint(ip="10.1.0.7", **WEB)
        send_flows(
            h, [[flow(now - 3 * MIN, web, pg, bytes=FLOW_BYTES, packets=[30, 90], opened=FLOW_OPENED)]]
        )
        yield MapHub(h, now, edges)
    finally:
        h.stop()


# ---- helpers


def rows(table: DataTable[Any]) -> list[tuple[str, ...]]:
    return [tuple(getattr(c, "plain", str(c)) for c in table.get_row_at(i)) for i in range(table.row_count)]


def decoded(body: dict[str, Any]) -> ServiceMap:
    return msgspec.json.decode(json.dumps(body), type=ServiceMap)


def key_of(e: dict[str, Any]) -> EdgeKey:
    return (e["src"], e["dst"], e["protocol"] or "", e["transport"])


async def open_map(pilot: Pilot[Any], screen: MapScreen | None = None, refreshes: int = 1) -> MapScreen:
    """The map over the main screen (`m`, or `screen` pushed), once it has shown an answer."""
    app = pilot.app
    if screen is None:
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MapScreen))
    else:
        app.push_screen(screen)
    got = app.screen
    assert isinstance(got, MapScreen)
    await wait_for(pilot, lambda: got.refreshes >= refreshes or bool(got.error), timeout=30)
    await pilot.pause()
    return got


def map_app(mh: MapHub, **kw: Any) -> PodsharkApp:
    """`podshark ui` against the map hub, its clock fixed at `mh.now` (so the window the view asks
    for is the one the test asks the API for)."""
    return make_app(mh.tui, whole_history=False, now_ns=lambda: mh.now, **kw)


# ---- the edges


def test_the_map_shows_the_hubs_edges_and_the_ones_sent(maphub: MapHub) -> None:
    want = maphub.api(maphub.now - 15 * MIN, maphub.now)
    assert want["source"] == "aggregates"  # no filter, a recent window: calls and flows

    async def body() -> None:
        app = map_app(maphub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            screen = await open_map(pilot)
            assert screen.error == "" and screen.window.label == "last 15 minutes"
            smap = decoded(want)
            # the rows are the API's edges, in its order (busiest first), formatted
            assert [e.key for e in screen.shown] == [key_of(e) for e in want["edges"]]
            assert rows(screen.table) == [edge_row_text(e, smap) for e in smap.edges]
            header = [str(c.label) for c in screen.table.ordered_columns]
            assert header[DEFAULT_SORT] == "calls/s ▼" and header[:3] == ["source", "destination", "protocol"]
            window = str(screen.query_one("#map-window", Static).render())
            assert "last 15 minutes" in window and "(15m)" in window and "the aggregates" in window
            assert "5 edges" in window and "1 external" in window
            assert not screen.query_one("#map-note", Static).display  # nothing omitted

            # and they are the edges this test made, with its counts
            by_key = {e.key: (i, e) for i, e in enumerate(screen.shown)}
            flows_key = (WEB_ID, PG_ID, "", "tcp")
            assert set(by_key) == set(maphub.edges) | {flows_key}
            for key, calls in maphub.edges.items():
                i, edge = by_key[key]
                row = rows(screen.table)[i]
                assert row[3] == count(len(calls)), key
                errors = sum(c.status not in (0, 200) for c in calls)
                assert edge.errors == errors and edge.calls == len(calls), key
                assert row[5] == f"{100 * errors / len(calls):.1f}%", key
            i, pg = by_key[flows_key]
            row = rows(screen.table)[i]
            assert pg.calls == 0 and pg.bytes == FLOW_BYTES and pg.connections == FLOW_OPENED
            assert row[2] == "tcp" and row[3] == "0" and row[5] == "—"
            assert row[8] == bytes_rate(sum(FLOW_BYTES) / 900) and row[9] == str(FLOW_OPENED)
            # the external node is marked, the others are not
            i, _ = by_key[(DEBUG_ID, EXT_ID, "http", "tcp")]
            assert rows(screen.table)[i][1] == f"↗ {EXT_ID}"
            assert all(not r[0].startswith("↗") for r in rows(screen.table))

    run(body())


def test_enter_on_an_edge_shows_exactly_its_calls(maphub: MapHub) -> None:
    key = (WEB_ID, API_ID, "http", "tcp")
    sent = maphub.edges[key]

    async def body() -> None:
        app = map_app(maphub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            screen = await open_map(pilot)
            index = [e.key for e in screen.shown].index(key)
            edge = screen.shown[index]
            assert edge.filter
            for _ in range(index):
                await pilot.press("j")
            assert screen.table.cursor_row == index
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is app.main)
            assert app.filter_text == edge.filter  # no filter before: the edge's alone
            table = app.main.query_one(CallsTable)
            want = [c.id for c in sorted(sent, key=lambda c: (c.request_ts, c.id), reverse=True)]
            await wait_for(pilot, lambda: [c.id for c in table.calls()] == want)

    run(body())


def test_with_a_filter_the_map_and_the_edge_filter_combine(maphub: MapHub) -> None:
    """The active filter maps the matching calls only; Enter keeps it and adds the edge's."""
    current = ERRORS
    flt = parse(current)
    want_body = maphub.api(maphub.now - 15 * MIN, maphub.now, filter=current)
    assert want_body["source"] == "calls"
    expected = {k: [c for c in calls if flt.matches(c)] for k, calls in maphub.edges.items()}
    expected = {k: v for k, v in expected.items() if v}
    assert len(expected) == 2  # web -> api's 500s, web -> inventory's status 5

    async def body() -> None:
        app = map_app(maphub, filter_text=current)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            screen = await open_map(pilot)
            assert rows(screen.table) == [
                edge_row_text(e, decoded(want_body)) for e in decoded(want_body).edges
            ]
            assert {e.key: e.calls for e in screen.shown} == {k: len(v) for k, v in expected.items()}
            assert ERRORS in str(screen.query_one("#map-title", Static).render())
            key = (WEB_ID, INV_ID, "grpc", "tcp")
            index = [e.key for e in screen.shown].index(key)
            screen.table.move_cursor(row=index)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is app.main)
            edge_filter = screen.shown[index].filter
            assert edge_filter is not None
            assert app.filter_text == combine(current, edge_filter) == f"({current}) and {edge_filter}"
            table = app.main.query_one(CallsTable)
            want = sorted(c.id for c in expected[key])
            await wait_for(pilot, lambda: sorted(c.id for c in table.calls()) == want)

    run(body())


def test_sorting_by_a_column_and_reversing(maphub: MapHub) -> None:
    api_edges = maphub.api(maphub.now - 15 * MIN, maphub.now)["edges"]

    def order(sort_key: Any, reverse: bool) -> list[EdgeKey]:
        return [key_of(e) for e in sorted(api_edges, key=sort_key, reverse=reverse)]

    async def body() -> None:
        app = map_app(maphub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            screen = await open_map(pilot)
            await pilot.press("o")  # the next column: errors, the highest rate first
            assert COLUMNS[screen.sort_column].label == "errors" and screen.descending
            by_errors = order(lambda e: -1 if e["error_rate"] is None else e["error_rate"], True)
            assert [e.key for e in screen.shown] == by_errors
            assert str(screen.table.ordered_columns[screen.sort_column].label) == "errors ▼"
            await pilot.press("O")  # reversed: the lowest first
            assert [e.key for e in screen.shown] == order(
                lambda e: -1 if e["error_rate"] is None else e["error_rate"], False
            )
            assert str(screen.table.ordered_columns[screen.sort_column].label) == "errors ▲"
            for _ in range(len(COLUMNS) - screen.sort_column):  # round to the first column: source
                await pilot.press("o")
            assert screen.sort_column == 0 and not screen.descending
            assert [e.key for e in screen.shown] == order(lambda e: e["src"], False)
            assert [r[0] for r in rows(screen.table)] == sorted(e["src"] for e in api_edges)
            # the selected edge stays selected across a sort (on another row) and a refresh
            last = len(screen.shown) - 1
            screen.table.move_cursor(row=last)
            chosen = screen.shown[last].key
            assert chosen == (DEBUG_ID, EXT_ID, "http", "tcp")  # "shop/pod/…" after "shop/Deployment/…"
            await pilot.press("o", "o", "o")  # calls, busiest first
            assert COLUMNS[screen.sort_column].label == "calls"
            assert [e.key for e in screen.shown] == order(lambda e: e["calls"], True)
            assert [e.key for e in screen.shown].index(chosen) != last
            assert screen.shown[screen.table.cursor_row].key == chosen
            # a click on a header sorts by that column; a second one reverses
            table = screen.table
            p99 = next(i for i, c in enumerate(COLUMNS) if c.label == "p99")
            x = sum(c.get_render_width(table) for c in table.ordered_columns[:p99]) + 1
            await pilot.click(table, offset=(x, 0))
            await wait_for(pilot, lambda: (screen.sort_column, screen.descending) == (p99, True))
            assert [e.key for e in screen.shown] == order(
                lambda e: -1 if e["p99_ms"] is None else e["p99_ms"], True
            )
            await pilot.click(table, offset=(x, 0))
            await wait_for(pilot, lambda: (screen.sort_column, screen.descending) == (p99, False))
            before = screen.refreshes
            screen.table.move_cursor(row=1)
            chosen = screen.shown[1].key
            await pilot.press("r")
            await wait_for(pilot, lambda: screen.refreshes > before)
            assert screen.shown[screen.table.cursor_row].key == chosen

    run(body())


def test_w_changes_the_window(maphub: MapHub) -> None:
    async def body() -> None:
        app = map_app(maphub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            screen = await open_map(pilot)
            assert [w.label for w in screen.windows][:2] == ["last 15 minutes", "last hour"]
            await pilot.press("w")
            await wait_for(pilot, lambda: screen.refreshes >= 2)
            assert screen.window.label == "last hour"
            assert screen.map is not None and screen.map.seconds == 3600.0
            want = decoded(maphub.api(maphub.now - 60 * MIN, maphub.now))
            assert rows(screen.table) == [edge_row_text(e, want) for e in want.edges]
            assert "last hour" in str(screen.query_one("#map-window", Static).render())

    run(body())


def test_windows_follow_the_call_list() -> None:
    live = windows_for(whole_history=False)
    assert live[0].label == "last 15 minutes" and live[-1].label == "all stored calls"
    opened = windows_for(whole_history=True)
    assert opened[0].label == "all stored calls"
    replaying = windows_for(whole_history=False, replay=(10, 20))
    assert replaying[0] == MapWindow("replay window", bounds=(10, 20))


def test_edges_past_the_limit_are_counted(maphub: MapHub) -> None:
    full = maphub.api(maphub.now - 15 * MIN, maphub.now)
    total = len(full["edges"])
    assert total == 5

    async def body() -> None:
        app = map_app(maphub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            screen = MapScreen(
                app.client, "", windows_for(whole_history=False), now_ns=lambda: maphub.now, limit=2
            )
            await open_map(pilot, screen)
            assert [e.key for e in screen.shown] == [key_of(e) for e in full["edges"][:2]]
            note = screen.query_one("#map-note", Static)
            assert note.display
            assert f"{total - 2} more edges not shown: the busiest 2 are" in str(note.render())

    run(body())


def test_the_stored_calls_window_of_an_old_capture(hub: TuiHub) -> None:
    """`podshark open` of captures years old: the map is of all stored calls, over their span."""
    oldest = hub.oracle()
    starts = [c.request_ts or c.response_ts for c in oldest]
    lo, hi = min(s for s in starts if s), max(s for s in starts if s) + 1
    status, want = get(hub.process, "/api/v1/map", **{"from": str(lo), "to": str(hi)})
    assert status == 200 and want["source"] == "calls"
    assert sum(e["calls"] for e in want["edges"]) == len(oldest)

    async def body() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            screen = await open_map(pilot)
            assert screen.window.label == "all stored calls"
            assert screen.map is not None and (screen.map.from_ns, screen.map.to_ns) == (lo, hi)
            assert rows(screen.table) == [edge_row_text(e, decoded(want)) for e in decoded(want).edges]
            # an external server is marked
            assert any(r[1].startswith("↗ external/") for r in rows(screen.table))
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.main)
            assert app.filter_text == ""  # back without choosing: the filter is unchanged

    run(body())


def test_palette_and_help(hub: TuiHub) -> None:
    async def body() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"service map")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, MapScreen))
            screen = app.screen
            assert isinstance(screen, MapScreen)
            await wait_for(pilot, lambda: screen.refreshes >= 1)
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            help_screen = app.screen
            assert isinstance(help_screen, HelpScreen)
            keys = {(k.keys, k.description) for k in help_screen.keys}
            for wanted in (("⏎", "Calls of edge"), ("o", "Sort"), ("O", "Reverse"), ("w", "Window")):
                assert wanted in keys, keys
            about = str(help_screen.query_one("#help-about", Static).render())
            assert "Enter shows the edge's calls" in about
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen)

    run(body())


def test_the_main_screens_help_lists_the_map_and_alerts_keys(hub: TuiHub) -> None:
    async def body() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            help_screen = app.screen
            assert isinstance(help_screen, HelpScreen)
            keys = {(k.keys, k.description) for k in help_screen.keys}
            assert ("m", "Service map") in keys and ("!", "Alerts") in keys

    run(body())


# ---- failures


def test_an_unreachable_hub_is_shown_and_retried(tmp_path: Path) -> None:
    """The hub stops under the view: the error shows above the last map, the view keeps asking,
    and the map comes back by itself when a hub listens on the same address again."""
    h = start_map_hub(tmp_path)
    port = int(h.url.rsplit(":", 1)[1])
    now = time.time_ns()
    calls = make_calls(now)[(WEB_ID, API_ID, "http", "tcp")]
    asyncio.run(_send(h.url, calls))

    async def body() -> None:
        app = make_app(TuiHub(h.url, TOKEN, (), h), whole_history=False, now_ns=lambda: now)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            screen = MapScreen(
                app.client, "", windows_for(whole_history=False), now_ns=lambda: now, interval=0.2
            )
            await open_map(pilot, screen)
            assert [e.key for e in screen.shown] == [(WEB_ID, API_ID, "http", "tcp")]
            h.stop()
            await wait_for(pilot, lambda: "cannot reach the hub" in screen.error, timeout=30)
            line = screen.query_one("#map-error", Static)
            assert line.display and "retrying every 0.2 s" in str(line.render())
            assert screen.table.row_count == 1  # the last map stays
            log = h.log.open("ab")
            env = {k: v for k, v in os.environ.items() if k != "PODSHARK_TOKEN"} | {"PODSHARK_TOKEN": TOKEN}
            proc = subprocess.Popen(hub_argv(h.db, port), cwd=REPO, env=env, stdout=log, stderr=log)
            try:
                await wait_for(pilot, lambda: screen.error == "", timeout=60)
                assert not line.display
                assert [e.key for e in screen.shown] == [(WEB_ID, API_ID, "http", "tcp")]
            finally:
                proc.terminate()
                proc.wait(timeout=20)
                log.close()

    try:
        run(body())
    finally:
        h.stop()


class Host(App[None]):
    """The smallest app the map screen needs; records what the screen was dismissed with."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.client: HubClient
        self.results: list[str | None] = []

    def compose(self) -> ComposeResult:
        yield Static("host")

    async def on_mount(self) -> None:
        self.client = HubClient(self.url, TOKEN)

    async def on_unmount(self) -> None:
        await self.client.close()


STANDIN_MAP = {
    "from": 1_700_000_000 * 10**9,
    "to": 1_700_000_900 * 10**9,
    "seconds": 900.0,
    "source": "aggregates",
    "edges_omitted": 0,
    "nodes": [
        {"id": "other", "kind": "other", "namespace": None, "name": "other", "external": False},
        {
            "id": "shop/Deployment/web",
            "kind": "workload",
            "namespace": "shop",
            "name": "Deployment/web",
            "external": False,
        },
        {
            "id": "data/StatefulSet/pg",
            "kind": "workload",
            "namespace": "data",
            "name": "StatefulSet/pg",
            "external": False,
        },
    ],
    "edges": [
        {
            "src": "other",
            "dst": "other",
            "protocol": "http",
            "transport": "tcp",
            "calls": 900,
            "calls_per_s": 1.0,
            "errors": 0,
            "error_rate": 0.0,
            "p50_ms": 1.0,
            "p99_ms": 9.0,
            "bytes": [0, 0],
            "bytes_per_s": 0.0,
            "connections": 0,
            "filter": None,
        },
        {
            "src": "shop/Deployment/web",
            "dst": "data/StatefulSet/pg",
            "protocol": None,
            "transport": "tcp",
            "calls": 0,
            "calls_per_s": 0.0,
            "errors": 0,
            "error_rate": None,
            "p50_ms": None,
            "p99_ms": None,
            "bytes": [10, 20],
            "bytes_per_s": 0.03,
            "connections": 1,
            "filter": 'src.workload == "Deployment/web" and dst.workload == "StatefulSet/pg"',
        },
    ],
}


def test_an_edge_without_a_filter_says_why_and_a_bad_answer_is_an_error() -> None:
    """Against the stand-in (see the module docstring for why): the overflow edge cannot be
    chosen and says why; a bytes-only edge can, with a word that its list may be empty; an answer
    of another shape is one sentence, and the view recovers when the answer is right again."""
    answer: dict[str, Any] = {"body": STANDIN_MAP}
    asked: list[dict[str, str]] = []

    async def serve(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        asked.append(dict(request.query))
        return web.json_response(answer["body"])

    async def body() -> None:
        standin = web.Application()
        standin.router.add_get("/api/v1/map", serve)
        runner = web.AppRunner(standin)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            app = Host(f"http://127.0.0.1:{port}")
            async with app.run_test(size=SIZE) as pilot:
                window = MapWindow("fixed", bounds=(STANDIN_MAP["from"], STANDIN_MAP["to"]))
                screen = MapScreen(app.client, "", [window], interval=0.2)
                app.push_screen(screen, app.results.append)
                await wait_for(pilot, lambda: screen.refreshes >= 1)
                assert asked[0] == {
                    "from": str(STANDIN_MAP["from"]),
                    "to": str(STANDIN_MAP["to"]),
                    "limit": "1000",
                }
                assert rows(screen.table)[0][:2] == ("other (folded)", "other (folded)")
                await pilot.press("enter")  # the overflow edge
                await pilot.pause()
                assert app.screen is screen and app.results == []
                (note,) = [n.message for n in app._notifications]
                assert "cannot be filtered" in note and "overflow edge 'other'" in note
                await pilot.press("j", "enter")  # the bytes-only edge
                await wait_for(pilot, lambda: app.results != [])
                assert app.results == [STANDIN_MAP["edges"][1]["filter"]]
                assert any("no dissected calls" in n.message for n in app._notifications)

                screen = MapScreen(app.client, "", [window], interval=0.2)
                app.push_screen(screen)
                answer["body"] = {"edges": "not a list"}
                await wait_for(pilot, lambda: bool(screen.error))
                assert "not one this UI understands" in screen.error and "same version" in screen.error
                answer["body"] = STANDIN_MAP
                await wait_for(pilot, lambda: screen.error == "" and screen.table.row_count == 2)
        finally:
            await runner.cleanup()

    run(body())


# ---- snapshot (the session hub's captures: fixed times; the hub labelled HUB_LABEL)


async def _map_open(pilot: Pilot[Any]) -> None:
    await until_ready(pilot)
    await open_map(pilot)
    await pilot.pause()


def test_snapshot_map_of_the_stored_calls(hub: TuiHub, snap_compare: Any) -> None:
    assert snap_compare(make_app(hub, frozen=True), terminal_size=SIZE, run_before=_map_open)
