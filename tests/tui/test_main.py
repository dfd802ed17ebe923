"""The main screen against a REAL hub process (tests/tui/conftest.py): the table and its columns,
paging with a bounded window, the filter bar (apply, inline syntax error, history), quick filters,
live following and not jumping, replay, and an unreachable hub or a refused token.

Oracle: `dissect_path` on the captures loaded into the hub, filtered with `dissect.filter`'s
predicate and put in the table's order (newest start time first, id breaking ties) — the table must
show exactly those calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from rich.style import Style
from textual.pilot import Pilot
from textual.widgets import Input

from dissect.filter import ERRORS, render_time
from dissect.model import Call
from tests.conftest import REPO
from tests.hub.test_live import AUTH, MS, ingest, make_call, ws_url
from tests.hub.test_service import Hub as HubProcess
from tests.hub.test_service import _env, _free_port, hub_argv, import_ok
from tests.tui.conftest import SIZE, TuiHub, make_app, newest_first, run, until_ready, wait_for
from tui.app import PodsharkApp
from tui.format import format_latency
from tui.quick_filters import combine
from tui.widgets.calls_table import CallsTable
from tui.widgets.filter_bar import FilterBar, FilterInput
from tui.widgets.status_line import StatusLine


def table_of(app: PodsharkApp) -> CallsTable:
    return app.main.query_one(CallsTable)


def ids(calls: list[Call]) -> list[str]:
    return [c.id for c in calls]


def want(hub: TuiHub, text: str = "") -> list[str]:
    return ids(newest_first(hub.oracle(text)))


def status_text(app: PodsharkApp) -> str:
    return str(app.main.query_one(StatusLine).render())


async def type_filter(pilot: Pilot[Any], text: str) -> None:
    """`/`, clear the field, type `text` key by key, Enter."""
    await pilot.press("slash")
    bar = pilot.app.query_one(FilterBar)
    assert bar.input.has_focus
    bar.input.value = ""
    await pilot.press(*text)
    await pilot.press("enter")
    await pilot.pause()


async def settle_rows(pilot: Pilot[Any], table: CallsTable, expected: list[str]) -> None:
    def check() -> bool:
        return ids(table.calls()) == expected

    check.__name__ = f"table == {len(expected)} expected calls (has {len(table.calls())})"
    await wait_for(pilot, check)


# ---- the table


def test_table_shows_the_newest_calls_first_with_the_columns(hub: TuiHub) -> None:
    async def main() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            assert ids(table.calls()) == want(hub)
            assert table.cursor == 0 and table.following
            header = table.render_line(0).text
            for title in ("time (UTC)", "proto", "method", "target", "status", "latency", "source"):
                assert title in header
            assert "destination" in header and "size" in header
            # the HTTP 500 of a HEAD request: its row, its cells, its colour
            (head,) = hub.oracle('method == "HEAD"')
            index = ids(table.calls()).index(head.id)
            table.move_cursor(index)
            await pilot.pause()
            line = table.render_line(1 + index - round(table.scroll_y))
            text = line.text
            assert "2013-02-26 " in text  # request_ts 1361891421093230000 in UTC
            assert "HEAD" in text and "/UpdataConfig.dat" in text and " 500 " in text
            assert format_latency(head.latency_ns) in text
            assert head.src.address() in text and head.dst.address() in text
            red = table.get_component_rich_style("calls-table--5xx", partial=True)
            (status_segment,) = [s for s in line if s.text.strip() == "500"]
            assert isinstance(status_segment.style, Style) and status_segment.style.color == red.color
            ok = table.get_component_rich_style("calls-table--2xx", partial=True)
            assert ok.color != red.color
            await wait_for(
                pilot, lambda: "connected" in status_text(app) and "90 calls loaded" in status_text(app)
            )

    run(main())


def test_paging_down_and_up_visits_every_call_once_with_a_bounded_window(hub: TuiHub) -> None:
    """Pages of 10 and a small window (at most `capacity` rows, well under the 90 calls): j through
    all the calls sees them in order (older pages load, the newest rows are dropped), k back up
    reloads them (newer pages)."""

    async def main() -> None:
        app = make_app(hub, page_size=10, max_rows=30)
        expected = want(hub)
        async with app.run_test(size=(160, 12)) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            assert table.capacity <= 45
            seen = [table.current_call.id if table.current_call else None]
            most = len(table.rows)
            for _ in range(len(expected) - 1):
                before = table.current_call
                await pilot.press("j")
                await wait_for(pilot, lambda b=before: table.current_call is not b)  # type: ignore[misc]
                seen.append(table.current_call.id if table.current_call else None)
                most = max(most, len(table.rows))
            assert seen == expected
            assert most <= table.capacity
            assert not table.at_newest and not table.has(expected[0])
            await pilot.press("j")  # past the oldest: nothing more
            await pilot.pause(0.3)
            assert table.current_call is not None and table.current_call.id == expected[-1]
            assert table.exhausted
            back = []
            for _ in range(len(expected) - 1):
                before = table.current_call
                await pilot.press("k")
                await wait_for(pilot, lambda b=before: table.current_call is not b)  # type: ignore[misc]
                back.append(table.current_call.id if table.current_call else None)
                assert len(table.rows) <= table.capacity
            assert back == expected[-2::-1]
            assert table.at_newest and table.cursor == 0

    run(main())


def test_g_reloads_the_newest_page_after_the_window_moved_away(hub: TuiHub) -> None:
    async def main() -> None:
        app = make_app(hub, page_size=10, max_rows=30)
        expected = want(hub)
        async with app.run_test(size=(160, 12)) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            for _ in range(60):
                await pilot.press("j")
            await wait_for(pilot, lambda: not table.at_newest)
            for _ in range(30):  # G: the last loaded row (older pages load behind it); again...
                await pilot.press("G")
                await pilot.pause(0.2)
                if table.exhausted and table.cursor == len(table.rows) - 1:
                    break
            assert table.current_call is not None and table.current_call.id == expected[-1]
            await pilot.press("g")
            await wait_for(pilot, lambda: table.has(expected[0]) and table.cursor == 0)
            assert ids(table.calls()) == expected[: len(table.calls())]
            assert table.following

    run(main())


# ---- the filter bar


def test_a_filter_applies_and_the_table_matches_the_oracle(hub: TuiHub) -> None:
    async def main() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            text = "(http or http2) and status >= 200 and latency < 1s"
            await type_filter(pilot, text)
            await settle_rows(pilot, table, want(hub, text))
            assert 0 < len(table.calls()) < 90
            assert table.has_focus  # Enter returns to the table
            assert app.filter_text == text
            bar = app.query_one(FilterBar)
            assert bar.input.value == text and bar.active == text  # the active filter stays in view
            await type_filter(pilot, "dns and status != 0")
            await settle_rows(pilot, table, want(hub, "dns and status != 0"))
            assert len(table.calls()) == 2  # the two NXDOMAIN answers

    run(main())


def test_a_syntax_error_shows_inline_at_its_position_and_escape_cancels(hub: TuiHub) -> None:
    async def main() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            await type_filter(pilot, "http and status >=")
            bar = app.query_one(FilterBar)
            assert bar.error is not None and bar.error.position == 18
            assert bar.has_class("-error")
            shown = str(bar.query_one("#filter-error").render()).splitlines()
            assert shown[0].strip() == "http and status >="
            assert shown[1].index("^") - shown[0].index("http") == 18
            assert "a value" in shown[1]
            assert bar.input.has_focus  # stays in the bar to fix it
            assert app.filter_text == "" and len(table.calls()) == 90  # nothing applied
            await pilot.press("escape")
            await pilot.pause()
            assert not bar.has_class("-error") and bar.input.value == "" and table.has_focus

    run(main())


def test_errors_show_while_typing_after_a_pause(hub: TuiHub) -> None:
    async def main() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            await pilot.press("slash", *"status = 3")
            bar = app.query_one(FilterBar)
            await wait_for(pilot, lambda: bar.error is not None)
            assert bar.error is not None and bar.error.position == 7
            await pilot.press("backspace", "backspace", "backspace", *"== 3")
            await wait_for(pilot, lambda: bar.error is None)
            assert app.filter_text == ""  # checked, not applied

    run(main())


def test_filter_history_walks_with_up_and_down(hub: TuiHub, tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "state" / "filter_history"
        app = make_app(hub, history_path=path)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            for text in ("dns", "kafka", "grpc"):
                await type_filter(pilot, text)
                await settle_rows(pilot, table, want(hub, text))
            await pilot.press("slash")
            field = app.query_one(FilterInput)
            field.value = "draft"
            seen = []
            for key in ("up", "up", "up", "up", "down", "down", "down"):
                await pilot.press(key)
                seen.append(field.value)
            assert seen == ["grpc", "kafka", "dns", "dns", "kafka", "grpc", "draft"]
            await pilot.press("up", "up", "enter")
            await settle_rows(pilot, table, want(hub, "kafka"))
            assert app.filter_text == "kafka"
        assert path.read_text().splitlines() == ["dns", "kafka", "grpc", "kafka"]
        again = make_app(hub, history_path=path)
        assert again.history.entries == ["dns", "grpc", "kafka"]

    run(main())


# ---- quick filters


def test_quick_filters_from_the_selected_row(hub: TuiHub) -> None:
    async def main() -> None:
        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            (grpc,) = hub.oracle('target == "/agent.Synchronizer/Sync"')
            table.move_cursor(ids(table.calls()).index(grpc.id))
            await pilot.press("t")
            text = 'grpc and target == "/agent.Synchronizer/Sync"'
            assert app.filter_text == text
            await settle_rows(pilot, table, want(hub, text))
            await pilot.press("slash", "ctrl+u", "enter")  # clear the filter
            await settle_rows(pilot, table, want(hub))

            nx = newest_first(hub.oracle("dns and status == 3"))[0]
            table.move_cursor(ids(table.calls()).index(nx.id))
            await pilot.press("w")
            server = f'dst.ip == "{nx.dst.ip}" and dst.port == 53'
            assert app.filter_text == server
            await settle_rows(pilot, table, want(hub, server))
            assert len(table.calls()) == 3
            await pilot.press("x")
            both = combine(server, ERRORS)
            assert app.filter_text == both
            await settle_rows(pilot, table, want(hub, both))
            assert len(table.calls()) == 2
            await pilot.press("x")  # already applied: unchanged
            assert app.filter_text == both

    run(main())


# ---- live


def synthetic(prefix: str, n: int, start: int = 1_700_000_000_000_000_000) -> list[Call]:
    return [make_call(f"{prefix}/{i:05d}", start + i * MS) for i in range(n)]


def test_live_calls_appear_on_top_and_do_not_jump_when_the_cursor_moved_away(fresh_hub: TuiHub) -> None:
    async def main() -> None:
        app = make_app(fresh_hub, whole_history=False)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            assert table.calls() == [] and "waiting for new calls" in table.render_line(1).text
            first = synthetic("live-a", 3)
            await ingest(fresh_hub.process, first)
            await settle_rows(pilot, table, ids(first)[::-1])
            assert table.following and table.cursor == 0
            await pilot.press("j")
            assert table.current_call is not None and table.current_call.id == first[1].id
            more = synthetic("live-b", 2, start=1_800_000_000_000_000_000)
            await ingest(fresh_hub.process, more)
            await wait_for(pilot, lambda: table.new == 2)
            assert ids(table.calls()) == ids(first)[::-1]  # nothing inserted: the view stays
            assert table.current_call is not None and table.current_call.id == first[1].id
            await wait_for(pilot, lambda: "↑ 2 new — press g/Home to follow" in status_text(app))
            await pilot.press("g")
            await settle_rows(pilot, table, ids(more)[::-1] + ids(first)[::-1])
            assert table.following and table.new == 0
            await wait_for(pilot, lambda: "press g/Home" not in status_text(app))  # the status follows

    run(main())


async def paced_ingest(hub: HubProcess, calls: list[Call], per_second: int, batch: int = 100) -> int:
    """Send `calls` to the hub's ingest WebSocket at about `per_second` (a batch every
    batch/per_second s), then wait for every ack; returns the number of acks."""
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(ws_url(hub, "/api/v1/ingest"), headers=AUTH, max_msg_size=0) as ws,
    ):
        await ws.send_str('{"type":"hello","worker":"tui-flood","capabilities":["calls"]}')
        pending = set()
        for seq, k in enumerate(range(0, len(calls), batch), 1):
            body = b",".join(c.to_json_bytes() for c in calls[k : k + batch]).decode()
            await ws.send_str(f'{{"type":"calls","seq":{seq},"calls":[{body}]}}')
            pending.add(seq)
            await asyncio.sleep(batch / per_second)
        acks = 0
        while pending:
            msg = await asyncio.wait_for(ws.receive(), 60)
            m = json.loads(msg.data)
            if m.get("type") == "ack":
                pending.discard(m["seq"])
                acks += 1
        return acks


def test_stays_responsive_and_shows_the_newest_while_5000_calls_arrive_fast(fresh_hub: TuiHub) -> None:
    """Functional, not a timing assertion: while 5,000 calls pour in at about 1,000/s through the
    hub's ingest WebSocket (from another thread), keys still act — moving away stops the view and
    counts arrivals, g follows again — and the table ends on the newest call, its window bounded."""

    async def main() -> None:
        app = make_app(fresh_hub, whole_history=False, max_rows=2000)
        calls = synthetic("flood", 5000)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            sender = asyncio.ensure_future(
                asyncio.to_thread(asyncio.run, paced_ingest(fresh_hub.process, calls, per_second=1000))
            )
            await wait_for(pilot, lambda: len(table.calls()) > 0)
            rounds = 0
            while not sender.done():
                await pilot.press("j")
                await wait_for(pilot, lambda: table.cursor == 1, timeout=5)
                held = table.current_call
                await wait_for(pilot, lambda: table.new > 0 or sender.done(), timeout=5)
                assert table.current_call is held and table.cursor == 1  # the view did not jump
                await pilot.press("g")
                await wait_for(pilot, lambda: table.cursor == 0 and table.new == 0, timeout=5)
                rounds += 1
            assert await sender == 50
            assert rounds >= 2  # the keys acted while calls were arriving
            await wait_for(pilot, lambda: ids(table.calls()[:1]) == [calls[-1].id] and table.following)
            assert len(table.rows) <= 2000
            shown = table.calls()
            assert ids(shown) == ids(calls)[::-1][: len(shown)]  # newest first, none out of order
            assert table.missed == 0

    run(main())


def test_gaps_are_rows_where_they_happened(fresh_hub: TuiHub) -> None:
    """A hub `missed` event, and arrivals that outran the table's bounded buffer, both become a
    row at the place of the gap and count in the status line."""

    async def main() -> None:
        app = make_app(fresh_hub, whole_history=False, max_rows=50)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            first = synthetic("gap-a", 3)
            await ingest(fresh_hub.process, first)
            await settle_rows(pilot, table, ids(first)[::-1])
            table.push_missed(7)  # what the live worker does with Missed(7)
            flood = synthetic("gap-b", 120, start=1_800_000_000_000_000_000)
            table.push_live(flood)  # in one go, before a flush: 70 cannot be buffered
            await wait_for(pilot, lambda: len(table.rows) == 50 + 1 + 3)
            texts = [table.render_line(1 + i).text for i in range(54)]
            assert ids(table.calls()) == ids(flood[70:])[::-1] + ids(first)[::-1]
            # the 70 oldest of the flood and the hub's 7 (its marker was buffered first) are one gap
            assert "77 calls skipped here" in texts[50]
            assert table.missed == 77
            await wait_for(pilot, lambda: "77 missed" in status_text(app))  # the status line follows
            table.push_missed(3)
            last = synthetic("gap-c", 1, start=1_900_000_000_000_000_000)
            await ingest(fresh_hub.process, last)
            await wait_for(pilot, lambda: ids(table.calls()[:1]) == ids(last))
            assert "3 calls missed here: the hub dropped them" in table.render_line(2).text
            assert table.missed == 80

    run(main())


def test_a_replay_that_outruns_a_user_looking_away_keeps_the_newest_and_marks_the_gap(
    fresh_hub: TuiHub,
) -> None:
    """A replay cannot be asked again page by page, so what arrives while the user looks away
    is kept aside up to the window's size: the newest stay, the rest become one marked gap."""

    async def main() -> None:
        app = make_app(fresh_hub, whole_history=False, max_rows=50)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            table.reset(paging=False)  # as start_replay leaves it
            first = synthetic("rp-a", 10)
            table.push_live(first)
            await wait_for(pilot, lambda: len(table.calls()) == 10)
            await pilot.press("j")
            later = synthetic("rp-b", 45, start=1_800_000_000_000_000_000)
            for k in range(0, 45, 15):  # three flushes while away: 45 + 45 kept aside > 50
                table.push_live(later[k : k + 15])
                table.flush()
            table.push_live(synthetic("rp-c", 45, start=1_900_000_000_000_000_000))
            table.flush()
            assert table.new == 90 and table.current_call is not None
            assert table.current_call.id == first[-2].id  # the view did not move
            await pilot.press("g")
            await wait_for(pilot, lambda: table.following and table.new == 0)
            shown = ids(table.calls())
            assert len(shown) == 10 + 49 and shown[:45] == [f"rp-c/{i:05d}" for i in range(44, -1, -1)]
            gap = next(i for i, r in enumerate(table.rows) if r.call is None)
            assert gap == 49 and "41 calls skipped here" in table.render_line(1 + gap).text
            assert ids(table.calls()[49:]) == ids(first)[::-1]

    run(main())


def test_mouse_click_selects_and_double_click_opens(hub: TuiHub) -> None:
    async def main() -> None:
        from tui.screens.detail import DetailScreen

        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            await pilot.click(CallsTable, offset=(5, 3))  # line 0 is the header
            assert table.cursor == 2 and not table.following
            await pilot.click(CallsTable, offset=(5, 4), times=2)
            await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen))
            assert app.screen.call_id == want(hub)[3]  # type: ignore[attr-defined]

    run(main())


# ---- replay


def test_replay_of_a_two_call_window_under_a_banner_and_l_returns_to_live(hub: TuiHub) -> None:
    async def main() -> None:
        from tui.screens.replay import ReplayDialog

        nx = sorted(
            hub.oracle("dns and dst.port == 53 and request_ts > 2026-01-01T00:00:00Z"),
            key=lambda c: c.request_ts or 0,
        )
        assert len(nx) == 3
        lo = nx[0].request_ts or 0
        hi = (nx[1].request_ts or 0) + 1  # [first, second]: two calls
        app = make_app(hub, now_ns=lambda: hi + 60_000_000_000)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, ReplayDialog))
            dialog = app.screen
            dialog.query_one("#replay-from", Input).value = render_time(lo)
            dialog.query_one("#replay-to", Input).value = render_time(hi)
            await pilot.click("#speed-max")
            await pilot.click("#replay-ok")
            await wait_for(pilot, lambda: app.main.mode == "replay")
            await wait_for(pilot, lambda: app.main.replay_done)
            await settle_rows(pilot, table, [nx[1].id, nx[0].id])
            banner = str(app.main.query_one("#replay-banner").render())
            assert (
                banner.startswith("REPLAY ")
                and "press l for live" in banner
                and "finished: 2 calls" in banner
            )
            await wait_for(pilot, lambda: " REPLAY " in status_text(app))
            await pilot.press("l")
            await settle_rows(pilot, table, want(hub))
            assert app.main.mode == "live" and not app.main.query_one("#replay-banner").display
            await wait_for(pilot, lambda: " LIVE " in status_text(app))

    run(main())


# ---- the hub away, or refusing us


def start_hub_on(db: Path, log: Path, port: int) -> HubProcess:
    """`python -m podshark hub` on a port chosen before (the UI was already pointing at it)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            hub_argv(db, port), cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return HubProcess(proc, url, db, log)
        except OSError:
            time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    raise AssertionError(f"hub did not come up: {log.read_text()}")


def test_an_unreachable_hub_is_shown_and_the_app_reconnects_when_it_comes_up(
    hub: TuiHub, tmp_path: Path
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    away = TuiHub(url, hub.token, hub.files[:1], hub.process)

    async def main() -> None:
        app = make_app(away)
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await until_ready(pilot)
            status = app.main.query_one(StatusLine)
            await wait_for(pilot, lambda: status.state == "reconnecting")
            await wait_for(
                pilot,
                lambda: "cannot reach the hub" in status_text(app) and "reconnecting" in status_text(app),
            )
            assert any("unreachable" in n.message for n in app._notifications)
            started = await asyncio.to_thread(start_hub_on, tmp_path / "db", tmp_path / "hub.log", port)
            try:
                await asyncio.to_thread(import_ok, started, away.files[0])
                table = table_of(app)
                await wait_for(pilot, lambda: status.state == "connected", timeout=30)
                await settle_rows(pilot, table, ids(newest_first(away.oracle())))
            finally:
                started.stop()

    run(main())


def test_a_wrong_token_says_unauthorized_and_what_to_do(hub: TuiHub) -> None:
    async def main() -> None:
        app = make_app(hub, token="wrong-token")
        async with app.run_test(size=SIZE, notifications=True) as pilot:
            await until_ready(pilot)
            status = app.main.query_one(StatusLine)
            await wait_for(pilot, lambda: status.state == "unauthorized")
            text = status_text(app)
            assert "unauthorized" in text and "PODSHARK_TOKEN" in text
            assert table_of(app).calls() == []
            assert any("PODSHARK_TOKEN" in n.message for n in app._notifications)

    run(main())


# ---- the other screens are reached from here


def test_enter_opens_the_details_of_the_selected_call(hub: TuiHub) -> None:
    async def main() -> None:
        from tui.screens.detail import DetailScreen

        app = make_app(hub)
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            table = table_of(app)
            table.move_cursor(3)
            chosen = table.current_call
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen))
            assert chosen is not None and app.screen.call_id == chosen.id  # type: ignore[attr-defined]
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.main)

    run(main())


def test_the_keys_open_help_stats_and_export_with_the_active_filter(hub: TuiHub) -> None:
    async def main() -> None:
        from tui.screens.export import ExportScreen
        from tui.screens.help import HelpScreen
        from tui.screens.stats import StatsScreen

        app = make_app(hub, filter_text="dns")
        async with app.run_test(size=SIZE) as pilot:
            await until_ready(pilot)
            assert ids(table_of(app).calls()) == want(hub, "dns")
            for key, screen in (("question_mark", HelpScreen), ("s", StatsScreen), ("e", ExportScreen)):
                await pilot.press(key)
                await wait_for(pilot, lambda s=screen: isinstance(app.screen, s))  # type: ignore[misc]
                if screen is not HelpScreen:
                    assert app.screen.filter_text == "dns"  # type: ignore[attr-defined]
                if screen is ExportScreen:  # no replay: the whole history
                    assert (app.screen.from_ns, app.screen.to_ns) == (None, None)  # type: ignore[attr-defined]
                await pilot.press("escape")
                await wait_for(pilot, lambda: app.screen is app.main)

    run(main())


def test_podshark_ui_checks_its_arguments(tmp_path: Path) -> None:
    from tests.hub.test_service import podshark

    r = podshark("ui", "--help")
    assert r.returncode == 0 and b"--hub" in r.stdout and b"PODSHARK_TOKEN" in r.stdout
    r = podshark("ui", "--hub", "ftp://x")
    assert r.returncode == 2 and b"http:// or https://" in r.stderr
    r = podshark("ui", "--hub", "http://127.0.0.1:1", "--token-file", str(tmp_path / "missing"))
    assert r.returncode == 2 and b"cannot read token file" in r.stderr


def test_run_app_is_what_podshark_open_calls() -> None:
    import inspect

    from tui.app import run_app

    params = inspect.signature(run_app).parameters
    assert list(params) == ["url", "token", "whole_history", "ssl", "explain"]
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("ssl", "explain"))
    assert os.environ["TZ"] == "UTC"
