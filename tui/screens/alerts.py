"""The alerts view (`!`): the hub's alert rules with their state now, and the recent firing and
resolved events, newest first, from `GET /api/v1/alerts`, every 3 seconds.

    rules    state (firing, pending, ok), name, measure, condition ("above 50", "3x baseline
             (min 5)"), the measure's value now and the threshold it is held to, how long the rule
             has been in its state, what it selects (the calls of its filter, or for the flow
             measures the map edges its globs match) and its description
    events   when, which rule, firing or resolved, value and threshold at that moment

The rules come from the YAML file the hub was started with (`podshark hub --alerts FILE`) and are
evaluated in the hub (hub/alerts.py); this screen only shows them. A hub without rules, or one
older than alerts (no such endpoint: 404), shows how to configure them instead of an error. Values
are written in the measure's unit (calls/s, %, ms, bytes/s).

Failures (hub down, token refused) are shown above the tables with the last answer kept below, and
the timer keeps asking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from tui.client import AlertEvent, AlertRule, Alerts, HubClient, HubError
from tui.format import MISSING, clean, format_latency, format_size, format_time
from tui.screens.stats import percent, rate, span
from tui.widgets.view_table import ViewTable

ALERTS_TCSS = "../alerts.tcss"
REFRESH_S = 3.0

RULE_COLUMNS = (
    "state",
    "rule",
    "measure",
    "condition",
    "value",
    "threshold",
    "since",
    "selects",
    "description",
)
EVENT_COLUMNS = ("time", "rule", "state", "value", "threshold")

STATE_STYLES = {"firing": "bold red", "pending": "bold yellow", "ok": "green", "resolved": "green"}
STATE_MARKS = {"firing": "●", "pending": "◐", "ok": "○", "resolved": "○"}

NO_RULES = "no alert rules are configured on this hub — start it with --alerts FILE (a YAML rules file)"
UNSUPPORTED = "this hub has no alerts (it is older than them) — upgrade the hub to evaluate alert rules"
NO_EVENTS = "no rule has fired yet"


# ---- formatting (pure, so tests can hold the screen to the API's numbers)


def format_measure(measure: str, value: float | None) -> str:
    """`value` in the unit of `measure`: `12.3/s`, `2.5%`, `40.2ms`, `1.2KiB/s`."""
    if value is None:
        return MISSING
    if measure == "error_rate":
        return percent(value)
    if measure.endswith("_latency_ms"):
        return format_latency(round(value * 1e6))
    if measure == "bytes_per_s":
        return f"{format_size(round(value))}/s"
    if measure.endswith("_per_s"):
        return rate(value)
    return f"{value:g}"


def state_text(state: str) -> Text:
    mark = STATE_MARKS.get(state, "?")
    return Text(f"{mark} {clean(state)}", style=STATE_STYLES.get(state, ""))


def since_text(since: int | None, now_ns: int) -> str:
    """How long the rule has been in its state: `for 3m12s`."""
    if since is None:
        return MISSING
    return f"for {span(max(now_ns - since, 0))}"


def selects_text(rule: AlertRule) -> Text:
    """What the rule measures: its filter's calls, or the edges its globs match (flow measures)."""
    if rule.edges:
        src, dst = (clean(rule.edges.get(k)) or "*" for k in ("src", "dst"))
        return Text(f"edges {src} → {dst}")
    return Text(clean(rule.filter) or "every call", style="" if rule.filter else "dim")


def rule_cells(rule: AlertRule, now_ns: int) -> tuple[Text, ...]:
    """The row of `rule`, in `RULE_COLUMNS` order."""
    return (
        state_text(rule.state),
        Text(clean(rule.name), style="bold"),
        Text(clean(rule.measure)),
        Text(clean(rule.condition) or MISSING),
        Text(format_measure(rule.measure, rule.value), justify="right"),
        Text(format_measure(rule.measure, rule.threshold), justify="right"),
        Text(since_text(rule.since, now_ns)),
        selects_text(rule),
        Text(clean(rule.description)),
    )


def event_cells(event: AlertEvent, measures: dict[str, str]) -> tuple[Text, ...]:
    """The row of `event`, in `EVENT_COLUMNS` order (values in its rule's unit, when the rule is
    still in the file)."""
    measure = measures.get(event.rule, "")
    return (
        Text(format_time(event.ts)),
        Text(clean(event.rule), style="bold"),
        state_text(event.state),
        Text(format_measure(measure, event.value), justify="right"),
        Text(format_measure(measure, event.threshold), justify="right"),
    )


def plain(cells: tuple[Text, ...]) -> tuple[str, ...]:
    return tuple(c.plain for c in cells)


def summary_text(alerts: Alerts) -> Text:
    out = Text()
    n = len(alerts.rules)
    out.append(f"{n:,} rule{'' if n == 1 else 's'}")
    if alerts.firing:
        out.append("   ")
        out.append(f"{alerts.firing:,} firing", style="bold red")
    if alerts.pending:
        out.append("   ")
        out.append(f"{alerts.pending:,} pending", style="bold yellow")
    if n and not alerts.firing and not alerts.pending:
        out.append("   all ok", style="green")
    return out


class AlertsScreen(Screen[None]):
    """The rules and the recent events, refreshed every few seconds."""

    CSS_PATH = ALERTS_TCSS
    BINDING_GROUP_TITLE = "Alerts"
    HELP = (
        "Rules come from the hub's rules file (podshark hub --alerts FILE) and are evaluated in the "
        "hub: a rule is pending while its condition holds, firing once it has held for its "
        "for-duration, and resolves (back to ok) when it no longer holds. Values are the rule's "
        "measure over its window, in its unit; the events below are the latest firing and resolved "
        "transitions, newest first. Tab moves between the two tables."
    )
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("r", "refresh_alerts", "Refresh"),
    ]

    def __init__(
        self,
        client: HubClient,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        interval: float = REFRESH_S,
    ) -> None:
        super().__init__()
        self.client = client
        self._now_ns = now_ns
        self._interval = interval
        self.alerts: Alerts | None = None  # the last answer shown
        self.shown_at = 0  # the clock when it was shown (the "since" column's now)
        self.error = ""  # why the last refresh failed ("" when it did not)
        self.refreshes = 0  # answers shown, for tests

    def compose(self) -> ComposeResult:
        with Vertical(id="alerts-head"):
            yield Static(Text("Alerts", style="bold"), id="alerts-title")
            yield Static("loading…", id="alerts-summary")
            yield Static("", id="alerts-error")
        yield Label("Rules", classes="alerts-section")
        yield Static("", id="alerts-rules-note", classes="alerts-note")
        yield ViewTable(id="alerts-rules")
        yield Label("Recent events (newest first)", classes="alerts-section")
        yield Static("", id="alerts-events-note", classes="alerts-note")
        yield ViewTable(id="alerts-events")
        yield Footer()

    @property
    def rules_table(self) -> ViewTable:
        return self.query_one("#alerts-rules", ViewTable)

    @property
    def events_table(self) -> ViewTable:
        return self.query_one("#alerts-events", ViewTable)

    def on_mount(self) -> None:
        self.query_one("#alerts-error", Static).display = False
        self.rules_table.add_columns(*RULE_COLUMNS)
        self.events_table.add_columns(*EVENT_COLUMNS)
        self.rules_table.focus()
        self.action_refresh_alerts()
        self.set_interval(self._interval, self.action_refresh_alerts)

    def action_back(self) -> None:
        self.dismiss(None)

    def action_refresh_alerts(self) -> None:
        fetching = any(w.node is self and w.group == "alerts" and not w.is_finished for w in self.workers)
        if not fetching:  # a slow answer is waited for, not cancelled by the next tick
            self._fetch()

    @work(exclusive=True, group="alerts")
    async def _fetch(self) -> None:
        try:
            alerts = await self.client.alerts()
        except HubError as e:
            self.error = str(e)
            line = self.query_one("#alerts-error", Static)
            line.update(Text(f"{e} — retrying every {self._interval:g} s", style="bold red"))
            line.display = True
            return
        self.error = ""
        self.query_one("#alerts-error", Static).display = False
        self.refreshes += 1
        self.show(alerts)

    def _note(self, which: str, text: str) -> None:
        note = self.query_one(f"#alerts-{which}-note", Static)
        note.update(text)
        note.display = bool(text)

    def show(self, alerts: Alerts) -> None:
        """Put one answer on screen (the cursors stay on their rows)."""
        self.alerts = alerts
        self.shown_at = now = self._now_ns()
        self.query_one("#alerts-summary", Static).update(
            summary_text(alerts) if alerts.supported else Text("not available on this hub", style="dim")
        )
        self._note("rules", "" if alerts.rules else (NO_RULES if alerts.supported else UNSUPPORTED))
        self._note("events", "" if alerts.events or not alerts.rules else NO_EVENTS)
        _fill(self.rules_table, [rule_cells(r, now) for r in alerts.rules])
        measures = {r.name: r.measure for r in alerts.rules}
        _fill(self.events_table, [event_cells(e, measures) for e in alerts.events])


def _fill(table: ViewTable, rows: list[tuple[Text, ...]]) -> None:
    row = table.cursor_row
    table.clear()
    for cells in rows:
        table.add_row(*cells)
    if rows:
        table.move_cursor(row=min(max(row, 0), len(rows) - 1), animate=False)
