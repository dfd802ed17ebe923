"""The worker end to end: pods on a bridge, real servers and clients, `podshark worker` on the host-side
interfaces, a real hub process.

What is known by construction: every request the test makes has its own target (`/item/<i>-<nonce>`)
and the server's answer names it, so each request must appear in the hub exactly once, paired with its
own response; the clients and servers run under names the test chose (curl is curl; the Python
servers are renamed with prctl), so process identity must report exactly those names; the test's
`Authorization` header carries a nonce that must never reach the hub. Each packet crosses three
interfaces of the root namespace (two veths and the bridge): the worker captures all three, so
"exactly once" also checks the dedupe across interfaces.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dissect.pcapio import CaptureReader
from tests.capture.podnet import Pod, PodNet, named, new_prefix, podnet
from tests.hub.test_service import REPO, Hub, _env, get, start_hub
from tests.realtraffic import netns_unavailable_reason, tools_missing_reason

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("capture-worker"))

PODSHARK = str(REPO / ".venv" / "bin" / "podshark")
HTTP_PORT = 8080
GRPC_PORT = 50061
N_CURL = 12
N_GRPC = 8


def _skip_reason() -> str | None:
    return netns_unavailable_reason() or tools_missing_reason("curl", "tcpdump")


@pytest.fixture
def node() -> Iterator[PodNet]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with podnet("client", "server") as net:
        server = start_http_server(net)
        net.spawn(
            server,
            named("psk-grpcd", "tests.capture.echo_grpc", "server", server.ip, str(GRPC_PORT)),
            cwd=REPO,
        )
        _wait_listening(net, server.ip, GRPC_PORT)
        yield net


def start_http_server(net: PodNet) -> Pod:
    """The echo HTTP server, named psk-httpd, in the "server" pod; returns once it listens."""
    server = net.pods["server"]
    net.spawn(server, named("psk-httpd", "tests.capture.echo_http", server.ip, str(HTTP_PORT)), cwd=REPO)
    _wait_listening(net, server.ip, HTTP_PORT)
    return server


def _wait_listening(net: PodNet, ip: str, port: int) -> None:
    client = net.pods["client"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = net.run(client, ["bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}"], timeout=5)
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {ip}:{port}")


class WorkerProc:
    def __init__(
        self,
        hub: Hub,
        interfaces: str,
        state: Path,
        log: Path,
        *extra: str,
        wrap: list[str] | None = None,
        node: str = "test-node",
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: extra environment variables for the worker."""
        self.log = log
        self.node = node
        argv = [
            *(wrap or []),
            PODSHARK,
            "worker",
            "--hub",
            hub.url,
            "--interface",
            interfaces,
            "--node",
            node,
            "--state-dir",
            str(state),
            *extra,
        ]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env={**_env(), **(env or {})}, stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"worker ignored SIGTERM: {self.log.read_text()[-3000:]}") from None
        return self.proc.returncode


def _worker_state(hub: Hub, node: str = "test-node") -> dict[str, Any] | None:
    status, body = get(hub, "/api/v1/stats")
    assert status == 200
    for w in body["workers"]:
        if w["name"] == node:
            return w
    return None


def _wait_worker(hub: Hub, worker: WorkerProc, interfaces: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited {worker.proc.returncode}: {worker.log.read_text()[-3000:]}")
        w = _worker_state(hub, worker.node)
        if w and w.get("connected") and w.get("reported", {}).get("interface_count", 0) >= interfaces:
            return w
        time.sleep(0.3)
    raise AssertionError(f"worker did not report {interfaces} interfaces: {worker.log.read_text()[-3000:]}")


def _calls(hub: Hub, flt: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {"filter": flt, "limit": "500", "order": "asc", "bodies": "1"}
        if cursor:
            q["cursor"] = cursor
        status, body = get(hub, "/api/v1/calls", **q)
        assert status == 200, body
        out += body["calls"]
        cursor = body.get("next_cursor")
        if not cursor:
            return out


def _wait_calls(hub: Hub, flt: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    calls = _calls(hub, flt)
    while len(calls) < n and time.monotonic() < deadline:
        time.sleep(0.5)
        calls = _calls(hub, flt)
    return calls


def _traffic(net: PodNet, nonce: str, workdir: Path) -> tuple[list[str], list[str]]:
    """N_CURL curl runs (each its own short-lived process and connection) and one gRPC client making
    N_GRPC calls on one channel. Returns the HTTP targets and the gRPC payloads."""
    client, server = net.pods["client"], net.pods["server"]
    targets = []
    for i in range(N_CURL):
        target = f"/item/{i}-{nonce}"
        extra = ["-H", f"Authorization: Bearer SECRET-{nonce}"] if i % 2 == 0 else []
        r = net.run(
            client,
            ["curl", "-sS", "--max-time", "10", *extra, f"http://{server.ip}:{HTTP_PORT}{target}"],
            timeout=20,
        )
        assert r.returncode == 0 and r.stdout == b"path=" + target.encode(), r
        targets.append(target)
    r = net.run(
        client,
        named("psk-grpcc", "tests.capture.echo_grpc", "client", server.ip, str(GRPC_PORT), str(N_GRPC)),
        timeout=60,
    )
    # named.py runs from the repo: `ip netns exec` keeps the working directory of this test
    assert r.returncode == 0, r.stderr.decode()
    sent = [json.loads(line)["sent"] for line in r.stdout.decode().splitlines()]
    assert len(sent) == N_GRPC
    return targets, sent


def _check_calls(hub: Hub, net: PodNet, nonce: str, targets: list[str], payloads: list[str]) -> None:
    client, server = net.pods["client"], net.pods["server"]
    http = _wait_calls(hub, f'http and target contains "{nonce}"', len(targets))
    got = sorted(c["target"] for c in http)
    assert got == sorted(targets), "every request exactly once"
    for c in http:
        assert c["status"] == 200 and c["response"] is not None, c["id"]
        assert c["src"]["ip"] == client.ip and c["dst"]["ip"] == server.ip
        assert c["src"]["process"] == "curl", c["src"]
        assert c["dst"]["process"] == "psk-httpd", c["dst"]
        assert c["id"].startswith("test-node/")
        assert base64.b64decode(c["response"]["body"]) == b"path=" + c["target"].encode()
        auth = [v for k, v in c["request"]["headers"] if k.lower() == "authorization"]
        if auth:
            assert "redacted" in c["flags"]
            assert all(nonce not in v for v in auth), auth
    assert sum(1 for c in http if "redacted" in c["flags"]) == (len(targets) + 1) // 2
    grpc = _wait_calls(hub, f'grpc and target == "/psk.Echo/Say" and src.ip == "{client.ip}"', len(payloads))
    assert len(grpc) == len(payloads), [c["id"] for c in grpc]
    for c in grpc:
        assert c["status"] == 0
        assert c["src"]["process"] == "psk-grpcc", c["src"]
        assert c["dst"]["process"] == "psk-grpcd", c["dst"]


def _no_drops(hub: Hub) -> None:
    w = _worker_state(hub)
    assert w is not None
    assert w["drops"].get("kernel", 0) == 0, w["drops"]
    assert w["drops"].get("spool", 0) == 0, w["drops"]


def _assert_secret_never_stored(hub: Hub, nonce: str) -> None:
    status, body = get(
        hub, "/api/v1/calls", filter=f'request.headers["authorization"] contains "SECRET-{nonce}"'
    )
    assert status == 200 and body["calls"] == []
    for f in hub.db.rglob("*"):
        if f.is_file():
            assert f"SECRET-{nonce}".encode() not in f.read_bytes(), f


@pytest.mark.parametrize("procs", [1, 2])
def test_every_request_once_paired_with_processes_and_no_drops(
    node: PodNet, tmp_path: Path, procs: int
) -> None:
    hub = start_hub(tmp_path / "db", tmp_path / "hub.log")
    worker = WorkerProc(hub, node.glob, tmp_path / "state", tmp_path / "worker.log", "--procs", str(procs))
    try:
        _wait_worker(hub, worker, interfaces=3)  # two veths and the bridge
        nonce = secrets.token_hex(4)
        targets, payloads = _traffic(node, nonce, tmp_path)
        _check_calls(hub, node, nonce, targets, payloads)
        time.sleep(2.5)  # one more stats message from the worker
        _no_drops(hub)
        rc = worker.stop()
        assert rc == 0, worker.log.read_text()[-3000:]
        _assert_secret_never_stored(hub, nonce)
    finally:
        worker.stop()
        hub.stop()


def test_export_gathers_the_frames_from_the_worker_spool(node: PodNet, tmp_path: Path) -> None:
    """`podshark export` of live calls: the hub asks the worker for the frames of their connections;
    tshark reads the pcapng and finds exactly the requests made, with the secret masked in the frames."""
    hub = start_hub(tmp_path / "db", tmp_path / "hub.log")
    worker = WorkerProc(hub, node.glob, tmp_path / "state", tmp_path / "worker.log")
    try:
        _wait_worker(hub, worker, interfaces=3)
        nonce = secrets.token_hex(4)
        targets, _payloads = _traffic(node, nonce, tmp_path)
        http = _wait_calls(hub, f'http and target contains "{nonce}"', len(targets))
        assert len(http) == len(targets)
        out = tmp_path / "export.pcapng"
        r = subprocess.run(
            [
                PODSHARK,
                "export",
                "--hub",
                hub.url,
                "--filter",
                f'http and target contains "{nonce}"',
                "-o",
                str(out),
            ],
            env=_env(),
            capture_output=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr.decode()
        tshark = subprocess.run(
            ["tshark", "-r", str(out), "-Y", "http.request", "-T", "fields", "-e", "http.request.uri"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert tshark.returncode == 0, tshark.stderr
        assert sorted(tshark.stdout.split()) == sorted(targets)
        data = out.read_bytes()
        assert f"SECRET-{nonce}".encode() not in data
        # the frames are those of one interface's view: each frame once, not once per interface
        frames = list(CaptureReader(out))
        assert len(frames) == len({(ts, bytes(f)) for ts, _lt, f, _w in frames})
    finally:
        worker.stop()
        hub.stop()


def test_worker_with_a_missing_interface_name_says_so(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "db", tmp_path / "hub.log")
    try:
        r = subprocess.run(
            [
                PODSHARK,
                "worker",
                "--hub",
                hub.url,
                "--interface",
                "psk-none0",
                "--state-dir",
                str(tmp_path / "s"),
            ],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2
        assert "no interface named psk-none0" in r.stderr
    finally:
        hub.stop()


def test_pod_interfaces_are_picked_up_and_dropped_as_they_come_and_go(tmp_path: Path) -> None:
    """A glob that matches nothing yet: the worker waits; pods created later are captured within the
    re-scan interval, and a deleted pod's interface is let go."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = new_prefix()
    hub = start_hub(tmp_path / "db", tmp_path / "hub.log")
    worker = WorkerProc(hub, prefix + "*", tmp_path / "state", tmp_path / "worker.log")
    try:
        w = _wait_worker(hub, worker, interfaces=0)
        assert w["reported"]["interface_count"] == 0
        assert any("no interface to capture yet" in x for x in w["reported"]["warnings"])
        with podnet("client", "server", prefix=prefix) as net:
            server = start_http_server(net)
            _wait_worker(hub, worker, interfaces=3)
            r = net.run(net.pods["client"], ["curl", "-sS", f"http://{server.ip}:{HTTP_PORT}/late/{prefix}"])
            assert r.returncode == 0
            assert len(_wait_calls(hub, f'target == "/late/{prefix}"', 1)) == 1
            net.remove_pod("client")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                state = _worker_state(hub)
                if state and state["reported"]["interface_count"] == 2:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"the deleted pod's interface is still captured: {_worker_state(hub)}")
        assert worker.proc.poll() is None, "the worker survives its interfaces going away"
        assert worker.stop() == 0
    finally:
        worker.stop()
        hub.stop()


def test_worker_needs_root_and_says_so(tmp_path: Path) -> None:
    """As an unprivileged user (setpriv drops to nobody) the worker refuses with what to do."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            str(REPO / ".venv" / "bin" / "python"),
            "-m",
            "podshark",
            "worker",
            "--hub",
            "http://127.0.0.1:9",
            "--state-dir",
            "/tmp",
        ],
        env={**_env(), "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "needs root" in r.stderr
