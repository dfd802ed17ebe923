"""The demo's network: one namespace per service, veths to a bridge in the root namespace — and its removal.

Shape (like a Kubernetes node with a bridge CNI)::

    [ns psd1a2b-frontend] eth0 ==veth== psd1a2b-front --+
    [ns psd1a2b-api]      eth0 ==veth== psd1a2b-api   --+-- bridge psd1a2b-br (root namespace, no address)
    ...                                                  |

Pods talk to each other through the bridge, so every packet between two pods crosses the root
namespace, where the worker captures the host ends of the veths (each packet is seen twice there,
once per veth, which the worker's dedupe folds) or the bridge itself (once, in promiscuous mode).

What is touched in the root namespace: the bridge and the host ends of the veths this run created,
nothing else — no address, no route, no sysctl, no firewall rule. IPv6 address generation and
multicast are off on every demo interface (``addrgenmode none``, ``multicast off``), so the
captures carry no router solicitations, IGMP or MLD reports: only the workload (and ARP).

Ownership and crash safety: before creating anything, a run writes
``/run/podshark-demo/<prefix>.json`` with its pid and that process's start time (so a recycled pid
is not mistaken for the owner). `cleanup_stale` removes every ``psd*`` namespace and link whose owner
is gone — the leftovers of a demo that was SIGKILLed — after killing the processes still inside
those namespaces. Prefix and subnet are chosen under a lock on that directory, so concurrent demos
never share either.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from podshark.demo.topology import BENCH_NET, PREFIX_RE, Topology

STATE_DIR = Path("/run/podshark-demo")
NAME_RE = re.compile(r"^(psd[0-9a-f]{4})-")
IP_TIMEOUT = 20.0


class NetError(RuntimeError):
    """A step of building or removing the demo network failed; the text names the command and why."""


def ip_binary() -> str | None:
    found = shutil.which("ip")
    return found or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; NetError with ip's own message when it fails and `check` is set."""
    binary = ip_binary()
    if binary is None:
        raise NetError("iproute2 is not installed (apt-get install iproute2)")
    try:
        res = subprocess.run([binary, *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise NetError(f"`ip {' '.join(args)}` did not finish within {IP_TIMEOUT:g}s") from e
    if check and res.returncode != 0:
        raise NetError(f"`ip {' '.join(args)}` failed: {res.stderr.strip() or f'exit {res.returncode}'}")
    return res


def list_netns() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    res = ip("netns", "list", check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def list_links(netns: str | None = None) -> list[str]:
    """Interface names in the root namespace (or in `netns`), without the ``@peer`` suffix."""
    args = ["-n", netns] if netns else []
    res = ip(*args, "-o", "link", "show", check=False)
    names = []
    for line in res.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def netns_pids(ns: str) -> list[int]:
    res = ip("netns", "pids", ns, check=False)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def owner_alive(state: dict[str, Any]) -> bool:
    """True while the process that wrote `state` still runs (same pid AND same start time)."""
    pid, start = state.get("pid"), state.get("start")
    if not isinstance(pid, int) or pid <= 0:
        return False
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


def read_state(prefix: str) -> dict[str, Any] | None:
    try:
        state = json.loads((STATE_DIR / f"{prefix}.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    STATE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _used_subnets(namespaces: Sequence[str]) -> set[ipaddress.IPv4Network]:
    """The /24s of 198.18.0.0/15 that addresses here (root and every named namespace) or live demos use."""
    used: set[ipaddress.IPv4Network] = set()
    for ns in [None, *namespaces]:
        args = ["-n", ns] if ns else []
        res = ip(*args, "-4", "-o", "addr", "show", check=False)
        for m in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+)/", res.stdout):
            addr = ipaddress.IPv4Address(m.group(1))
            if addr in BENCH_NET:
                used.add(ipaddress.IPv4Network(f"{addr}/24", strict=False))
    for path in STATE_DIR.glob("psd*.json"):
        state = read_state(path.stem) or {}
        with contextlib.suppress(ValueError, TypeError):
            used.add(ipaddress.IPv4Network(state.get("subnet", "")))
    return used


def _choose(namespaces: list[str], links: list[str]) -> tuple[str, str]:
    """A prefix no namespace, link or state file uses, and a free /24 of 198.18.0.0/15."""
    taken = {m.group(1) for n in namespaces + links if (m := NAME_RE.match(n))}
    taken |= {p.stem for p in STATE_DIR.glob("psd*.json")}
    for _ in range(1000):
        prefix = "psd" + secrets.token_hex(2)
        if prefix not in taken:
            break
    else:
        raise NetError("no free demo name prefix (psd + 4 hex): run `python -m podshark.demo --cleanup`")
    used = _used_subnets(namespaces)
    free = [n for n in BENCH_NET.subnets(new_prefix=24) if n not in used]
    if not free:
        raise NetError("every /24 of 198.18.0.0/15 is in use on this machine: no room for the demo network")
    return prefix, str(free[secrets.randbelow(len(free))])


class Network:
    """One run's namespaces, veths and bridge. `create` then `teardown` (idempotent, also after failure)."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.state_path = STATE_DIR / f"{topology.prefix}.json"

    @classmethod
    def allocate(cls, build: Any = Topology.build) -> Network:
        """Choose a free prefix and subnet and claim them (state file with our pid) under the lock.

        Nothing exists yet but the claim; `create` builds. `build(prefix, subnet)` makes the topology.
        """
        with _state_lock():
            prefix, subnet = _choose(list_netns(), list_links())
            net = cls(build(prefix, subnet))
            net._write_state()
        return net

    def _write_state(self, **extra: object) -> None:
        state = {
            "pid": os.getpid(),
            "start": _start_time(os.getpid()),
            "prefix": self.topology.prefix,
            "subnet": self.topology.subnet,
            "created": time.time(),
            **extra,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.rename(self.state_path)

    def note_workdir(self, workdir: Path) -> None:
        """Record a scratch directory the demo made, so `cleanup_stale` removes it after a crash too."""
        self._write_state(workdir=str(workdir))

    def create(self) -> None:
        """Bridge, then per service: namespace, veth (host end on the bridge), address, links up."""
        t = self.topology
        try:
            ip("link", "add", t.bridge, "type", "bridge")
        except NetError as e:
            raise NetError(f"{e} (is the bridge kernel module available? try `modprobe bridge`)") from e
        ip("link", "set", t.bridge, "addrgenmode", "none", check=False)
        ip("link", "set", t.bridge, "multicast", "off")
        # without snooping the bridge joins no multicast-router-discovery group: no IGMP/MLD reports
        ip("link", "set", t.bridge, "type", "bridge", "mcast_snooping", "0", check=False)
        ip("link", "set", t.bridge, "up")
        for s in t.services:
            ip("netns", "add", s.namespace)
            ip("link", "add", s.host_if, "type", "veth", "peer", "name", s.pod_if, "netns", s.namespace)
            ip("link", "set", s.host_if, "addrgenmode", "none", check=False)
            ip("link", "set", s.host_if, "multicast", "off")
            ip("link", "set", s.host_if, "master", t.bridge)
            ip("link", "set", s.host_if, "up")
            ip("-n", s.namespace, "link", "set", s.pod_if, "addrgenmode", "none", check=False)
            ip("-n", s.namespace, "link", "set", s.pod_if, "multicast", "off")
            ip("-n", s.namespace, "addr", "add", f"{s.ip}/24", "dev", s.pod_if)
            ip("-n", s.namespace, "link", "set", s.pod_if, "up")
            ip("-n", s.namespace, "link", "set", "lo", "up")

    def exec_args(self, namespace: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `namespace` (``ip netns exec`` execs it: the pid is the program's own)."""
        binary = ip_binary()
        if binary is None:
            raise NetError("iproute2 is not installed (apt-get install iproute2)")
        return [binary, "netns", "exec", namespace, *argv]

    def teardown(self) -> list[str]:
        """Remove everything of this run; returns what was removed. Safe to call more than once."""
        return teardown_prefix(self.topology.prefix)


def teardown_prefix(prefix: str) -> list[str]:
    """Remove every namespace and root-namespace link named ``<prefix>-*`` and the prefix's state file.

    Processes still inside those namespaces are SIGKILLed first (they are the demo's own services: a
    namespace keeps existing, and keeps its veth, while anything runs in it). The scratch directory
    recorded in the state file (`Network.note_workdir`) goes too.
    """
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"not a demo prefix: {prefix!r}")
    removed: list[str] = []
    namespaces = [n for n in list_netns() if n.startswith(prefix + "-")]
    for ns in namespaces:
        for pid in netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                removed.append(f"process {pid} in {ns}")
    for ns in namespaces:
        res = ip("netns", "del", ns, check=False)
        if res.returncode == 0:
            removed.append(f"namespace {ns}")
    # a veth dies with its pod end's namespace, but that happens asynchronously: delete what is left,
    # host ends first and the bridge last
    links = sorted((n for n in list_links() if n.startswith(prefix + "-")), key=lambda n: n.endswith("-br"))
    for link in links:
        res = ip("link", "del", link, check=False)
        if res.returncode == 0 or "Cannot find device" in res.stderr:
            removed.append(f"link {link}")
    workdir = (read_state(prefix) or {}).get("workdir")
    # only a directory the demo itself made (its name says so): a damaged state file deletes nothing else
    ours = isinstance(workdir, str) and Path(workdir).name.startswith(f"podshark-demo-{prefix}-")
    if ours and Path(str(workdir)).is_dir():
        shutil.rmtree(str(workdir), ignore_errors=True)
        removed.append(f"directory {workdir}")
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"{prefix}.json").unlink()
        removed.append(f"state {prefix}.json")
    return removed


def leftovers(prefix: str) -> list[str]:
    """Namespaces and links of `prefix` that still exist (empty after a clean teardown)."""
    return [f"namespace {n}" for n in list_netns() if n.startswith(prefix + "-")] + [
        f"link {n}" for n in list_links() if n.startswith(prefix + "-")
    ]


def cleanup_stale() -> list[str]:
    """Remove the namespaces, links and state of every demo whose owning process is gone.

    A prefix with live owner is left alone, as is one whose state file is not there yet to be read
    (a run writes it, under the lock, before creating anything, so a namespace without a state
    file belongs to a dead run — or to a run that is being torn down right now, which removes it
    anyway). Returns one line per thing removed.
    """
    if not STATE_DIR.exists() and not any(NAME_RE.match(n) for n in list_netns() + list_links()):
        return []
    removed: list[str] = []
    with _state_lock():
        prefixes = {m.group(1) for n in list_netns() + list_links() if (m := NAME_RE.match(n))}
        prefixes |= {p.stem for p in STATE_DIR.glob("psd*.json") if PREFIX_RE.match(p.stem)}
        for prefix in sorted(prefixes):
            state = read_state(prefix)
            if state is not None and owner_alive(state):
                continue
            removed += teardown_prefix(prefix)
    return removed
