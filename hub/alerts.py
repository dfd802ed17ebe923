"""Alerts: the rules of `podshark hub --alerts FILE` (`hub/alert_rules.py`), evaluated in the hub.

Every `evaluate_every` (10 s) the hub computes each rule's measure over its window and compares it
with the rule's threshold — fixed (`above`) or `factor` times the rolling baseline — and moves the
rule through a small state machine, written as a table (`TRANSITIONS`):

    ok --condition true--> pending --held for `for`--> firing --condition false--> ok ("resolved")
    (with `for: 0s`, ok goes to firing at once; pending goes back to ok silently)

A change to firing, and back, is an *event*: kept in `alerts.duckdb` in the hub's db directory (the
newest `MAX_EVENTS_KEPT`), shown by `GET /api/v1/alerts` and the TUI, counted in `/metrics`, and
POSTed to the webhook if the rules file names one. The state of pending and firing rules is kept
there too, so a restarted hub neither fires a firing rule again nor forgets to resolve it; a rule
that was firing and is gone from the file after a restart is resolved (value null), so a receiver
that opened an incident sees it closed.

Measures (`Measurer`):

- call measures (calls/s, errors/s, error rate, p50/p99 latency) from the stored calls whose start
  time is in [now - window, now) and that match the rule's filter: the same filter compiler as the
  API (`hub/filter_sql.py`), the same error definition (`dissect.filter.ERRORS`), exact
  percentiles (`quantile_disc`). Calls reach the store a second or two after they happen (worker
  batching, the hub's writer), so the newest seconds of a window are still filling.
- flow measures (bytes/s, packets/s, connections opened/s) from the per-minute aggregates
  (`hub/aggregates.py`) of the edges the rule's globs select. The aggregates count whole minutes:
  the window is the minutes that overlap [now - window, now), and the rate is their sum over the
  time they cover (from the first minute's start to now), so it is a true average, over up to a
  minute more than the window.

The baseline is the same measure over the `over` period before the window (rates: the sum over
the span; error rate and latency: over the calls of the span). History is what the hub has seen:
the span starts no earlier than when alerts were first evaluated in this db directory (kept in the
file), so a hub started an hour ago compares with that hour, not with an hour spread over a day.
Until a second of history exists the baseline is unknown and `min` stands in for it. A baseline
changes slowly, so it is computed again only every hundredth of its span (at least every
evaluation, at most every 15 minutes): a 24 h baseline over millions of calls is not a query every
10 s.

Never blocking the event loop: evaluation (queries and the file) runs in an executor thread; the
webhook sender is its own task, with a bounded queue (the oldest event is dropped and counted when
it is full), retries with exponential backoff (1 s, 2 s, 4 s, ... at most 60 s) and a timeout per
attempt; a slow or dead receiver delays only its own queue. Delivery is at least once: an event
not yet delivered when the hub stops is sent again when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
from aiohttp import web

from dissect.filter import ERRORS, parse
from hub import filter_sql
from hub.aggregates import Aggregates, EdgeRow
from hub.alert_rules import Rule, RulesFile, WebhookConfig
from hub.metrics import Exposition
from hub.store import TS_SQL, Store

log = logging.getLogger("podshark.hub.alerts")

__all__ = [
    "ALERTS_KEY",
    "API_EVENTS",
    "FILE_NAME",
    "TRANSITIONS",
    "AlertEngine",
    "AlertEvent",
    "AlertLog",
    "AlertsError",
    "Measurer",
    "Reading",
    "RuleStatus",
    "WebhookSender",
    "add_routes",
    "step",
]

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
FILE_NAME = "alerts.duckdb"
LAYOUT = 1
MAX_EVENTS_KEPT = 10_000  # rows of the events table; the oldest go first
API_EVENTS = 200  # events the API answers with, newest first
QUEUE_MAX = 1000  # webhook events waiting; past it the oldest is dropped (and counted)
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
BASELINE_REFRESH_MAX_NS = 15 * MINUTE
MIN_HISTORY_NS = SECOND  # less history than this: the baseline is unknown (`min` stands in)

STATES = ("ok", "pending", "firing")

#: (state, condition holds, held at least `for`) -> (next state, event or None). "Held" is only ever
#: true with the condition; an unknown condition (the query failed) is no transition at all.
TRANSITIONS: dict[tuple[str, bool, bool], tuple[str, str | None]] = {
    ("ok", False, False): ("ok", None),
    ("ok", True, False): ("pending", None),
    ("ok", True, True): ("firing", "firing"),  # `for: 0s`
    ("pending", False, False): ("ok", None),
    ("pending", True, False): ("pending", None),
    ("pending", True, True): ("firing", "firing"),
    ("firing", False, False): ("ok", "resolved"),
    ("firing", True, False): ("firing", None),
    ("firing", True, True): ("firing", None),
}

_ERRORS_SQL, _ERRORS_PARAMS = filter_sql.compile(parse(ERRORS))


class AlertsError(Exception):
    """The alerts file cannot be used (locked by another hub, another layout, damaged)."""


@dataclass(frozen=True, slots=True)
class RuleStatus:
    """Where a rule is. `since`: when the current state began — for pending and firing, when the
    condition started to hold (the episode's start); None before the first evaluation."""

    state: str = "ok"
    since: int | None = None
    value: float | None = None
    threshold: float | None = None
    evaluated_ts: int | None = None
    error: str | None = None  # why the last evaluation had no answer


@dataclass(frozen=True, slots=True)
class AlertEvent:
    id: int
    rule: str
    state: str  # "firing" | "resolved"
    ts: int
    value: float | None
    threshold: float | None
    measure: str
    filter: str
    since: int | None  # when the condition started to hold (resolved: the episode's start)
    description: str
    edges: dict[str, str] | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "state": self.state,
            "ts": self.ts,
            "value": self.value,
            "threshold": self.threshold,
        }

    def to_webhook(self, hub: str) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "state": self.state,
            "value": self.value,
            "threshold": self.threshold,
            "measure": self.measure,
            "filter": self.filter,
            "edges": self.edges,
            "since": self.since,
            "ts": self.ts,
            "description": self.description,
            "hub": hub,
        }


def step(
    status: RuleStatus, condition: bool | None, now_ns: int, for_ns: int
) -> tuple[RuleStatus, str | None]:
    """One evaluation's transition (see `TRANSITIONS`): the new status (value and threshold are the
    caller's to fill) and the event it makes, if any. `condition` None: no answer, no change."""
    if condition is None:
        return status, None
    start = status.since if status.state in ("pending", "firing") and status.since is not None else now_ns
    held = condition and now_ns - start >= for_ns
    state, event = TRANSITIONS[(status.state, condition, held)]
    if state == status.state and status.since is not None:
        since = status.since
    elif state == "ok":
        since = now_ns
    else:  # entering pending or firing: the episode started when the condition began to hold
        since = start if status.state == "pending" else now_ns
    return replace(status, state=state, since=since), event


# ---- measures


@dataclass(frozen=True, slots=True)
class Reading:
    """One rule's evaluation: the measure over the window, its baseline (baseline rules with
    enough history), the threshold in force; `error` when the measure could not be computed."""

    value: float | None
    threshold: float | None
    baseline: float | None = None
    error: str | None = None

    @property
    def condition(self) -> bool | None:
        if self.error is not None:
            return None
        return self.value is not None and self.threshold is not None and self.value > self.threshold


@dataclass(slots=True)
class _Cached:
    at_ns: int
    value: float | None


def _finite(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None


class Measurer:
    """Computes rules' measures from the calls store and the aggregates (in executor threads)."""

    def __init__(self, store: Store, aggregates: Aggregates | None, history_start_ns: int) -> None:
        self.store = store
        self.aggregates = aggregates
        self.history_start_ns = history_start_ns
        self._baselines: dict[Rule, _Cached] = {}  # by the whole rule: a changed rule starts anew

    def read(self, rule: Rule, now_ns: int) -> Reading:
        """The rule's value and threshold at `now_ns`."""
        if rule.flow:  # whole minutes: from the start of the one (now - window) falls in
            lo = (now_ns - rule.window_ns) // MINUTE * MINUTE
            value = self.flow_value(rule, lo, now_ns)
        else:
            lo = now_ns - rule.window_ns
            value = self.call_value(rule, lo, now_ns, now_ns)
        baseline = self._baseline(rule, lo, now_ns) if rule.baseline is not None else None
        return Reading(_finite(value), rule.threshold(baseline), _finite(baseline))

    def _baseline(self, rule: Rule, hi: int, now_ns: int) -> float | None:
        """The measure over [max(hi - over, history start), hi): None with under a second of it.
        Kept for a hundredth of that span (at most `BASELINE_REFRESH_MAX_NS`)."""
        assert rule.baseline is not None
        lo = max(hi - rule.baseline.over_ns, self.history_start_ns)
        span = hi - lo
        if span < MIN_HISTORY_NS:
            self._baselines.pop(rule, None)
            return None
        cached = self._baselines.get(rule)
        refresh = min(span // 100, BASELINE_REFRESH_MAX_NS)
        if cached is not None and 0 <= now_ns - cached.at_ns < refresh:
            return cached.value
        value = self.flow_value(rule, lo, hi) if rule.flow else self.call_value(rule, lo, hi, now_ns)
        self._baselines[rule] = _Cached(now_ns, value)
        return value

    # -- calls

    def call_value(self, rule: Rule, lo: int, hi: int, now_ns: int) -> float | None:
        """A call measure over the calls starting in [lo, hi) that match the rule's filter (parsed
        again at `now_ns`, so a relative time in it moves with the clock)."""
        seconds = (hi - lo) / SECOND
        if seconds <= 0:
            return None
        where, params = filter_sql.compile(parse(rule.filter, now_ns=now_ns))
        latency = rule.measure in ("p50_latency_ms", "p99_latency_ms")
        select = f"count(*), count(*) FILTER (WHERE {_ERRORS_SQL})"
        if latency:
            select += ", quantile_disc(latency_ns, [0.5, 0.99]) FILTER (WHERE latency_ns >= 0)"
        cond = f"({where}) AND " if where.strip() else ""

        def run(con: duckdb.DuckDBPyConnection, calls: str) -> tuple[Any, ...] | None:
            return con.execute(
                f"SELECT {select} FROM {calls} AS c WHERE {cond}{TS_SQL} >= ? AND {TS_SQL} < ?",
                [*_ERRORS_PARAMS, *params, lo, hi],
            ).fetchone()

        row = self.store.read(run)
        n, errors = (int(row[0]), int(row[1])) if row is not None else (0, 0)
        if rule.measure == "calls_per_s":
            return n / seconds
        if rule.measure == "errors_per_s":
            return errors / seconds
        if rule.measure == "error_rate":
            return errors / n if n else None
        qs = row[2] if row is not None and latency else None
        if not qs:
            return None
        return float(qs[0 if rule.measure == "p50_latency_ms" else 1]) / 1e6

    # -- flows

    def flow_value(self, rule: Rule, lo: int, hi: int) -> float | None:
        """A flow measure: the selected edges' sum over the minutes overlapping [lo, hi), per second
        of that span (`lo` is a minute's start for the window; the history's start for a baseline)."""
        if self.aggregates is None or hi <= lo:
            return None
        selector = rule.edges
        total = 0
        for e in self.aggregates.edges(lo, hi):
            if selector is None or selector.matches(e.src.id, e.dst.id):
                total += _flow_amount(rule.measure, e)
        return total / ((hi - lo) / SECOND)


def _flow_amount(measure: str, e: EdgeRow) -> int:
    if measure == "bytes_per_s":
        return e.bytes[0] + e.bytes[1]
    if measure == "packets_per_s":
        return e.packets[0] + e.packets[1]
    return e.opened  # connections_per_s


# ---- the file: events, rule states, when history starts


_EVENT_COLUMNS = (
    "id",
    "ts",
    "rule",
    "state",
    "value",
    "threshold",
    "measure",
    "filter",
    "since",
    "description",
    "edges_src",
    "edges_dst",
    "webhook",
)

_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
)


class AlertLog:
    """`alerts.duckdb`: every event (the newest `MAX_EVENTS_KEPT`), the pending and firing rules'
    states, and when alerts were first evaluated here. One connection, one lock: the evaluation
    thread and the webhook's marks share it; every write is a committed transaction."""

    def __init__(self, path: Path, max_events: int = MAX_EVENTS_KEPT) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = duckdb.connect(str(self.path))
        except duckdb.Error as e:
            raise AlertsError(
                f"cannot open the alerts file {self.path}: {e}. If another hub uses this --db directory, "
                "stop it; if the file is damaged, move it away (only alert history and states are in it)"
            ) from e
        try:
            self._db.execute("SET autoinstall_known_extensions = false")
            self._db.execute("SET autoload_known_extensions = false")
            self._setup()
        except duckdb.Error as e:
            self._db.close()
            raise AlertsError(
                f"the alerts file {self.path} cannot be read: {e}. Move it away (only alert history and "
                "states are in it) and the hub starts a new one"
            ) from e
        except Exception:
            self._db.close()
            raise
        row = self._db.execute("SELECT max(id) FROM events").fetchone()
        self._next_id = int(row[0]) + 1 if row and row[0] is not None else 1
        self._closed = False

    def _setup(self) -> None:
        con = self._db
        con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL)")
        rows = con.execute("SELECT value FROM meta WHERE key = 'layout'").fetchall()
        if rows and rows[0][0] != str(LAYOUT):
            raise AlertsError(
                f"{self.path} has alerts layout {rows[0][0]}, this podshark writes {LAYOUT}: move the file "
                "away to start a new one (only alert history and states are in it)"
            )
        con.execute("BEGIN")
        if not rows:
            con.execute("INSERT INTO meta VALUES ('layout', ?)", [str(LAYOUT)])
        con.execute(
            "CREATE TABLE IF NOT EXISTS events (id BIGINT NOT NULL, ts BIGINT NOT NULL, "
            "rule VARCHAR NOT NULL, state VARCHAR NOT NULL, value DOUBLE, threshold DOUBLE, "
            "measure VARCHAR NOT NULL, "
            "filter VARCHAR NOT NULL, since BIGINT, description VARCHAR NOT NULL, edges_src VARCHAR, "
            "edges_dst VARCHAR, webhook VARCHAR)"
        )
        con.execute(
            "CREATE TABLE IF NOT EXISTS states (rule VARCHAR NOT NULL, state VARCHAR NOT NULL, since BIGINT, "
            "value DOUBLE, threshold DOUBLE, measure VARCHAR NOT NULL, filter VARCHAR NOT NULL, "
            "description VARCHAR NOT NULL, edges_src VARCHAR, edges_dst VARCHAR)"
        )
        con.execute("COMMIT")

    def history_start(self, now_ns: int) -> int:
        """When alerts were first evaluated with this file (recorded now if never)."""
        with self._lock:
            rows = self._db.execute("SELECT value FROM meta WHERE key = 'history_start'").fetchall()
            if rows:
                with contextlib.suppress(ValueError):
                    return int(rows[0][0])
                self._db.execute("DELETE FROM meta WHERE key = 'history_start'")
            self._db.execute("INSERT INTO meta VALUES ('history_start', ?)", [str(now_ns)])
            return now_ns

    def states(self) -> dict[str, tuple[RuleStatus, AlertEvent]]:
        """The kept states by rule, each with what describes its rule (for resolving a rule that
        is gone from the file)."""
        out: dict[str, tuple[RuleStatus, AlertEvent]] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT rule, state, since, value, threshold, measure, filter, description, edges_src, "
                "edges_dst FROM states"
            ).fetchall()
        for rule, state, since, value, threshold, measure, flt, description, esrc, edst in rows:
            if state not in STATES:
                continue
            status = RuleStatus(state=state, since=since, value=value, threshold=threshold)
            edges = {"src": esrc, "dst": edst} if esrc is not None and edst is not None else None
            out[rule] = (
                status,
                AlertEvent(0, rule, state, 0, value, threshold, measure, flt, since, description, edges),
            )
        return out

    def commit(
        self,
        states: Sequence[tuple[Rule | AlertEvent, RuleStatus]],
        events: Sequence[AlertEvent],
        webhook: bool,
    ) -> None:
        """Save changed states (ok ones are deleted) and new events in one transaction."""
        if not states and not events:
            return
        with self._lock:
            self._check_open()
            con = self._db
            con.execute("BEGIN")
            try:
                for what, status in states:
                    name = what.name if isinstance(what, Rule) else what.rule
                    con.execute("DELETE FROM states WHERE rule = ?", [name])
                    if status.state == "ok":
                        continue
                    if isinstance(what, Rule):
                        measure, flt, description = what.measure, what.filter, what.description
                        edges = what.edges.to_dict() if what.edges is not None else None
                    else:
                        measure, flt, description, edges = (
                            what.measure,
                            what.filter,
                            what.description,
                            what.edges,
                        )
                    con.execute(
                        "INSERT INTO states VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            name,
                            status.state,
                            status.since,
                            status.value,
                            status.threshold,
                            measure,
                            flt,
                            description,
                            edges["src"] if edges else None,
                            edges["dst"] if edges else None,
                        ],
                    )
                for ev in events:
                    con.execute(
                        _INSERT_EVENT,
                        [
                            ev.id,
                            ev.ts,
                            ev.rule,
                            ev.state,
                            ev.value,
                            ev.threshold,
                            ev.measure,
                            ev.filter,
                            ev.since,
                            ev.description,
                            ev.edges["src"] if ev.edges else None,
                            ev.edges["dst"] if ev.edges else None,
                            "pending" if webhook else None,
                        ],
                    )
                if events:
                    con.execute("DELETE FROM events WHERE id <= ?", [self._next_id - 1 - self.max_events])
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise

    def new_id(self) -> int:
        with self._lock:
            n = self._next_id
            self._next_id += 1
            return n

    def recent(self, limit: int) -> list[AlertEvent]:
        """The newest events, newest first."""
        return self._events("TRUE ORDER BY id DESC LIMIT ?", [limit])

    def unsent(self, limit: int) -> list[AlertEvent]:
        """Events the webhook has not delivered yet, oldest first (the newest `limit`)."""
        newest = self._events("webhook = 'pending' ORDER BY id DESC LIMIT ?", [limit])
        return newest[::-1]

    def _events(self, where: str, params: list[object]) -> list[AlertEvent]:
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                f"SELECT id, rule, state, ts, value, threshold, measure, filter, since, description, "
                f"edges_src, edges_dst FROM events WHERE {where}",
                params,
            ).fetchall()
        return [
            AlertEvent(
                int(i),
                rule,
                state,
                int(ts),
                value,
                threshold,
                measure,
                flt,
                since,
                description,
                {"src": esrc, "dst": edst} if esrc is not None and edst is not None else None,
            )
            for i, rule, state, ts, value, threshold, measure, flt, since, description, esrc, edst in rows
        ]

    def mark(self, marks: Sequence[tuple[int, str]]) -> None:
        """Record what became of events' webhook deliveries ("sent", "failed", "dropped")."""
        if not marks:
            return
        with self._lock:
            if self._closed:
                return
            self._db.execute("BEGIN")
            try:
                for event_id, outcome in marks:
                    self._db.execute("UPDATE events SET webhook = ? WHERE id = ?", [outcome, event_id])
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(duckdb.Error):
                self._db.execute("CHECKPOINT")
            self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise AlertsError("the alerts file is closed")


# ---- the webhook


@dataclass
class WebhookStats:
    sent: int = 0  # events delivered (a 2xx answer)
    attempts: int = 0  # POSTs made
    retries: int = 0  # attempts after an event's first
    failed: int = 0  # events given up on after every retry
    dropped: int = 0  # events dropped from a full queue (the oldest first)


class WebhookSender:
    """POSTs events as JSON, one at a time in order, from its own task (`run`). `enqueue` never
    blocks: past `queue_max` waiting events the oldest is dropped and counted. An event is retried
    `retries` times after its first attempt, waiting `backoff_base_s` * 2^k (at most
    `backoff_max_s`) between attempts; anything but a 2xx answer in `timeout` is a failure."""

    def __init__(
        self,
        config: WebhookConfig,
        hub: str,
        *,
        on_outcome: Callable[[Sequence[tuple[int, str]]], None] | None = None,
        queue_max: int = QUEUE_MAX,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.config = config
        self.hub = hub
        self.queue_max = max(1, queue_max)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stats = WebhookStats()
        self._queue: deque[AlertEvent] = deque()
        self._wake = asyncio.Event()
        self._outcomes: list[tuple[int, str]] = []
        self._on_outcome = on_outcome
        self._saving: asyncio.Future[None] | None = None
        self._full = False

    def __len__(self) -> int:
        return len(self._queue)

    def enqueue(self, event: AlertEvent) -> None:
        """Queue an event (on the event loop)."""
        if len(self._queue) >= self.queue_max:
            old = self._queue.popleft()
            self.stats.dropped += 1
            self._outcomes.append((old.id, "dropped"))
            if not self._full:  # once per spell of a full queue, not once per event
                self._full = True
                log.warning(
                    "alerts: the webhook queue is full (%d events): dropping the oldest (first %s %s); "
                    "the receiver at %s is too slow or down (podshark_alert_webhook_dropped_total counts)",
                    self.queue_max,
                    old.rule,
                    old.state,
                    self.config.url,
                )
        elif len(self._queue) < self.queue_max // 2:
            self._full = False
        self._queue.append(event)
        self._wake.set()

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (0 = the first)."""
        return float(min(self.backoff_base_s * (2 ** min(attempt, 62)), self.backoff_max_s))

    async def run(self) -> None:
        """Deliver until cancelled. An event cut off mid-delivery stays undelivered in the file and
        is sent again at the next start (at least once); outcomes already known are recorded
        before this returns."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_ns / SECOND)
        headers = {"User-Agent": "podshark-hub", **self.config.headers}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            try:
                while True:
                    await self._save_outcomes()
                    if not self._queue:
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                    event = self._queue.popleft()
                    outcome = await self._deliver(session, event)
                    self._outcomes.append((event.id, outcome))
            finally:
                # cancelled: let a save in flight finish, then save the rest, so the file is
                # right before the engine closes it
                if self._saving is not None and not self._saving.done():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._saving)
                with contextlib.suppress(Exception):
                    await self._save_outcomes()

    async def _save_outcomes(self) -> None:
        if not self._outcomes:
            return
        marks, self._outcomes = self._outcomes, []
        if self._on_outcome is None:
            return
        self._saving = asyncio.get_running_loop().run_in_executor(None, self._on_outcome, marks)
        try:
            await asyncio.shield(self._saving)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("alerts: could not record webhook outcomes (those events may be sent again)")

    async def _deliver(self, session: aiohttp.ClientSession, event: AlertEvent) -> str:
        body = event.to_webhook(self.hub)
        problem = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                self.stats.retries += 1
            self.stats.attempts += 1
            try:
                async with session.post(self.config.url, json=body) as r:
                    if 200 <= r.status < 300:
                        self.stats.sent += 1
                        return "sent"
                    # the start of the answer says why (a bad token, a wrong path); never all of it
                    said = (await r.content.read(200)).decode("utf-8", "replace")
                    said = " ".join(said.split())
                    problem = f"HTTP {r.status} {r.reason or ''}".strip() + (f": {said}" if said else "")
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if attempt == 0:
                log.warning(
                    "alerts: webhook %s did not take %s %s (%s); retrying up to %d times",
                    self.config.url,
                    event.rule,
                    event.state,
                    problem,
                    self.config.retries,
                )
            if attempt < self.config.retries:
                await asyncio.sleep(self.backoff_s(attempt))
        self.stats.failed += 1
        log.error(
            "alerts: gave up on webhook %s for %s %s after %d attempts (last: %s); the event is still in "
            "GET /api/v1/alerts. Check that the receiver is up and accepts the hub's POSTs",
            self.config.url,
            event.rule,
            event.state,
            self.config.retries + 1,
            problem,
        )
        return "failed"


# ---- the engine


@dataclass
class _Counters:
    events: dict[str, int] = field(default_factory=lambda: {"firing": 0, "resolved": 0})
    evaluations: int = 0
    evaluation_errors: int = 0
    evaluation_seconds: float = 0.0


class AlertEngine:
    """The rules, their states and events, the timer and the webhook of one hub."""

    def __init__(
        self,
        rules: RulesFile,
        db_dir: Path,
        store: Store,
        aggregates: Aggregates | None,
        *,
        clock: Callable[[], int] = time.time_ns,
        hub_name: str | None = None,
        queue_max: int = QUEUE_MAX,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        self.rules = rules
        self._clock = clock
        self.hub_name = hub_name or socket.gethostname()
        self.file = AlertLog(Path(db_dir) / FILE_NAME)
        try:
            self.measurer = Measurer(store, aggregates, self.file.history_start(clock()))
            self.counters = _Counters()
            self._lock = threading.Lock()
            self._errors: dict[str, str] = {}  # rule -> the last error logged
            self.webhook = (
                WebhookSender(
                    rules.webhook,
                    self.hub_name,
                    on_outcome=self.file.mark,
                    queue_max=queue_max,
                    backoff_base_s=backoff_base_s,
                )
                if rules.webhook is not None
                else None
            )
            self.status: dict[str, RuleStatus] = {r.name: RuleStatus() for r in rules.rules}
            kept = self.file.states()
            gone: list[tuple[AlertEvent, RuleStatus]] = []
            for name, (status, described) in kept.items():
                if name in self.status:
                    self.status[name] = status
                else:
                    gone.append((described, status))
            self.recent: deque[AlertEvent] = deque(maxlen=API_EVENTS)
            self._resolve_gone(gone)
            self.recent.extend(self.file.recent(API_EVENTS))
            if self.webhook is not None:
                for ev in self.file.unsent(self.webhook.queue_max):
                    self.webhook.enqueue(ev)
            self._tasks: list[asyncio.Task[None]] = []
            if store.retain_ns is not None:
                for r in rules.rules:
                    need = r.window_ns + (r.baseline.over_ns if r.baseline else 0)
                    if not r.flow and need > store.retain_ns:
                        log.warning(
                            "alerts: rule %s looks %d s back but calls are kept %d s (--retain): its "
                            "baseline will only cover what is kept",
                            r.name,
                            need // SECOND,
                            store.retain_ns // SECOND,
                        )
        except BaseException:
            self.file.close()
            raise

    def _resolve_gone(self, gone: list[tuple[AlertEvent, RuleStatus]]) -> None:
        """Rules kept as pending or firing that the file no longer has: forget them, resolving the
        firing ones so a receiver's open incident is closed."""
        if not gone:
            return
        now = self._clock()
        events = []
        for described, status in gone:
            if status.state == "firing":
                log.info(
                    "alerts: rule %s was firing and is no longer in the rules file: resolved", described.rule
                )
                events.append(
                    replace(
                        described,
                        id=self.file.new_id(),
                        state="resolved",
                        ts=now,
                        value=None,
                        threshold=None,
                        since=status.since,
                    )
                )
        self.file.commit(
            [(d, RuleStatus(state="ok", since=now)) for d, _ in gone], events, self.webhook is not None
        )
        for ev in events:
            self.counters.events["resolved"] += 1
            self.recent.appendleft(ev)
            if self.webhook is not None:
                self.webhook.enqueue(ev)

    # -- evaluation (an executor thread)

    def evaluate(self, now_ns: int | None = None) -> list[AlertEvent]:
        """Evaluate every rule once; save what changed; return the new events (oldest first).

        The new states take effect only once they and their events are committed: if the file
        cannot be written (a full disk), nothing moves, and the next evaluation makes the same
        transitions and events again rather than losing a firing event."""
        now = self._clock() if now_ns is None else now_ns
        started = time.perf_counter()
        updates: dict[str, RuleStatus] = {}
        changed: list[tuple[Rule | AlertEvent, RuleStatus]] = []
        events: list[tuple[Rule, AlertEvent]] = []
        errors = 0
        with self._lock:
            current = dict(self.status)
        for rule in self.rules.rules:
            try:
                reading = self.measurer.read(rule, now)
            except Exception as e:  # a query that failed: no answer this time, the state stays
                reading = Reading(None, None, error=f"{type(e).__name__}: {e}")
            if reading.error is not None:
                errors += 1
                if self._errors.get(rule.name) != reading.error:
                    self._errors[rule.name] = reading.error
                    log.warning("alerts: rule %s could not be evaluated: %s", rule.name, reading.error)
            else:
                self._errors.pop(rule.name, None)
            old = current[rule.name]
            new, kind = step(old, reading.condition, now, rule.for_ns)
            new = replace(
                new,
                value=reading.value if reading.error is None else old.value,
                threshold=reading.threshold if reading.error is None else old.threshold,
                evaluated_ts=now,
                error=reading.error,
            )
            if kind is not None:
                ev = AlertEvent(
                    id=self.file.new_id(),
                    rule=rule.name,
                    state=kind,
                    ts=now,
                    value=new.value,
                    threshold=new.threshold,
                    measure=rule.measure,
                    filter=rule.filter,
                    since=old.since if kind == "resolved" else new.since,
                    description=rule.description,
                    edges=rule.edges.to_dict() if rule.edges is not None else None,
                )
                events.append((rule, ev))
            if (new.state, new.since) != (old.state, old.since) or (
                new.state != "ok" and (new.value, new.threshold) != (old.value, old.threshold)
            ):
                changed.append((rule, new))
            updates[rule.name] = new
        try:
            self.file.commit(changed, [ev for _, ev in events], self.webhook is not None)
        except Exception:
            with self._lock:
                self.counters.evaluation_errors += len(self.rules.rules)
            raise
        with self._lock:
            self.status.update(updates)
            for rule, ev in events:
                self.counters.events[ev.state] += 1
                self.recent.appendleft(ev)
                self._log_event(rule, ev)
            self.counters.evaluations += 1
            self.counters.evaluation_errors += errors
            self.counters.evaluation_seconds += time.perf_counter() - started
        return [ev for _, ev in events]

    @staticmethod
    def _log_event(rule: Rule, ev: AlertEvent) -> None:
        if ev.state == "firing":
            log.warning(
                "alerts: %s FIRING: %s = %s > %s (%s over %s)",
                rule.name,
                rule.measure,
                _show(ev.value),
                _show(ev.threshold),
                rule.condition(),
                _duration(rule.window_ns),
            )
        else:
            log.info("alerts: %s resolved: %s = %s", rule.name, rule.measure, _show(ev.value))

    # -- the service's side (the event loop)

    async def tick(self) -> list[AlertEvent]:
        """One evaluation in a thread; its events go to the webhook."""
        events = await asyncio.get_running_loop().run_in_executor(None, self.evaluate)
        if self.webhook is not None:
            for ev in events:
                self.webhook.enqueue(ev)
        return events

    async def run(self) -> None:
        """The timer: evaluate every `evaluate_every` until cancelled; a failed evaluation is
        logged and tried again at the next tick."""
        loop = asyncio.get_running_loop()
        every = self.rules.evaluate_every_ns / SECOND
        next_at = loop.time()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("alerts: evaluation failed; trying again in %.0f s", every)
            next_at += every
            now = loop.time()
            if next_at < now:  # an evaluation overran: skip the missed ticks rather than bunch them
                next_at = now + every - (now - next_at) % every
            await asyncio.sleep(next_at - now)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.rules.rules:
            self._tasks.append(loop.create_task(self.run(), name="hub-alerts"))
        if self.webhook is not None:
            self._tasks.append(loop.create_task(self.webhook.run(), name="hub-alerts-webhook"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        await asyncio.get_running_loop().run_in_executor(None, self.file.close)

    def close(self) -> None:
        self.file.close()

    def snapshot(self) -> dict[str, Any]:
        """The body of `GET /api/v1/alerts`."""
        with self._lock:
            statuses = dict(self.status)
            events = list(self.recent)
        return {
            "rules": [
                {
                    "name": r.name,
                    "description": r.description,
                    "measure": r.measure,
                    "filter": r.filter,
                    "edges": r.edges.to_dict() if r.edges is not None else None,
                    "condition": r.condition(),
                    "state": statuses[r.name].state,
                    "value": statuses[r.name].value,
                    "threshold": statuses[r.name].threshold,
                    "since": statuses[r.name].since,
                }
                for r in self.rules.rules
            ],
            "events": [e.to_api() for e in events],
        }

    def metrics_text(self) -> str:
        """The alerts' /metrics families (from memory)."""
        with self._lock:
            statuses = dict(self.status)
            c = self.counters
            events = dict(c.events)
            evaluations, errors, seconds = c.evaluations, c.evaluation_errors, c.evaluation_seconds
        out = Exposition()
        out.family(
            "podshark_alerts_firing",
            "gauge",
            "Alert rules firing now.",
            [({}, sum(s.state == "firing" for s in statuses.values()))],
        )
        out.family(
            "podshark_alert_rule_state",
            "gauge",
            "1 for each rule's current state (ok, pending, firing).",
            [
                ({"rule": name, "state": st}, int(s.state == st))
                for name, s in sorted(statuses.items())
                for st in STATES
            ],
        )
        out.family(
            "podshark_alert_rule_value",
            "gauge",
            "Each rule's measure at its last evaluation (absent when there was none).",
            [({"rule": name}, s.value) for name, s in sorted(statuses.items()) if s.value is not None],
        )
        out.family(
            "podshark_alert_events_total",
            "counter",
            "Alert events since the hub started, by state (firing, resolved).",
            [({"state": k}, v) for k, v in sorted(events.items())],
        )
        out.family(
            "podshark_alert_evaluations_total", "counter", "Evaluations of the rules.", [({}, evaluations)]
        )
        out.family(
            "podshark_alert_evaluation_errors_total",
            "counter",
            "Rule evaluations whose measure could not be computed (the rule kept its state).",
            [({}, errors)],
        )
        out.family(
            "podshark_alert_evaluation_seconds_total",
            "counter",
            "Time spent evaluating rules.",
            [({}, round(seconds, 6))],
        )
        if self.webhook is not None:
            w = self.webhook.stats
            for name, value, help_text in (
                ("sent", w.sent, "Alert events the webhook accepted (2xx)."),
                ("attempts", w.attempts, "POSTs to the webhook."),
                ("retries", w.retries, "POSTs that were retries of an event."),
                ("failed", w.failed, "Alert events given up on after every retry."),
                ("dropped", w.dropped, "Alert events dropped from a full webhook queue (the oldest)."),
            ):
                out.family(f"podshark_alert_webhook_{name}_total", "counter", help_text, [({}, value)])
            out.family(
                "podshark_alert_webhook_queue",
                "gauge",
                "Alert events waiting for the webhook.",
                [({}, len(self.webhook))],
            )
        return out.text()


def _show(v: float | None) -> str:
    return "none" if v is None else f"{v:.6g}"


def _duration(ns: int) -> str:
    for unit, size in (("d", 86_400 * SECOND), ("h", 3600 * SECOND), ("m", MINUTE), ("s", SECOND)):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / SECOND:g}s"


# ---- HTTP


#: the application's alert engine (hub/app.py sets it when the hub has a rules file)
ALERTS_KEY: web.AppKey[AlertEngine] = web.AppKey("alerts", AlertEngine)


async def get_alerts(request: web.Request) -> web.Response:
    """`GET /api/v1/alerts`: the rules with their states, and the newest events."""
    engine = request.app.get(ALERTS_KEY)
    if engine is None:
        return web.json_response({"rules": [], "events": []})
    return web.json_response(engine.snapshot())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/alerts", get_alerts)
