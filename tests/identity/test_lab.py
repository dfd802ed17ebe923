"""Smoke tests: the lab behaves like the cluster the identity tests rely on.

Real kube-apiserver, controller-manager and scheduler; SimKubelet plays the kubelet of two fake
nodes. Each expected value comes from what the test created (names, replica counts, requested IPs,
the lab's service CIDR) or from the API server itself (uids, owner references, pod IPs), never
from podshark. If one of these fails, identity tests built on the lab would fail for the wrong
reason, so these run first (file order) and name the broken behaviour.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from pathlib import Path

import pytest

from tests.identity.kube import (
    IP_ANNOTATION,
    Lab,
    LabError,
    SimKubelet,
    apiserver_stopped,
    bare_pod,
    container_id,
    deployment,
    endpoint_ips,
    run_lab_script,
    service,
    statefulset,
    wait_for,
    wait_pods_ready,
)

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/24")  # the lab's --service-cluster-ip-range


def ips_of(pods: list[dict]) -> set[str]:
    return {p["status"]["podIP"] for p in pods}


def test_server_is_v1_20_without_discovery_v1(kube: Lab) -> None:
    """Identity code must fall back to core/v1 Endpoints here: discovery.k8s.io/v1 needs 1.21."""
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == "v1.20.2"
    versions = kube.api_versions()
    assert "discovery.k8s.io/v1beta1" in versions
    assert "discovery.k8s.io/v1" not in versions
    assert "v1" in versions and "apps/v1" in versions


def test_deployment_gets_replicaset_and_pods(kube: Lab, sim: SimKubelet, namespace: str) -> None:
    kube.apply(deployment(namespace, "web", sim.node_selector, replicas=3))
    pods = wait_pods_ready(kube, namespace, "app=web", 3)
    deploy = kube.get("-n", namespace, "deployment", "web")
    rss = kube.get("-n", namespace, "replicasets", "-l", "app=web")["items"]
    assert len(rss) == 1
    rs = rss[0]
    assert [
        (r["kind"], r["name"], r["uid"], r.get("controller")) for r in rs["metadata"]["ownerReferences"]
    ] == [("Deployment", "web", deploy["metadata"]["uid"], True)]
    for pod in pods:
        refs = pod["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"]) for r in refs] == [
            ("ReplicaSet", rs["metadata"]["name"], rs["metadata"]["uid"])
        ]


def test_sim_kubelet_gives_each_pod_its_own_ip_on_a_fake_node(
    kube: Lab, sim: SimKubelet, namespace: str
) -> None:
    kube.apply(deployment(namespace, "shop", sim.node_selector, replicas=4))
    pods = wait_pods_ready(kube, namespace, "app=shop", 4)
    assert len(ips_of(pods)) == 4
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(sim.pod_cidr) for ip in ips_of(pods))

    node_ips = {}
    for name, ip in sim.nodes.items():
        node = kube.get("node", name)
        addresses = {(a["type"], a["address"]) for a in node["status"]["addresses"]}
        assert ("InternalIP", ip) in addresses
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert [c["status"] for c in ready] == ["True"]
        node_ips[name] = ip
    for pod in pods:
        assert pod["spec"]["nodeName"] in node_ips  # bound by the real scheduler
        assert pod["status"]["hostIP"] == node_ips[pod["spec"]["nodeName"]]
        assert [c["containerID"] for c in pod["status"]["containerStatuses"]] == [
            container_id(pod["metadata"]["uid"], "app")
        ]

    kube.apply(deployment(namespace, "agent", sim.node_selector, host_network=True))
    (agent,) = wait_pods_ready(kube, namespace, "app=agent", 1)
    assert agent["status"]["podIP"] == node_ips[agent["spec"]["nodeName"]]  # hostNetwork: the node's IP


def test_service_gets_endpoints_listing_the_pod_ips(kube: Lab, sim: SimKubelet, namespace: str) -> None:
    kube.apply(
        deployment(namespace, "api", sim.node_selector, replicas=3, ports=[8080]),
        service(namespace, "api", {"app": "api"}, [(80, 8080)]),
    )
    pods = wait_pods_ready(kube, namespace, "app=api", 3)
    svc = kube.get("-n", namespace, "service", "api")
    assert ipaddress.ip_address(svc["spec"]["clusterIP"]) in SERVICE_CIDR
    wait_for(
        lambda: endpoint_ips(kube, namespace, "api") == ips_of(pods),
        what="Endpoints api = pod IPs",
        detail=lambda: str(endpoint_ips(kube, namespace, "api")),
    )
    (subset,) = kube.get("-n", namespace, "endpoints", "api")["subsets"]
    assert [(p["port"], p["protocol"]) for p in subset["ports"]] == [(8080, "TCP")]
    assert {(a["targetRef"]["kind"], a["targetRef"]["name"], a["ip"]) for a in subset["addresses"]} == {
        ("Pod", p["metadata"]["name"], p["status"]["podIP"]) for p in pods
    }


def test_deleted_pods_are_replaced_and_endpoints_follow(kube: Lab, sim: SimKubelet, namespace: str) -> None:
    kube.apply(
        deployment(namespace, "cart", sim.node_selector, replicas=2, ports=[9000]),
        service(namespace, "cart", {"app": "cart"}, [(9000, 9000)]),
    )
    before = wait_pods_ready(kube, namespace, "app=cart", 2)
    victim = before[0]["metadata"]["name"]
    kube.kubectl("-n", namespace, "delete", "pod", victim, "--wait=false")
    after = wait_for(
        lambda: (lambda ps: ps if victim not in {p["metadata"]["name"] for p in ps} else None)(
            wait_pods_ready(kube, namespace, "app=cart", 2)
        ),
        what=f"a replacement for {victim}",
    )
    old_uids = {p["metadata"]["uid"] for p in before}
    assert len([p for p in after if p["metadata"]["uid"] not in old_uids]) == 1
    wait_for(
        lambda: endpoint_ips(kube, namespace, "cart") == ips_of(after),
        what="Endpoints follow the replacement",
    )

    kube.kubectl("-n", namespace, "scale", "deployment/cart", "--replicas=4")
    scaled = wait_pods_ready(kube, namespace, "app=cart", 4)
    assert len(ips_of(scaled)) == 4
    wait_for(lambda: endpoint_ips(kube, namespace, "cart") == ips_of(scaled), what="Endpoints after scale up")
    kube.kubectl("-n", namespace, "scale", "deployment/cart", "--replicas=1")
    (left,) = wait_pods_ready(kube, namespace, "app=cart", 1)
    wait_for(
        lambda: endpoint_ips(kube, namespace, "cart") == {left["status"]["podIP"]},
        what="Endpoints after scale down",
    )


def test_an_ip_is_reused_by_a_new_pod_only_once_free(kube: Lab, sim: SimKubelet, namespace: str) -> None:
    ip = f"10.244.{200 + int.from_bytes(os.urandom(1)) % 50}.{1 + int.from_bytes(os.urandom(1)) % 250}"
    labels = {"role": "reuse"}
    kube.apply(
        bare_pod(namespace, "first", sim.node_selector, labels=labels, ip=ip),
        service(namespace, "reuse", labels, [(80, 80)]),
    )
    (first,) = wait_pods_ready(kube, namespace, "role=reuse", 1)
    assert first["status"]["podIP"] == ip

    kube.apply(bare_pod(namespace, "second", sim.node_selector, labels=labels, ip=ip))
    rounds = sim.rounds
    wait_for(lambda: sim.rounds >= rounds + 4, what="4 sim kubelet rounds", detail=sim.describe)
    second = kube.get("-n", namespace, "pod", "second")
    assert second["spec"].get("nodeName") in sim.nodes  # scheduled, but the IP is still held by `first`
    assert not (second.get("status") or {}).get("podIP")

    kube.kubectl("-n", namespace, "delete", "pod", "first", "--wait=false")
    (second,) = wait_pods_ready(kube, namespace, "role=reuse", 1, timeout=60)
    assert second["metadata"]["name"] == "second"
    assert second["status"]["podIP"] == ip
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    wait_for(lambda: endpoint_ips(kube, namespace, "reuse") == {ip}, what="Endpoints list the reused IP")
    (addr,) = kube.get("-n", namespace, "endpoints", "reuse")["subsets"][0]["addresses"]
    assert addr["targetRef"]["uid"] == second["metadata"]["uid"]


def test_statefulset_pod_recreated_under_same_name_gets_its_ip_again(
    kube: Lab, sim: SimKubelet, namespace: str
) -> None:
    ip = f"10.244.{100 + int.from_bytes(os.urandom(1)) % 50}.{1 + int.from_bytes(os.urandom(1)) % 250}"
    kube.apply(
        service(namespace, "db", {"app": "db"}, [(5432, 5432)], headless=True),
        statefulset(namespace, "db", sim.node_selector, service_name="db", ip=ip, ports=[5432]),
    )
    (pod,) = wait_pods_ready(kube, namespace, "app=db", 1)
    sts = kube.get("-n", namespace, "statefulset", "db")
    assert pod["metadata"]["name"] == "db-0"
    assert pod["metadata"]["annotations"][IP_ANNOTATION] == ip
    assert pod["status"]["podIP"] == ip
    assert [(r["kind"], r["uid"]) for r in pod["metadata"]["ownerReferences"]] == [
        ("StatefulSet", sts["metadata"]["uid"])
    ]
    kube.kubectl("-n", namespace, "delete", "pod", "db-0", "--wait=false")
    again = wait_for(
        lambda: [
            p
            for p in wait_pods_ready(kube, namespace, "app=db", 1)
            if p["metadata"]["uid"] != pod["metadata"]["uid"]
        ],
        what="db-0 recreated",
    )
    assert [(p["metadata"]["name"], p["status"]["podIP"]) for p in again] == [("db-0", ip)]
    wait_for(lambda: endpoint_ips(kube, namespace, "db") == {ip}, what="headless Endpoints of db")


def test_apiserver_restart_keeps_the_cluster(kube: Lab, sim: SimKubelet, namespace: str) -> None:
    kube.kubectl("-n", namespace, "create", "configmap", "marker", "--from-literal=k=v")
    marker = kube.get("-n", namespace, "configmap", "marker")["metadata"]
    errors = sim.errors
    with apiserver_stopped(kube):
        r = kube.kubectl("-n", namespace, "get", "configmap", "marker", check=False, timeout=30)
        assert r.returncode != 0
        wait_for(
            lambda: sim.errors > errors, what="the sim kubelet to notice the outage", detail=sim.describe
        )
    again = kube.get("-n", namespace, "configmap", "marker")["metadata"]
    assert (again["uid"], again["resourceVersion"]) == (marker["uid"], marker["resourceVersion"])
    kube.apply(deployment(namespace, "after", sim.node_selector, replicas=2))
    assert len(ips_of(wait_pods_ready(kube, namespace, "app=after", 2))) == 2


# ------------------------------------------------------------------------------- failures are errors
def _apt_sources(tmp_path: Path, port: int) -> Path:
    src = tmp_path / "sources.list"
    mirror = f"http://127.0.0.1:{port}/debian bookworm main"
    src.write_text(f"deb {mirror}\ndeb-src {mirror}\n")
    return src


def test_build_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror that refuses connections: the build stops with apt's error, it does not hang."""
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("K8S_LAB_APT_SOURCES", str(_apt_sources(tmp_path, port)))
    with pytest.raises(LabError, match=r"k8s-lab build failed \(exit 1\)") as err:
        run_lab_script(["build"], directory=tmp_path / "lab", timeout=300, log_name="build.log")
    # the error carries the log's tail: apt's own reason, then the step that failed
    assert "Connection refused" in str(err.value)
    assert "ERROR: apt-get download etcd-server" in str(err.value)


def test_a_hung_build_is_killed_at_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror that accepts and never answers: the timeout kills the whole process tree."""
    lab = tmp_path / "lab"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
        monkeypatch.setenv("K8S_LAB_APT_SOURCES", str(_apt_sources(tmp_path, s.getsockname()[1])))
        with pytest.raises(LabError, match="did not finish in 3s and was killed"):
            run_lab_script(["build"], directory=lab, timeout=3, log_name="build.log")

    def tree_gone() -> bool:
        for env in Path("/proc").glob("[0-9]*/environ"):
            try:
                if f"K8S_LAB_DIR={lab}\0".encode() in env.read_bytes():
                    return False
            except OSError:
                continue
        return True

    wait_for(tree_gone, timeout=10, what="no process left from the killed build")
