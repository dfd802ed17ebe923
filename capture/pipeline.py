"""One capture process's work: interfaces' rings -> dedupe -> engine -> finished calls (+ packet spool).

A `Pipeline` is driven by exactly one thread (the worker's capture thread, or the main thread of a
fan-out child process), so nothing in it is locked. Each step waits briefly for a ring to have a
retired block, drains every ready ring, and hands back the calls the engine finished:

    pipe = Pipeline(PipelineConfig(node="node-a", run="01J...", spool_dir=...))
    pipe.open("veth1234")
    while running:
        for call in pipe.step(0.1):
            ...
    for call in pipe.finish():
        ...

Why the pieces are in this order:

- Dedupe before the engine: a packet between two pods on one node crosses both pods' host-side
  veths (and the bridge); the engine must see it once, or every call would come out twice (or as
  retransmissions). `capture.dedupe` keys packets on what bridging and routing do not change.
- The engine is fed one frame at a time (`Engine.packet`) because frames come from several rings
  interleaved; its frame hook gives every frame of a TCP connection or UDP flow to the packet spool
  with the flow id its calls carry, so the hub's pcap export can ask for exactly those frames later.
  Raw frames are masked by the redactor before they are written (the spool is the one place raw
  bytes are kept on the node).
- `tick` closes connections that went idle by the clock (a live capture has quiet periods with no
  packet to advance the engine's time) and makes the spool's recent frames readable.
- Flow accounting (`flow_interval_ns`): the engine counts every frame of a flow and folds the
  counts into `dissect.flowstats.FlowAggregate`s per interval; `step` hands each finished
  interval's aggregates to ``on_flows`` (on this thread, like the calls), or keeps them, bounded,
  for `take_flows` when no callback is set (a fan-out child sends them to its parent itself).
  Each ring also counts the frames and bytes it received and sent (`Ring.traffic`), before dedupe:
  the per-interface figures of `stats` are what crossed that interface.

Ids: calls are `<node>/<ULID>` (`capture.ids.CallIds`), flows `<node>/<run>[-<index>]/f<n>`: the node
name first so the hub knows which worker's spool holds a flow; the run id so a restarted worker (or
another fan-out process) never reuses a flow id.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.afpacket import FANOUT_HASH, CaptureError, Ring, wait
from capture.capture_filter import CaptureFilterError, compile_filter
from capture.dedupe import Deduper
from capture.ids import CallIds
from capture.spool import PacketSpool
from dissect.engine import Engine
from dissect.flowstats import DEFAULT_MAX_KEYS, FlowAccounting, FlowAggregate
from dissect.model import Call

log = logging.getLogger("podshark.capture")

TICK_EVERY_NS = 500_000_000  # idle sweep and spool flush at most twice a second
STEP_FRAMES = 4096  # frames taken from one ring per step
MAX_KEPT_FLOWS = 100_000  # aggregates kept for `take_flows` when nobody takes them; the oldest go first

OnFlows = Callable[[list[FlowAggregate]], None]


@dataclass
class PipelineConfig:
    node: str
    run: str  # this worker run's id (capture.ids.run_id)
    spool_dir: Path | None  # None: no packet spool (no pcap export of live calls)
    spool_max_bytes: int = 512 << 20
    capture_filter: str | None = None  # a tcpdump expression, compiled per link type
    fanout: bool = False  # one of several processes sharing the interfaces by PACKET_FANOUT
    index: int = 0  # this process's index among the fan-out processes
    ring_bytes: int = 64 << 20  # per interface
    frame_mask: Callable[[int, bytes], bytes] | None = None  # the redactor for raw frames
    tls: bool = False  # TLS plaintext through eBPF uprobes (capture.tls); one process of a fan-out
    worker_pid: int = field(default_factory=os.getpid)  # its own TLS (the uplink) is not traced
    flow_interval_ns: int = 0  # flow accounting's interval (dissect.flowstats); 0: no accounting
    flow_max_keys: int = DEFAULT_MAX_KEYS  # aggregates per interval before folding into "other"
    on_flows: OnFlows | None = None  # finished intervals' aggregates, on the capture thread
    source: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.source = f"{self.node}/{self.run}" + (f"-{self.index}" if self.fanout else "")


class Pipeline:
    """Rings, dedupe, engine and spool of one capture process (see the module docstring)."""

    BLOCK_SIZE = 1 << 20  # holds 64 KiB GSO frames many times over

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.rings: dict[str, Ring] = {}
        self.dedupe = Deduper()
        self.spool = (
            PacketSpool(config.spool_dir, max_bytes=config.spool_max_bytes) if config.spool_dir else None
        )
        hook = None
        if self.spool is not None:
            hook = self._spool_frame if config.frame_mask else self.spool.add
        self.accounting = (
            FlowAccounting(config.flow_interval_ns, config.flow_max_keys) if config.flow_interval_ns else None
        )
        self.engine = Engine(
            config.source, call_id=CallIds(config.node), on_frame=hook, accounting=self.accounting
        )
        self.flows: list[FlowAggregate] = []  # kept for `take_flows` when there is no on_flows
        self.flows_lost = 0  # aggregates dropped from `flows` because nobody took them
        self._filters: dict[int, list[tuple[int, int, int, int]] | None] = {}
        self._next_tick = 0
        self._closed_stats = {"packets": 0, "drops": 0}  # of rings closed since (interfaces gone)
        self.errors: list[str] = []  # the last few open failures, for stats
        self.tls: Any = None  # capture.tls.TlsCapture, after start_tls

    def start_tls(self) -> str | None:
        """Trace TLS plaintext (config.tls) from now on; one line saying why not, or None."""
        if not self.config.tls or self.tls is not None:
            return None
        from capture.tls import TlsCapture

        self.tls = TlsCapture(self.engine, own_pid=self.config.worker_pid)
        why = self.tls.start()
        if why is not None:
            self._error(why)
            log.warning("%s", why)
        return why

    # -- interfaces ------------------------------------------------------------------------------

    def open(self, ifname: str, group: int | None = None) -> str | None:
        """Start capturing on ``ifname`` (in PACKET_FANOUT group ``group`` when fanning out: the worker
        picks one group id per interface and has every process join it in process order, so a flow
        lands in the same process on every interface); returns why not (one line) or None."""
        if ifname in self.rings:
            return None
        try:
            ring = Ring(
                ifname,
                block_size=self.BLOCK_SIZE,
                blocks=max(4, self.config.ring_bytes // self.BLOCK_SIZE),
                bpf=self._filter if self.config.capture_filter else None,  # attached before binding
                fanout=(group, FANOUT_HASH) if group is not None else None,
            )
        except CaptureError as e:
            return self._error(f"{ifname}: {e}")
        except CaptureFilterError as e:
            return self._error(f"capture filter: {e}")
        self.rings[ifname] = ring
        return None

    def close_iface(self, ifname: str) -> None:
        ring = self.rings.pop(ifname, None)
        if ring is not None:
            try:
                s = ring.stats()
                self._closed_stats["packets"] += s.packets
                self._closed_stats["drops"] += s.drops
            except (CaptureError, OSError):
                pass  # the interface is gone: its last counters went with it
            ring.close()

    def _filter(self, linktype: int) -> list[tuple[int, int, int, int]] | None:
        if not self.config.capture_filter:
            return None
        if linktype not in self._filters:
            self._filters[linktype] = compile_filter(self.config.capture_filter, linktype)
        return self._filters[linktype]

    def _error(self, text: str) -> str:
        self.errors = ([*self.errors, text])[-8:]
        return text

    # -- packets ---------------------------------------------------------------------------------

    def _spool_frame(self, ts: int, linktype: int, frame: bytes, orig_len: int, flow_id: str) -> None:
        assert self.spool is not None and self.config.frame_mask is not None
        self.spool.add(ts, linktype, self.config.frame_mask(linktype, frame), orig_len, flow_id)

    def step(self, timeout: float) -> list[Call]:
        """Wait up to ``timeout`` s for packets, dissect what is ready; the calls finished meanwhile."""
        engine = self.engine
        out = engine.out
        also = self.tls.wakeup_fds() if self.tls is not None else ()
        if self.rings or also:
            duplicate = self.dedupe.duplicate
            packet = engine.packet
            for ring in wait(list(self.rings.values()), timeout, also):
                # a bounded share per ring and step: under load the calls, the idle sweep and the
                # stats still come out every few milliseconds instead of after a whole ring's backlog
                for ts, linktype, frame, orig_len in itertools.islice(ring.packets(), STEP_FRAMES):
                    if not duplicate(linktype, frame, ts):
                        packet(ts, linktype, frame, orig_len)
                if ring.error is not None:  # the interface was deleted: the re-scan may bring it back
                    log.info("%s", ring.error)
                    self.close_iface(ring.name)
        else:
            time.sleep(timeout)
        if self.tls is not None:
            self.tls.step()  # after the packets: a ClientHello captured meanwhile names the SNI
        now = time.time_ns()
        if now >= self._next_tick:
            self._next_tick = now + TICK_EVERY_NS
            engine.tick(now)
            if self.spool is not None:
                self.spool.flush()
        if self.accounting is not None and self.accounting.out:
            self._deliver_flows()
        calls = list(out)
        out.clear()
        return calls

    def _deliver_flows(self) -> None:
        """Hand finished aggregates to ``on_flows``, or keep them (bounded) for `take_flows`."""
        assert self.accounting is not None
        got = self.accounting.out
        self.accounting.out = []
        if self.config.on_flows is not None:
            self.config.on_flows(got)
            return
        self.flows.extend(got)
        over = len(self.flows) - MAX_KEPT_FLOWS
        if over > 0:
            del self.flows[:over]
            self.flows_lost += over

    def take_flows(self) -> list[FlowAggregate]:
        """The aggregates kept since the last call (only without ``on_flows``)."""
        got, self.flows = self.flows, []
        return got

    def finish(self) -> list[Call]:
        """End of capture: every open connection closed, its pending calls returned; rings closed."""
        for name in list(self.rings):
            self.close_iface(name)
        if self.tls is not None:
            self.tls.step()
            self.tls.close()
        self.engine.finish()
        if self.accounting is not None and self.accounting.out:
            self._deliver_flows()  # the last, partial interval
        calls = list(self.engine.out)
        self.engine.out.clear()
        if self.spool is not None:
            self.spool.close()
        return calls

    # -- health ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        packets = self._closed_stats["packets"]
        drops = self._closed_stats["drops"]
        per_if: dict[str, dict[str, int]] = {}
        for name, ring in self.rings.items():
            try:
                s = ring.stats()
            except (CaptureError, OSError):
                continue
            packets += s.packets
            drops += s.drops
            per_if[name] = {"packets": s.packets, "drops": s.drops, **ring.traffic()}
        return {
            "packets": packets,  # as the kernel counted them (before dedupe)
            "kernel_drops": drops,
            "interfaces": per_if,
            "dissected": self.engine.packets,
            "duplicates": self.dedupe.duplicates,
            "calls": self.engine.calls,
            "connections": len(self.engine.tcp),
            "buffered_bytes": self.engine.buffered_bytes(),
            "spool": self.spool.stats() if self.spool is not None else {},
            "errors": list(self.errors),
            **({"tls": self.tls.stats()} if self.tls is not None else {}),
            **({"flow_accounting": self._flow_stats()} if self.accounting is not None else {}),
        }

    def _flow_stats(self) -> dict[str, Any]:
        assert self.accounting is not None
        return {**self.accounting.stats(), "lost": self.flows_lost, "kept": len(self.flows)}
