"""The node worker: capture on this node's pod interfaces and stream the calls to the hub.

    rings (capture.afpacket) -> dedupe -> dissect.engine -> Call
         -> process identity (capture.procs: who sent it, who answered, on this node)
         -> Kubernetes identity (capture.k8s: pod, workload, service, namespace, node, labels)
         -> redaction (capture.redact: secrets never leave the node)
         -> uplink (capture.uplink: one WebSocket, batches, acks, on-disk spool)
    frames of every flow -> packet spool (capture.spool) <- the hub's export, over the same WebSocket
    every frame of a flow -> flow accounting (dissect.flowstats, in the engine) -> per interval:
         FlowAggregate -> Kubernetes identity -> uplink (`flows` batches, acked and spooled like calls)

Threads: the capture runs on its own thread (or in `--procs` processes, `capture.fanout`); finished
calls are tagged, redacted and encoded right there and handed to `Uplink.submit`, which never blocks,
so a slow or absent hub can never stall the capture — the uplink spools to disk, and what it must
drop when its spool is full is counted and reported to the hub. The event loop (`Worker.run`)
carries the uplink, the interface re-scan (pod veths come and go) and the stats the hub shows.

The worker's own traffic to the hub is left out of the capture (a BPF filter on the hub's address
and port), or every batch sent would be captured, dissected and sent again.

Flow accounting (`--flow-interval`, default 10 s; 0 turns it off) counts every frame of every TCP
connection and UDP flow, dissected or not, and sends one aggregate per (client, server, port,
protocol) per interval; the `stats` message carries each interface's frames and bytes received and
sent, counted from its ring (`interfaces`), and the cluster's address ranges as this worker knows
them (`cluster_ranges`: its Kubernetes index's pod CIDRs and node addresses), so the hub can tell
traffic leaving the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shutil
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.backend import Backend, InThread
from capture.ids import run_id
from capture.pipeline import PipelineConfig
from capture.redact import DEFAULT_HEADERS, DEFAULT_JSON_KEYS, Redactor
from dissect.flowstats import DEFAULT_MAX_KEYS, FlowAggregate
from dissect.model import Call

log = logging.getLogger("podshark.worker")

MAX_REPORTED_INTERFACES = 64
DEFAULT_FLOW_INTERVAL = 10.0  # seconds
RANGES_EVERY_S = 30.0  # how often the cluster ranges are recomputed for the stats
# batches in flight: the hub commits about once a second, so a worker sends at most
# window x batch (1000 calls) per second; 32 leaves room above the 10k calls/s a busy node makes
UPLINK_WINDOW = 32  # per stats message (the hub keeps 64 KiB per worker)


@dataclass
class WorkerConfig:
    hub: str
    token: str | Callable[[], str | None] | None
    node: str = field(default_factory=socket.gethostname)
    interfaces: list[str] | None = None  # names or globs; None: every pod interface (re-scanned)
    capture_filter: str | None = None
    exclude_hub: bool = True  # leave our own hub traffic out of the capture
    procs: int = 1
    state_dir: Path = Path("/var/lib/podshark")
    packet_spool_bytes: int = 512 << 20
    uplink_spool_bytes: int = 256 << 20
    ring_bytes: int = 64 << 20  # per interface (per process)
    redact_headers: Sequence[str] = DEFAULT_HEADERS
    redact_json_keys: Sequence[str] = DEFAULT_JSON_KEYS
    identity: bool = True  # process identity from /proc
    ebpf: bool = True  # ... and the eBPF connect tracer for short-lived clients
    tls: bool = False  # TLS plaintext through eBPF uprobes on OpenSSL (capture.tls)
    # Kubernetes identity (capture.k8s.cluster): "auto" = in-cluster when running in a pod, else off;
    # "on" = required (an unusable configuration stops the worker); "off".
    k8s: str = "auto"
    kubeconfig: str | None = None  # else the pod's ServiceAccount
    k8s_context: str | None = None
    k8s_scope: str = "node"  # which pods to watch: this node's ("node") or every one ("cluster")
    rescan_interval: float = 2.0
    stats_interval: float = 2.0
    flow_interval: float = DEFAULT_FLOW_INTERVAL  # seconds per flow aggregate interval; 0: no accounting
    flow_max_keys: int = DEFAULT_MAX_KEYS  # aggregates per interval before the rest fold into "other"
    ssl: Any = None  # an ssl.SSLContext for a wss:// hub
    # names the fix for a failed hub connection in the command's words (`Uplink`'s `explain`)
    explain_failure: Callable[[BaseException | str], str | None] | None = None


class WorkerError(Exception):
    """The worker cannot start (message says what to do)."""


class Worker:
    """Capture + identity + redaction + uplink for one node (see the module docstring)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.run_id = run_id()
        self.redactor = Redactor(config.redact_headers, config.redact_json_keys)
        self.spool_root = config.state_dir / "spool"
        self.warnings: list[str] = []
        self.capturing: set[str] = set()
        self.identity: Any = None  # capture.procs.ProcessIndex when enabled
        self.k8s: Any = None  # capture.k8s.cluster.ClusterIdentity when enabled
        self.uplink: Any = None  # capture.uplink.Uplink
        self.backend: Backend | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.calls = 0
        self.redacted = 0
        self.flows = 0  # flow aggregates handed to the uplink
        self.started_ns = 0
        self._ranges: list[str] = []  # cluster_ranges for the stats, recomputed every RANGES_EVERY_S
        self._ranges_at = 0.0
        self._hub_addrs: set[tuple[str, int]] = set()
        self._opaque: Any = None  # capture.tls.OpaqueFilter: --tls with --procs > 1
        self._k8s_off = ""  # why there is no Kubernetes identity, for the stats

    # -- setup -----------------------------------------------------------------------------------

    def capture_filter(self) -> str | None:
        """The user's filter, and not our own hub connection."""
        parts = []
        if self.config.capture_filter:
            parts.append(f"({self.config.capture_filter})")
        if self.config.exclude_hub:
            own = hub_exclusion(self.config.hub)
            if own and (parts or shutil.which("tcpdump")):
                parts.append(own)
            elif own:  # no compiler for the filter: drop the hub's own calls after dissection instead
                self._hub_addrs = hub_addresses(self.config.hub)
                self._warn("tcpdump is not installed: the hub's own traffic is dissected, then dropped")
        return " and ".join(parts) or None

    def _backend(self) -> Backend:
        cfg = PipelineConfig(
            node=self.config.node,
            run=self.run_id,
            spool_dir=self.spool_root / "0",
            spool_max_bytes=self.config.packet_spool_bytes,
            capture_filter=self.capture_filter(),
            ring_bytes=self.config.ring_bytes,
            frame_mask=self.redactor.frame,
            tls=self.config.tls,
            flow_interval_ns=round(self.config.flow_interval * 1e9) if self.config.flow_interval > 0 else 0,
            flow_max_keys=self.config.flow_max_keys,
            on_flows=self._on_flows,
        )
        if self.config.procs > 1:
            from capture.fanout import Fanout

            return Fanout(cfg, self.config.procs)
        return InThread(cfg)

    def _interfaces(self) -> list[str]:
        """The interfaces to capture now (an explicit pattern matching nothing yet is an empty list:
        pods come and go)."""
        from capture.afpacket import CaptureError
        from capture.interfaces import select_interfaces

        try:
            return [i.name for i in select_interfaces(self.config.interfaces)]
        except CaptureError:
            return []

    # -- the calls' path -------------------------------------------------------------------------

    def _on_calls(self, calls: list[Call]) -> None:
        """On the capture thread: tag, redact, encode, hand to the uplink (never blocks)."""
        ident = self.identity
        k8s = self.k8s
        node = self.config.node
        submit = self.uplink.submit
        own = self._hub_addrs
        opaque = self._opaque
        if opaque is not None:
            opaque.release()
        for call in calls:
            if own and ((call.dst.ip, call.dst.port) in own or (call.src.ip, call.src.port) in own):
                continue
            if ident is not None:
                src, dst = call.src, call.dst
                if (
                    src.ip is not None
                    and dst.ip is not None
                    and src.port is not None
                    and dst.port is not None
                ):
                    client, server = ident.lookup(call.transport, src.ip, src.port, dst.ip, dst.port)
                    if src.process is not None:  # named by the TLS tracer, from inside the process
                        client, src.node = None, node
                    if dst.process is not None:
                        server, dst.node = None, node
                    if client is not None:
                        src.pid, src.process, src.container, src.node = (
                            client.pid,
                            client.name,
                            client.container,
                            node,
                        )
                    if server is not None:
                        dst.pid, dst.process, dst.container, dst.node = (
                            server.pid,
                            server.name,
                            server.container,
                            node,
                        )
            if k8s is not None:
                k8s.tag(call)
            if self.redactor.call(call):
                self.redacted += 1
            if opaque is not None and opaque.offer(call):
                continue  # an opaque TLS call another capture process may have decrypted
            submit(call.to_json_bytes())
        self.calls += len(calls)

    def _on_flows(self, aggregates: list[FlowAggregate]) -> None:
        """On the capture thread: tag each aggregate's ends with Kubernetes identity (process identity
        has no place in an aggregate of many connections), encode, hand to the uplink."""
        k8s = self.k8s
        own = self._hub_addrs
        out: list[bytes] = []
        for agg in aggregates:
            if own and (agg.dst.ip, agg.dst.port) in own:
                continue  # our own uplink (when tcpdump could not leave it out of the capture)
            if k8s is not None:
                k8s.tag_flow(agg)
            out.append(agg.to_json_bytes())
        if out:
            self.uplink.submit_flows(out)
            self.flows += len(out)

    # -- stats -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What the hub shows about this worker (its `stats` message; the uplink adds drops["spool"])."""
        cap = self.backend.stats() if self.backend is not None else {}
        interfaces = cap.get("interfaces", {})
        worst = sorted(interfaces.items(), key=lambda kv: (-kv[1].get("drops", 0), kv[0]))
        out: dict[str, Any] = {
            "drops": {"kernel": int(cap.get("kernel_drops", 0))},
            "node": self.config.node,
            "run": self.run_id,
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 1) if self.started_ns else 0,
            "packets_captured": cap.get("packets", 0),  # ("packets" is the ingest envelope's frame list)
            "duplicates": cap.get("duplicates", 0),
            "calls_captured": self.calls,  # (not "calls", "packets", "seq", "worker": ingest envelope keys)
            "redacted": self.redacted,
            "connections": cap.get("connections", 0),
            "buffered_bytes": cap.get("buffered_bytes", 0),
            "interfaces": dict(worst[:MAX_REPORTED_INTERFACES]),
            "interface_count": len(self.capturing),
            "warnings": self.warnings[-8:],
            "errors": cap.get("errors", []),
        }
        tls = cap.get("tls")
        if tls is not None:
            out["tls"] = tls
            if self._opaque is not None:
                tls.setdefault("plaintext", {})["replaced_across_procs"] = self._opaque.replaced
            counters = tls.get("counters") or {}
            out["drops"]["tls"] = int(counters.get("drops", 0) or 0)  # ring-buffer records lost
        elif self.config.tls:
            out["tls"] = {"enabled": False, "reason": "the capture has not started yet"}
        if "dead_procs" in cap:
            out["procs"] = cap.get("procs")
            out["dead_procs"] = cap.get("dead_procs")
        if self.identity is not None:
            with contextlib.suppress(Exception):
                out["identity"] = self.identity.stats()
        if self.k8s is not None:
            with contextlib.suppress(Exception):
                out["kubernetes"] = self.k8s.stats()
        elif self._k8s_off:
            out["kubernetes"] = {"enabled": False, "reason": self._k8s_off}
        out["cluster_ranges"] = self._cluster_ranges()
        if "flow_accounting" in cap:  # (not "flows": the ingest envelope's key for the aggregates)
            out["flow_accounting"] = {**cap["flow_accounting"], "sent": self.flows}
        return out

    def _cluster_ranges(self) -> list[str]:
        """The cluster's ranges as the Kubernetes index knows them (empty without Kubernetes),
        recomputed at most every RANGES_EVERY_S: nodes come and go slowly, stats go every 2 s."""
        if self.k8s is None:
            return []
        now = time.monotonic()
        if not self._ranges_at or now - self._ranges_at >= RANGES_EVERY_S:
            self._ranges_at = now
            with contextlib.suppress(Exception):
                self._ranges = self.k8s.cluster_ranges()
        return self._ranges

    def _export(self, from_ns: int | None, to_ns: int | None, flow_ids: list[str]) -> Any:
        from capture.spool import read_spool

        return read_spool(self.spool_root, from_ns, to_ns, flow_ids)

    # -- running ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Capture until ``stop`` is set (or the task is cancelled); then flush and close."""
        from capture.uplink import Uplink

        self._loop = asyncio.get_running_loop()
        self._stop = stop or asyncio.Event()
        # Every call and frame makes short-lived objects; the flow tables and index make long-lived
        # ones. Fewer, later collections (and the startup heap frozen out of them) keep the
        # collector from rescanning the long-lived heap thousands of times a minute.
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        self.started_ns = time.time_ns()
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        names = self._interfaces()
        explicit = self.config.interfaces or []
        if explicit and not names and not any(set(p) & set("*?[") for p in explicit):
            missing = " ".join(explicit)
            raise WorkerError(f"no interface named {missing} (see `ip link`)")
        if self.config.identity:
            from capture.procs import ProcessIndex

            self.identity = ProcessIndex(ebpf=self.config.ebpf)
            for w in await asyncio.to_thread(self.identity.start):
                self._warn(w)
        await self._start_k8s()
        self.uplink = Uplink(
            self.config.hub,
            self.config.token,  # a callable re-reads a token file before each connection (rotation)
            self.config.node,
            spool_dir=self.config.state_dir / "uplink",
            spool_max_bytes=self.config.uplink_spool_bytes,
            capabilities=("calls", "export", *(("flows",) if self.config.flow_interval > 0 else ())),
            window=UPLINK_WINDOW,
            stats=self.stats,
            export=self._export,
            ssl=self.config.ssl,
            explain=self.config.explain_failure,
        )
        if self.config.tls and self.config.procs > 1:
            from capture.tls import OpaqueFilter

            uplink = self.uplink
            self._opaque = OpaqueFilter(lambda call: uplink.submit(call.to_json_bytes()))
        self.backend = self._backend()
        self.backend.start(self._on_calls)
        uplink_task = asyncio.create_task(self.uplink.run(), name="podshark-uplink")
        try:
            for name in names:
                await self._open(name)
            if not self.capturing:
                self._warn("no interface to capture yet; waiting for pod interfaces to appear")
            self._ready.set()
            await self._rescan_until_stopped()
        finally:
            self._ready.set()
            await asyncio.to_thread(self.backend.stop)  # flushes the last calls into the uplink
            if self._opaque is not None:
                self._opaque.release(float("inf"))
            await self.uplink.close(flush_timeout=5.0)
            uplink_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await uplink_task
            if self.identity is not None:
                self.identity.close()
            if self.k8s is not None:
                await asyncio.to_thread(self.k8s.close)

    async def _start_k8s(self) -> None:
        """Kubernetes identity: required with k8s="on", in-cluster only with "auto" (see WorkerConfig)."""
        import os

        from capture.k8s.cluster import ClusterIdentity, K8sConfigError

        cfg = self.config
        if cfg.k8s == "off":
            self._k8s_off = "turned off (--no-k8s)"
            return
        if cfg.k8s == "auto" and not cfg.kubeconfig and not os.environ.get("KUBERNETES_SERVICE_HOST"):
            self._k8s_off = "not running in a cluster and no --kubeconfig given"
            return
        k8s = ClusterIdentity(
            cfg.node, kubeconfig=cfg.kubeconfig, context=cfg.k8s_context, scope=cfg.k8s_scope
        )
        try:
            warnings = await asyncio.to_thread(k8s.start)
        except K8sConfigError as e:
            if cfg.k8s == "on" or cfg.kubeconfig:
                raise WorkerError(str(e)) from e
            self._k8s_off = str(e)
            self._warn(f"no Kubernetes identity: {e}")
            return
        self.k8s = k8s
        for w in warnings:
            self._warn(w)

    async def _open(self, name: str) -> None:
        assert self.backend is not None
        err = await asyncio.to_thread(self.backend.open, name)
        if err is None:
            self.capturing.add(name)
            log.info("capturing on %s", name)
        else:
            self._warn(err)

    async def _rescan_until_stopped(self) -> None:
        from capture.interfaces import InterfaceWatch

        assert self._stop is not None and self.backend is not None
        watch = InterfaceWatch()
        watch.changes()  # the baseline: what we just opened
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.rescan_interval)
            if self._stop.is_set():
                break
            if self._opaque is not None:
                self._opaque.release()
            if self.k8s is not None:
                self.k8s.tick()
            _added, removed = watch.changes()
            for name in removed:
                if name in self.capturing:
                    self.capturing.discard(name)
                    self.backend.close(name)
                    log.info("interface %s is gone", name)
            wanted = set(self._interfaces())
            for name in sorted(wanted - self.capturing):
                await self._open(name)
            if self.config.procs > 1:
                dead = getattr(self.backend, "dead", [])
                if dead:
                    raise WorkerError(f"capture process(es) {dead} died; restart the worker")

    def _warn(self, text: str) -> None:
        log.warning("%s", text)
        self.warnings = ([*self.warnings, text])[-32:]

    # -- in a thread (podshark local) ------------------------------------------------------------

    def start_in_thread(self) -> Worker:
        """Run on a thread with its own event loop (podshark local: the TUI has the main thread)."""

        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as e:
                self._error = e
                self._ready.set()

        self._thread = threading.Thread(target=main, name="podshark-worker", daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Stop a worker started with `start_in_thread` (flushes what was captured)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)


def hub_addresses(hub_url: str) -> set[tuple[str, int]]:
    """The (address, port) pairs the hub URL resolves to."""
    u = urllib.parse.urlsplit(hub_url)
    if not u.hostname:
        return set()
    try:
        port = u.port or (443 if u.scheme in ("https", "wss") else 80)
        return {
            (str(ai[4][0]), port) for ai in socket.getaddrinfo(u.hostname, port, proto=socket.IPPROTO_TCP)
        }
    except (OSError, ValueError):
        return set()


def hub_exclusion(hub_url: str) -> str | None:
    """A tcpdump expression leaving out traffic to and from the hub's address and port."""
    addrs = hub_addresses(hub_url)
    if not addrs:
        return None
    port = next(iter(addrs))[1]
    hosts = " or ".join(f"host {a}" for a, _p in sorted(addrs))
    return f"not (tcp port {port} and ({hosts}))"
