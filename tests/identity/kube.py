"""Helpers for tests against the project's real Kubernetes lab (``tests/k8slab/k8s-lab``).

The lab is a real kube-apiserver, controller-manager and scheduler (v1.20.2, built from Debian
packages) with no real node. :class:`SimKubelet` plays the kubelet for a few *fake* nodes: the
real scheduler binds pods to them, and the simulator reports each pod Running and Ready with its
own IP, so the real controllers build ReplicaSets, StatefulSet pods and core/v1 Endpoints exactly
as in a cluster. Tests then know every pod's IP from the API server and can make up calls between
those IPs. Nothing here asks podshark anything: expected values come from what a test created or
from the API server.

Why subprocess ``kubectl`` and raw JSON instead of the ``kubernetes`` models: the lab's kubectl is
the same version as the server, its errors are the ones an operator sees, and raw JSON never fails
to deserialize a field the generated client does not know.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
K8S_LAB = REPO / "tests" / "k8slab" / "k8s-lab"
DEFAULT_LAB_DIR = "/var/tmp/k8s-lab"
#: The first `up` on a machine builds the control plane from source (~5-7 min on 2 idle vCPUs; more
#: when the rest of the suite shares the CPUs). Later `up`s take ~8 s.
DEFAULT_UP_TIMEOUT = 1200.0
#: Pod annotation read by SimKubelet: give this pod exactly this IP (once no live pod holds it).
#: Lets a test construct IP reuse: pod A gets X, A is deleted, pod B asks for X and gets it.
IP_ANNOTATION = "sim.podshark.test/ip"
SIM_IMAGE = "k8s-lab.local/busybox:1"  # never pulled: fake nodes run nothing

T = TypeVar("T")
Obj = dict[str, Any]


class LabError(RuntimeError):
    """The lab could not be built, started or stopped; the message says what failed and where the log is."""


# ------------------------------------------------------------------------------------------ lab lifecycle
def mark_lab_items(items: list[Any], directory: Path) -> None:
    """Mark the tests under `directory` that use the lab (the `kube` fixture, directly or through
    others): ``k8slab`` (make test's own phase), ``root``, ``slow``, ``xdist_group("identity")``
    (one worker, one lab) and a 300 s timeout of the test body only (the first `up` may build)."""
    import pytest

    for item in items:
        if directory not in Path(str(item.path)).resolve().parents:
            continue
        if "kube" not in getattr(item, "fixturenames", ()):
            continue  # sans-IO tests run with the main suite
        for name in ("k8slab", "root", "slow"):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group("identity"))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(300, func_only=True))


def lab_dir() -> Path:
    """K8S_LAB_DIR, or a stable default so the long build is cached between runs on one machine."""
    return Path(os.environ.get("K8S_LAB_DIR") or DEFAULT_LAB_DIR)


def run_lab_script(args: Sequence[str], *, directory: Path, timeout: float, log_name: str) -> str:
    """Run ``k8s-lab ARGS`` with K8S_LAB_DIR=directory, its output saved under directory/log_name.

    The script runs in its own session so that, on timeout, the whole tree (apt, make, go) is killed
    instead of left building in the background; the error then carries the log's tail.
    """
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / log_name
    env = {**os.environ, "K8S_LAB_DIR": str(directory), "DEBIAN_FRONTEND": "noninteractive"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(K8S_LAB), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise LabError(
                f"k8s-lab {' '.join(args)} did not finish in {timeout:.0f}s and was killed. "
                f"Log: {log_path} (build log: {directory}/cache/*/build.log). A first build takes 5-7 min on "
                f"2 idle CPUs; raise K8S_LAB_UP_TIMEOUT if this machine is slower.\n{_tail(log_path)}"
            ) from None
    output = log_path.read_text(errors="replace")
    if rc != 0:
        raise LabError(f"k8s-lab {' '.join(args)} failed (exit {rc}). Log: {log_path}\n{_tail(log_path)}")
    return output


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


@dataclass(frozen=True)
class Lab:
    """A running lab, as printed by ``k8s-lab env``. Methods run the lab's own kubectl (v1.20.2)."""

    directory: Path
    kubeconfig: Path
    bin_dir: Path
    api_url: str
    api_port: int
    spare_port: int  # first of 3 ports the lab leaves free for tests
    up_seconds: float = 0.0

    @classmethod
    def from_env_output(cls, text: str, up_seconds: float = 0.0) -> Lab:
        env = dict(
            line[len("export ") :].split("=", 1) for line in text.splitlines() if line.startswith("export ")
        )
        try:
            return cls(
                directory=Path(env["K8S_LAB_DIR"]),
                kubeconfig=Path(env["KUBECONFIG"]),
                bin_dir=Path(env["K8S_LAB_BIN"]),
                api_url=env["K8S_LAB_API"],
                api_port=int(env["K8S_LAB_API_PORT"]),
                spare_port=int(env["K8S_LAB_SPARE_PORT"]),
                up_seconds=up_seconds,
            )
        except (KeyError, ValueError) as exc:
            raise LabError(f"unexpected `k8s-lab env` output ({exc!r}):\n{text}") from None

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (a podshark worker, say) that should talk to this lab."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the lab; with check=True a failure raises with kubectl's own stderr."""
        cmd = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args]
        try:
            r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"kubectl {' '.join(args)}: no answer in {timeout:.0f}s") from None
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def get(self, *args: str) -> Obj:
        """``kubectl get -o json ARGS`` as a dict (a List for collections)."""
        return dict(json.loads(self.kubectl("get", "-o", "json", *args).stdout))

    def get_or_none(self, *args: str) -> Obj | None:
        """Like :meth:`get`, but None when the object does not exist (NotFound)."""
        r = self.kubectl("get", "-o", "json", *args, check=False)
        if r.returncode != 0:
            if "NotFound" in r.stderr or "not found" in r.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return dict(json.loads(r.stdout))

    def apply(self, *objs: Obj) -> None:
        """Create or update objects (kubectl apply of a v1 List)."""
        self.kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
        )

    def api_versions(self) -> set[str]:
        return set(self.kubectl("api-versions").stdout.split())

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this lab (each caller gets its own connection pool)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def lab_up(directory: Path | None = None, timeout: float | None = None) -> Lab:
    """Build (cached) and start the control plane; idempotent, safe from several processes at once."""
    directory = directory or lab_dir()
    if timeout is None:
        timeout = float(os.environ.get("K8S_LAB_UP_TIMEOUT") or DEFAULT_UP_TIMEOUT)
    if os.geteuid() != 0:
        raise LabError("the Kubernetes lab needs root (it starts etcd, kube-apiserver, ... as root)")
    t0 = time.monotonic()
    run_lab_script(["up"], directory=directory, timeout=timeout, log_name="pytest-up.log")
    seconds = time.monotonic() - t0
    env = run_lab_script(["env"], directory=directory, timeout=30, log_name="pytest-env.log")
    return Lab.from_env_output(env, up_seconds=seconds)


def lab_down(directory: Path | None = None, timeout: float = 120) -> None:
    run_lab_script(["down"], directory=directory or lab_dir(), timeout=timeout, log_name="pytest-down.log")


@contextlib.contextmanager
def lab_session(directory: Path | None = None) -> Iterator[Lab]:
    """Start the lab for one pytest process; stop it when the last process using it is done.

    Each process registers its pid under directory/pytest-sessions; `down` runs only when no other
    live process is registered (xdist workers may share one lab) and K8S_LAB_KEEP is not 1.
    """
    directory = directory or lab_dir()
    sessions = directory / "pytest-sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    me = sessions / str(os.getpid())
    with _locked(directory / ".pytest-sessions.lock"):
        me.touch()
    failure: BaseException | None = None
    try:
        yield lab_up(directory)
    except BaseException as exc:  # a failed `up` may leave etcd running: still `down`, keep this error
        failure = exc
        raise
    finally:
        with _locked(directory / ".pytest-sessions.lock"):
            me.unlink(missing_ok=True)
            others = []
            for entry in sessions.iterdir():  # entries of killed sessions are dropped here
                if entry.name.isdigit() and _alive(int(entry.name)):
                    others.append(entry)
                else:
                    entry.unlink(missing_ok=True)
            if not others and os.environ.get("K8S_LAB_KEEP") != "1":
                try:
                    lab_down(directory)
                except LabError as exc:
                    if failure is None:
                        raise
                    failure.add_note(f"`k8s-lab down` failed as well: {exc}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def apiserver_stopped(lab: Lab) -> Iterator[None]:
    """Stop kube-apiserver alone (etcd keeps every object) and start it again on exit, even on failure.

    For watch-recovery tests: clients see connection refused, then the same cluster comes back with
    the same resourceVersions. Stopping takes ~12 s (SIGTERM; the script SIGKILLs after 10 s while
    controllers hold watches open), starting ~5 s. Every user of this K8S_LAB_DIR sees the outage:
    the identity xdist group keeps one session's tests serial, but two pytest runs sharing a lab
    dir (two developers, say) disturb each other; give each its own K8S_LAB_DIR.
    """
    run_lab_script(
        ["apiserver", "stop"], directory=lab.directory, timeout=60, log_name="pytest-apiserver.log"
    )
    try:
        yield
    finally:
        run_lab_script(
            ["apiserver", "start"], directory=lab.directory, timeout=120, log_name="pytest-apiserver.log"
        )


# ------------------------------------------------------------------------------------------ waiting
def wait_for(
    pred: Callable[[], T | None],
    *,
    timeout: float = 60,
    what: str,
    interval: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll pred until it returns something truthy and return that; AssertionError naming `what` on timeout.

    `detail`, when given, is called on timeout to explain the state (the last object seen, say).
    """
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= end:
            extra = f": {detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def pod_ready(pod: Obj) -> bool:
    st = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    return st.get("phase") == "Running" and bool(st.get("podIP")) and ready


def wait_pods_ready(lab: Lab, namespace: str, selector: str, count: int, timeout: float = 60) -> list[Obj]:
    """Exactly `count` live (not terminating) pods match `selector`, all Running+Ready with an IP."""
    last: list[Obj] = []

    def check() -> list[Obj] | None:
        nonlocal last
        items = lab.get("-n", namespace, "pods", "-l", selector)["items"]
        last = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        return last if len(last) == count and all(pod_ready(p) for p in last) else None

    def detail() -> str:
        return (
            ", ".join(f"{p['metadata']['name']}={(p.get('status') or {}).get('phase')}" for p in last)
            or "none"
        )

    return wait_for(check, timeout=timeout, what=f"{count} ready pods {namespace}/{selector}", detail=detail)


def endpoint_ips(lab: Lab, namespace: str, name: str) -> set[str]:
    """Ready addresses of the core/v1 Endpoints object of a Service (empty when it has none yet)."""
    ep = lab.get_or_none("-n", namespace, "endpoints", name) or {}
    return {a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}


def create_namespace(lab: Lab, prefix: str) -> str:
    """A uniquely named namespace, returned once its `default` ServiceAccount has a token.

    Until then ServiceAccount admission rejects pods created directly (controllers just retry).
    """
    name = f"{prefix[:40].rstrip('-')}-{secrets.token_hex(3)}"
    lab.kubectl("create", "namespace", name)
    wait_for(
        lambda: (lab.get_or_none("-n", name, "serviceaccount", "default") or {}).get("secrets"),
        what=f"namespace {name}: default ServiceAccount token",
    )
    return name


# ------------------------------------------------------------------------------------------ manifests
def pod_spec(
    node_selector: Mapping[str, str], *, host_network: bool = False, ports: Sequence[int] = ()
) -> Obj:
    """A pod spec for fake nodes: nothing ever runs, so the image is never pulled."""
    container: Obj = {"name": "app", "image": SIM_IMAGE, "command": ["sleep", "3600"]}
    if ports:
        container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    return {
        "nodeSelector": dict(node_selector),
        "hostNetwork": host_network,
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
    }


def deployment(
    namespace: str,
    name: str,
    node_selector: Mapping[str, str],
    *,
    replicas: int = 1,
    labels: Mapping[str, str] | None = None,
    host_network: bool = False,
    ports: Sequence[int] = (),
) -> Obj:
    labels = dict(labels or {"app": name})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": pod_spec(node_selector, host_network=host_network, ports=ports),
            },
        },
    }


def statefulset(
    namespace: str,
    name: str,
    node_selector: Mapping[str, str],
    *,
    service_name: str,
    replicas: int = 1,
    labels: Mapping[str, str] | None = None,
    ip: str | None = None,
    ports: Sequence[int] = (),
) -> Obj:
    """A StatefulSet (Parallel pod management: scaling is not serialised). `ip` pins the IP (1 replica)."""
    labels = dict(labels or {"app": name})
    template_md: Obj = {"labels": labels}
    if ip:
        template_md["annotations"] = {IP_ANNOTATION: ip}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "serviceName": service_name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {"metadata": template_md, "spec": pod_spec(node_selector, ports=ports)},
        },
    }


def bare_pod(
    namespace: str,
    name: str,
    node_selector: Mapping[str, str],
    *,
    labels: Mapping[str, str] | None = None,
    ip: str | None = None,
    host_network: bool = False,
) -> Obj:
    """A pod with no owner; `ip` asks SimKubelet for exactly that pod IP."""
    md: Obj = {"name": name, "namespace": namespace, "labels": dict(labels or {"app": name})}
    if ip:
        md["annotations"] = {IP_ANNOTATION: ip}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": md,
        "spec": pod_spec(node_selector, host_network=host_network),
    }


def service(
    namespace: str,
    name: str,
    selector: Mapping[str, str],
    ports: Sequence[tuple[int, int]],
    *,
    headless: bool = False,
) -> Obj:
    """A Service; ports are (port, targetPort) pairs, TCP. The API server assigns the ClusterIP."""
    spec: Obj = {
        "selector": dict(selector),
        "ports": [{"name": f"p{p}", "port": p, "targetPort": t, "protocol": "TCP"} for p, t in ports],
    }
    if headless:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# ------------------------------------------------------------------------------------------ simulated kubelet
def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_id(pod_uid: str, container: str) -> str:
    """The containerID SimKubelet reports: derived from the pod uid, so a test can recompute it."""
    return "containerd://" + hashlib.sha256(f"{pod_uid}/{container}".encode()).hexdigest()


@dataclass
class SimKubelet:
    """Plays the kubelet for fake nodes, so a control-plane-only lab has pods with distinct IPs.

    Every `interval` it lists the pods bound to its nodes and, like a kubelet with host-local IPAM:
    reports new pods Running+Ready with the lowest free IP of `pod_cidr` (or the IP a pod asks for
    with the IP_ANNOTATION, once no live pod holds it), hostNetwork pods with their node's IP, and
    confirms graceful deletions (else pods stay Terminating). Every 10 s it renews the nodes'
    Ready heartbeat (else the node controller taints them after 40 s and evicts after 5 min).
    It survives the API server going away (errors are counted; see `describe()`).

    Node names carry a per-instance token and pods select nodes by the `node_selector` label, so
    two sessions sharing a kept lab never place pods on each other's nodes.
    """

    lab: Lab
    node_ips: Sequence[str] = ("10.0.0.11", "10.0.0.12")
    pod_cidr: str = "10.244.0.0/16"
    interval: float = 0.25
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    errors: int = 0
    last_error: str = ""
    rounds: int = 0

    def __post_init__(self) -> None:
        self.nodes: dict[str, str] = {f"sim-{self.token}-{i}": ip for i, ip in enumerate(self.node_ips)}
        self.network = ipaddress.ip_network(self.pod_cidr)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = 0.0
        self._api: Any = None

    @property
    def node_selector(self) -> dict[str, str]:
        return {"sim.podshark.test/pool": self.token}

    # -- lifecycle
    def start(self) -> SimKubelet:
        from kubernetes import client

        self._api = client.CoreV1Api(self.lab.api_client())
        for name in self.nodes:
            labels = {"kubernetes.io/hostname": name, **self.node_selector}
            self._call(self._api.create_node, {"metadata": {"name": name, "labels": labels}}, strict=True)
        self._heartbeat(strict=True)
        self._thread = threading.Thread(target=self._run, name=f"sim-kubelet-{self.token}", daemon=True)
        self._thread.start()
        return self

    def stop(self, delete_nodes: bool = True) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        if delete_nodes and self._api is not None:
            for name in self.nodes:
                with contextlib.suppress(Exception):  # best effort: the lab may be going down anyway
                    self._api.delete_node(name, _request_timeout=10)

    def describe(self) -> str:
        alive = bool(self._thread and self._thread.is_alive())
        return (
            f"sim kubelet {self.token}: alive={alive} rounds={self.rounds} errors={self.errors} "
            f"last error: {self.last_error or '-'}"
        )

    # -- loop
    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if time.monotonic() - self._last_beat >= 10:
                    self._heartbeat()
                self.sync()
                self.rounds += 1
            except Exception as exc:  # API server restarting, conflicts with controllers: retry next round
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"

    def _call(self, fn: Callable[..., Any], *args: Any, strict: bool = False, **kw: Any) -> Any:
        """Call the API with a timeout (a frozen API server must not freeze the loop), raw JSON back."""
        try:
            resp = fn(*args, _request_timeout=10, _preload_content=False, **kw)
            return json.loads(resp.data) if resp.data else {}
        except Exception as exc:
            if strict:
                raise
            self.errors += 1
            self.last_error = f"{getattr(fn, '__name__', fn)}: {type(exc).__name__}: {str(exc)[:300]}"
            return None

    def _heartbeat(self, strict: bool = False) -> None:
        cap = {"cpu": "8", "memory": "32Gi", "pods": "110"}
        now = _now()
        for name, ip in self.nodes.items():
            body = {
                "status": {
                    "capacity": cap,
                    "allocatable": cap,
                    "addresses": [
                        {"type": "InternalIP", "address": ip},
                        {"type": "Hostname", "address": name},
                    ],
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "simulated by tests/identity/kube.py",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                }
            }
            self._call(self._api.patch_node_status, name, body, strict=True)
        self._last_beat = time.monotonic()

    def sync(self) -> None:
        """One round: confirm deletions, then give IPs to new pods (lowest free, or the one asked for)."""
        pods: list[tuple[str, Obj]] = []
        for node in self.nodes:
            got = self._call(
                self._api.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}", strict=True
            )
            pods += [(node, p) for p in got.get("items", [])]
        used = {
            ip
            for _, p in pods
            if not p["spec"].get("hostNetwork")
            for ip in [(p.get("status") or {}).get("podIP")]
            if ip
        }
        for node, p in pods:
            md, st = p["metadata"], p.get("status") or {}
            if md.get("deletionTimestamp"):
                # confirm like a kubelet; the uid precondition spares a same-named successor (StatefulSet)
                self._call(
                    self._api.delete_namespaced_pod,
                    md["name"],
                    md["namespace"],
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": md["uid"]}},
                )
            elif not st.get("podIP"):
                ip = self._pick_ip(p, node, used)
                if ip is not None:
                    if not p["spec"].get("hostNetwork"):
                        used.add(ip)
                    self._call(
                        self._api.patch_namespaced_pod_status,
                        md["name"],
                        md["namespace"],
                        self._running_status(p, ip, self.nodes[node]),
                    )

    def _pick_ip(self, pod: Obj, node: str, used: set[str]) -> str | None:
        if pod["spec"].get("hostNetwork"):
            return self.nodes[node]
        wanted = ((pod["metadata"].get("annotations") or {}).get(IP_ANNOTATION) or "").strip()
        if wanted:
            try:
                ok = ipaddress.ip_address(wanted) in self.network
            except ValueError:
                ok = False
            if not ok:
                self.errors += 1
                self.last_error = (
                    f"{pod['metadata']['name']}: {IP_ANNOTATION}={wanted!r} is not in {self.network}"
                )
                return None
            return None if wanted in used else wanted  # held by a live pod: wait until it is gone
        for host in self.network.hosts():
            if str(host) not in used:
                return str(host)
        self.errors += 1
        self.last_error = f"pod CIDR {self.network} exhausted"
        return None

    @staticmethod
    def _running_status(pod: Obj, ip: str, node_ip: str) -> Obj:
        now = _now()
        uid = pod["metadata"]["uid"]
        return {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": node_ip,
                "startTime": now,
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "containerID": container_id(uid, c["name"]),
                        "state": {"running": {"startedAt": now}},
                    }
                    for c in pod["spec"]["containers"]
                ],
            }
        }
