"""The hub's per-minute aggregates (hub/aggregates.py).

In-process, on real DuckDB files: the latency histogram against exact percentiles, `edges()` and
`pods()` against sums computed from what the test fed in, the window's minute rule, flushing (before
and after, and across a reopen: the same answers), a reader racing the flush, retention keeping the
file bounded, the bounds on keys, and hostile flow aggregates (Hypothesis).

Against a real `podshark hub` process: `podshark import` of corpus captures and synthetic `flows`
messages over the ingest WebSocket give exactly the edges the dissected calls (`dissect_path`, the
same oracle as tests/hub/test_service.py) and the flows carry; the rows survive a restart; a shorter
`--aggregate-retain` drops old minutes; a flows message acknowledged and then `kill -9` is there after
the restart; hostile flows messages get errors and the stream goes on.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissect.engine import dissect_path
from dissect.model import Call, Endpoint, status_class
from hub.aggregates import (
    FILE_NAME,
    FLOW_DECODER,
    HOUR_NS,
    LATENCY_BOUNDS_NS,
    LATENCY_BUCKETS,
    MINUTE_NS,
    OTHER,
    Aggregates,
    AggregatesError,
    EdgeRow,
    bucket_bounds,
    latency_bucket,
    percentile_ns,
)
from hub.nodes import ClusterRanges, MapNode, node_of
from tests.conftest import FIXTURES, REPO
from tests.hub.test_service import TOKEN, Hub, _env, _free_port, get, podshark

SECOND = 1_000_000_000
DAY = 86_400 * SECOND
# a fixed "now" for the in-process tests: a minute boundary, so minute arithmetic is easy to read
NOW = 1_800_000_000 * SECOND - (1_800_000_000 * SECOND) % MINUTE_NS
CAPTURES = [
    FIXTURES / "http1__zeek_pipelined-requests.pcap",
    FIXTURES / "http1__arkime_http-500-head.pcap",
    FIXTURES / "http2__sv_http2-range.pcap",
    FIXTURES / "dns__zeek_dns-edns-ecs.pcap",
    FIXTURES / "grpc__deepflow_grpc-unary.pcap",
]
CENTURY = "36500d"  # the corpus captures are years old: keep their minutes


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def ep(
    ns: str | None = None, workload: str | None = None, ip: str = "10.1.0.1", port: int | None = None
) -> Endpoint:
    return Endpoint(ip=ip, port=port, namespace=ns, workload=workload)


WEB = ep("shop", "Deployment/web", "10.1.0.1")
API = ep("shop", "Deployment/api", "10.1.0.2", 8080)
DB = ep("data", "StatefulSet/pg", "10.2.0.5", 5432)


def call(
    i: int,
    ts: int,
    src: Endpoint,
    dst: Endpoint,
    status: int | None,
    latency: int | None,
    proto: str = "http",
) -> Call:
    return Call(
        id=f"t/{i}",
        protocol=proto,
        src=src,
        dst=dst,
        request_ts=ts,
        response_ts=None if latency is None else ts + latency,
        status=status,
    ).finish()


def flow(start: int, src: Endpoint, dst: Endpoint, **kw: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "v": 1,
        "start_ts": start,
        "end_ts": start + 10 * SECOND,
        "transport": "tcp",
        "src": msgspec.to_builtins(src),
        "dst": msgspec.to_builtins(dst),
        "protocol": None,
        "bytes": [0, 0],
        "packets": [0, 0],
        "opened": 0,
        "closed": 0,
        "active": 0,
        "resets": 0,
        "retransmissions": [0, 0],
        "rtt_ns_sum": 0,
        "rtt_count": 0,
        "rtt_ns_max": 0,
        "duration_ns_sum": 0,
        "duration_count": 0,
        "duration_ns_max": 0,
    }
    f.update(kw)
    return f


def add_flows(agg: Aggregates, flows: list[dict[str, Any]], now: int) -> int:
    recs = [FLOW_DECODER.decode(json.dumps(f)) for f in flows]
    assert all(agg.flow_problem(r, now) is None for r in recs)
    return agg.add_flows(agg.prepare_flows(recs))


def exact_percentile(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[max(1, math.ceil(q * len(s))) - 1]


def by_key(rows: list[EdgeRow]) -> dict[tuple[str, str, str | None, str], EdgeRow]:
    out = {(r.src.id, r.dst.id, r.protocol, r.transport): r for r in rows}
    assert len(out) == len(rows), "one row per edge"
    return out


@pytest.fixture
def agg(tmp_path: Path) -> Iterator[tuple[Aggregates, Clock]]:
    clock = Clock()
    a = Aggregates(tmp_path / FILE_NAME, clock=clock)
    try:
        yield a, clock
    finally:
        a.close()


# ---- the latency histogram


def test_bucket_bounds_partition_the_line() -> None:
    assert len(LATENCY_BOUNDS_NS) + 1 == LATENCY_BUCKETS
    assert list(LATENCY_BOUNDS_NS) == sorted(set(LATENCY_BOUNDS_NS))
    assert LATENCY_BOUNDS_NS[0] == 4096 and LATENCY_BOUNDS_NS[-1] == 2**36
    for i in range(LATENCY_BUCKETS):
        lo, hi = bucket_bounds(i)
        assert latency_bucket(lo) == i
        if hi is not None:
            assert latency_bucket(hi - 1) == i and latency_bucket(hi) == i + 1
            assert i == 0 or hi / lo <= 2 ** (1 / 3) * 1.0001  # three buckets per octave


@given(
    st.lists(st.integers(0, 2**38), min_size=1, max_size=300),
    st.sampled_from([0.01, 0.5, 0.9, 0.99, 1.0]),
)
def test_percentile_is_the_exact_ones_bucket(latencies: list[int], q: float) -> None:
    hist = [0] * LATENCY_BUCKETS
    for lat in latencies:
        hist[latency_bucket(lat)] += 1
    exact = exact_percentile(latencies, q)
    got = percentile_ns(hist, q)
    assert got is not None and latency_bucket(got) == latency_bucket(exact)
    if LATENCY_BOUNDS_NS[0] <= exact < LATENCY_BOUNDS_NS[-1]:
        assert abs(got - exact) / exact <= 2 ** (1 / 6) - 1 + 1e-4  # geometric middle, integer bounds


def test_empty_histogram_has_no_percentile() -> None:
    assert percentile_ns([0] * LATENCY_BUCKETS, 0.5) is None


# ---- edges and pods from calls and flows


def test_edges_and_pods_sum_what_was_fed(agg: tuple[Aggregates, Clock]) -> None:
    a, clock = agg
    t0 = NOW - 10 * MINUTE_NS
    # web -> api: 300 calls over three minutes, every 7th a 503, every 11th without a response
    web_api: list[Call] = []
    for i in range(300):
        status, lat = (503 if i % 7 == 0 else 200), 200_000 + (i * 7919) % 40_000_000
        if i % 11 == 0:
            status, lat = None, None
        web_api.append(call(i, t0 + i * 600_000_000, WEB, API, status, lat))
    api_db = [
        call(1000 + i, t0 + i * SECOND, API, DB, 0 if i % 5 else 1, 900_000 + i, "kafka") for i in range(50)
    ]
    a.add_calls(web_api + api_db)
    flows = [
        flow(
            t0,
            WEB,
            API,
            protocol="http",
            bytes=[1000, 50_000],
            packets=[10, 40],
            opened=3,
            closed=1,
            active=2,
            rtt_ns_sum=300_000,
            rtt_count=3,
            rtt_ns_max=150_000,
        ),
        flow(
            t0 + 10 * SECOND,
            WEB,
            API,
            protocol="http",
            bytes=[500, 700],
            packets=[5, 6],
            closed=2,
            active=0,
            duration_ns_sum=9 * SECOND,
            duration_count=3,
            duration_ns_max=5 * SECOND,
            retransmissions=[2, 1],
        ),
        # a second pod of the web workload in the same interval: its open connections add up
        flow(
            t0,
            ep("shop", "Deployment/web", "10.1.0.9"),
            API,
            protocol="http",
            bytes=[1, 2],
            packets=[1, 1],
            opened=1,
            active=4,
            resets=1,
        ),
        # traffic nobody dissected, to an address outside the cluster
        flow(
            t0 + MINUTE_NS,
            API,
            ep(ip="93.184.216.34", port=443),
            bytes=[4000, 8000],
            packets=[7, 9],
            opened=1,
        ),
    ]
    add_flows(a, flows, NOW)

    def check(rows: list[EdgeRow]) -> None:
        got = by_key(rows)
        assert set(got) == {
            ("shop/Deployment/web", "shop/Deployment/api", "http", "tcp"),
            ("shop/Deployment/api", "data/StatefulSet/pg", "kafka", "tcp"),
            ("shop/Deployment/api", "external/93.184.216.34", None, "tcp"),
        }
        e = got[("shop/Deployment/web", "shop/Deployment/api", "http", "tcp")]
        classes: dict[str, int] = {}
        for c in web_api:
            k = status_class(c.protocol, c.status)
            classes[k] = classes.get(k, 0) + 1
        assert e.calls == 300 and e.status == classes
        assert e.errors == classes["5xx"]
        lats = [c.latency_ns for c in web_api if c.latency_ns is not None]
        for q, value in ((0.5, e.latency_p50_ns), (0.99, e.latency_p99_ns)):
            assert value is not None and latency_bucket(value) == latency_bucket(exact_percentile(lats, q))
        assert e.bytes == (1501, 50_702) and e.packets == (16, 47)
        assert (e.opened, e.closed, e.resets, e.retransmissions) == (4, 3, 1, 3)
        assert e.active_max == 6  # 2 + 4 open at the end of the first interval
        assert e.rtt_avg_ns == 100_000 and e.duration_avg_ns == 3 * SECOND
        assert e.seconds == 15 * 60
        k = got[("shop/Deployment/api", "data/StatefulSet/pg", "kafka", "tcp")]
        assert k.calls == 50 and k.errors == 10 and k.status == {"ok": 40, "error": 10}
        assert k.bytes == (0, 0) and k.rtt_avg_ns is None
        x = got[("shop/Deployment/api", "external/93.184.216.34", None, "tcp")]
        assert (
            x.dst == MapNode("external", "external/93.184.216.34", None, "93.184.216.34") and x.dst.external
        )
        assert (x.calls, x.bytes, x.packets, x.opened) == (0, (4000, 8000), (7, 9), 1)
        assert x.latency_p50_ns is None

    window = (NOW - 15 * MINUTE_NS, NOW)
    check(a.edges(*window))  # the calls still in memory, the flows in `pending`
    pods = {p.node.id: p for p in a.pods(*window)}
    api = pods["shop/Deployment/api"]
    assert (api.rx_bytes, api.tx_bytes) == (1501 + 8000, 50_702 + 4000)
    assert (api.rx_packets, api.tx_packets) == (16 + 9, 47 + 7)
    assert (api.calls_in, api.calls_out, api.connections_in, api.connections_out) == (300, 50, 4, 1)
    assert (api.errors_in, api.errors_out) == (sum(1 for c in web_api if c.status == 503), 10)
    assert pods["external/93.184.216.34"].rx_bytes == 4000
    clock.now = NOW + MINUTE_NS
    assert a.flush() > 0
    check(a.edges(*window))  # all in `minutes` now
    path = a.path
    a.close()
    with Aggregates(path, clock=clock) as again:
        check(again.edges(*window))


def test_the_window_counts_the_minutes_that_overlap_it(agg: tuple[Aggregates, Clock]) -> None:
    a, _ = agg
    m = NOW - 20 * MINUTE_NS
    a.add_calls([call(i, m + i * MINUTE_NS + 30 * SECOND, WEB, API, 200, 1_000_000) for i in range(5)])

    def calls(lo: int, hi: int) -> int:
        return sum(r.calls for r in a.edges(lo, hi))

    assert calls(m, m + 5 * MINUTE_NS) == 5
    assert calls(m + 1, m + 5 * MINUTE_NS) == 5  # minute m overlaps, counts whole
    assert calls(m + MINUTE_NS, m + 2 * MINUTE_NS + 1) == 2
    assert calls(m + 1, m + 2) == 1  # two nanoseconds still find their minute
    assert calls(m + MINUTE_NS - 1, m + MINUTE_NS + 1) == 2
    assert calls(m + 5 * MINUTE_NS, NOW) == 0
    assert a.edges(m, m) == [] and a.edges(m + MINUTE_NS, m) == []
    (e,) = a.edges(m + 1, m + 2)
    assert e.seconds == 1e-9  # the window's length, whatever it counted


def test_old_minutes_roll_up_into_hours_and_still_add_up(tmp_path: Path) -> None:
    clock = Clock()
    start = (NOW - 3 * DAY) // HOUR_NS * HOUR_NS + 30 * MINUTE_NS  # 90 minutes across two hours
    with Aggregates(tmp_path / FILE_NAME, retain_ns=30 * DAY, clock=clock) as a:
        lats = [100_000 * (1 + i % 50) for i in range(90)]
        a.add_calls(
            [call(i, start + i * MINUTE_NS, WEB, API, 500 if i % 9 == 0 else 200, lats[i]) for i in range(90)]
        )
        add_flows(
            a,
            [
                flow(start + i * MINUTE_NS, WEB, API, protocol="http", bytes=[i, 1], packets=[1, 1], active=i)
                for i in range(90)
            ],
            NOW,
        )
        a.add_calls([call(1000, NOW - HOUR_NS, WEB, API, 200, 1000)])  # recent: stays by minute
        a.flush()
        before = by_key(a.edges(0, NOW))
        assert a.enforce() == 0 and a.health()["rows_rolled_total"] == 90
        after = by_key(a.edges(0, NOW))
        assert after == before
        (e,) = after.values()
        assert e.calls == 91 and e.bytes == (sum(range(90)), 90) and e.active_max == 89
        assert latency_bucket(e.latency_p99_ns or 0) == latency_bucket(exact_percentile([*lats, 1000], 0.99))
        # an old hour counts whole for any window that overlaps it; two hours hold the 90 minutes
        assert [r.calls for r in a.edges(start, start + 1)] == [30]
        assert [r.calls for r in a.edges(start + 30 * MINUTE_NS + 1, start + 30 * MINUTE_NS + 2)] == [60]
        path = a.path
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM minutes").fetchall() == [(1,)]
        assert con.execute("SELECT count(*) FROM hours").fetchall() == [(2,)]
    finally:
        con.close()


def test_calls_out_of_retention_or_from_the_future_are_skipped(agg: tuple[Aggregates, Clock]) -> None:
    a, _ = agg
    a.add_calls(
        [
            call(1, NOW - 31 * DAY, WEB, API, 200, 1000),
            call(2, NOW + DAY, WEB, API, 200, 1000),
            Call(id="t/3", protocol="http", src=WEB, dst=API),  # no timestamp at all
            call(4, NOW - 5 * MINUTE_NS, WEB, API, 200, 1000),
        ]
    )
    assert [r.calls for r in a.edges(0, 2**62)] == [1]
    assert a.health()["calls_skipped_total"] == 3 and a.health()["calls_total"] == 1


def test_a_late_call_for_a_written_minute_adds_a_row(agg: tuple[Aggregates, Clock]) -> None:
    a, clock = agg
    m = NOW - 10 * MINUTE_NS
    a.add_calls([call(1, m, WEB, API, 200, 5_000_000)])
    assert a.flush() == 1
    a.add_calls([call(2, m + SECOND, WEB, API, 500, 50_000_000)])
    assert a.flush() == 1
    (e,) = a.edges(m, m + MINUTE_NS)
    assert e.calls == 2 and e.status == {"2xx": 1, "5xx": 1}
    assert latency_bucket(e.latency_p99_ns or 0) == latency_bucket(50_000_000)
    clock.now += MINUTE_NS
    assert a.flush() == 0  # nothing open, nothing pending


def test_the_current_minute_is_written_after_its_grace(agg: tuple[Aggregates, Clock]) -> None:
    a, clock = agg
    a.add_calls([call(1, NOW + SECOND, WEB, API, 200, 1000)])
    add_flows(a, [flow(NOW + SECOND, WEB, API, protocol="http", bytes=[1, 1], packets=[1, 1])], NOW)
    clock.now = NOW + MINUTE_NS + 5 * SECOND  # over, but within the grace
    assert a.flush() == 0 and a.health()["open_minutes"] == 1
    clock.now = NOW + MINUTE_NS + 11 * SECOND
    assert a.flush() == 1 and a.health()["open_minutes"] == 0  # calls and flows: one row
    (e,) = a.edges(NOW, NOW + MINUTE_NS)
    assert e.calls == 1 and e.bytes == (1, 1)


def test_a_reader_racing_the_flush_sees_every_call_once(agg: tuple[Aggregates, Clock]) -> None:
    a, _ = agg
    start = NOW - 40 * MINUTE_NS
    n = 40 * 25
    a.add_calls([call(i, start + (i // 25) * MINUTE_NS + i, WEB, API, 200, 1000) for i in range(n)])
    done = threading.Event()

    def flusher() -> None:
        try:
            for k in range(1, 41):  # one minute at a time, as the timer would
                a.flush(start + k * MINUTE_NS + 11 * SECOND)
        finally:
            done.set()

    t = threading.Thread(target=flusher)
    t.start()
    seen = []
    while not done.is_set():
        seen.append(sum(r.calls for r in a.edges(start, NOW)))
    t.join()
    seen.append(sum(r.calls for r in a.edges(start, NOW)))
    assert set(seen) == {n}
    assert a.health()["rows_written_total"] == 40


def test_node_cache_follows_the_cluster_ranges(tmp_path: Path) -> None:
    ranges = ClusterRanges(["10.0.0.0/8"])
    with Aggregates(tmp_path / FILE_NAME, ranges=ranges, clock=Clock()) as a:
        outside = ep(ip="172.20.0.9", port=80)
        a.add_calls([call(1, NOW - 5 * MINUTE_NS, WEB, outside, 200, 1000)])
        ranges.report("node-a", ["172.20.0.0/16"])  # a worker says that range is the cluster
        a.add_calls([call(2, NOW - 4 * MINUTE_NS, WEB, outside, 200, 1000)])
        got = {r.dst.id: r.calls for r in a.edges(0, NOW)}
        assert got == {"external/172.20.0.9": 1, "ip/172.20.0.9": 1}


def test_bogus_protocols_and_transports_are_one_edge(agg: tuple[Aggregates, Clock]) -> None:
    a, _ = agg
    t = NOW - 5 * MINUTE_NS
    bogus = [call(i, t + i, WEB, API, 200, 1000, proto="x" * (40 + i)) for i in range(20)]
    bogus += [
        Call(id=f"t/q{i}", protocol="http", transport=f"sctp{i}", src=WEB, dst=API, request_ts=t)
        for i in range(5)
    ]
    a.add_calls(bogus)
    got = {(r.protocol, r.transport): r.calls for r in a.edges(t, NOW)}
    assert got == {("other", "tcp"): 20, ("http", "other"): 5}
    assert a.health()["open_edges"] == 2


def test_keys_past_the_bounds_are_folded_into_other(tmp_path: Path) -> None:
    with Aggregates(tmp_path / FILE_NAME, max_open_keys=3, max_series=5, clock=Clock()) as a:
        clients = [ep("ns", f"Deployment/c{i}", f"10.9.0.{i}") for i in range(10)]
        a.add_calls([call(i, NOW - 5 * MINUTE_NS, c, API, 200, 1000) for i, c in enumerate(clients)])
        rows = a.edges(0, NOW)
        assert sum(r.calls for r in rows) == 10  # nothing lost
        other = [r for r in rows if r.src == OTHER]
        assert len(rows) == 4 and len(other) == 1 and other[0].calls == 7 and other[0].dst == OTHER
        assert a.flush() == 4
        a.add_calls(
            [call(20 + i, NOW - 4 * MINUTE_NS, c, API, 200, 1000) for i, c in enumerate(clients[3:6])]
        )
        a.flush()  # 4 edges numbered, room for one more: the second and third new ones fold
        rows = a.edges(0, NOW)
        assert sum(r.calls for r in rows) == 13 and len(rows) == 5
        assert a.health()["edges"] == 5 and a.health()["folded_total"] >= 9


# ---- retention


STEP = 4  # minutes between the rows of an edge in the retention test


def test_retention_drops_old_minutes_and_the_file_stays_bounded(tmp_path: Path) -> None:
    clock = Clock(NOW)
    with Aggregates(tmp_path / FILE_NAME, retain_ns=3 * DAY, clock=clock) as a:
        sizes = []
        pairs = [
            (ep("a", f"Deployment/c{i}", f"10.3.0.{i}"), ep("b", f"Deployment/s{i}", f"10.4.0.{i}"))
            for i in range(20)
        ]
        per_day = 1440 // STEP * len(pairs)
        for day in range(10):
            base = NOW + day * DAY
            recs = [
                flow(base + m * MINUTE_NS, src, dst, bytes=[m + 1, 2 * m], packets=[1, 1], opened=1)
                for m in range(0, 1440, STEP)
                for src, dst in pairs
            ]
            clock.now = base + DAY
            add_flows(a, recs, clock.now)
            a.flush()
            a.enforce()
            sizes.append(a.size_bytes())
            rows = a.edges(0, 2**62)
            kept_days = min(day + 1, 3)
            assert sum(r.opened for r in rows) == kept_days * per_day
        oldest = clock.now - 3 * DAY
        assert a.edges(0, oldest - HOUR_NS) == []
        assert a.health()["rows_dropped_total"] > 0 and a.health()["rows_rolled_total"] > 0
        # steady state from the fourth day on: the freed blocks are reused, the file does not grow
        assert max(sizes[3:]) <= 1.25 * max(sizes[:4]), sizes


def test_retention_forgets_edges_no_row_uses(tmp_path: Path) -> None:
    clock = Clock()
    with Aggregates(tmp_path / FILE_NAME, retain_ns=DAY, clock=clock) as a:
        a.add_calls([call(1, NOW - 2 * DAY, WEB, API, 200, 1000)])  # skipped: already too old
        a.add_calls([call(2, NOW - 3600 * SECOND, WEB, DB, 200, 1000)])
        a.flush()
        assert a.health()["edges"] == 1
        clock.now = NOW + DAY
        assert a.enforce() == 1 and a.health()["edges"] == 0
        a.add_calls([call(3, clock.now - MINUTE_NS, WEB, DB, 200, 1000)])
        a.flush()  # numbered again
        assert [r.calls for r in a.edges(0, 2**62)] == [1]


def test_a_file_of_another_layout_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    Aggregates(path, clock=Clock()).close()
    import duckdb

    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'layout'")
    con.close()
    with pytest.raises(AggregatesError, match="move the file away"):
        Aggregates(path, clock=Clock())


# ---- hostile flow aggregates, in process

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
FLOW_FIELDS = list(flow(0, WEB, API))


@st.composite
def hostile_flow(draw: st.DrawFn) -> bytes:
    f = flow(NOW - draw(st.integers(-DAY, 40 * DAY)), WEB, API, protocol="http")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 3))
        name = draw(st.sampled_from(FLOW_FIELDS))
        if kind == 0:
            f[name] = draw(JSON)
        elif kind == 1:
            f.pop(name, None)
        elif kind == 2:
            f[name] = draw(st.integers(-(2**64), 2**64))
        else:
            f[name] = [draw(st.integers(-(2**63), 2**63)) for _ in range(draw(st.integers(0, 3)))]
    return json.dumps(f).encode()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(hostile_flow(), min_size=1, max_size=5))
def test_hostile_flows_are_refused_or_counted_never_a_crash(tmp_path: Path, raws: list[bytes]) -> None:
    path = tmp_path / f"h{time.monotonic_ns()}.duckdb"
    with Aggregates(path, clock=Clock()) as a:
        good = []
        for raw in raws:
            try:
                rec = FLOW_DECODER.decode(raw)
            except msgspec.DecodeError:
                continue
            if a.flow_problem(rec, NOW) is None and not a.expired(rec, NOW):
                good.append(rec)
        assert a.add_flows(a.prepare_flows(good)) <= len(good)
        rows = a.edges(0, 2**62)
        sent = sum(r.bytes[0] for r in good)
        got = sum(r.bytes[0] for r in rows)
        assert got == sent if sent <= 2**62 else got <= sent  # a row's counter is clamped at 2**62
        assert sum(r.opened for r in rows) <= sum(r.opened for r in good)
    path.unlink()


def test_the_workers_flow_aggregate_decodes_here() -> None:
    flowstats = pytest.importorskip("dissect.flowstats")
    sample = flowstats.FlowAggregate(
        start_ts=NOW,
        end_ts=NOW + 10 * SECOND,
        transport="tcp",
        src=WEB,
        dst=API,
        protocol="http",
        bytes=[10, 20],
        packets=[1, 2],
        opened=1,
        closed=0,
        active=1,
        resets=0,
        retransmissions=[0, 1],
        rtt_ns_sum=5,
        rtt_count=1,
        rtt_ns_max=5,
        duration_ns_sum=0,
        duration_count=0,
        duration_ns_max=0,
    )
    rec = FLOW_DECODER.decode(msgspec.json.encode(sample))
    assert msgspec.to_builtins(rec) == msgspec.to_builtins(sample)


# ---- a real hub process


def start_agg_hub(db: Path, log: Path, *extra: str, port: int | None = None) -> Hub:
    """A `podshark hub` on loopback with extra options (test_service.start_hub takes none)."""
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "podshark", "hub", "--db", str(db), "--listen", f"127.0.0.1:{port}"]
    argv += ["--batch-interval", "0.2", *extra]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    hub = Hub(proc, url, db, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited {proc.returncode}: {log.read_text()}")
        status = 0
        try:
            status, _ = get(hub, "/healthz", token=None)
        except OSError:
            pass
        if status == 200:
            return hub
        time.sleep(0.1)
    hub.stop()
    raise AssertionError(f"hub did not come up: {log.read_text()}")


async def _send(url: str, messages: list[dict[str, Any] | str], seqs: set[int]) -> list[dict[str, Any]]:
    """One ingest session: hello, the messages, then the replies until every seq in `seqs` is acked."""
    replies: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
        s.ws_connect(url + "/api/v1/ingest") as ws,
    ):
        await ws.send_str(json.dumps({"type": "hello", "worker": "node-t", "capabilities": ["flows"]}))
        for m in messages:
            await ws.send_str(m if isinstance(m, str) else json.dumps(m))
        waiting = set(seqs)
        while waiting:
            msg = await asyncio.wait_for(ws.receive(), 30)
            assert msg.type == aiohttp.WSMsgType.TEXT, f"the hub ended the stream: {msg}"
            replies.append(json.loads(msg.data))
            if replies[-1].get("type") == "ack":
                waiting.discard(replies[-1].get("seq"))
    return replies


def send_flows(hub: Hub, batches: list[list[dict[str, Any]]], first_seq: int = 1) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any] | str] = [
        {"type": "flows", "seq": first_seq + k, "flows": b} for k, b in enumerate(batches)
    ]
    replies = asyncio.run(_send(hub.url, msgs, {first_seq + k for k in range(len(batches))}))
    acks = {r["seq"]: r for r in replies if r["type"] == "ack"}
    for k, b in enumerate(batches):
        assert acks[first_seq + k] == {"type": "ack", "seq": first_seq + k, "flows": len(b), "rejected": 0}, (
            replies
        )
    return replies


def import_capture(hub: Hub, path: Path) -> None:
    r = podshark("import", str(path), "--hub", hub.url, "--batch", "7")
    assert r.returncode == 0, r.stderr.decode()


def read_edges(db: Path, from_ns: int = 0, to_ns: int = 2**62, cidrs: tuple[str, ...] = ()) -> list[EdgeRow]:
    """The stopped hub's aggregates, read from its file."""
    with Aggregates(db / FILE_NAME, retain_ns=36500 * DAY, ranges=ClusterRanges(cidrs)) as a:
        return a.edges(from_ns, to_ns)


def expected_from_calls(
    calls: list[Call], ranges: ClusterRanges
) -> dict[tuple[str, str, str | None, str], dict[str, Any]]:
    out: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
    for c in calls:
        key = (node_of(c.src, ranges).id, node_of(c.dst, ranges).id, c.protocol, c.transport)
        e = out.setdefault(key, {"calls": 0, "status": {}, "latencies": []})
        e["calls"] += 1
        k = status_class(c.protocol, c.status)
        e["status"][k] = e["status"].get(k, 0) + 1
        if c.latency_ns is not None and c.latency_ns >= 0:
            e["latencies"].append(c.latency_ns)
    return out


def edge_flows(
    now: int,
) -> tuple[list[list[dict[str, Any]]], dict[tuple[str, str, str | None, str], dict[str, int]]]:
    """Synthetic flows messages of workloads and an external address, and their per-edge sums."""
    t = (now // MINUTE_NS - 20) * MINUTE_NS
    web2 = ep("shop", "Deployment/web", "10.1.0.7")
    batches = [
        [
            flow(t, WEB, API, protocol="http", bytes=[100, 900], packets=[2, 3], opened=1, active=1),
            flow(t, web2, API, protocol="http", bytes=[50, 60], packets=[1, 1], opened=2, closed=1, resets=1),
            flow(t + 5 * MINUTE_NS, API, DB, bytes=[7000, 3000], packets=[9, 8], opened=4, closed=4),
        ],
        [
            flow(t + MINUTE_NS, WEB, API, protocol="http", bytes=[10, 20], packets=[1, 1], closed=1),
            flow(
                t + 2 * MINUTE_NS,
                API,
                ep(ip="93.184.216.34", port=443),
                protocol="tls",
                bytes=[1234, 5678],
                packets=[4, 5],
                opened=1,
                transport="tcp",
            ),
            flow(
                t + 3 * MINUTE_NS,
                ep("kube-system", "DaemonSet/agent", "10.5.0.2"),
                ep(ip="8.8.4.4", port=53),
                transport="udp",
                protocol="dns",
                bytes=[80, 160],
                packets=[1, 1],
                opened=1,
            ),
        ],
    ]
    sums: dict[tuple[str, str, str | None, str], dict[str, int]] = {}
    for b in batches:
        for f in b:
            src = node_of(Endpoint(**f["src"]), ClusterRanges())
            dst = node_of(Endpoint(**f["dst"]), ClusterRanges())
            s = sums.setdefault((src.id, dst.id, f["protocol"], f["transport"]), {})
            for name in ("opened", "closed", "resets"):
                s[name] = s.get(name, 0) + f[name]
            for name in ("bytes", "packets"):
                for i, d in enumerate(("cs", "sc")):
                    s[f"{name}_{d}"] = s.get(f"{name}_{d}", 0) + f[name][i]
    return batches, sums


@pytest.fixture(scope="module")
def fed_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, int]]:
    """A hub fed the corpus captures and the synthetic flows; yields it and when the flows were made."""
    d = tmp_path_factory.mktemp("agg")
    hub = start_agg_hub(d / "db", d / "hub.log", "--aggregate-retain", CENTURY)
    try:
        now = time.time_ns()
        for path in CAPTURES:
            import_capture(hub, path)
        batches, _ = edge_flows(now)
        send_flows(hub, batches)
        yield hub, now
    finally:
        hub.stop()


def test_hub_edges_are_what_the_calls_and_flows_carried(fed_hub: tuple[Hub, int]) -> None:
    hub, now = fed_hub
    hub.stop()  # SIGTERM: the open minutes are written; the file is free to read
    assert hub.proc.returncode == 0, hub.log.read_text()
    rows = by_key(read_edges(hub.db))
    calls = [c for p in CAPTURES for c in dissect_path(p) if c.ts]  # a call without a time has no minute
    want_calls = expected_from_calls(calls, ClusterRanges())
    _, want_flows = edge_flows(now)
    assert set(rows) == set(want_calls) | set(want_flows)
    for key, w in want_calls.items():
        r = rows[key]
        assert (r.calls, r.status) == (w["calls"], w["status"]), key
        assert r.errors == w["status"].get("5xx", 0) + w["status"].get("error", 0)
        for q, got in ((0.5, r.latency_p50_ns), (0.99, r.latency_p99_ns)):
            if not w["latencies"]:
                assert got is None
            else:
                assert got is not None and latency_bucket(got) == latency_bucket(
                    exact_percentile(w["latencies"], q)
                )
    for key, w in want_flows.items():
        r = rows[key]
        assert (r.opened, r.closed, r.resets) == (w["opened"], w["closed"], w["resets"]), key
        assert r.bytes == (w["bytes_cs"], w["bytes_sc"]) and r.packets == (w["packets_cs"], w["packets_sc"])
        if key not in want_calls:
            assert r.calls == 0
    assert sum(r.calls for r in rows.values()) == len(calls)
    assert any(r.dst.external for r in rows.values())
    assert rows[("kube-system/DaemonSet/agent", "external/8.8.4.4", "dns", "udp")].bytes == (80, 160)

    # restart: the rows are still there, and the restarted hub starts from them
    again = start_agg_hub(hub.db, hub.log, "--aggregate-retain", CENTURY)
    again.stop()
    assert again.proc.returncode == 0
    assert by_key(read_edges(hub.db)) == rows

    # a shorter retention at the next start drops the old minutes (the captures'), keeps the flows'
    size_before = (hub.db / FILE_NAME).stat().st_size
    short = start_agg_hub(hub.db, hub.log, "--aggregate-retain", "1d")
    short.stop()
    kept = by_key(read_edges(hub.db))
    assert set(kept) == set(want_flows)
    assert (hub.db / FILE_NAME).stat().st_size <= size_before


def test_a_flows_message_acked_then_kill_9_is_there_after_the_restart(tmp_path: Path) -> None:
    hub = start_agg_hub(tmp_path / "db", tmp_path / "hub.log")
    try:
        batches, want = edge_flows(time.time_ns())
        send_flows(hub, batches[:1])
        hub.stop(signal.SIGKILL)  # right after the ack
        again = start_agg_hub(hub.db, hub.log)
        again.stop()
        assert again.proc.returncode == 0, hub.log.read_text()
        rows = by_key(read_edges(hub.db))
        web_api = rows[("shop/Deployment/web", "shop/Deployment/api", "http", "tcp")]
        assert web_api.bytes == (150, 960) and web_api.opened == 3  # batch 1 only: 100+50, 900+60
        assert rows[("shop/Deployment/api", "data/StatefulSet/pg", None, "tcp")].bytes == (7000, 3000)
        assert len(rows) == 2 and set(rows) <= set(want)
    finally:
        hub.stop()


def test_flows_with_cluster_cidr_and_worker_ranges(tmp_path: Path) -> None:
    hub = start_agg_hub(tmp_path / "db", tmp_path / "hub.log", "--cluster-cidr", "93.184.216.0/24")
    try:
        t = (time.time_ns() // MINUTE_NS - 3) * MINUTE_NS
        # a worker reports 8.8.4.0/24 as cluster; 1.1.1.1 is outside everything
        stats = {"type": "stats", "drops": {}, "cluster_ranges": ["8.8.4.0/24", "not a cidr"]}
        msgs: list[dict[str, Any] | str] = [
            stats,
            {
                "type": "flows",
                "seq": 1,
                "flows": [
                    flow(t, API, ep(ip="93.184.216.34", port=443), bytes=[1, 1], packets=[1, 1]),
                    flow(t, API, ep(ip="8.8.4.4", port=53), transport="udp", bytes=[2, 2], packets=[1, 1]),
                    flow(t, API, ep(ip="1.1.1.1", port=53), transport="udp", bytes=[3, 3], packets=[1, 1]),
                ],
            },
        ]
        replies = asyncio.run(_send(hub.url, msgs, {1}))
        assert [r for r in replies if r["type"] == "error"] == []
        status, body = get(hub, "/api/v1/stats")
        assert status == 200, body
        (worker,) = [w for w in body["workers"] if w["name"] == "node-t"]
        assert worker["cluster_ranges"] == {"reported": 2, "usable": 1} and worker["flows"] == 3
        hub.stop()
        dsts = {r.dst.id for r in read_edges(hub.db)}
        assert dsts == {"ip/93.184.216.34", "ip/8.8.4.4", "external/1.1.1.1"}
    finally:
        hub.stop()


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    for args, needle in (
        (["--aggregate-retain", "soon"], b"--aggregate-retain wants a duration"),
        (["--cluster-cidr", "10.0.0.0/33"], b"--cluster-cidr wants an address range"),
    ):
        r = podshark("hub", "--db", str(tmp_path / "db"), "--listen", "127.0.0.1:1", *args)
        assert r.returncode == 2 and needle in r.stderr, r.stderr


# ---- hostile flows messages against the real hub


@pytest.fixture(scope="module")
def plain_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("agg-hostile")
    hub = start_agg_hub(d / "db", d / "hub.log")
    try:
        yield hub
    finally:
        hub.stop()


@st.composite
def hostile_message(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # the envelope's fields with arbitrary values
        msg = {"type": "flows", **draw(st.dictionaries(st.sampled_from(["seq", "flows", "worker"]), JSON))}
        return json.dumps(msg)
    if kind == 1:  # flows with a field replaced, missing or out of range
        flows = [json.loads(draw(hostile_flow())) for _ in range(draw(st.integers(1, 4)))]
        return json.dumps({"type": "flows", "seq": draw(st.integers(-(2**70), 2**70)), "flows": flows})
    if kind == 2:  # more bad flows than the hub reports one by one
        return json.dumps({"type": "flows", "seq": 7, "flows": [{"v": 1}] * draw(st.integers(20, 40))})
    return json.dumps({"type": "flows", "seq": 3, "flows": draw(st.lists(JSON, max_size=4))})


_seq = iter(range(10**7, 10**9))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(st.lists(hostile_message(), min_size=1, max_size=4))
def test_hostile_flows_messages_get_errors_and_the_stream_goes_on(plain_hub: Hub, frames: list[str]) -> None:
    seq = next(_seq)
    good = flow((time.time_ns() // MINUTE_NS - 2) * MINUTE_NS, WEB, API, bytes=[1, 2], packets=[1, 1])
    msgs: list[dict[str, Any] | str] = [*frames, {"type": "flows", "seq": seq, "flows": [good]}]
    replies = asyncio.run(_send(plain_hub.url, msgs, {seq}))
    assert {r["type"] for r in replies} <= {"ack", "error"}
    assert all(isinstance(r["error"], str) and r["error"] for r in replies if r["type"] == "error")
    ack = [r for r in replies if r["type"] == "ack" and r["seq"] == seq][-1]
    assert ack == {"type": "ack", "seq": seq, "flows": 1, "rejected": 0}


def test_the_hub_is_healthy_after_the_hostile_flows(plain_hub: Hub) -> None:
    assert get(plain_hub, "/healthz", token=None) == (200, {"ok": True})
    status, body = get(plain_hub, "/api/v1/stats")
    assert status == 200 and body["ingest"]["commit_errors"] == 0
    assert body["ingest"]["flows_received"] >= 1
    plain_hub.stop()
    assert plain_hub.proc.returncode == 0, plain_hub.log.read_text()
