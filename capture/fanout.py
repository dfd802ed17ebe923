"""`--procs N`: the capture spread over N processes by PACKET_FANOUT, with the results of one process.

Each process runs its own `Pipeline` (rings, dedupe, engine, spool). On every interface the N rings
join one PACKET_FANOUT_HASH group, and the kernel hands each packet to one member by a symmetric hash
of its flow (both directions of a connection hash alike), with IP fragments reassembled first
(PACKET_FANOUT_FLAG_DEFRAG) so they hash with their flow. The member is picked by position in the
group, so for a packet seen on two interfaces (both ends of a connection on this node) to reach the
same process twice — where dedupe drops the copy — every group must list the processes in the same
order: the parent has process 0 join an interface's group first, waits until it has, then process 1,
and so on, for every interface, including ones that appear later.

Children talk to the parent over a duplex pipe:

    parent -> child: ("open", ifname, group) | ("close", ifname) | ("stop",)
    child -> parent: ("opened", ifname, error | None) | ("calls", [Call JSON bytes]) | ("stats", {...})
                     | ("flows", [FlowAggregate JSON bytes]) | ("stopped",)

Calls cross as JSON (the record's own wire form); the parent adds process identity, redacts and
uplinks them. Flow aggregates (with accounting on) cross the same way to the worker's ``on_flows``;
each process folds only the flows the kernel gave it, so the keys of several processes add up at the
hub like any late row. A child that dies is reported in the stats (its interfaces' packets stop being
counted there); the worker exits non-zero so its supervisor (the DaemonSet) restarts it whole,
because a group with a member missing would split flows differently from then on.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import secrets
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from capture.backend import STATS_EVERY, OnCalls
from capture.pipeline import Pipeline, PipelineConfig
from dissect.flowstats import FlowAggregate
from dissect.model import Call

log = logging.getLogger("podshark.capture")

BATCH_CALLS = 500


def _child(conn: Connection, config: PipelineConfig) -> None:
    """A fan-out process: commands in, calls and stats out, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (and flushes us)
    pipe = Pipeline(config)
    pipe.start_tls()
    next_stats = 0.0
    try:
        while True:
            while conn.poll(0):
                msg = conn.recv()
                if msg[0] == "open":
                    conn.send(("opened", msg[1], pipe.open(msg[1], msg[2])))
                elif msg[0] == "close":
                    pipe.close_iface(msg[1])
                elif msg[0] == "stop":
                    conn.send(("stats", pipe.stats()))
                    _send_calls(conn, pipe.finish())
                    _send_flows(conn, pipe)
                    conn.send(("stopped",))
                    return
            _send_calls(conn, pipe.step(0.05))
            _send_flows(conn, pipe)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_EVERY
                conn.send(("stats", pipe.stats()))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent is gone: nothing to deliver to


def _send_calls(conn: Connection, calls: list[Call]) -> None:
    for k in range(0, len(calls), BATCH_CALLS):
        conn.send(("calls", [c.to_json_bytes() for c in calls[k : k + BATCH_CALLS]]))


def _send_flows(conn: Connection, pipe: Pipeline) -> None:
    """The aggregates the child's pipeline kept (it has no ``on_flows``: the parent has)."""
    flows = pipe.take_flows()
    for k in range(0, len(flows), BATCH_CALLS):
        conn.send(("flows", [a.to_json_bytes() for a in flows[k : k + BATCH_CALLS]]))


class Fanout:
    """N capture processes sharing every interface by flow hash (see the module docstring)."""

    def __init__(self, config: PipelineConfig, procs: int) -> None:
        if procs < 2:
            raise ValueError("fan-out needs at least 2 processes")
        self.config = config
        self.procs = procs
        self._ctx = mp.get_context("spawn")  # no inherited threads or event loops
        self._children: list[tuple[Any, Connection]] = []
        self._stats: list[dict[str, Any]] = [{} for _ in range(procs)]
        self._opened: dict[tuple[int, str], tuple[threading.Event, list[str | None]]] = {}
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()  # one interface joined at a time: the order is the point
        self._on_calls: OnCalls = lambda calls: None
        self._reader: threading.Thread | None = None
        self._stopped = 0
        self._dead: list[int] = []
        self._groups: dict[str, int] = {}

    def start(self, on_calls: OnCalls) -> None:
        self._on_calls = on_calls
        for k in range(self.procs):
            parent, child = self._ctx.Pipe(duplex=True)
            cfg = PipelineConfig(
                node=self.config.node,
                run=self.config.run,
                spool_dir=(self.config.spool_dir.parent / str(k)) if self.config.spool_dir else None,
                spool_max_bytes=self.config.spool_max_bytes // self.procs,
                capture_filter=self.config.capture_filter,
                fanout=True,
                index=k,
                ring_bytes=self.config.ring_bytes,
                frame_mask=self.config.frame_mask,
                tls=self.config.tls and k == 0,  # one tracer per node: the first process feeds it
                worker_pid=self.config.worker_pid,
                flow_interval_ns=self.config.flow_interval_ns,
                flow_max_keys=self.config.flow_max_keys,  # on_flows stays None: flows come back here
            )
            proc = self._ctx.Process(
                target=_child, args=(child, cfg), name=f"podshark-capture-{k}", daemon=True
            )
            proc.start()
            child.close()
            self._children.append((proc, parent))
        self._reader = threading.Thread(target=self._read, name="podshark-fanout", daemon=True)
        self._reader.start()

    def open(self, ifname: str) -> str | None:
        with self._open_lock:
            group = self._groups.get(ifname)
            if group is None:
                group = self._groups[ifname] = self._new_group()
            for k, (_proc, conn) in enumerate(self._children):
                done = threading.Event()
                box: list[str | None] = [None]
                with self._lock:
                    self._opened[(k, ifname)] = (done, box)
                try:
                    conn.send(("open", ifname, group))
                except (BrokenPipeError, OSError):
                    return f"{ifname}: capture process {k} is gone"
                if not done.wait(10):
                    return f"{ifname}: capture process {k} did not answer"
                if box[0] is not None:
                    for _p, c in self._children[:k]:
                        c.send(("close", ifname))
                    return box[0]
            return None

    def _new_group(self) -> int:
        used = set(self._groups.values())
        while True:
            g = secrets.randbelow(0xFFFF) + 1
            if g not in used:
                return g

    def close(self, ifname: str) -> None:
        with self._open_lock:
            self._groups.pop(ifname, None)
            for _proc, conn in self._children:
                try:
                    conn.send(("close", ifname))
                except (BrokenPipeError, OSError):
                    pass

    def stats(self) -> dict[str, Any]:
        with self._lock:
            parts = [dict(s) for s in self._stats]
            dead = list(self._dead)
        merged: dict[str, Any] = {"procs": self.procs, "dead_procs": dead, "per_proc": parts}
        for key in (
            "packets",
            "kernel_drops",
            "dissected",
            "duplicates",
            "calls",
            "connections",
            "buffered_bytes",
        ):
            merged[key] = sum(int(p.get(key, 0)) for p in parts)
        interfaces: dict[str, dict[str, int]] = {}
        for p in parts:
            for name, s in p.get("interfaces", {}).items():
                d = interfaces.setdefault(name, {})
                for counter, value in s.items():  # packets, drops and the rx/tx traffic counters
                    if isinstance(value, int):
                        d[counter] = d.get(counter, 0) + value
        merged["interfaces"] = interfaces
        accounting = [p["flow_accounting"] for p in parts if isinstance(p.get("flow_accounting"), dict)]
        if accounting:  # counters add up; the settings (interval, key cap per process) are shared
            merged["flow_accounting"] = {
                k: v if k in ("interval_s", "max_keys") else sum(int(a.get(k, 0)) for a in accounting)
                for k, v in accounting[0].items()
            }
        merged["errors"] = [e for p in parts for e in p.get("errors", [])][-8:]
        tls = next((p["tls"] for p in parts if "tls" in p), None)  # only the first process traces
        if tls is not None:
            merged["tls"] = tls
        return merged

    def stop(self) -> None:
        for _proc, conn in self._children:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        if self._reader is not None:
            self._reader.join(timeout=30)
        for proc, conn in self._children:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()

    def _read(self) -> None:
        """Everything the children say, on one thread: calls to the worker, stats, open replies."""
        conns = {conn: k for k, (_proc, conn) in enumerate(self._children)}
        live = set(conns)
        while live:
            ready = cast(list[Connection], wait(list(live), timeout=1.0))
            for conn in ready:
                k = conns[conn]
                try:
                    msg: tuple[Any, ...] = conn.recv()
                except (EOFError, OSError):
                    live.discard(conn)
                    with self._lock:
                        if k not in self._dead and self._stopped < self.procs:
                            self._dead.append(k)
                            log.error("capture process %d (pid %s) died", k, self._children[k][0].pid)
                    continue
                kind = msg[0]
                if kind == "calls":
                    self._on_calls([Call.from_json(b) for b in msg[1]])
                elif kind == "flows":
                    if self.config.on_flows is not None:
                        self.config.on_flows([FlowAggregate.from_json(b) for b in msg[1]])
                elif kind == "stats":
                    with self._lock:
                        self._stats[k] = msg[1]
                elif kind == "opened":
                    with self._lock:
                        waiter = self._opened.pop((k, msg[1]), None)
                    if waiter is not None:
                        waiter[1][0] = msg[2]
                        waiter[0].set()
                elif kind == "stopped":
                    live.discard(conn)
                    with self._lock:
                        self._stopped += 1

    @property
    def dead(self) -> list[int]:
        with self._lock:
            return list(self._dead)


def default_procs() -> int:
    """One process per core beyond the first (the first is the worker's own: uplink, identity)."""
    return max(1, (os.cpu_count() or 1) - 1)
