"""Process identity from /proc (and the eBPF socket iterator): `capture.procs`.

Ground truth is by construction: the processes are ours (their pids come from Popen: ``ip netns exec``
execs the program, so the pid is the program's), their names are set with prctl(PR_SET_NAME) to
something no other process has, and the addresses and ports are the ones the kernel gave their
sockets (the client prints its `getsockname()`).

Layout of the namespace tests (tests.realtraffic's veth pair):

    client ns  198.18.x.1   psk-client (a keep-alive connection to the server)
                            psk-decoy  (listens on 0.0.0.0:8000 too: must never be taken for the server)
    server ns  198.18.x.2   psk-httpd  (listens on [::]:8000, dual stack: IPv4 arrives v4-mapped)

The container-id samples follow each runtime's documented cgroup layout: Docker's "Runtime metrics"
page (``/sys/fs/cgroup/memory/docker/<longid>`` with cgroupfs, ``system.slice/docker-<longid>.scope``
with systemd), Kubernetes' cgroup drivers (``kubepods.slice/…/cri-containerd-<id>.scope`` with
systemd, ``/kubepods/<qos>/pod<uid>/<id>`` with cgroupfs), CRI-O (``crio-<id>.scope``, its monitor in
``crio-conmon-<id>.scope``) and Podman (``libpod-<id>.scope``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.procs import (
    Proc,
    ProcessIndex,
    container_id,
    normalize_ip,
    parse_fib_trie_locals,
    parse_socket_table,
)
from tests.realtraffic import NetnsPair, _terminate, netns_pair

REPO = Path(__file__).resolve().parents[2]
PORT = 8000

#: An HTTP/1.1 keep-alive server named argv[1], listening on argv[2]:argv[3] (``::`` = dual stack).
SERVER = textwrap.dedent(
    """\
    import ctypes, socket, socketserver, sys
    ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME: /proc/PID/comm
    host, port = sys.argv[2], int(sys.argv[3])

    class Server(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        allow_reuse_address = True
        daemon_threads = True

        def server_bind(self):
            if self.address_family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                while self.rfile.readline() not in (b"\\r\\n", b"\\n", b""):
                    pass
                self.wfile.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")

    server = Server((host, port), Handler)
    print("ready", flush=True)
    server.serve_forever()
    """
)

#: A client named argv[1] holding one keep-alive connection to argv[2]:argv[3]; it prints its local
#: port, closes the connection on the first line of stdin and exits on the second.
CLIENT = textwrap.dedent(
    """\
    import ctypes, socket, sys
    ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
    bind = ("127.0.0.1", int(sys.argv[4])) if len(sys.argv) > 4 else None
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10, source_address=bind)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    data = b""
    while not data.endswith(b"ok"):
        data += s.recv(4096)
    print(s.getsockname()[1], flush=True)
    sys.stdin.readline()
    s.close()
    print("closed", flush=True)
    sys.stdin.readline()
    """
)


def in_cgroup(cgroup: Path, argv: list[str]) -> list[str]:
    """`argv` run inside `cgroup` (a shell joins it, then execs the program: the pid stays the same).

    Wrap the whole ``ip netns exec`` command: it mounts a fresh /sys, without the cgroup tree."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"), *argv]


@contextlib.contextmanager
def spawn(
    pair: NetnsPair, ns: str, script: str, *args: str, cgroup: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `script` with this interpreter in namespace `ns` (and `cgroup`, if given); yields it and
    its first line of output."""
    argv = [sys.executable, "-c", script, *args]
    proc = subprocess.Popen(
        in_cgroup(cgroup, pair.exec_args(ns, argv)) if cgroup else pair.exec_args(ns, argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        if not first:
            proc.wait(timeout=5)
            raise RuntimeError(f"{args[0]} did not start: {proc.stderr.read() if proc.stderr else ''}")
        yield proc, first
    finally:
        _terminate(proc)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _lookup_until_found(index: ProcessIndex, client_ip: str, port: int, server_ip: str) -> Proc:
    """The client of a connection made after the index's last scan. Misses rescan at most every few
    hundred milliseconds, so ask until one has run (bounded: a correctness wait, not a timing test)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        client = index.lookup("tcp", client_ip, port, server_ip, PORT)[0]
        if client is not None:
            return client
        time.sleep(0.05)
    raise AssertionError(f"no process found for {client_ip}:{port} within 10 s: {index.stats()}")


def wait_socket_gone(pid: int, port: int, timeout: float = 10) -> None:
    """Wait until the namespace of `pid` has no TCP socket with `port` at either end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = []
        for table in ("tcp", "tcp6"):
            text = Path(f"/proc/{pid}/net/{table}").read_text()
            rows.extend(parse_socket_table(text, "tcp")[0])
        if not any(port in (r.local_port, r.remote_port) for r in rows):
            return
        time.sleep(0.05)
    raise AssertionError(f"a socket with port {port} is still open after {timeout}s")


# --- container ids ---------------------------------------------------------------------------------

ID_A = hashlib.sha256(b"container a").hexdigest()
ID_B = hashlib.sha256(b"container b").hexdigest()
POD_UID = "5f1c3a6e-8d2b-4c1e-9a0f-3b7d2e1c4a5b"


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        # Docker, cgroup v1, cgroupfs driver
        (f"12:memory:/docker/{ID_A}\n11:cpu,cpuacct:/docker/{ID_A}\n1:name=systemd:/docker/{ID_A}\n", ID_A),
        # Docker, cgroup v2, systemd driver
        (f"0::/system.slice/docker-{ID_A}.scope\n", ID_A),
        # Kubernetes + containerd, cgroup v2, systemd driver
        (
            "0::/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{ID_A}.scope\n",
            ID_A,
        ),
        # Kubernetes, cgroup v1, cgroupfs driver (only some controllers listed, as on real nodes)
        (
            f"10:memory:/kubepods/burstable/pod{POD_UID}/{ID_A}\n2:cpuset:/kubepods/burstable/pod{POD_UID}/{ID_A}\n",
            ID_A,
        ),
        # Kubernetes + CRI-O, systemd driver; its conmon monitor process is not the container
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_UID}.slice/crio-{ID_A}.scope",
            ID_A,
        ),
        (f"0::/machine.slice/crio-conmon-{ID_A}.scope\n", None),
        # Podman (systemd), with crun's inner "container" cgroup below the scope
        (f"0::/machine.slice/libpod-{ID_A}.scope/container\n", ID_A),
        (f"0::/machine.slice/libpod-conmon-{ID_A}.scope\n", None),
        # Docker in Docker: the innermost container is the process's own
        (f"12:memory:/docker/{ID_A}/docker/{ID_B}\n", ID_B),
        # hybrid host: the v2 line is the root, the container is in the v1 lines
        (f"0::/\n4:memory:/docker/{ID_A}\n", ID_A),
        # the cgroup's leaf name alone, as the eBPF tracer reports it
        (f"cri-containerd-{ID_A}.scope", ID_A),
        (ID_B, ID_B),
        # not containers: host services, sessions, short hex names (a pod uid, a 32-hex session id)
        ("0::/system.slice/ssh.service\n", None),
        ("0::/init.scope\n", None),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
        ("4:memory:/process_api/2fd2946c109a5caf692d1faf2495444d\n0::/\n", None),
        (f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice\n", None),
        (f"0::/docker-{ID_A[:63]}.scope\n", None),
        (f"0::/docker-{ID_A.upper()}.scope\n", None),
        ("", None),
    ],
)
def test_container_id(cgroup: str, expected: str | None) -> None:
    assert container_id(cgroup) == expected


@given(st.text(max_size=400))
def test_container_id_never_raises(text: str) -> None:
    found = container_id(text)
    assert found is None or (len(found) == 64 and found in text)


# --- the kernel's own socket tables -----------------------------------------------------------------


def test_parse_socket_table_matches_kernel() -> None:
    """Sockets this test opens appear in /proc/self/net/tcp[6] with their inode, addresses and state."""
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dual = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    client = None
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        dual.listen()
        client = socket.create_connection(("127.0.0.1", dual.getsockname()[1]))
        accepted, _ = dual.accept()
        with accepted:
            tcp, bad4 = parse_socket_table(Path("/proc/self/net/tcp").read_text(), "tcp")
            tcp6, bad6 = parse_socket_table(Path("/proc/self/net/tcp6").read_text(), "tcp")
            by_inode = {e.inode: e for e in tcp + tcp6}
            assert bad4 == bad6 == 0

            lst = by_inode[os.fstat(listener.fileno()).st_ino]
            assert (lst.local_ip, lst.local_port, lst.state) == ("127.0.0.1", listener.getsockname()[1], 0x0A)
            dl = by_inode[os.fstat(dual.fileno()).st_ino]
            assert (dl.local_ip, dl.local_port, dl.state) == ("::", dual.getsockname()[1], 0x0A)
            # an IPv4 connection accepted by a dual-stack socket: listed in tcp6 as ::ffff:127.0.0.1
            acc = by_inode[os.fstat(accepted.fileno()).st_ino]
            assert (acc.local_ip, acc.local_port) == ("127.0.0.1", dual.getsockname()[1])
            assert (acc.remote_ip, acc.remote_port) == ("127.0.0.1", client.getsockname()[1])
            assert acc.state == 0x01
    finally:
        for s in (listener, dual, client):
            if s is not None:
                s.close()


def test_fib_trie_lists_loopback() -> None:
    assert "127.0.0.1" in parse_fib_trie_locals(Path("/proc/self/net/fib_trie").read_text())


@given(st.text(max_size=2000))
def test_parse_socket_table_never_raises(text: str) -> None:
    entries, malformed = parse_socket_table("header\n" + text, "udp")
    assert malformed >= 0 and all(e.inode > 0 for e in entries)


def test_normalize_ip() -> None:
    assert normalize_ip("::ffff:10.1.2.3") == "10.1.2.3"
    assert normalize_ip("2001:DB8:0:0::1") == "2001:db8::1"
    assert normalize_ip("10.1.2.3") == "10.1.2.3"
    assert normalize_ip("010.1.2.3") is None
    assert normalize_ip("not an ip") is None


# --- a /proc tree we build: hostile input and the listener rules, without root ---------------------


def _fake_proc(
    root: Path, pid: int, netns: int, tcp: str, fds: dict[str, str], comm: str, cgroup: str
) -> None:
    base = root / str(pid)
    (base / "ns").mkdir(parents=True)
    (base / "ns" / "net").symlink_to(f"net:[{netns}]")
    (base / "net").mkdir()
    (base / "net" / "tcp").write_text(tcp)
    (base / "net" / "fib_trie").write_text(
        "Local:\n  +-- 10.9.8.0/24 2 0 2\n     |-- 10.9.8.7\n        /32 host LOCAL\n"
    )
    (base / "fd").mkdir()
    for fd, target in fds.items():
        (base / "fd" / fd).symlink_to(target)
    (base / "comm").write_text(comm + "\n")
    (base / "cgroup").write_text(cgroup)


TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)


def test_fake_proc_tree(tmp_path: Path) -> None:
    """A listener on 0.0.0.0:80 (0x0050) and an established connection 10.9.8.7:80 <- 10.0.0.5:40000,
    among malformed lines; the listener also serves 10.9.8.7 (its namespace owns that address) but
    not an address no namespace here owns."""
    tcp = (
        TCP_HEADER
        + "   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 555 1\n"
        + "   1: 0708090A:0050 0500000A:9C40 01 00000000:00000000 00:00000000 00000000  0 0 556 1\n"
        + "   2: garbage line\n"
        + "   3: ZZZZZZZZ:0050 0500000A:9C40 01 00000000:00000000 00:00000000 00000000  0 0 557 1\n"
        + "   4: 0708090A:0051 0500000A:9C41 06 00000000:00000000 00:00000000 00000000  0 0 0 1\n"
    )
    _fake_proc(
        tmp_path,
        123,
        4026530001,
        tcp,
        {"3": "socket:[555]", "4": "/dev/null", "5": "socket:[556]", "6": "socket:[bad"},
        "fake-httpd",
        f"0::/system.slice/docker-{ID_A}.scope\n",
    )
    (tmp_path / "self").mkdir()  # not a pid: ignored
    index = ProcessIndex(ebpf=False, rescan_interval=3600, proc_root=str(tmp_path))
    try:
        assert index.start() == []
        want = Proc(pid=123, name="fake-httpd", container=ID_A)
        assert index.lookup("tcp", "10.0.0.5", 40000, "10.9.8.7", 80) == (None, want)  # accepted socket
        assert index.lookup("tcp", "10.0.0.6", 41000, "10.9.8.7", 80) == (None, want)  # the listener
        assert index.lookup("tcp", "10.0.0.6", 41000, "10.9.9.9", 80) == (None, None)  # not ours
        assert index.lookup("tcp", "10.0.0.6", 41000, "10.9.8.7", 81) == (None, None)
        assert index.lookup("udp", "10.0.0.6", 41000, "10.9.8.7", 80) == (None, None)
        assert index.lookup("sctp", "10.0.0.6", 41000, "10.9.8.7", 80) == (None, None)
        assert index.lookup("tcp", "bogus", 1, "10.9.8.7", 80) == (None, None)
        stats = index.stats()
        assert stats["malformed_lines"] == 2
        assert stats["scan_source"] == "proc" and stats["ebpf"] is False
    finally:
        index.close()


# --- real processes in real namespaces --------------------------------------------------------------


@pytest.mark.root
@pytest.mark.xdist_group("capture-procs")
@pytest.mark.parametrize("ebpf", [False, True], ids=["proc", "ebpf-iterator"])
def test_processes_in_namespaces(ebpf: bool) -> None:
    with (
        netns_pair() as pair,
        spawn(pair, pair.server_ns, SERVER, "psk-httpd", "::", str(PORT)) as (server, _),
        spawn(pair, pair.client_ns, SERVER, "psk-decoy", "0.0.0.0", str(PORT)) as (decoy, _),
        spawn(pair, pair.client_ns, CLIENT, "psk-client", pair.server_ip, str(PORT)) as (client, port_line),
    ):
        port = int(port_line)
        index = ProcessIndex(ebpf=ebpf, rescan_interval=3600)
        try:
            warnings = index.start()
            stats = index.stats()
            if ebpf:
                if not stats["ebpf"]:
                    pytest.skip(f"eBPF unavailable here: {warnings}")
                assert stats["scan_source"] == "ebpf-iterator", stats
            found_client, found_server = index.lookup("tcp", pair.client_ip, port, pair.server_ip, PORT)
            assert found_client is not None and found_server is not None
            assert (found_client.pid, found_client.name) == (client.pid, "psk-client")
            assert (found_server.pid, found_server.name) == (server.pid, "psk-httpd")
            # the decoy listens on the same port in the client's namespace: it serves the client's IP
            decoy_hit = index.lookup("tcp", pair.server_ip, 50000, pair.client_ip, PORT)[1]
            assert decoy_hit is not None and (decoy_hit.pid, decoy_hit.name) == (decoy.pid, "psk-decoy")
            # a connection made after the scan: found by the rescan a miss triggers (or by eBPF)
            late_args = ("psk-late", pair.server_ip, str(PORT))
            with spawn(pair, pair.client_ns, CLIENT, *late_args) as (late, late_port):
                found_late = _lookup_until_found(index, pair.client_ip, int(late_port), pair.server_ip)
                assert (found_late.pid, found_late.name) == (late.pid, "psk-late")
        finally:
            index.close()

        # the connection closes; a fresh index never saw the accepted socket: the listener answers
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("close\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "closed"
        wait_socket_gone(server.pid, port)
        index = ProcessIndex(ebpf=ebpf, rescan_interval=3600)
        try:
            index.start()
            found_client, found_server = index.lookup("tcp", pair.client_ip, port, pair.server_ip, PORT)
            assert found_server is not None and (found_server.pid, found_server.name) == (
                server.pid,
                "psk-httpd",
            )
            assert found_client is None  # psk-client holds no socket with that port any more
        finally:
            index.close()


@pytest.mark.root
@pytest.mark.xdist_group("capture-procs")
def test_same_four_tuple_in_two_namespaces_is_ambiguous() -> None:
    """Two namespaces each hold 127.0.0.1:45678 -> 127.0.0.1:9000 (different processes): no guess."""
    twin_port = "45678"
    with (
        netns_pair() as pair,
        spawn(pair, pair.client_ns, SERVER, "psk-twin-srv-a", "127.0.0.1", "9000"),
        spawn(pair, pair.server_ns, SERVER, "psk-twin-srv-b", "127.0.0.1", "9000"),
        spawn(pair, pair.client_ns, CLIENT, "psk-twin-a", "127.0.0.1", "9000", twin_port) as (_, port_a),
        spawn(pair, pair.server_ns, CLIENT, "psk-twin-b", "127.0.0.1", "9000", twin_port) as (_, port_b),
    ):
        assert port_a == port_b == twin_port
        index = ProcessIndex(ebpf=False, rescan_interval=3600)
        try:
            index.start()
            assert index.lookup("tcp", "127.0.0.1", int(twin_port), "127.0.0.1", 9000) == (None, None)
            assert index.stats()["ambiguous"] >= 2
        finally:
            index.close()


NOBODY_SCRIPT = textwrap.dedent(
    """\
    import json, socket
    from capture.procs import ProcessIndex
    listener = socket.create_server(("127.0.0.1", 0))
    index = ProcessIndex(rescan_interval=3600)
    warnings = index.start()
    _, server = index.lookup("tcp", "127.0.0.1", 1, "127.0.0.1", listener.getsockname()[1])
    print(json.dumps({"warnings": warnings, "server": server and [server.pid, server.name],
                      "stats": index.stats()}))
    index.close()
    """
)


@pytest.mark.root
@pytest.mark.xdist_group("capture-procs")
def test_unprivileged_degrades_with_reasons() -> None:
    """As `nobody`: eBPF is refused with a one-line reason, other users' processes are skipped, and the
    process's own listener is still found."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that user nobody can run (the venv lives under /root)")
    proc = subprocess.Popen(  # setpriv execs python: proc.pid is the python process
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", NOBODY_SCRIPT],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        _terminate(proc)
    assert proc.returncode == 0, stderr
    out = json.loads(stdout)
    ebpf_warnings = [w for w in out["warnings"] if "eBPF" in w]
    assert len(ebpf_warnings) == 1 and "\n" not in ebpf_warnings[0]
    assert "not permitted: needs root or CAP_BPF+CAP_PERFMON" in ebpf_warnings[0]
    assert any("processes unreadable (not root" in w for w in out["warnings"])
    assert out["stats"]["unreadable_processes"] > 0
    assert out["server"] == [proc.pid, "python3"]
