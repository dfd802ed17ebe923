"""The user-space half of ``tlstrace.bpf.c``: TLS plaintext from OpenSSL, per process and connection.

Why uprobes on libssl: on the wire a TLS connection is opaque, and keys are not ours to take. The
plaintext exists, briefly, in the buffer a process hands to ``SSL_write`` or gets back from
``SSL_read``; a uprobe on those functions reads it there, in every process that maps the library,
without changing the process, restarting it or proxying it.

Why this shape:

- Attached per library *file* (`TlsTracer.attach`), not per process: a uprobe belongs to an inode,
  so one attachment of ``/proc/PID/root/usr/lib/x86_64-linux-gnu/libssl.so.3`` covers every process,
  started before or after, that maps that same file (a container image's copy is a different file;
  the caller attaches each distinct one it finds, and attaching a file twice is a no-op).
- Pulled, not pushed (`TlsTracer.drain`): the worker's capture thread drains the ring buffer at
  every step, on its own thread, so plaintext and packets are handled in one place, in order. The
  kernel never waits for us: when the ring is full records are dropped and counted (``drops``),
  and every record says where its bytes sit in the connection's stream (`TlsData.stream_offset`),
  so a consumer sees the exact size of every hole.
- Times are converted to wall-clock nanoseconds (CLOCK_REALTIME, what AF_PACKET stamps packets
  with): the kernel stamps records with CLOCK_MONOTONIC and we add realtime - monotonic, measured
  here and refreshed every second (so an NTP step shows up within a second).
- The connection 4-tuple is learnt in the kernel (SSL_set_fd, or the socket I/O the SSL call does
  while it runs) and sent with every record, as seen from the traced process (its network namespace
  is in `TlsData.netns`): ``local`` is the process's end. `TlsData.role` says whether the process
  was the TLS client or the server, when the handshake was seen.

What is not covered (and why) is listed at the top of ``tlstrace.bpf.c``: statically linked TLS
(Go, BoringSSL in Envoy), kTLS sendfile, memory BIOs (their calls come without a 4-tuple, counted
in ``no_tuple``), TLS libraries other than OpenSSL.

Cost, measured on the development VM (Firecracker, kernel 6.18, 2 vCPUs): open+load ~25 ms, attach
to one libssl ~20 ms. Each traced SSL call costs ~16-17 us, almost all of it the kernel's uprobe
breakpoint: the probed first instruction is single-stepped, and that trap is what is slow in a VM
(a probe on an instruction the kernel emulates instead costs 0.55 us here); our programs themselves
take 0.2-0.4 us per entry/return and ~0.08 us per socket hook. So a tight HTTPS request loop
(Python client, nginx, both traced: ~5 SSL calls per request) drops from ~51k to ~7k requests/s
here; the cost is per call, not per byte. `drain` decodes ~165-195k small events/s, ~500-880 MB/s
of 16 KiB chunks.

Failures: constructing `TlsTracer` raises `BpfError` with one line saying why and what to do (not
root, no BTF, libbpf missing, a kernel that refuses a program type); `attach` returns such a line
instead of raising, so a caller can go on with the files that did attach.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from capture.ebpf.conntrace import ip_text
from capture.ebpf.libbpf import BpfError, BpfObject, Link, RingBuffer

log = logging.getLogger("capture.ebpf")

OBJECT_PATH = Path(__file__).with_name("tlstrace.bpf.o")

#: struct tls_event in tlstrace.bpf.c (120 bytes), followed by data_len bytes of plaintext
HEADER = struct.Struct("<QQQQQIIIIIHHHBBB3x16s16s16s")
KIND_DATA, KIND_CLOSE, KIND_SNI = 1, 2, 3
DIRECTION_WRITE, DIRECTION_READ = 0, 1  # the traced process wrote / read the bytes
ROLE_UNKNOWN, ROLE_CLIENT, ROLE_SERVER = 0, 1, 2
AF_INET, AF_INET6 = 2, 10

#: counters[] indices in tlstrace.bpf.c
COUNTERS = ("events", "drops", "read_errors", "truncated", "no_tuple", "calls", "closes")

CHUNK = 16384  # data bytes per record (CHUNK in tlstrace.bpf.c)
MAX_CALL_BYTES = 1 << 20  # ceiling of max_call_bytes (MAX_CALL_BYTES in tlstrace.bpf.c)
DEFAULT_MAX_CALL_BYTES = 256 << 10
DEFAULT_RING_BYTES = 32 << 20  # ~0.15 s of plaintext at 200 MB/s (bench tls_trace)
DEFAULT_DRAIN_MAX = 65536  # events per drain(): ~0.4 s of decoding on a 2-vCPU VM
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

#: (libssl symbol, entry program, return program or None, required for the file to count as libssl)
PROBES: tuple[tuple[str, str, str | None, bool], ...] = (
    ("SSL_read", "tls_read_enter", "tls_read_leave", True),
    ("SSL_write", "tls_write_enter", "tls_write_leave", True),
    ("SSL_read_ex", "tls_read_ex_enter", "tls_read_ex_leave", False),  # OpenSSL 1.1.1+
    ("SSL_write_ex", "tls_write_ex_enter", "tls_write_ex_leave", False),
    ("SSL_free", "tls_free", None, True),
    ("SSL_set_fd", "tls_set_fd", None, False),
    ("SSL_set_connect_state", "tls_connect_state", None, False),
    ("SSL_connect", "tls_connect_state", None, False),
    ("SSL_set_accept_state", "tls_accept_state", None, False),
    ("SSL_accept", "tls_accept_state", None, False),
    ("SSL_ctrl", "tls_ctrl", None, False),  # SSL_set_tlsext_host_name: the client's SNI
)

#: programs that learn an SSL call's socket while it runs: preferred first (see tlstrace.bpf.c)
SOCK_HOOKS = ("tls_sock_send", "tls_sock_recv")  # raw_tp/sock_{send,recv}_length, Linux 6.4+
SYSCALL_HOOK = "tls_sys_enter"  # raw_tp/sys_enter: every syscall on the machine pays for it
TupleHook = Literal["auto", "sock", "syscall", "none"]

_CLOCK_REFRESH_NS = 1_000_000_000
_IP_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class TlsData:
    """Plaintext of one SSL_read/SSL_write call, or one chunk of it (a call is sent in chunks of
    at most `CHUNK` bytes, each with its `offset` in the call; `length` is the whole call).

    `cut` bytes at the end of the call were never sent (the call was longer than the tracer's
    ``max_call_bytes``): the consumer should treat them as a gap of known size, not as missing
    traffic. `seq` is where the call starts in this (pid, ssl, direction) plaintext stream since
    the tracer first saw the SSL*, so ``stream_offset`` places the chunk exactly.
    """

    ts: int  # wall-clock ns (CLOCK_REALTIME) when the call returned
    pid: int
    tid: int
    comm: str  # the process's name
    ssl: int  # the SSL* in that process: with pid, the connection's identity
    direction: int  # DIRECTION_WRITE (the process sent these bytes) or DIRECTION_READ
    role: int  # ROLE_UNKNOWN, ROLE_CLIENT or ROLE_SERVER (of the traced process)
    family: int  # AF_INET, AF_INET6, or 0 when the 4-tuple is unknown
    local: tuple[str, int] | None  # the traced process's end
    remote: tuple[str, int] | None
    data: bytes
    length: int  # bytes the whole call moved
    offset: int  # of `data` in the call
    cut: int  # bytes at the end of the call not sent
    seq: int  # position of the call's first byte in its stream
    netns: int  # inode of the socket's network namespace (as /proc/PID/ns/net); 0 when unknown

    @property
    def stream_offset(self) -> int:
        """Position of ``data[0]`` in this (pid, ssl, direction) plaintext stream."""
        return self.seq + self.offset


@dataclass(frozen=True, slots=True)
class TlsClose:
    """SSL_free of an SSL* the tracer had seen: that connection's plaintext is over."""

    ts: int  # wall-clock ns
    pid: int
    ssl: int
    tid: int
    comm: str
    written: int  # plaintext bytes the process wrote on it while traced
    read: int  # plaintext bytes it read


@dataclass(frozen=True, slots=True)
class TlsSni:
    """A client named the server it is about to greet (SSL_set_tlsext_host_name on this SSL*): the
    SNI its ClientHello will carry, known to the tracer even when the packet is not captured."""

    ts: int  # wall-clock ns
    pid: int
    ssl: int
    tid: int
    comm: str
    name: str


TlsEvent = TlsData | TlsClose | TlsSni


@dataclass(frozen=True, slots=True)
class Attachment:
    """One libssl file the probes are attached to, and the paths it was attached by."""

    paths: tuple[str, ...]  # as given to `TlsTracer.attach`, first first
    device: int
    inode: int
    missing: tuple[str, ...]  # optional functions the file lacks (e.g. SSL_read_ex before 1.1.1)

    @property
    def path(self) -> str:
        return self.paths[0]


@dataclass(slots=True)
class _Attached:
    paths: dict[str, None]  # insertion-ordered set
    device: int
    inode: int
    missing: tuple[str, ...]
    links: list[Link]

    def public(self) -> Attachment:
        return Attachment(tuple(self.paths), self.device, self.inode, self.missing)


class _Decoder:
    """Records -> events, with the clock offset and small caches for addresses and names."""

    def __init__(self) -> None:
        self.malformed = 0
        self._offset_ns = 0
        self._refreshed_ns = -_CLOCK_REFRESH_NS
        self._ips: dict[tuple[int, bytes], str | None] = {}
        self._names: dict[bytes, str] = {}
        self.refresh_clock()

    def refresh_clock(self) -> None:
        """realtime - monotonic, from the closest of three readings (least disturbed by preemption)."""
        best: tuple[int, int] | None = None
        for _ in range(3):
            before = time.monotonic_ns()
            real = time.time_ns()
            after = time.monotonic_ns()
            if best is None or after - before < best[0]:
                best = (after - before, real - (before + after) // 2)
        assert best is not None
        self._offset_ns = best[1]
        self._refreshed_ns = time.monotonic_ns()

    def maybe_refresh_clock(self) -> None:
        if time.monotonic_ns() - self._refreshed_ns >= _CLOCK_REFRESH_NS:
            self.refresh_clock()

    def _ip(self, family: int, packed: bytes) -> str | None:
        key = (family, packed)
        text = self._ips.get(key)
        if text is None:
            if len(self._ips) >= _IP_CACHE_MAX:
                self._ips.clear()
            text = self._ips[key] = ip_text(family, packed)
        return text

    def _name(self, raw: bytes) -> str:
        name = self._names.get(raw)
        if name is None:
            if len(self._names) >= _IP_CACHE_MAX:
                self._names.clear()
            name = self._names[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return name

    def decode(self, sample: bytes) -> TlsEvent | None:
        """One ring-buffer record as an event; None (and counted) when it is not a well-formed one."""
        if len(sample) < HEADER.size:
            self.malformed += 1
            return None
        (ts, ssl, seq, length, cut, tgid, tid, offset, netns, data_len, family, lport, rport, kind,
         direction, role, laddr, raddr, comm) = HEADER.unpack_from(sample)  # fmt: skip
        wall = ts + self._offset_ns
        if kind == KIND_CLOSE and data_len == 0 and len(sample) == HEADER.size:
            return TlsClose(wall, tgid, ssl, tid, self._name(comm), seq, length)
        if kind == KIND_SNI:
            if not 0 < data_len == len(sample) - HEADER.size:
                self.malformed += 1
                return None
            name = sample[HEADER.size :].decode("ascii", "replace")
            return TlsSni(wall, tgid, ssl, tid, self._name(comm), name)
        if (
            kind != KIND_DATA
            or data_len != len(sample) - HEADER.size
            or direction not in (DIRECTION_WRITE, DIRECTION_READ)
            or role not in (ROLE_UNKNOWN, ROLE_CLIENT, ROLE_SERVER)
            or data_len == 0
            or offset + data_len > length
            or cut > length
        ):
            self.malformed += 1
            return None
        local: tuple[str, int] | None = None
        remote: tuple[str, int] | None = None
        if family:
            lip = self._ip(family, laddr)
            rip = self._ip(family, raddr)
            if lip is None or rip is None:
                self.malformed += 1
                return None
            local, remote = (lip, lport), (rip, rport)
        return TlsData(
            ts=wall,
            pid=tgid,
            tid=tid,
            comm=self._name(comm),
            ssl=ssl,
            direction=direction,
            role=role,
            family=family,
            local=local,
            remote=remote,
            data=sample[HEADER.size :],
            length=length,
            offset=offset,
            cut=cut,
            seq=seq,
            netns=netns,
        )


def decode_event(sample: bytes) -> TlsEvent | None:
    """A single record as an event (timestamps converted with the clock offset measured now)."""
    return _Decoder().decode(sample)


class TlsTracer:
    """tlstrace.bpf.o loaded, its socket hooks attached; `attach` adds libssl files, `drain` reads.

    - `max_call_bytes`: plaintext sent per SSL call (1 .. 1 MiB); the rest is reported as `cut`.
    - `ring_bytes`: the ring buffer's size (a power of two, at least a page): how much plaintext can
      wait between two drains before records are dropped.
    - `tuple_hook`: how an SSL call's socket is learnt while it runs: ``"sock"`` (the
      sock_send_length/sock_recv_length tracepoints, Linux 6.4+), ``"syscall"`` (sys_enter: any
      kernel, but it runs on every syscall of the machine), ``"auto"`` (sock, else syscall), or
      ``"none"`` (only SSL_set_fd: programs that hand OpenSSL a socket BIO, like curl, come without
      a 4-tuple). `tuple_source` says which one is in use.

    Thread-safety: `drain` and `attach`/`detach` may be called from different threads.
    """

    def __init__(
        self,
        object_path: str | os.PathLike[str] = OBJECT_PATH,
        *,
        max_call_bytes: int = DEFAULT_MAX_CALL_BYTES,
        ring_bytes: int = DEFAULT_RING_BYTES,
        tuple_hook: TupleHook = "auto",
    ) -> None:
        if not 1 <= max_call_bytes <= MAX_CALL_BYTES:
            raise ValueError(f"max_call_bytes must be 1..{MAX_CALL_BYTES}, not {max_call_bytes}")
        if ring_bytes < _PAGE or ring_bytes & (ring_bytes - 1):
            raise ValueError(f"ring_bytes must be a power of two of at least {_PAGE}, not {ring_bytes}")
        if tuple_hook not in ("auto", "sock", "syscall", "none"):
            raise ValueError(f"tuple_hook must be auto, sock, syscall or none, not {tuple_hook!r}")
        self.max_call_bytes = max_call_bytes
        self.received = 0
        self.load_ms: float | None = None
        self.tuple_source = ""
        self._decoder = _Decoder()
        self._pending: list[TlsEvent] = []
        self._drain_lock = threading.Lock()
        self._lock = threading.Lock()  # attachments and the object's lifetime
        self._attachments: dict[tuple[int, int], _Attached] = {}
        self._hook_links: list[Link] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.callback_errors = 0
        self.last_callback_error: str | None = None

        started = time.perf_counter()
        obj = BpfObject(object_path)
        try:
            obj.map("events").set_max_entries(ring_bytes)
            obj.load()
            settings = max_call_bytes.to_bytes(4, "little") + bytes(4)
            obj.map("settings").update(bytes(4), settings)
            self._hook_links, self.tuple_source = self._attach_tuple_hook(obj, tuple_hook)
            self._ring: RingBuffer = obj.ring_buffer("events", self._on_sample)
        except BaseException:
            for link in self._hook_links:
                link.destroy()
            obj.close()
            raise
        self._obj: BpfObject | None = obj
        self.load_ms = (time.perf_counter() - started) * 1000

    @staticmethod
    def _attach_tuple_hook(obj: BpfObject, mode: TupleHook) -> tuple[list[Link], str]:
        if mode == "none":
            return [], "SSL_set_fd"
        if mode in ("auto", "sock"):
            links: list[Link] = []
            try:
                for name in SOCK_HOOKS:
                    links.append(obj.program(name).attach())
                return links, "sock_send_length/sock_recv_length"
            except BpfError as exc:
                for link in links:
                    link.destroy()
                if mode == "sock":
                    raise
                log.info("tlstrace: socket tracepoints unavailable (%s); using sys_enter", exc)
        return [obj.program(SYSCALL_HOOK).attach()], "sys_enter"

    # --- libraries ------------------------------------------------------------------------------

    def attach(self, path: str | os.PathLike[str]) -> str | None:
        """Attach every probe to one libssl file; None when attached (or already was), else why not.

        `path` as seen from this process (for a container's library: ``/proc/PID/root/<path>``).
        The same file reached by another path (a symlink, another /proc/PID/root of the same
        image layer) is recognised by device and inode and not attached twice; the file stays
        attached until every path it was attached by has been detached.
        """
        text = os.fsdecode(path)
        try:
            st = os.stat(text)
        except OSError as exc:
            return f"{text}: {exc.strerror or exc}"
        key = (st.st_dev, st.st_ino)
        with self._lock:
            obj = self._obj
            if obj is None:
                return "the TLS tracer is closed"
            known = self._attachments.get(key)
            if known is not None:
                known.paths[text] = None
                return None
            links: list[Link] = []
            missing: list[str] = []
            try:
                for symbol, entry, leave, required in PROBES:
                    try:
                        if leave is not None:  # the return first: an entry without it would be parked forever
                            links.append(obj.program(leave).attach_uprobe(text, symbol, retprobe=True))
                        links.append(obj.program(entry).attach_uprobe(text, symbol))
                    except BpfError as exc:
                        if exc.errno != errno.ENOENT:
                            raise
                        if required:
                            raise BpfError(f"{text} is not an OpenSSL libssl: it has no {symbol}") from exc
                        missing.append(symbol)
            except BpfError as exc:
                for link in links:
                    link.destroy()
                return str(exc)
            missing_once = tuple(dict.fromkeys(missing))
            self._attachments[key] = _Attached({text: None}, st.st_dev, st.st_ino, missing_once, links)
        log.debug("tlstrace: attached %d probes to %s", len(links), text)
        return None

    def detach(self, path: str | os.PathLike[str]) -> bool:
        """Forget one path a file was attached by (it may be gone already: the path is matched as
        text); the probes come off when no path of that file is left. A path never attached but
        naming an attached file detaches that file outright. False when nothing matched."""
        text = os.fsdecode(path)
        with self._lock:
            key = next((k for k, a in self._attachments.items() if text in a.paths), None)
            if key is not None:
                del self._attachments[key].paths[text]
            else:
                try:
                    st = os.stat(text)
                except OSError:
                    return False
                key = (st.st_dev, st.st_ino)
                if key not in self._attachments:
                    return False
                self._attachments[key].paths.clear()
            entry = self._attachments[key]
            if entry.paths:
                return True
            del self._attachments[key]
        for link in entry.links:
            link.destroy()
        return True

    def attachments(self) -> list[Attachment]:
        """The files the probes are attached to now."""
        with self._lock:
            return [a.public() for a in self._attachments.values()]

    # --- events -----------------------------------------------------------------------------------

    def _on_sample(self, sample: bytes) -> None:
        event = self._decoder.decode(sample)
        if event is not None:
            self.received += 1
            self._pending.append(event)

    def drain(self, max_events: int = DEFAULT_DRAIN_MAX) -> list[TlsEvent]:
        """The events recorded since the last drain (at most `max_events`; the rest stay for the
        next call, so a capture loop is never held up by a flood), in the order the kernel
        recorded them.

        Call it often (every capture step): until it is called the records wait in the ring buffer,
        and when that is full new ones are dropped (counted in ``drops``).
        """
        with self._drain_lock:
            if self._obj is None:
                return []
            self._decoder.maybe_refresh_clock()
            self._ring.drain(max_events)
            events, self._pending = self._pending, []
        return events

    def fileno(self) -> int:
        """A file descriptor that polls readable when the ring buffer is a quarter full (the kernel
        side wakes readers only then): a capture loop polls it with its packet sockets, so a burst
        of plaintext is drained at once instead of at the loop's next timeout."""
        return self._ring.fileno()

    def start(self, callback: Callable[[list[TlsEvent]], None], *, poll_ms: int = 10) -> None:
        """Push mode: a daemon thread drains every `poll_ms` and hands non-empty batches to
        `callback` (on that thread) until `close()`. An exception in the callback is counted."""
        if self._thread is not None:
            raise RuntimeError("TlsTracer.start() called twice")

        def run() -> None:
            while not self._stop.wait(poll_ms / 1000):
                try:
                    events = self.drain()
                except BpfError as exc:
                    self.last_callback_error = str(exc)
                    log.warning("tlstrace: ring buffer stopped: %s", exc)
                    return
                if not events:
                    continue
                try:
                    callback(events)
                except Exception as exc:  # one bad batch must not stop the stream
                    self.callback_errors += 1
                    self.last_callback_error = f"{type(exc).__name__}: {exc}"

        self._thread = threading.Thread(target=run, name="tlstrace-drain", daemon=True)
        self._thread.start()

    def counters(self) -> dict[str, int]:
        """Kernel counters (``drops``: records the full ring refused; ``events``: records sent;
        ``read_errors``, ``truncated`` calls, ``no_tuple`` calls, ``calls``, ``closes``) and what
        user space did (``received``, ``malformed``, ``attached`` files)."""
        out = {"received": self.received, "malformed": self._decoder.malformed, "callback_errors": 0}
        with self._lock:
            obj = self._obj
            out["attached"] = len(self._attachments)
            if obj is None:
                return out
            try:
                counters = obj.map("counters")
                for index, name in enumerate(COUNTERS):
                    out[name] = counters.lookup_percpu_u64(index)
            except BpfError:
                out["counter_read_errors"] = 1
            out["callback_errors"] = self.callback_errors + self._ring.callback_errors
        return out

    def close(self) -> None:
        """Stop the drain thread, detach every probe and unload. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._drain_lock, self._lock:
            obj, self._obj = self._obj, None
            entries = list(self._attachments.values())
            self._attachments.clear()
            hooks, self._hook_links = self._hook_links, []
        for entry in entries:
            for link in entry.links:
                link.destroy()
        for link in hooks:
            link.destroy()
        if obj is not None:
            obj.close()

    def __enter__(self) -> TlsTracer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
