"""The replay and export dialogs and the command palette, driven by Pilot against a REAL hub
process (tests/tui/conftest.py's `hub`: `python -m podshark hub` loaded with `podshark import`).

Oracles: for times, arithmetic on an injected clock and `calendar.timegm`; for the hub's stored
window, `GET /api/v1/stats` fetched here with urllib; for exports, tshark reading the written file
and the original capture with the same display filter.
"""

from __future__ import annotations

import calendar
import io
import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import pytest
from rich.console import Console
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Button, Input, ProgressBar, Static

from dissect.engine import file_source_id
from dissect.filter import ERRORS
from tests.conftest import FIXTURES
from tests.tui.conftest import SIZE as APP_SIZE
from tests.tui.conftest import TuiHub, make_app, run, until_ready, wait_for
from tui.client import HubClient
from tui.commands import PALETTE, PodsharkCommands
from tui.screens.export import ExportScreen, State, check_path, default_name
from tui.screens.replay import ReplayDialog, ReplayRequest, parse_when

NOW = calendar.timegm((2025, 11, 21, 11, 0, 0)) * 10**9  # the injected clock: 2025-11-21T11:00:00Z
MIN = 60 * 10**9
PIPELINED = FIXTURES / "http1__zeek_pipelined-requests.pcap"
SIZE = (110, 40)


class Host(App[None]):
    """The smallest app the dialogs need: `client` and `filter_text`, like PodsharkApp's; the
    palette actions record what they were asked to do."""

    COMMANDS = App.COMMANDS | {PodsharkCommands}
    BINDINGS: ClassVar[list[BindingType]] = [Binding("x", "noop", "Nothing")]

    def __init__(self, url: str, token: str | None, filter_text: str = "") -> None:
        super().__init__()
        self.url, self.token, self.filter_text = url, token, filter_text
        self.client: HubClient
        self.results: list[object] = []
        self.actions: list[tuple[str, tuple[object, ...]]] = []

    def compose(self) -> ComposeResult:
        yield Static("host")

    async def on_mount(self) -> None:
        self.client = HubClient(self.url, self.token)

    async def on_unmount(self) -> None:
        await self.client.close()

    def open(self, screen: Screen[Any]) -> None:
        self.push_screen(screen, self.results.append)

    def action_filter(self, text: str | None = None) -> None:
        self.actions.append(("filter", (text,)))

    def action_replay(self, since: str | None = None) -> None:
        self.actions.append(("replay", (since,)))

    def action_export(self) -> None:
        self.actions.append(("export", ()))

    def action_stats(self) -> None:
        self.actions.append(("stats", ()))

    def action_help(self) -> None:
        self.actions.append(("help", ()))

    def action_live(self) -> None:
        self.actions.append(("live", ()))


async def type_into(pilot: Pilot[Any], selector: str, text: str) -> None:
    field = pilot.app.screen.query_one(selector, Input)
    field.value = ""
    field.focus()
    await pilot.press(*text)
    await pilot.pause()


def stats_api(hub: TuiHub, **query: str) -> dict[str, Any]:
    url = hub.url + "/api/v1/stats" + ("?" + urllib.parse.urlencode(query) if query else "")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {hub.token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def dead_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---- replay: parsing times (pure)


def test_parse_when_relative_absolute_and_now() -> None:
    assert parse_when("-15m", NOW) == NOW - 15 * MIN
    assert parse_when(" -1h30m ", NOW) == NOW - 90 * MIN
    assert parse_when("-2d", NOW) == NOW - 2 * 86400 * 10**9
    assert parse_when("now", NOW) == NOW
    assert parse_when("2025-11-21T10:00:00Z", NOW) == calendar.timegm((2025, 11, 21, 10, 0, 0)) * 10**9
    assert parse_when("2025-11-21T12:00:00+02:00", NOW) == calendar.timegm((2025, 11, 21, 10, 0, 0)) * 10**9
    assert (
        parse_when("2025-11-21T10:00:00.5Z", NOW)
        == calendar.timegm((2025, 11, 21, 10, 0, 0)) * 10**9 + 5 * 10**8
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "required"),
        ("15m", "-15m"),  # a duration without the minus: say how to write "ago"
        ("-15x", "not a duration"),
        ("yesterday", "not a time"),
        ("2025-13-01T00:00:00Z", "not a time"),
    ],
)
def test_parse_when_errors_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_when(text, NOW)


def test_replay_request_describes_itself_for_the_banner() -> None:
    assert ReplayRequest(NOW - 15 * MIN, NOW, 10.0).describe() == (
        "2025-11-21T10:45:00Z–2025-11-21T11:00:00Z at 10x"
    )
    assert ReplayRequest(NOW - 15 * MIN, NOW, None).describe().endswith("at max speed")


# ---- replay: the dialog


def test_replay_dialog_inline_errors_then_relative_window(hub: TuiHub) -> None:
    async def body() -> None:
        app = Host(hub.url, hub.token)
        async with app.run_test(size=SIZE) as pilot:
            dialog = ReplayDialog(now_ns=lambda: NOW)
            app.open(dialog)
            await pilot.pause()
            await type_into(pilot, "#replay-from", "last tuesday")
            error = dialog.query_one("#replay-from-error", Static)
            assert "not a time" in str(error.render())
            assert dialog.query_one("#replay-from", Input).has_class("-invalid")
            await pilot.press("enter")  # refused: stays open, focus back on the bad field
            await pilot.pause()
            assert app.results == [] and app.screen is dialog
            assert dialog.focused is dialog.query_one("#replay-from", Input)

            await type_into(pilot, "#replay-from", "-15m")
            assert str(error.render()) == ""
            assert "2025-11-21T10:45:00Z–2025-11-21T11:00:00Z at 1x" in str(
                dialog.query_one("#replay-preview", Static).render()
            )
            await pilot.press("enter")
            await pilot.pause()
            assert app.results == [ReplayRequest(NOW - 15 * MIN, NOW, 1.0)]

    run(body())


def test_replay_dialog_two_rfc3339_times_and_speeds(hub: TuiHub) -> None:
    lo = calendar.timegm((2009, 11, 18, 20, 58, 0)) * 10**9
    hi = calendar.timegm((2009, 11, 18, 21, 0, 0)) * 10**9 + 250_000_000

    async def body() -> None:
        app = Host(hub.url, hub.token)
        async with app.run_test(size=SIZE) as pilot:
            for speed_id in ("#speed-10", "#speed-max"):
                dialog = ReplayDialog(now_ns=lambda: NOW)
                app.open(dialog)
                await pilot.pause()
                await type_into(pilot, "#replay-from", "2009-11-18T20:58:00Z")
                await type_into(pilot, "#replay-to", "2009-11-18T22:00:00.25+01:00")
                await pilot.click(speed_id)
                await pilot.pause()
                await pilot.click("#replay-ok")
                await pilot.pause()
            # to before from: an inline error on "to", and OK does nothing
            dialog = ReplayDialog(now_ns=lambda: NOW)
            app.open(dialog)
            await pilot.pause()
            await type_into(pilot, "#replay-to", "2009-11-18T20:00:00Z")
            assert "must be after from" in str(dialog.query_one("#replay-to-error", Static).render())
            await pilot.click("#replay-ok")
            await pilot.pause()
            assert app.screen is dialog
            await pilot.press("escape")
            await pilot.pause()
        assert app.results == [ReplayRequest(lo, hi, 10.0), ReplayRequest(lo, hi, None), None]

    run(body())


def test_replay_dialog_whole_stored_history_is_the_hubs_window(hub: TuiHub) -> None:
    window = stats_api(hub, buckets="1", top="1")["window"]

    async def body() -> None:
        app = Host(hub.url, hub.token)
        async with app.run_test(size=SIZE) as pilot:
            dialog = ReplayDialog(now_ns=lambda: NOW)
            app.open(dialog)
            await pilot.pause()
            await pilot.click("#replay-all")
            await wait_for(pilot, lambda: dialog.query_one("#replay-from", Input).value != "-15m")
            await pilot.click("#replay-ok")
            await pilot.pause()
        assert app.results == [ReplayRequest(window["from"], window["to"], 1.0)]
        # the window really holds every stored call: the captures are from 2009..2024, not "-15m"
        assert window["from"] < NOW - 365 * 86400 * 10**9

    run(body())


def test_replay_dialog_whole_history_when_the_hub_is_down() -> None:
    async def body() -> None:
        app = Host(dead_url(), "t")
        async with app.run_test(size=SIZE) as pilot:
            dialog = ReplayDialog(now_ns=lambda: NOW)
            app.open(dialog)
            await pilot.pause()
            await pilot.click("#replay-all")
            preview = dialog.query_one("#replay-preview", Static)
            await wait_for(pilot, lambda: "cannot get the stored window" in str(preview.render()))
            assert "cannot reach the hub" in str(preview.render())
            assert dialog.query_one("#replay-from", Input).value == "-15m"  # untouched

    run(body())


# ---- export


def tshark_count(path: Path, display_filter: str) -> int:
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout.decode()
    return len(out.split())


async def start_export(pilot: Pilot[Any], screen: ExportScreen, path: Path | None = None) -> None:
    """Optionally set the path, press Start, wait until the dialog is past running."""
    if path is not None:
        screen.query_one("#export-path", Input).value = str(path)
    await pilot.click("#export-start")
    await wait_for(pilot, lambda: screen.state not in (State.READY, State.RUNNING), timeout=60)


async def export_with(app: Host, pilot: Pilot[Any], screen: ExportScreen, path: Path | None = None) -> None:
    app.open(screen)
    await pilot.pause()
    await start_export(pilot, screen, path)


@pytest.mark.tshark
def test_export_writes_a_pcapng_tshark_reads_back(hub: TuiHub, tmp_path: Path) -> None:
    assert shutil.which("tshark")
    flt = f'http and id startswith "{file_source_id(PIPELINED)}/"'  # the pipelined capture's calls
    out = tmp_path / "pipelined.pcapng"
    bars: list[float | None] = []

    async def body() -> None:
        app = Host(hub.url, hub.token, filter_text=flt)
        async with app.run_test(size=SIZE) as pilot:
            screen = ExportScreen(app.client, app.filter_text, None, None, tmp_path, now_ns=lambda: NOW)
            app.open(screen)
            await pilot.pause()
            # the dialog says what will be exported, and proposes a timestamped name in default_dir
            assert str(screen.query_one("#export-filter", Static).render()) == flt
            assert str(screen.query_one("#export-window", Static).render()) == "all stored history"
            proposed = screen.query_one("#export-path", Input).value
            assert proposed == str(tmp_path / "podshark-20251121T110000Z.pcapng")
            await export_with(app, pilot, screen, out)
            assert screen.state is State.DONE, screen.error
            assert screen.progress_updates > 0  # the client's callback fed the bar
            bars.append(screen.query_one("#export-progress", ProgressBar).percentage)
            message = str(screen.query_one("#export-message", Static).render())
            assert str(out) in message and f"wrote {screen.frames} frames" in message
            assert screen.focused is screen.query_one("#export-close", Button)
            await pilot.press("enter")
            await pilot.pause()
            assert app.results == [out]
            assert screen.bytes_written == out.stat().st_size

    run(body())
    assert bars == [1.0]
    assert not out.with_name(out.name + ".partial").exists()
    want = tshark_count(PIPELINED, "http.request")
    assert want > 0
    assert tshark_count(out, "http.request") == want
    assert tshark_count(out, "http.response") == tshark_count(PIPELINED, "http.response")
    assert tshark_count(out, "dns or kafka or http2") == 0  # nothing from the other captures


def test_export_refuses_to_overwrite_until_confirmed(hub: TuiHub, tmp_path: Path) -> None:
    out = tmp_path / "exists.pcapng"
    out.write_bytes(b"keep me")
    flt = f'dns and id startswith "{file_source_id(FIXTURES / "dns__deepflow_nxdomain.pcap")}/"'

    async def body() -> None:
        app = Host(hub.url, hub.token, filter_text=flt)
        async with app.run_test(size=SIZE) as pilot:
            screen = ExportScreen(app.client, flt, None, None, tmp_path)
            await export_with(app, pilot, screen, out)
            assert screen.state is State.CONFIRM
            assert "exists" in str(screen.query_one("#export-message", Static).render())
            assert out.read_bytes() == b"keep me"
            start = screen.query_one("#export-start", Button)
            assert str(start.label) == "Overwrite"
            await wait_for(pilot, lambda: not start.has_class("-active"))  # a click's 0.2 s effect
            await pilot.click("#export-start")
            await wait_for(pilot, lambda: screen.state is State.DONE, timeout=60)
            await pilot.click("#export-close")
            await pilot.pause()
        assert app.results == [out]

    run(body())
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng section header block now


def test_export_filter_the_hub_refuses_is_shown_with_a_caret(hub: TuiHub, tmp_path: Path) -> None:
    async def body() -> None:
        app = Host(hub.url, hub.token)
        async with app.run_test(size=SIZE) as pilot:
            screen = ExportScreen(app.client, "http and and", None, None, tmp_path)
            await export_with(app, pilot, screen, tmp_path / "x.pcapng")
            assert screen.state is State.FAILED
            shown = str(screen.query_one("#export-message", Static).render())
            assert "refused" in shown and "http and and\n" in shown
            caret = shown.split("http and and\n", 1)[1].split("\n")[0]
            assert caret.index("^") - 2 == len("http and ")  # under the second "and"
            await pilot.press("escape")
            await pilot.pause()
        assert app.results == [None]

    run(body())
    assert list(tmp_path.iterdir()) == []  # no file, no partial


@pytest.mark.parametrize("case", ["unreachable", "token"])
def test_export_hub_errors_are_sentences(hub: TuiHub, tmp_path: Path, case: str) -> None:
    url, token = (dead_url(), hub.token) if case == "unreachable" else (hub.url, "wrong-token")

    async def body() -> None:
        app = Host(url, token)
        async with app.run_test(size=SIZE) as pilot:
            screen = ExportScreen(app.client, "", None, None, tmp_path)
            await export_with(app, pilot, screen)
            assert screen.state is State.FAILED
            shown = str(screen.query_one("#export-message", Static).render())
            if case == "unreachable":
                assert "failed" in shown and "press Start to try again" in shown
            else:
                assert "401" in shown and "PODSHARK_TOKEN" in shown
            assert not screen.query_one("#export-start", Button).disabled  # may try again

    run(body())
    assert list(tmp_path.iterdir()) == []


def test_export_path_problems_are_caught_before_asking_the_hub(tmp_path: Path) -> None:
    assert check_path(tmp_path / "ok.pcapng") is None
    assert "is a folder" in (check_path(tmp_path) or "")
    assert "does not exist" in (check_path(tmp_path / "no" / "x.pcapng") or "")
    assert default_name(NOW) == "podshark-20251121T110000Z.pcapng"

    async def body() -> None:
        app = Host(dead_url(), "t")
        async with app.run_test(size=SIZE) as pilot:
            screen = ExportScreen(app.client, "", None, None, tmp_path)
            await export_with(app, pilot, screen, tmp_path / "missing" / "x.pcapng")
            assert screen.state is State.FAILED
            assert "does not exist" in screen.error
            # a relative name goes into default_dir
            screen.query_one("#export-path", Input).value = "rel.pcapng"
            assert screen._target() == tmp_path / "rel.pcapng"

    run(body())


def test_export_window_is_described(hub: TuiHub, tmp_path: Path) -> None:
    async def body() -> None:
        app = Host(hub.url, hub.token)
        async with app.run_test(size=SIZE) as pilot:
            screen = ExportScreen(app.client, "", NOW - 15 * MIN, NOW, tmp_path)
            app.open(screen)
            await pilot.pause()
            assert str(screen.query_one("#export-window", Static).render()) == (
                "2025-11-21T10:45:00Z – 2025-11-21T11:00:00Z"
            )
            assert "every call" in str(screen.query_one("#export-filter", Static).render())

    run(body())


# ---- the command palette


@pytest.mark.parametrize(
    ("query", "action"),
    [
        ("errors only", ("filter", (ERRORS,))),
        ("dns only", ("filter", ("dns",))),
        ("filter clear", ("filter", ("",))),
        ("last 15 minutes", ("replay", ("-15m",))),
        ("export", ("export", ())),
        ("stats", ("stats", ())),
        ("back to live", ("live", ())),
    ],
)
def test_palette_runs_the_app_actions(query: str, action: tuple[str, tuple[object, ...]]) -> None:
    async def body() -> None:
        app = Host(dead_url(), "t")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*query)
            await wait_for(pilot, lambda: _palette_has(app, query))
            await pilot.press("enter")
            await wait_for(pilot, lambda: bool(app.actions))
        assert app.actions == [action]

    run(body())


def _palette_has(app: App[Any], query: str) -> bool:
    from textual.command import CommandList

    try:
        options = app.screen.query_one(CommandList)
    except Exception:
        return False
    return options.option_count > 0 and options.highlighted is not None


def test_palette_offers_every_protocol_and_preset() -> None:
    names = [c.name for c in PALETTE]
    for p in ("http", "http2", "grpc", "dns", "kafka", "tls"):
        assert f"Filter: {p} only" in names
    assert {"Help", "Stats", "Back to live", "Export to pcapng…", "Filter: errors only"} <= set(names)
    actions = {"filter", "replay", "export", "stats", "map", "alerts", "help", "live"}
    assert {c.action for c in PALETTE} == actions
    assert PALETTE[0].action_string == f"filter({ERRORS!r})"


def test_palette_actions_without_parameters_still_work() -> None:
    """An app whose `replay` action takes no argument opens its dialog from the preset instead."""
    seen: list[str] = []

    class Plain(Host):
        def action_replay(self) -> None:  # type: ignore[override]
            seen.append("replay")

    async def body() -> None:
        app = Plain(dead_url(), "t")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("ctrl+p")
            await pilot.press(*"last hour")
            await wait_for(pilot, lambda: _palette_has(app, "last hour"))
            await pilot.press("enter")
            await wait_for(pilot, lambda: bool(seen))

    run(body())
    assert seen == ["replay"]


# ---- help


class Keyed(Static, can_focus=True):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "down", "Next row", show=False),
        Binding("enter", "open", "Details"),
    ]
    BINDING_GROUP_TITLE = "Calls"

    def action_down(self) -> None: ...

    def action_open(self) -> None: ...


class KeyedScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
        Binding("x", "errors", "Errors only", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Keyed("rows")

    def on_mount(self) -> None:
        self.query_one(Keyed).focus()

    def action_filter(self) -> None: ...

    def action_errors(self) -> None: ...


def test_help_lists_widget_screen_and_app_keys_grouped_and_closes() -> None:
    from tui.screens.help import HelpScreen, KeyHelp

    async def body() -> None:
        app = Host(dead_url(), "t")
        async with app.run_test(size=SIZE) as pilot:
            await app.push_screen(KeyedScreen())
            await pilot.pause()
            for key in ("escape", "q", "question_mark"):
                help_screen = HelpScreen()
                app.open(help_screen)
                await pilot.pause()
                keys = help_screen.keys
                assert KeyHelp("Calls", "j ↓", "Next row") in keys  # hidden bindings too
                assert KeyHelp("Calls", "⏎", "Details") in keys
                assert KeyHelp("Keyed screen", "/", "Filter") in keys
                assert KeyHelp("Keyed screen", "x", "Errors only") in keys
                assert KeyHelp("Global", "x", "Nothing") not in keys  # shadowed by the screen's x
                assert KeyHelp("Global", "^p", "palette") in keys
                groups = list(dict.fromkeys(k.group for k in keys))
                assert groups == ["Calls", "Keyed screen", "Global"]  # the order keys are looked up
                text = str(help_screen.query_one("#help-filter", Static).render())
                assert "Filter language" in text and "status >= 500" in text
                await pilot.press(key)
                await pilot.pause()
                assert isinstance(app.screen, KeyedScreen), key
        assert app.results == [None, None, None]

    run(body())


# ---- through the real app (tui/app.py): keys, dialogs, the main screen's table


@pytest.mark.tshark
def test_app_r_replays_the_whole_history_then_e_exports_its_window(hub: TuiHub, tmp_path: Path) -> None:
    """`r` -> "Whole stored history" -> max speed -> the table plays every matching call; `e` ->
    the export dialog shows that replay window and the filter, and the file tshark reads back holds
    the capture's HTTP requests."""
    flt = f'http and id startswith "{file_source_id(PIPELINED)}/"'
    calls = hub.oracle(flt)
    assert calls
    out = tmp_path / "replayed.pcapng"

    async def body() -> None:
        app = make_app(hub, filter_text=flt, now_ns=lambda: NOW)
        async with app.run_test(size=APP_SIZE) as pilot:
            await until_ready(pilot)
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, ReplayDialog))
            await pilot.click("#replay-all")
            await wait_for(pilot, lambda: app.screen.query_one("#replay-from", Input).value != "-15m")
            await pilot.click("#speed-max")
            await pilot.click("#replay-ok")
            await wait_for(pilot, lambda: app.main.mode == "replay" and app.main.replay_done)
            request = app.main.replay_request
            assert isinstance(request, ReplayRequest) and request.speed is None
            from tui.widgets.calls_table import CallsTable

            table = app.main.query_one(CallsTable)
            await wait_for(pilot, lambda: len(table.calls()) == len(calls))
            assert sorted(c.id for c in table.calls()) == sorted(c.id for c in calls)

            await pilot.press("e")
            await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
            screen = app.screen
            assert isinstance(screen, ExportScreen)
            assert (screen.from_ns, screen.to_ns) == (request.from_ns, request.to_ns)
            assert str(screen.query_one("#export-filter", Static).render()) == flt
            await start_export(pilot, screen, out)
            assert screen.state is State.DONE, screen.error
            assert str(out) in str(screen.query_one("#export-message", Static).render())
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is app.main)

    run(body())
    assert tshark_count(out, "http.request") == tshark_count(PIPELINED, "http.request")


def test_app_palette_presets_filter_and_replay(hub: TuiHub) -> None:
    """The palette's presets act on the main screen, also when opened over the stats screen."""
    from tui.screens.stats import StatsScreen
    from tui.widgets.calls_table import CallsTable

    async def palette(pilot: Pilot[Any], query: str) -> None:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*query)
        await wait_for(pilot, lambda: _palette_has(pilot.app, query))
        await pilot.press("enter")

    async def body() -> None:
        app = make_app(hub, now_ns=lambda: NOW)
        async with app.run_test(size=APP_SIZE) as pilot:
            await until_ready(pilot)
            table = app.main.query_one(CallsTable)
            await palette(pilot, "filter: dns only")
            await wait_for(pilot, lambda: app.filter_text == "dns")
            want = sorted(c.id for c in hub.oracle("dns"))
            await wait_for(pilot, lambda: sorted(c.id for c in table.calls()) == want)

            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, StatsScreen))
            await palette(pilot, "filter: errors only")  # (the app's own "Errors only" adds to the filter)
            await wait_for(pilot, lambda: app.filter_text == ERRORS and app.screen is app.main)
            want = sorted(c.id for c in hub.oracle(ERRORS))
            assert want
            await wait_for(pilot, lambda: sorted(c.id for c in table.calls()) == want)

            await palette(pilot, "last 15 minutes")
            await wait_for(pilot, lambda: app.main.mode == "replay")
            assert app.main.replay_request == ReplayRequest(NOW - 15 * MIN, NOW, 1.0)
            await palette(pilot, "back to live")
            await wait_for(pilot, lambda: app.main.mode == "live")

    run(body())


def rendered(renderable: object) -> str:
    console = Console(width=150, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_app_help_lists_the_main_screen_and_app_keys(hub: TuiHub) -> None:
    from tui.screens.help import HelpScreen, keys_table

    async def body() -> None:
        app = make_app(hub)
        async with app.run_test(size=APP_SIZE) as pilot:
            await until_ready(pilot)
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            help_screen = app.screen
            assert isinstance(help_screen, HelpScreen)
            listed = {(k.keys, k.description) for k in help_screen.keys}
            # every binding of the main screen and of the app, as the help shows them
            for node in (app.main, app):
                for binding in node._bindings:  # (key, Binding) pairs
                    b = binding[1]
                    if node is app and b.key in {k for k, _ in app.main._bindings}:
                        continue  # shadowed by the screen's own binding
                    assert any(
                        b.description == d and app.get_key_display(b) in k.split() for k, d in listed
                    ), b
            shown = rendered(keys_table(help_screen.keys))
            for line in ("r  Replay", "e  Export", "q  Quit", "?  Help", "/  Filter"):
                assert line in shown, shown
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: app.screen is app.main)

    run(body())
