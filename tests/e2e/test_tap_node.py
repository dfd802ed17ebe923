"""`podshark tap` end to end on a real single-node cluster built on this machine.

The cluster is the project's lab with its node (`k8s-lab up --node`: containerd, runc and a real
kubelet, node `localhost`), in its own K8S_LAB_DIR (the build cache is hard-linked from the main
lab's, which `make test` builds). The test runs `podshark tap` itself, as a user would:

* the image is made by the lab's image command (`k8s-lab image --host-usr`: no registry), and the
  project's own Python runs inside the pods through hostPath mounts of /usr, the interpreter and
  the repository, added with `tap --patch` (the lab's README: "your code in a pod without a
  registry"); the lab's node runs only hostNetwork pods and has no DNS or kube-proxy, so the patch
  also puts the hub on the host network and points the workers at it and at the API server;
* the worker DaemonSet and the hub Deployment run as pods; tap waits for them and port-forwards
  the hub with `kubectl port-forward`, and prints the URL, token and CA file (`--no-ui`);
* TLS is on, as tap installs it by default: the hub serves HTTPS with `--client-ca`, the workers
  connect with their client certificate (a worker without one would be refused, so calls at the
  hub prove mutual TLS worked), and `podshark calls` goes through the forwarded https:// URL
  trusting only the CA file tap wrote (under the test's own XDG_CONFIG_HOME; `clean` removes it);
* two workload Deployments talk HTTP (a Python client calling a Python http.server over the
  node's loopback); `podshark calls` through tap's port-forward must list those calls with both
  ends' pod, namespace, Deployment and labels as kubectl shows them.

Skips (saying why) only where the lab cannot run: not root, or not Debian 12; never under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.capture.test_worker import PODSHARK
from tests.hub.test_service import REPO
from tests.identity.kube import Lab, lab_dir, run_lab_script, wait_for

# make test runs it in the lab phase (-m k8slab), after the main suite, alone
pytestmark = [
    pytest.mark.k8slab,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.xdist_group("identity"),
    pytest.mark.timeout(600),
]

NODE_LAB_DIR = Path(os.environ.get("K8S_LAB_NODE_DIR") or "/var/tmp/k8s-lab-node")
NAMESPACE = "podshark-e2e"
APPS = "e2e-apps"
IMAGE = "k8s-lab.local/podshark:e2e"


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab's node needs root (containerd, kubelet)"
    try:
        release = Path("/etc/os-release").read_text()
    except OSError:
        release = ""
    if 'VERSION_ID="12"' not in release or "ID=debian" not in release:
        return "the lab builds from Debian 12 packages only"
    return None


@pytest.fixture(scope="module")
def node_lab() -> Iterator[Lab]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the node lab cannot run here ({reason}); CI must run this test")
        pytest.skip(reason)
    cache = NODE_LAB_DIR / "cache"
    if not cache.exists() and (lab_dir() / "cache").exists():  # the main lab's build, shared by hard links
        NODE_LAB_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(lab_dir() / "cache"), str(cache)], check=True)
    run_lab_script(["up", "--node"], directory=NODE_LAB_DIR, timeout=1500, log_name="pytest-up.log")
    try:
        env = run_lab_script(["env"], directory=NODE_LAB_DIR, timeout=30, log_name="pytest-env.log")
        yield Lab.from_env_output(env)
    finally:
        run_lab_script(["down"], directory=NODE_LAB_DIR, timeout=120, log_name="pytest-down.log")


def _host_paths() -> list[str]:
    """What the project's Python needs from the host: the repository (with its .venv) and the
    interpreter's prefix when it is not under /usr (pyenv)."""
    prefix = str(Path(sys.base_prefix).resolve())
    paths = [str(REPO)]
    if not prefix.startswith("/usr"):
        paths.append(prefix)
    return paths


def _mounts() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    mounts = [{"name": "host-usr", "mountPath": "/usr", "readOnly": True}]
    volumes = [{"name": "host-usr", "hostPath": {"path": "/usr"}}]
    for i, path in enumerate(_host_paths()):
        mounts.append({"name": f"host-src{i}", "mountPath": path, "readOnly": True})
        volumes.append({"name": f"host-src{i}", "hostPath": {"path": path}})
    return mounts, volumes


CAP_NUMBERS = {"NET_ADMIN": 12, "NET_RAW": 13, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "SYS_RESOURCE": 24,
               "DAC_READ_SEARCH": 2, "PERFMON": 38, "BPF": 39, "CHOWN": 0}  # fmt: skip


def _manifest_caps() -> list[str]:
    from podshark.tap.render import TapOptions, render

    (ds,) = [o for o in render(TapOptions()) if o["kind"] == "DaemonSet"]
    caps: list[str] = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"][
        "add"
    ]
    return caps


def _bounding_caps() -> set[str]:
    """The capabilities this machine can give a container at all: this VM's bounding set lacks
    CAP_SYS_RESOURCE (runc then fails with "unable to apply caps"); a real node has them all."""
    status = Path("/proc/self/status").read_text()
    bnd = int(status.split("CapBnd:")[1].split()[0], 16)
    return {name for name, bit in CAP_NUMBERS.items() if bnd >> bit & 1}


def _hub_tls_args() -> list[str]:
    """The hub's TLS arguments as the manifests give them (the patch below replaces its args)."""
    from podshark.tap.render import TLS_ARGS, TapOptions, render

    (dep,) = [o for o in render(TapOptions()) if o["kind"] == "Deployment"]
    args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    tls = [a for a in args if a.startswith(TLS_ARGS)]
    assert len(tls) == 3, args
    return tls


def _patch(lab: Lab, hub_port: int, state: Path) -> str:
    """The lab's differences from a real cluster, as `tap --patch` documents."""
    python = [str(REPO / ".venv" / "bin" / "python"), "-m", "podshark"]
    mounts, volumes = _mounts()
    api_env = [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": str(lab.api_port)},
    ]
    caps = [c for c in _manifest_caps() if c in _bounding_caps()]
    worker = {
        "kind": "DaemonSet",
        "metadata": {"name": "podshark-worker"},
        "spec": {"template": {"spec": {
            "containers": [{
                "name": "worker", "command": python, "env": api_env, "volumeMounts": mounts,
                "securityContext": {"capabilities": {"add": caps}},
            }],
            "volumes": [*volumes, {"name": "state", "hostPath": {"path": str(state / "worker")}}],
        }}},
    }  # fmt: skip
    hub = {
        "kind": "Deployment",
        "metadata": {"name": "podshark-hub"},
        "spec": {"template": {"spec": {
            "hostNetwork": True,
            "securityContext": {"runAsUser": 0, "runAsNonRoot": False},  # reads the host's venv
            # root without CAP_DAC_OVERRIDE (capabilities drop ALL) must own the directory itself
            "initContainers": [
                {"name": "data-owner", "command": ["chown", "0:0", "/data"], "volumeMounts": mounts}
            ],
            "containers": [{
                "name": "hub",
                "command": python,
                "args": ["hub", "--db=/data", f"--listen=0.0.0.0:{hub_port}",
                         "--token-file=/var/run/podshark/token", *_hub_tls_args()],
                "ports": [{"name": "api", "containerPort": hub_port}],
                "volumeMounts": mounts,
            }],
            "volumes": [*volumes, {"name": "data", "hostPath": {"path": str(state / "hub")}}],
        }}},
    }  # fmt: skip
    return yaml.safe_dump_all([worker, hub])


def _apps(port: int) -> list[dict[str, Any]]:
    """A server Deployment (http.server) and a client Deployment calling it every 0.3 s."""
    client_code = (
        "import time, urllib.request\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    try:\n"
        f"        urllib.request.urlopen('http://127.0.0.1:{port}/e2e-' + str(i), timeout=5).read()\n"
        "    except Exception as e:\n"
        "        print(e, flush=True)\n"
        "    time.sleep(0.3)\n"
    )
    server_cmd = [
        "/usr/bin/python3",
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        "/usr",
    ]

    def deployment(name: str, command: list[str], ports: list[int]) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": name,
            "image": "k8s-lab.local/hostusr:1",
            "command": command,
            "volumeMounts": [{"name": "usr", "mountPath": "/usr", "readOnly": True}],
        }
        if ports:
            container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
        labels = {"app": name, "tier": "e2e"}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": APPS, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "hostNetwork": True,
                        "terminationGracePeriodSeconds": 1,
                        "containers": [container],
                        "volumes": [{"name": "usr", "hostPath": {"path": "/usr"}}],
                    },
                },
            },
        }

    return [
        deployment("server", server_cmd, [port]),
        deployment("client", ["/usr/bin/python3", "-c", client_code], []),
    ]


class Tap:
    """`podshark tap --no-ui` running; its stdout lines arrive on a queue."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._err = log.open("w")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=self._err, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def hub(self, timeout: float) -> tuple[str, str, str]:
        """The URL, token and CA file tap prints once the rollout is done and the forward is up."""
        got: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while len(got) < 3:
            if self.proc.poll() is not None:
                raise AssertionError(f"tap exited {self.proc.returncode}: {self.log.read_text()[-4000:]}")
            try:
                line = self.lines.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError(f"tap printed no hub URL: {self.log.read_text()[-4000:]}") from None
                continue
            key, _, value = line.partition(":")
            if key in ("hub", "token", "ca"):
                got[key] = value.strip()
        return got["hub"], got["token"], got["ca"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        return self.proc.returncode


def _port_forwards(parent: int) -> list[int]:
    """Pids of the `kubectl port-forward` processes whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"port-forward" in cmdline:
            found.append(int(entry.name))
    return found


def _answers(url: str, token: str, ca: str) -> bool:
    import ssl
    import urllib.request

    req = urllib.request.Request(url + "/api/v1/calls?limit=1", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5, context=ssl.create_default_context(cafile=ca)) as r:
            return r.status == 200
    except OSError:
        return False


def test_tap_on_a_real_node_shows_deployment_to_deployment_calls(node_lab: Lab, tmp_path: Path) -> None:
    lab = node_lab
    hub_port, app_port = lab.spare_port, lab.spare_port + 1
    env = lab.env()
    run_lab_script(
        ["image", "--host-usr", IMAGE, "-"], directory=NODE_LAB_DIR, timeout=120, log_name="pytest-image.log"
    )
    state = tmp_path / "state"
    patch = tmp_path / "lab.yaml"
    patch.write_text(_patch(lab, hub_port, state))
    lab.kubectl("create", "namespace", APPS, check=False)
    wait_for(
        lambda: (lab.get_or_none("-n", APPS, "serviceaccount", "default") or {}).get("secrets"),
        what="the apps namespace's token",
    )
    lab.apply(*_apps(app_port))
    config = tmp_path / "config"  # where tap keeps the hub's CA for the user (XDG_CONFIG_HOME)
    env = {**env, "XDG_CONFIG_HOME": str(config)}
    tap = Tap(
        [PODSHARK, "tap", "--kubeconfig", str(lab.kubeconfig), "--namespace", NAMESPACE, "--image", IMAGE,
         "--storage", "hostpath", "--patch", str(patch), "--timeout", "240", "--no-ui",
         f"--worker-arg=--hub=https://127.0.0.1:{hub_port}", "--worker-arg=--interface=lo"],
        tmp_path / "tap.log",
        env,  # the lab's kubectl on PATH, for the port-forward
    )  # fmt: skip
    try:
        url, token, ca = tap.hub(timeout=300)
        progress = tap.log.read_text()
        assert "workers 1/1 ready, hub 1/1 ready" in progress, progress[-3000:]
        assert url.startswith("https://127.0.0.1:") and Path(ca).is_relative_to(config), (url, ca)
        assert f"podshark ui --hub {url} --ca {ca}" in progress
        secret = lab.get("-n", NAMESPACE, "secret", "podshark-tls")["data"]
        assert base64.b64decode(secret["ca.crt"]) == Path(ca).read_bytes()  # the CA the cluster uses
        pods = {
            p["metadata"]["labels"]["app"]: p
            for p in lab.get("-n", APPS, "pods")["items"]
            if not p["metadata"].get("deletionTimestamp")
        }
        assert set(pods) == {"server", "client"}

        def calls() -> list[dict[str, Any]]:
            r = subprocess.run(
                [PODSHARK, "calls", "--hub", url, "--ca", ca, "--json",
                 "--filter", 'dst.workload == "Deployment/server"'],
                cwd=REPO, env={**env, "PODSHARK_TOKEN": token}, capture_output=True, text=True, timeout=60,
                check=False,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr[-2000:]
            return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]

        found = wait_for(lambda: [c for c in calls() if c.get("target", "").startswith("/e2e-")][:3] or None,
                         timeout=120, what="client -> server calls at the hub")  # fmt: skip
        for call in found:
            assert call["method"] == "GET" and call["status"] in (200, 404), call
            for end, app in (("src", "client"), ("dst", "server")):
                pod = pods[app]
                got = {k: call[end].get(k) for k in ("pod", "namespace", "workload", "node")}
                assert got == {
                    "pod": pod["metadata"]["name"],
                    "namespace": APPS,
                    "workload": f"Deployment/{app}",
                    "node": "localhost",
                }, (end, call[end])
                assert call[end]["labels"] == pod["metadata"]["labels"], (end, call[end])
                assert call[end]["process"], (end, call[end])

        # the port-forward dies (as when the hub pod restarts or the API connection breaks): tap
        # starts another on the same local port, so the same URL answers again
        forwards = _port_forwards(tap.proc.pid)
        assert len(forwards) == 1, forwards
        os.kill(forwards[0], signal.SIGKILL)
        wait_for(lambda: _port_forwards(tap.proc.pid) not in ([], forwards), what="a new port-forward")
        assert wait_for(lambda: _answers(url, token, ca), timeout=60, what=f"{url} to answer again")
        assert tap.stop() == 0
    finally:
        tap.stop()
        cleaned = subprocess.run(
            [PODSHARK, "clean", "--kubeconfig", str(lab.kubeconfig), "--namespace", NAMESPACE,
             "--wait", "120"],
            cwd=REPO, capture_output=True, text=True, timeout=180, check=False, env=env,
        )  # fmt: skip
        lab.kubectl("delete", "namespace", APPS, "--wait=false", check=False)
        shutil.rmtree(state, ignore_errors=True)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed the local copy of the hub's CA" in cleaned.stderr and not Path(ca).exists()
