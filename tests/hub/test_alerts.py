"""Alerts: the rules file, the state table, the measures, the webhook and restarts.

What is known by construction: the calls and flows each test stores (their times, statuses,
latencies, bytes), so every measure's value follows from arithmetic on what was sent; the clock
the engine reads (a fake one in process); the receiver's answers (it fails the first attempts on
purpose, or blocks). Real components throughout: DuckDB stores and aggregates in a temporary
directory, a real aiohttp receiver on a real socket, and a real `podshark hub --alerts` process fed
through the ingest WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissect.model import Call, Endpoint, Message
from hub.aggregates import FLOW_DECODER, Aggregates
from hub.alert_rules import (
    CALL_MEASURES,
    FLOW_MEASURES,
    MAX_FILE_BYTES,
    RulesError,
    WebhookConfig,
    load_rules,
    parse_rules,
)
from hub.alerts import (
    FILE_NAME,
    TRANSITIONS,
    AlertEngine,
    AlertEvent,
    AlertLog,
    Measurer,
    RuleStatus,
    WebhookSender,
    step,
)
from hub.nodes import ClusterRanges
from hub.store import Store
from tests.hub.test_map import start_hub
from tests.hub.test_service import REPO, TOKEN, Hub, _env, get

S = 1_000_000_000
MINUTE = 60 * S


# ---- a webhook receiver: real aiohttp on a real socket, in its own thread


@dataclass
class Receiver:
    """Records every POST (arrival time, body, headers). Answers `fail_status` to the first
    `fail_first` attempts (or to all with `fail_first=-1`), sleeps `delay_s` before answering, and
    holds every request until `gate` is set when one is given."""

    fail_first: int = 0
    fail_status: int = 503
    delay_s: float = 0.0
    gate: threading.Event | None = None
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    attempts: list[float] = field(default_factory=list)  # monotonic times of every POST
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every POST's JSON
    accepted: list[dict[str, Any]] = field(default_factory=list)  # the ones answered 200
    headers: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._main, name="test-webhook", daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10), "the webhook receiver did not start"
        return self

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
        self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        self._ready.set()
        self._loop.run_forever()

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self.lock:
            self.attempts.append(time.monotonic())
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
            n = len(self.attempts)
        if self.gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_first < 0 or n <= self.fail_first:
            return web.Response(status=self.fail_status, text="not now")
        with self.lock:
            self.accepted.append(body)
        return web.json_response({"ok": True})

    def wait_accepted(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.accepted) >= n:
                    return list(self.accepted)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"the receiver got {len(self.accepted)} events, not {n}: {self.bodies}")


@contextlib.contextmanager
def receiver(**kw: Any) -> Iterator[Receiver]:
    r = Receiver(**kw).start()
    try:
        yield r
    finally:
        r.stop()


# ---- calls and flows with known numbers


def make_calls(
    start: int,
    n: int,
    per_s: float,
    *,
    dst: str = "10.0.0.2",
    status: int = 200,
    latency_ns: int | None = 1_000_000,
    tag: str = "c",
) -> list[Call]:
    """`n` HTTP calls from 10.0.0.1 to `dst`, the i-th starting at start + i / per_s."""
    out = []
    for i in range(n):
        ts = start + int(i * S / per_s)
        out.append(
            Call(
                id=f"alerts-test/{tag}-{start}-{i}",
                protocol="http",
                src=Endpoint(ip="10.0.0.1", port=40000 + i % 1000),
                dst=Endpoint(ip=dst, port=80),
                request_ts=ts,
                response_ts=None if latency_ns is None else ts + latency_ns,
                method="GET",
                target=f"/{i}",
                status=status if latency_ns is not None else None,
                request=Message(wire_size=100),
                response=Message(wire_size=200) if latency_ns is not None else None,
                flow_id=f"alerts-test/{tag}/{i}",
            ).finish()
        )
    return out


def flow(
    start: int, src: dict[str, Any], dst: dict[str, Any], up: int, down: int, opened: int
) -> dict[str, Any]:
    return {
        "v": 1,
        "start_ts": start,
        "end_ts": start + 10 * S,
        "transport": "tcp",
        "src": src,
        "dst": dst,
        "protocol": None,
        "bytes": [up, down],
        "packets": [up // 1000 + 1, down // 1000 + 1],
        "opened": opened,
        "closed": opened,
        "active": 0,
    }


@dataclass
class Lab:
    """A store and aggregates in a directory, a fake clock, and engines made over them."""

    root: Path
    now: list[int]
    store: Store
    aggregates: Aggregates
    engines: list[AlertEngine] = field(default_factory=list)

    def clock(self) -> int:
        return self.now[0]

    def engine(self, text: str, **kw: Any) -> AlertEngine:
        e = AlertEngine(parse_rules(text), self.root, self.store, self.aggregates, clock=self.clock, **kw)
        self.engines.append(e)
        return e

    def add(self, calls: list[Call]) -> None:
        self.store.add(calls, self.now[0])
        self.aggregates.add_calls(calls)

    def add_flows(self, flows: list[dict[str, Any]]) -> None:
        records = [FLOW_DECODER.decode(json.dumps(f)) for f in flows]
        self.aggregates.add_flows(self.aggregates.prepare_flows(records))


T0 = (time.time_ns() // MINUTE - 30) * MINUTE  # half an hour ago, on a minute


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    now = [T0]
    store = Store(tmp_path)
    agg = Aggregates(
        tmp_path / "aggregates.duckdb", ranges=ClusterRanges(["10.0.0.0/8"]), clock=lambda: now[0]
    )
    lab = Lab(tmp_path, now, store, agg)
    try:
        yield lab
    finally:
        for e in lab.engines:
            e.close()
        agg.close()
        store.close()


# ---- the rules model

FULL = """
webhook:
  url: http://127.0.0.1:9999/hook
  headers: {Authorization: "Bearer xyz"}
  timeout: 5s
  retries: 6
evaluate_every: 10s
rules:
  - name: api-retry-storm
    description: clients hammer the api
    filter: 'dst.workload == "Deployment/api"'
    measure: calls_per_s
    window: 1m
    baseline: {factor: 3, over: 24h, min: 5}
    for: 30s
  - name: egress
    measure: bytes_per_s
    edges: {src: "shop/*", dst: "external/*"}
    above: 50
  - name: slow.p99_1
    measure: p99_latency_ms
    above: 250.5
"""


def test_a_full_file_reads_as_written() -> None:
    r = parse_rules(FULL, "full.yaml")
    assert r.webhook == WebhookConfig("http://127.0.0.1:9999/hook", {"Authorization": "Bearer xyz"}, 5 * S, 6)
    assert r.evaluate_every_ns == 10 * S
    storm, egress, slow = r.rules
    assert (storm.name, storm.measure, storm.window_ns, storm.for_ns) == (
        "api-retry-storm",
        "calls_per_s",
        MINUTE,
        30 * S,
    )
    assert storm.filter == 'dst.workload == "Deployment/api"' and storm.edges is None
    assert storm.baseline is not None and (
        storm.baseline.factor,
        storm.baseline.over_ns,
        storm.baseline.min,
    ) == (
        3.0,
        86_400 * S,
        5.0,
    )
    assert storm.condition() == "3x baseline (min 5)" and storm.description == "clients hammer the api"
    assert storm.threshold(None) == 15.0 and storm.threshold(2.0) == 15.0 and storm.threshold(10.0) == 30.0
    assert (
        egress.flow
        and egress.edges is not None
        and egress.edges.to_dict() == {"src": "shop/*", "dst": "external/*"}
    )
    assert egress.condition() == "above 50" and egress.threshold(123.0) == 50.0 and egress.window_ns == MINUTE
    assert egress.edges.matches("shop/Deployment/web", "external/1.2.3.4")
    assert not egress.edges.matches("shop/Deployment/web", "ip/10.0.0.1")
    assert slow.condition() == "above 250.5" and slow.for_ns == 0 and slow.filter == ""


def test_defaults_and_an_empty_rule_list() -> None:
    r = parse_rules("rules: []")
    assert r.rules == () and r.webhook is None and r.evaluate_every_ns == 10 * S
    r = parse_rules("rules:\n  - {name: a, measure: connections_per_s, above: 0}\n")
    (a,) = r.rules
    assert a.edges is not None and a.edges.to_dict() == {"src": "*", "dst": "*"}
    assert (a.window_ns, a.for_ns, a.above) == (MINUTE, 0, 0.0)


def _rule(**kw: Any) -> str:
    base: dict[str, Any] = {"name": "r1", "measure": "calls_per_s", "above": 1}
    base.update(kw)
    return yaml.safe_dump({"rules": [{k: v for k, v in base.items() if v is not None}]})


BAD = [
    (_rule(windw="1m"), ["rule 'r1'", "'windw'", "did you mean 'window'"]),
    (_rule(measure="bytes_per_s", window="30s"), ["rule 'r1'", "'window'", "at least 1m"]),
    (_rule(filter='dst.ip == "'), ["rule 'r1'", "'filter'", "at 10"]),
    (_rule(filter="nosuchfield == 1"), ["rule 'r1'", "'filter'", "at 0", "unknown field"]),
    (_rule(above=None, baseline={"factor": 2}), ["rule 'r1'", "'baseline.min'", "is missing"]),
    (_rule(above=None, baseline={"factor": 0, "min": 1}), ["rule 'r1'", "'baseline.factor'", "above 0"]),
    (_rule(above=None, baseline={"factor": 2, "min": 1, "over": "30s"}), ["'baseline.over'", "between 1m"]),
    (_rule(above="50"), ["rule 'r1'", "'above'", "wants a number"]),
    (_rule(above=True), ["'above'", "wants a number"]),
    (_rule(above=float("nan")), ["'above'", "finite"]),
    (_rule(above=-1), ["'above'", "0 or more"]),
    (_rule(above=None), ["rule 'r1'", "exactly one condition"]),
    (_rule(baseline={"factor": 2, "min": 1}), ["rule 'r1'", "exactly one condition"]),
    (_rule(window=90), ["'window'", "a bare number"]),
    (_rule(window="0s"), ["'window'", "between 1s"]),
    (_rule(window="forever"), ["'window'", "like 30s"]),
    (_rule(**{"for": "2d"}), ["'for'", "between"]),
    (_rule(measure="calls"), ["'measure'", "is not one of", "did you mean 'calls_per_s'"]),
    (_rule(measure=None), ["'measure'", "is missing"]),
    (_rule(name="bad name"), ["rule #1", "'name'", "letters, digits"]),
    (_rule(name=None), ["rule #1", "'name'", "is missing"]),
    (_rule(name=5), ["rule #1", "'name'", "wants text"]),
    (_rule(measure="bytes_per_s", filter='dst.ip == "1.2.3.4"'), ["'filter'", "edges"]),
    (_rule(edges={"dst": "external/*"}), ["'edges'", "flow measures"]),
    (_rule(measure="bytes_per_s", edges={"dest": "x"}), ["'edges.dest'", "did you mean 'dst'"]),
    (_rule(measure="bytes_per_s", edges={"dst": 5}), ["'edges.dst'", "wants text"]),
    (_rule(description=["a"]), ["'description'", "wants text"]),
    (
        "rules:\n  - {name: a, measure: calls_per_s, above: 1}\n"
        "  - {name: a, measure: error_rate, above: 1}\n",
        ["rule 'a'", "'name'", "earlier rule"],
    ),
    ("rules: {name: a}", ["'rules'", "wants a list"]),
    ("rules: [5]", ["rule #1", "wants a mapping"]),
    ("rulez: []", ["'rulez'", "did you mean 'rules'"]),
    ("", ["is empty"]),
    ("- a\n- b\n", ["wants a mapping"]),
    ("rules: [\n", ["not valid YAML", "line"]),
    ("evaluate_every: 0.5s\nrules: []", ["'evaluate_every'", "between 1s"]),
    ("webhook: {url: ftp://x/y}\nrules: []", ["'webhook.url'", "http://"]),
    ("webhook: {url: 'http://'}\nrules: []", ["'webhook.url'", "with a host"]),
    ("webhook: {headers: {a: b}}\nrules: []", ["'webhook.url'", "is missing"]),
    ("webhook: {url: 'http://h/', retries: -1}\nrules: []", ["'webhook.retries'", "0 to 100"]),
    ("webhook: {url: 'http://h/', retries: 1.5}\nrules: []", ["'webhook.retries'", "whole number"]),
    ("webhook: {url: 'http://h/', timeout: 10m}\nrules: []", ["'webhook.timeout'", "between"]),
    (
        'webhook: {url: "http://h/", headers: {"X-A": "a\\nb"}}\nrules: []',
        ["'webhook.headers.X-A'", "one line"],
    ),
    (
        'webhook: {url: "http://h/", headers: {"bad name": "v"}}\nrules: []',
        ["'webhook.headers'", "header name"],
    ),
    (
        'webhook: {url: "http://h/", headers: {"Host": "v"}}\nrules: []',
        ["'webhook.headers.Host'", "set by the hub"],
    ),
    ('webhook: {url: "http://h/", method: PUT}\nrules: []', ["'webhook.method'", "not a known key"]),
]


@pytest.mark.parametrize(("text", "needles"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_file_is_one_line_naming_rule_key_and_problem(text: str, needles: list[str]) -> None:
    with pytest.raises(RulesError) as e:
        parse_rules(text, "rules.yaml")
    message = str(e.value)
    assert message.startswith("alerts file rules.yaml"), message
    assert "\n" not in message and len(message) < 600, message
    for n in needles:
        assert n in message, (n, message)


def test_load_rules_reads_files_and_says_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(FULL)
    assert len(load_rules(good).rules) == 3
    with pytest.raises(RulesError, match=r"missing\.yaml: cannot be read"):
        load_rules(tmp_path / "missing.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"rules: []\n# caf\xe9\n")
    with pytest.raises(RulesError, match="not UTF-8"):
        load_rules(latin)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 10))
    with pytest.raises(RulesError, match="at most"):
        load_rules(big)


def test_alias_bombs_and_recursion_stay_small() -> None:
    """A billion-laughs file is a few hundred bytes that expands to 10^9 items if walked; nothing
    here walks it, so it is refused at once (walking it would never end: the suite's timeout), and
    self-referencing values and deep nesting are refused too."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = "\n".join(levels)
    for text in (
        bomb + "\nrules: *a9\n",
        "x: &l [*l]\nrules: []\n",
        "rules:\n  - &r {name: a, measure: calls_per_s, above: 1, description: *r}\n",
        "rules: &r [*r]\n",
        "[" * 5000 + "]" * 5000,
    ):
        with pytest.raises(RulesError) as e:
            parse_rules(text)
        assert "\n" not in str(e.value) and len(str(e.value)) < 600


_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_value = st.recursive(
    _leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["name", "measure", "filter", "edges", "window", "above", "baseline", "for", "description", "other"]
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(key=_keys, value=_value)
def test_hostile_values_in_a_rule_are_refused_or_accepted_never_a_crash(key: str, value: Any) -> None:
    rule: dict[str, Any] = {"name": "r1", "measure": "calls_per_s", "above": 1, key: value}
    text = yaml.safe_dump({"rules": [rule]}, allow_unicode=True)
    try:
        r = parse_rules(text, "h.yaml")
    except RulesError as e:
        msg = str(e)
        assert msg.startswith("alerts file h.yaml") and "\n" not in msg and len(msg) < 1500, msg
        if key != "name":
            assert "rule 'r1'" in msg, msg
    else:
        (only,) = r.rules
        assert only.name == (value if key == "name" else "r1")
        assert only.measure in CALL_MEASURES + FLOW_MEASURES


@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_hostile_text_is_refused_or_accepted_never_a_crash(text: str) -> None:
    try:
        parse_rules(text, "t.yaml")
    except RulesError as e:
        assert "\n" not in str(e) and str(e).startswith("alerts file t.yaml")


# ---- the state table


def test_the_table_covers_every_case_and_only_firing_and_resolving_are_events() -> None:
    for state in ("ok", "pending", "firing"):
        for cond in (False, True):
            for held in (False, True) if cond else (False,):
                nxt, event = TRANSITIONS[(state, cond, held)]
                assert event == ("firing" if nxt == "firing" and state != "firing" else None) or (
                    event == "resolved" and state == "firing" and nxt == "ok"
                )
                assert (nxt == "ok") == (not cond)  # a false condition always ends in ok
    assert TRANSITIONS[("firing", False, False)] == ("ok", "resolved")


def test_step_with_a_fake_clock() -> None:
    s = RuleStatus()
    s, ev = step(s, False, 100, 30)
    assert (s.state, s.since, ev) == ("ok", 100, None)
    s, ev = step(s, True, 110, 30)
    assert (s.state, s.since, ev) == ("pending", 110, None)
    s, ev = step(s, True, 139, 30)  # 29 ns held: not yet
    assert (s.state, s.since, ev) == ("pending", 110, None)
    s, ev = step(s, None, 200, 30)  # no answer: nothing moves
    assert (s.state, s.since, ev) == ("pending", 110, None)
    s, ev = step(s, True, 140, 30)
    assert (s.state, s.since, ev) == ("firing", 110, "firing")  # since: when the condition began
    s, ev = step(s, True, 500, 30)
    assert (s.state, s.since, ev) == ("firing", 110, None)
    s, ev = step(s, False, 510, 30)
    assert (s.state, s.since, ev) == ("ok", 510, "resolved")
    s, ev = step(s, True, 520, 0)  # for 0: at once
    assert (s.state, s.since, ev) == ("firing", 520, "firing")
    s, ev = step(RuleStatus("pending", 10), False, 20, 5)
    assert (s.state, s.since, ev) == ("ok", 20, None)  # a pending rule goes back silently


@given(
    for_steps=st.integers(0, 5),
    conditions=st.lists(st.one_of(st.none(), st.booleans()), max_size=60),
)
def test_events_follow_the_conditions(for_steps: int, conditions: list[bool | None]) -> None:
    """Evaluations one tick apart: a firing event exactly when the condition has held (ignoring
    unknowns) for `for` ticks since it began, a resolved event exactly on the first false after
    firing; the two alternate, starting with firing."""
    s = RuleStatus()
    began: int | None = None
    firing = False
    for t, cond in enumerate(conditions):
        s, ev = step(s, cond, t, for_steps)
        if cond is None:
            assert ev is None
            continue
        if cond:
            began = t if began is None else began
            expect = "firing" if not firing and t - began >= for_steps else None
            firing = firing or expect == "firing"
        else:
            expect = "resolved" if firing else None
            began, firing = None, False
        assert ev == expect, (t, cond, s)
        assert s.state == ("firing" if firing else "pending" if began is not None else "ok")


# ---- measures against a real store and aggregates


def test_call_measures_are_what_was_stored(lab: Lab) -> None:
    window = 20 * S
    now = T0 + 100 * S
    lo = now - window
    # in the window to 10.0.0.2: 40 fast 200s, 8 slow 503s, 2 without a response; 30 to elsewhere
    fast = make_calls(lo + S, 40, 4, latency_ns=2_000_000, tag="fast")
    slow = make_calls(lo + 2 * S, 8, 1, status=503, latency_ns=300_000_000, tag="slow")
    lost = make_calls(lo + 3 * S, 2, 1, latency_ns=None, tag="lost")
    other = make_calls(lo, 30, 2, dst="10.0.0.9", tag="other")
    # outside: before the window and at its end (the window is [lo, now))
    outside = make_calls(lo - 5 * S, 10, 2, tag="before") + make_calls(now, 5, 1, tag="after")
    lab.add(fast + slow + lost + other + outside)
    m = Measurer(lab.store, lab.aggregates, history_start_ns=T0)
    rules = parse_rules(
        "rules:\n"
        + "".join(
            f"  - {{name: {m_}, measure: {m_}, window: 20s, above: 1, filter: 'dst.ip == \"10.0.0.2\"'}}\n"
            for m_ in CALL_MEASURES
        )
        + "  - {name: all, measure: calls_per_s, window: 20s, above: 1}\n"
    )
    got = {r.name: m.read(r, now).value for r in rules.rules}
    n = 40 + 8 + 2
    assert got["calls_per_s"] == pytest.approx(n / 20)
    assert got["errors_per_s"] == pytest.approx(8 / 20)
    assert got["error_rate"] == pytest.approx(8 / n)
    # latencies: 40 of 2 ms, 8 of 300 ms (the two without a response have none): p50 2 ms, p99 300 ms
    assert got["p50_latency_ms"] == pytest.approx(2.0)
    assert got["p99_latency_ms"] == pytest.approx(300.0)
    assert got["all"] == pytest.approx((n + 30) / 20)
    # an empty window: rates 0, a ratio and percentiles of nothing are None (never above anything)
    empty = {r.name: m.read(r, now + 3600 * S) for r in rules.rules}
    assert empty["calls_per_s"].value == 0.0 and empty["error_rate"].value is None
    assert empty["p99_latency_ms"].value is None and empty["p99_latency_ms"].condition is False


def test_call_baseline_is_the_mean_over_the_history_before_the_window(lab: Lab) -> None:
    hist = T0 + 10 * S  # alerts first evaluated here
    now = hist + 130 * S
    # 2 calls/s for the 100 s after the history starts, then 20/s in the 20 s window; calls from
    # before the history began do not count
    lab.add(make_calls(hist - 10 * S, 100, 10, tag="prehistory"))
    lab.add(make_calls(hist, 200, 2, tag="calm"))
    lab.add(make_calls(now - 20 * S, 400, 20, tag="storm"))
    m = Measurer(lab.store, lab.aggregates, history_start_ns=hist)
    (rule,) = parse_rules(
        "rules: [{name: s, measure: calls_per_s, window: 20s, baseline: {factor: 3, over: 24h, min: 0.5}}]"
    ).rules
    r = m.read(rule, now)
    # the baseline's span is [hist, now - 20 s): 110 s holding the 200 calm calls
    assert r.baseline == pytest.approx(200 / 110)
    assert r.value == pytest.approx(20.0)
    assert r.threshold == pytest.approx(3 * 200 / 110) and r.condition is True
    # with less than a second of history the baseline is unknown and `min` stands in
    m2 = Measurer(lab.store, lab.aggregates, history_start_ns=now - 20 * S)
    r2 = m2.read(rule, now)
    assert r2.baseline is None and r2.threshold == pytest.approx(1.5)
    # `over` shorter than the history: only the last `over` before the window
    (short,) = parse_rules(
        "rules: [{name: s, measure: calls_per_s, window: 20s, baseline: {factor: 2, over: 1m, min: 0}}]"
    ).rules
    # [now - 80 s, now - 20 s) = [hist + 50 s, hist + 110 s): the calm calls of its first 50 s
    assert m.read(short, now).baseline == pytest.approx(100 / 60)


def test_flow_measures_sum_the_selected_edges_over_their_minutes(lab: Lab) -> None:
    minute = T0 + 10 * MINUTE
    now = minute + 30 * S  # window 1m: the minutes from (now - 60 s)'s, i.e. minute - 1 min, to now
    web = {"ip": "10.1.0.7", "namespace": "shop", "workload": "Deployment/web"}
    api = {"ip": "10.1.0.9", "port": 8080, "namespace": "shop", "workload": "Deployment/api"}
    ext = {"ip": "93.184.216.34", "port": 443}
    ext2 = {"ip": "1.1.1.1", "port": 53}
    lab.add_flows(
        [
            flow(minute - MINUTE + 5 * S, web, ext, 1_000, 50_000, 3),  # in the window's first minute
            flow(minute + 5 * S, web, ext, 2_000, 70_000, 2),  # in the current minute
            flow(minute + 15 * S, web, ext2, 500, 500, 1),  # another external address
            flow(minute + 5 * S, web, api, 9_999_000, 9_999_000, 40),  # inside the cluster: not egress
            flow(minute - 3 * MINUTE, web, ext, 777_000, 0, 9),  # minutes before the window
        ]
    )
    lab.now[0] = now
    m = Measurer(lab.store, lab.aggregates, history_start_ns=minute - 5 * MINUTE)
    rules = parse_rules(
        """
rules:
  - {name: egress, measure: bytes_per_s, edges: {dst: "external/*"}, above: 1}
  - {name: egress_pkts, measure: packets_per_s, edges: {src: "shop/*", dst: "external/*"}, above: 1}
  - {name: conns, measure: connections_per_s, edges: {dst: "external/93.*"}, above: 1}
  - {name: none, measure: bytes_per_s, edges: {src: "kube-system/*"}, above: 1}
  - {name: base, measure: bytes_per_s, edges: {dst: "external/*"}, baseline: {factor: 2, over: 1h, min: 1}}
"""
    ).rules
    got = {r.name: m.read(r, now) for r in rules}
    span = (now - (minute - MINUTE)) / S  # 90 s: the two minutes' data, up to now
    assert got["egress"].value == pytest.approx((1_000 + 50_000 + 2_000 + 70_000 + 500 + 500) / span)
    pkts = (2 + 51) + (3 + 71) + (1 + 1)  # flow(): packets are bytes // 1000 + 1 each way
    assert got["egress_pkts"].value == pytest.approx(pkts / span)
    assert got["conns"].value == pytest.approx((3 + 2) / span)
    assert got["none"].value == 0.0 and got["none"].condition is False
    # the baseline: [history start, the window's first minute) = 4 minutes holding the 777 kB
    assert got["base"].baseline == pytest.approx(777_000 / (4 * 60))


# ---- the engine: states over time, events, the file


STORM_RULES = """
rules:
  - name: storm
    filter: 'dst.ip == "10.0.0.2"'
    measure: calls_per_s
    window: 10s
    above: 5
    for: 4s
  - name: errors
    description: too many 5xx
    measure: errors_per_s
    window: 10s
    above: 1
"""


def test_engine_moves_through_the_table_with_a_fake_clock(lab: Lab) -> None:
    e = lab.engine(STORM_RULES)
    start = lab.now[0] + 60 * S
    lab.add(make_calls(start, 100, 10, status=503, tag="burst"))  # 10/s for 10 s, all 5xx
    seen: list[tuple[int, str, str]] = []
    for t in range(0, 40, 2):
        lab.now[0] = start + t * S
        for ev in e.evaluate():
            seen.append((t, ev.rule, ev.state))
    states = e.snapshot()["rules"]
    assert [r["state"] for r in states] == ["ok", "ok"]
    # errors: 10/s of 5xx from t=0 (for 0 s): fires at the first evaluation with more than 1/s in
    # the 10 s window (t=2: 20 calls / 10 s = 2/s); storm needs > 5/s (t=6: 60 calls) held 4 s (t=10)
    # both resolve when the window holds too few: storm at t=16 (40 calls = 4/s), errors at t=20 (0)
    assert seen == [
        (2, "errors", "firing"),
        (10, "storm", "firing"),
        (16, "storm", "resolved"),
        (20, "errors", "resolved"),
    ]
    body = e.snapshot()
    assert [(ev["rule"], ev["state"]) for ev in body["events"]] == [
        ("errors", "resolved"),
        ("storm", "resolved"),
        ("storm", "firing"),
        ("errors", "firing"),
    ]  # newest first
    fired = body["events"][2]
    assert (
        fired["ts"] == start + 10 * S and fired["value"] == pytest.approx(10.0) and fired["threshold"] == 5.0
    )
    assert body["rules"][1] == {
        "name": "errors",
        "description": "too many 5xx",
        "measure": "errors_per_s",
        "filter": "",
        "edges": None,
        "condition": "above 1",
        "state": "ok",
        "value": 0.0,
        "threshold": 1.0,
        "since": start + 20 * S,
    }
    text = e.metrics_text()
    assert 'podshark_alert_events_total{state="firing"} 2' in text
    assert 'podshark_alert_events_total{state="resolved"} 2' in text
    assert "podshark_alerts_firing 0" in text and "podshark_alert_webhook" not in text


def test_restart_keeps_firing_rules_firing_without_firing_again(lab: Lab) -> None:
    e = lab.engine(STORM_RULES)
    start = lab.now[0] + 60 * S
    lab.add(make_calls(start, 100, 10, status=503, tag="burst"))
    for t in (2, 4, 6, 8, 10):
        lab.now[0] = start + t * S
        e.evaluate()
    assert {r["name"]: r["state"] for r in e.snapshot()["rules"]} == {"storm": "firing", "errors": "firing"}
    storm_since = e.status["storm"].since
    e.close()
    lab.engines.remove(e)

    again = lab.engine(STORM_RULES)
    assert again.status["storm"].state == "firing" and again.status["storm"].since == storm_since
    assert [ev["state"] for ev in again.snapshot()["events"]] == ["firing", "firing"]  # kept in the file
    lab.now[0] = start + 12 * S
    assert again.evaluate() == []  # still true: no second firing event
    lab.now[0] = start + 16 * S
    (resolved,) = again.evaluate()
    assert (resolved.rule, resolved.state, resolved.since) == ("storm", "resolved", storm_since)
    again.close()
    lab.engines.remove(again)

    # the errors rule is gone from the file while firing: resolved at start, value null
    only_storm = STORM_RULES.split("  - name: errors")[0]
    third = lab.engine(only_storm)
    first = third.snapshot()["events"][0]
    assert (first["rule"], first["state"], first["value"]) == ("errors", "resolved", None)
    assert third.file.states() == {}


def test_a_measure_that_cannot_be_computed_keeps_the_state(lab: Lab) -> None:
    """The aggregates go away under a firing flow rule: no answer is not "resolved"."""
    minute = lab.now[0] + 5 * MINUTE
    lab.now[0] = minute + 30 * S
    ext = {"ip": "93.184.216.34", "port": 443}
    lab.add_flows([flow(minute + S, {"ip": "10.1.0.7"}, ext, 600_000, 600_000, 1)])
    e = lab.engine('rules: [{name: egress, measure: bytes_per_s, edges: {dst: "external/*"}, above: 1000}]')
    (fired,) = e.evaluate()
    assert fired.value == pytest.approx(1_200_000 / 90)  # [minute - 1 min, now): 90 s
    lab.aggregates.close()
    lab.now[0] += 10 * MINUTE  # the window is long empty: a working query would resolve it
    assert e.evaluate() == []
    status = e.status["egress"]
    assert status.state == "firing" and status.error is not None and "closed" in status.error
    assert status.value == fired.value  # the last answer stays on show
    assert "podshark_alert_evaluation_errors_total 1" in e.metrics_text().splitlines()


def test_a_transition_takes_effect_only_once_saved(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails (a full disk: injected here) moves nothing; the next evaluation makes the
    same transition and event, so a firing event is never lost between memory and the file."""
    e = lab.engine(STORM_RULES)
    start = lab.now[0] + 60 * S
    lab.add(make_calls(start, 100, 10, status=503, tag="burst"))
    lab.now[0] = start + 2 * S
    real = e.file.commit

    def full_disk(*args: Any, **kw: Any) -> None:
        raise duckdb.IOException("No space left on device")

    monkeypatch.setattr(e.file, "commit", full_disk)
    with pytest.raises(duckdb.IOException):
        e.evaluate()
    assert e.status["errors"].state == "ok" and e.snapshot()["events"] == []
    monkeypatch.setattr(e.file, "commit", real)
    lab.now[0] = start + 4 * S
    (ev,) = e.evaluate()
    assert (ev.rule, ev.state) == ("errors", "firing") and e.status["errors"].state == "firing"
    assert [x.rule for x in e.file.recent(10)] == ["errors"]


def test_the_event_table_is_bounded(tmp_path: Path) -> None:
    log = AlertLog(tmp_path / FILE_NAME, max_events=50)
    try:
        for i in range(120):
            ev = AlertEvent(
                log.new_id(), "r", "firing" if i % 2 else "resolved", i, 1.0, 0.5, "calls_per_s", "", i, ""
            )
            log.commit([], [ev], webhook=False)
        kept = log.recent(1000)
        assert len(kept) == 50 and kept[0].ts == 119 and kept[-1].ts == 70
    finally:
        log.close()


def test_a_locked_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    from hub.alerts import AlertsError

    (tmp_path / FILE_NAME).write_bytes(b"this is not a duckdb file" * 100)
    with pytest.raises(AlertsError, match="move it away"):
        AlertLog(tmp_path / FILE_NAME)


# ---- the webhook


def _event(i: int, state: str = "firing") -> AlertEvent:
    return AlertEvent(
        i, f"rule-{i}", state, 1_000 + i, 12.5, 5.0, "calls_per_s", 'dst.ip == "10.0.0.2"', 999, "d"
    )


async def _run_sender(sender: WebhookSender, until: Any, timeout: float = 60) -> None:
    task = asyncio.get_running_loop().create_task(sender.run())
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the sender did not get there"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_webhook_retries_with_backoff_until_accepted() -> None:
    with receiver(fail_first=3) as r:
        outcomes: list[tuple[int, str]] = []
        cfg = WebhookConfig(r.url, {"Authorization": "Bearer xyz"}, 2 * S, 6)
        sender = WebhookSender(cfg, "hub-1", on_outcome=outcomes.extend)

        async def main() -> None:
            sender.enqueue(_event(1))
            await _run_sender(sender, lambda: outcomes)

        asyncio.run(main())
        assert outcomes == [(1, "sent")]
        assert len(r.attempts) == 4 and len(r.accepted) == 1
        gaps = [b - a for a, b in zip(r.attempts, r.attempts[1:], strict=False)]
        for gap, expected in zip(gaps, (1.0, 2.0, 4.0), strict=True):  # 1 s, 2 s, 4 s
            assert expected - 0.05 <= gap <= expected + 5.0, gaps  # no sooner; later only by load
        assert r.accepted[0] == {
            "rule": "rule-1",
            "state": "firing",
            "value": 12.5,
            "threshold": 5.0,
            "measure": "calls_per_s",
            "filter": 'dst.ip == "10.0.0.2"',
            "edges": None,
            "since": 999,
            "ts": 1001,
            "description": "d",
            "hub": "hub-1",
        }
        assert r.headers[0]["Authorization"] == "Bearer xyz"
        assert r.headers[0]["Content-Type"].startswith("application/json")
        assert (sender.stats.sent, sender.stats.attempts, sender.stats.retries, sender.stats.failed) == (
            1,
            4,
            3,
            0,
        )


def test_webhook_gives_up_after_its_retries_and_goes_on() -> None:
    assert WebhookSender(WebhookConfig("http://h/"), "h").backoff_s(10) == 60.0  # the cap
    with receiver(fail_first=4, fail_status=500) as r:
        outcomes: list[tuple[int, str]] = []
        sender = WebhookSender(
            WebhookConfig(r.url, {}, S, 2), "h", on_outcome=outcomes.extend, backoff_base_s=0.05
        )

        async def main() -> None:
            sender.enqueue(_event(1))
            sender.enqueue(_event(2, "resolved"))
            await _run_sender(sender, lambda: len(outcomes) == 2)

        asyncio.run(main())
        # event 1: three attempts (the first and 2 retries), all 500; event 2: one 500, then 200
        assert outcomes == [(1, "failed"), (2, "sent")]
        assert [b["rule"] for b in r.bodies] == ["rule-1"] * 3 + ["rule-2"] * 2
        assert (sender.stats.failed, sender.stats.sent, sender.stats.attempts, sender.stats.retries) == (
            1,
            1,
            5,
            3,
        )


def test_webhook_attempt_timeout_counts_as_a_failure() -> None:
    with receiver(delay_s=1.5) as r:
        outcomes: list[tuple[int, str]] = []
        sender = WebhookSender(
            WebhookConfig(r.url, {}, 300_000_000, 1), "h", on_outcome=outcomes.extend, backoff_base_s=0.05
        )

        async def main() -> None:
            sender.enqueue(_event(1))
            await _run_sender(sender, lambda: outcomes)

        asyncio.run(main())
        assert outcomes == [(1, "failed")] and sender.stats.attempts == 2


def test_webhook_queue_is_bounded_oldest_dropped_and_counted() -> None:
    gate = threading.Event()
    with receiver(gate=gate) as r:
        outcomes: list[tuple[int, str]] = []
        sender = WebhookSender(
            WebhookConfig(r.url, {}, 30 * S, 0), "h", on_outcome=outcomes.extend, queue_max=3
        )

        async def main() -> None:
            task = asyncio.get_running_loop().create_task(sender.run())
            try:
                sender.enqueue(_event(1))
                while not r.attempts:  # event 1 is in flight, held by the receiver
                    await asyncio.sleep(0.02)
                for i in range(2, 11):
                    sender.enqueue(_event(i))  # never blocks: 2..7 are dropped, 8..10 wait
                assert len(sender) == 3 and sender.stats.dropped == 6
                gate.set()
                deadline = time.monotonic() + 30
                while len([o for o in outcomes if o[1] == "sent"]) < 4:
                    assert time.monotonic() < deadline, outcomes
                    await asyncio.sleep(0.02)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        asyncio.run(main())
        assert [b["rule"] for b in r.accepted] == ["rule-1", "rule-8", "rule-9", "rule-10"]
        assert sorted(i for i, o in outcomes if o == "dropped") == [2, 3, 4, 5, 6, 7]


def test_undelivered_events_are_sent_after_a_restart(lab: Lab) -> None:
    with receiver(fail_first=-1) as down:
        text = f"webhook: {{url: '{down.url}', retries: 0}}\n" + STORM_RULES
        e = lab.engine(text)
        start = lab.now[0] + 60 * S
        lab.add(make_calls(start, 100, 10, status=503, tag="burst"))
        lab.now[0] = start + 2 * S
        (fired,) = e.evaluate()
        assert fired.rule == "errors"
        e.close()  # the hub stops before the webhook took the event
        lab.engines.remove(e)
    with receiver() as up:
        e2 = lab.engine(f"webhook: {{url: '{up.url}', retries: 0}}\n" + STORM_RULES)
        assert e2.webhook is not None and len(e2.webhook) == 1

        async def main() -> None:
            e2.start()
            try:
                await asyncio.get_running_loop().run_in_executor(None, up.wait_accepted, 1)
                assert e2.webhook is not None
                while e2.webhook.stats.sent < 1:  # the sender has the answer too
                    await asyncio.sleep(0.02)
            finally:
                await e2.stop()

        asyncio.run(main())
        assert up.accepted[0]["rule"] == "errors" and up.accepted[0]["state"] == "firing"
        assert up.accepted[0]["ts"] == fired.ts
    log = AlertLog(lab.root / FILE_NAME)
    try:
        assert log.unsent(10) == []  # marked sent: a third start would not send it again
    finally:
        log.close()


# ---- a real hub process


def _hub_with_rules(tmp_path: Path, text: str) -> Hub:
    rules = tmp_path / "alerts.yaml"
    rules.write_text(text)
    return start_hub(tmp_path, "--alerts", str(rules))


def _wait(what: str, fn: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def _ingest(url: str, calls: list[Call]) -> None:
    """One calls message (one commit), through the ingest WebSocket like a worker."""
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(url + "/api/v1/ingest", headers={"Authorization": f"Bearer {TOKEN}"}) as ws,
    ):
        await ws.send_str(json.dumps({"type": "hello", "worker": "alerts-test", "capabilities": ["calls"]}))
        body = ",".join(c.to_json() for c in calls)
        await ws.send_str(f'{{"type":"calls","seq":1,"calls":[{body}]}}')
        while True:
            msg = json.loads((await asyncio.wait_for(ws.receive(), 30)).data)
            assert msg.get("type") != "error", msg
            if msg.get("type") == "ack":
                return


def _metrics(hub: Hub) -> str:
    import urllib.request

    req = urllib.request.Request(hub.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return str(r.read().decode())


@pytest.mark.timeout(180)
def test_a_hub_fires_posts_survives_a_restart_and_resolves(tmp_path: Path) -> None:
    with receiver(fail_first=1) as r:
        hub = _hub_with_rules(
            tmp_path,
            f"""
webhook: {{url: '{r.url}', timeout: 2s, retries: 3}}
evaluate_every: 1s
rules:
  - name: busy
    description: the api is busy
    filter: 'dst.ip == "10.0.0.2"'
    measure: calls_per_s
    window: 30s
    above: 2
""",
        )
        try:
            status, body = get(hub, "/api/v1/alerts")
            assert status == 200 and body["events"] == []
            assert body["rules"][0]["name"] == "busy" and body["rules"][0]["condition"] == "above 2"
            assert get(hub, "/api/v1/alerts", token=None)[0] == 401
            # 90 calls that started in the last 3 s: 3/s over the 30 s window while all are in it
            now = time.time_ns()
            calls = make_calls(now - 3 * S, 90, 30, tag="hub")
            asyncio.run(_ingest(hub.url, calls))
            (fired,) = r.wait_accepted(1)  # the first attempt was refused: a retry delivered it
            assert len(r.attempts) == 2
            assert (fired["rule"], fired["state"], fired["measure"]) == ("busy", "firing", "calls_per_s")
            assert fired["value"] == pytest.approx(90 / 30) and fired["threshold"] == 2
            assert fired["description"] == "the api is busy" and fired["filter"] == 'dst.ip == "10.0.0.2"'
            assert fired["hub"] and fired["since"] <= fired["ts"]
            body = get(hub, "/api/v1/alerts")[1]
            assert body["rules"][0]["state"] == "firing" and body["rules"][0]["since"] == fired["since"]
            assert body["events"][0]["state"] == "firing" and body["events"][0]["value"] == pytest.approx(3.0)
            lines = (
                "podshark_alerts_firing 1",
                'podshark_alert_events_total{state="firing"} 1',
                "podshark_alert_webhook_sent_total 1",
                "podshark_alert_webhook_retries_total 1",
                'podshark_alert_rule_state{rule="busy",state="firing"} 1',
            )
            _wait("the alerts' metrics", lambda: all(line in _metrics(hub).splitlines() for line in lines))
            hub.stop()
            assert hub.proc.returncode == 0, hub.log.read_text()[-2000:]

            hub = start_hub(tmp_path, "--alerts", str(tmp_path / "alerts.yaml"))
            body = get(hub, "/api/v1/alerts")[1]
            assert body["rules"][0]["state"] == "firing" and body["rules"][0]["since"] == fired["since"]
            # resolved once the calls leave the 30 s window; never fired a second time
            resolved = _wait("the resolved event", lambda: len(r.accepted) >= 2 and r.accepted[1], timeout=60)
            assert (resolved["rule"], resolved["state"], resolved["since"]) == (
                "busy",
                "resolved",
                fired["since"],
            )
            assert resolved["value"] <= 2 and [b["state"] for b in r.accepted] == ["firing", "resolved"]
            body = get(hub, "/api/v1/alerts")[1]
            assert [e["state"] for e in body["events"]] == ["resolved", "firing"]
            assert body["rules"][0]["state"] == "ok"
        finally:
            hub.stop()


def test_a_hub_without_rules_answers_empty(tmp_path: Path) -> None:
    from hub.app import make_app

    async def main() -> dict[str, Any]:
        store = Store(tmp_path / "db")
        runner = web.AppRunner(make_app(store, TOKEN))
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        try:
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1/alerts"
                async with s.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                    assert resp.status == 200
                    body: dict[str, Any] = await resp.json()
                    return body
        finally:
            await runner.cleanup()
            store.close()

    assert asyncio.run(main()) == {"rules": [], "events": []}


def test_podshark_hub_refuses_a_bad_rules_file_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(_rule(name="storm", filter='dst.ip == "'))
    for path, needles in (
        (bad, ["rule 'storm'", "key 'filter'", "at 10"]),
        (tmp_path / "absent.yaml", ["absent.yaml", "cannot be read"]),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "podshark", "hub", "--db", str(tmp_path / "db"), "--alerts", str(path)],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            timeout=60,
        )
        err = r.stderr.decode().strip()
        assert r.returncode == 2, err
        assert len(err.splitlines()) == 1 and err.startswith("podshark: error: alerts file"), err
        for n in needles:
            assert n in err, (n, err)
