"""The ``dns`` service: authoritative answers for ``*.demo.podshark``, nothing else, nothing forwarded.

With dnsmasq installed (Debian ``dnsmasq-base``) this process supervises a dnsmasq that knows only
the demo's records — the same careful flags as ``tests/realnet/test_dns_realtraffic.py``: no
upstream servers, no /etc/hosts, no resolv.conf, bound to the pod's address only. The supervisor
ends dnsmasq when it is itself ended or orphaned (its lifeline hook), so a crashed demo leaves no
DNS server behind. Without dnsmasq, `PythonDnsServer` answers the same
queries (A records; NXDOMAIN inside the zone, REFUSED outside it).

Ready means answering: the supervisor asks the server for ``api.demo.podshark`` from inside the pod
(to its own address, which the kernel routes over the pod's loopback, so the probe never shows in a
capture of the veths or the bridge) before it reports ready.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from podshark.demo import dnswire
from podshark.demo.config import DemoConfig
from podshark.demo.runtime import Lifecycle, log, on_orphaned
from podshark.demo.topology import ZONE, Topology

DNSMASQ_PATHS = ("/usr/sbin/dnsmasq", "/usr/bin/dnsmasq")
TTL = 5
READY_TIMEOUT = 15.0


def dnsmasq_path() -> str | None:
    """dnsmasq's path, or None when it is not installed."""
    found = shutil.which("dnsmasq")
    if found:
        return found
    return next((p for p in DNSMASQ_PATHS if os.access(p, os.X_OK)), None)


def records(topology: Topology) -> dict[str, list[str]]:
    """Every service's DNS name (lower case) and its address: what the server answers."""
    return {s.dns_name.lower(): [s.ip] for s in topology.services}


def dnsmasq_args(binary: str, topology: Topology) -> list[str]:
    me = topology.service("dns")
    args = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--local=/{ZONE}/",
        "--bind-interfaces",
        f"--listen-address={me.ip}",
        "--except-interface=lo",
        f"--port={me.port}",
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
        f"--local-ttl={TTL}",
        "--cache-size=0",
    ]
    for name, addrs in records(topology).items():
        args.append(f"--host-record={name},{','.join(addrs)}")
    return args


def answer(msg: bytes, table: dict[str, list[str]]) -> bytes | None:
    """The reply to one datagram, or None when it deserves none (a response, a runt). Never raises."""
    try:
        q = dnswire.parse_question(msg)
    except dnswire.DnsError:
        return dnswire.error_response(msg, dnswire.RCODE_FORMERR)
    if q.flags & 0x8000:
        return None
    if (q.flags >> 11) & 0xF != 0:
        return dnswire.build_response(q, msg, dnswire.RCODE_NOTIMP, [])
    name = q.name.lower()
    if q.qclass != dnswire.CLASS_IN or not (name == ZONE or name.endswith("." + ZONE)):
        return dnswire.build_response(q, msg, dnswire.RCODE_REFUSED, [])
    addrs = table.get(name)
    if addrs is None:
        return dnswire.build_response(q, msg, dnswire.RCODE_NXDOMAIN, [])
    found = addrs if q.qtype == dnswire.TYPE_A else []  # NODATA for AAAA and the rest
    return dnswire.build_response(q, msg, dnswire.RCODE_NOERROR, found, ttl=TTL)


class PythonDnsServer:
    """A single-threaded UDP server around `answer` (the fallback when dnsmasq is not installed)."""

    def __init__(self, ip: str, port: int, table: dict[str, list[str]]) -> None:
        self.table = table
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, port))
        self.answered = 0
        self.ignored = 0

    def serve_forever(self) -> None:
        while True:
            try:
                msg, peer = self.sock.recvfrom(4096)
            except InterruptedError:
                continue
            reply = answer(msg, self.table)
            if reply is None:
                self.ignored += 1
                continue
            try:
                self.sock.sendto(reply, peer)
                self.answered += 1
            except OSError:
                self.ignored += 1


def resolve(server_ip: str, port: int, name: str, timeout: float = 1.0, tries: int = 2) -> list[str]:
    """A records of `name` from the server, by one UDP query per try; OSError/DnsError when none came."""
    last: Exception = TimeoutError(f"no answer from {server_ip}:{port}")
    for _ in range(tries):
        txid = secrets.randbits(16)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((server_ip, port))  # connected: datagrams from anyone else are not delivered
            s.send(dnswire.build_query(txid, name))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    data = s.recv(4096)
                except OSError as e:  # timeout or ICMP port unreachable
                    last = e
                    break
                try:
                    rcode, addrs = dnswire.parse_a_answers(data, txid, name)
                except dnswire.DnsError as e:
                    last = e
                    continue  # not our answer: keep waiting for the real one
                if rcode != dnswire.RCODE_NOERROR:
                    raise dnswire.DnsError(f"{name}: rcode {rcode}")
                return addrs
    raise last


def serve(cfg: DemoConfig, life: Lifecycle) -> None:
    """Run dnsmasq (or the Python server) until ended; `life.ready()` once it answers."""
    me = cfg.topology.service("dns")
    assert me.port is not None
    table = records(cfg.topology)
    binary = dnsmasq_path() if cfg.dns_backend in ("auto", "dnsmasq") else None
    if cfg.dns_backend == "dnsmasq" and binary is None:
        raise SystemExit("dns: dnsmasq is not installed (apt-get install dnsmasq-base) and was asked for")
    if binary is None:
        server = PythonDnsServer(me.ip, me.port, table)
        log("dns", f"built-in DNS server on {me.ip}:{me.port} (dnsmasq not installed)")
        life.ready()
        server.serve_forever()
        return
    child = subprocess.Popen(
        dnsmasq_args(binary, cfg.topology),
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        stderr=sys.stderr,
    )

    def end_child() -> None:
        # reap it before this process goes: an orphaned child would linger as a zombie under init
        child.terminate()
        try:
            child.wait(timeout=3)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=3)

    on_orphaned(end_child)

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        # only signal here: waiting inside a handler would deadlock with the main thread's wait()
        nonlocal stopping
        stopping = True
        child.send_signal(signal.SIGTERM)  # a no-op once the child has been reaped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    expected = table[f"api.{ZONE}"]
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if child.poll() is not None:
            if stopping:
                raise SystemExit(0)
            raise SystemExit(f"dns: dnsmasq exited with {child.returncode} (its messages are above)")
        try:
            if resolve(me.ip, me.port, f"api.{ZONE}", timeout=0.3, tries=1) == expected:
                break
        except (OSError, dnswire.DnsError):
            pass
        if time.monotonic() > deadline:
            child.kill()
            raise SystemExit(f"dns: dnsmasq did not answer within {READY_TIMEOUT:g}s")
        time.sleep(0.1)
    log("dns", f"dnsmasq (pid {child.pid}) answering on {me.ip}:{me.port}")
    life.ready()
    code = child.wait()
    if stopping:
        raise SystemExit(0)
    raise SystemExit(f"dns: dnsmasq exited with {code}")
