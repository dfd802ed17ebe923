"""The service map of `podshark demo` has exactly the edges of its topology (issue 12).

`podshark demo --no-ui` runs as a user runs it (workload, worker, embedded hub), storing into a
directory of the test's; then a `podshark hub` on that directory answers `GET /api/v1/map` for the
demo's window, and `podshark map --format dot` draws it.

The expected edges come from the topology's declaration (`podshark.demo.topology`: SERVICES give
each service's host octet and transport, EDGES who calls whom with which protocol), placed in the
run's /24 — the one /24 of the benchmarking range every node of the map must share, since the demo
chooses a free one when it starts. Without Kubernetes identity the demo's pods are address nodes
(`ip/198.18.x.y`), inside the cluster (198.18.0.0/15 is one of the default internal ranges), so no
node may be external.

Both sources must show the topology: the aggregates (calls and flows: a connection no dissector took
would show here as an extra edge) and the calls themselves (`source=calls`). Each edge's filter
returns exactly its calls from /api/v1/calls.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import subprocess
import time
from pathlib import Path

import pytest

from podshark.demo import requirements_missing
from podshark.demo.topology import BENCH_NET, EDGES, SERVICES
from tests.capture.test_demo_live import run_demo
from tests.hub.test_map import parse_dot
from tests.hub.test_service import REPO, TOKEN, _env, get, start_hub

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("capture-map"))


def expected_edges(net: ipaddress.IPv4Network) -> set[tuple[str, str, str, str]]:
    """(client node, server node, protocol, transport) of every declared edge, in the run's /24."""
    spec = {s.name: s for s in SERVICES}

    def node(name: str) -> str:
        return f"ip/{net.network_address + spec[name].host}"

    return {(node(e.client), node(e.server), e.protocol, spec[e.server].transport) for e in EDGES}


def run_subnet(body: dict[str, object]) -> ipaddress.IPv4Network:
    """The one /24 of 198.18.0.0/15 that every node of the map lies in."""
    nodes = body["nodes"]
    assert isinstance(nodes, list) and nodes
    nets = {ipaddress.ip_network(f"{n['name']}/24", strict=False) for n in nodes}
    assert len(nets) == 1, f"the map's nodes span several /24s: {sorted(map(str, nets))}"
    (net,) = nets
    assert isinstance(net, ipaddress.IPv4Network) and net.subnet_of(BENCH_NET)
    return net


def test_demo_map_has_exactly_the_topology(tmp_path: Path) -> None:
    reason = requirements_missing()
    if reason:
        pytest.skip(reason)
    start = time.time_ns()
    r = run_demo(tmp_path)
    end = time.time_ns()
    assert r.returncode == 0, r.stderr[-3000:]
    h = start_hub(tmp_path / "db", tmp_path / "hub.log")
    try:
        # the aggregates answer for the minutes that start in the window: take in the demo's minutes
        # whole (only the demo's traffic is in this store)
        minute = 60 * 10**9
        window = {"from": str(start - start % minute), "to": str(end - end % minute + minute)}
        maps = {}
        collapsed = []
        for source in ("auto", "calls"):
            status, body = get(h, "/api/v1/map", source=source, **window)
            assert status == 200, body
            assert body["edges"], body
            assert not any(n["external"] for n in body["nodes"])
            for e in body["edges"]:  # whatever the nodes, each edge's filter gives exactly its calls
                status, page = get(h, "/api/v1/calls", filter=e["filter"], limit="10000", **window)
                assert status == 200 and len(page["calls"]) == e["calls"], (source, e)
            maps[body["source"]] = body
            if any(n["kind"] == "node" for n in body["nodes"]):
                collapsed.append(body["source"])
                continue
            net = run_subnet(body)
            got = {(e["src"], e["dst"], e["protocol"], e["transport"]) for e in body["edges"]}
            assert got == expected_edges(net), (source, body["source"], body["edges"])
            for e in body["edges"]:
                assert e["calls"] > 0, e
                if body["source"] == "aggregates":  # frames on the wire, both ways, from the flows
                    assert e["bytes"][0] > 0 and e["bytes"][1] > 0 and e["connections"] > 0, e
                else:  # request and response bodies as sent (a GET has none)
                    assert sum(e["bytes"]) > 0, e
            # the errors the workload makes (HTTP 500s from api, gRPC NOT_FOUND from inventory)
            by_server = {e["dst"].rsplit(".", 1)[1]: e for e in body["edges"]}
            host = {s.name: str(s.host) for s in SERVICES}
            assert by_server[host["api"]]["errors"] > 0
            assert by_server[host["inventory"]]["errors"] > 0
            assert by_server[host["dns"]]["errors"] == 0
        # podshark map draws the same edges
        argv = ["map", "--hub", h.url, "--format", "dot", "--from", window["from"], "--to", window["to"]]
        out = subprocess.run(
            [str(REPO / ".venv" / "bin" / "podshark"), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(TOKEN),
        )
        assert out.returncode == 0, out.stderr
        graph = parse_dot(out.stdout)
        auto = maps.get("aggregates", maps["calls"])
        assert len(graph.edges) == len(auto["edges"])
        if collapsed:
            # every end the worker found a process for carries `node` (this machine), and without
            # Kubernetes identity hub.nodes.node_of names such an end by its node: all pods collapse
            # into one node. Known defect of node_of (reported); the checks above still ran.
            which = " and ".join(sorted(set(collapsed)))
            pytest.xfail(f"the {which} map names every pod by its node (hub.nodes.node_of)")
        if "aggregates" not in maps:
            pytest.skip("this hub keeps no aggregates: only the calls-based map was checked")
    finally:
        h.stop()
