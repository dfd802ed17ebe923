"""The stats screen (`s`): what the traffic looks like, from `GET /api/v1/stats`, every 2 seconds.

    totals            calls, rate, errors and error rate, latency percentiles
    per protocol      calls, rate, error rate, p50/p90/p99
    over time         a sparkline of calls per bucket for each protocol, and one of errors
    top workloads     the busiest servers and clients (name, namespace, calls, errors, p99)
    hub health        ingest counters, workers (connected, drops), live subscribers, store size

Every figure is the hub's (one grouped DuckDB query over the window, hub/stats.py); this screen
only formats it, so what it shows is what `podshark` scripts see through the same API. The window
is the whole stored history by default (the hub then uses the stored calls' own first and last
times, so an old capture opened with `podshark open` still has meaningful rates); `w` cycles
through the last 5 minutes, hour and day for a live hub. The current filter applies.

The refresh runs in a worker; a failed refresh keeps the last figures on screen under a message
saying why and that it keeps retrying, so a port-forward that drops for a moment costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Sparkline, Static

from dissect.filter import render_time
from tui.client import HubError
from tui.format import MISSING, format_latency, format_size

if TYPE_CHECKING:
    from tui.client import HubClient

DIALOGS_TCSS = "../dialogs.tcss"
REFRESH_S = 2.0
BUCKETS = 60
TOP = 10
# (label, how far back from now; None = everything stored)
WINDOWS: tuple[tuple[str, int | None], ...] = (
    ("all stored history", None),
    ("last 5 minutes", 5 * 60 * 10**9),
    ("last hour", 3600 * 10**9),
    ("last day", 86400 * 10**9),
)


# ---- formatting (pure, so tests can hold the screen to the API's numbers)


def count(n: int | None) -> str:
    return MISSING if n is None else f"{n:,}"


def rate(per_s: float | None) -> str:
    """Calls per second, or per minute, hour or day when that reads better: a capture spread
    over months has rates far below one a second, and `0.00/s` would hide them."""
    if per_s is None:
        return MISSING
    if per_s <= 0:
        return "0/s"
    unit, v = "d", per_s * 86400
    for name, scale in (("s", 1), ("min", 60), ("h", 3600)):
        if per_s * scale >= 1:
            unit, v = name, per_s * scale
            break
    if v >= 100:
        return f"{v:,.0f}/{unit}"
    if v >= 1:
        return f"{v:.1f}/{unit}"
    return f"{v:.2f}/d" if v >= 0.01 else "<0.01/d"


def span(ns: int) -> str:
    """A window's length: `15m`, `1h30m`, `5905d10h`; the two largest units."""
    if ns < 10**9:
        return format_latency(ns)
    out: list[str] = []
    rest = ns // 10**9
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, secs)
        if n or out:
            out.append(f"{n}{unit}")
        if len(out) == 2:
            break
    return "".join(part for part in out if not part.startswith("0")) or "0s"


def percent(ratio: float | None) -> str:
    return MISSING if ratio is None else f"{ratio * 100:.1f}%"


def bucket_rates(counts: list[int], bucket_ns: int | None) -> list[float]:
    """Calls per bucket as calls per second (the sparkline's shape is the same; the peak label
    is in a unit people compare)."""
    secs = (bucket_ns or 10**9) / 1e9
    return [n / secs for n in counts]


PROTOCOL_COLUMNS = ("protocol", "calls", "rate", "errors", "error rate", "p50", "p90", "p99", "max")
TOP_COLUMNS = ("name", "namespace", "calls", "errors", "p99")


def protocol_row(p: dict[str, Any]) -> tuple[str, ...]:
    lat = p.get("latency") or {}
    return (
        str(p.get("protocol", "")),
        count(p.get("calls")),
        rate(p.get("rate")),
        count(p.get("errors")),
        percent(p.get("error_rate")),
        format_latency(lat.get("p50")),
        format_latency(lat.get("p90")),
        format_latency(lat.get("p99")),
        format_latency(lat.get("max")),
    )


def top_row(t: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(t.get("name") or MISSING),
        str(t.get("namespace") or MISSING),
        count(t.get("calls")),
        count(t.get("errors")),
        format_latency(t.get("p99")),
    )


def totals_text(total: dict[str, Any]) -> Text:
    lat = total.get("latency") or {}
    out = Text()
    out.append("calls ", style="dim")
    out.append(count(total.get("calls")), style="bold")
    out.append("   rate ", style="dim")
    out.append(rate(total.get("rate")), style="bold")
    out.append("   errors ", style="dim")
    errors = total.get("errors") or 0
    out.append(count(errors), style="bold red" if errors else "bold")
    out.append(f" ({percent(total.get('error_rate'))})")
    for q in ("p50", "p90", "p99", "max"):
        out.append(f"   {q} ", style="dim")
        out.append(format_latency(lat.get(q)), style="bold")
    classes = total.get("status") or {}
    if classes:
        out.append("\nstatus ", style="dim")
        out.append("  ".join(f"{k} {count(v)}" for k, v in sorted(classes.items())))
    return out


def health_text(stats: dict[str, Any]) -> Text:
    out = Text()
    ingest = stats.get("ingest") or {}
    if ingest:
        out.append("ingest ", style="dim")
        out.append(
            f"{count(ingest.get('calls_stored'))} calls stored of {count(ingest.get('calls_received'))} "
            f"received, {count(ingest.get('calls_rejected'))} rejected; "
            f"{count(ingest.get('packets_stored'))} frames stored; {count(ingest.get('commits'))} commits, "
            f"{count(ingest.get('commit_errors'))} failed; queue {count(ingest.get('queue_batches'))}\n"
        )
    workers = stats.get("workers") or []
    out.append("workers ", style="dim")
    if not workers:
        out.append("none connected yet")
    for i, w in enumerate(workers):
        if i:
            out.append(", ")
        out.append(str(w.get("name", "?")), style="bold")
        connected = bool(w.get("connected"))
        out.append(" connected" if connected else " disconnected", style="green" if connected else "yellow")
        drops = w.get("drops")
        if isinstance(drops, dict):
            lost = sum(v for v in drops.values() if isinstance(v, int))
        else:
            lost = drops if isinstance(drops, int) else 0
        out.append(f" drops {count(lost)}", style="red" if lost else "")
    live = stats.get("live")
    if isinstance(live, dict):
        out.append("\nlive ", style="dim")
        out.append(f"{count(live.get('subscribers'))} subscribers, {count(live.get('missed'))} calls missed")
    store = stats.get("store") or {}
    if store:
        out.append("\nstore ", style="dim")
        out.append(f"{format_size(store.get('bytes'))} in {_plural(store.get('partitions'), 'partition')}")
    return out


def _plural(n: int | None, noun: str) -> str:
    return f"{count(n)} {noun}" + ("" if n == 1 else "s")


def window_text(window: dict[str, Any], label: str) -> str:
    lo, hi = window.get("from"), window.get("to")
    if not isinstance(lo, int) or not isinstance(hi, int):
        return f"{label}: no calls"
    return f"{label}: {render_time(lo)} – {render_time(hi)} ({span(max(hi - lo, 1))})"


class StatsScreen(Screen[None]):
    """Figures of the hub's stats endpoint for the current filter, refreshed every 2 s."""

    CSS_PATH = DIALOGS_TCSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("q", "back", "Back", show=False),
        Binding("r", "refresh_stats", "Refresh"),
        Binding("w", "next_window", "Window"),
    ]

    def __init__(
        self,
        client: HubClient,
        filter_text: str,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        interval: float = REFRESH_S,
    ) -> None:
        super().__init__()
        self.client = client
        self.filter_text = filter_text
        self._now_ns = now_ns
        self._interval = interval
        self.window_index = 0
        self.stats: dict[str, Any] | None = None  # the last answer shown
        self.error = ""  # why the last refresh failed ("" when it did not)
        self.refreshes = 0  # answers received, for tests and the status line
        self.sparkline_names: list[str] = []  # the rows of sparklines shown, protocols then "errors"

    # ---- layout

    def compose(self) -> ComposeResult:
        with Vertical(id="stats-head"):
            yield Static(self._title(), id="stats-title")
            yield Static("", id="stats-window")
            yield Static("loading…", id="stats-error")
        with VerticalScroll(id="stats-body"):
            yield Static("", id="stats-totals")
            yield DataTable(id="stats-protocols", cursor_type="none", zebra_stripes=True)
            yield Label("Calls over time", id="stats-series-title", classes="stats-section")
            yield Vertical(id="stats-sparklines")
            with Horizontal(id="stats-tops"):
                with Vertical(classes="stats-top"):
                    yield Label("Top servers", classes="stats-section")
                    yield DataTable(id="stats-servers", cursor_type="none", zebra_stripes=True)
                with Vertical(classes="stats-top"):
                    yield Label("Top clients", classes="stats-section")
                    yield DataTable(id="stats-clients", cursor_type="none", zebra_stripes=True)
            yield Label("Hub", classes="stats-section")
            yield Static("", id="stats-health")
        yield Footer()

    def _title(self) -> Text:
        out = Text("Stats", style="bold")
        out.append("   filter ", style="dim")
        out.append(self.filter_text or "none (every call)")
        return out

    def on_mount(self) -> None:
        self.query_one("#stats-protocols", DataTable).add_columns(*PROTOCOL_COLUMNS)
        for table in ("#stats-servers", "#stats-clients"):
            self.query_one(table, DataTable).add_columns(*TOP_COLUMNS)
        self.action_refresh_stats()
        self.set_interval(self._interval, self.action_refresh_stats)

    # ---- actions

    def action_back(self) -> None:
        self.dismiss(None)

    def action_refresh_stats(self) -> None:
        fetching = any(w.node is self and w.group == "stats" and not w.is_finished for w in self.workers)
        if not fetching:  # a slow answer is waited for, not cancelled by the next tick
            self._fetch()

    def action_next_window(self) -> None:
        self.window_index = (self.window_index + 1) % len(WINDOWS)
        self._fetch()  # exclusive: replaces a fetch of the previous window

    @property
    def window_label(self) -> str:
        return WINDOWS[self.window_index][0]

    # ---- fetching

    @work(exclusive=True, group="stats")
    async def _fetch(self) -> None:
        back = WINDOWS[self.window_index][1]
        from_ns = None if back is None else self._now_ns() - back
        try:
            stats = await self.client.stats(self.filter_text, from_ns=from_ns, buckets=BUCKETS, top=TOP)
        except HubError as e:
            self.error = str(e)
            self.query_one("#stats-error", Static).update(
                Text(f"{e} — retrying every {self._interval:g} s", style="bold red")
            )
            self.query_one("#stats-error", Static).display = True
            return
        self.error = ""
        self.refreshes += 1
        self.query_one("#stats-error", Static).display = False
        await self.show(stats)

    async def show(self, stats: dict[str, Any]) -> None:
        """Put one stats answer on screen."""
        self.stats = stats
        window = window_text(stats.get("window") or {}, self.window_label)
        self.query_one("#stats-window", Static).update(window)
        self.query_one("#stats-totals", Static).update(totals_text(stats.get("total") or {}))
        protocols = self.query_one("#stats-protocols", DataTable)
        protocols.clear()
        for p in stats.get("protocols") or []:
            protocols.add_row(*protocol_row(p), key=str(p.get("protocol")))
        for table_id, key in (("#stats-servers", "top_servers"), ("#stats-clients", "top_clients")):
            table = self.query_one(table_id, DataTable)
            table.clear()
            for t in stats.get(key) or []:
                table.add_row(*top_row(t))
        await self._sparklines(stats.get("series") or {})
        self.query_one("#stats-health", Static).update(health_text(stats))

    async def _sparklines(self, series: dict[str, Any]) -> None:
        """One row per protocol (in the per-protocol table's order) and one for errors; rows are
        rebuilt only when the set of protocols changes, otherwise their data is replaced."""
        bucket_ns = series.get("bucket_ns")
        title = "Calls over time"
        if isinstance(bucket_ns, int):
            n = len(series.get("errors") or [])
            title += f" · {n} buckets of {span(bucket_ns)} · peak = the busiest bucket's rate"
        self.query_one("#stats-series-title", Label).update(title)
        rows: list[tuple[str, list[int]]] = [(p, list(v)) for p, v in (series.get("protocols") or {}).items()]
        rows.append(("errors", list(series.get("errors") or [])))
        box = self.query_one("#stats-sparklines", Vertical)
        names = [name for name, _ in rows]
        if names != self.sparkline_names:
            await box.remove_children()
            await box.mount_all(
                Horizontal(
                    Label(name, classes="spark-name"),
                    Sparkline([], id=f"spark-line-{i}", classes="-errors" if name == "errors" else ""),
                    Label("", id=f"spark-peak-{i}", classes="spark-peak"),
                    classes="spark-row",
                )
                for i, name in enumerate(names)
            )
            self.sparkline_names = names
        for i, (_, counts) in enumerate(rows):
            rates = bucket_rates(counts, bucket_ns)
            self.query_one(f"#spark-line-{i}", Sparkline).data = rates
            peak = max(rates, default=0.0)
            self.query_one(f"#spark-peak-{i}", Label).update(f"peak {rate(peak)}  total {count(sum(counts))}")
