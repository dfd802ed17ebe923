"""Process identity for the connections of this node: which process sent a call, which answered it.

The worker sees packets; this module names the processes behind them. Two sources feed one index:

- A scan of every socket of every process, every `rescan_interval` (and, rate limited, when a
  lookup misses an address of this node). That finds listeners and long-lived sockets. With eBPF
  it is one pass of a socket iterator (conntrace.bpf.c's ``iter/task_file``: socket, owner pid,
  namespace, addresses); without, /proc: processes grouped by network namespace (/proc/PID/ns/net:
  every pod has its own), each namespace's socket tables read once (/proc/PID/net/{tcp,tcp6,udp,
  udp6}: inode, local and remote address, state), inodes mapped to pids through /proc/PID/fd.
  Each namespace's own addresses come from its fib_trie and if_inet6.
  Cost, 3000 processes in 100 namespaces with 15k sockets: ~0.1-0.2 s per scan with the iterator,
  ~0.6-1 s through /proc, where every namespace's tables walk the kernel's whole TCP hash table.
  Periodic scans are therefore spaced at least SCAN_DUTY times their own duration apart.
- eBPF events (`capture.ebpf.conntrace`, optional): the kernel reports each TCP connect, TCP listen
  and first UDP send with the process that did it, so a client that exits in milliseconds (curl)
  is named too. Without eBPF (no privileges, no BTF, old kernel) those clients show no process and
  `start()` says so in one line.

Lookups answer (client process, server process) for a call's addresses:

- client: the socket whose local end is the client and remote end the server (exact 4-tuple); else
  the socket bound to the client's address and port whatever its peer (the call was captured after
  a DNAT: the socket's peer is a Service IP); for UDP, else the unconnected socket sending from it.
- server: the socket whose local end is the server (the accepted one); else the accepted socket
  whose peer is the client (DNAT again); else the listener on the server's port: bound to the
  server's IP, or a wildcard (0.0.0.0, or :: which also serves IPv4) in a network namespace that
  owns the server's IP — never a same-port listener of another pod.

Calls are looked up when they complete, usually after the connection closed, so nothing is deleted
when a socket goes away: every entry lives `ttl` seconds after it was last seen, in a bounded LRU.

Cross-namespace collisions: two network namespaces can hold the same 4-tuple (two pods talking over
127.0.0.1, identical test namespaces). Each key keeps one entry per namespace; when two namespaces
seen in the latest scan disagree, the lookup answers None and counts it (`ambiguous`) rather than
guess. A stale entry (its socket gone) yields to a live one.

Socket ownership: a socket held by several processes (a listener shared by a master and its workers,
systemd socket activation) is attributed to the highest pid, usually the one doing the work.

Runs unprivileged in a degraded way: processes of other users are unreadable and skipped (counted).
In Kubernetes the worker needs hostPID to see the node's processes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

DRAIN_GAP = 0.002  # seconds between ring-buffer drains triggered by lookup misses
log = logging.getLogger("capture.procs")

DEFAULT_TTL = 600.0
DEFAULT_MAX_ENTRIES = 100_000
MISS_RESCAN_INTERVAL = 0.2  # a lookup miss rescans at most this often
CANDIDATES_PER_KEY = 4  # entries kept per key (one per network namespace)
SCAN_DUTY = 10  # periodic scans are at least SCAN_DUTY times their own duration apart
_TABLES = (("tcp", "tcp", False), ("tcp6", "tcp", True), ("udp", "udp", False), ("udp6", "udp", True))
_TCP_LISTEN = 0x0A
_WILDCARD_V4 = "0.0.0.0"
_WILDCARD_V6 = "::"
_V4_MAPPED_PREFIX = "::ffff:"
_CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class Proc:
    """A process on this node."""

    pid: int
    name: str  # /proc/PID/comm (the main thread's name), at most 15 characters
    container: str | None  # 64-hex container id from the process's cgroup, None outside containers


# --- container ids ------------------------------------------------------------------------------

# One cgroup path component that names a container. Formats (each runtime's documented layout):
#   docker, cgroupfs driver:        /docker/<id>
#   docker / podman, systemd:       /system.slice/docker-<id>.scope, /machine.slice/libpod-<id>.scope
#   kubelet + containerd, systemd:  /kubepods.slice/…/kubepods-pod<uid>.slice/cri-containerd-<id>.scope
#   kubelet + containerd, cgroupfs: /kubepods/burstable/pod<uid>/<id>
#   kubelet + CRI-O:                /kubepods.slice/…/crio-<id>.scope (conmon's crio-conmon-<id> is not it)
# Container ids are 64 hex digits in all of them; shorter hex names (session ids, pod uids) are not.
_CONTAINER_COMPONENT = re.compile(
    r"(?:docker-|cri-containerd-|crio-|libpod-|containerd-)?([0-9a-f]{64})(?:\.scope)?"
)


def container_id(cgroup: str) -> str | None:
    """The container id in /proc/PID/cgroup text, a cgroup path, or a cgroup's leaf name; else None.

    The cgroup v2 line (``0::/…``) is tried first, then the v1 lines; within a path the innermost
    component that names a container wins (a container nested in another is its own).
    """
    paths_v2: list[str] = []
    paths_v1: list[str] = []
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0].isdigit():
            (paths_v2 if parts[0] == "0" and parts[1] == "" else paths_v1).append(parts[2])
        elif line.strip():
            paths_v2.append(line.strip())
    for path in (*paths_v2, *paths_v1):
        for component in reversed(path.split("/")):
            match = _CONTAINER_COMPONENT.fullmatch(component)
            if match:
                return match.group(1)
    return None


# --- addresses ------------------------------------------------------------------------------------

_ip_cache: dict[str, str | None] = {}


def normalize_ip(text: str) -> str | None:
    """The canonical text of an IPv4 or IPv6 address (IPv4-mapped IPv6 as IPv4); None if not one."""
    cached = _ip_cache.get(text)
    if cached is not None or text in _ip_cache:
        return cached
    result: str | None
    try:
        result = socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        try:
            packed = socket.inet_pton(socket.AF_INET6, text)
        except (OSError, ValueError):
            result = None
        else:
            result = _ip6_text(packed)
    if len(_ip_cache) >= _CACHE_LIMIT:
        _ip_cache.clear()
    _ip_cache[text] = result
    return result


def _ip6_text(packed: bytes) -> str:
    if packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


_hex_cache: dict[str, str] = {}
_LITTLE = sys.byteorder == "little"


def _hex_ip(text: str) -> str:
    """An address as /proc/net/{tcp,udp}[6] print it: 32-bit words in host byte order, in hex."""
    cached = _hex_cache.get(text)
    if cached is not None:
        return cached
    raw = bytes.fromhex(text)
    if _LITTLE:
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        result = socket.inet_ntop(socket.AF_INET, raw)
    elif len(raw) == 16:
        result = _ip6_text(raw)
    else:
        raise ValueError(f"address of {len(raw)} bytes")
    if len(_hex_cache) >= _CACHE_LIMIT:
        _hex_cache.clear()
    _hex_cache[text] = result
    return result


@dataclass(frozen=True, slots=True)
class SocketEntry:
    """One row of a /proc/net socket table."""

    inode: int
    transport: str  # "tcp" | "udp"
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: int  # TCP state number (0x0A = LISTEN); for UDP 1 = connected, 7 = not


def parse_socket_table(text: str, transport: str) -> tuple[list[SocketEntry], int]:
    """The sockets of one /proc/net/{tcp,tcp6,udp,udp6} text, and how many lines were malformed.

    Sockets without an inode (TIME_WAIT, request sockets) belong to no process and are left out.
    """
    entries: list[SocketEntry] = []
    malformed = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            if fields:
                malformed += 1
            continue
        try:
            inode = int(fields[9])
            if inode == 0:
                continue
            lip, _, lport = fields[1].partition(":")
            rip, _, rport = fields[2].partition(":")
            entries.append(
                SocketEntry(
                    inode=inode,
                    transport=transport,
                    local_ip=_hex_ip(lip),
                    local_port=int(lport, 16),
                    remote_ip=_hex_ip(rip),
                    remote_port=int(rport, 16),
                    state=int(fields[3], 16),
                )
            )
        except (ValueError, OSError):
            malformed += 1
    return entries, malformed


def parse_fib_trie_locals(text: str) -> set[str]:
    """The IPv4 addresses local to a network namespace, from its /proc/net/fib_trie.

    A local address is a ``|-- A.B.C.D`` leaf followed by a ``/32 host LOCAL`` line.
    """
    found: set[str] = set()
    leaf: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            leaf = stripped[3:].strip()
        elif leaf is not None and stripped.startswith("/32 host LOCAL"):
            ip = normalize_ip(leaf)
            if ip is not None:
                found.add(ip)
    return found


def parse_if_inet6(text: str) -> set[str]:
    """The IPv6 addresses of a network namespace's interfaces, from /proc/net/if_inet6."""
    found: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(_ip6_text(bytes.fromhex(fields[0])))
            except ValueError:
                continue
    return found


def _read(path: str) -> str | None:
    """A /proc file's text, or None when it cannot be read (gone, not permitted)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


# --- the index ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    netns: int
    proc: Proc | None
    at: float  # time.monotonic() when last seen


class _Recent:
    """key -> what was last seen under it, one entry per network namespace; LRU-bounded, with a TTL."""

    def __init__(self, max_keys: int, ttl: float) -> None:
        self._items: collections.OrderedDict[Hashable, list[_Seen]] = collections.OrderedDict()
        self._max = max_keys
        self._ttl = ttl
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: Hashable, netns: int, proc: Proc | None, now: float) -> None:
        seen = self._items.get(key)
        if seen is None:
            self._items[key] = [_Seen(netns, proc, now)]
            if len(self._items) > self._max:
                self._items.popitem(last=False)
                self.evicted += 1
            return
        self._items.move_to_end(key)
        for entry in seen:
            if entry.netns == netns:
                entry.proc, entry.at = proc, now
                return
        seen.append(_Seen(netns, proc, now))
        if len(seen) > CANDIDATES_PER_KEY:
            seen.remove(min(seen, key=lambda s: s.at))

    def get(self, key: Hashable, now: float) -> list[_Seen]:
        seen = self._items.get(key)
        if not seen:
            return []
        fresh = [s for s in seen if now - s.at <= self._ttl]
        if not fresh:
            del self._items[key]
        return fresh

    def expire(self, now: float) -> None:
        """Drop keys not seen for `ttl` (the least recently put come first)."""
        while self._items:
            key, seen = next(iter(self._items.items()))
            if now - max(s.at for s in seen) <= self._ttl:
                return
            del self._items[key]


@dataclass(slots=True)
class _NetnsScan:
    """What one network namespace's scan found, applied to the index in one go."""

    netns: int
    addrs: set[str]
    sockets: list[tuple[SocketEntry, Proc | None]]
    unowned: int  # sockets whose process was not found (exited, unreadable, another pid namespace)


class ProcessIndex:
    """Names the client and server processes of connections on this node (see the module doc)."""

    def __init__(
        self,
        *,
        ebpf: bool = True,
        rescan_interval: float = 2.0,
        proc_root: str = "/proc",
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        miss_rescan_interval: float = MISS_RESCAN_INTERVAL,
    ) -> None:
        self._ebpf_wanted = ebpf
        self._interval = rescan_interval
        self._root = proc_root.rstrip("/") or "/"
        self._miss_interval = miss_rescan_interval
        self._conn = _Recent(max_entries, ttl)  # (t, lip, lport, rip, rport): sockets with a peer
        self._local = _Recent(max_entries, ttl)  # (t, lip, lport): client sockets, whatever the peer
        self._remote = _Recent(max_entries, ttl)  # (t, rip, rport): accepted sockets, by their peer
        self._bound = _Recent(max_entries, ttl)  # (t, ip or wildcard, port): listeners, unconnected UDP
        self._addrs = _Recent(max_entries, ttl)  # ip: the network namespaces that own it
        self._lock = threading.Lock()  # the indexes above and the counters
        self._scan_lock = threading.Lock()  # one scan at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tracer: Any = None
        self._last_drain = 0.0  # a miss drains the tracer's ring at most every DRAIN_GAP seconds
        self._ebpf_reason: str | None = None
        self._iterator_reason: str | None = None  # why the eBPF socket iterator is not used
        self._iterator_checked = False
        self._netns_addrs_known: set[int] = set()  # namespaces whose addresses the last scan read
        # scan state (touched only under _scan_lock)
        self._owner: dict[int, int] = {}  # socket inode -> pid holding it
        self._procs: dict[int, Proc] = {}  # pid -> Proc as of the last scan
        # counters
        self._live_since = 0.0  # start of the last full scan: entries seen since then are live
        self._last_scan_start = 0.0
        self._scans = 0
        self._miss_scans = 0
        self._scan_errors = 0
        self._last_scan_ms = 0.0
        self._full_scan_ms = 0.0
        self._max_scan_ms = 0.0
        self._unreadable = 0
        self._unowned = 0
        self._malformed = 0
        self._events = 0
        self._lookups = 0
        self._client_found = 0
        self._server_found = 0
        self._ambiguous = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Start the eBPF tracer (if asked) and the scanner; the first scan is done on return.

        Returns one-line warnings (eBPF unavailable, processes unreadable); never raises for them.
        """
        warnings: list[str] = []
        if self._thread is not None:
            return warnings
        if self._ebpf_wanted:
            reason = self._start_tracer()
            if reason:
                self._ebpf_reason = reason
                warnings.append(
                    f"process identity: eBPF connect tracer unavailable ({reason}); "
                    "short-lived clients will show no process"
                )
        self._scan()
        if self._unreadable:
            why = (
                "not root: run as root, with hostPID in Kubernetes"
                if os.geteuid() != 0
                else "no ptrace access to them: another user namespace or a security module"
            )
            warnings.append(
                f"process identity: {self._unreadable} processes unreadable ({why}); "
                "their connections will show no process"
            )
        self._thread = threading.Thread(target=self._run, name="procs-scan", daemon=True)
        self._thread.start()
        return warnings

    def _start_tracer(self) -> str | None:
        """Load the connect tracer; the reason it cannot run, or None when it runs."""
        try:
            from capture.ebpf.conntrace import ConnTracer
            from capture.ebpf.libbpf import BpfError
        except ImportError as exc:  # pragma: no cover - the package ships with capture
            return f"capture.ebpf missing: {exc}"
        tracer = ConnTracer(self._on_event)
        try:
            tracer.start()
        except (BpfError, OSError) as exc:
            return str(exc) or type(exc).__name__
        self._tracer = tracer
        return None

    def close(self) -> None:
        """Stop the scanner and unload the tracer. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        tracer, self._tracer = self._tracer, None
        if tracer is not None:
            tracer.close()

    def _run(self) -> None:
        while not self._stop.wait(self._next_scan_delay()):
            try:
                self._scan()
            except Exception:  # keep scanning: a bug in one scan must not end process identity
                self._scan_errors += 1
                log.exception("process identity: /proc scan failed")

    # --- eBPF events ----------------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        """A `ConnEvent` from the tracer (ring-buffer thread): file it like a /proc socket.

        A namespace not seen before (a pod that just started) gets its addresses read now, while the
        process is alive: a wildcard listener is matched to calls only through them.
        """
        proc = Proc(pid=event.tgid, name=event.comm, container=container_id(event.cgroup))
        t, now = event.transport, time.monotonic()
        addrs: set[str] = set()
        if event.netns not in self._netns_addrs_known:
            addrs = self._read_netns_addrs(event.tgid)
            if addrs:  # empty: the process is already gone; the next scan reads the namespace
                self._netns_addrs_known.add(event.netns)
        with self._lock:
            self._events += 1
            for ip in addrs:
                self._addrs.put(ip, event.netns, None, now)
            if event.kind == "tcp-connect" or (event.kind == "udp-send" and event.dst_port):
                ns, src, sport = event.netns, event.src_ip, event.src_port
                self._conn.put((t, src, sport, event.dst_ip, event.dst_port), ns, proc, now)
                self._local.put((t, src, sport), ns, proc, now)
                self._addrs.put(src, ns, None, now)
            else:  # a listener, or an unconnected UDP socket: bound to an address or a wildcard
                self._bound.put((t, event.src_ip, event.src_port), event.netns, proc, now)

    # --- lookups --------------------------------------------------------------------------------

    def lookup(
        self, transport: str, client_ip: str, client_port: int, server_ip: str, server_port: int
    ) -> tuple[Proc | None, Proc | None]:
        """(client process, server process) of a call; None for an end not on this node or unknown."""
        t = transport.lower()
        client = normalize_ip(client_ip)
        server = normalize_ip(server_ip)
        if t not in ("tcp", "udp") or client is None or server is None:
            return None, None
        asked = time.monotonic()
        with self._lock:
            self._lookups += 1
            found = self._find(t, client, client_port, server, server_port, asked)
        tracer = self._tracer
        if None in found and tracer is not None and asked - self._last_drain >= DRAIN_GAP:
            # (rate-limited: most misses are ends on other nodes, and a drain per call would cost a
            # fifth of the capture thread at 10k calls/s; the poller itself drains every 10 ms)
            self._last_drain = asked
            # the tracer's events of the last few milliseconds may hold it (a call that just ended)
            try:
                tracer.drain()
            except Exception as exc:  # a failing drain must not fail the lookup; the poller reports it
                log.debug("process identity: eBPF drain failed: %s", exc)
            # look again even when this drain found nothing: the poller thread may have taken the
            # event an instant before and delivered it while this drain waited for the ring's lock
            with self._lock:
                found = self._find(t, client, client_port, server, server_port, time.monotonic())
        with self._lock:
            missing = self._missing_local(found, client, server, asked)
        if missing and asked - self._last_scan_start >= self._miss_rescan_gap():
            self._rescan_for(missing, asked)
            with self._lock:
                found = self._find(t, client, client_port, server, server_port, time.monotonic())
        with self._lock:
            self._client_found += found[0] is not None
            self._server_found += found[1] is not None
        return found

    def _find(self, t: str, c: str, cp: int, s: str, sp: int, now: float) -> tuple[Proc | None, Proc | None]:
        client = self._pick(self._conn.get((t, c, cp, s, sp), now))
        if client is None:
            client = self._pick(self._local.get((t, c, cp), now))
        if client is None and t == "udp":
            client = self._find_bound(t, c, cp, now)
        server = self._pick(self._conn.get((t, s, sp, c, cp), now))
        if server is None:
            server = self._pick(self._remote.get((t, c, cp), now))
        if server is None:
            server = self._find_bound(t, s, sp, now)
        return client, server

    def _find_bound(self, t: str, ip: str, port: int, now: float) -> Proc | None:
        """The listener (or unconnected UDP socket) serving ip:port: bound to ip, else a wildcard in
        a namespace that owns ip (an IPv4 address is served by 0.0.0.0, else by a dual-stack ::)."""
        exact = self._pick(self._bound.get((t, ip, port), now))
        if exact is not None:
            return exact
        owners = {seen.netns for seen in self._addrs.get(ip, now)}
        if not owners:
            return None
        wildcards = (_WILDCARD_V4, _WILDCARD_V6) if ":" not in ip else (_WILDCARD_V6,)
        for wildcard in wildcards:
            candidates = [seen for seen in self._bound.get((t, wildcard, port), now) if seen.netns in owners]
            if candidates:
                return self._pick(candidates)
        return None

    def _pick(self, seen: list[_Seen]) -> Proc | None:
        """The process of a key: the newest entry, unless another namespace's live entry disagrees."""
        if not seen:
            return None
        if len(seen) == 1:
            return seen[0].proc
        newest = max(seen, key=lambda s: s.at)
        for other in seen:
            if other is not newest and other.at >= self._live_since and other.proc != newest.proc:
                self._ambiguous += 1
                return None
        return newest.proc

    def _missing_local(
        self, found: tuple[Proc | None, Proc | None], client: str, server: str, now: float
    ) -> set[int]:
        """The namespaces owning an address whose process was not found: a rescan may find it."""
        missing: set[int] = set()
        for proc, ip in zip(found, (client, server)):
            if proc is None:
                missing.update(seen.netns for seen in self._addrs.get(ip, now))
        return missing

    def _rescan_for(self, netns: set[int], asked: float) -> None:
        """Rescan the namespaces of a miss, unless a scan started since the lookup began (or recently)."""
        with self._scan_lock:
            if self._last_scan_start >= asked or asked - self._last_scan_start < self._miss_rescan_gap():
                return
            self._miss_scans += 1
            self._scan_locked(only=netns)

    # --- scanning -------------------------------------------------------------------------------

    def _scan(self) -> None:
        with self._scan_lock:
            self._scan_locked(only=None)

    def _scan_locked(self, only: set[int] | None) -> None:
        """Scan every namespace (only=None) or just `only` (the /proc backend's targeted rescan).

        The eBPF socket iterator, when the tracer runs, sees every namespace in one pass and is
        always a full scan; /proc is the fallback (and the only way without eBPF).
        """
        started = time.perf_counter()
        now = time.monotonic()
        self._last_scan_start = now
        results = self._scan_iterator() if self._iterator_usable() else None
        full = results is not None or only is None
        if results is None:
            results = self._scan_proc(only)
        self._netns_addrs_known = {result.netns for result in results} | (
            set() if full else self._netns_addrs_known
        )
        with self._lock:
            for result in results:
                self._apply(result, now)
            if full:
                self._live_since = now
                for index in (self._conn, self._local, self._remote, self._bound, self._addrs):
                    index.expire(now)
            self._scans += 1
        elapsed = (time.perf_counter() - started) * 1000
        self._last_scan_ms = elapsed
        self._max_scan_ms = max(self._max_scan_ms, elapsed)
        if full:
            self._full_scan_ms = elapsed
            self._unowned = sum(result.unowned for result in results)

    def _next_scan_delay(self) -> float:
        """`rescan_interval`, stretched so that scanning takes at most 1/SCAN_DUTY of the time.

        With the eBPF iterator a scan of a busy node takes tens of milliseconds; through /proc each
        namespace's socket tables walk the kernel's whole TCP hash table (about 3 ms per namespace
        on a 24 GB machine), so a node with a hundred pods needs the stretch.
        """
        return max(self._interval, self._full_scan_ms / 1000 * SCAN_DUTY)

    def _miss_rescan_gap(self) -> float:
        """Seconds between rescans caused by misses: `miss_rescan_interval`, or more when scans are
        costly (the same 1/SCAN_DUTY cap: misses of a busy node must not turn into a scan loop)."""
        return max(self._miss_interval, self._last_scan_ms / 1000 * SCAN_DUTY)

    # --- the eBPF iterator backend --------------------------------------------------------------

    def _iterator_usable(self) -> bool:
        return self._tracer is not None and self._iterator_reason is None

    def _scan_iterator(self) -> list[_NetnsScan] | None:
        """One pass of the tracer's socket iterator; None (and the iterator disabled) if it fails."""
        from capture.ebpf.libbpf import BpfError

        with contextlib.ExitStack() as stack:
            probe_inode = None
            if not self._iterator_checked:  # a socket of ours, to check the pids the iterator reports
                probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                probe_inode = os.fstat(probe.fileno()).st_ino
            try:
                records, malformed = self._tracer.sockets()
            except BpfError as exc:
                self._iterator_reason = str(exc)
                log.warning("process identity: eBPF socket iterator failed (%s); scanning /proc instead", exc)
                return None
        self._malformed += malformed
        if probe_inode is not None:
            # the iterator reports pids as the kernel's initial pid namespace numbers them; they are
            # ours only if we live there (hostPID in Kubernetes): check on our own probe socket
            mine = [r.tgid for r in records if r.inode == probe_inode]
            if mine != [os.getpid()]:
                self._iterator_reason = (
                    f"its pids are not ours (our probe socket showed pid {mine or 'none'}, we are "
                    f"{os.getpid()}): another pid namespace"
                )
                log.warning("process identity: eBPF socket iterator unusable: %s", self._iterator_reason)
                return None
            self._iterator_checked = True
        owner: dict[int, tuple[int, str]] = {}
        by_netns: dict[int, dict[int, SocketEntry]] = {}
        reader: dict[int, int] = {}
        for r in records:
            held = owner.get(r.inode)
            if held is None or r.tgid > held[0]:
                owner[r.inode] = (r.tgid, r.comm)
            sockets = by_netns.get(r.netns)
            if sockets is None:
                sockets = by_netns[r.netns] = {}
                reader[r.netns] = r.tgid
            if r.inode not in sockets:
                sockets[r.inode] = SocketEntry(
                    r.inode, r.transport, r.local_ip, r.local_port, r.remote_ip, r.remote_port, r.state
                )
        procs: dict[int, Proc] = {}
        for tgid, comm in owner.values():
            if tgid not in procs:
                procs[tgid] = self._proc_named(tgid, comm)
        self._procs = procs
        results = []
        for netns, sockets in by_netns.items():
            addrs = self._read_netns_addrs(reader[netns])
            entries: list[tuple[SocketEntry, Proc | None]] = [
                (entry, procs[owner[inode][0]]) for inode, entry in sockets.items()
            ]
            results.append(_NetnsScan(netns=netns, addrs=addrs, sockets=entries, unowned=0))
        self._unreadable = 0
        return results

    def _read_netns_addrs(self, pid: int) -> set[str]:
        """The addresses of the network namespace `pid` lives in (IPv4 local routes, IPv6 addresses)."""
        base = f"{self._root}/{pid}/net"
        return parse_fib_trie_locals(_read(f"{base}/fib_trie") or "") | parse_if_inet6(
            _read(f"{base}/if_inet6") or ""
        )

    def _proc_named(self, pid: int, name: str) -> Proc:
        """The process `pid` called `name`; its container is read once per (pid, name)."""
        known = self._procs.get(pid)
        if known is not None and known.name == name:
            return known
        return Proc(pid=pid, name=name, container=container_id(_read(f"{self._root}/{pid}/cgroup") or ""))

    # --- the /proc backend ----------------------------------------------------------------------

    def _scan_proc(self, only: set[int] | None) -> list[_NetnsScan]:
        """Every namespace, or those in `only`; the pids are always listed afresh (a process that
        started since the last scan holds the socket a miss is looking for)."""
        groups, alive = self._group_by_netns()
        if only is not None:
            groups = {ns: pids for ns, pids in groups.items() if ns in only}
        results = [self._scan_netns(ns, pids, alive) for ns, pids in groups.items()]
        if only is None:
            live = {entry.inode for result in results for entry, _ in result.sockets}
            self._owner = {inode: pid for inode, pid in self._owner.items() if inode in live}
        return results

    def _group_by_netns(self) -> tuple[dict[int, list[int]], set[int]]:
        """Readable pids grouped by network namespace inode, in ascending pid order; and all pids."""
        groups: dict[int, list[int]] = {}
        alive: set[int] = set()
        unreadable = 0
        try:
            names = os.listdir(self._root)
        except OSError as exc:
            log.warning("process identity: cannot list %s: %s", self._root, exc)
            names = []
        for pid in sorted(int(n) for n in names if n.isdigit()):
            alive.add(pid)
            try:
                link = os.readlink(f"{self._root}/{pid}/ns/net")
            except PermissionError:
                unreadable += 1
                continue
            except OSError:  # exited meanwhile, or a kernel thread without one
                continue
            netns = _netns_inode(link)
            if netns is not None:
                groups.setdefault(netns, []).append(pid)
        self._unreadable = unreadable
        self._procs = {pid: proc for pid, proc in self._procs.items() if pid in alive}
        return groups, alive

    def _scan_netns(self, netns: int, pids: list[int], alive: set[int]) -> _NetnsScan:
        """Sockets of one namespace with their owners; walks /proc/PID/fd only for unknown inodes."""
        entries: list[SocketEntry] = []
        addrs: set[str] = set()
        for pid in pids:
            base = f"{self._root}/{pid}/net"
            tables = [(_read(f"{base}/{name}"), transport) for name, transport, _v6 in _TABLES]
            if all(text is None for text, _ in tables):
                continue  # exited, or not permitted: try the namespace's next process
            for text, transport in tables:
                if text is not None:
                    found, bad = parse_socket_table(text, transport)
                    entries.extend(found)
                    self._malformed += bad
            addrs = self._read_netns_addrs(pid)
            break
        # inode -> owner survives between scans; walk the fds only when an inode is new or its owner
        # has exited
        if any((owner := self._owner.get(e.inode)) is None or owner not in alive for e in entries):
            self._walk_fds(pids, {e.inode for e in entries})
        sockets: list[tuple[SocketEntry, Proc | None]] = []
        unowned = 0
        for entry in entries:
            holder = self._owner.get(entry.inode)
            proc = self._proc(holder) if holder is not None else None
            unowned += proc is None
            sockets.append((entry, proc))
        return _NetnsScan(netns=netns, addrs=addrs, sockets=sockets, unowned=unowned)

    def _walk_fds(self, pids: Iterable[int], wanted: set[int]) -> None:
        """Map socket inodes in `wanted` to the pids holding them (the highest pid wins)."""
        for pid in pids:
            path = f"{self._root}/{pid}/fd"
            try:
                dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                names = os.listdir(dir_fd)
                for name in names:
                    try:
                        target = os.readlink(name, dir_fd=dir_fd)
                    except OSError:
                        continue
                    if target.startswith("socket:[") and target.endswith("]") and target[8:-1].isdigit():
                        inode = int(target[8:-1])
                        if inode in wanted:
                            self._owner[inode] = pid
            except OSError:
                continue
            finally:
                os.close(dir_fd)

    def _proc(self, pid: int) -> Proc | None:
        """The process `pid` (name re-read each scan: exec changes it; container read once)."""
        name = _read(f"{self._root}/{pid}/comm")
        if name is None:
            return self._procs.get(pid)
        proc = self._proc_named(pid, name.strip())
        self._procs[pid] = proc
        return proc

    def _apply(self, result: _NetnsScan, now: float) -> None:
        """File one namespace's sockets into the indexes (caller holds _lock)."""
        ns = result.netns
        for ip in result.addrs:
            self._addrs.put(ip, ns, None, now)
        listening: set[tuple[str, str, int]] = set()
        for entry, _proc in result.sockets:
            if entry.transport == "tcp" and entry.state == _TCP_LISTEN:
                listening.add(("tcp", entry.local_ip, entry.local_port))
        for entry, proc in result.sockets:
            if proc is None:
                continue  # owner unknown: filing it would only hide what eBPF or an earlier scan knew
            t = entry.transport
            if (t == "tcp" and entry.state == _TCP_LISTEN) or (t == "udp" and entry.remote_port == 0):
                self._bound.put((t, entry.local_ip, entry.local_port), ns, proc, now)
                continue
            if entry.remote_port == 0:
                continue  # a TCP socket bound or closed, not connected: no peer to index by
            peer = (entry.remote_ip, entry.remote_port)
            self._conn.put((t, entry.local_ip, entry.local_port, *peer), ns, proc, now)
            if (
                (t, entry.local_ip, entry.local_port) in listening
                or (t, _WILDCARD_V4, entry.local_port) in listening
                or (t, _WILDCARD_V6, entry.local_port) in listening
            ):
                self._remote.put((t, entry.remote_ip, entry.remote_port), ns, proc, now)
            else:
                self._local.put((t, entry.local_ip, entry.local_port), ns, proc, now)

    # --- introspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for `podshark doctor` and the worker's stats message."""
        tracer = self._tracer
        out: dict[str, Any] = {
            "ebpf": tracer is not None,
            "ebpf_reason": self._ebpf_reason,
            "ebpf_load_ms": getattr(tracer, "load_ms", None),
            "scan_source": "ebpf-iterator" if self._iterator_usable() else "proc",
            "iterator_reason": self._iterator_reason,
            "events": self._events,
            "lost": 0,
            "scans": self._scans,
            "miss_scans": self._miss_scans,
            "scan_errors": self._scan_errors,
            "last_scan_ms": round(self._last_scan_ms, 2),
            "max_scan_ms": round(self._max_scan_ms, 2),
            "unreadable_processes": self._unreadable,
            "unowned_sockets": self._unowned,
            "malformed_lines": self._malformed,
            "lookups": self._lookups,
            "client_found": self._client_found,
            "server_found": self._server_found,
            "ambiguous": self._ambiguous,
        }
        with self._lock:
            out["sockets_known"] = len(self._conn)
            out["listeners_known"] = len(self._bound)
            out["evicted"] = sum(i.evicted for i in (self._conn, self._local, self._remote, self._bound))
        if tracer is not None:
            counters = tracer.counters()
            out["lost"] = counters.get("lost", 0)
            out["ebpf_counters"] = counters
        return out


def _netns_inode(link: str) -> int | None:
    """``net:[4026531840]`` -> 4026531840."""
    if link.startswith("net:[") and link.endswith("]"):
        try:
            return int(link[5:-1])
        except ValueError:
            return None
    return None
