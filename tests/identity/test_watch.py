"""capture.k8s.watch against the real lab: list, watch, discovery fallbacks, recovery.

Truth comes from the API server through the lab's kubectl (names, uids, resourceVersions, pod
IPs), never from the Watcher. The sink below materialises what it is given (replace + apply), so
"the sink equals kubectl" proves list, watch and relist together. Recovery is tested two ways:

* `GatedProxy`, a real TCP forwarder between a Watcher and kube-apiserver that the test can cut and
  restore. While it is cut the test changes the cluster directly, so "events made while the watcher
  was disconnected show up" is deterministic, and so is the 410 after an API server restart.
* the API server itself stopped and restarted mid-watch (`apiserver_stopped`: etcd keeps the state).

A plain-HTTP fake API server is used once, for what a real one never sends (malformed lines,
oversized events, a stream that closes at once) and for a 403.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client

from capture.k8s.watch import (
    DEFAULT_KINDS,
    Backoff,
    K8sConfigError,
    Selector,
    Watcher,
    _lines,
    load_api_client,
)
from tests.identity.kube import (
    Lab,
    SimKubelet,
    apiserver_stopped,
    bare_pod,
    deployment,
    endpoint_ips,
    service,
    wait_for,
    wait_pods_ready,
)

Obj = dict[str, Any]
FAST = Backoff(base_s=0.2, cap_s=1.0)


# ------------------------------------------------------------------------------------------ helpers
class RecordingSink:
    """Materialises what the Watcher delivers: kind -> (namespace, name) -> object; logs every call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict[str, dict[tuple[str, str], Obj]] = defaultdict(dict)
        self.events: list[tuple[str, str, str, str]] = []  # kind, type, name, resourceVersion
        self.replaces: list[tuple[str, list[str], int]] = []  # kind, names, ts_ns
        self.active = 0
        self.overlaps = 0  # the Watcher promises one sink call at a time
        self.bad_ts = 0

    @staticmethod
    def key(obj: Obj) -> tuple[str, str]:
        md = obj["metadata"]
        return md.get("namespace") or "", md["name"]

    @contextlib.contextmanager
    def _call(self, ts_ns: int) -> Iterator[None]:
        with self.lock:
            self.active += 1
            self.overlaps += self.active > 1
            self.bad_ts += not (time.time_ns() - 60_000_000_000 < ts_ns <= time.time_ns())
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1

    def apply(self, kind: str, event_type: str, obj: Obj, ts_ns: int) -> None:
        with self._call(ts_ns):
            time.sleep(0.001)  # widen the window in which an overlapping call would be seen
            with self.lock:
                if event_type == "DELETED":
                    self.state[kind].pop(self.key(obj), None)
                else:
                    self.state[kind][self.key(obj)] = obj
                self.events.append(
                    (kind, event_type, obj["metadata"]["name"], obj["metadata"]["resourceVersion"])
                )

    def replace(self, kind: str, objs: list[Obj], ts_ns: int) -> None:
        with self._call(ts_ns), self.lock:
            self.state[kind] = {self.key(o): o for o in objs}
            self.replaces.append((kind, sorted(o["metadata"]["name"] for o in objs), ts_ns))

    def view(self, kind: str, namespace: str | None = None) -> dict[str, tuple[str, str]]:
        """name -> (uid, resourceVersion) of what the sink holds."""
        with self.lock:
            return {
                name: (o["metadata"]["uid"], o["metadata"]["resourceVersion"])
                for (ns, name), o in self.state[kind].items()
                if namespace is None or ns == namespace
            }

    def obj(self, kind: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return self.state[kind].get((namespace, name))

    def names_with(self, kind: str, event_type: str) -> set[str]:
        with self.lock:
            return {n for k, t, n, _ in self.events if k == kind and t == event_type}


def truth(lab: Lab, resource: str, namespace: str | None = None) -> dict[str, tuple[str, str]]:
    """name -> (uid, resourceVersion), from kubectl."""
    where = ["-n", namespace] if namespace else []
    return {
        o["metadata"]["name"]: (o["metadata"]["uid"], o["metadata"]["resourceVersion"])
        for o in lab.get(*where, resource)["items"]
    }


def converge(
    lab: Lab, sink: RecordingSink, pairs: list[tuple[str, str]], namespace: str | None, what: str
) -> None:
    """Wait until, for every (sink kind, kubectl resource), the sink holds exactly what kubectl shows."""

    def same() -> bool:
        return all(sink.view(kind, namespace) == truth(lab, res, namespace) for kind, res in pairs)

    def detail() -> str:
        return "; ".join(
            f"{kind}: sink={sorted(sink.view(kind, namespace))} kubectl={sorted(truth(lab, res, namespace))}"
            for kind, res in pairs
        )

    wait_for(same, timeout=60, what=what, detail=detail)


@contextlib.contextmanager
def running(w: Watcher) -> Iterator[Watcher]:
    """Start `w`; on exit stop it and check that stopping was prompt (every stream shut down)."""
    w.start()
    try:
        yield w
    finally:
        assert w.stop(timeout=10), "Watcher.stop() left threads running: a blocked read was not woken"


def synced(w: Watcher) -> None:
    assert w.wait_synced(60), f"not synced: {w.stats()}"


class GatedProxy:
    """A TCP forwarder to 127.0.0.1:`upstream` that a test can cut (every connection shut down, new
    ones closed at once) and restore. TLS passes through untouched (the certificate names 127.0.0.1)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.gate = threading.Event()
        self.gate.set()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.accepted = 0
        self.thread = threading.Thread(target=self._accept, name="gated-proxy", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                down, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.gate.is_set():
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            down.settimeout(None)
            with self.lock:
                self.accepted += 1
                self.conns |= {down, up}
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self.lock:
                self.conns -= {a, b}

    def cut(self) -> None:
        self.gate.clear()
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.cut()
        self.closed.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def proxy(kube: Lab) -> Iterator[GatedProxy]:
    p = GatedProxy(kube.api_port)
    try:
        yield p
    finally:
        p.close()


def client_via(lab: Lab, port: int, tmp: Path) -> client.ApiClient:
    """An ApiClient with the lab's credentials that connects to 127.0.0.1:`port` (the proxy).

    A kubeconfig copy with the server rewritten: the client's token refresh hook copies the
    kubeconfig's server back into the Configuration before every request, so setting `host` on a
    loaded Configuration does not stick."""
    doc = yaml.safe_load(lab.kubeconfig.read_text())
    for c in doc["clusters"]:
        c["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = tmp / f"kubeconfig-via-{port}"
    path.write_text(yaml.safe_dump(doc))
    return load_api_client(str(path))


def finish_pod_deletions(lab: Lab, namespace: str, selector: str) -> None:
    """Wait until the garbage collector has marked every pod of `selector` for deletion, then confirm
    the deletions as a kubelet does (grace period 0), and wait until they are gone. Done here, not
    left to the sim kubelet, so that this test does not depend on how the simulator confirms."""

    def pods() -> list[Obj]:
        return list(lab.get("-n", namespace, "pods", "-l", selector)["items"])

    wait_for(
        lambda: all(p["metadata"].get("deletionTimestamp") for p in pods()), what=f"{selector} pods marked"
    )
    lab.kubectl(
        "-n", namespace, "delete", "pods", "-l", selector, "--grace-period=0", "--force", "--ignore-not-found"
    )
    wait_for(lambda: not pods(), what=f"{selector} pods gone")


def served_plurals(lab: Lab, group_version: str) -> set[str]:
    path = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
    r = lab.kubectl("get", "--raw", path, check=False)
    return {x["name"] for x in json.loads(r.stdout)["resources"]} if r.returncode == 0 else set()


# ------------------------------------------------------------------------------------------ configuration
def test_config_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(K8sConfigError, match="pass --kubeconfig PATH or run in the cluster"):
        load_api_client(None)
    with pytest.raises(K8sConfigError, match="does not exist"):
        load_api_client(str(tmp_path / "missing"))
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: 7\n")
    with pytest.raises(K8sConfigError, match="is not usable"):
        load_api_client(str(bad))
    # in a pod whose ServiceAccount token is not mounted
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(K8sConfigError, match="automountServiceAccountToken"):
        load_api_client(None)


# ------------------------------------------------------------------------------------------ the real lab
def test_discovery_fallbacks_and_cluster_wide_sync(kube: Lab, sim: SimKubelet) -> None:
    """All default kinds, cluster-wide: each listed once; v1.20 gets core/v1 Endpoints (no
    discovery.k8s.io/v1) and CronJobs from whichever batch version serves them."""
    sink = RecordingSink()
    with running(Watcher(load_api_client(str(kube.kubeconfig)), sink, backoff=FAST)) as w:
        synced(w)
        res = w.resources()
        has_slices_v1 = "endpointslices" in served_plurals(kube, "discovery.k8s.io/v1")
        assert not has_slices_v1  # the lab is v1.20; if this changes, the expectations below flip
        slices = res["EndpointSlice"]
        assert slices is not None and (slices.kind, slices.api_version) == ("Endpoints", "v1")
        cron = res["CronJob"]
        want_cron = "batch/v1" if "cronjobs" in served_plurals(kube, "batch/v1") else "batch/v1beta1"
        assert cron is not None and cron.api_version == want_cron == "batch/v1beta1"
        stats = w.stats()
        assert set(stats) == set(DEFAULT_KINDS)
        assert all(s.served and s.synced and s.lists == 1 and s.relists == 0 for s in stats.values())
        assert {k for k, _, _ in sink.replaces} == {r.kind for r in res.values() if r}
        # cluster-wide: the sim's nodes and the `kubernetes` Service in `default`
        converge(kube, sink, [("Node", "nodes")], None, "nodes in the sink = kubectl get nodes")
        assert set(sim.nodes) <= set(sink.view("Node"))
        assert (
            sink.view("Service", "default")["kubernetes"] == truth(kube, "services", "default")["kubernetes"]
        )
        assert all(
            s.connected for s in w.stats().values()
        )  # every watch open and idle: stop() must wake them
    assert sink.overlaps == 0 and sink.bad_ts == 0


def test_deployment_chain_service_endpoints_and_deletions(kube: Lab, sim: SimKubelet, namespace: str) -> None:
    sink = RecordingSink()
    kinds = ("Deployment", "ReplicaSet", "Pod", "Service", "EndpointSlice")
    pairs = [
        ("Deployment", "deployments"),
        ("ReplicaSet", "replicasets"),
        ("Pod", "pods"),
        ("Service", "services"),
        ("Endpoints", "endpoints"),
    ]
    api = load_api_client(str(kube.kubeconfig))
    with running(Watcher(api, sink, kinds, namespace=namespace, backoff=FAST)) as w:
        synced(w)
        assert all(not sink.view(k, namespace) for k, _ in pairs)
        kube.apply(
            deployment(namespace, "web", sim.node_selector, replicas=2, ports=[8080]),
            service(namespace, "web", {"app": "web"}, [(80, 8080)]),
        )
        pods = wait_pods_ready(kube, namespace, "app=web", 2)
        ips = {p["status"]["podIP"] for p in pods}
        wait_for(lambda: endpoint_ips(kube, namespace, "web") == ips, what="Endpoints web = pod IPs")
        converge(kube, sink, pairs, namespace, "the sink to hold what kubectl shows")

        # the chain, read from the sink: Pod -> ReplicaSet -> Deployment, by uid
        deploy = sink.obj("Deployment", namespace, "web")
        assert deploy is not None
        for p in pods:
            got = sink.obj("Pod", namespace, p["metadata"]["name"])
            assert got is not None and got["status"]["podIP"] == p["status"]["podIP"]
            (rs_ref,) = got["metadata"]["ownerReferences"]
            rs = sink.obj("ReplicaSet", namespace, rs_ref["name"])
            assert rs is not None and rs["metadata"]["uid"] == rs_ref["uid"]
            (d_ref,) = rs["metadata"]["ownerReferences"]
            assert (d_ref["kind"], d_ref["uid"]) == ("Deployment", deploy["metadata"]["uid"])
        ep = sink.obj("Endpoints", namespace, "web")
        assert ep is not None
        assert {a["ip"] for s in ep["subsets"] for a in s["addresses"]} == ips
        svc = sink.obj("Service", namespace, "web")
        assert svc is not None
        assert svc["spec"]["clusterIP"] == kube.get("-n", namespace, "service", "web")["spec"]["clusterIP"]
        # arrived as watch events: created without an IP, then modified when the kubelet reported it
        names = {p["metadata"]["name"] for p in pods}
        assert names <= sink.names_with("Pod", "ADDED") and names <= sink.names_with("Pod", "MODIFIED")

        rs_names = set(sink.view("ReplicaSet", namespace))
        kube.kubectl("-n", namespace, "delete", "service", "web")
        kube.kubectl("-n", namespace, "delete", "deployment", "web")
        finish_pod_deletions(kube, namespace, "app=web")
        converge(kube, sink, pairs, namespace, "the sink to drop what was deleted")
        assert names <= sink.names_with("Pod", "DELETED")
        assert rs_names <= sink.names_with("ReplicaSet", "DELETED")
        for kind in ("Deployment", "Service", "Endpoints"):
            assert "web" in sink.names_with(kind, "DELETED"), kind
        stats = w.stats()
        assert all(s.relists == 0 and s.failures == 0 for s in stats.values()), stats
        assert stats["Pod"].events["DELETED"] >= 2 and stats["EndpointSlice"].watched == "v1 endpoints"
    assert sink.overlaps == 0 and sink.bad_ts == 0


def test_field_selector_keeps_a_node_to_its_own_pods(kube: Lab, sim: SimKubelet, namespace: str) -> None:
    here, there = list(sim.nodes)
    sink = RecordingSink()
    api = load_api_client(str(kube.kubeconfig))
    sel = Selector(namespace=namespace, field=f"spec.nodeName={here}")
    with running(Watcher(api, sink, ("Pod",), selectors={"Pod": sel}, backoff=FAST)) as w:
        synced(w)

        def pinned(name: str, node: str) -> Obj:
            pod = bare_pod(namespace, name, sim.node_selector, labels={"role": name})
            pod["spec"]["nodeName"] = node  # bound directly: no scheduler choice involved
            return pod

        kube.apply(pinned("mine", here), pinned("theirs", there))
        wait_pods_ready(kube, namespace, "role in (mine,theirs)", 2)
        # a later pod on this node: once it is in the sink, everything before it in the stream is too
        kube.apply(pinned("later", here))
        wait_pods_ready(kube, namespace, "role=later", 1)
        want = {n: v for n, v in truth(kube, "pods", namespace).items() if n in ("mine", "later")}
        wait_for(
            lambda: sink.view("Pod", namespace) == want,
            what="mine+later in the sink",
            detail=sink.events.__repr__,
        )
        assert "theirs" not in {n for _, _, n, _ in sink.events}
        assert all(o["spec"]["nodeName"] == here for o in sink.state["Pod"].values())


def test_cut_connection_resumes_from_resource_version(
    kube: Lab, namespace: str, proxy: GatedProxy, tmp_path: Path
) -> None:
    """Connection lost, cluster changes meanwhile, connection back: the watch resumes from its
    resourceVersion (no relist) and delivers what happened while it was away, in order."""
    kube.apply(service(namespace, "old", {"app": "old"}, [(80, 80)]))
    sink = RecordingSink()
    api = client_via(kube, proxy.port, tmp_path)
    with running(Watcher(api, sink, ("Service",), namespace=namespace, backoff=FAST)) as w:
        synced(w)
        converge(kube, sink, [("Service", "services")], namespace, "old in the sink")
        proxy.cut()
        wait_for(lambda: w.stats()["Service"].failures >= 2, what="the watcher to fail twice while cut")
        assert not w.stats()["Service"].connected
        kube.kubectl("-n", namespace, "delete", "service", "old")
        kube.apply(service(namespace, "new", {"app": "new"}, [(80, 80)]))
        assert "new" not in sink.view("Service", namespace)
        proxy.restore()
        converge(kube, sink, [("Service", "services")], namespace, "new (and not old) in the sink")
        s = w.stats()["Service"]
        assert (s.lists, s.relists, s.gone) == (1, 0, 0), s
        assert s.reconnects >= 1 and s.connected
        assert [(t, n) for k, t, n, _ in sink.events] == [("DELETED", "old"), ("ADDED", "new")]
        assert s.last_error  # the failure is kept for stats and doctor


def test_apiserver_restart_mid_watch_recovers_and_410_relists(
    kube: Lab, namespace: str, proxy: GatedProxy, tmp_path: Path
) -> None:
    """kube-apiserver stopped under two watchers. The direct one reconnects by itself. The proxied
    one is kept away until the cluster has changed after the restart: its resourceVersion predates
    the new server's watch cache, so it gets 410 Gone and must relist and `replace`."""
    kube.apply(
        service(namespace, "keep", {"app": "keep"}, [(80, 80)]),
        service(namespace, "doomed", {"app": "doomed"}, [(80, 80)]),
    )
    pairs = [("Service", "services")]
    direct, gated = RecordingSink(), RecordingSink()
    wd = Watcher(
        load_api_client(str(kube.kubeconfig)), direct, ("Service",), namespace=namespace, backoff=FAST
    )
    via = client_via(kube, proxy.port, tmp_path)
    wg = Watcher(via, gated, ("Service",), namespace=namespace, backoff=FAST)
    with running(wd), running(wg):
        synced(wd)
        synced(wg)
        converge(kube, direct, pairs, namespace, "direct watcher synced")
        converge(kube, gated, pairs, namespace, "gated watcher synced")
        # a write the watchers do not see: etcd's revision moves past both watchers' resourceVersion
        kube.kubectl("-n", namespace, "create", "configmap", "tick", "--from-literal=k=v")
        assert wd.stats()["Service"].failures == 0
        down = time.monotonic()
        with apiserver_stopped(kube):
            wait_for(lambda: wd.stats()["Service"].failures >= 1, what="the direct watcher to notice")
            wait_for(lambda: wg.stats()["Service"].failures >= 1, what="the gated watcher to notice")
            proxy.cut()  # the gated watcher stays away until after the changes below
            time.sleep(2)  # an outage of a few seconds: several backoff rounds
            failures_down = wd.stats()["Service"].failures
            outage = time.monotonic() - down
        kube.kubectl("-n", namespace, "delete", "service", "doomed")
        kube.apply(service(namespace, "after", {"app": "after"}, [(80, 80)]))

        # no hot loop while the server was away: FAST waits >= 0.1, 0.2, 0.4, then >= 0.5 s
        assert failures_down <= 6 + 2 * outage, (failures_down, outage)
        converge(kube, direct, pairs, namespace, "direct watcher caught up after the restart")
        sd = wd.stats()["Service"]
        assert sd.failures >= 1 and sd.connected and (sd.reconnects >= 1 or sd.relists >= 1), sd

        assert set(gated.view("Service", namespace)) == {"keep", "doomed"}  # still away: stale
        proxy.restore()
        converge(kube, gated, pairs, namespace, "gated watcher caught up by relisting")
        sg = wg.stats()["Service"]
        assert sg.gone >= 1 and sg.relists >= 1 and sg.lists == 1 + sg.relists, sg
        kind, names, _ = gated.replaces[-1]
        assert (kind, names) == ("Service", ["after", "keep"])  # the relist's complete set
        assert ("Service", "DELETED", "doomed") not in {(k, t, n) for k, t, n, _ in gated.events}


# ------------------------------------------------------------------------------------------ fake API server
class _Script:
    """What the fake API server answers, call by call, and what it was asked."""

    def __init__(self, watches: list[Callable[[BaseHTTPRequestHandler], None]], lists: list[Obj]) -> None:
        self.watches = watches
        self.lists = lists
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.release = threading.Event()


def _svc(name: str, rv: str) -> Obj:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": rv}}


def _stream(*lines: bytes, hold: threading.Event | None = None) -> Callable[[BaseHTTPRequestHandler], None]:
    def send(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for line in lines:
            data = line + b"\n"
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()
        if hold is not None:
            hold.wait(30)
        h.wfile.write(b"0\r\n\r\n")

    return send


def _status(code: int, message: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def send(h: BaseHTTPRequestHandler) -> None:
        body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": code}).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return send


def _event(typ: str, obj: Obj) -> bytes:
    return json.dumps({"type": typ, "object": obj}).encode()


@contextlib.contextmanager
def fake_api(script: _Script) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            u = urlsplit(self.path)
            q = parse_qs(u.query)
            script.requests.append((u.path, q))
            if u.path == "/api/v1":
                _stream_json(
                    self,
                    {"resources": [{"name": "services", "namespaced": True, "verbs": ["list", "watch"]}]},
                )
            elif u.path.startswith("/apis/"):
                _status(404, "not found")(self)
            elif "watch" in q:
                (script.watches.pop(0) if script.watches else _stream(hold=script.release))(self)
            else:
                _stream_json(self, script.lists.pop(0))

    def _stream_json(h: BaseHTTPRequestHandler, doc: Obj) -> None:
        body = json.dumps(doc).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        script.release.set()
        srv.shutdown()
        srv.server_close()


def test_hostile_stream_is_counted_and_recovered(caplog: pytest.LogCaptureFixture) -> None:
    """Malformed lines are counted and skipped; ERROR 410 and an oversized event relist (consistent,
    paginated); a 403 names the RBAC fix; a stream that closes at once backs off; stop() wakes an
    idle stream."""
    a, b, c = _svc("a", "10"), _svc("b", "11"), _svc("c", "20")
    script = _Script(
        watches=[
            _stream(
                b"{not json",
                _event("WHAT", b),
                b"[]",
                json.dumps({"type": "ADDED", "object": {"metadata": {"name": "x"}}}).encode(),  # no rv
                _event("ADDED", b),
            ),
            _stream(_event("ERROR", {"kind": "Status", "code": 410, "message": "too old resource version"})),
            _stream(_event("MODIFIED", {**c, "pad": "x" * 8192})),  # beyond max_event_bytes
            _status(403, 'services is forbidden: User "x" cannot watch resource "services"'),
            _stream(),  # closes at once, no event
        ],
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": [a]},
            {"metadata": {"resourceVersion": "20"}, "items": [b, c]},
            {
                "metadata": {"resourceVersion": "21"},
                "items": [b, {**c, "metadata": {**c["metadata"], "resourceVersion": "21"}}],
            },
        ],
    )
    caplog.set_level(logging.INFO, logger="capture.k8s.watch")
    sink = RecordingSink()
    with fake_api(script) as url:
        cfg = client.Configuration(host=url)
        w = Watcher(client.ApiClient(cfg), sink, ("Service",), max_event_bytes=4096, watch_timeout_s=60,
                    backoff=Backoff(base_s=0.05, cap_s=0.2), seed=1)  # fmt: skip
        with running(w):
            wait_for(
                lambda: len(script.requests) >= 10 and w.stats()["Service"].connected,
                what="the script played",
            )
            s = w.stats()["Service"]
            assert set(sink.view("Service")) == {"b", "c"}
            assert sink.view("Service")["c"] == ("uid-c", "21")
    lists = [q for p, q in script.requests if p == "/api/v1/services" and "watch" not in q]
    watches = [q for p, q in script.requests if p == "/api/v1/services" and "watch" in q]
    assert [q.get("resourceVersion") for q in lists] == [["0"], None, None]  # cache first, then consistent
    assert all(q["limit"] == ["500"] for q in lists)
    assert [q["resourceVersion"] for q in watches[:3]] == [["10"], ["11"], ["20"]]
    assert all(
        q["allowWatchBookmarks"] == ["true"] and 60 <= int(q["timeoutSeconds"][0]) < 120 for q in watches
    )
    assert (s.bad_events, s.gone, s.lists, s.relists) == (4, 1, 3, 2), s
    assert s.events["ADDED"] == 1 and s.renewals == 1
    assert s.failures == 4  # 410, oversized event, 403, closed at once
    text = caplog.text
    assert "grant list and watch on v1 services" in text
    assert "closed at once without an event" in text


@given(
    lines=st.lists(
        st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b.strip()), max_size=8
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=10),
)
def test_lines_reassembles_any_chunking(lines: list[bytes], cuts: list[int]) -> None:
    body = b"".join(line + b"\n" for line in lines)
    chunks, i = [], 0
    for n in cuts:
        chunks.append(body[i : i + n])
        i += n
    chunks.append(body[i:])

    class Resp:
        chunked = True

        def stream(self, amt: int | None) -> Iterator[bytes]:
            return iter(chunks)

    assert list(_lines(Resp(), 1 << 20)) == lines  # type: ignore[arg-type]


def test_a_failing_sink_is_counted_and_the_watch_goes_on() -> None:
    class Picky(RecordingSink):
        def apply(self, kind: str, event_type: str, obj: Obj, ts_ns: int) -> None:
            if obj["metadata"]["name"] == "b":
                raise KeyError("the index choked on b")
            super().apply(kind, event_type, obj, ts_ns)

    script = _Script(watches=[], lists=[{"metadata": {"resourceVersion": "10"}, "items": [_svc("a", "10")]}])
    script.watches.append(
        _stream(_event("ADDED", _svc("b", "11")), _event("ADDED", _svc("c", "12")), hold=script.release)
    )
    sink = Picky()
    with fake_api(script) as url:
        w = Watcher(client.ApiClient(client.Configuration(host=url)), sink, ("Service",), backoff=FAST)
        with running(w):
            wait_for(lambda: "c" in sink.view("Service"), what="c applied after b failed")
            s = w.stats()["Service"]
    assert set(sink.view("Service")) == {"a", "c"}
    assert (s.sink_errors, s.events["ADDED"], s.failures, s.resource_version) == (1, 2, 0, "12"), s
