"""The main screen: filter bar, the calls table, the replay banner, the status line, the keys.

It owns all the I/O of the table, in Textual workers, each tagged with a *generation* so a
reply that arrives after the filter or mode changed is dropped instead of mixing two views:

- live (`_live`): `HubClient.live(filter)` forever; `Calls` go to `CallsTable.push_live` (the table
  coalesces them), `Missed` to `push_missed`, `Status` to the status line. The client reconnects by
  itself; the line says why it is reconnecting, or that the token was refused and what to do.
- pages (`_older`, `_newer`): `HubClient.calls` with windows derived from the table's edge rows, on
  the table's `NeedOlder`/`NeedNewer`; they retry (with backoff, slowly when unauthorized) until
  they succeed or the view changes, so an unreachable hub at start fills the table once it is up.
- replay (`_replay`): `HubClient.replay(...)` of the window chosen in T3's `ReplayDialog`, played
  into the same table under a banner; `l` goes back to live.
- alerts (`_poll_alerts`): `HubClient.alerts()` every few seconds; the firing and pending counts go
  to the alert badge at the end of the status line, and a rule that starts firing or resolves
  since the last poll is a notification. A hub without alerts shows nothing.

Other screens are pushed from actions and imported there (lazily), so this module does not depend
on them being present: details (Enter), replay (`r`), export (`e`), stats (`s`), the service map
(`m`, whose Enter on an edge comes back here as a filter) and alerts (`!`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static

from dissect.model import Call
from tui import quick_filters
from tui.client import (
    Alerts,
    Calls,
    End,
    Event,
    HubError,
    Missed,
    Progress,
    Rejected,
    Status,
    StreamError,
    Unauthorized,
    Unreachable,
)
from tui.format import clean, format_time, start_ns
from tui.messages import (
    FilterCancelled,
    FilterSubmitted,
    NeedNewer,
    NeedOlder,
    OpenCall,
    ReloadNewest,
    TableChanged,
)
from tui.widgets.alert_badge import AlertBadge
from tui.widgets.calls_table import CallsTable
from tui.widgets.filter_bar import FilterBar
from tui.widgets.status_line import UNAUTHORIZED_HELP, StatusLine

if TYPE_CHECKING:
    from tui.app import PodsharkApp

RETRY_MIN = 0.5
RETRY_MAX = 5.0
RETRY_UNAUTHORIZED = 10.0
SKIP_PAGES = 20  # pages of rows already shown to skip before handing the table an empty page
ALERTS_POLL_S = 5.0  # how often the alert badge asks the hub
ALERTS_NOTIFY_MAX = 3  # alert notifications per poll; more are summed up in one

EMPTY_LIVE = "waiting for new calls (live) — press j/↓ or G for the stored history, / to filter"
EMPTY_HISTORY = "no calls match — / edits the filter"
EMPTY_REPLAY = "waiting for the replay's first call"


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[Event]) -> AsyncIterator[AsyncIterator[Event]]:
    """Close a stream's generator when its worker ends or is cancelled, so its WebSocket is
    closed now rather than whenever the generator is collected."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
        Binding("r", "replay", "Replay"),
        Binding("l", "live", "Live"),
        Binding("e", "export", "Export"),
        Binding("s", "stats", "Stats"),
        Binding("w", "quick_server", "Same server"),
        Binding("t", "quick_target", "Same target"),
        Binding("x", "quick_errors", "Errors only"),
        # (not in the footer, which is full at 160 columns: the help, the palette and the alert
        # badge name them)
        Binding("m", "map", "Service map", show=False),
        Binding("exclamation_mark", "alerts", "Alerts", key_display="!", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.mode = "live"
        self.replay_request: Any = None  # tui.screens.replay.ReplayRequest while replaying
        self.replay_done = False
        self._gen = 0
        self._live_answered = False
        self._first_page_done = False
        self._notified_state = ""
        self._alert_events: set[tuple[str, str, int]] | None = None  # events seen (None: no poll yet)
        self._alert_latest = 0  # the newest event's time seen
        self.alert_polls = 0  # answers from the alerts endpoint, for tests

    @property
    def podshark(self) -> PodsharkApp:
        return self.app  # type: ignore[return-value]

    @property
    def table(self) -> CallsTable:
        return self.query_one(CallsTable)

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def filter_bar(self) -> FilterBar:
        return self.query_one(FilterBar)

    def compose(self) -> ComposeResult:
        app = self.podshark
        yield FilterBar(app.history, id="filter-bar")
        yield Static("", id="replay-banner")
        yield CallsTable(max_rows=app.max_rows, page_size=app.page_size, id="calls")
        with Horizontal(id="status-row"):
            yield StatusLine(id="status")
            yield AlertBadge(id="alert-badge")
        yield Footer()

    def on_mount(self) -> None:
        self.status.hub = self.podshark.hub_label
        self.filter_bar.set_active(self.podshark.filter_text)
        if self.podshark.history.problem:
            self.notify(self.podshark.history.problem, severity="warning")
        self.table.focus()
        self.go_live()
        self.poll_alerts()
        self.set_interval(ALERTS_POLL_S, self.poll_alerts)

    # ---- readiness (for tests and the first paint)

    def _check_ready(self) -> None:
        history = self.podshark.whole_history or self.mode != "live"
        if self._live_answered and (self._first_page_done or not history):
            self.podshark.ready = True

    # ---- modes

    def _next_generation(self) -> int:
        self._gen += 1
        for group in ("live", "older", "newer", "replay"):
            self.workers.cancel_group(self, group)
        return self._gen

    def go_live(self, *, history: bool | None = None) -> None:
        """Live view from the newest: the table empties, the live stream restarts with the active
        filter, and (for `podshark open`, or when asked) the newest page of history loads."""
        gen = self._next_generation()
        self.mode = "live"
        self.replay_request = None
        self._live_answered = False
        self._first_page_done = False
        want_history = self.podshark.whole_history if history is None else history
        self.table.reset(paging=True, empty_text=EMPTY_HISTORY if want_history else EMPTY_LIVE)
        self.status.mode = "LIVE"
        self.status.paging = True
        self._banner(None)
        self._live(self.podshark.filter_text, gen)
        if want_history:
            self.table.start_history()

    def start_replay(self, request: Any) -> None:
        """Play `request`'s window (a `ReplayRequest`) into an empty table, live stopped."""
        gen = self._next_generation()
        self.mode = "replay"
        self.replay_request = request
        self.replay_done = False
        self.table.reset(paging=False, empty_text=EMPTY_REPLAY)
        self.status.mode = "REPLAY"
        self.status.paging = False
        self._banner(request)
        self._replay(request, self.podshark.filter_text, gen)

    def _banner(self, request: Any, extra: str = "") -> None:
        banner = self.query_one("#replay-banner", Static)
        if request is None:
            banner.display = False
            banner.update("")
            return
        describe = getattr(request, "describe", None)
        what = describe() if callable(describe) else f"{request.from_ns}–{request.to_ns}"
        banner.update(f"REPLAY {what} — press l for live{extra}")
        banner.display = True

    # ---- connection state

    def _set_state(self, state: str, detail: str = "") -> None:
        status = self.status
        status.state = state
        status.detail = UNAUTHORIZED_HELP if state == "unauthorized" else detail
        if state != self._notified_state and state in ("unauthorized", "reconnecting"):
            message = status.detail if state == "unauthorized" else f"hub unreachable: {detail}"
            self.notify(message, title=state, severity="error" if state == "unauthorized" else "warning")
        self._notified_state = state

    # ---- workers

    @work(group="live", exclusive=True)
    async def _live(self, filter_text: str, gen: int) -> None:
        client = self.podshark.client
        try:
            async with _closing(client.live(filter_text)) as events:
                async for event in events:
                    if gen != self._gen:
                        return
                    if isinstance(event, Calls):
                        self.table.push_live(event.calls)
                    elif isinstance(event, Missed):
                        self.table.push_missed(event.count)
                    elif isinstance(event, Status):
                        self._set_state(event.state, event.detail)
                        self._live_answered = True
                        self._check_ready()
                    elif isinstance(event, StreamError):
                        self.notify(event.message, title="live stream", severity="warning")
        except Rejected as e:  # the hub refused a filter our parser took: say so, stay put
            self._live_answered = True
            self._check_ready()
            self.notify(f"{e} — edit it with /", title="filter", severity="error")
        except HubError as e:
            self.notify(str(e), title="live stream", severity="error")

    def _window(self) -> tuple[int | None, int | None]:
        if self.mode == "replay" and self.replay_request is not None:
            return self.replay_request.from_ns, self.replay_request.to_ns
        return None, None

    async def _page(
        self, gen: int, *, to_ns: int | None, from_ns: int | None, cursor: str | None, order: str
    ) -> tuple[list[Call], str | None] | None:
        """One page, retried until it comes or the view changes (None then)."""
        client = self.podshark.client
        delay = RETRY_MIN
        while gen == self._gen:
            try:
                page = await client.calls(
                    self.podshark.filter_text,
                    from_ns=from_ns,
                    to_ns=to_ns,
                    limit=self.podshark.page_size,
                    cursor=cursor,
                    order=order,
                )
            except Unauthorized:
                self._set_state("unauthorized")
                self._first_page_done = True
                self._check_ready()
                await asyncio.sleep(RETRY_UNAUTHORIZED)
                continue
            except Unreachable as e:
                self._set_state("reconnecting", str(e))
                self._first_page_done = True
                self._check_ready()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except HubError as e:
                self.notify(str(e), title="history", severity="error")
                return [], None
            if gen == self._gen and self.status.state != "connected" and self._live_answered:
                self._set_state("connected")
            return page
        return None

    @work(group="older", exclusive=True)
    async def _older(self, before: Call | None, gen: int) -> None:
        to_ns = None
        if before is not None:
            start = start_ns(before)
            to_ns = None if start is None else start + 1
        cursor = None
        for _ in range(SKIP_PAGES):
            got = await self._page(gen, to_ns=to_ns, from_ns=None, cursor=cursor, order="desc")
            if got is None:
                return
            calls, cursor = got
            if cursor is not None and all(self.table.has(c.id) for c in calls):
                continue  # a page of rows already shown (live ones, or ties): look further
            break
        if gen != self._gen:
            return
        self.table.add_older(calls, cursor is not None)
        self._first_page_done = True
        self._check_ready()

    @work(group="newer", exclusive=True)
    async def _newer(self, after: Call, gen: int) -> None:
        from_ns = start_ns(after)
        cursor = None
        for _ in range(SKIP_PAGES):
            got = await self._page(gen, to_ns=None, from_ns=from_ns, cursor=cursor, order="asc")
            if got is None:
                return
            calls, cursor = got
            if cursor is not None and all(self.table.has(c.id) for c in calls):
                continue
            break
        if gen != self._gen:
            return
        self.table.add_newer(calls, cursor is None)

    @work(group="replay", exclusive=True)
    async def _replay(self, request: Any, filter_text: str, gen: int) -> None:
        client = self.podshark.client
        sent = 0
        self._live_answered = True
        self._first_page_done = True
        self._check_ready()
        try:
            async with _closing(
                client.replay(request.from_ns, request.to_ns, request.speed, filter_text)
            ) as events:
                async for event in events:
                    if gen != self._gen:
                        return
                    if isinstance(event, Calls):
                        sent += len(event.calls)
                        self.table.push_live(event.calls)
                        self._banner(request, f"   · {sent:,} calls")
                    elif isinstance(event, Progress):
                        at = f"   · at {format_time(event.position)}" if event.position else ""
                        paused = " (paused)" if event.paused else ""
                        self._banner(request, f"{at}{paused}   · {event.sent:,} calls")
                    elif isinstance(event, End):
                        self.replay_done = True
                        self._banner(request, f"   · finished: {event.calls:,} calls")
                    elif isinstance(event, StreamError):
                        self.notify(event.message, title="replay", severity="warning")
            self._set_state("connected")
        except HubError as e:
            if gen == self._gen:
                self._banner(request, f"   · failed: {e}")
                self.notify(str(e), title="replay", severity="error")

    def poll_alerts(self) -> None:
        """Ask the hub for the alerts now (unless an answer is still coming)."""
        if not any(w.group == "alerts-badge" and not w.is_finished for w in self.workers):
            self._poll_alerts()

    @work(group="alerts-badge", exclusive=True)
    async def _poll_alerts(self) -> None:
        try:
            alerts = await self.podshark.client.alerts()
        except HubError:
            return  # the status line already says why the hub cannot be asked; keep the last badge
        self.alert_polls += 1
        self.query_one(AlertBadge).show(alerts.firing, alerts.pending)
        self._announce(alerts)

    def _announce(self, alerts: Alerts) -> None:
        """Notify the events that are new since the last poll (none on the first: those are old)."""
        keys = {(e.rule, e.state, e.ts) for e in alerts.events}
        seen, latest = self._alert_events, self._alert_latest
        self._alert_events = keys
        self._alert_latest = max([latest, *(e.ts for e in alerts.events)])
        if seen is None:
            return
        new = [e for e in alerts.events if (e.rule, e.state, e.ts) not in seen and e.ts >= latest]
        for e in new[:ALERTS_NOTIFY_MAX]:
            firing = e.state == "firing"
            self.notify(
                f"{clean(e.rule)} {'is firing' if firing else 'resolved'} — ! shows the alerts",
                title="alert",
                severity="error" if firing else "information",
                markup=False,
            )
        if len(new) > ALERTS_NOTIFY_MAX:
            more = len(new) - ALERTS_NOTIFY_MAX
            self.notify(f"and {more:,} more alert events — ! shows them", title="alert")

    # ---- messages from the widgets

    @on(NeedOlder)
    def _need_older(self, message: NeedOlder) -> None:
        self._older(message.before, self._gen)

    @on(NeedNewer)
    def _need_newer(self, message: NeedNewer) -> None:
        self._newer(message.after, self._gen)

    @on(ReloadNewest)
    def _reload(self, message: ReloadNewest) -> None:
        self.go_live(history=True)

    @on(TableChanged)
    def _table_changed(self, message: TableChanged) -> None:
        status = self.status
        status.rows = message.rows
        status.new = message.new
        status.missed = message.missed
        status.following = message.following

    @on(OpenCall)
    def _open(self, message: OpenCall) -> None:
        try:
            from tui.screens.detail import DetailScreen
        except ImportError:
            self.notify("the detail view is not available in this build", severity="warning")
            return
        self.app.push_screen(DetailScreen(message.call.id, self.podshark.client, message.call))

    @on(FilterSubmitted)
    def _filter_submitted(self, message: FilterSubmitted) -> None:
        self.apply_filter(message.text)

    @on(FilterCancelled)
    def _filter_cancelled(self, message: FilterCancelled) -> None:
        self.table.focus()

    # ---- filters

    def apply_filter(self, text: str) -> None:
        """Make `text` (already parsed by the bar or built by a quick filter) the active filter
        and show the calls that match, stored ones too, from the newest (or replay the window
        again with it)."""
        app = self.podshark
        app.history.add(text)
        app.filter_text = text
        self.filter_bar.set_active(text)
        self.table.focus()
        if self.mode == "replay" and self.replay_request is not None:
            self.start_replay(self.replay_request)
        else:
            self.go_live(history=True)  # a filter is a question: answer it from the history too

    def _quick(self, build: Any, what: str) -> None:
        call = self.table.current_call
        if call is None:
            self.notify("select a call first (j/k or the mouse)", severity="warning")
            return
        extra = build(call)
        if extra is None:
            self.notify(f"the selected call has no {what}", severity="warning")
            return
        self.apply_filter(quick_filters.combine(self.podshark.filter_text, extra))

    # ---- actions

    def action_filter(self) -> None:
        self.filter_bar.edit()

    def action_quick_server(self) -> None:
        self._quick(quick_filters.same_server, "server")

    def action_quick_target(self) -> None:
        self._quick(quick_filters.same_target, "target")

    def action_quick_errors(self) -> None:
        self.apply_filter(quick_filters.combine(self.podshark.filter_text, quick_filters.errors_only()))

    def action_live(self) -> None:
        if self.mode == "replay":
            self.go_live()
        else:
            self.table.action_top()

    def action_replay(self) -> None:
        try:
            from tui.screens.replay import ReplayDialog
        except ImportError:
            self.notify("replay is not available in this build", severity="warning")
            return

        def chosen(request: Any) -> None:
            if request is not None:
                self.start_replay(request)

        dialog = ReplayDialog(now_ns=self.podshark.now_ns, client=self.podshark.client)
        self.app.push_screen(dialog, chosen)

    def action_export(self) -> None:
        try:
            from tui.screens.export import ExportScreen
        except ImportError:
            self.notify("export is not available in this build", severity="warning")
            return
        from_ns, to_ns = self._window()
        app = self.podshark
        self.app.push_screen(
            ExportScreen(app.client, app.filter_text, from_ns, to_ns, Path.cwd(), now_ns=app.now_ns)
        )

    def action_stats(self) -> None:
        try:
            from tui.screens.stats import StatsScreen
        except ImportError:
            self.notify("stats are not available in this build", severity="warning")
            return
        app = self.podshark
        self.app.push_screen(StatsScreen(app.client, app.filter_text, now_ns=app.now_ns))

    def action_map(self) -> None:
        try:
            from tui.screens.map import MapScreen, windows_for
        except ImportError:
            self.notify("the service map is not available in this build", severity="warning")
            return
        app = self.podshark
        request = self.replay_request if self.mode == "replay" else None
        replay = None if request is None else (request.from_ns, request.to_ns)
        windows = windows_for(whole_history=app.whole_history, replay=replay)

        def chosen(text: str | None) -> None:
            if text is not None:
                self.apply_filter(text)

        self.app.push_screen(MapScreen(app.client, app.filter_text, windows, now_ns=app.now_ns), chosen)

    def action_alerts(self) -> None:
        try:
            from tui.screens.alerts import AlertsScreen
        except ImportError:
            self.notify("the alerts view is not available in this build", severity="warning")
            return
        self.app.push_screen(AlertsScreen(self.podshark.client, now_ns=self.podshark.now_ns))
