"""The detail view (Enter on a row): one call in full, in four tabs.

Overview (what, when, who, flags), Request and Response (headers as sent, trailers, body) and a
protocol tab (the gRPC message tree, DNS records, Kafka partitions and records, or the rest of
`info`). The screen shows the summary it was given at once and fetches the whole call (bodies
included) from the hub in a worker; bodies are prepared (JSON parsed and pretty-printed, hex
dumped) in a thread, so a megabyte body never stalls the UI. A fetch that fails says why and how
to retry, it does not crash the app.

Keys: Escape/q back, tab/shift+tab or 1-4 switch tabs, `c` copy as curl (OSC 52 clipboard plus a
notification with the command), `S`/ctrl+s save a body, ctrl+r fetch again, j/k/g/G scroll.
Everything drawn comes from the pure renderers in tui/render/.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Static, TabbedContent, TabPane, Tree

from dissect.model import Call, Message
from tui.client import HubClient, HubError
from tui.curl import CurlError, curl_command, sanitize
from tui.render.body import BodyView, render_body
from tui.render.dns import dns_view
from tui.render.flags import flags_view
from tui.render.grpc import grpc_summary, grpc_tree
from tui.render.headers import headers_table
from tui.render.identity import identity
from tui.render.info import info_json, rest_of_info
from tui.render.kafka import kafka_view
from tui.render.overview import overview, title
from tui.render.prerendered import Prerendered
from tui.render.timing import timing
from tui.screens.save_body import SaveBodyDialog

TABS = ("overview", "request", "response", "protocol")
PROTOCOL_TAB = {"grpc": "gRPC", "dns": "DNS", "kafka": "Kafka", "tls": "TLS"}


@dataclass
class _Bodies:
    """Bodies prepared off the event loop."""

    request: BodyView
    response: BodyView


def _prepare(call: Call, loaded: bool) -> _Bodies:
    return _Bodies(
        render_body(call.request, call.info, "request", loaded),
        render_body(call.response, call.info, "response", loaded),
    )


def _section(text: str) -> Static:
    return Static(Text(text, style="bold"), classes="section-title")


def _notes(notes: list[str]) -> Static:
    return Static(Text(" · ".join(notes), style="dim italic"), classes="body-notes")


class DetailScreen(Screen[None]):
    """One call in full. Pushed by the main screen with the row's summary (no bodies)."""

    CSS_PATH = "../detail.tcss"
    AUTO_FOCUS = "#scroll-overview"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "back", "Back"),
        Binding("tab", "next_tab", "Next tab", show=False),
        Binding("shift+tab", "previous_tab", "Previous tab", show=False),
        Binding("1", "show_tab('overview')", "Overview", show=False),
        Binding("2", "show_tab('request')", "Request", show=False),
        Binding("3", "show_tab('response')", "Response", show=False),
        Binding("4", "show_tab('protocol')", "Protocol", show=False),
        Binding("c", "copy_curl", "Copy as curl"),
        Binding("S,ctrl+s", "save_body", "Save body"),
        Binding("ctrl+r", "reload", "Reload"),
        Binding("j", "scroll('down')", "Down", show=False),
        Binding("k", "scroll('up')", "Up", show=False),
        Binding("g", "scroll('home')", "Top", show=False),
        Binding("G", "scroll('end')", "Bottom", show=False),
    ]

    def __init__(self, call_id: str, client: HubClient, summary: Call | None = None) -> None:
        super().__init__()
        self.call_id = call_id
        self.client = client
        self.summary = summary
        self.call: Call | None = None  # the whole call, once fetched
        self.error: str | None = None
        self.settled = False  # the fetch ended (shown, or failed with a message): for tests

    # ---- layout

    def compose(self) -> ComposeResult:
        yield Static(self._title_text(), id="detail-title")
        yield Static("", id="detail-error")
        protocol = self.summary.protocol if self.summary is not None else ""
        with TabbedContent(id="detail-tabs", initial="overview"):
            with TabPane("1 Overview", id="overview"):
                yield VerticalScroll(id="scroll-overview")
            with TabPane("2 Request", id="request"):
                yield VerticalScroll(id="scroll-request")
            with TabPane("3 Response", id="response"):
                yield VerticalScroll(id="scroll-response")
            with TabPane(f"4 {PROTOCOL_TAB.get(protocol, 'Info')}", id="protocol"):
                yield VerticalScroll(id="scroll-protocol")
        yield Footer()

    def _title_text(self) -> Text:
        shown = self.call or self.summary
        if shown is None:
            return Text(f"call {self.call_id}", style="bold")
        return title(shown)

    async def on_mount(self) -> None:
        self.error_widget.display = False
        if self.summary is not None:
            await self._fill(self.summary, loaded=False)
        else:
            await self._placeholder(Text(f"loading call {self.call_id}…", style="dim italic"))
        self._start_fetch()

    @property
    def error_widget(self) -> Static:
        return self.query_one("#detail-error", Static)

    def _start_fetch(self) -> None:
        self.run_worker(self._fetch(), name="fetch-call", group="fetch", exclusive=True, exit_on_error=False)

    async def _fetch(self) -> None:
        try:
            call = await self.client.call(self.call_id)
        except HubError as e:
            await self._show_error(f"could not load call {self.call_id}: {e}")
            return
        except Exception as e:  # a malformed answer: say so, keep the app
            await self._show_error(f"the hub's answer for call {self.call_id} could not be read: {e}")
            return
        self.call = call
        self.error = None
        self.error_widget.display = False
        self.query_one("#detail-title", Static).update(self._title_text())
        self._relabel_protocol_tab(call.protocol)
        try:
            await self._fill(call, loaded=True)
        except Exception as e:  # a renderer bug must cost this view, not the app
            await self._show_error(f"call {self.call_id} could not be shown: {type(e).__name__}: {e}")
            return
        self.settled = True

    async def _show_error(self, message: str) -> None:
        self.error = message
        w = self.error_widget
        w.update(Text(f"{message}\nPress ctrl+r to try again, Escape to go back.", style="bold"))
        w.display = True
        if self.summary is None:
            await self._placeholder(Text("no data: see the message above", style="dim"))
        self.settled = True

    def _relabel_protocol_tab(self, protocol: str) -> None:
        tabs = self.query_one(TabbedContent)
        tab = tabs.get_tab("protocol")
        tab.label = f"4 {PROTOCOL_TAB.get(protocol, 'Info')}"

    async def _placeholder(self, text: Text) -> None:
        for name in TABS:
            scroll = self.query_one(f"#scroll-{name}", VerticalScroll)
            await scroll.remove_children()
            await scroll.mount(Static(text))

    async def _fill(self, call: Call, loaded: bool) -> None:
        """Replace every tab's content with `call` (bodies prepared in a thread)."""
        bodies = await asyncio.to_thread(_prepare, call, loaded)
        content: dict[str, list[Widget]] = {
            "overview": self._overview(call),
            "request": self._message(call.request, "request", bodies.request),
            "response": self._message(call.response, "response", bodies.response),
            "protocol": self._protocol(call, loaded),
        }
        for name, widgets in content.items():
            scroll = self.query_one(f"#scroll-{name}", VerticalScroll)
            await scroll.remove_children()
            await scroll.mount_all(widgets)

    def _overview(self, call: Call) -> list[Widget]:
        return [
            _section("Call"),
            Static(overview(call), classes="section"),
            _section("Timing"),
            Static(timing(call), classes="section"),
            _section("Identity"),
            Static(identity(call), classes="section"),
            _section("Flags"),
            Static(flags_view(call.flags), classes="section"),
        ]

    def _message(self, m: Message | None, side: str, body: BodyView) -> list[Widget]:
        if m is None:
            return [Static(body.renderable, classes="section")]
        out: list[Widget] = [
            _section(f"Headers ({len(m.headers)})"),
            Static(headers_table(m.headers), classes="section"),
        ]
        if m.trailers:
            out += [
                _section(f"Trailers ({len(m.trailers)})"),
                Static(headers_table(m.trailers), classes="section"),
            ]
        out += [_section("Body"), _notes(body.notes)]
        out.append(Prerendered(body.renderable, classes=f"section body body-{body.kind}", id=f"body-{side}"))
        return out

    def _protocol(self, call: Call, loaded: bool) -> list[Widget]:
        out: list[Widget] = []
        if call.protocol == "grpc":
            out += [_section("gRPC"), Static(grpc_summary(call), classes="section")]
            if loaded:
                out += [_section("Messages (decoded without a schema)"), grpc_tree(call)]
            else:
                out.append(Static(Text("loading the messages…", style="dim italic")))
        elif call.protocol == "dns":
            out += [_section("DNS"), Static(dns_view(call), classes="section")]
        elif call.protocol == "kafka":
            out += [_section("Kafka"), Static(kafka_view(call), classes="section")]
        if not out or rest_of_info(call):
            title = "More info" if out else "Info"
            out += [_section(title), Prerendered(info_json(call), classes="section", id="info-json")]
        return out

    # ---- actions

    def action_back(self) -> None:
        self.dismiss(None)

    def _active(self) -> str:
        return self.query_one(TabbedContent).active or "overview"

    def action_show_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = name
        self._focus_active(name)

    def action_next_tab(self) -> None:
        self.action_show_tab(TABS[(TABS.index(self._active()) + 1) % len(TABS)])

    def action_previous_tab(self) -> None:
        self.action_show_tab(TABS[(TABS.index(self._active()) - 1) % len(TABS)])

    def _focus_active(self, name: str) -> None:
        """The tab's content takes the keys: the gRPC tree if there is one, else the scroll."""
        scroll = self.query_one(f"#scroll-{name}", VerticalScroll)
        trees = scroll.query(Tree)
        (trees.first() if trees else scroll).focus()

    def action_scroll(self, where: str) -> None:
        scroll = self.query_one(f"#scroll-{self._active()}", VerticalScroll)
        {
            "down": scroll.scroll_down,
            "up": scroll.scroll_up,
            "home": scroll.scroll_home,
            "end": scroll.scroll_end,
        }[where]()

    def action_reload(self) -> None:
        self.error_widget.display = False
        self.settled = False
        self._start_fetch()

    def action_copy_curl(self) -> None:
        if self.call is None:
            self.notify(self.error or "the call is still loading: try again in a moment", severity="warning")
            return
        try:
            cmd = curl_command(self.call, body_path=str(Path.cwd() / f"{sanitize(self.call.id)}-request.bin"))
        except CurlError as e:
            self.notify(str(e), title="copy as curl", severity="warning")
            return
        self.app.copy_to_clipboard(cmd.text)
        self.notify(cmd.text, title="copied as curl", markup=False, timeout=10)
        if cmd.body_file is not None:
            self.run_worker(self._write_curl_body(Path(cmd.body_file), cmd.body), group="save")

    async def _write_curl_body(self, path: Path, body: bytes) -> None:
        def write() -> str:
            if path.exists():
                if path.is_file() and path.read_bytes() == body:
                    return f"the request body is already in {path}"
                return f"{path} exists and was not overwritten: save the request body there with S"
            with path.open("xb") as f:
                f.write(body)
            return f"the request body the command sends was written to {path}"

        try:
            message = await asyncio.to_thread(write)
        except OSError as e:
            self.notify(f"could not write {path}: {e.strerror or e}", severity="error")
            return
        self.notify(message, markup=False)

    def action_save_body(self) -> None:
        call = self.call
        if call is None:
            self.notify(self.error or "the call is still loading: try again in a moment", severity="warning")
            return
        side = self._active()
        if side not in ("request", "response"):
            side = "response" if call.response is not None and call.response.body else "request"
        self.app.push_screen(SaveBodyDialog(call, side), self._saved)

    def _saved(self, result: tuple[Path, int] | None) -> None:
        if result is not None:
            path, n = result
            self.notify(f"saved {n:,} bytes to {path}", title="body saved", markup=False)
