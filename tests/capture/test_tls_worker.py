"""TLS plaintext end to end: `podshark worker --tls` with real TLS clients and servers, a real hub.

Pods on a bridge (network namespaces): nginx (Debian's, with a self-signed certificate) serves HTTPS
— HTTP/1.1 and HTTP/2 by ALPN — inside the "server" pod, and the clients run in the "client" pod:
curl (one short-lived process per request, several at once) and Python's ssl module (keep-alive
connections). The worker captures the pods' interfaces and traces OpenSSL in every process.

Known by construction: each request has its own target and nginx answers ``path=<target>`` (or a
file whose bytes the test wrote), curl prints its own end of the connection (``%{local_ip}`` /
``%{local_port}``) and the Python client its socket's addresses. So every request must appear
exactly once, decrypted (``tls`` true, ``info.tls_source`` "ebpf", the SNI the client sent), with
the right body and 4-tuple, named by both processes (curl and nginx are both traced), and no
connection may come out a second time as an opaque ``tls`` call.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.capture.podnet import PodNet, named, podnet
from tests.capture.test_tlslibs import contains, go_binaries, running, silent_port, wait_connected
from tests.capture.test_worker import PODSHARK, WorkerProc, _wait_calls, _wait_worker, _worker_state
from tests.capture.tlsnginx import nginx_tls_conf
from tests.dissect.test_tls_handshakes import cert_files
from tests.hub.test_service import REPO, _env, start_hub
from tests.realtraffic import netns_unavailable_reason, tools_missing_reason

__all__ = ["silent_port"]  # a fixture of test_tlslibs, used here

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("capture-tls"))

PORT = 8443
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SNI = "api.podshark.test"
BIG = 384 << 10  # the large response: many TLS records, many SSL_read calls


def _tls_unavailable() -> str | None:
    why = netns_unavailable_reason() or tools_missing_reason("curl", "nginx")
    if why:
        return why
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "this kernel has no BTF: the TLS tracer cannot load"
    return None


@dataclass
class Lab:
    net: PodNet
    big: bytes
    workdir: Path

    @property
    def server_ip(self) -> str:
        return self.net.pods["server"].ip

    @property
    def client_ip(self) -> str:
        return self.net.pods["client"].ip


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _tls_unavailable()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="psk-tls-nginx-"))
    os.chmod(workdir, 0o755)
    try:
        (workdir / "www").mkdir()
        big = secrets.token_bytes(BIG)
        (workdir / "www" / "big.bin").write_bytes(big)
        cert, key = cert_files()
        with podnet("client", "server") as net:
            server = net.pods["server"]
            conf = workdir / "nginx.conf"
            locations = (
                f"location = /big.bin {{ root {workdir}/www; default_type application/octet-stream; }}\n"
                '        location / { return 200 "path=$request_uri"; }'
            )
            conf.write_text(nginx_tls_conf(workdir, server.ip, PORT, cert, key, locations))
            net.spawn(
                server,
                [
                    shutil.which("nginx") or "nginx",
                    "-c",
                    str(conf),
                    "-p",
                    str(workdir),
                    "-e",
                    str(workdir / "error.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            lab = Lab(net, big, workdir)
            _wait_https(lab)
            yield lab
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_https(lab: Lab) -> None:
    client = lab.net.pods["client"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = lab.net.run(client, _curl(lab, "/ready"), timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"nginx does not answer HTTPS: {(lab.workdir / 'error.log').read_text()[-2000:]}")


def _curl(lab: Lab, target: str, *extra: str) -> list[str]:
    return [
        "curl", "-sS", "-k", "--max-time", "20", "--resolve", f"{SNI}:{PORT}:{lab.server_ip}",
        *extra, f"https://{SNI}:{PORT}{target}",
    ]  # fmt: skip


def _curl_run(lab: Lab, target: str, *extra: str) -> dict[str, Any]:
    """One curl process; what it printed about its connection and the body's digest."""
    fmt = "\n%{local_ip} %{local_port} %{http_version}"
    r = lab.net.run(lab.net.pods["client"], _curl(lab, target, "-w", fmt, *extra), timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    body, _, tail = r.stdout.rpartition(b"\n")
    ip, port, version = tail.decode().split()
    return {"target": target, "body": body, "local": (ip, int(port)), "version": version}


def _decoded(call: dict[str, Any], half: str) -> bytes:
    msg = call[half]
    assert msg is not None, call["id"]
    return base64.b64decode(msg["body"])


def _check_decrypted(lab: Lab, call: dict[str, Any], local: tuple[str, int]) -> None:
    assert call["tls"] is True and call["info"].get("tls_source") == "ebpf", call["id"]
    assert call["sni"] == SNI, call
    assert (call["src"]["ip"], call["src"]["port"]) == local
    assert (call["dst"]["ip"], call["dst"]["port"]) == (lab.server_ip, PORT)


def _start(tmp_path: Path, lab: Lab, *extra: str) -> tuple[Any, WorkerProc]:
    hub = start_hub(tmp_path / "db", tmp_path / "hub.log")
    worker = WorkerProc(hub, lab.net.glob, tmp_path / "state", tmp_path / "worker.log", "--tls", *extra)
    _wait_worker(hub, worker, interfaces=3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the tracer is loaded and nginx's libssl attached
        tls = (_worker_state(hub) or {}).get("reported", {}).get("tls") or {}
        if tls.get("enabled") and any("libssl" in p for p in tls.get("libraries", [])):
            return hub, worker
        time.sleep(0.3)
    raise AssertionError(f"TLS tracing did not start: {tls} {worker.log.read_text()[-3000:]}")


@pytest.mark.parametrize("procs", [1, 2])
def test_curl_http1_and_http2_concurrent_and_large_through_nginx(
    lab: Lab, tmp_path: Path, procs: int
) -> None:
    """With --procs 2 the encrypted connections are hashed over two capture processes while the
    tracer feeds the first: the opaque calls must still be replaced (by the worker's main process),
    and the SNI is still known (the tracer sees the client set it)."""
    hub, worker = _start(tmp_path, lab, "--procs", str(procs))
    try:
        nonce = secrets.token_hex(4)
        jobs = [(f"/h1/{i}-{nonce}", ("--http1.1",)) for i in range(6)]
        jobs += [(f"/h2/{i}-{nonce}", ("--http2",)) for i in range(6)]
        with ThreadPoolExecutor(6) as pool:  # concurrent connections, each its own curl
            runs = list(pool.map(lambda j: _curl_run(lab, j[0], *j[1]), jobs))
        big = _curl_run(lab, f"/big.bin?n={nonce}", "--http1.1")
        assert big["body"] == lab.big
        for run in runs:
            assert run["body"] == f"path={run['target']}".encode()
        expected = len(runs) + 1
        calls = _wait_calls(hub, f'target contains "{nonce}"', expected)
        assert sorted(c["target"] for c in calls) == sorted([r["target"] for r in runs] + [big["target"]])
        by_target = {c["target"]: c for c in calls}
        for run in [*runs, big]:
            c = by_target[run["target"]]
            _check_decrypted(lab, c, run["local"])
            assert c["status"] == 200
            assert c["protocol"] == ("http2" if run["version"] == "2" else "http"), (c["protocol"], run)
            assert c["src"]["process"] == "curl" and c["dst"]["process"] == "nginx", (c["src"], c["dst"])
            assert _decoded(c, "response") == run["body"]
        assert (
            hashlib.sha256(_decoded(by_target[big["target"]], "response")).digest()
            == hashlib.sha256(lab.big).digest()
        )
        # no connection of these came out a second time, as an opaque TLS call
        time.sleep(1.5)
        opaque = _wait_calls(hub, f'protocol == "tls" and src.ip == "{lab.client_ip}"', 0, timeout=0)
        ports = {r["local"][1] for r in [*runs, big]}
        assert not [c for c in opaque if c["src"]["port"] in ports], opaque
        w = _worker_state(hub)
        assert w is not None and w["drops"].get("tls", 0) == 0, w["drops"]
        assert worker.stop() == 0, worker.log.read_text()[-3000:]
    finally:
        worker.stop()
        hub.stop()


def test_python_ssl_client_keepalive(lab: Lab, tmp_path: Path) -> None:
    """Python's ssl module gives OpenSSL a socket BIO, not SSL_set_fd: the 4-tuple comes from the
    socket I/O the SSL calls make. Two keep-alive connections, several requests each."""
    hub, worker = _start(tmp_path, lab)
    try:
        nonce = secrets.token_hex(4)
        n = 8
        r = lab.net.run(
            lab.net.pods["client"],
            named(
                "psk-tlsc", "tests.capture.tls_client", SNI, lab.server_ip, str(PORT), str(n), f"/py/{nonce}"
            ),
            timeout=60,
        )
        assert r.returncode == 0, r.stderr.decode()
        lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
        assert len(lines) == n and all(x["status"] == 200 for x in lines)
        calls = _wait_calls(hub, f'target contains "{nonce}"', n)
        assert sorted(c["target"] for c in calls) == sorted(x["target"] for x in lines)
        by_target = {c["target"]: c for c in calls}
        for x in lines:
            c = by_target[x["target"]]
            _check_decrypted(lab, c, (x["local"][0], x["local"][1]))
            assert c["src"]["process"] == "psk-tlsc" and c["dst"]["process"] == "nginx"
            assert _decoded(c, "response") == x["body"].encode("latin-1")
        assert len({c["src"]["port"] for c in calls}) == 2  # two connections, kept apart
    finally:
        worker.stop()
        hub.stop()


def test_export_writes_the_decrypted_conversation(lab: Lab, tmp_path: Path) -> None:
    """`podshark export` of decrypted calls: synthetic TCP frames carrying the plaintext, which
    tshark decodes as HTTP (with Decode As for the TLS port) — the request URIs the test made."""
    hub, worker = _start(tmp_path, lab)
    try:
        nonce = secrets.token_hex(4)
        runs = [_curl_run(lab, f"/x/{i}-{nonce}", "--http1.1") for i in range(3)]
        assert len(_wait_calls(hub, f'target contains "{nonce}"', len(runs))) == len(runs)
        out = tmp_path / "tls.pcapng"
        r = subprocess.run(
            [PODSHARK, "export", "--hub", hub.url, "--filter", f'target contains "{nonce}"', "-o", str(out)],
            env=_env(), capture_output=True, timeout=120, cwd=REPO,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        tshark = subprocess.run(
            ["tshark", "-r", str(out), "-d", f"tcp.port=={PORT},http", "-Y", "http.request",
             "-T", "fields", "-e", "http.request.uri", "-e", "tcp.srcport"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert tshark.returncode == 0, tshark.stderr
        rows = sorted(tuple(line.split("\t")) for line in tshark.stdout.splitlines() if line)
        assert rows == sorted((r["target"], str(r["local"][1])) for r in runs)
    finally:
        worker.stop()
        hub.stop()


def test_without_bpf_rights_the_worker_says_why_and_captures_on(lab: Lab, tmp_path: Path) -> None:
    """The worker run without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (dropped from its bounding set:
    it keeps CAP_NET_RAW for the capture): TLS tracing cannot load, the worker says why in one line,
    and the encrypted connections are still captured, as opaque TLS calls with their SNI."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    hub = start_hub(tmp_path / "db", tmp_path / "hub.log")
    worker = WorkerProc(
        hub, lab.net.glob, tmp_path / "state", tmp_path / "worker.log", "--tls",
        wrap=["setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin", "--"],
    )  # fmt: skip
    try:
        _wait_worker(hub, worker, interfaces=3)
        run = _curl_run(lab, f"/plain/{secrets.token_hex(4)}", "--http1.1")
        calls = _wait_calls(hub, f'protocol == "tls" and src.port == {run["local"][1]}', 1)
        assert len(calls) == 1 and calls[0]["sni"] == SNI and "encrypted" in calls[0]["flags"]
        tls = (_worker_state(hub) or {})["reported"]["tls"]
        assert tls["enabled"] is False
        assert tls["reason"].startswith("TLS plaintext not traced: ") and "\n" not in tls["reason"]
        assert "TLS plaintext not traced" in worker.log.read_text()
    finally:
        worker.stop()
        hub.stop()


# what runs in the "container": import ssl (maps its libssl), say ok, wait for "go", then curl each
# target given on the command line and print what curl printed about its connection
CONTAINED = """
import ssl, subprocess, sys
print("ok", flush=True)
sys.stdin.readline()
for target in sys.argv[2:]:
    r = subprocess.run(sys.argv[1].split("\\x1f") + [target], capture_output=True)
    print(r.returncode, r.stdout.decode(errors="replace").replace("\\n", " "), flush=True)
"""


def test_a_container_with_its_own_libssl_started_after_the_worker(lab: Lab, tmp_path: Path) -> None:
    """A "container": the client pod's network namespace plus a private mount namespace where its own
    copy of libssl.so.3 (a different file) sits at the system path. It starts after the worker; the
    re-scan finds the copy through /proc/PID/root and attaches it, and its curls are decrypted."""
    system = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3").resolve()
    if not system.exists() or shutil.which("unshare") is None:
        pytest.skip("needs /usr/lib/x86_64-linux-gnu/libssl.so.3 and unshare (util-linux)")
    hub, worker = _start(tmp_path, lab)
    private = tmp_path / "image"
    private.mkdir()
    nonce = secrets.token_hex(4)
    targets = [f"https://{SNI}:{PORT}/ct/{i}-{nonce}" for i in range(3)]
    resolve = f"{SNI}:{PORT}:{lab.server_ip}"
    curl = "\x1f".join(["curl", "-sS", "-k", "--http1.1", "--resolve", resolve, "-w", "\n%{local_port}"])
    script = (
        'mount -t tmpfs psk-img "$1" && cp "$2" "$1/" && mount --bind "$1/$3" "$2" && shift 3 && exec "$@"'
    )
    argv = lab.net.pods["client"].exec_args(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
         str(private), str(system), system.name, sys.executable, "-c", CONTAINED, curl, *targets]
    )  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == b"ok", proc.stderr.read() if proc.stderr else b""
        deadline = time.monotonic() + 30
        mine = f"/proc/{proc.pid}/root/"
        libs: list[str] = []
        while not libs and time.monotonic() < deadline:  # the re-scan attaches the container's copy
            time.sleep(0.5)
            tls = (_worker_state(hub) or {}).get("reported", {}).get("tls") or {}
            libs = [p for p in tls.get("libraries", []) if p.startswith(mine)]
        assert libs, f"the container's libssl was not attached: {tls.get('libraries')}"
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        seen = {}  # curl's local port -> the body it got
        for _ in targets:
            rc, _, out = proc.stdout.readline().decode().strip().partition(" ")
            assert rc == "0", out
            body, _, port = out.rpartition(" ")
            seen[int(port)] = body.encode()
        calls = _wait_calls(hub, f'target contains "{nonce}"', len(targets))
        assert len(calls) == len(targets)
        for c in calls:
            assert c["tls"] is True and c["info"].get("tls_source") == "ebpf" and c["sni"] == SNI
            assert c["src"]["process"] == "curl" and c["dst"]["process"] == "nginx"
            assert c["src"]["port"] in seen and _decoded(c, "response") == seen[c["src"]["port"]]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        worker.stop()
        hub.stop()


def test_hub_stats_and_doctor_list_which_processes_are_traced(
    lab: Lab, tmp_path: Path, silent_port: int
) -> None:
    """nginx (OpenSSL) is reported traced; a Go client (crypto/tls linked in) is reported not covered,
    by the worker's stats at the hub and by `podshark doctor --hub`."""
    argv_for = {
        "docker": lambda port: ["-H", f"tcp://127.0.0.1:{port}", "version"],
        "kubectl": lambda port: ["--server", f"http://127.0.0.1:{port}", "get", "pods"],
    }
    go = [p for p in go_binaries() if os.path.basename(p) in argv_for and contains(p, "crypto/tls.")]
    if not go:
        pytest.skip("no Go client (docker, kubectl) with crypto/tls on this machine")
    hub, worker = _start(tmp_path, lab)
    try:
        with running([go[0], *argv_for[os.path.basename(go[0])](silent_port)], ready=0) as client:
            wait_connected(silent_port, client.pid)
            deadline = time.monotonic() + 30
            procs: dict[int, dict[str, Any]] = {}
            while client.pid not in procs and time.monotonic() < deadline:  # the next scan
                time.sleep(0.5)
                tls = (_worker_state(hub) or {}).get("reported", {}).get("tls") or {}
                procs = {p["pid"]: p for p in tls.get("processes", [])}
            assert procs.get(client.pid, {}).get("verdict") == "static-go", procs.get(client.pid)
            assert procs[client.pid]["traced"] is False
            nginx = [p for p in procs.values() if p["comm"] == "nginx"]
            assert nginx and all(p["traced"] and p["verdict"] == "traced" for p in nginx), nginx
            r = subprocess.run(
                [PODSHARK, "doctor", "--hub", hub.url, "--hub-only"],
                env=_env(), capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
            line = next(ln for ln in r.stdout.splitlines() if f"pid {client.pid} " in ln)
            assert line.startswith("warn") and "static-go" in line, r.stdout
            assert "traced in" in r.stdout and "worker test-node" in r.stdout
    finally:
        worker.stop()
        hub.stop()
