"""Which map node an endpoint is (hub/nodes.py): the order of identities, and what is external."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dissect.model import Endpoint
from hub.nodes import MAX_RANGES, ClusterRanges, MapNode, node_of


def test_the_most_specific_identity_names_the_node() -> None:
    r = ClusterRanges()
    web = Endpoint(ip="10.1.0.7", pod="web-5d9c7-abcde", namespace="shop", workload="Deployment/web")
    assert node_of(web, r) == MapNode("workload", "shop/Deployment/web", "shop", "Deployment/web")
    bare = Endpoint(ip="10.1.0.8", pod="debug", namespace="shop", node="node-a")
    assert node_of(bare, r) == MapNode("pod", "shop/pod/debug", "shop", "debug")
    svc = Endpoint(ip="10.96.0.12", namespace="shop", service="api")
    assert node_of(svc, r) == MapNode("service", "shop/svc/api", "shop", "api")
    # the node a process ran on does not name the address (flows of the same connection have none)
    host = Endpoint(ip="192.168.1.10", node="node-b", pid=4, process="curl")
    assert (
        node_of(host, r)
        == node_of(Endpoint(ip="192.168.1.10"), r)
        == MapNode("ip", "ip/192.168.1.10", None, "192.168.1.10")
    )


def test_addresses_are_inside_or_external_by_the_cluster_ranges() -> None:
    r = ClusterRanges()  # none known: private ranges are the cluster
    assert node_of(Endpoint(ip="10.2.3.4"), r).kind == "ip"
    assert node_of(Endpoint(ip="fd00::5"), r).kind == "ip"
    out = node_of(Endpoint(ip="93.184.216.34", port=443), r)
    assert out == MapNode("external", "external/93.184.216.34", None, "93.184.216.34") and out.external
    configured = ClusterRanges(["10.244.0.0/16"])
    assert node_of(Endpoint(ip="10.2.3.4"), configured).kind == "external"  # outside what was given
    assert node_of(Endpoint(ip="10.244.9.9"), configured).kind == "ip"
    assert node_of(Endpoint(ip="::ffff:10.244.1.1"), configured).kind == "ip"  # v4-mapped


def test_worker_reports_replace_their_own_and_are_bounded() -> None:
    r = ClusterRanges(["10.96.0.0/12"])
    assert r.report("node-a", ["10.244.1.0/24", "not a cidr", "10.0.0.5"]) == 2
    assert r.contains("10.244.1.9") and r.contains("10.0.0.5") and not r.contains("10.244.2.9")
    r.report("node-a", ["10.244.2.0/24"])
    assert r.contains("10.244.2.9") and not r.contains("10.244.1.9")
    assert r.report("node-b", (f"10.{i >> 8}.{i & 255}.0/24" for i in range(MAX_RANGES + 10))) == MAX_RANGES
    assert r.contains("not an address")  # never called egress


@given(st.text(max_size=40), st.lists(st.text(max_size=20), max_size=5))
def test_any_report_or_address_is_handled(ip: str, ranges: list[str]) -> None:
    r = ClusterRanges()
    r.report("w", ranges)
    node = node_of(Endpoint(ip=ip), r)
    assert node.kind in ("ip", "external") and node.name == (ip or "?")
