"""`GET /api/v1/stats`, `GET /metrics` and per-worker health, against a real hub process.

The oracle for the call statistics is the dissector's own calls for the imported captures
(`dissect_path`), counted here in plain Python; the oracle for the Prometheus text is
prometheus_client's parser (the reference implementation of the format).
"""

from __future__ import annotations

import asyncio
import collections
import json
import urllib.request
from typing import Any

import aiohttp
import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from dissect.engine import dissect_path
from dissect.filter import ERRORS, parse
from dissect.model import STATUS_CLASSES, Call, Endpoint, status_class
from hub.stats import CLASS_SQL
from tests.hub.test_service import FILES, TOKEN, Hub, get, hub  # noqa: F401  (hub is a fixture)

ALL = [c for f in FILES for c in dissect_path(f)]
IS_ERROR = parse(ERRORS)


def _metrics(h: Hub, token: str | None = TOKEN) -> tuple[int, str]:
    req = urllib.request.Request(h.url + "/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def _is_discrete_quantile(value: int, values: list[int], q: float) -> bool:
    """`value` is a q-quantile of `values`: one of them, with at least q of them at or below it and
    fewer than q strictly below."""
    n = len(values)
    at_or_below = sum(v <= value for v in values)
    below = sum(v < value for v in values)
    return value in values and at_or_below >= q * n and below < q * n


# ---- the definitions


@given(
    st.sampled_from(["http", "http2", "grpc", "dns", "kafka", "tls"]),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(-5, 700)),
)
def test_status_class_sql_and_python_agree(protocol: str, status: int | None) -> None:
    row = duckdb.execute(
        f"SELECT {CLASS_SQL} FROM (SELECT ?::VARCHAR AS protocol, ?::BIGINT AS status)", [protocol, status]
    ).fetchone()
    assert row is not None
    assert row[0] == status_class(protocol, status)
    assert row[0] in STATUS_CLASSES


@given(
    st.sampled_from(["http", "http2", "grpc", "dns", "kafka", "tls"]),
    st.one_of(st.none(), st.integers(-5, 700)),
)
def test_errors_filter_is_the_error_classes(protocol: str, status: int | None) -> None:
    call = Call(protocol=protocol, src=Endpoint(ip="10.0.0.1"), dst=Endpoint(ip="10.0.0.2"), status=status)
    assert IS_ERROR.matches(call) == (status_class(protocol, status) in ("5xx", "error"))


# ---- /api/v1/stats


def test_stats_match_the_dissected_calls(hub: Hub) -> None:  # noqa: F811
    status, body = get(hub, "/api/v1/stats", buckets="7", top="3")
    assert status == 200, body
    total = body["total"]
    assert total["calls"] == len(ALL)
    assert total["errors"] == sum(IS_ERROR.matches(c) for c in ALL)
    classes = collections.Counter(status_class(c.protocol, c.status) for c in ALL)
    assert total["status"] == dict(classes)
    starts = [c.ts for c in ALL]
    assert body["window"]["from"] == min(starts) and body["window"]["to"] == max(starts) + 1
    seconds = (max(starts) + 1 - min(starts)) / 1e9
    assert total["rate"] == pytest.approx(len(ALL) / seconds)

    by_proto = collections.defaultdict(list)
    for c in ALL:
        by_proto[c.protocol].append(c)
    got = {p["protocol"]: p for p in body["protocols"]}
    assert set(got) == set(by_proto)
    for proto, calls in by_proto.items():
        p = got[proto]
        assert p["calls"] == len(calls)
        assert p["status"] == dict(collections.Counter(status_class(c.protocol, c.status) for c in calls))
        lat = [c.latency_ns for c in calls if c.latency_ns is not None]
        if lat:
            assert p["latency"]["max"] == max(lat)
            for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
                assert _is_discrete_quantile(p["latency"][key], lat, q), (proto, key)
        else:
            assert p["latency"]["p50"] is None

    series = body["series"]
    assert set(series["protocols"]) == set(by_proto)
    for proto, counts in series["protocols"].items():
        assert len(counts) == 7
        assert sum(counts) == len(by_proto[proto])
    # the bucket of each call is where its start time falls
    expect = collections.Counter(min((c.ts - series["start"]) // series["bucket_ns"], 6) for c in ALL)
    sums = [sum(series["protocols"][p][k] for p in series["protocols"]) for k in range(7)]
    assert sums == [expect.get(k, 0) for k in range(7)]

    servers = collections.Counter(
        f"[{c.dst.ip}]:{c.dst.port}" if ":" in (c.dst.ip or "") else f"{c.dst.ip}:{c.dst.port}" for c in ALL
    )
    top = body["top_servers"]
    assert len(top) == 3
    assert [t["calls"] for t in top] == sorted((n for _, n in servers.most_common()), reverse=True)[:3]
    for t in top:
        assert servers[t["name"]] == t["calls"]
    clients = collections.Counter(c.src.ip for c in ALL)
    assert {t["name"]: t["calls"] for t in body["top_clients"]}.items() <= dict(clients).items()


def test_stats_filter_and_window(hub: Hub) -> None:  # noqa: F811
    dns = [c for c in ALL if c.protocol == "dns"]
    status, body = get(hub, "/api/v1/stats", filter="dns")
    assert status == 200
    assert body["total"]["calls"] == len(dns)
    assert [p["protocol"] for p in body["protocols"]] == ["dns"]

    starts = sorted(c.ts for c in dns)
    lo, hi = starts[len(starts) // 4], starts[3 * len(starts) // 4]
    status, body = get(hub, "/api/v1/stats", filter="dns", **{"from": str(lo), "to": str(hi)})
    assert status == 200
    assert body["total"]["calls"] == sum(lo <= s < hi for s in starts)
    assert body["window"] == {"from": lo, "to": hi, "seconds": pytest.approx((hi - lo) / 1e9)}

    # a window that holds nothing is an answer, not an error
    status, body = get(hub, "/api/v1/stats", **{"from": "1", "to": "2"})
    assert status == 200 and body["total"]["calls"] == 0 and body["protocols"] == []


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ({"filter": "status >= "}, "position"),
        ({"buckets": "0"}, "buckets"),
        ({"buckets": "x"}, "buckets"),
        ({"top": "1000000"}, "top"),
        ({"from": "yesterday-ish"}, "not a time"),
        ({"from": "-1m", "to": "-2m"}, "after"),
    ],
)
def test_stats_bad_parameters_are_400(hub: Hub, query: dict[str, str], needle: str) -> None:  # noqa: F811
    status, body = get(hub, "/api/v1/stats", **query)
    assert status == 400
    assert needle in json.dumps(body)


def test_stats_and_metrics_need_the_token(hub: Hub) -> None:  # noqa: F811
    for token in (None, "wrong"):
        assert get(hub, "/api/v1/stats", token=token)[0] == 401
        assert _metrics(hub, token=token)[0] == 401


# ---- workers and /metrics


def test_worker_health_and_drops_in_stats_and_metrics(hub: Hub) -> None:  # noqa: F811
    async def scenario() -> tuple[list[dict[str, Any]], Any, str]:
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
            s.ws_connect(hub.url + "/api/v1/ingest") as ws,
        ):
            await ws.send_str(json.dumps({"type": "hello", "worker": "node-a", "capabilities": ["calls"]}))
            await ws.send_str(
                json.dumps({"type": "stats", "drops": {"kernel": 7, "spool": 2}, "tls": [{"pid": 1}]})
            )
            await ws.send_str(json.dumps({"type": "stats", "drops": {"kernel": -1}}))  # refused
            await ws.send_str(json.dumps({"type": "calls", "seq": 1, "calls": []}))
            replies: list[dict[str, Any]] = []
            while not any(r.get("type") == "ack" for r in replies):
                replies.append(json.loads((await asyncio.wait_for(ws.receive(), 30)).data))
            _, during = get(hub, "/api/v1/stats")
            _, text = _metrics(hub)
            return replies, during, text

    replies, during, text = asyncio.run(scenario())
    errors = [r for r in replies if r["type"] == "error"]
    assert len(errors) == 1 and "drops" in errors[0]["error"]
    node = {w["name"]: w for w in during["workers"]}["node-a"]
    assert node["connected"] is True
    assert node["drops"] == {"kernel": 7, "spool": 2}  # the refused report did not replace it
    assert node["reported"] == {"tls": [{"pid": 1}]}
    assert node["batches"] == 1 and node["errors"] == 1

    families = {f.name: f for f in text_string_to_metric_families(text)}
    drops = {
        (s.labels["worker"], s.labels["kind"]): s.value
        for s in families["podshark_worker_drops"].samples
        if s.name == "podshark_worker_drops_total"
    }
    assert drops[("node-a", "kernel")] == 7 and drops[("node-a", "spool")] == 2
    connected = {s.labels["worker"]: s.value for s in families["podshark_worker_connected"].samples}
    assert connected["node-a"] == 1

    _, after = get(hub, "/api/v1/stats")
    node = {w["name"]: w for w in after["workers"]}["node-a"]
    assert node["connected"] is False and node["disconnected_ts"] >= node["connected_ts"]
    # the importer that loaded the fixtures is a worker too
    assert {w["name"]: w for w in after["workers"]}["import"]["calls"] >= len(ALL)


def test_metrics_parse_and_count_the_calls(hub: Hub) -> None:  # noqa: F811
    status, text = _metrics(hub)
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    for s in families["podshark_calls"].samples:
        if s.name == "podshark_calls_total":
            calls[(s.labels["protocol"], s.labels["status_class"])] += int(s.value)
    # this module's hub committed each dissected call once (the fixture's imports)
    expect = collections.Counter((c.protocol, status_class(c.protocol, c.status)) for c in ALL)
    assert calls == expect
    hist = families["podshark_call_latency_seconds"]
    counts = {s.labels["protocol"]: s.value for s in hist.samples if s.name.endswith("_count")}
    for proto in {c.protocol for c in ALL}:
        with_latency = [c for c in ALL if c.protocol == proto and c.latency_ns is not None]
        assert counts.get(proto, 0) == len(with_latency)
    ingest = families["podshark_hub_ingest_calls_received"].samples[0].value
    assert ingest == len(ALL)
