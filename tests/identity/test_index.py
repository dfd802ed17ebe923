"""The identity index (capture.k8s.index), fed API-shaped objects built here, asked at chosen times.

No cluster: the index is sans-IO and a real API server would only hand it the same dicts (the lab
tests in this directory do that end to end). Objects are built the way the API server returns them
(camelCase, ownerReferences, status.podIPs, containerStatuses with runtime-prefixed ids, both
EndpointSlice shapes) including fields the index must ignore. Expected identities come from what
each test built, never from the index's own output.
"""

from __future__ import annotations

import copy
import datetime
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture.k8s.index import KINDS, IdentityIndex
from capture.procs import container_id
from dissect.model import Call, Endpoint

# conftest.py marks every test here root+slow for the lab; these need neither, and must not wait
# behind the lab tests' xdist group
pytestmark = pytest.mark.xdist_group("identity-index")

S = 10**9
T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z
NODE_A, NODE_A_IP = "node-a", "10.0.0.11"
NODE_B, NODE_B_IP = "node-b", "10.0.0.12"


def rfc3339(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns // S, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cid(n: int) -> str:
    return f"{n:064x}"


def meta(name: str, ns: str | None, uid: str, created: int, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "name": name,
        "uid": uid,
        "resourceVersion": "12345",
        "creationTimestamp": rfc3339(created),
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1"}],
        **extra,
    }
    if ns is not None:
        m["namespace"] = ns
    return m


def owner_ref(kind: str, name: str, uid: str, controller: bool = True) -> dict[str, Any]:
    group = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    return {
        "apiVersion": group,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def pod(
    name: str,
    ns: str = "shop",
    *,
    ip: str | None = None,
    uid: str | None = None,
    node: str = NODE_A,
    host_ip: str = NODE_A_IP,
    labels: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
    host_network: bool = False,
    ports: list[dict[str, Any]] | None = None,
    containers: tuple[str, ...] = ("app",),
    container_ids: dict[str, str] | None = None,
    created: int = T0,
    phase: str | None = None,
) -> dict[str, Any]:
    """A pod as the API returns it once scheduled (and running with ``ip`` when given)."""
    m = meta(name, ns, uid or f"uid-{ns}-{name}", created, labels=labels or {"app": name})
    if owner is not None:
        m["ownerReferences"] = [owner]
    spec: dict[str, Any] = {
        "nodeName": node,
        "restartPolicy": "Always",
        "containers": [
            {
                "name": c,
                "image": "k8s-lab.local/busybox:1",
                "ports": (ports or []) if i == 0 else [],
                "resources": {},
            }
            for i, c in enumerate(containers)
        ],
    }
    if host_network:
        spec["hostNetwork"] = True
    status: dict[str, Any] = {"phase": phase or ("Running" if ip else "Pending"), "hostIP": host_ip}
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}], startTime=rfc3339(created))
    if container_ids:
        status["containerStatuses"] = [
            {"name": c, "ready": True, "restartCount": 0, "containerID": ref, "state": {"running": {}}}
            for c, ref in container_ids.items()
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": spec, "status": status}


def replicaset(name: str, deployment: str | None, ns: str = "shop") -> dict[str, Any]:
    m = meta(name, ns, f"uid-rs-{name}", T0)
    if deployment is not None:
        m["ownerReferences"] = [owner_ref("Deployment", deployment, f"uid-dep-{deployment}")]
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": m, "status": {"replicas": 2}}


def workload(kind: str, name: str, ns: str = "shop", owner: dict[str, Any] | None = None) -> dict[str, Any]:
    m = meta(name, ns, f"uid-{kind}-{name}", T0)
    if owner is not None:
        m["ownerReferences"] = [owner]
    return {"kind": kind, "metadata": m, "spec": {}, "status": {}}


def service(
    name: str,
    ns: str = "shop",
    *,
    cluster_ip: str | None,
    ports: list[tuple[str, int, int | None]] = (),  # type: ignore[assignment]
    external_ips: list[str] | None = None,
    created: int = T0,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "NodePort" if any(np for _, _, np in ports) else "ClusterIP",
        "clusterIP": cluster_ip or "None",
        "clusterIPs": [cluster_ip or "None"],
        "selector": {"app": name},
        "ports": [
            {
                "name": pname,
                "port": port,
                "protocol": "TCP",
                "targetPort": 8080,
                **({"nodePort": np} if np else {}),
            }
            for pname, port, np in ports
        ],
    }
    if external_ips:
        spec["externalIPs"] = external_ips
    return {"kind": "Service", "metadata": meta(name, ns, f"uid-svc-{ns}-{name}", created), "spec": spec}


def endpoints(name: str, ips: list[str], ports: list[tuple[str, int]], ns: str = "shop") -> dict[str, Any]:
    return {
        "kind": "Endpoints",
        "metadata": meta(name, ns, f"uid-ep-{ns}-{name}", T0),
        "subsets": [
            {
                "addresses": [{"ip": ip, "targetRef": {"kind": "Pod", "namespace": ns}} for ip in ips],
                "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
            }
        ]
        if ips
        else [],
    }


def endpoint_slice(
    name: str, service_name: str, ips: list[str], ports: list[tuple[str, int]], v1: bool, ns: str = "shop"
) -> dict[str, Any]:
    def one(ip: str) -> dict[str, Any]:
        e: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": True}}
        if v1:
            e["nodeName"] = NODE_A
        else:
            e["topology"] = {"kubernetes.io/hostname": NODE_A}
        return e

    return {
        "apiVersion": "discovery.k8s.io/v1" if v1 else "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": meta(name, ns, f"uid-es-{name}", T0, labels={"kubernetes.io/service-name": service_name}),
        "addressType": "IPv4",
        "endpoints": [one(ip) for ip in ips],
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def node(name: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": meta(name, None, f"uid-node-{name}", T0, labels={"kubernetes.io/hostname": name}),
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
        },
    }


@pytest.fixture
def index() -> IdentityIndex:
    return IdentityIndex(ip_lead_ns=0)


# --- pods and workloads -------------------------------------------------------------------------------


def test_pod_ip_names_pod_and_deployment_through_its_replicaset(index: IdentityIndex) -> None:
    index.apply("ReplicaSet", "ADDED", replicaset("web-5d9c7", "web"), T0)
    labels = {"app": "web", "pod-template-hash": "5d9c7", "tier": "front"}
    owner = owner_ref("ReplicaSet", "web-5d9c7", "uid-rs-web-5d9c7")
    index.apply("Pod", "ADDED", pod("web-5d9c7-abcde", labels=labels, owner=owner, uid="u1"), T0)
    index.apply(
        "Pod", "MODIFIED", pod("web-5d9c7-abcde", ip="10.1.0.7", labels=labels, owner=owner, uid="u1"), T0 + S
    )
    ident = index.resolve("10.1.0.7", 8080, T0 + 2 * S)
    assert ident is not None
    assert (ident.kind, ident.pod, ident.namespace, ident.workload, ident.node, ident.pod_uid) == (
        "pod",
        "web-5d9c7-abcde",
        "shop",
        "Deployment/web",
        NODE_A,
        "u1",
    )
    assert dict(ident.labels) == labels
    assert ident.container == "app"  # the pod's only container
    assert index.resolve("10.1.0.8", 8080, T0 + 2 * S) is None


def test_workload_follows_replicaset_seen_after_its_pods(index: IdentityIndex) -> None:
    """Watches of different kinds deliver in any order; a cached workload must not go stale."""
    owner = owner_ref("ReplicaSet", "api-77", "uid-rs-api-77")
    index.apply("Pod", "ADDED", pod("api-77-x", ip="10.1.0.9", owner=owner), T0)
    ident = index.resolve("10.1.0.9", None, T0 + S)
    assert ident is not None and ident.workload == "ReplicaSet/api-77"  # no pod-template-hash: no guess
    index.apply("ReplicaSet", "ADDED", replicaset("api-77", "api"), T0 + S)
    ident = index.resolve("10.1.0.9", None, T0 + S)
    assert ident is not None and ident.workload == "Deployment/api"


def test_unseen_replicaset_with_template_hash_names_the_deployment(index: IdentityIndex) -> None:
    owner = owner_ref("ReplicaSet", "shop-front-6f8b9c", "uid-rs")
    labels = {"app": "front", "pod-template-hash": "6f8b9c"}
    index.apply(
        "Pod", "ADDED", pod("shop-front-6f8b9c-q2w3e", ip="10.1.0.10", owner=owner, labels=labels), T0
    )
    ident = index.resolve("10.1.0.10", None, T0 + S)
    assert ident is not None and ident.workload == "Deployment/shop-front"


@pytest.mark.parametrize(
    ("owners", "pod_owner", "expected"),
    [
        ([], owner_ref("StatefulSet", "db", "uid-ss"), "StatefulSet/db"),
        ([], owner_ref("DaemonSet", "agent", "uid-ds"), "DaemonSet/agent"),
        (
            [("Job", workload("Job", "backup-28300000", owner=owner_ref("CronJob", "backup", "uid-cj")))],
            owner_ref("Job", "backup-28300000", "uid-job"),
            "CronJob/backup",
        ),
        ([("Job", workload("Job", "migrate"))], owner_ref("Job", "migrate", "uid-job2"), "Job/migrate"),
        ([], None, "Pod/debug"),
        (
            [],
            {"apiVersion": "v1", "kind": "Node", "name": NODE_A, "uid": "n", "controller": True},
            "Pod/debug",
        ),
    ],
    ids=["statefulset", "daemonset", "cronjob-through-job", "bare-job", "bare-pod", "static-pod"],
)
def test_workload_kinds(
    index: IdentityIndex,
    owners: list[tuple[str, dict[str, Any]]],
    pod_owner: dict[str, Any] | None,
    expected: str,
) -> None:
    for kind, obj in owners:
        index.apply(kind, "ADDED", obj, T0)
    index.apply("Pod", "ADDED", pod("debug", ip="10.1.0.20", owner=pod_owner), T0)
    ident = index.resolve("10.1.0.20", None, T0 + S)
    assert ident is not None and ident.workload == expected


def test_non_controller_owner_reference_is_used_only_without_a_controller(index: IdentityIndex) -> None:
    p = pod("w", ip="10.1.0.21", owner=owner_ref("ConfigMap", "cm", "uid-cm", controller=False))
    p["metadata"]["ownerReferences"].append(owner_ref("StatefulSet", "db", "uid-ss"))
    index.apply("Pod", "ADDED", p, T0)
    ident = index.resolve("10.1.0.21", None, T0 + S)
    assert ident is not None and ident.workload == "StatefulSet/db"


# --- IP reuse over time -------------------------------------------------------------------------------


def test_ip_reuse_resolves_by_time(index: IdentityIndex) -> None:
    ip = "10.1.0.30"
    index.apply("Pod", "ADDED", pod("a", uid="ua"), T0)  # scheduled, no IP yet
    index.apply("Pod", "MODIFIED", pod("a", uid="ua", ip=ip), T0 + 10 * S)
    index.apply("Pod", "DELETED", pod("a", uid="ua", ip=ip), T0 + 20 * S)
    index.apply("Pod", "ADDED", pod("b", uid="ub", created=T0 + 25 * S), T0 + 25 * S)
    index.apply("Pod", "MODIFIED", pod("b", uid="ub", ip=ip, created=T0 + 25 * S), T0 + 30 * S)

    def who(t: int) -> str | None:
        ident = index.resolve(ip, 80, t)
        return None if ident is None else ident.pod

    assert who(T0 + 9 * S) is None
    assert who(T0 + 10 * S) == "a"
    assert who(T0 + 20 * S - 1) == "a"
    assert who(T0 + 20 * S) is None
    assert who(T0 + 29 * S) is None
    assert who(T0 + 30 * S) == "b"
    assert who(T0 + 3600 * S) == "b"


def test_new_holder_takes_the_ip_before_the_old_pods_delete_arrives(index: IdentityIndex) -> None:
    ip = "10.1.0.31"
    index.apply("Pod", "MODIFIED", pod("old", uid="uo", ip=ip), T0 + 1 * S)
    index.apply("Pod", "ADDED", pod("new", uid="un", created=T0 + 50 * S), T0 + 50 * S)
    index.apply("Pod", "MODIFIED", pod("new", uid="un", ip=ip, created=T0 + 50 * S), T0 + 60 * S)
    index.apply("Pod", "DELETED", pod("old", uid="uo", ip=ip), T0 + 70 * S)
    assert index.resolve(ip, None, T0 + 55 * S).pod == "old"  # type: ignore[union-attr]
    assert index.resolve(ip, None, T0 + 60 * S).pod == "new"  # type: ignore[union-attr]
    assert index.resolve(ip, None, T0 + 65 * S).pod == "new"  # type: ignore[union-attr]
    index.apply("Pod", "DELETED", pod("new", uid="un", ip=ip), T0 + 80 * S)
    assert index.resolve(ip, None, T0 + 90 * S) is None  # the old pod does not come back
    assert index.stats()["counts"]["ip_taken_over"] == 1


def test_pod_first_seen_running_holds_its_ip_since_creation_but_not_before_the_previous_holder(
    index: IdentityIndex,
) -> None:
    ip = "10.1.0.32"
    # the previous holder is deleted at T0+100; the next pod object was created at T0+90 (before
    # that delete) and is first seen, running with the same IP, at T0+200
    index.apply("Pod", "MODIFIED", pod("prev", uid="up", ip=ip), T0)
    index.apply("Pod", "DELETED", pod("prev", uid="up", ip=ip), T0 + 100 * S)
    index.apply("Pod", "ADDED", pod("next", uid="un", ip=ip, created=T0 + 90 * S), T0 + 200 * S)
    assert index.resolve(ip, None, T0 + 95 * S).pod == "prev"  # type: ignore[union-attr]
    assert index.resolve(ip, None, T0 + 150 * S).pod == "next"  # type: ignore[union-attr]
    # and without a previous holder: from its creationTimestamp
    index.apply("Pod", "ADDED", pod("early", ip="10.1.0.33", created=T0 + 5 * S), T0 + 200 * S)
    assert index.resolve("10.1.0.33", None, T0 + 4 * S) is None
    assert index.resolve("10.1.0.33", None, T0 + 5 * S).pod == "early"  # type: ignore[union-attr]


def test_ip_lead_covers_calls_just_before_the_ip_was_seen() -> None:
    index = IdentityIndex(ip_lead_ns=5 * S)
    ip = "10.1.0.34"
    index.apply("Pod", "MODIFIED", pod("a", uid="ua", ip=ip), T0)
    index.apply("Pod", "DELETED", pod("a", uid="ua"), T0 + 100 * S)
    index.apply("Pod", "ADDED", pod("b", uid="ub", created=T0 + 101 * S), T0 + 101 * S)
    index.apply("Pod", "MODIFIED", pod("b", uid="ub", ip=ip, created=T0 + 101 * S), T0 + 110 * S)
    assert index.resolve(ip, None, T0 + 106 * S).pod == "b"  # type: ignore[union-attr]  # 4 s early
    assert index.resolve(ip, None, T0 + 104 * S) is None  # 6 s early: too early
    assert index.resolve(ip, None, T0 + 99 * S).pod == "a"  # type: ignore[union-attr]  # held: no lead


def test_finished_pod_releases_its_ip(index: IdentityIndex) -> None:
    ip = "10.1.0.35"
    owner = owner_ref("Job", "migrate", "uid-job")
    index.apply("Pod", "MODIFIED", pod("migrate-x", ip=ip, owner=owner), T0)
    index.apply("Pod", "MODIFIED", pod("migrate-x", ip=ip, owner=owner, phase="Succeeded"), T0 + 30 * S)
    assert index.resolve(ip, None, T0 + 29 * S).workload == "Job/migrate"  # type: ignore[union-attr]
    assert index.resolve(ip, None, T0 + 31 * S) is None
    # a completed pod first seen in a list holds nothing
    index.apply("Pod", "ADDED", pod("done", ip="10.1.0.36", phase="Failed"), T0 + 40 * S)
    assert index.resolve("10.1.0.36", None, T0 + 41 * S) is None


def test_recreated_pod_of_the_same_name_is_a_new_pod(index: IdentityIndex) -> None:
    """A StatefulSet's web-0 deleted and recreated while the watch missed the delete (new uid)."""
    owner = owner_ref("StatefulSet", "web", "uid-ss")
    index.apply("Pod", "MODIFIED", pod("web-0", uid="u-old", ip="10.1.0.40", owner=owner), T0)
    index.apply(
        "Pod",
        "MODIFIED",
        pod("web-0", uid="u-new", ip="10.1.0.41", owner=owner, created=T0 + 50 * S),
        T0 + 60 * S,
    )
    assert index.resolve("10.1.0.40", None, T0 + 59 * S).pod_uid == "u-old"  # type: ignore[union-attr]
    assert index.resolve("10.1.0.40", None, T0 + 61 * S) is None
    assert index.resolve("10.1.0.41", None, T0 + 55 * S).pod_uid == "u-new"  # type: ignore[union-attr]
    # a late DELETED of the old incarnation must not end the new one
    index.apply("Pod", "DELETED", pod("web-0", uid="u-old", ip="10.1.0.40"), T0 + 70 * S)
    assert index.resolve("10.1.0.41", None, T0 + 80 * S).pod_uid == "u-new"  # type: ignore[union-attr]
    assert index.stats()["counts"]["deleted_stale.Pod"] == 1


def test_pod_ip_change_ends_the_old_address(index: IdentityIndex) -> None:
    index.apply("Pod", "MODIFIED", pod("a", ip="10.1.0.50"), T0)
    index.apply("Pod", "MODIFIED", pod("a", ip="10.1.0.51"), T0 + 10 * S)  # sandbox recreated
    assert index.resolve("10.1.0.50", None, T0 + 5 * S).pod == "a"  # type: ignore[union-attr]
    assert index.resolve("10.1.0.50", None, T0 + 11 * S) is None
    assert index.resolve("10.1.0.51", None, T0 + 11 * S).pod == "a"  # type: ignore[union-attr]


def test_dual_stack_and_other_ipv6_spellings(index: IdentityIndex) -> None:
    p = pod("v6", ip="10.1.0.60")
    p["status"]["podIPs"] = [{"ip": "10.1.0.60"}, {"ip": "fd00:10:1::0:3c"}]
    index.apply("Pod", "ADDED", p, T0)
    for spelling in ("fd00:10:1::3c", "FD00:10:1:0:0:0:0:3C", "10.1.0.60", "::ffff:10.1.0.60"):
        ident = index.resolve(spelling, None, T0 + S)
        assert ident is not None and ident.pod == "v6", spelling


# --- hostNetwork pods, nodes, hostPorts ------------------------------------------------------------------


def test_host_network_pod_resolves_by_node_ip_and_port(index: IdentityIndex) -> None:
    index.apply("Node", "ADDED", node(NODE_A, NODE_A_IP), T0)
    exporter = pod(
        "node-exporter-abc",
        ip=NODE_A_IP,
        host_network=True,
        ports=[{"containerPort": 9100, "hostPort": 9100, "protocol": "TCP", "name": "metrics"}],
        containers=("exporter", "proxy"),
        owner=owner_ref("DaemonSet", "node-exporter", "uid-ds"),
    )
    index.apply("Pod", "ADDED", exporter, T0)
    ident = index.resolve(NODE_A_IP, 9100, T0 + S)
    assert ident is not None
    assert (ident.kind, ident.pod, ident.workload, ident.container, ident.node) == (
        "host-port",
        "node-exporter-abc",
        "DaemonSet/node-exporter",
        "exporter",  # the container declaring the port, of two
        NODE_A,
    )
    for port in (22, 43512, None):  # sshd, a hostNetwork client's ephemeral port, no port
        ident = index.resolve(NODE_A_IP, port, T0 + S)
        assert ident is not None and (ident.kind, ident.node, ident.pod) == ("node", NODE_A, None), port


def test_node_is_known_from_pods_when_nodes_are_not_watched(index: IdentityIndex) -> None:
    index.apply("Pod", "ADDED", pod("a", ip="10.1.0.70", node=NODE_B, host_ip=NODE_B_IP), T0)
    ident = index.resolve(NODE_B_IP, 22, T0 + S)
    assert ident is not None and (ident.kind, ident.node) == ("node", NODE_B)


def test_host_port_of_a_pod_network_pod(index: IdentityIndex) -> None:
    index.apply("Node", "ADDED", node(NODE_B, NODE_B_IP), T0)
    ingress = pod(
        "ingress-1",
        ip="10.1.0.71",
        node=NODE_B,
        host_ip=NODE_B_IP,
        ports=[{"containerPort": 8443, "hostPort": 443, "protocol": "TCP"}],
    )
    index.apply("Pod", "ADDED", ingress, T0)
    assert index.resolve(NODE_B_IP, 443, T0 + S).pod == "ingress-1"  # type: ignore[union-attr]
    assert index.resolve("10.1.0.71", 8443, T0 + S).pod == "ingress-1"  # type: ignore[union-attr]
    assert index.resolve(NODE_B_IP, 8443, T0 + S).kind == "node"  # type: ignore[union-attr]


# --- services ------------------------------------------------------------------------------------------


def test_cluster_ip_resolves_to_the_service(index: IdentityIndex) -> None:
    index.apply("Service", "ADDED", service("api", cluster_ip="10.96.0.12", ports=[("http", 80, None)]), T0)
    index.apply(
        "Service", "ADDED", service("db", cluster_ip=None, ports=[("pg", 5432, None)]), T0
    )  # headless
    ident = index.resolve("10.96.0.12", 80, T0 + S)
    assert ident is not None
    assert (ident.kind, ident.service, ident.namespace, ident.services, ident.pod) == (
        "service",
        "api",
        "shop",
        ("shop/api",),
        None,
    )
    assert index.resolve("10.96.0.12", 9999, T0 + S).service == "api"  # type: ignore[union-attr]
    assert index.resolve("None", 5432, T0 + S) is None
    index.apply("Service", "DELETED", service("api", cluster_ip="10.96.0.12"), T0 + 10 * S)
    assert index.resolve("10.96.0.12", 80, T0 + 11 * S) is None
    assert index.resolve("10.96.0.12", 80, T0 + 9 * S).service == "api"  # type: ignore[union-attr]


def test_node_port_and_external_ip(index: IdentityIndex) -> None:
    index.apply("Node", "ADDED", node(NODE_A, NODE_A_IP), T0)
    svc = service("shop", cluster_ip="10.96.0.20", ports=[("http", 80, 30080)], external_ips=[NODE_A_IP])
    index.apply("Service", "ADDED", svc, T0)
    ident = index.resolve(NODE_A_IP, 30080, T0 + S)
    assert ident is not None and (ident.kind, ident.service, ident.node) == ("node-port", "shop", NODE_A)
    ident = index.resolve(NODE_A_IP, 80, T0 + S)  # externalIP on the node's address, on the service's port
    assert ident is not None and (ident.kind, ident.service) == ("service", "shop")
    ident = index.resolve(NODE_A_IP, 22, T0 + S)  # the same address on another port is the node
    assert ident is not None and (ident.kind, ident.node, ident.service) == ("node", NODE_A, None)


@pytest.mark.parametrize("source", ["Endpoints", "EndpointSlice/v1", "EndpointSlice/v1beta1"])
def test_pod_ip_gets_the_services_whose_endpoints_list_it(index: IdentityIndex, source: str) -> None:
    index.apply("Pod", "ADDED", pod("api-1", ip="10.1.0.80", labels={"app": "api", "metrics": "on"}), T0)
    index.apply("Pod", "ADDED", pod("api-2", ip="10.1.0.81", labels={"app": "api"}), T0)

    def feed(svc: str, ips: list[str], ports: list[tuple[str, int]], t: int, event: str = "ADDED") -> None:
        if source == "Endpoints":
            index.apply("Endpoints", event, endpoints(svc, ips, ports), t)
        else:
            obj = endpoint_slice(f"{svc}-x7k2p", svc, ips, ports, v1=source.endswith("v1"))
            index.apply("EndpointSlice", event, obj, t)

    feed("api", ["10.1.0.80", "10.1.0.81"], [("http", 8080)], T0)
    feed("api-metrics", ["10.1.0.80"], [("metrics", 9090)], T0)
    ident = index.resolve("10.1.0.80", 8080, T0 + S)
    assert ident is not None and ident.pod == "api-1"
    assert (ident.service, ident.services) == ("api", ("shop/api", "shop/api-metrics"))
    ident = index.resolve("10.1.0.80", 9090, T0 + S)
    assert ident is not None and ident.service == "api-metrics"  # the service whose port matches
    # api-2 leaves the service at T0+10 (its readiness... or it was deleted): by time
    feed("api", ["10.1.0.80"], [("http", 8080)], T0 + 10 * S, "MODIFIED")
    assert index.resolve("10.1.0.81", 8080, T0 + 5 * S).service == "api"  # type: ignore[union-attr]
    ident = index.resolve("10.1.0.81", 8080, T0 + 11 * S)
    assert ident is not None and (ident.pod, ident.service, ident.services) == ("api-2", None, ())


def test_service_backends_at_a_time(index: IdentityIndex) -> None:
    index.apply("Service", "ADDED", service("api", cluster_ip="10.96.0.30", ports=[("http", 80, None)]), T0)
    index.apply("Pod", "ADDED", pod("api-1", ip="10.1.0.90"), T0)
    index.apply("Pod", "ADDED", pod("api-2", ip="10.1.0.91"), T0)
    index.apply("Endpoints", "ADDED", endpoints("api", ["10.1.0.90", "10.1.0.91"], [("http", 8080)]), T0)
    index.apply("Endpoints", "MODIFIED", endpoints("api", ["10.1.0.91"], [("http", 8080)]), T0 + 10 * S)
    before = index.service_backends("shop", "api", T0 + 5 * S, port=80)
    assert [(b.ip, b.port, b.identity.pod if b.identity else None) for b in before] == [
        ("10.1.0.90", 8080, "api-1"),
        ("10.1.0.91", 8080, "api-2"),
    ]
    after = index.service_backends("shop", "api", T0 + 11 * S, port=80)
    assert [b.ip for b in after] == ["10.1.0.91"]
    assert index.service_backends("shop", "api", T0 + 11 * S, port=443) == []  # not a port of the service
    assert [b.port for b in index.service_backends("shop", "api", T0 + 11 * S)] == [None]


# --- containers and tagging ------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["containerd", "docker", "cri-o"])
def test_container_id_names_the_pod(index: IdentityIndex, runtime: str) -> None:
    ids = {"app": f"{runtime}://{cid(1)}", "sidecar": f"{runtime}://{cid(2)}"}
    owner = owner_ref("StatefulSet", "db", "uid-ss")
    index.apply(
        "Pod",
        "ADDED",
        pod("db-0", ip="10.1.1.1", containers=("app", "sidecar"), container_ids=ids, owner=owner),
        T0,
    )
    # what capture.procs reads from /proc/PID/cgroup of a process in the sidecar (cgroup v2, systemd driver)
    cgroup = (
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx.slice/"
        f"cri-containerd-{cid(2)}.scope\n"
    )
    ident = index.by_container(container_id(cgroup))
    assert ident is not None
    assert (ident.kind, ident.pod, ident.container, ident.workload) == (
        "container",
        "db-0",
        "sidecar",
        "StatefulSet/db",
    )
    assert index.by_container(f"{runtime}://{cid(1)}").container == "app"  # type: ignore[union-attr]
    assert index.by_container(cid(3)) is None


def test_restarted_container_keeps_its_last_id_and_ids_end_with_the_pod() -> None:
    index = IdentityIndex(history_ns=60 * S)
    p = pod("w", ip="10.1.1.2", container_ids={"app": f"containerd://{cid(11)}"})
    index.apply("Pod", "ADDED", p, T0)
    p = copy.deepcopy(p)
    p["status"]["containerStatuses"][0]["containerID"] = f"containerd://{cid(12)}"
    p["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"containerID": f"containerd://{cid(11)}"}
    }
    index.apply("Pod", "MODIFIED", p, T0 + 10 * S)
    assert index.by_container(cid(11)).pod == "w"  # type: ignore[union-attr]
    assert index.by_container(cid(12)).pod == "w"  # type: ignore[union-attr]
    index.apply("Pod", "DELETED", p, T0 + 20 * S)
    assert index.by_container(cid(12)).pod == "w"  # type: ignore[union-attr]  # still, for late calls
    index.prune(T0 + 81 * S)
    assert index.by_container(cid(12)) is None
    assert index.by_container(cid(11)) is None


def test_tag_fills_both_ends_without_overwriting(index: IdentityIndex) -> None:
    index.apply("Node", "ADDED", node(NODE_A, NODE_A_IP), T0)
    index.apply("ReplicaSet", "ADDED", replicaset("web-5d9c7", "web"), T0)
    client = pod(
        "web-5d9c7-abcde",
        ip=NODE_A_IP,
        host_network=True,
        owner=owner_ref("ReplicaSet", "web-5d9c7", "uid-rs-web-5d9c7"),
        container_ids={"app": f"containerd://{cid(21)}"},
        labels={"app": "web"},
    )
    index.apply("Pod", "ADDED", client, T0)
    index.apply("Service", "ADDED", service("api", cluster_ip="10.96.0.12", ports=[("http", 80, None)]), T0)
    call = Call(
        protocol="http",
        src=Endpoint(
            ip=NODE_A_IP, port=51234, pid=812, process="node", container=cid(21), node="worker-node"
        ),
        dst=Endpoint(ip="10.96.0.12", port=80),
        request_ts=T0 + S,
    )
    index.tag(call)
    s, d = call.src, call.dst
    # the client is a hostNetwork pod: its address says only "node", its container names the pod
    assert (s.pod, s.namespace, s.workload, s.labels) == (
        "web-5d9c7-abcde",
        "shop",
        "Deployment/web",
        {"app": "web"},
    )
    assert (s.pid, s.process, s.container, s.node) == (812, "node", cid(21), "worker-node")  # kept
    assert (d.pod, d.namespace, d.service, d.workload, d.labels) == (None, "shop", "api", None, {})
    s.labels["app"] = "changed"  # the call owns its labels
    assert index.by_container(cid(21)).labels["app"] == "web"  # type: ignore[union-attr]


def test_tag_uses_the_response_time_and_counts_disagreement(index: IdentityIndex) -> None:
    ids = {"app": f"containerd://{cid(31)}"}
    index.apply("Pod", "MODIFIED", pod("a", ip="10.1.2.1", container_ids=ids), T0)
    index.apply("Pod", "MODIFIED", pod("b", ip="10.1.2.2"), T0)
    # only the response was seen: its time tags; the address names pod b, the process's container pod a
    call = Call(
        protocol="http",
        src=Endpoint(ip="10.1.2.9", port=40000),
        dst=Endpoint(ip="10.1.2.2", port=80, container=cid(31)),
        response_ts=T0 + S,
    )
    index.tag(call)
    assert (call.dst.pod, call.src.pod) == ("a", None)
    assert index.stats()["counts"]["tag_disagreements"] == 1


# --- relist, deletes, history ----------------------------------------------------------------------------


def test_replace_ends_what_the_new_list_lacks(index: IdentityIndex) -> None:
    index.apply("Pod", "ADDED", pod("a", ip="10.1.3.1"), T0)
    index.apply("Pod", "ADDED", pod("b", ip="10.1.3.2"), T0)
    index.apply("Pod", "ADDED", pod("c", ns="other", ip="10.1.3.3"), T0)
    index.apply("ReplicaSet", "ADDED", replicaset("web-1", "web"), T0)
    index.apply("Deployment", "ADDED", workload("Deployment", "web"), T0)
    index.apply("Endpoints", "ADDED", endpoints("a", ["10.1.3.1"], [("", 80)]), T0)
    index.apply("EndpointSlice", "ADDED", endpoint_slice("a-1", "a", ["10.1.3.1"], [("", 80)], v1=True), T0)
    # 410 Gone, relist at T0+100: b was deleted meanwhile, a moved on (still there)
    index.replace("Pod", [pod("a", ip="10.1.3.1"), pod("c", ns="other", ip="10.1.3.3")], T0 + 100 * S)
    assert index.resolve("10.1.3.2", None, T0 + 99 * S).pod == "b"  # type: ignore[union-attr]
    assert index.resolve("10.1.3.2", None, T0 + 100 * S) is None
    assert index.resolve("10.1.3.1", None, T0 + 50 * S).pod == "a"  # type: ignore[union-attr]  # range kept
    # a namespace-scoped relist leaves the other namespaces alone
    index.replace("Pod", [], T0 + 110 * S, namespace="shop")
    assert index.resolve("10.1.3.1", None, T0 + 111 * S) is None
    assert index.resolve("10.1.3.3", None, T0 + 111 * S).pod == "c"  # type: ignore[union-attr]
    # kinds sharing a table: relisting Deployments leaves ReplicaSets, slices leave Endpoints
    index.replace("Deployment", [], T0 + 120 * S)
    index.replace("EndpointSlice", [], T0 + 120 * S)
    stats = index.stats()
    assert (stats["owners"], stats["endpoint_sources"], stats["pods"]) == (1, 1, 1)
    assert stats["counts"]["relist.Pod.ended"] == 2


def test_relist_in_any_order_gives_an_ip_to_its_newest_holder(index: IdentityIndex) -> None:
    """A list is not in time order: a stale pod still claiming an IP may come after the newer one."""
    ip = "10.1.3.20"
    index.replace(
        "Pod",
        [pod("new", uid="un", ip=ip, created=T0 + 50 * S), pod("stale", uid="us", ip=ip, created=T0)],
        T0 + 100 * S,
    )
    assert index.resolve(ip, None, T0 + 25 * S).pod == "stale"  # type: ignore[union-attr]
    assert index.resolve(ip, None, T0 + 50 * S).pod == "new"  # type: ignore[union-attr]
    assert index.resolve(ip, None, T0 + 200 * S).pod == "new"  # type: ignore[union-attr]


def test_objects_beyond_max_objects_are_skipped_and_counted() -> None:
    index = IdentityIndex(max_objects=2)
    for i in range(4):
        index.apply("Pod", "ADDED", pod(f"p{i}", ip=f"10.1.3.{30 + i}"), T0)
    index.apply("Pod", "MODIFIED", pod("p1", ip="10.1.3.31"), T0 + S)  # known objects still update
    stats = index.stats()
    assert (stats["pods"], stats["skipped"]["Pod.over max_objects"]) == (2, 2)
    assert index.resolve("10.1.3.31", None, T0 + S).pod == "p1"  # type: ignore[union-attr]
    assert index.resolve("10.1.3.33", None, T0 + S) is None


def test_delete_of_an_unknown_object_is_counted(index: IdentityIndex) -> None:
    index.apply("Pod", "DELETED", pod("ghost", ip="10.1.3.9"), T0)
    assert index.resolve("10.1.3.9", None, T0) is None
    assert index.stats()["counts"]["deleted_unknown.Pod"] == 1


def test_history_is_bounded_in_time_and_size() -> None:
    index = IdentityIndex(history_ns=60 * S, max_history=50, ip_lead_ns=0)
    for i in range(40):
        index.apply("Pod", "MODIFIED", pod(f"p{i}", uid=f"u{i}", ip=f"10.2.0.{i}"), T0)
        index.apply("Pod", "DELETED", pod(f"p{i}", uid=f"u{i}"), T0 + 10 * S)
    assert index.resolve("10.2.0.5", None, T0 + 5 * S).pod == "p5"  # type: ignore[union-attr]
    assert index.stats()["history"] == 40
    index.prune(T0 + 69 * S)  # 59 s after the deletes: kept
    assert index.resolve("10.2.0.5", None, T0 + 5 * S).pod == "p5"  # type: ignore[union-attr]
    index.prune(T0 + 71 * S)
    assert index.resolve("10.2.0.5", None, T0 + 5 * S) is None
    assert index.stats()["history"] == 0 and index.stats()["history_pruned"] == 40
    # more ended ranges than max_history: the oldest go first, counted
    for i in range(60):
        index.apply("Pod", "MODIFIED", pod(f"q{i}", uid=f"v{i}", ip=f"10.3.0.{i}"), T0 + 100 * S)
        index.apply("Pod", "DELETED", pod(f"q{i}", uid=f"v{i}"), T0 + 100 * S + i)
    stats = index.stats()
    assert (stats["history"], stats["history_evicted"]) == (50, 10)
    assert index.resolve("10.3.0.5", None, T0 + 100 * S) is None
    assert index.resolve("10.3.0.59", None, T0 + 100 * S).pod == "q59"  # type: ignore[union-attr]


def test_apply_prunes_as_event_time_advances() -> None:
    index = IdentityIndex(history_ns=10 * S)
    index.apply("Pod", "MODIFIED", pod("a", ip="10.4.0.1"), T0)
    index.apply("Pod", "DELETED", pod("a"), T0 + S)
    index.apply("Node", "ADDED", node(NODE_A, NODE_A_IP), T0 + 30 * S)  # any event moves time on
    assert index.stats()["history_pruned"] == 1


# --- hostile input -------------------------------------------------------------------------------------


def test_malformed_objects_are_counted_not_raised(index: IdentityIndex) -> None:
    bad: list[tuple[str, Any]] = [
        ("Pod", None),
        ("Pod", []),
        ("Pod", {"metadata": {"name": "x"}}),  # no namespace
        ("Pod", {"metadata": {"name": 5, "namespace": "a"}}),
        ("Service", {"metadata": "nope"}),
        ("EndpointSlice", {"metadata": {"name": "s", "namespace": "a"}}),  # no service-name label
        ("Node", {"metadata": {}}),
        ("Widget", {"metadata": {"name": "w"}}),
    ]
    for kind, obj in bad:
        index.apply(kind, "ADDED", obj, T0)
    index.apply("Pod", "BOOKMARK", {"metadata": {"resourceVersion": "9"}}, T0)
    index.apply("Pod", "ADDED", pod("ok", ip="10.5.0.1"), "later")  # type: ignore[arg-type]
    index.replace("Pod", 42, T0)  # type: ignore[arg-type]
    stats = index.stats()
    assert stats["skipped_total"] == len(bad) + 3
    assert stats["skipped"]["Pod.no namespace"] == 1 and stats["skipped"]["unknown kind"] == 1
    assert stats["internal_errors"] == 0 and stats["pods"] == 0
    # wrong types deep inside a valid object: the fields are ignored, the pod still counts
    p = pod("odd", ip="10.5.0.2")
    p["metadata"]["labels"] = {"app": "odd", "n": 3, 4: "x"}
    p["metadata"]["ownerReferences"] = "ReplicaSet"
    p["spec"]["containers"] = [
        {"name": "c", "ports": [{"containerPort": "80"}, None, {"containerPort": 70000}]}
    ]
    p["status"]["containerStatuses"] = [{"name": "c", "containerID": 12}]
    index.apply("Pod", "ADDED", p, T0)
    ident = index.resolve("10.5.0.2", None, T0)
    assert ident is not None and (ident.labels, ident.workload) == ({"app": "odd"}, "Pod/odd")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)
KEYS = st.sampled_from(
    [
        "metadata",
        "spec",
        "status",
        "name",
        "namespace",
        "uid",
        "labels",
        "ownerReferences",
        "podIP",
        "podIPs",
        "hostIP",
        "hostNetwork",
        "containers",
        "ports",
        "containerPort",
        "hostPort",
        "containerStatuses",
        "containerID",
        "clusterIP",
        "clusterIPs",
        "subsets",
        "addresses",
        "endpoints",
        "addressType",
        "kind",
        "controller",
        "phase",
        "creationTimestamp",
        "nodePort",
        "port",
        "ip",
        "address",
        "type",
        "targetRef",
        "nodeName",
        "topology",
        "kubernetes.io/hostname",
        "podCIDR",
        "podCIDRs",
    ]
)
REMOTE = {"ip": "10.9.1.1", "nodeName": NODE_B, "targetRef": {"kind": "Pod", "name": "r-x2kqz", "uid": "u"}}
REMOTE_V1 = {"addresses": ["10.9.1.1"], "nodeName": NODE_B, "targetRef": REMOTE["targetRef"]}
VALID = [
    ("Pod", pod("v", ip="10.9.0.1", ports=[{"containerPort": 80, "hostPort": 80}], container_ids={"app": f"containerd://{cid(5)}"})),
    ("Pod", pod("h", ip=NODE_A_IP, host_network=True, ports=[{"containerPort": 9100}])),
    ("Service", service("s", cluster_ip="10.96.9.1", ports=[("http", 80, 30001)], external_ips=["1.2.3.4"])),
    ("Endpoints", endpoints("s", ["10.9.0.1"], [("http", 80)])),
    ("EndpointSlice", endpoint_slice("s-1", "s", ["10.9.0.1"], [("http", 80)], v1=False)),
    ("ReplicaSet", replicaset("r", "d")),
    ("Job", workload("Job", "j", owner=owner_ref("CronJob", "c", "u"))),
    ("Node", node(NODE_A, NODE_A_IP)),
    # a remote pod (no Pod object) named by its endpoint, and a node's pod CIDRs
    ("Endpoints", {**endpoints("r", [], []), "subsets": [{"addresses": [REMOTE], "ports": [{"port": 80}]}]}),
    ("EndpointSlice", {**endpoint_slice("r-1", "r", [], [("", 80)], v1=True), "endpoints": [REMOTE_V1]}),
    ("Node", {**node(NODE_B, NODE_B_IP), "spec": {"podCIDRs": ["10.9.1.0/24", "fd00:9::/64"]}}),
]  # fmt: skip


def _mutate(obj: Any, path: list[str], value: Any) -> Any:
    """``obj`` with the value at ``path`` (dict keys, list elements by position) replaced or added."""
    obj = copy.deepcopy(obj)
    cur = obj
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(cur, dict):
            if last or not isinstance(cur.get(key), (dict, list)):
                cur[key] = value
                return obj
            cur = cur[key]
        elif isinstance(cur, list) and cur:
            if last or not isinstance(cur[0], (dict, list)):
                cur[0] = value
                return obj
            cur = cur[0]
    return obj


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from([*KINDS, "Bogus", None, ["Pod"]]),
            st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "x" * 500, {"type": "ADDED"}]),
            st.one_of(
                JSON,
                st.tuples(st.sampled_from(range(len(VALID))), st.lists(KEYS, min_size=1, max_size=5), JSON),
            ),
            st.integers(0, 120),
        ),
        max_size=25,
    ),
    probes=st.lists(
        st.tuples(
            st.sampled_from(
                ["10.9.0.1", NODE_A_IP, "10.96.9.1", "1.2.3.4", "x", "10.9.1.1", "10.9.1.7", "fd00:9::1"]
            ),
            st.integers(0, 130),
        )
    ),
)
def test_hostile_event_streams_never_raise(events: list[Any], probes: list[tuple[str, int]]) -> None:
    index = IdentityIndex(history_ns=30 * S, max_history=20)
    for kind, event, payload, sec in events:
        if isinstance(payload, tuple):  # a valid object of some kind with one field made hostile
            valid_kind, obj = VALID[payload[0]]
            obj = _mutate(obj, payload[1], payload[2])
            kind = valid_kind
        else:
            obj = payload
        index.apply(kind, event, obj, T0 + sec * S)
    if events:
        index.replace(events[0][0], [VALID[0][1], None, "x"], T0 + 125 * S)
    index.replace(["Pod"], [], T0)  # type: ignore[arg-type]
    assert index.resolve(17, 80, T0) is None  # type: ignore[arg-type]
    for ip, sec in probes:
        for port in (None, 80, 9100, 30001):
            ident = index.resolve(ip, port, T0 + sec * S)
            assert ident is None or ident.kind in {
                "pod", "host-port", "endpoint", "service", "node-port", "node", "pod-cidr"
            }  # fmt: skip
    call = Call(
        protocol="http",
        src=Endpoint(ip="10.9.0.1", port=1, container=cid(5)),
        dst=Endpoint(ip=NODE_A_IP, port=9100),
    )
    index.tag(call)
    index.service_backends("shop", "s", T0 + 60 * S, port=80)
    index.prune(T0 + 10_000 * S)
    stats = index.stats()
    assert stats["internal_errors"] == 0
    assert len(stats["skipped"]) <= 12 * len(KINDS)  # hostile names do not become counter keys
    assert len(stats["ignored"]) <= 8 * len(KINDS)


def test_concurrent_feeding_and_resolving() -> None:
    """The watch thread writes while capture threads read; nothing may raise or deadlock."""
    index = IdentityIndex(history_ns=5 * S)
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            for i in range(2000):
                t = T0 + i * S // 10
                index.apply("Pod", "MODIFIED", pod(f"p{i % 50}", uid=f"u{i}", ip=f"10.6.0.{i % 50}"), t)
                if i % 7 == 0:
                    index.apply("Pod", "DELETED", pod(f"p{i % 50}", uid=f"u{i}"), t)
        except BaseException as e:
            errors.append(e)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                for j in range(50):
                    index.resolve(f"10.6.0.{j}", 80, T0 + j * S)
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=writer),
        threading.Thread(target=reader),
        threading.Thread(target=reader),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    ident = index.resolve("10.6.0.49", 80, T0 + 1999 * S // 10)  # the writer's last pod holds its IP
    assert ident is not None and (ident.pod, ident.pod_uid) == ("p49", "u1999")
    assert index.stats()["internal_errors"] == 0
