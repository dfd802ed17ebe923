"""TLS on real traffic: nginx (TLS, HTTP/2) in one namespace, curl in the other, tcpdump on the veth.

Each curl run is one connection whose settings we chose (``--http1.1``/``--http2`` decide the ALPN
offer, ``--tlsv1.2 --tls-max 1.2``/``--tlsv1.3`` the version, ``--resolve`` the SNI). podshark must
report one ``tls`` call per connection with that SNI, ALPN, version and cipher — and agree with
tshark (through pyshark) reading the same capture: tshark is the oracle for what the hellos say.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.dissect.test_tls_handshakes import cert_files
from tests.realtraffic import (
    CURL,
    NGINX,
    NetnsPair,
    _terminate,
    netns_pair,
    netns_unavailable_reason,
    tcpdump_capture,
    tools_missing_reason,
)
from tests.tshark_oracle import requires_pyshark, requires_tshark, resend_flags, resent_connections

pytestmark = [
    pytest.mark.tshark,
    requires_tshark,
    requires_pyshark,
    pytest.mark.root,
    pytest.mark.timeout(180),
]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("realnet-tls"))

SNI = "api.podshark.test"
PORT = 443

NGINX_TLS_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type text/plain;
    server {{
        listen {ip}:{port} ssl http2;
        server_name {sni};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            return 200 "path=$request_uri\\n";
        }}
    }}
}}
"""

# (name, curl options, expected version, offered ALPN, chosen ALPN as visible on the wire)
CASES: list[tuple[str, list[str], str, list[str], str | None]] = [
    ("h1-tls13", ["--http1.1", "--tlsv1.3"], "TLS 1.3", ["http/1.1"], None),
    ("h2-tls13", ["--http2", "--tlsv1.3"], "TLS 1.3", ["h2", "http/1.1"], None),
    ("h1-tls12", ["--http1.1", "--tlsv1.2", "--tls-max", "1.2"], "TLS 1.2", ["http/1.1"], "http/1.1"),
    ("h2-tls12", ["--http2", "--tlsv1.2", "--tls-max", "1.2"], "TLS 1.2", ["h2", "http/1.1"], "h2"),
]


@dataclass
class TLSCapture:
    path: Path
    ports: dict[str, int] = field(default_factory=dict)  # case name -> client port


@contextlib.contextmanager
def nginx_tls(pair: NetnsPair, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    assert NGINX is not None and CURL is not None
    cert, key = cert_files()
    conf = workdir / "nginx.conf"
    conf.write_text(
        NGINX_TLS_CONF.format(dir=workdir, ip=pair.server_ip, port=PORT, sni=SNI, cert=cert, key=key)
    )
    proc = subprocess.Popen(
        pair.exec_args(
            pair.server_ns, [NGINX, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = (
                    (workdir / "error.log").read_text(errors="replace")
                    if (workdir / "error.log").exists()
                    else ""
                )
                raise RuntimeError(f"nginx exited ({proc.returncode}): {err.strip()}")
            res = pair.client(
                [CURL, "-sk", "--max-time", "1", *resolve(pair), f"https://{SNI}/ready"], check=False
            )
            if res.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx with TLS did not answer: {res.stderr}")
            time.sleep(0.1)
        yield proc
    finally:
        _terminate(proc, signal.SIGQUIT)


def resolve(pair: NetnsPair) -> list[str]:
    return ["--resolve", f"{SNI}:{PORT}:{pair.server_ip}"]


@pytest.fixture(scope="module")
def tls_capture() -> Iterator[TLSCapture]:
    reason = netns_unavailable_reason() or tools_missing_reason("nginx", "tcpdump", "curl")
    if reason:
        pytest.skip(reason)
    assert CURL is not None
    workdir = Path(tempfile.mkdtemp(prefix="psk-tls-lab-"))
    os.chmod(workdir, 0o755)
    try:
        with netns_pair() as pair, nginx_tls(pair, workdir):
            for attempt in range(3):
                cap_path = workdir / f"tls-{attempt}.pcap"
                ports: dict[str, int] = {}
                with tcpdump_capture(pair, cap_path, bpf=f"tcp port {PORT}") as cap:
                    for name, opts, *_ in CASES:
                        res = pair.client(
                            [CURL, "-sk", "-o", "/dev/null", "-w", "%{local_port} %{http_version}",
                             *opts, *resolve(pair), f"https://{SNI}/{name}"]
                        )  # fmt: skip
                        port, http_version = res.stdout.split()
                        ports[name] = int(port)
                        want = "2" if "--http2" in opts else "1.1"
                        assert http_version == want, f"{name}: curl spoke HTTP/{http_version}"
                if cap.complete:
                    yield TLSCapture(path=cap_path, ports=ports)
                    return
            raise AssertionError(f"tcpdump lost packets 3 times:\n{cap.stderr}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _values(layer: Any, name: str) -> list[str]:
    container = layer.get_field(name)
    if container is None:
        return []
    fields = getattr(container, "all_fields", None) or [container]
    return [str(getattr(f, "show", f)) for f in fields]


@dataclass
class TsharkHello:
    sni: str | None = None
    alpn_offered: list[str] = field(default_factory=list)
    alpn: str | None = None
    cipher: int | None = None
    version: int | None = None
    client_hello: bool = False
    server_hello: bool = False


def tshark_hellos(path: Path) -> dict[int, TsharkHello]:
    """Per client port, what tshark read from the ClientHello and ServerHello."""
    import pyshark

    out: dict[int, TsharkHello] = {}
    cap = pyshark.FileCapture(str(path), display_filter="tls.handshake.type == 1 || tls.handshake.type == 2")
    try:
        for pkt in cap:
            tcp = pkt.tcp
            for layer in pkt.get_multiple_layers("tls"):
                types = [int(t) for t in _values(layer, "handshake_type")]
                if 1 in types:
                    h = out.setdefault(int(tcp.srcport), TsharkHello())
                    h.client_hello = True
                    names = _values(layer, "handshake_extensions_server_name")
                    h.sni = names[0] if names else None
                    h.alpn_offered = _values(layer, "handshake_extensions_alpn_str")
                if 2 in types:
                    h = out.setdefault(int(tcp.dstport), TsharkHello())
                    h.server_hello = True
                    h.cipher = int(_values(layer, "handshake_ciphersuite")[0], 0)
                    alpn = _values(layer, "handshake_extensions_alpn_str")
                    h.alpn = alpn[0] if alpn else None
                    sv = _values(layer, "handshake_extensions_supported_version")
                    v = _values(layer, "handshake_version")
                    h.version = int((sv or v)[-1], 0)
    finally:
        cap.close()
    return out


VERSION_NAMES = {0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}


def podshark_calls(path: Path) -> list[Any]:
    from dissect.engine import dissect_path

    return list(dissect_path(path))


def test_one_tls_call_per_connection(tls_capture: TLSCapture) -> None:
    resent = resent_connections(tls_capture.path)
    calls = podshark_calls(tls_capture.path)
    assert all(c.protocol == "tls" for c in calls), [c.protocol for c in calls]
    by_port = {c.src.port: c for c in calls}
    assert len(by_port) == len(calls), "more than one call for a connection"
    for name, _opts, version, offered, chosen in CASES:
        call = by_port[tls_capture.ports[name]]
        assert call.sni == call.target == SNI, name
        assert call.method == "TLS" and call.status is None and call.tls is True
        assert call.dst.port == PORT
        # a loaded machine can make TCP resend (a tail loss probe): allowed where tshark saw one
        assert call.flags[0] == "encrypted" and set(call.flags) - resend_flags(call, resent) == {
            "encrypted"
        }, (
            name,
            call.flags,
        )
        info = call.info
        assert info["tls_version"] == version, name
        assert info["alpn_offered"] == offered, name
        assert info["alpn"] == chosen, name
        assert info["cipher"] is not None and not info["cipher"].startswith("0x"), name
        assert call.latency_ns is not None and call.latency_ns > 0
        assert info["bytes"]["client"] > 0 and info["bytes"]["server"] > 0
        assert info["resumed"] is False


def test_agrees_with_tshark(tls_capture: TLSCapture) -> None:
    from dissect.tls.hello import CIPHER_SUITES

    oracle = tshark_hellos(tls_capture.path)
    calls = {c.src.port: c for c in podshark_calls(tls_capture.path)}
    # the readiness probe ran before the capture: every connection tshark saw is one of ours
    assert set(oracle) == set(calls) == set(tls_capture.ports.values())
    for port, want in oracle.items():
        call = calls[port]
        assert want.client_hello and want.server_hello
        assert call.sni == want.sni
        assert call.info["alpn_offered"] == want.alpn_offered
        assert call.info["alpn"] == want.alpn  # tshark cannot see a 1.3 choice either
        assert call.info["tls_version"] == VERSION_NAMES[want.version or 0]
        assert call.info["cipher"] == CIPHER_SUITES.get(want.cipher or -1, f"0x{want.cipher:04x}")
