"""The user-space half of ``conntrace.bpf.c``: load it, decode its events, read its counters.

`ConnTracer` loads the object with `capture.ebpf.libbpf`, attaches its two raw tracepoints and
hands every event, decoded into a `ConnEvent`, to a callback on the ring buffer's polling thread.
What the events cover (and do not) is described at the top of ``conntrace.bpf.c``; in short:
TCP connects (client), TCP listens (server), the first UDP send of a (socket, process,
destination) — each with the process id, its name and its cgroup's leaf name, taken while the
process still existed.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from capture.ebpf.libbpf import BpfError, BpfObject

OBJECT_PATH = Path(__file__).with_name("conntrace.bpf.o")

#: struct conn_event in conntrace.bpf.c (208 bytes with its tail padding; 204 carry data)
EVENT = struct.Struct("<QIIIHBBHH16s16s16s128s")
EVENT_SIZE = 208

#: struct socket_record in conntrace.bpf.c: one socket held by one process, from the iterator
SOCKET = struct.Struct("<QIIHBBHH16s16s16s")
SOCKETS_PROGRAM = "conntrace_sockets"

AF_INET, AF_INET6 = 2, 10
KINDS = {1: "tcp-connect", 2: "tcp-listen", 3: "udp-send"}
TRANSPORTS = {6: "tcp", 17: "udp"}
COUNTERS = ("lost", "events", "unmatched", "read_errors")  # counters[] indices in conntrace.bpf.c

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def ip_text(family: int, packed: bytes) -> str | None:
    """The canonical text of an address (IPv4-mapped IPv6 as plain IPv4), None for other families."""
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, packed[:4])
    if family == AF_INET6:
        if packed[:12] == _V4_MAPPED:
            return socket.inet_ntop(socket.AF_INET, packed[12:16])
        return socket.inet_ntop(socket.AF_INET6, packed[:16])
    return None


@dataclass(frozen=True, slots=True)
class ConnEvent:
    """One socket event from the kernel: who (process) did what (kind) on which socket (addresses)."""

    kind: str  # "tcp-connect" | "tcp-listen" | "udp-send"
    transport: str  # "tcp" | "udp"
    tgid: int  # process id
    tid: int  # thread id
    comm: str  # the process's name (its main thread's comm)
    cgroup: str  # leaf name of its cgroup ("cri-containerd-<id>.scope", "<id>", …)
    netns: int  # network namespace inode (as /proc/PID/ns/net)
    src_ip: str
    src_port: int
    dst_ip: str  # "0.0.0.0" / "::" when not connected (a listener, an unconnected UDP socket)
    dst_port: int
    ts_ns: int  # CLOCK_MONOTONIC, from the kernel


class SocketRecord(NamedTuple):
    """A TCP or UDP socket held by a process (a socket shared by several processes comes once each)."""

    inode: int
    tgid: int
    netns: int
    transport: str
    state: int  # TCP state (10 = LISTEN); UDP: 1 connected, 7 not
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    comm: str


def decode_sockets(data: bytes) -> tuple[list[SocketRecord], int]:
    """The iterator's output as records, and how many records were malformed (a cut tail counts)."""
    usable = len(data) - len(data) % SOCKET.size
    malformed = 1 if usable != len(data) else 0
    records: list[SocketRecord] = []
    ips: dict[tuple[int, bytes], str | None] = {}
    names: dict[bytes, str] = {}
    for inode, tgid, netns, family, proto, state, sport, dport, saddr, daddr, comm in SOCKET.iter_unpack(
        memoryview(data)[:usable]
    ):
        transport = TRANSPORTS.get(proto)
        src = ips.get((family, saddr))
        if src is None:
            src = ips[(family, saddr)] = ip_text(family, saddr)
        dst = ips.get((family, daddr))
        if dst is None:
            dst = ips[(family, daddr)] = ip_text(family, daddr)
        if transport is None or src is None or dst is None:
            malformed += 1
            continue
        name = names.get(comm)
        if name is None:
            name = names[comm] = _cstr(comm)
        records.append(SocketRecord(inode, tgid, netns, transport, state, src, sport, dst, dport, name))
    return records, malformed


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_event(data: bytes) -> ConnEvent | None:
    """A ring-buffer sample as a `ConnEvent`; None when it is not a well-formed event."""
    if len(data) < EVENT.size:
        return None
    (ts, tgid, tid, netns, family, proto, kind, sport, dport, saddr, daddr, comm, cgroup) = EVENT.unpack_from(
        data
    )
    kind_name = KINDS.get(kind)
    transport = TRANSPORTS.get(proto)
    src = ip_text(family, saddr)
    dst = ip_text(family, daddr)
    if kind_name is None or transport is None or src is None or dst is None:
        return None
    return ConnEvent(
        kind=kind_name,
        transport=transport,
        tgid=tgid,
        tid=tid,
        comm=_cstr(comm),
        cgroup=_cstr(cgroup),
        netns=netns,
        src_ip=src,
        src_port=sport,
        dst_ip=dst,
        dst_port=dport,
        ts_ns=ts,
    )


class ConnTracer:
    """conntrace.bpf.o loaded and attached; events go to `on_event` on the polling thread.

    `start()` raises `BpfError` (one-line reason) when the tracer cannot run here; the caller
    decides whether that is fatal (for process identity it is not: /proc still works).
    `udp=False` leaves the sendmsg hook out: it runs on every sendmsg on the node (returning at
    once for non-UDP sockets), which a node that does not care about UDP clients can spare.
    """

    def __init__(
        self,
        on_event: Callable[[ConnEvent], None],
        *,
        udp: bool = True,
        object_path: Path = OBJECT_PATH,
    ) -> None:
        self._on_event = on_event
        self._udp = udp
        self._path = object_path
        self._obj: BpfObject | None = None
        self._lock = threading.Lock()
        self.received = 0
        self.malformed = 0
        self.load_ms: float | None = None

    def start(self) -> None:
        """Open, load, attach and start polling; on failure nothing stays loaded."""
        started = time.perf_counter()
        obj = BpfObject(self._path)
        try:
            if not self._udp:
                obj.program("conntrace_send").set_autoload(False)
            obj.load()
            obj.attach_all()
            ring = obj.ring_buffer("events", self._on_sample)
            ring.start(thread_name="conntrace-ringbuf")
        except BaseException:
            obj.close()
            raise
        self.load_ms = (time.perf_counter() - started) * 1000
        with self._lock:
            self._obj = obj

    def _on_sample(self, data: bytes) -> None:
        event = decode_event(data)
        if event is None:
            self.malformed += 1
            return
        self.received += 1
        self._on_event(event)

    @property
    def running(self) -> bool:
        return self._obj is not None

    def drain(self) -> int:
        """Deliver the events the kernel has recorded so far, on the calling thread (the poller
        collects them every few milliseconds; a caller that cannot wait drains); returns how many."""
        with self._lock:
            obj = self._obj
        if obj is None:
            return 0
        return sum(ring.drain() for ring in obj.ring_buffers)

    def sockets(self) -> tuple[list[SocketRecord], int]:
        """Every TCP/UDP socket of every process now (one iterator pass), and the malformed count.

        Raises `BpfError` when the tracer is not running or the iterator fails.
        """
        with self._lock:
            obj = self._obj
            if obj is None:
                raise BpfError("conntrace is not running")
            link = obj.link(SOCKETS_PROGRAM)
        return decode_sockets(link.read_iter())

    def counters(self) -> dict[str, int]:
        """Kernel-side counters (``lost`` = ring buffer full) and what user space received."""
        out = {"received": self.received, "malformed": self.malformed}
        with self._lock:
            obj = self._obj
            if obj is None:
                return out
            try:
                counters = obj.map("counters")
                for index, name in enumerate(COUNTERS):
                    out[name] = counters.lookup_u64(index)
            except BpfError:
                out["counter_read_errors"] = 1
            out["callback_errors"] = sum(r.callback_errors for r in obj.ring_buffers)
        return out

    def last_callback_error(self) -> str | None:
        with self._lock:
            obj = self._obj
            if obj is None:
                return None
            errors = [r.last_error for r in obj.ring_buffers if r.last_error]
        return errors[-1] if errors else None

    def close(self) -> None:
        """Stop polling and unload (detaches the tracepoints). Safe to call twice."""
        with self._lock:
            obj, self._obj = self._obj, None
        if obj is not None:
            obj.close()
