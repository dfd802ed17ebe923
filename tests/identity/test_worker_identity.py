"""`podshark worker --kubeconfig` against the real lab: every call names both of its ends.

The cluster is the project's lab (real kube-apiserver, controller-manager and scheduler v1.20) with
two simulated nodes; the pods' IPs are the ones SimKubelet reported to the API server. Each pod that
takes part in traffic is also a network namespace on a bridge *with that IP*, running a real server
(tests/capture/echo_http) or real curl; the worker runs as its own process, captures the bridge's
veths, and sends the calls to a real hub. The expected identity of each call comes from kubectl (pod
names, uids, IPs, owners as the controllers made them) and from the traffic the test sent, never from
podshark's output.

The worker is told it runs on the first simulated node (`--node`), so it watches only that node's
pods (the default scope): pods of the second node are named from the Endpoints of the Services
that select them. There is no kube-proxy here, so calls go to pod IPs; ClusterIP resolution is
covered by tests/identity/test_index.py.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.capture.podnet import Pod, PodNet, named, podnet
from tests.capture.test_conntrace import container_cgroup
from tests.capture.test_procs import in_cgroup
from tests.capture.test_worker import PODSHARK, WorkerProc, _wait_calls, _wait_worker, _worker_state
from tests.hub.test_service import REPO, Hub, _env, start_hub
from tests.identity.kube import (
    Lab,
    Obj,
    SimKubelet,
    apiserver_stopped,
    bare_pod,
    container_id,
    create_namespace,
    deployment,
    service,
    statefulset,
    wait_for,
    wait_pods_ready,
)
from tests.realtraffic import netns_unavailable_reason, tools_missing_reason

PORT = 8080
#: The worker reports its stats every 2 s; after a change in the cluster, waiting this long means the
#: worker's watch has had well over a stats period to deliver it (watch events arrive in milliseconds).
SETTLE_S = 3.0


@pytest.fixture(scope="module", autouse=True)
def _needs() -> None:
    reason = netns_unavailable_reason() or tools_missing_reason("curl")
    if reason:
        pytest.skip(reason)


def on(sim: SimKubelet, node: str) -> dict[str, str]:
    """A nodeSelector placing pods on one simulated node."""
    return {**sim.node_selector, "kubernetes.io/hostname": node}


@dataclass
class Scene:
    """A namespace in the lab, pods mirrored as network namespaces, a hub, and a worker on `here`."""

    kube: Lab
    sim: SimKubelet
    namespace: str
    here: str
    there: str
    net: PodNet
    hub: Hub
    worker: WorkerProc
    stack: contextlib.ExitStack
    pods: dict[str, Pod] = field(default_factory=dict)  # by IP

    def pods_of(self, selector: str, count: int) -> list[Obj]:
        return sorted(
            wait_pods_ready(self.kube, self.namespace, selector, count), key=lambda p: p["metadata"]["name"]
        )

    def mirror(self, pod: Obj, *, server: bool = True, cgroup: Path | None = None) -> Pod:
        """The network namespace for a Kubernetes pod's IP (made once per IP: a reused IP keeps it),
        with the echo server named psk-<app label> listening on PORT."""
        ip = pod["status"]["podIP"]
        if ip in self.pods:
            return self.pods[ip]
        net_pod = self.net.add_pod(f"p{len(self.pods)}", ip, 16)
        self.pods[ip] = net_pod
        if server:
            name = "psk-" + pod["metadata"]["labels"]["app"]
            argv = net_pod.exec_args(named(name, "tests.capture.echo_http", ip, str(PORT)))
            if cgroup is not None:
                argv = in_cgroup(cgroup, argv)
            proc = subprocess.Popen(argv, cwd=REPO, env=_env())
            self.net.procs.append(proc)
            if cgroup is not None:  # ended before the cgroup (entered earlier on the stack) is removed
                self.stack.callback(_end_process, proc)
            self.wait_listening(net_pod)
        return net_pod

    def wait_listening(self, pod: Pod) -> None:
        probe = ["bash", "-c", f"exec 3<>/dev/tcp/{pod.ip}/{PORT}"]
        wait_for(
            lambda: self.net.run(pod, probe, timeout=5).returncode == 0, what=f"{pod.ip}:{PORT} listening"
        )

    def curl(self, src: Obj, dst: Obj, tag: str) -> str:
        """One GET from pod `src` to pod `dst`; the target carries a fresh nonce to find the call."""
        target = f"/{tag}-{secrets.token_hex(4)}"
        client = self.pods[src["status"]["podIP"]]
        url = f"http://{dst['status']['podIP']}:{PORT}{target}"
        r = self.net.run(client, ["curl", "-sS", "--max-time", "10", url], timeout=20)
        assert r.returncode == 0 and r.stdout == f"path={target}".encode(), (r.returncode, r.stdout, r.stderr)
        return target

    def call(self, target: str) -> dict[str, Any]:
        calls = _wait_calls(self.hub, f'target == "{target}"', 1)
        assert len(calls) == 1, calls
        return calls[0]

    def k8s_stats(self) -> dict[str, Any]:
        return ((_worker_state(self.hub, self.here) or {}).get("reported") or {}).get("kubernetes") or {}


@pytest.fixture(scope="module")
def scene(kube: Lab, sim: SimKubelet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    here, there = list(sim.nodes)
    namespace = create_namespace(kube, "t-worker-identity")
    tmp = tmp_path_factory.mktemp("worker-identity")
    with contextlib.ExitStack() as stack:
        stack.callback(kube.kubectl, "delete", "namespace", namespace, "--wait=false", check=False)
        net = stack.enter_context(podnet())
        hub = start_hub(tmp / "db", tmp / "hub.log")
        stack.callback(hub.stop)
        worker = WorkerProc(
            hub,
            net.glob,
            tmp / "state",
            tmp / "worker.log",
            "--kubeconfig",
            str(kube.kubeconfig),
            node=here,
        )
        stack.callback(worker.stop)
        s = Scene(kube, sim, namespace, here, there, net, hub, worker, stack)
        _wait_worker(hub, worker, interfaces=0)
        wait_for(lambda: s.k8s_stats().get("synced"), what="the worker's Kubernetes watches to sync")
        yield s


def _end_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_each_call_names_pod_workload_service_node_labels_and_process(scene: Scene) -> None:
    kube, sim, ns, here, there = scene.kube, scene.sim, scene.namespace, scene.here, scene.there
    assert here != there
    kube.apply(
        deployment(ns, "web", on(sim, here), replicas=2, labels={"app": "web", "tier": "api"}, ports=[PORT]),
        service(ns, "web", {"app": "web"}, [(80, PORT)]),
        deployment(ns, "client", on(sim, here), labels={"app": "client"}),
        statefulset(ns, "db", on(sim, there), service_name="db", ports=[PORT]),
        service(ns, "db", {"app": "db"}, [(5432, PORT)]),
    )
    web = scene.pods_of("app=web", 2)
    (client,) = scene.pods_of("app=client", 1)
    (db,) = scene.pods_of("app=db", 1)
    assert db["metadata"]["name"] == "db-0" and db["spec"]["nodeName"] == there
    wait_for(lambda: scene.kube.get_or_none("-n", ns, "endpoints", "db"), what="Endpoints db")

    # web[0]'s server runs in a cgroup named like containerd's for its container: process identity
    # reads that container id and the index maps it to the pod (container -> pod uid -> pod)
    cid = container_id(web[0]["metadata"]["uid"], "app").split("://", 1)[1]
    group = scene.stack.enter_context(container_cgroup(f"cri-containerd-{cid}.scope"))
    scene.mirror(web[0], cgroup=group)
    scene.mirror(web[1])
    scene.mirror(db)
    scene.mirror(client, server=False)
    time.sleep(SETTLE_S)  # the worker's re-scan (every 2 s) opens the new veths

    to_web0 = scene.curl(client, web[0], "web0")
    to_web1 = scene.curl(client, web[1], "web1")
    to_db = scene.curl(client, db, "db")
    from_db = scene.curl(db, web[1], "fromdb")

    def local(pod: Obj, workload: str, service: str | None) -> dict[str, Any]:
        return {
            "ip": pod["status"]["podIP"],
            "pod": pod["metadata"]["name"],
            "namespace": ns,
            "workload": workload,
            "service": service,
            "node": here,
            "labels": pod["metadata"]["labels"],  # as the controllers made them (pod-template-hash too)
        }

    def keys(end: dict[str, Any]) -> dict[str, Any]:
        return {k: end.get(k) for k in ("ip", "pod", "namespace", "workload", "service", "node", "labels")}

    client_end = local(client, "Deployment/client", None)
    assert {"app": "web", "tier": "api"}.items() <= web[0]["metadata"]["labels"].items()
    call = scene.call(to_web0)
    assert keys(call["src"]) == client_end
    assert keys(call["dst"]) == local(web[0], "Deployment/web", "web")
    assert call["src"]["process"] == "curl" and call["dst"]["process"] == "psk-web"
    assert call["dst"]["container"] == cid

    call = scene.call(to_web1)
    assert keys(call["src"]) == client_end
    assert keys(call["dst"]) == local(web[1], "Deployment/web", "web")

    # db-0 is on the other node: not in this worker's pod watch, named from the db Endpoints'
    # targetRef, its workload from the StatefulSet of that name; its labels are not known here.
    # (Its node is not compared: db-0's namespace runs on this machine, so process identity finds
    # its process here and names this node first. In a cluster that process is elsewhere; the
    # Endpoints' nodeName is checked in test_index_remote.py.)
    remote_db = {
        "ip": db["status"]["podIP"],
        "pod": "db-0",
        "namespace": ns,
        "workload": "StatefulSet/db",
        "service": "db",
        "labels": {},
    }

    def remote(end: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in keys(end).items() if k != "node"}

    call = scene.call(to_db)
    assert keys(call["src"]) == client_end
    assert remote(call["dst"]) == remote_db and call["dst"]["process"] == "psk-db"
    call = scene.call(from_db)
    assert remote(call["src"]) == remote_db and call["src"]["process"] == "curl"
    assert keys(call["dst"]) == local(web[1], "Deployment/web", "web")

    # labels through the filter language, in the hub's SQL
    targets = {to_web0, to_web1, to_db, from_db}
    got = {
        c["target"] for c in _wait_calls(scene.hub, 'dst.labels["app"] == "web"', 3) if c["target"] in targets
    }
    assert got == {to_web0, to_web1, from_db}
    got = {
        c["target"]
        for c in _wait_calls(scene.hub, 'src.labels["app"] == "client"', 3)
        if c["target"] in targets
    }
    assert got == {to_web0, to_web1, to_db}
    got = {
        c["target"]
        for c in _wait_calls(scene.hub, 'dst.labels["tier"] == "api" and dst.workload == "Deployment/web"', 3)
    }
    assert targets & got == {to_web0, to_web1, from_db}

    k8s = scene.k8s_stats()
    assert k8s["scope"] == "node" and k8s["kinds"]["EndpointSlice"]["watched"] == "v1 endpoints"
    assert k8s["kinds"]["Pod"]["synced"] and k8s["index"]["pods"] >= 3
    # the node's own pods only: web x2 and client here, not db-0 (kubectl's count, this namespace)
    here_pods = kube.get("pods", "--all-namespaces", "--field-selector", f"spec.nodeName={here}")["items"]
    assert k8s["index"]["pods"] == len(here_pods)

    doctor = subprocess.run(
        [PODSHARK, "doctor", "--hub", scene.hub.url, "--hub-only"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = next(x for x in doctor.stdout.splitlines() if f"{here} Kubernetes" in x)
    assert line.startswith("ok ") and f"node pods of {here}: {len(here_pods)} pods," in line, doctor.stdout


def test_ip_reuse_by_scale_and_recreate_resolves_by_time(scene: Scene) -> None:
    kube, sim, ns, here = scene.kube, scene.sim, scene.namespace, scene.here
    kube.apply(deployment(ns, "caller", on(sim, here), labels={"app": "caller"}))
    (caller,) = scene.pods_of("app=caller", 1)
    scene.mirror(caller, server=False)

    # 1. scale down and up: the freed IP goes to the new replica (SimKubelet: lowest free IP)
    kube.apply(deployment(ns, "pool", on(sim, here), replicas=2, labels={"app": "pool"}, ports=[PORT]))
    before = scene.pods_of("app=pool", 2)
    for p in before:
        scene.mirror(p)
    time.sleep(SETTLE_S)
    # one call to each replica: the controller picks which one scale-down removes
    first_calls = {p["metadata"]["name"]: scene.curl(caller, p, "before-scale") for p in before}
    kube.kubectl("-n", ns, "scale", "deployment", "pool", "--replicas=1")
    survivor = {p["metadata"]["name"] for p in scene.pods_of("app=pool", 1)}
    (gone,) = [p for p in before if p["metadata"]["name"] not in survivor]
    wait_for(  # until then the terminating pod still holds its IP
        lambda: kube.get_or_none("-n", ns, "pod", gone["metadata"]["name"]) is None,
        what=f"pod {gone['metadata']['name']} deleted",
    )
    kube.kubectl("-n", ns, "scale", "deployment", "pool", "--replicas=2")
    after = scene.pods_of("app=pool", 2)
    (new,) = [p for p in after if p["metadata"]["name"] not in {q["metadata"]["name"] for q in before}]
    assert new["status"]["podIP"] == gone["status"]["podIP"], "SimKubelet gives the freed IP again"
    assert new["metadata"]["name"] != gone["metadata"]["name"]
    time.sleep(SETTLE_S)
    second_call = scene.curl(caller, new, "after-scale")
    earlier = scene.call(first_calls[gone["metadata"]["name"]])["dst"]
    later = scene.call(second_call)["dst"]
    assert earlier["ip"] == later["ip"] == gone["status"]["podIP"]
    assert (earlier["pod"], later["pod"]) == (gone["metadata"]["name"], new["metadata"]["name"])
    assert earlier["workload"] == later["workload"] == "Deployment/pool"

    # 2. delete a pod and create another that takes its IP: the two calls name different pods
    ip = "10.244.200.7"
    kube.apply(bare_pod(ns, "old", on(sim, here), labels={"app": "old"}, ip=ip))
    (old,) = scene.pods_of("app=old", 1)
    assert old["status"]["podIP"] == ip
    scene.mirror(old)
    time.sleep(SETTLE_S)
    to_old = scene.curl(caller, old, "old")
    kube.kubectl("-n", ns, "delete", "pod", "old", "--wait=true")
    kube.apply(bare_pod(ns, "new", on(sim, here), labels={"app": "new"}, ip=ip))
    (recreated,) = scene.pods_of("app=new", 1)
    assert recreated["status"]["podIP"] == ip
    time.sleep(SETTLE_S)
    to_new = scene.curl(caller, recreated, "new")  # the same namespace and server answer
    a, b = scene.call(to_old), scene.call(to_new)
    assert (a["dst"]["ip"], a["dst"]["pod"], a["dst"]["workload"], a["dst"]["labels"]) == (
        ip,
        "old",
        "Pod/old",
        {"app": "old"},
    )
    assert (b["dst"]["ip"], b["dst"]["pod"], b["dst"]["workload"], b["dst"]["labels"]) == (
        ip,
        "new",
        "Pod/new",
        {"app": "new"},
    )


def test_apiserver_outage_keeps_tagging_and_the_watch_recovers(scene: Scene) -> None:
    kube, sim, ns, here = scene.kube, scene.sim, scene.namespace, scene.here
    kube.apply(
        deployment(ns, "front", on(sim, here), labels={"app": "front"}),
        deployment(ns, "back", on(sim, here), labels={"app": "back"}, ports=[PORT]),
    )
    (front,) = scene.pods_of("app=front", 1)
    (back,) = scene.pods_of("app=back", 1)
    scene.mirror(front, server=False)
    scene.mirror(back)
    time.sleep(SETTLE_S)
    failures_before = scene.k8s_stats()["kinds"]["Pod"]["failures"]
    with apiserver_stopped(kube):
        during = scene.curl(front, back, "during-outage")
        assert scene.call(during)["dst"]["pod"] == back["metadata"]["name"]  # the last known state
        wait_for(
            lambda: scene.k8s_stats()["kinds"]["Pod"]["failures"] > failures_before,
            what="the worker to notice the API server is gone",
        )
    # back up: a pod created now reaches the worker through the resumed watch
    kube.apply(bare_pod(ns, "late", on(sim, here), labels={"app": "late"}))
    (late,) = scene.pods_of("app=late", 1)
    scene.mirror(late)
    time.sleep(SETTLE_S)
    after = scene.curl(front, late, "after-outage")
    call = scene.call(after)
    assert (call["dst"]["pod"], call["dst"]["workload"], call["src"]["pod"]) == (
        "late",
        "Pod/late",
        front["metadata"]["name"],
    )
    pod_watch = scene.k8s_stats()["kinds"]["Pod"]
    assert pod_watch["connected"] and pod_watch["reconnects"] + pod_watch["relists"] >= 1, pod_watch
