"""Pods the index has no Pod object for: named by Endpoints/EndpointSlice targetRefs, or by node pod CIDRs.

Each worker watches only its own node's Pods, so a call's remote end (a pod on another node) is known
only through the cluster-wide Endpoints/EndpointSlices (their ``targetRef`` and node) and Nodes (their
``spec.podCIDRs``). Objects are built here in the API's JSON shapes (core/v1 Endpoints with ready and
not-ready addresses, discovery v1 and v1beta1 slices, Nodes with single and dual-stack CIDRs), fed
at times the test chooses; every expected identity is what the test put in the objects.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture.k8s.index import ADDED, Identity, IdentityIndex
from dissect.model import Call, Endpoint
from tests.identity.test_index import (
    NODE_A,
    NODE_A_IP,
    NODE_B,
    NODE_B_IP,
    T0,
    S,
    meta,
    node,
    owner_ref,
    pod,
    replicaset,
    service,
    workload,
)

pytestmark = pytest.mark.xdist_group("identity-index")

NS = "shop"


def target(name: str, ns: str | None = NS, uid: str | None = None, kind: str = "Pod") -> dict[str, Any]:
    """A targetRef as the endpoints controllers write it (``namespace`` left out when ``ns`` is None)."""
    ref: dict[str, Any] = {"kind": kind, "name": name, "uid": uid or f"uid-{name}", "resourceVersion": "77"}
    if ns is not None:
        ref["namespace"] = ns
    return ref


Addr = tuple[str, dict[str, Any] | None, str | None]  # (ip, targetRef, node name)
HTTP = [("http", 8080)]


def endpoints_obj(
    svc: str,
    ready: list[Addr],
    ports: list[tuple[str, int]] = HTTP,
    not_ready: list[Addr] | None = None,
    ns: str = NS,
) -> dict[str, Any]:
    """core/v1 Endpoints, one subset: ``addresses`` and ``notReadyAddresses`` with targetRef and nodeName."""

    def one(a: Addr) -> dict[str, Any]:
        ip, ref, node_name = a
        out: dict[str, Any] = {"ip": ip}
        if ref is not None:
            out["targetRef"] = ref
        if node_name is not None:
            out["nodeName"] = node_name
        return out

    subset: dict[str, Any] = {"ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports]}
    if ready:
        subset["addresses"] = [one(a) for a in ready]
    if not_ready:
        subset["notReadyAddresses"] = [one(a) for a in not_ready]
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": meta(svc, ns, f"uid-ep-{ns}-{svc}", T0, labels={"app": svc}),
        "subsets": [subset] if ready or not_ready else [],
    }


def slice_obj(
    name: str,
    svc: str,
    addrs: list[Addr],
    ports: list[tuple[str, int]] = HTTP,
    v1: bool = True,
    ns: str = NS,
    created: int = T0,
) -> dict[str, Any]:
    """A discovery.k8s.io EndpointSlice: v1 names the node in ``nodeName``, v1beta1 in ``topology``."""

    def one(a: Addr) -> dict[str, Any]:
        ip, ref, node_name = a
        e: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": True, "serving": True}}
        if ref is not None:
            e["targetRef"] = ref
        if node_name is not None:
            if v1:
                e["nodeName"] = node_name
                e["zone"] = "zone-a"
            else:
                e["topology"] = {"kubernetes.io/hostname": node_name, "topology.kubernetes.io/zone": "zone-a"}
        return e

    labels = {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "x"}
    return {
        "apiVersion": "discovery.k8s.io/v1" if v1 else "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": meta(name, ns, f"uid-es-{ns}-{name}", created, labels=labels),
        "addressType": "IPv6" if ":" in (addrs[0][0] if addrs else "") else "IPv4",
        "endpoints": [one(a) for a in addrs],
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def node_obj(name: str, ip: str, cidrs: list[str] | None = None, single: str | None = None) -> dict[str, Any]:
    """A Node with ``spec.podCIDRs`` (and ``spec.podCIDR``, its first entry, as the API mirrors it)."""
    obj = node(name, ip)
    spec: dict[str, Any] = {"providerID": f"lab://{name}"}
    if cidrs is not None:
        spec["podCIDRs"] = cidrs
        if cidrs:
            spec["podCIDR"] = cidrs[0]
    if single is not None:
        spec["podCIDR"] = single
    obj["spec"] = spec
    return obj


@pytest.fixture
def index() -> IdentityIndex:
    return IdentityIndex(ip_lead_ns=0)


def who(index: IdentityIndex, ip: str, ts: int, port: int | None = 8080) -> str | None:
    ident = index.resolve(ip, port, ts)
    return None if ident is None else ident.pod


# --- the four source shapes ----------------------------------------------------------------------------


SHAPES = ["Endpoints", "Endpoints/notReady", "EndpointSlice/v1", "EndpointSlice/v1beta1"]


def feed(index: IdentityIndex, shape: str, svc: str, addrs: list[Addr], ts: int, event: str = ADDED) -> None:
    """``addrs`` behind service ``svc`` on port http/8080, in the given source shape."""
    if shape == "Endpoints":
        index.apply("Endpoints", event, endpoints_obj(svc, addrs), ts)
    elif shape == "Endpoints/notReady":
        index.apply("Endpoints", event, endpoints_obj(svc, [], not_ready=addrs), ts)
    else:
        obj = slice_obj(f"{svc}-8kx2p", svc, addrs, v1=shape.endswith("/v1"))
        index.apply("EndpointSlice", event, obj, ts)


@pytest.mark.parametrize("shape", SHAPES)
def test_endpoint_target_names_a_pod_on_another_node(index: IdentityIndex, shape: str) -> None:
    index.apply("ReplicaSet", "ADDED", replicaset("api-6c9f8d7b4", "api"), T0)
    name = "api-6c9f8d7b4-q2w9z"
    feed(index, shape, "api", [("10.244.2.17", target(name, uid="u-17"), NODE_B)], T0)
    ident = index.resolve("10.244.2.17", 8080, T0 + S)
    assert ident == Identity(
        "endpoint",
        pod=name,
        namespace=NS,
        workload="Deployment/api",
        service="api",
        services=(f"{NS}/api",),
        node=NODE_B,
        labels={},
        pod_uid="u-17",
    )
    assert index.resolve("10.244.2.17", 8080, T0 - S) is None  # before the source existed
    assert index.resolve("10.244.2.18", 8080, T0 + S) is None
    stats = index.stats()
    assert (stats["endpoint_targets"], stats["ignored_total"], stats["internal_errors"]) == (1, 0, 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_target_without_namespace_is_in_the_sources_namespace(index: IdentityIndex, shape: str) -> None:
    feed(index, shape, "db", [("10.244.2.20", target("db-0", ns=None), NODE_B)], T0)
    ident = index.resolve("10.244.2.20", 8080, T0 + S)
    assert ident is not None and (ident.pod, ident.namespace) == ("db-0", NS)


def test_target_in_another_namespace_keeps_its_namespace(index: IdentityIndex) -> None:
    """A selector-less Service with hand-written Endpoints may point at a pod in another namespace."""
    feed(index, "Endpoints", "legacy", [("10.244.2.21", target("db-0", ns="data"), NODE_B)], T0)
    ident = index.resolve("10.244.2.21", 8080, T0 + S)
    assert ident is not None and (ident.pod, ident.namespace, ident.service) == ("db-0", "data", "legacy")


@pytest.mark.parametrize("shape", SHAPES)
def test_addresses_without_a_pod_target_name_no_pod(index: IdentityIndex, shape: str) -> None:
    addrs: list[Addr] = [
        ("10.244.2.30", target(NODE_B, kind="Node"), NODE_B),  # another kind
        ("10.244.2.31", None, None),  # no targetRef: an address outside the cluster
    ]
    feed(index, shape, "ext", addrs, T0)
    for ip in ("10.244.2.30", "10.244.2.31"):
        assert index.resolve(ip, 8080, T0 + S) is None, ip
    stats = index.stats()
    assert (stats["endpoint_targets"], stats["ignored_total"]) == (0, 0)  # legitimate shapes: not counted


def test_a_pod_object_wins_over_an_endpoint_target(index: IdentityIndex) -> None:
    ip = "10.244.1.40"
    feed(index, "EndpointSlice/v1", "web", [(ip, target("web-0", uid="u-web-0"), NODE_A)], T0)
    local = pod("web-0", ip=ip, uid="u-web-0", labels={"app": "web", "tier": "front"}, created=T0 + 8 * S)
    index.apply("Pod", "ADDED", local, T0 + 10 * S)
    index.apply("Pod", "DELETED", local, T0 + 20 * S)
    ident = index.resolve(ip, 8080, T0 + 5 * S)
    assert ident is not None and (ident.kind, ident.labels) == ("endpoint", {})
    ident = index.resolve(ip, 8080, T0 + 15 * S)
    assert ident is not None and (ident.kind, ident.pod, ident.labels, ident.service) == (
        "pod",
        "web-0",
        {"app": "web", "tier": "front"},
        "web",
    )
    # the Pod is gone but the source still lists the address (it lags the delete): the endpoint names it
    ident = index.resolve(ip, 8080, T0 + 25 * S)
    assert ident is not None and (ident.kind, ident.pod) == ("endpoint", "web-0")


def test_service_backends_name_remote_pods(index: IdentityIndex) -> None:
    index.apply("Service", "ADDED", service("api", cluster_ip="10.96.0.40", ports=[("http", 80, None)]), T0)
    addrs: list[Addr] = [("10.244.2.50", target("api-0"), NODE_B), ("10.244.3.50", target("api-1"), "node-c")]
    feed(index, "Endpoints", "api", addrs, T0)
    backends = index.service_backends(NS, "api", T0 + S, port=80)
    named = [(b.ip, b.port, b.identity and b.identity.pod, b.identity and b.identity.node) for b in backends]
    assert named == [("10.244.2.50", 8080, "api-0", NODE_B), ("10.244.3.50", 8080, "api-1", "node-c")]


def test_several_sources_listing_one_address_prefer_the_newest(index: IdentityIndex) -> None:
    ip = "10.244.2.60"
    index.apply("Endpoints", "ADDED", endpoints_obj("a", [(ip, target("old-0"), NODE_B)]), T0)
    obj = slice_obj("b-8kx2p", "b", [(ip, target("new-0"), NODE_B)], created=T0 + 5 * S)
    index.apply("EndpointSlice", "ADDED", obj, T0 + 10 * S)
    # the slice, first seen at T0+10, has listed new-0 since its creation at T0+5: from then on two
    # sources list the address, and the newer listing is the pod that has it (the other lags)
    assert who(index, ip, T0 + 3 * S) == "old-0"
    assert who(index, ip, T0 + 5 * S) == "new-0"
    assert who(index, ip, T0 + 100 * S) == "new-0"
    index.apply("Endpoints", "MODIFIED", endpoints_obj("a", [(ip, target("old-0"), NODE_B)]), T0 + 20 * S)
    assert who(index, ip, T0 + 100 * S) == "new-0"  # an unchanged listing is not a newer one


# --- workload inferred from the pod's name, verified against the owners on record ---------------------

RS_AB = ("ReplicaSet", replicaset("a-b", None))
STS_AB = ("StatefulSet", workload("StatefulSet", "a-b"))


@pytest.mark.parametrize(
    ("owners", "pod_name", "expected"),
    [
        ([("ReplicaSet", replicaset("web-5d9c7b8f6", "web"))], "web-5d9c7b8f6-x2kqz", "Deployment/web"),
        ([("ReplicaSet", replicaset("bare", None))], "bare-x2kqz", "ReplicaSet/bare"),
        ([("StatefulSet", workload("StatefulSet", "db"))], "db-0", "StatefulSet/db"),
        ([("StatefulSet", workload("StatefulSet", "db"))], "db-12", "StatefulSet/db"),
        ([("DaemonSet", workload("DaemonSet", "node-agent"))], "node-agent-5kx2z", "DaemonSet/node-agent"),
        (
            [
                ("CronJob", workload("CronJob", "backup")),
                ("Job", workload("Job", "backup-28300000", owner=owner_ref("CronJob", "backup", "uid-cj"))),
            ],
            "backup-28300000-q8w2n",
            "CronJob/backup",
        ),
        ([("Job", workload("Job", "migrate"))], "migrate-7pz4m", "Job/migrate"),
        # an Indexed Job's pods are <job>-<index>-<random>
        ([("Job", workload("Job", "train"))], "train-3-bk9xz", "Job/train"),
        # both an RS and a StatefulSet named "a-b": the suffix's shape picks
        ([RS_AB, STS_AB], "a-b-x2kqz", "ReplicaSet/a-b"),
        ([RS_AB, STS_AB], "a-b-2", "StatefulSet/a-b"),
        # five digits of the random alphabet fit both shapes: the random-suffix kinds are tried first
        ([RS_AB, STS_AB], "a-b-24567", "ReplicaSet/a-b"),
        ([STS_AB], "a-b-24567", "StatefulSet/a-b"),
    ],
    ids=["deployment-via-rs", "bare-rs", "statefulset-0", "statefulset-12", "daemonset", "cronjob-via-job",
         "job", "indexed-job", "rs-by-shape", "sts-by-shape", "both-shapes-rs-first", "both-shapes-sts"],
)  # fmt: skip
def test_workload_is_inferred_from_the_name_and_an_owner_on_record(
    index: IdentityIndex, owners: list[tuple[str, dict[str, Any]]], pod_name: str, expected: str
) -> None:
    for kind, obj in owners:
        index.apply(kind, "ADDED", obj, T0)
    feed(index, "EndpointSlice/v1", "svc", [("10.244.2.70", target(pod_name), NODE_B)], T0)
    ident = index.resolve("10.244.2.70", 8080, T0 + S)
    assert ident is not None and (ident.pod, ident.workload) == (pod_name, expected)


@pytest.mark.parametrize(
    ("owners", "pod_name"),
    [
        ([], "web-5d9c7b8f6-x2kqz"),  # its ReplicaSet not on record: no guess, not even the Deployment
        ([("Deployment", workload("Deployment", "web"))], "web-x2kqz"),  # Deployments do not own pods
        ([], "debug"),  # a bare pod
        ([("StatefulSet", workload("StatefulSet", "db"))], "db-x2kqz"),  # random suffix: not an STS pod
        ([("ReplicaSet", replicaset("api", None))], "api-3"),  # ordinal: not a ReplicaSet pod
        ([("ReplicaSet", replicaset("api", None))], "api-abcde"),  # vowels: no generated suffix
        ([("DaemonSet", workload("DaemonSet", "agent"))], "agent-0x2kq"),  # 0 is not in the alphabet
        ([("DaemonSet", workload("DaemonSet", "agent"))], "agent-x2kqzz"),  # six characters
        ([("StatefulSet", workload("StatefulSet", "db"))], "db-01"),  # ordinals have no leading zero
        ([("StatefulSet", workload("StatefulSet", "db", ns="other"))], "db-0"),  # another namespace's
        ([("ReplicaSet", replicaset("web", None))], "-x2kqz"),
    ],
    ids=["no-rs", "deployment-not-an-owner", "bare", "sts-wrong-shape", "rs-wrong-shape", "vowels",
         "zero", "six-chars", "leading-zero", "other-namespace", "empty-prefix"],
)  # fmt: skip
def test_no_workload_without_an_owner_of_the_names_shape(
    index: IdentityIndex, owners: list[tuple[str, dict[str, Any]]], pod_name: str
) -> None:
    for kind, obj in owners:
        index.apply(kind, "ADDED", obj, T0)
    ref = target(pod_name)
    ref["name"] = pod_name  # "-x2kqz" is a valid-looking tail only; the name check is the parser's
    feed(index, "Endpoints", "svc", [("10.244.2.71", ref, NODE_B)], T0)
    ident = index.resolve("10.244.2.71", 8080, T0 + S)
    if pod_name.startswith("-"):  # not a DNS name: the targetRef itself is dropped (and counted)
        assert ident is None and index.stats()["ignored"] == {"Endpoints.targetRef.name": 1}
        return
    assert ident is not None and (ident.pod, ident.workload) == (pod_name, None)


def test_inferred_workload_follows_owners_seen_later_and_gone(index: IdentityIndex) -> None:
    small = IdentityIndex(ip_lead_ns=0, history_ns=30 * S)
    for ix in (index, small):
        feed(ix, "Endpoints", "web", [("10.244.2.72", target("web-5d9c7b8f6-x2kqz"), NODE_B)], T0)
        assert ix.resolve("10.244.2.72", 8080, T0 + S).workload is None  # type: ignore[union-attr]
        ix.apply("ReplicaSet", "ADDED", replicaset("web-5d9c7b8f6", "web"), T0 + 2 * S)
        assert ix.resolve("10.244.2.72", 8080, T0 + 3 * S).workload == "Deployment/web"  # type: ignore[union-attr]
    # the ReplicaSet deleted: still named while its range is in the history, not after
    small.apply("ReplicaSet", "DELETED", replicaset("web-5d9c7b8f6", "web"), T0 + 10 * S)
    assert small.resolve("10.244.2.72", 8080, T0 + 11 * S).workload == "Deployment/web"  # type: ignore[union-attr]
    small.prune(T0 + 41 * S)
    assert small.resolve("10.244.2.72", 8080, T0 + 41 * S).workload is None  # type: ignore[union-attr]


# --- time ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_an_address_moving_from_one_pod_to_another_resolves_by_time(index: IdentityIndex, shape: str) -> None:
    ip = "10.244.2.80"
    feed(index, shape, "web", [(ip, target("web-0", uid="ua"), NODE_B)], T0)
    feed(index, shape, "web", [], T0 + 10 * S, "MODIFIED")  # web-0 deleted
    feed(index, shape, "web", [(ip, target("web-1", uid="ub"), "node-c")], T0 + 30 * S, "MODIFIED")
    t1, t2 = T0 + 5 * S, T0 + 40 * S
    a, b = index.resolve(ip, 8080, t1), index.resolve(ip, 8080, t2)
    assert a is not None and (a.pod, a.pod_uid, a.node) == ("web-0", "ua", NODE_B)
    assert b is not None and (b.pod, b.pod_uid, b.node) == ("web-1", "ub", "node-c")
    assert index.resolve(ip, 8080, T0 + 20 * S) is None  # nobody in between
    # and a call tagged at each time
    for ts, expected in ((t1, "web-0"), (t2, "web-1")):
        src, dst = Endpoint(ip="10.244.1.5", port=40000), Endpoint(ip=ip, port=8080)
        call = Call(protocol="http", src=src, dst=dst, request_ts=ts)
        index.tag(call)
        assert (call.dst.pod, call.dst.service) == (expected, "web")


def test_address_moving_straight_to_another_pod_in_one_event(index: IdentityIndex) -> None:
    ip = "10.244.2.81"
    feed(index, "Endpoints", "web", [(ip, target("web-0"), NODE_B)], T0)
    feed(index, "Endpoints", "web", [(ip, target("web-1"), NODE_B)], T0 + 10 * S, "MODIFIED")
    assert (who(index, ip, T0 + 10 * S - 1), who(index, ip, T0 + 10 * S)) == ("web-0", "web-1")


@pytest.mark.parametrize("shape", ["Endpoints", "EndpointSlice/v1"])
def test_deleting_the_source_ends_its_targets(index: IdentityIndex, shape: str) -> None:
    ip = "10.244.2.82"
    feed(index, shape, "web", [(ip, target("web-0"), NODE_B)], T0)
    feed(index, shape, "web", [(ip, target("web-0"), NODE_B)], T0 + 5 * S, "MODIFIED")  # same: range kept
    feed(index, shape, "web", [(ip, target("web-0"), NODE_B)], T0 + 10 * S, "DELETED")
    assert who(index, ip, T0 + 1 * S) == "web-0"
    assert who(index, ip, T0 + 10 * S - 1) == "web-0"
    assert who(index, ip, T0 + 10 * S) is None
    # a relist that no longer has a source ends it too
    feed(index, shape, "api", [("10.244.2.83", target("api-0"), NODE_B)], T0 + 20 * S)
    index.replace(shape.split("/")[0], [], T0 + 30 * S)
    assert (who(index, "10.244.2.83", T0 + 29 * S), who(index, "10.244.2.83", T0 + 30 * S)) == ("api-0", None)
    assert index.stats()["endpoint_targets"] == 2  # the ended ranges, kept for the history time


def test_a_source_first_seen_later_does_not_claim_the_address_before_the_last_holder_let_go(
    index: IdentityIndex,
) -> None:
    ip = "10.244.2.84"
    index.apply("Endpoints", "ADDED", endpoints_obj("a", [(ip, target("a-0"), NODE_B)]), T0)
    index.apply("Endpoints", "MODIFIED", endpoints_obj("a", []), T0 + 20 * S)
    # a slice created at T0+10 (while a-0 still had the address), first seen at T0+50
    obj = slice_obj("b-8kx2p", "b", [(ip, target("b-0"), NODE_B)], created=T0 + 10 * S)
    index.apply("EndpointSlice", "ADDED", obj, T0 + 50 * S)
    assert who(index, ip, T0 + 15 * S) == "a-0"
    assert who(index, ip, T0 + 25 * S) == "b-0"  # since a-0 let go, not only since b was seen


def test_a_node_ip_is_an_endpoint_pod_only_on_the_endpoints_port(index: IdentityIndex) -> None:
    """A hostNetwork pod's endpoint is its node's IP, which the node and its other hostNetwork pods share."""
    index.apply("Node", "ADDED", node_obj(NODE_B, NODE_B_IP, ["10.244.2.0/24"]), T0)
    obj = endpoints_obj("exporter", [(NODE_B_IP, target("exporter-x2kqz"), NODE_B)], [("metrics", 9100)])
    index.apply("Endpoints", "ADDED", obj, T0)
    index.apply("DaemonSet", "ADDED", workload("DaemonSet", "exporter"), T0)
    ident = index.resolve(NODE_B_IP, 9100, T0 + S)
    assert ident is not None and (ident.kind, ident.pod, ident.workload, ident.service) == (
        "endpoint",
        "exporter-x2kqz",
        "DaemonSet/exporter",
        "exporter",
    )
    for port in (22, 43512, None):
        ident = index.resolve(NODE_B_IP, port, T0 + S)
        assert ident is not None and (ident.kind, ident.node, ident.pod) == ("node", NODE_B, None), port


# --- pod CIDRs ----------------------------------------------------------------------------------------------


def test_pod_cidrs_name_the_node_by_most_specific_range_over_time(index: IdentityIndex) -> None:
    index.apply("Node", "ADDED", node_obj(NODE_A, NODE_A_IP, ["10.244.1.0/24", "fd00:10:244:1::/64"]), T0)
    index.apply("Node", "ADDED", node_obj(NODE_B, NODE_B_IP, ["10.244.0.0/16"]), T0)  # overlaps: wider
    index.apply("Node", "ADDED", node_obj("node-c", "10.0.0.13", single="fd00:10:244:c::/80"), T0)

    def node_of(ip: str, ts: int = T0 + S) -> tuple[str, str | None] | None:
        ident = index.resolve(ip, 8080, ts)
        return None if ident is None else (ident.kind, ident.node)

    assert node_of("10.244.1.9") == ("pod-cidr", NODE_A)
    assert node_of("10.244.1.255") == ("pod-cidr", NODE_A)
    assert node_of("10.244.2.9") == ("pod-cidr", NODE_B)
    assert node_of("10.244.255.1") == ("pod-cidr", NODE_B)
    assert node_of("10.245.0.1") is None
    assert node_of("fd00:10:244:1::5") == ("pod-cidr", NODE_A)
    assert node_of("FD00:10:244:1:0:0:0:5") == ("pod-cidr", NODE_A)  # another spelling
    assert node_of("fd00:10:244:1:ffff:ffff:ffff:ffff") == ("pod-cidr", NODE_A)
    assert node_of("fd00:10:244:2::5") is None
    assert node_of("fd00:10:244:c::1:2:3") == ("pod-cidr", "node-c")
    assert node_of("fd00:10:244:c:1::1") is None  # outside the /80
    assert node_of("::ffff:10.244.1.9") == ("pod-cidr", NODE_A)  # IPv4-mapped: the IPv4 range
    assert node_of("not-an-ip") is None
    # everything before the CIDR fallback still comes first
    assert node_of(NODE_A_IP) == ("node", NODE_A)
    index.apply("Pod", "ADDED", pod("local", ip="10.244.1.10"), T0)
    assert index.resolve("10.244.1.10", 8080, T0 + S).kind == "pod"  # type: ignore[union-attr]
    stats = index.stats()
    assert (stats["pod_cidrs"], stats["ignored_total"]) == (4, 0)
    # node A deleted at T0+10: its ranges end then; the /16 of node B covers its IPv4 addresses after
    index.apply("Node", "DELETED", node_obj(NODE_A, NODE_A_IP, ["10.244.1.0/24"]), T0 + 10 * S)
    assert node_of("10.244.1.9", T0 + 9 * S) == ("pod-cidr", NODE_A)
    assert node_of("10.244.1.9", T0 + 10 * S) == ("pod-cidr", NODE_B)
    assert node_of("fd00:10:244:1::5", T0 + 10 * S) is None
    assert node_of("fd00:10:244:1::5", T0 + 9 * S) == ("pod-cidr", NODE_A)


def test_a_changed_pod_cidr_ends_the_old_range_and_pruning_forgets_it() -> None:
    index = IdentityIndex(ip_lead_ns=0, history_ns=30 * S)
    index.apply("Node", "ADDED", node_obj(NODE_B, NODE_B_IP, ["10.244.2.0/24"]), T0)
    index.apply("Node", "MODIFIED", node_obj(NODE_B, NODE_B_IP, ["10.245.0.0/20"]), T0 + 10 * S)
    assert index.resolve("10.244.2.1", None, T0 + 5 * S).node == NODE_B  # type: ignore[union-attr]
    assert index.resolve("10.244.2.1", None, T0 + 10 * S) is None
    assert index.resolve("10.245.15.1", None, T0 + 10 * S).node == NODE_B  # type: ignore[union-attr]
    assert index.stats()["pod_cidrs"] == 2
    index.prune(T0 + 41 * S)
    assert index.stats()["pod_cidrs"] == 1
    assert index._pod_cidrs.held == {(4, 20)}  # a lookup no longer tries the /24's prefix length
    assert index.resolve("10.244.2.1", None, T0 + 5 * S) is None  # the ended range is gone with its history


def test_tag_fills_remote_ends_without_overwriting(index: IdentityIndex) -> None:
    index.apply("Node", "ADDED", node_obj(NODE_B, NODE_B_IP, ["10.244.2.0/24"]), T0)
    index.apply("StatefulSet", "ADDED", workload("StatefulSet", "db"), T0)
    feed(index, "EndpointSlice/v1", "db", [("10.244.2.90", target("db-1", uid="u-db-1"), NODE_B)], T0)
    call = Call(
        protocol="http",
        src=Endpoint(ip="10.244.2.91", port=40000, process="curl"),  # in node B's range, listed nowhere
        dst=Endpoint(ip="10.244.2.90", port=8080, workload="StatefulSet/known"),
        request_ts=T0 + S,
    )
    index.tag(call)
    s, d = call.src, call.dst
    assert (s.pod, s.namespace, s.workload, s.service, s.node, s.process, s.labels) == (
        None, None, None, None, NODE_B, "curl", {}
    )  # fmt: skip
    assert (d.pod, d.namespace, d.workload, d.service, d.node, d.labels) == (
        "db-1", NS, "StatefulSet/known", "db", NODE_B, {}
    )  # fmt: skip


# --- hostile values --------------------------------------------------------------------------------------

# Well-formed values, and values that are certainly not (so the expected count comes from the test).
GOOD_NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
BAD_NAMES = st.one_of(
    st.sampled_from(["Web-0", "web 0", "web_0", "-web", "web-", "web\x00", "ｗｅｂ", "a" * 254, "..", "a/b"]),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
GOOD_CIDRS = st.sampled_from(["10.244.7.0/24", "10.244.0.0/16", "fd00:1::/64", "fd00:2::/112", "10.9.9.0/31"])
BAD_CIDRS = st.one_of(
    st.sampled_from(
        ["0.0.0.0/0", "::/0", "10.0.0.0/7", "10.244.1.0/33", "fd00::/129", "10.244.1.0", "10.244.1.0/",
         "/24", "fe80::%eth0/64", "10.244.1.0/24 ", "10.244.1.0/2x", "x" * 100, "", "10.256.0.0/16"]
    ),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
DNS = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.lists(st.tuples(st.booleans(), GOOD_NAMES, BAD_NAMES), min_size=1, max_size=6),
    node_values=st.lists(st.tuples(st.booleans(), GOOD_NAMES, BAD_NAMES), min_size=6, max_size=6),
    cidrs=st.lists(st.tuples(st.booleans(), GOOD_CIDRS, BAD_CIDRS), max_size=4),
    v1=st.sampled_from([None, True, False]),
)
def test_hostile_references_are_dropped_and_counted(
    names: list[tuple[bool, str, Any]],
    node_values: list[tuple[bool, str, Any]],
    cidrs: list[tuple[bool, str, Any]],
    v1: bool | None,
) -> None:
    """Each value is good or bad by construction: every bad one is counted once, none raises."""
    index = IdentityIndex(ip_lead_ns=0)
    addrs: list[Addr] = []
    expected_bad: dict[str, int] = {}
    kind = "Endpoints" if v1 is None else "EndpointSlice"
    node_field = "nodeName" if v1 is not False else "topology"
    good_pods: dict[str, str] = {}
    for i, ((name_ok, good, bad), (node_ok, good_node, bad_node)) in enumerate(zip(names, node_values)):
        ip = f"10.244.9.{i + 1}"
        ref = target("x")
        ref["name"] = good if name_ok else bad
        addrs.append((ip, ref, good_node if node_ok else bad_node))
        if not name_ok:
            expected_bad[f"{kind}.targetRef.name"] = expected_bad.get(f"{kind}.targetRef.name", 0) + 1
        else:
            good_pods[ip] = good
            if not node_ok and bad_node is not None and bad_node != "":
                key = f"{kind}.{node_field}"
                expected_bad[key] = expected_bad.get(key, 0) + 1
    if v1 is None:
        index.apply("Endpoints", "ADDED", endpoints_obj("svc", addrs), T0)
    else:
        index.apply("EndpointSlice", "ADDED", slice_obj("svc-8kx2p", "svc", addrs, v1=v1), T0)
    n_bad_cidrs = sum(1 for ok, _, _ in cidrs if not ok)
    node_cidrs = [good if ok else bad for ok, good, bad in cidrs]
    index.apply("Node", "ADDED", node_obj("node-x", "10.0.0.99", node_cidrs), T0)
    if n_bad_cidrs:
        expected_bad["Node.podCIDR"] = n_bad_cidrs

    stats = index.stats()
    assert stats["ignored"] == expected_bad
    assert (stats["skipped_total"], stats["internal_errors"]) == (0, 0)
    for i in range(len(addrs)):
        ip = f"10.244.9.{i + 1}"
        ident = index.resolve(ip, 8080, T0 + S)
        if ip in good_pods:
            assert ident is not None and (ident.kind, ident.pod) == ("endpoint", good_pods[ip])
            assert ident.node is None or DNS.fullmatch(ident.node)
        else:
            assert ident is None or ident.kind == "pod-cidr"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    ref=JSON,
    node_value=JSON,
    topology=JSON,
    pod_cidr=JSON,
    pod_cidrs=JSON,
    probe=st.sampled_from(["10.244.9.1", "10.244.7.1", "fd00:1::1", "10.0.0.99", "x"]),
)
def test_arbitrary_json_in_reference_fields_never_raises(
    ref: Any, node_value: Any, topology: Any, pod_cidr: Any, pod_cidrs: Any, probe: str
) -> None:
    index = IdentityIndex()
    ep = endpoints_obj("svc", [("10.244.9.1", target("p-0"), NODE_B)])
    ep["subsets"][0]["addresses"][0].update(targetRef=ref, nodeName=node_value)
    sl = slice_obj("svc-8kx2p", "svc", [("10.244.9.1", target("p-0"), NODE_B)], v1=False)
    sl["endpoints"][0].update(targetRef=ref, topology=topology)
    nd = node_obj("node-x", "10.0.0.99", ["10.244.7.0/24"])
    nd["spec"].update(podCIDR=pod_cidr, podCIDRs=pod_cidrs)
    for kind, obj in (("Endpoints", ep), ("EndpointSlice", sl), ("Node", nd)):
        index.apply(kind, "ADDED", obj, T0)
        index.apply(kind, "MODIFIED", obj, T0 + S)
    for port in (None, 8080):
        ident = index.resolve(probe, port, T0 + 2 * S)
        assert ident is None or ident.kind in {"endpoint", "pod-cidr", "node"}
        for value in (None if ident is None else (ident.pod, ident.namespace, ident.node)) or ():
            assert value is None or DNS.fullmatch(value), value
    stats = index.stats()
    assert (stats["internal_errors"], stats["skipped_total"]) == (0, 0)
    assert len(stats["ignored"]) <= 8  # fixed field names, never the hostile text
    index.prune(T0 + 10**6 * S)
