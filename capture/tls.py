"""TLS plaintext for the worker: the eBPF tracer and the library scanner, fed into the engine.

    libssl files found in /proc (capture.tlslibs, a scanner thread, every RESCAN_S)
        -> uprobes attached per distinct file (capture.ebpf.tlstrace.TlsTracer.attach)
    SSL_read/SSL_write plaintext -> BPF ring buffer -> `TlsCapture.step` (the capture thread)
        -> dissect.plaintext (the engine's decrypted connections) -> calls, like any TCP stream

`TlsCapture.step` runs on the capture thread, right after the packets of a pipeline step, so the
engine is only ever touched by that one thread. The scanner and the attaching run on their own
thread: a /proc pass over hundreds of processes takes tens of milliseconds, which the packet path
should not wait for. Attaching the same file is idempotent and detaching goes by the path it was
attached with, so the scanner keeps that map.

The stream checks live here, between the tracer's records and the engine: each record says where its
bytes sit in its (process, SSL object, direction) stream, so bytes lost to a full ring buffer become
a gap of exactly their size in the right conversation (the call gets ``gap``/``truncated``), and a
record that repeats bytes already fed is trimmed. The worker's own process is skipped: its uplink
may speak TLS to the hub, and tracing it would send every batch back as calls.

When eBPF cannot load, `start` returns one line saying why (and the worker goes on without TLS).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

from dissect.engine import Engine
from dissect.plaintext import Plaintext

log = logging.getLogger("podshark.capture")

RESCAN_S = 5.0  # how often /proc is scanned for new libssl files (and processes to report)
MAX_STREAMS = 200_000  # (pid, SSL object, direction) positions remembered
MAX_REPORTED_PROCESSES = 200  # per stats message (the hub keeps 64 KiB per worker)


class TlsCapture:
    """The TLS side of one pipeline (see the module docstring)."""

    def __init__(self, engine: Engine, *, rescan_s: float = RESCAN_S, own_pid: int | None = None) -> None:
        self.engine = engine
        self.plain: Plaintext = engine.enable_plaintext()
        self.rescan_s = rescan_s
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.tracer: Any = None  # capture.ebpf.tlstrace.TlsTracer once started
        self.reason: str | None = "not started"  # why TLS is not traced, or None
        self._next: OrderedDict[tuple[int, int, int], int] = OrderedDict()  # stream -> next offset
        self.lost_bytes = 0  # bytes the ring buffer dropped, found as holes in the streams
        self.own_events = 0
        self._attached: dict[Any, str] = {}  # FileKey -> path it was attached with
        self._attach_errors: dict[str, str] = {}  # path -> why not (retried every scan)
        self._scan: Any = None  # the last capture.tlslibs.Scan
        self._scanner: Any = None  # capture.tlslibs.Scanner (its caches live across scans)
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_fd: int | None = None

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> str | None:
        """Load the tracer and start the scanner thread; one line saying why not, or None."""
        from capture.ebpf.libbpf import BpfError
        from capture.ebpf.tlstrace import TlsTracer

        try:
            self.tracer = TlsTracer()
        except (BpfError, OSError) as e:
            self.reason = f"TLS plaintext not traced: {e}"
            return self.reason
        self.reason = None
        self.rescan()  # the libraries mapped now are covered before the first packet
        self._thread = threading.Thread(target=self._scan_loop, name="podshark-tls-scan", daemon=True)
        self._thread.start()
        return None

    def wakeup_fds(self) -> tuple[int, ...]:
        """What the capture loop polls besides its packet rings: the tracer's ring buffer, readable
        when a burst filled a quarter of it (so it is drained before it overflows)."""
        if self._wake_fd is None and self.tracer is not None:
            try:
                self._wake_fd = self.tracer.fileno()
            except Exception:  # the tracer is closing: the loop's timeout will do
                return ()
        return (self._wake_fd,) if self._wake_fd is not None else ()

    def close(self) -> None:
        self._wake_fd = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.tracer is not None:
            self.tracer.close()
            self.tracer = None

    # -- libraries -----------------------------------------------------------------------------

    def _scan_loop(self) -> None:
        while not self._stop.wait(self.rescan_s):
            try:
                self.rescan()
            except Exception:  # a bug in the scan must not end TLS tracing for good
                log.exception("TLS library scan failed; retrying in %.0f s", self.rescan_s)

    def rescan(self) -> None:
        """Scan /proc; attach the probes to new libssl files, detach from files no process maps."""
        from capture.tlslibs import Scanner

        tracer = self.tracer
        if tracer is None:
            return
        if self._scanner is None:
            self._scanner = Scanner()
        scan = self._scanner.scan()
        errors: dict[str, str] = {}
        for key, lib in scan.libraries.items():
            if key in self._attached:
                continue
            why = tracer.attach(lib.path)
            if why is None:
                self._attached[key] = lib.path
                log.info("TLS: tracing %s (%s)", lib.name, lib.path)
            else:
                errors[lib.path] = why
        for key in [k for k in self._attached if k not in scan.libraries]:
            path = self._attached.pop(key)
            try:
                tracer.detach(path)
            except Exception as e:  # the file may be gone with its last process: nothing to undo
                log.debug("TLS: detach %s: %s", path, e)
        with self._scan_lock:
            self._scan = scan
            self._attach_errors = errors

    # -- plaintext -----------------------------------------------------------------------------

    def step(self) -> None:
        """Feed what the tracer has for us into the engine (capture thread)."""
        tracer = self.tracer
        if tracer is None:
            return
        from capture.ebpf.tlstrace import TlsClose, TlsSni

        plain = self.plain
        positions = self._next
        for ev in tracer.drain():
            if ev.pid == self.own_pid:
                self.own_events += 1
                continue
            if isinstance(ev, TlsSni):
                plain.server_name(ev.pid, ev.ssl, ev.name)
                continue
            if isinstance(ev, TlsClose):
                for d in (0, 1):
                    positions.pop((ev.pid, ev.ssl, d), None)
                plain.free(ev.ts, ev.pid, ev.ssl)
                continue
            key = (ev.pid, ev.ssl, ev.direction)
            at = ev.stream_offset
            data = ev.data
            expected = positions.get(key)
            if expected is not None and at != expected:
                if at == 0 and ev.offset == 0:  # the tracer forgot the SSL object (LRU) and restarted
                    expected = None
                elif at > expected:  # records lost in between (ring buffer full): a hole that size
                    self.lost_bytes += at - expected
                    self._feed(ev, b"", at - expected)
                else:  # bytes already fed (a repeated record): only what is new
                    data = data[expected - at :]
                    at = expected
            last = ev.offset + len(ev.data) + ev.cut >= ev.length
            cut = ev.cut if last else 0
            if data or cut:
                self._feed(ev, data, cut)
            positions[key] = at + len(data) + cut
            positions.move_to_end(key)
            if len(positions) > MAX_STREAMS:
                positions.popitem(last=False)

    def _feed(self, ev: Any, data: bytes, cut: int) -> None:
        self.plain.chunk(
            ev.ts,
            pid=ev.pid,
            comm=ev.comm,
            ssl=ev.ssl,
            direction=ev.direction,
            role=ev.role,
            local=ev.local,
            remote=ev.remote,
            data=data,
            cut=cut,
        )

    # -- health --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """For the worker's stats message: is TLS traced, what it cost, which processes are covered."""
        out: dict[str, Any] = {"enabled": self.tracer is not None, "reason": self.reason}
        tracer = self.tracer
        if tracer is not None:
            try:
                out["counters"] = tracer.counters()
            except Exception as e:
                out["counters"] = {"error": str(e)}
            out["tuple_source"] = getattr(tracer, "tuple_source", None)
        p = self.plain.stats
        out["plaintext"] = {
            "chunks": p.chunks,
            "bytes": p.bytes,
            "calls": p.calls,
            "connections": p.connections,
            "duplicate_chunks": p.duplicate_chunks,
            "cut_bytes": p.cut_bytes,
            "lost_bytes": self.lost_bytes,
            "replaced_tls_calls": p.replaced,
            "own_events": self.own_events,
        }
        with self._scan_lock:
            scan, errors = self._scan, dict(self._attach_errors)
        out["libraries"] = sorted(set(self._attached.values()))
        if errors:
            out["attach_errors"] = dict(list(errors.items())[:16])
        if scan is not None:
            out["coverage"] = scan.coverage()
            procs = []
            for proc in scan.processes.values():
                if proc.verdict == "no-tls":
                    continue
                d = proc.as_dict()
                d["traced"] = proc.traced and all(k in self._attached for k in proc.libraries)
                procs.append(d)
            procs.sort(key=lambda d: (d["traced"], d["comm"] or "", d["pid"]))  # not covered first
            out["processes"] = procs[:MAX_REPORTED_PROCESSES]
            out["processes_total"] = len(procs)
            out["scanned_at"] = time.time_ns()
        return out


class OpaqueFilter:
    """Across fan-out processes: drop the opaque ``tls`` call of a connection whose plaintext another
    process decrypted.

    With ``--procs N`` the tracer feeds one process, while PACKET_FANOUT hashes each encrypted
    connection to any of them; the engine-level replacement (`dissect.plaintext`) then only sees the
    connections that landed in the tracer's process. The worker's main process sees every call, so it
    finishes the job: ``tls`` calls wait `HOLD_S` here and are dropped if a decrypted call of the same
    address pair went by (before or meanwhile). Thread-safe: calls come from the fan-out reader thread,
    `release` also from the event loop.
    """

    HOLD_S = 1.5
    MAX_PAIRS = 65_536
    MAX_HELD = 100_000

    def __init__(self, submit: Any) -> None:
        self.submit = submit  # (call) -> None, for calls that go on
        self.decrypted: OrderedDict[tuple[Any, Any], None] = OrderedDict()
        self.held: list[tuple[float, Any, tuple[Any, Any]]] = []
        self.replaced = 0
        self._lock = threading.Lock()

    def offer(self, call: Any) -> bool:
        """True when the filter took the call (held); False: pass it on now."""
        s, d = call.src, call.dst
        a, b = (s.ip or "", s.port or 0), (d.ip or "", d.port or 0)
        pair = (a, b) if a <= b else (b, a)
        with self._lock:
            if call.info.get("tls_source"):
                self.decrypted[pair] = None
                self.decrypted.move_to_end(pair)
                if len(self.decrypted) > self.MAX_PAIRS:
                    self.decrypted.popitem(last=False)
                return False
            if call.protocol != "tls" or len(self.held) >= self.MAX_HELD:
                return False
            self.held.append((time.monotonic() + self.HOLD_S, call, pair))
            return True

    def release(self, now: float | None = None) -> None:
        """Pass on (or drop) the held calls that are due."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [h for h in self.held if h[0] <= now]
            if not due:
                return
            self.held = [h for h in self.held if h[0] > now]
            go = []
            for _t, call, pair in due:
                if pair in self.decrypted:
                    self.replaced += 1
                else:
                    go.append(call)
        for call in go:
            self.submit(call)
