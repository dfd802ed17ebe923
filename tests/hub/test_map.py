"""The service map, `GET /api/v1/map` and `podshark map`, against a real hub process.

Two kinds of traffic go in:

- corpus captures imported with `podshark import` (no Kubernetes identity: address nodes, several
  clients and servers, public addresses among them, timestamps from years ago), whose map comes from
  the calls (`source=calls`);
- calls this test makes with the identity it chooses (namespace, workload, pod, service, node) and
  distinct latencies, sent through the ingest WebSocket like a worker's.

The oracle is built here from what went in: the dissector's calls of each capture, or the test's
own calls, grouped by an independent spelling of the node rules (a workload, else a pod, else a
service, else a node, else the address — external unless inside the cluster ranges, which the test
lists itself), with rates over the window the test asked for, errors by `dissect.model.status_class`
and percentiles checked by their definition. Every edge's `filter` is run through /api/v1/calls: it
must return exactly that edge's calls, and the edges together every call of the window once.

DOT output is checked with a small parser of the DOT grammar below (the `dot` binary too, when
Graphviz is installed).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import json
import math
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect.engine import dissect_path
from dissect.filter import parse
from dissect.model import Call, Endpoint, Message, status_class
from hub.mapping import edge_filter, from_calls, from_edge_rows, node_key_sql
from hub.nodes import ClusterRanges, MapNode, node_of
from hub.store import Store
from podshark.map_cmd import dot_quote
from tests.conftest import FIXTURES, REPO
from tests.hub.test_service import TOKEN, Hub, _env, _free_port, get, hub_argv, import_ok, podshark

CORPUS_FILES = [
    FIXTURES / "mixed__zeek_wikipedia.pcap",  # public clients and servers, DNS, multicast, IPv6
    FIXTURES / "http1__zeek_pipelined-requests.pcap",  # 192.168 client -> public server
    FIXTURES / "demo__podshark_demo.pcap",  # 198.18 (inside): loadgen, frontend, api, inventory, dns
    FIXTURES / "grpc__deepflow_grpc-unary.pcap",
    FIXTURES / "http1__arkime_http-500-head.pcap",
]
OLD_FROM = 946684800 * 10**9  # 2000-01-01: before every capture
# inside the cluster when none is configured: the private, shared, loopback, link-local and
# benchmarking ranges (the rule in hub/nodes.py's docstring, written out here)
DEFAULT_INSIDE = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "198.18.0.0/15",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
]


# ---- the oracle


def inside(ip: str, nets: list[Any]) -> bool:
    a = ipaddress.ip_address(ip)
    return any(a.version == n.version and a in n for n in nets)


def expected_node(ep: Endpoint, nets: list[Any]) -> str:
    """The node id, spelled from the rules (not from hub.nodes)."""
    ns = ep.namespace or ""
    if ep.workload:
        return f"{ns}/{ep.workload}"
    if ep.pod:
        return f"{ns}/pod/{ep.pod}"
    if ep.service:
        return f"{ns}/svc/{ep.service}"
    assert ep.ip  # (the node a process ran on does not name the address)
    return ("ip/" if inside(ep.ip, nets) else "external/") + ep.ip


EdgeKey = tuple[str, str, str, str]


def edge_key(c: Call, nets: list[Any]) -> EdgeKey:
    return (expected_node(c.src, nets), expected_node(c.dst, nets), c.protocol, c.transport)


def is_discrete_quantile(value: int, values: list[int], q: float) -> bool:
    """`value` is a q-quantile of `values`: one of them, with at least q of them at or below it and
    fewer than q strictly below."""
    n = len(values)
    return (
        value in values
        and sum(v <= value for v in values) >= q * n
        and sum(v < value for v in values) < q * n
    )


def check_edges(body: dict[str, Any], calls: list[Call], nets: list[Any], seconds: float) -> None:
    """The map's edges are exactly the calls' edges, with their numbers."""
    groups: dict[EdgeKey, list[Call]] = collections.defaultdict(list)
    for c in calls:
        groups[edge_key(c, nets)].append(c)
    got = {(e["src"], e["dst"], e["protocol"], e["transport"]): e for e in body["edges"]}
    assert set(got) == set(groups)
    assert body["seconds"] == pytest.approx(seconds)
    for key, cs in groups.items():
        e = got[key]
        assert e["calls"] == len(cs), key
        assert e["calls_per_s"] == pytest.approx(len(cs) / seconds), key
        errors = sum(status_class(c.protocol, c.status) in ("5xx", "error") for c in cs)
        assert e["errors"] == errors, key
        assert e["error_rate"] == pytest.approx(errors / len(cs)), key
        classes = collections.Counter(status_class(c.protocol, c.status) for c in cs)
        assert e["status"] == dict(classes), key
        lat = [c.latency_ns for c in cs if c.latency_ns is not None]
        if lat:
            for q, name in ((0.5, "p50_ms"), (0.99, "p99_ms")):
                ns = round(e[name] * 1e6)
                assert is_discrete_quantile(ns, lat, q), (key, name, e[name], sorted(lat))
        else:
            assert e["p50_ms"] is None and e["p99_ms"] is None
        up = sum(c.request.wire_size for c in cs if c.request is not None)
        down = sum(c.response.wire_size for c in cs if c.response is not None)
        assert e["bytes"] == [up, down], key
        assert e["bytes_per_s"] == pytest.approx((up + down) / seconds), key
        assert e["connections"] == len({c.flow_id for c in cs if c.flow_id}), key
    ids = {n["id"]: n for n in body["nodes"]}
    assert set(ids) == {k[0] for k in groups} | {k[1] for k in groups}
    for node_id, n in ids.items():
        assert n["external"] == node_id.startswith("external/") == (n["kind"] == "external")


def check_filters(hub: Hub, body: dict[str, Any], calls: list[Call], window: dict[str, str]) -> None:
    """Each edge's filter selects exactly its calls; together they select every call once."""
    nets_calls: dict[str, set[str]] = {}
    for e in body["edges"]:
        assert e["filter"], e
        status, page = get(hub, "/api/v1/calls", filter=e["filter"], limit="10000", **window)
        assert status == 200, page
        ids = {c["id"] for c in page["calls"]}
        assert len(ids) == e["calls"], e
        nets_calls[e["filter"]] = ids
    seen = [i for ids in nets_calls.values() for i in ids]
    assert len(seen) == len(set(seen)) == len(calls)
    assert set(seen) == {c.id for c in calls}


# ---- hub processes


def start_hub(d: Path, *extra: str) -> Hub:
    """A hub process like tests/hub/test_service.start_hub, with extra options."""
    port = _free_port()
    log = d / "hub.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*hub_argv(d / "db", port), *extra], cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
    h = Hub(proc, f"http://127.0.0.1:{port}", d / "db", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(h.url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return h
        except OSError:
            time.sleep(0.1)
    h.stop()
    raise AssertionError(f"hub did not come up: {log.read_text()}")


async def _send(url: str, calls: list[Call], batch: int = 50) -> None:
    """The calls through the ingest WebSocket as a worker sends them; returns once all are acked."""
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(url + "/api/v1/ingest", headers={"Authorization": f"Bearer {TOKEN}"}) as ws,
    ):
        await ws.send_str(json.dumps({"type": "hello", "worker": "map-test", "capabilities": ["calls"]}))
        last = 0
        for i in range(0, len(calls), batch):
            last += 1
            body = ",".join(c.to_json() for c in calls[i : i + batch])
            await ws.send_str(f'{{"type":"calls","seq":{last},"calls":[{body}]}}')
        while True:
            msg = await asyncio.wait_for(ws.receive(), 60)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            m = json.loads(msg.data)
            assert m.get("type") != "error", m
            if m.get("type") == "ack" and m.get("seq") == last:
                assert m.get("rejected", 0) == 0, m
                return


# ---- the calls this test makes, with identity

NOW = time.time_ns()
T0 = NOW - 5 * 60 * 10**9  # five minutes ago: inside the default window


def _ep(ip: str, **identity: Any) -> Endpoint:
    return Endpoint(ip=ip, **identity)


WEB = dict(namespace="shop", workload="Deployment/web", pod="web-5d9c7-abcde")
API = dict(namespace="shop", workload="Deployment/api", pod="api-7f9-xyz", service="api")
INV = dict(namespace="shop", workload="StatefulSet/inventory", pod="inventory-0", service="inventory")
DNS = dict(namespace="kube-system", workload="Deployment/coredns", pod="coredns-1", service="kube-dns")
DEBUG = dict(namespace="shop", pod="debug")  # a bare pod
LEGACY = dict(namespace="shop", service="legacy")  # a service whose endpoints are unknown pods
HOST = dict(node="node-a", process="kubelet")  # a hostNetwork process: named by its address


def identity_calls() -> list[Call]:
    """Known edges with known numbers; every latency distinct, so percentiles have one answer."""
    out: list[Call] = []
    n = 0

    def add(
        src: Endpoint, dst: Endpoint, protocol: str, count: int, status: Any, transport: str = "tcp"
    ) -> None:
        nonlocal n
        for i in range(count):
            n += 1
            start = T0 + n * 1_000_000_000 // 7
            st_ = status(i) if callable(status) else status
            out.append(
                Call(
                    id=f"map-test/{n:05d}",
                    protocol=protocol,
                    transport=transport,
                    src=src,
                    dst=dst,
                    request_ts=start,
                    response_ts=start + 1_000_000 + n * 37_000,
                    method="GET",
                    target=f"/x/{i}",
                    status=st_,
                    request=Message(wire_size=100 + i),
                    response=Message(wire_size=1000 + 3 * i),
                    flow_id=f"map-test/{protocol}/{n % 4}",
                ).finish()
            )

    web, api = _ep("10.1.0.7", port=51000, **WEB), _ep("10.1.0.9", port=8080, **API)
    add(web, api, "http", 120, lambda i: 500 if i % 40 == 0 else 200)
    add(web, _ep("10.1.0.11", port=50051, **INV), "grpc", 60, lambda i: 5 if i % 6 == 0 else 0)
    add(web, _ep("10.96.0.10", port=53, **DNS), "dns", 30, 0, transport="udp")
    add(web, _ep("10.96.0.10", port=53, **DNS), "dns", 3, 0, transport="tcp")  # same pair, other transport
    add(_ep("10.1.0.20", port=40000, **DEBUG), _ep("93.184.216.34", port=80), "http", 7, 200)  # egress
    add(_ep("10.1.0.21", port=40001), _ep("10.96.0.50", port=80, **LEGACY), "http", 5, 404)
    add(_ep("192.168.5.1", port=40002, **HOST), api, "http", 4, 200)
    # a response that never came: no latency, no response bytes
    out.append(
        Call(
            id="map-test/99999",
            protocol="http",
            src=web,
            dst=api,
            request_ts=T0 + 10**9,
            method="GET",
            target="/lost",
            request=Message(wire_size=77),
            flow_id="map-test/lost",
        ).finish()
    )
    return out


IDENTITY_CALLS = identity_calls()


@dataclass
class Loaded:
    hub: Hub
    corpus: list[Call]
    identity: list[Call]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    d = tmp_path_factory.mktemp("maphub")
    h = start_hub(d)
    try:
        corpus = []
        for f in CORPUS_FILES:
            import_ok(h, f)
            corpus += list(dissect_path(f))
        asyncio.run(_send(h.url, IDENTITY_CALLS))
        yield Loaded(h, corpus, IDENTITY_CALLS)
    finally:
        h.stop()


def _window(lo: int, hi: int) -> dict[str, str]:
    return {"from": str(lo), "to": str(hi)}


# ---- the calls path


def test_corpus_map_from_calls_matches_the_captures(loaded: Loaded) -> None:
    hi = T0 - 60 * 10**9  # before the identity calls
    window = _window(OLD_FROM, hi)
    status, body = get(loaded.hub, "/api/v1/map", source="calls", **window)
    assert status == 200, body
    assert body["source"] == "calls" and body["from"] == OLD_FROM and body["to"] == hi
    check_edges(body, loaded.corpus, DEFAULT_INSIDE, (hi - OLD_FROM) / 1e9)
    check_filters(loaded.hub, body, loaded.corpus, window)
    # without a filter a hub would take its aggregates, but they never counted traffic this old
    status, auto = get(loaded.hub, "/api/v1/map", **window)
    assert status == 200 and auto == body
    ext = {n["name"] for n in body["nodes"] if n["external"]}
    # public servers and clients of the wikipedia capture, the pipelined capture's server, multicast
    assert {"208.80.152.3", "141.142.220.118", "63.245.209.11", "224.0.0.251", "ff02::fb"} <= ext
    internal = {n["name"] for n in body["nodes"] if n["kind"] == "ip"}
    assert {"192.168.1.104", "198.18.61.11", "fe80::3074:17d5:2052:c324"} <= internal
    assert not internal & ext


def test_identity_map_from_calls(loaded: Loaded) -> None:
    window = _window(T0 - 10**9, NOW + 3600 * 10**9)
    status, body = get(loaded.hub, "/api/v1/map", source="calls", **window)
    assert status == 200, body
    check_edges(body, loaded.identity, DEFAULT_INSIDE, 3601 + 5 * 60)
    check_filters(loaded.hub, body, loaded.identity, window)
    kinds = {n["id"]: n["kind"] for n in body["nodes"]}
    assert kinds["shop/Deployment/web"] == "workload"
    assert kinds["shop/pod/debug"] == "pod"
    assert kinds["shop/svc/legacy"] == "service"
    assert kinds["ip/192.168.5.1"] == "ip"  # the node a process ran on does not name the address
    assert kinds["external/93.184.216.34"] == "external"
    assert kinds["ip/10.1.0.21"] == "ip"
    dns = [e for e in body["edges"] if e["protocol"] == "dns"]
    assert sorted(e["transport"] for e in dns) == ["tcp", "udp"]  # one edge per transport
    web_api = next(e for e in body["edges"] if e["dst"] == "shop/Deployment/api" and e["src"].endswith("web"))
    assert web_api["calls"] == 121 and web_api["errors"] == 3 and web_api["connections"] == 5
    # the busiest first
    assert [e["calls"] for e in body["edges"]] == sorted((e["calls"] for e in body["edges"]), reverse=True)


@pytest.mark.parametrize(
    "text", ["http", "status >= 500 or status == 5", 'dst.namespace == "shop" and latency > 2ms', "not dns"]
)
def test_a_filter_maps_the_matching_calls(loaded: Loaded, text: str) -> None:
    window = _window(OLD_FROM, NOW + 3600 * 10**9)
    status, body = get(loaded.hub, "/api/v1/map", filter=text, **window)
    assert status == 200, body
    assert body["source"] == "calls"  # the aggregates cannot answer a filter
    flt = parse(text)
    want = [c for c in loaded.corpus + loaded.identity if flt.matches(c)]
    assert want
    check_edges(body, want, DEFAULT_INSIDE, (NOW + 3600 * 10**9 - OLD_FROM) / 1e9)
    # an edge's filter combined with the map's filter gives that edge's calls of the filtered map
    for e in body["edges"][:5]:
        combined = f"({text}) and ({e['filter']})"
        status, page = get(loaded.hub, "/api/v1/calls", filter=combined, limit="10000", **window)
        assert status == 200 and len(page["calls"]) == e["calls"]


def test_limit_keeps_the_busiest_edges(loaded: Loaded) -> None:
    window = _window(T0 - 10**9, NOW + 3600 * 10**9)
    _, full = get(loaded.hub, "/api/v1/map", source="calls", **window)
    status, body = get(loaded.hub, "/api/v1/map", source="calls", limit="2", **window)
    assert status == 200
    assert body["edges"] == full["edges"][:2]
    assert body["edges_omitted"] == len(full["edges"]) - 2
    assert {n["id"] for n in body["nodes"]} == {x for e in body["edges"] for x in (e["src"], e["dst"])}


def test_default_window_is_the_last_15_minutes(loaded: Loaded) -> None:
    before = time.time_ns()
    status, body = get(loaded.hub, "/api/v1/map", source="calls")
    assert status == 200
    assert body["seconds"] == 900.0 and body["to"] >= before
    # the identity calls are five minutes old; the captures are years old
    assert sum(e["calls"] for e in body["edges"]) == len(loaded.identity)
    status, body = get(loaded.hub, "/api/v1/map")
    assert status == 200 and body["seconds"] == 900.0
    assert body["source"] == "aggregates"  # no filter, a window the aggregates keep
    assert sum(e["calls"] for e in body["edges"]) == len(loaded.identity)


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ({"from": "yesterday"}, "not a time"),
        ({"to": "banana"}, "not a time"),
        ({"from": "-5m", "to": "-10m"}, "to must be after from"),
        ({"from": "99999999999999999999999"}, "outside the years"),
        ({"from": "-1000000d"}, "outside the years"),
        ({"limit": "0"}, "limit must be between"),
        ({"limit": "many"}, "limit must be an integer"),
        ({"source": "magic"}, "source must be one of"),
        ({"source": "aggregates", "filter": "http"}, "aggregates cannot answer a filter"),
    ],
)
def test_bad_parameters_are_400_with_the_reason(loaded: Loaded, query: dict[str, str], needle: str) -> None:
    status, body = get(loaded.hub, "/api/v1/map", **query)
    assert status == 400 and needle in body["error"], body


def test_filter_error_names_position_and_expected(loaded: Loaded) -> None:
    status, body = get(loaded.hub, "/api/v1/map", filter="http and status = 200")
    assert status == 400 and body["position"] == 16 and '"=="' in body["error"]
    status, body = get(loaded.hub, "/api/v1/map", filter="status ==")
    assert status == 400 and body["position"] == 9 and body["expected"] == "a value"
    status, body = get(loaded.hub, "/api/v1/map", filter='target == "x\'; DROP TABLE calls; --"')
    assert status == 200 and body["edges"] == []
    assert get(loaded.hub, "/api/v1/map", token="wrong")[0] == 401


_PARAM = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["-5m", "now", "0", "2025-11-21T10:00:00Z", "9" * 25, "-1h30m", "calls", "5"]),
)


@given(st.dictionaries(st.sampled_from(["from", "to", "limit", "source", "filter"]), _PARAM, max_size=5))
def test_any_parameters_parse_or_say_why(query: dict[str, str]) -> None:
    """Whatever the query string holds, the answer is a query or a 400 with a reason, never a 500."""
    from dissect.filter import FilterError
    from hub.api import BadRequest
    from hub.mapping import MAX_LIMIT, parse_query

    try:
        mq = parse_query(query, NOW)
    except (BadRequest, FilterError) as e:
        assert str(e)
        return
    assert 0 <= mq.from_ns < mq.to_ns < 2**63 and 1 <= mq.limit <= MAX_LIMIT


# ---- podshark map


def test_cli_json_is_the_api_answer(loaded: Loaded) -> None:
    args = ["--from", str(T0 - 10**9), "--to", str(NOW + 3600 * 10**9), "--source", "calls"]
    r = podshark("map", "--hub", loaded.hub.url, *args, "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    _, api = get(loaded.hub, "/api/v1/map", source="calls", **_window(T0 - 10**9, NOW + 3600 * 10**9))
    assert json.loads(r.stdout) == api
    r = podshark("map", "--hub", loaded.hub.url, *args)  # not a terminal: json too
    assert json.loads(r.stdout) == api


def test_cli_table_marks_external_nodes(loaded: Loaded) -> None:
    args = ["--from", str(T0 - 10**9), "--to", str(NOW + 3600 * 10**9), "--source", "calls"]
    r = podshark("map", "--hub", loaded.hub.url, *args, "--format", "table")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == [
        "SOURCE",
        "DESTINATION",
        "PROTO",
        "CALLS/S",
        "ERRORS",
        "P50",
        "P99",
        "BYTES/S",
        "CONNS",
    ]
    rows = [x for x in lines[1:] if not x.startswith("#")]
    _, api = get(loaded.hub, "/api/v1/map", source="calls", **_window(T0 - 10**9, NOW + 3600 * 10**9))
    assert len(rows) == len(api["edges"])
    egress = [x for x in rows if "93.184.216.34 [external]" in x]
    assert len(egress) == 1 and egress[0].startswith("shop/pod/debug")
    assert rows[0].split()[:3] == ["shop/Deployment/web", "shop/Deployment/api", "http"]
    assert "2.5%" in rows[0]  # 3 errors in 121 calls
    assert lines[-1].startswith(f"# {len(api['edges'])} edges") and "1 external" in lines[-1]


def test_cli_errors(loaded: Loaded) -> None:
    r = podshark("map", "--hub", loaded.hub.url, "--filter", "status ==")
    assert r.returncode == 2 and b"at 9" in r.stderr
    r = podshark("map", "--hub", loaded.hub.url, token="wrong")
    assert r.returncode != 0 and b"unauthorized" in r.stderr
    r = podshark("map", "--hub", f"http://127.0.0.1:{_free_port()}")
    assert r.returncode == 1 and b"cannot reach the hub" in r.stderr


def test_cli_dot_is_valid_graphviz(loaded: Loaded) -> None:
    args = ["--from", str(OLD_FROM), "--to", str(NOW + 3600 * 10**9), "--source", "calls"]
    r = podshark("map", "--hub", loaded.hub.url, *args, "--format", "dot")
    assert r.returncode == 0, r.stderr.decode()
    graph = parse_dot(r.stdout.decode())
    _, api = get(loaded.hub, "/api/v1/map", source="calls", **_window(OLD_FROM, NOW + 3600 * 10**9))
    assert graph.directed
    map_id = {dot_id: label_text(attrs["tooltip"]) for dot_id, attrs in graph.nodes.items()}
    assert sorted(map_id.values()) == sorted(n["id"] for n in api["nodes"])
    for n in api["nodes"]:
        attrs = next(a for k, a in graph.nodes.items() if map_id[k] == n["id"])
        assert (attrs.get("shape") == "ellipse") == n["external"], n
        assert label_text(attrs["label"]).startswith(n["name"])
    drawn = sorted((map_id[s], map_id[d], label_text(a["label"]).split()[0]) for s, d, a in graph.edges)
    assert drawn == sorted((e["src"], e["dst"], e["protocol"] or e["transport"]) for e in api["edges"])
    for s, d, attrs in graph.edges:
        e = next(e for e in api["edges"] if (e["src"], e["dst"]) == (map_id[s], map_id[d]))
        if e["error_rate"] and e["error_rate"] >= 0.05:
            assert attrs["color"] == "#c5221f"
    if shutil.which("dot"):
        out = subprocess.run(["dot", "-Tsvg"], input=r.stdout, capture_output=True, timeout=60)
        assert out.returncode == 0 and b"<svg" in out.stdout, out.stderr


# ---- cluster ranges


def test_cluster_cidr_changes_what_is_external(tmp_path: Path) -> None:
    if b"--cluster-cidr" not in podshark("hub", "--help").stdout:
        pytest.skip("podshark hub has no --cluster-cidr option yet (the ranges are checked in process below)")
    h = start_hub(tmp_path, "--cluster-cidr", "141.142.0.0/16", "--cluster-cidr", "fe80::/10")
    try:
        import_ok(h, CORPUS_FILES[0])
        import_ok(h, CORPUS_FILES[1])
        calls = [c for f in CORPUS_FILES[:2] for c in dissect_path(f)]
        window = _window(OLD_FROM, NOW)
        status, body = get(h, "/api/v1/map", source="calls", **window)
        assert status == 200, body
        nets = [ipaddress.ip_network("141.142.0.0/16"), ipaddress.ip_network("fe80::/10")]
        check_edges(body, calls, nets, (NOW - OLD_FROM) / 1e9)
        check_filters(h, body, calls, window)
        kinds = {n["name"]: n["kind"] for n in body["nodes"]}
        assert kinds["141.142.220.118"] == "ip"  # inside what was configured
        assert kinds["208.80.152.3"] == "external"
        assert kinds["192.168.1.104"] == "external"  # private, but not one of the configured ranges
    finally:
        h.stop()


def test_ranges_apply_when_the_map_is_asked(tmp_path: Path) -> None:
    """The calls path decides inside/outside at query time, from the ranges it is given."""
    store = Store(tmp_path / "db")
    try:
        calls = IDENTITY_CALLS
        store.add([msgspec_copy(c) for c in calls], time.time_ns())
        for configured, nets in (
            ((), DEFAULT_INSIDE),
            (("93.184.216.0/24",), [ipaddress.ip_network("93.184.216.0/24")]),
        ):
            m = from_calls(store, "", [], T0 - 10**9, NOW + 10**9, ClusterRanges(configured))
            check_edges(m.to_dict(), calls, nets, (NOW + 10**9 - (T0 - 10**9)) / 1e9)
    finally:
        store.close()


def msgspec_copy(c: Call) -> Call:
    return Call.from_json(c.to_json())


# ---- the aggregates path: calls and flows, summed per minute


DB = dict(namespace="shop", workload="StatefulSet/postgres", pod="postgres-0", service="postgres")


def _flow(
    src: Endpoint, dst: Endpoint, protocol: str | None, up: int, down: int, opened: int
) -> dict[str, Any]:
    start = T0 + 10 * 10**9
    return {
        "v": 1,
        "start_ts": start,
        "end_ts": start + 10 * 10**9,
        "transport": "tcp",
        "src": src.to_dict(),
        "dst": dst.to_dict(),
        "protocol": protocol,
        "bytes": [up, down],
        "packets": [up // 100 + 1, down // 100 + 1],
        "opened": opened,
        "closed": opened,
        "active": 0,
    }


# what the workers measured on the wire for some of the identity edges, and a postgres connection
# no dissector took (an edge with bytes and no calls)
FLOWS = [
    _flow(_ep("10.1.0.7", **WEB), _ep("10.1.0.9", port=8080, **API), "http", 51_000, 913_000, 5),
    _flow(_ep("10.1.0.7", **WEB), _ep("10.1.0.9", port=8080, **API), "http", 1_000, 2_000, 1),
    _flow(_ep("10.1.0.7", **WEB), _ep("10.1.0.30", port=5432, **DB), None, 1_234, 5_678, 2),
    _flow(_ep("10.1.0.20", **DEBUG), _ep("93.184.216.34", port=80), "http", 700, 7_000, 7),
]


def check_aggregate_edges(body: dict[str, Any], calls: list[Call], flows: list[dict[str, Any]]) -> None:
    """Calls' numbers from the calls (percentiles within the histogram's ±12%), bytes and
    connections from the flows, one edge per (src, dst, protocol, transport) of either."""
    seconds = body["seconds"]
    groups: dict[EdgeKey, list[Call]] = collections.defaultdict(list)
    for c in calls:
        groups[edge_key(c, DEFAULT_INSIDE)].append(c)
    wire: dict[EdgeKey, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for f in flows:
        key = (
            expected_node(Endpoint.from_dict(f["src"]), DEFAULT_INSIDE),
            expected_node(Endpoint.from_dict(f["dst"]), DEFAULT_INSIDE),
            f["protocol"],
            f["transport"],
        )
        w = wire[key]
        w[0] += f["bytes"][0]
        w[1] += f["bytes"][1]
        w[2] += f["opened"]
    got = {(e["src"], e["dst"], e["protocol"], e["transport"]): e for e in body["edges"]}
    assert set(got) == set(groups) | set(wire)
    for key, e in got.items():
        cs = groups.get(key, [])
        assert e["calls"] == len(cs), key
        assert e["calls_per_s"] == pytest.approx(len(cs) / seconds)
        errors = sum(status_class(c.protocol, c.status) in ("5xx", "error") for c in cs)
        assert e["errors"] == errors, key
        assert e["error_rate"] == (pytest.approx(errors / len(cs)) if cs else None), key
        assert e["status"] == dict(collections.Counter(status_class(c.protocol, c.status) for c in cs))
        lat = sorted(c.latency_ns for c in cs if c.latency_ns is not None)
        for q, name in ((0.5, "p50_ms"), (0.99, "p99_ms")):
            if not lat:
                assert e[name] is None
                continue
            exact = lat[max(1, math.ceil(len(lat) * q)) - 1]  # nearest rank
            assert abs(e[name] * 1e6 / exact - 1) <= 0.125, (key, name, e[name], exact)
        up, down, opened = wire.get(key, [0, 0, 0])
        assert e["bytes"] == [up, down], key
        assert e["bytes_per_s"] == pytest.approx((up + down) / seconds)
        assert e["connections"] == opened, key
        if key[2] is None:
            assert e["filter"] is not None and "not protocol" in e["filter"]


def test_map_from_aggregates_in_process(tmp_path: Path) -> None:
    from hub.aggregates import FLOW_DECODER, Aggregates

    lo, hi = T0 - T0 % (60 * 10**9), NOW + 120 * 10**9
    for reopen in (False, True):
        agg = Aggregates(tmp_path / "aggregates.duckdb", ranges=ClusterRanges())
        try:
            if not reopen:
                agg.add_calls(IDENTITY_CALLS)
                records = [FLOW_DECODER.decode(json.dumps(f)) for f in FLOWS]
                agg.add_flows(agg.prepare_flows(records))
            m = from_edge_rows(agg.edges(lo, hi), lo, hi)
        finally:
            agg.close()  # writes the open minutes: the second pass reads them from the file
        body = m.to_dict()
        assert body["source"] == "aggregates" and body["seconds"] == (hi - lo) / 1e9
        check_aggregate_edges(body, IDENTITY_CALLS, FLOWS)
        kinds = {n["id"]: n for n in body["nodes"]}
        assert kinds["external/93.184.216.34"]["external"]
        assert kinds["shop/StatefulSet/postgres"]["kind"] == "workload"


def test_map_from_aggregates_in_the_hub(loaded: Loaded) -> None:
    """The hub's own aggregates (when it keeps them): flows sent like a worker's, the map asked
    without a filter."""

    async def send_flows() -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(
                loaded.hub.url + "/api/v1/ingest", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as ws,
        ):
            await ws.send_str(json.dumps({"type": "hello", "worker": "map-flows", "capabilities": ["flows"]}))
            await ws.send_str(json.dumps({"type": "flows", "seq": 1, "flows": FLOWS}))
            got = []
            while True:
                msg = await asyncio.wait_for(ws.receive(), 60)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                got.append(json.loads(msg.data))
                if got[-1].get("type") in ("ack", "error"):
                    return got

    lo, hi = T0 - T0 % (60 * 10**9), NOW + 120 * 10**9
    status, body = get(loaded.hub, "/api/v1/map", **_window(lo, hi))
    assert status == 200, body
    if body["source"] != "aggregates":
        pytest.skip("this hub keeps no aggregates (hub/app.py does not wire hub/aggregates.py yet)")
    got = asyncio.run(send_flows())
    assert got[-1]["type"] == "ack" and not got[-1].get("rejected"), got
    status, body = get(loaded.hub, "/api/v1/map", **_window(lo, hi))
    assert status == 200 and body["source"] == "aggregates"
    check_aggregate_edges(body, loaded.identity, FLOWS)
    # an edge filter selects that edge's calls from the store, whichever source drew the edge
    for e in body["edges"]:
        status, page = get(loaded.hub, "/api/v1/calls", filter=e["filter"], limit="10000", **_window(lo, hi))
        assert status == 200 and len(page["calls"]) == e["calls"], e
    status, agg_only = get(loaded.hub, "/api/v1/map", source="aggregates", **_window(lo, hi))
    assert status == 200 and agg_only == body


# ---- the node rules in SQL and in the filters


_TEXT = st.one_of(st.none(), st.just(""), st.sampled_from(["a", "b", "shop", "Deployment/web", 'q"uote\\']))
_IPS = st.one_of(
    st.none(),
    st.just(""),
    st.just("?"),
    st.sampled_from(
        ["10.0.0.1", "10.0.0.2", "93.184.216.34", "fe80::1", "2001:db8::1", "not-an-ip", "a.b\n"]
    ),
)


@st.composite
def endpoints(draw: st.DrawFn) -> Endpoint:
    return Endpoint(
        ip=draw(_IPS),
        namespace=draw(_TEXT),
        workload=draw(_TEXT),
        pod=draw(_TEXT),
        service=draw(_TEXT),
        node=draw(_TEXT),
    )


def _sql_node(ep: Endpoint, ranges: ClusterRanges) -> MapNode:
    from hub.mapping import node_from_key

    kind, ns, name = node_key_sql("e")
    row = duckdb.execute(
        f"SELECT {kind}, {ns}, {name} FROM (SELECT ?::VARCHAR AS e_ip, ?::VARCHAR AS e_namespace, "
        "?::VARCHAR AS e_workload, ?::VARCHAR AS e_pod, ?::VARCHAR AS e_service, ?::VARCHAR AS e_node)",
        [ep.ip, ep.namespace, ep.workload, ep.pod, ep.service, ep.node],
    ).fetchone()
    assert row is not None
    return node_from_key(*row, ranges)


@given(endpoints())
def test_node_key_sql_is_node_of(ep: Endpoint) -> None:
    ranges = ClusterRanges()
    want = node_of(ep, ranges)
    got = _sql_node(ep, ranges)
    assert (got.kind, got.id, got.name, got.namespace or None) == (
        want.kind,
        want.id,
        want.name,
        want.namespace or None,
    )


@given(
    endpoints(),
    endpoints(),
    endpoints(),
    endpoints(),
    st.sampled_from(["http", "dns"]),
    st.sampled_from(["tcp", "udp"]),
)
def test_an_edge_filter_matches_exactly_its_edge(
    src: Endpoint, dst: Endpoint, other_src: Endpoint, other_dst: Endpoint, protocol: str, transport: str
) -> None:
    ranges = ClusterRanges()
    text = edge_filter(node_of(src, ranges), node_of(dst, ranges), protocol, transport)
    assert text is not None
    flt = parse(text)
    for s, d in ((src, dst), (other_src, other_dst), (src, other_dst), (other_src, dst)):
        for p, t in ((protocol, transport), ("kafka", transport), (protocol, "sctp")):
            call = Call(protocol=p, transport=t, src=s, dst=d)
            same = (  # the map keys nodes by id (a namespace of None and of "" is one node)
                node_of(s, ranges).id == node_of(src, ranges).id
                and node_of(d, ranges).id == node_of(dst, ranges).id
                and (p, t) == (protocol, transport)
            )
            assert flt.matches(call) == same, (text, call)


def test_edge_filters_read_like_the_design() -> None:
    r = ClusterRanges()
    web = node_of(Endpoint(ip="10.0.0.1", **WEB), r)
    api = node_of(Endpoint(ip="10.0.0.2", **API), r)
    assert edge_filter(web, api, "http", "tcp") == (
        'src.namespace == "shop" and src.workload == "Deployment/web" and '
        'dst.namespace == "shop" and dst.workload == "Deployment/api" and '
        'protocol == "http" and transport == "tcp"'
    )
    out = node_of(Endpoint(ip="1.2.3.4"), r)
    assert edge_filter(web, out, "tls", "tcp").split(" and ")[2] == 'dst.ip == "1.2.3.4"'


# ---- DOT: a parser of the grammar (https://graphviz.org/doc/info/lang.html), enough to hold the
# output to it: statements, attribute lists, quoted strings with their one escape (\")


@dataclass
class Dot:
    directed: bool
    nodes: dict[str, dict[str, str]]
    edges: list[tuple[str, str, dict[str, str]]]


_DOT_TOKEN = re.compile(
    r'\s+|//[^\n]*|/\*.*?\*/|(?P<q>"(?:[^"\\]|\\.)*")|(?P<id>[A-Za-z_\x80-\U0010ffff][\w\x80-\U0010ffff]*)'
    r"|(?P<num>-?(?:\.\d+|\d+(?:\.\d*)?))|(?P<p>->|--|[{}\[\]=;,:])",
    re.S,
)
_KEYWORDS = {"node", "edge", "graph", "digraph", "subgraph", "strict"}


def _dot_tokens(text: str) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(text):
        m = _DOT_TOKEN.match(text, i)
        assert m is not None and m.end() > i, f"DOT: cannot read at {i}: {text[i : i + 40]!r}"
        i = m.end()
        if m.group("q") is not None:
            body = m.group("q")[1:-1]
            # scanners that do not pair backslashes would read a final one as escaping the quote
            assert not body.endswith("\\"), f"DOT: a quoted string ends in a backslash: {body!r}"
            out.append(("id", _unquote(body)))
        elif m.group("id") is not None:
            word = m.group("id")
            out.append(("kw", word.lower()) if word.lower() in _KEYWORDS else ("id", word))
        elif m.group("num") is not None:
            out.append(("id", m.group("num")))
        elif m.group("p") is not None:
            out.append(("p", m.group("p")))
    return out


def _unquote(body: str) -> str:
    """A quoted string's value: `\\"` is a quote; a backslash pair stays two backslashes (for the
    label's own escapes), any other backslash stays."""
    return re.sub(r'\\(["\\])', lambda m: '"' if m.group(1) == '"' else "\\\\", body)


def parse_dot(text: str) -> Dot:
    toks = _dot_tokens(text)
    pos = 0

    def peek(k: int = 0) -> tuple[str, str]:
        return toks[pos + k] if pos + k < len(toks) else ("eof", "")

    def take(kind: str, value: str | None = None) -> str:
        nonlocal pos
        t = peek()
        assert t[0] == kind and (value is None or t[1] == value), f"DOT: expected {value or kind}, got {t}"
        pos += 1
        return t[1]

    def attr_list() -> dict[str, str]:
        attrs: dict[str, str] = {}
        while peek() == ("p", "["):
            take("p", "[")
            while peek() != ("p", "]"):
                key = take("id")
                take("p", "=")
                attrs[key] = take("id")
                if peek() in (("p", ","), ("p", ";")):
                    take("p")
            take("p", "]")
        return attrs

    if peek() == ("kw", "strict"):
        take("kw")
    kind = take("kw")
    assert kind in ("graph", "digraph")
    directed = kind == "digraph"
    if peek()[0] == "id":
        take("id")
    take("p", "{")
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str, dict[str, str]]] = []
    while peek() != ("p", "}"):
        t = peek()
        if t[0] == "kw" and t[1] in ("graph", "node", "edge"):
            take("kw")
            attr_list()
        elif t[0] == "id" and peek(1) == ("p", "="):
            take("id")
            take("p", "=")
            take("id")
        else:
            chain = [take("id")]
            while peek() in (("p", "->"), ("p", "--")):
                assert take("p") == ("->" if directed else "--")
                chain.append(take("id"))
            attrs = attr_list()
            if len(chain) == 1:
                nodes.setdefault(chain[0], {}).update(attrs)
            else:
                for a, b in itertools.pairwise(chain):
                    nodes.setdefault(a, {})
                    nodes.setdefault(b, {})
                    edges.append((a, b, attrs))
        if peek() == ("p", ";"):
            take("p")
    take("p", "}")
    assert peek()[0] == "eof", f"DOT: trailing {peek()}"
    return Dot(directed, nodes, edges)


def label_text(label: str) -> str:
    """A label's text with DOT's escString escapes read (\\n, \\l, \\r line breaks; \\\\ a backslash)."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) in "nlr" else m.group(1), label)


@given(st.text(max_size=30))
def test_dot_quote_round_trips(text: str) -> None:
    quoted = dot_quote(text)
    graph = parse_dot(f"digraph g {{ n0 [label={quoted}, tooltip={quoted}]; n0 -> {quoted}; }}")
    want = "".join(c if c.isprintable() else " " for c in text)
    want += " " if want.endswith("\\") else ""
    assert label_text(graph.nodes["n0"]["label"]) == want
    assert label_text(graph.nodes["n0"]["tooltip"]) == want
    assert len(graph.edges) == 1
