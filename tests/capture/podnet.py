"""A node with pods, for the worker's tests: network namespaces on a bridge, like a Kubernetes node.

    root namespace:  bridge <p>br  ── <p>a0 (veth) ──  namespace <p>-a: eth0 198.19.X.2/24
                                   └─ <p>b0 (veth) ──  namespace <p>-b: eth0 198.19.X.3/24
                                   └─ ...

A packet from pod a to pod b crosses a's host-side veth, the bridge and b's host-side veth: three
interfaces in the root namespace see it, which is exactly the "both ends on one node" case the worker
must report once. The worker runs in the root namespace and captures `<p>*`.

Everything is uniquely named (`psk` + 4 hex, interface names within the kernel's 15 characters),
addresses come from 198.19.0.0/16 (RFC 2544 benchmark space, never routed), and `PodNet.close()`
removes the namespaces (their veths die with them) and the bridge — the fixture calls it even when the
test fails. Nothing else in the root namespace is touched (no sysctl, no routes, no firewall).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], check=check, capture_output=True, text=True, timeout=30)


@dataclass
class Pod:
    name: str  # short name inside the test ("a", "client", ...)
    netns: str
    host_if: str
    ip: str

    def exec_args(self, args: Sequence[str]) -> list[str]:
        return [IP, "netns", "exec", self.netns, *args]


@dataclass
class PodNet:
    prefix: str
    bridge: str
    subnet: int  # X in 198.19.X.0/24
    pods: dict[str, Pod] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def glob(self) -> str:
        return self.prefix + "*"

    def add_pod(self, name: str, ip: str | None = None, prefixlen: int = 24) -> Pod:
        """A pod on the bridge; `ip` (with `prefixlen`) instead of the next 198.19.X.n, e.g. the IP a
        Kubernetes pod was given, so real traffic carries the addresses the cluster knows."""
        n = len(self.pods) + 2
        pod = Pod(
            name,
            f"{self.prefix}-{name}",
            f"{self.prefix}{chr(ord('a') + n - 2)}0",
            ip or f"198.19.{self.subnet}.{n}",
        )
        _ip("netns", "add", pod.netns)
        self.pods[name] = pod
        _ip("link", "add", pod.host_if, "type", "veth", "peer", "name", "eth0", "netns", pod.netns)
        _ip("link", "set", pod.host_if, "master", self.bridge, "up")
        _ip("-n", pod.netns, "addr", "add", f"{pod.ip}/{prefixlen if ip else 24}", "dev", "eth0")
        _ip("-n", pod.netns, "link", "set", "eth0", "up")
        _ip("-n", pod.netns, "link", "set", "lo", "up")
        return pod

    def remove_pod(self, name: str) -> None:
        """Delete a pod: its processes, its namespace and (with it) its veth pair."""
        pod = self.pods.pop(name)
        _kill_all_in(pod.netns)
        _ip("netns", "del", pod.netns, check=False)

    def spawn(self, pod: Pod, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """A long-running process inside ``pod``; ended by close()."""
        proc = subprocess.Popen(pod.exec_args(args), **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def run(self, pod: Pod, args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(pod.exec_args(args), capture_output=True, timeout=timeout, check=False)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pod in self.pods.values():
            _kill_all_in(pod.netns)  # anything still running there (a server's children) goes too
            _ip("netns", "del", pod.netns, check=False)
        _ip("link", "del", self.bridge, check=False)


def _kill_all_in(netns: str) -> None:
    for pid in _ip("netns", "pids", netns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


def _free_subnet() -> int:
    used = _ip("-4", "-o", "addr", "show", check=False).stdout
    for netns in _ip("netns", "list", check=False).stdout.split("\n"):
        name = netns.split(" ")[0]
        if name:
            used += _ip("-n", name, "-4", "-o", "addr", "show", check=False).stdout
    while True:
        x = 1 + secrets.randbelow(250)
        if f"198.19.{x}." not in used:
            return x


def new_prefix() -> str:
    return "psk" + secrets.token_hex(2)


@contextlib.contextmanager
def podnet(*names: str, prefix: str | None = None) -> Iterator[PodNet]:
    """A bridge with one pod per name (more with `PodNet.add_pod`); always removed."""
    prefix = prefix or new_prefix()
    net = PodNet(prefix, prefix + "br", _free_subnet())
    try:
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("link", "set", net.bridge, "up")
        for name in names:
            net.add_pod(name)
        yield net
    finally:
        net.close()


def named(name: str, *args: str) -> list[str]:
    """argv running ``python -m args...`` with the process named ``name`` (prctl PR_SET_NAME before the
    module starts, so every thread it makes inherits the name): the test knows which name process
    identity must report."""
    import sys

    return [sys.executable, str(Path(__file__).with_name("named.py")), name, *args]
