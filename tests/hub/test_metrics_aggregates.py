"""`/metrics` for the aggregates (hub/metrics.py `AggregateCounters`, `render_aggregates`).

Every exposition is read back with prometheus_client's parser (the reference implementation of the
format). In process: only the busiest `top_n` nodes keep their labels and everything else is
`other`, with nothing lost; every series only grows while the ranking changes (what `rate()` needs);
the protocol and edge-series bounds; stale series and stale active-connection gauges go away.
Against a real hub process: the per-edge and per-endpoint counters equal what the imported captures'
calls (the `dissect_path` oracle) and the synthetic flows messages carried, and 60 clients fold into
at most 50 labels plus `other`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dissect.engine import dissect_path
from dissect.model import STATUS_CLASSES
from hub.aggregates import MINUTE_NS
from hub.metrics import (
    ACTIVE_FRESH_NS,
    MAX_PROTOCOLS,
    OTHER,
    STALE_NS,
    AggregateCounters,
    EdgeDelta,
    render_aggregates,
)
from hub.nodes import ClusterRanges
from tests.hub.test_aggregates import (
    API,
    CAPTURES,
    CENTURY,
    Hub,
    edge_flows,
    ep,
    expected_from_calls,
    flow,
    import_capture,
    send_flows,
    start_agg_hub,
)
from tests.hub.test_service import TOKEN

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


def labels_of(samples: Samples, name: str, key: str) -> set[str]:
    return {labels[key] for labels, _ in samples.get(name, [])}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000_000_000

    def __call__(self) -> int:
        return self.now


# ---- in process


def test_only_the_top_nodes_keep_their_labels_and_nothing_is_lost() -> None:
    clock = Clock()
    c = AggregateCounters(top_n=4, clock=clock)
    server = "shop/Deployment/api"
    sent = calls = 0

    def round_of_traffic() -> None:
        nonlocal sent, calls
        # ten clients, client i sending (i + 1) * 1000 bytes and i + 1 calls (one a 5xx)
        for i in range(10):
            d = EdgeDelta(calls={"2xx": i, "5xx": 1}, bytes=((i + 1) * 1000, 10), packets=(2, 1), opened=1)
            c.add(f"shop/Deployment/c{i}", server, "http", "tcp", d)
            sent += (i + 1) * 1000
            calls += i + 1

    round_of_traffic()
    s = parse(render_aggregates(c, {"calls_total": 5}))
    # the first clients seen took the free labels as they came; the rest were counted as `other`
    first = {server, "shop/Deployment/c0", "shop/Deployment/c1", "shop/Deployment/c2"}
    assert labels_of(s, "podshark_endpoint_bytes_total", "endpoint") == first | {OTHER}
    c0 = [x for x in s["podshark_edge_bytes_total"] if x[0]["src"] == "shop/Deployment/c0"]
    assert sum(v for _, v in c0) == 1000 + 10
    assert total(s, "podshark_aggregates_calls_total") == 5

    clock.now += MINUTE_NS  # the next wall-clock minute re-ranks by the last minutes' traffic
    round_of_traffic()
    s = parse(render_aggregates(c, {}))
    busiest = {server, "shop/Deployment/c9", "shop/Deployment/c8", "shop/Deployment/c7"}
    assert c.top() == busiest and total(s, "podshark_metrics_top_endpoints") == 4
    assert labels_of(s, "podshark_endpoint_bytes_total", "endpoint") == first | busiest | {OTHER}
    c9 = [x for x in s["podshark_edge_bytes_total"] if x[0]["src"] == "shop/Deployment/c9"]
    assert sum(v for _, v in c9) == 10_000 + 10  # its second round only: the first went to `other`
    assert total(s, "podshark_edge_bytes_total", direction="client_to_server") == sent
    assert total(s, "podshark_edge_calls_total") == calls
    assert total(s, "podshark_edge_calls_total", status_class="5xx") == 20
    assert total(s, "podshark_endpoint_bytes_total", direction="tx") == sent + 20 * 10
    assert total(s, "podshark_endpoint_bytes_total", endpoint=server, direction="rx") == sent
    assert total(s, "podshark_endpoint_call_errors_total", endpoint=server, role="server") == 20
    assert total(s, "podshark_endpoint_connections_opened_total", role="client") == 20


def test_series_only_grow_while_the_ranking_changes() -> None:
    clock = Clock()
    c = AggregateCounters(top_n=2, rank_minutes=3, clock=clock)
    previous: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    added = 0
    for minute in range(12):
        # the busy client changes every few minutes
        for i in range(5):
            weight = 10_000 if i == (minute // 3) % 5 else 10
            c.add(f"ns/Deployment/c{i}", "ns/Deployment/s", "grpc", "tcp", EdgeDelta(bytes=(weight, 0)))
            added += weight
        s = parse(render_aggregates(c, {}))
        now = {(name, tuple(sorted(lab.items()))): v for name, rows in s.items() for lab, v in rows}
        for key, value in previous.items():
            if key in now:
                assert now[key] >= value, key
        # what was counted this minute went to at most top_n labels besides `other`
        grew = {
            dict(lab)["endpoint"]
            for (name, lab), v in now.items()
            if name == "podshark_endpoint_bytes_total" and v > previous.get((name, lab), 0)
        }
        assert len(grew - {OTHER}) <= 2, grew
        previous = now
        assert total(s, "podshark_edge_bytes_total", direction="client_to_server") == added
        clock.now += MINUTE_NS


def test_protocols_edge_series_and_stale_series_are_bounded() -> None:
    clock = Clock()
    c = AggregateCounters(top_n=100, clock=clock, max_edge_series=30)
    for i in range(MAX_PROTOCOLS + 8):
        c.add("a/Deployment/x", "a/Deployment/y", f"p{i}", "tcp", EdgeDelta(calls={"ok": 1}))
    s = parse(render_aggregates(c, {}))
    protocols = labels_of(s, "podshark_edge_calls_total", "protocol")
    assert OTHER in protocols and len(protocols) <= MAX_PROTOCOLS + 1
    for i in range(50):
        c.add(f"a/Deployment/c{i}", "a/Deployment/y", "http", "tcp", EdgeDelta(calls={"2xx": 1}))
    s = parse(render_aggregates(c, {}))
    assert len({tuple(sorted(lab.items())) for lab, _ in s["podshark_edge_packets_total"]}) <= 2 * (30 + 1)
    assert total(s, "podshark_edge_calls_total") == MAX_PROTOCOLS + 8 + 50
    assert c.folded_edges > 0
    clock.now += STALE_NS + MINUTE_NS
    c.add("b/Deployment/x", "b/Deployment/y", "http", "tcp", EdgeDelta(calls={"2xx": 1}))
    s = parse(render_aggregates(c, {}))
    assert labels_of(s, "podshark_edge_calls_total", "src") == {"b/Deployment/x"}


def test_active_connections_are_summed_and_expire() -> None:
    clock = Clock()
    c = AggregateCounters(top_n=1, clock=clock)
    c.add("a/Deployment/big", "a/Deployment/s", None, "tcp", EdgeDelta(bytes=(10**6, 0), active=3))
    clock.now += MINUTE_NS
    c.add("a/Deployment/c1", "a/Deployment/s", None, "tcp", EdgeDelta(bytes=(5, 0), active=2))
    c.add("a/Deployment/c2", "a/Deployment/s", None, "tcp", EdgeDelta(bytes=(5, 0), active=4))
    s = parse(render_aggregates(c, {}))
    gauges = {(lab["src"], lab["dst"]): v for lab, v in s["podshark_edge_connections_active"]}
    # one label kept (the server's traffic is the sum of all): every client is `other`
    assert gauges == {(OTHER, "a/Deployment/s"): 9}
    assert {lab["protocol"] for lab, _ in s["podshark_edge_connections_active"]} == {"none"}
    clock.now += ACTIVE_FRESH_NS + 1
    s = parse(render_aggregates(c, {}))
    assert s.get("podshark_edge_connections_active", []) == []


# ---- a real hub


def scrape(hub: Hub, token: str | None = TOKEN) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(hub.url + "/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape_until(hub: Hub, done: Any, timeout: float = 60) -> Samples:
    """/metrics until `done(samples)`: the calls' minutes are counted when the hub flushes them."""
    deadline = time.monotonic() + timeout
    while True:
        status, text = scrape(hub)
        assert status == 200, text
        s = parse(text)
        if done(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.5)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("agg-metrics")
    h = start_agg_hub(d / "db", d / "hub.log", "--aggregate-retain", CENTURY)
    try:
        yield h
    finally:
        h.stop()


# the DNS capture alone has 44 addresses: with it, some nodes would be `other` (tested in process)
FEW_NODES = [p for p in CAPTURES if not p.name.startswith("dns")]


def test_metrics_count_what_the_calls_and_flows_carried(hub: Hub) -> None:
    for path in FEW_NODES:
        import_capture(hub, path)
    batches, want_flows = edge_flows(time.time_ns())
    send_flows(hub, batches)
    calls = [c for p in FEW_NODES for c in dissect_path(p) if c.ts]
    s = scrape_until(hub, lambda s: total(s, "podshark_edge_calls_total") >= len(calls))
    assert total(s, "podshark_edge_calls_total") == len(calls)
    assert total(s, "podshark_aggregates_calls_total") == len(calls)
    import_capture(hub, FEW_NODES[0])  # again (it returns once acknowledged): stored once, counted once
    again = parse(scrape(hub)[1])
    assert total(again, "podshark_edge_calls_total") == len(calls)
    assert total(again, "podshark_aggregates_calls_total") == len(calls)
    want_calls = expected_from_calls(calls, ClusterRanges())
    for (src, dst, protocol, transport), w in want_calls.items():
        for cls in STATUS_CLASSES:
            got = total(
                s,
                "podshark_edge_calls_total",
                src=src,
                dst=dst,
                protocol=protocol or "none",
                transport=transport,
                status_class=cls,
            )
            assert got == w["status"].get(cls, 0), (src, dst, protocol, cls)
    rx: dict[str, int] = {}
    tx: dict[str, int] = {}
    for (src, dst, protocol, transport), w in want_flows.items():
        edge = {"src": src, "dst": dst, "protocol": protocol or "none", "transport": transport}
        assert total(s, "podshark_edge_bytes_total", **edge, direction="client_to_server") == w["bytes_cs"]
        assert total(s, "podshark_edge_bytes_total", **edge, direction="server_to_client") == w["bytes_sc"]
        assert (
            total(s, "podshark_edge_packets_total", **edge, direction="client_to_server") == w["packets_cs"]
        )
        assert total(s, "podshark_edge_connections_opened_total", **edge) == w["opened"]
        assert total(s, "podshark_edge_connections_closed_total", **edge) == w["closed"]
        assert total(s, "podshark_edge_resets_total", **edge) == w["resets"]
        tx[src] = tx.get(src, 0) + w["bytes_cs"]
        rx[src] = rx.get(src, 0) + w["bytes_sc"]
        rx[dst] = rx.get(dst, 0) + w["bytes_cs"]
        tx[dst] = tx.get(dst, 0) + w["bytes_sc"]
    for node, n in rx.items():
        assert total(s, "podshark_endpoint_bytes_total", endpoint=node, direction="rx") == n, node
        assert total(s, "podshark_endpoint_bytes_total", endpoint=node, direction="tx") == tx[node], node
    assert OTHER not in labels_of(s, "podshark_endpoint_bytes_total", "endpoint")  # under 50 nodes
    assert total(s, "podshark_hub_ingest_flows_received_total") == sum(len(b) for b in batches)
    assert total(s, "podshark_aggregates_flush_errors_total") == 0
    status, text = scrape(hub, token="wrong")
    assert status == 401 and "podshark_edge" not in text


def test_sixty_clients_fold_into_fifty_labels_and_other(tmp_path: Path) -> None:
    h = start_agg_hub(tmp_path / "db", tmp_path / "hub.log")
    try:
        t = (time.time_ns() // MINUTE_NS - 2) * MINUTE_NS
        clients = [ep("load", f"Deployment/c{i:02}", f"10.7.0.{i}") for i in range(60)]
        flows = [
            flow(t, c, API, bytes=[1000 + i, 7], packets=[1, 1], opened=1) for i, c in enumerate(clients)
        ]
        before = time.time_ns() // MINUTE_NS
        send_flows(h, [flows[:30], flows[30:]])
        s = scrape_until(h, lambda s: total(s, "podshark_edge_connections_opened_total") >= 60, timeout=30)
        crossed = time.time_ns() // MINUTE_NS != before  # a new minute re-ranks: more labels may start
        endpoints = labels_of(s, "podshark_endpoint_bytes_total", "endpoint")
        assert OTHER in endpoints and (len(endpoints) == 51 or (crossed and 51 <= len(endpoints) <= 101))
        assert "shop/Deployment/api" in endpoints  # the server: all the traffic goes through it
        assert (
            total(s, "podshark_endpoint_bytes_total", direction="tx")
            == sum(1000 + i for i in range(60)) + 60 * 7
        )
        assert total(s, "podshark_edge_connections_opened_total") == 60
        assert total(s, "podshark_metrics_top_endpoints") == 50
    finally:
        h.stop()
