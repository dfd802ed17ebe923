"""What flow accounting costs per packet: the engine with and without it, on cached captures of real traffic.

Flow accounting (`dissect.flowstats`, `Engine(accounting=...)`) adds, per frame of a flow, two list
increments on the engine's path, and per flow per interval one fold. This benchmark pushes two cached
captures from memory through the engine four ways, interleaved, median of the runs:

- ``file``: `Engine.run`, as `podshark dissect` and `import` do (accounting off: the inlined path),
- ``file + accounting``: the same with accounting on (every frame through `Engine._frame`),
- ``worker``: `Engine.packet` per frame with a frame hook (the worker's path; the hook does nothing,
  so the packet spool's own cost is not in the figure: `worker_stages` has it),
- ``worker + accounting``: the same with accounting on, as `podshark worker` runs by default.

The ratio that answers "what does accounting cost the worker" is ``worker + accounting`` over
``worker``; ``file + accounting`` over ``file`` says what turning it on for a file would cost.
Captures: the HTTP/1.1 one of `bench.traffic` (few long keep-alive connections: the per-packet cost)
and the DNS one of `bench.dns_kafka_dissect` (UDP and many short TCP connections: per-flow costs too).
Both wall-clock and CPU time are kept; the ratios use CPU time, which a busy machine disturbs less.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.dns_kafka_dissect import dns_capture
from bench.http1_dissect import machine, podshark_revision
from bench.report import history_lines, keep, previous_figure, render_section, vs_previous
from bench.traffic import http1_capture
from dissect.engine import Engine
from dissect.flowstats import FlowAccounting
from dissect.pcapio import read_packets

NAME = "flow_accounting"
TITLE = "Flow accounting: per-packet cost on the engine (offline, one process)"

Log = Callable[[str], None]
Packet = tuple[int, int, bytes, int]
MODES = ("file", "file + accounting", "worker", "worker + accounting")


def _hook(ts: int, linktype: int, frame: bytes, orig_len: int, flow_id: str) -> None:
    """The worker's frame hook, minus the spool: what the engine pays to call it."""


def one_pass(packets: list[Packet], mode: str) -> tuple[float, float, int]:
    """(wall s, CPU s, aggregates made) for ``packets`` through the engine in ``mode``."""
    acct = FlowAccounting() if mode.endswith("accounting") else None
    engine = Engine("bench/flows", accounting=acct, on_frame=_hook if mode.startswith("worker") else None)
    out = engine.out
    gc.collect()
    gc.freeze()
    t0, c0 = time.perf_counter(), time.process_time()
    if mode.startswith("file"):
        for _call in engine.run(packets):
            pass
    else:
        packet = engine.packet
        for i, (ts, linktype, frame, wire) in enumerate(packets):
            packet(ts, linktype, frame, wire)
            if not i & 4095:  # the pipeline takes the calls once per step
                out.clear()
        engine.finish()
        out.clear()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.unfreeze()
    return wall, cpu, len(acct.out) if acct is not None else 0


def measure(runs: int = 3, regen: bool = False, log: Log = print) -> dict[str, dict[str, object]]:
    captures = {
        "http1": http1_capture(regen=regen, log=log).pcap,
        "dns": Path(dns_capture(regen=regen, log=log).path),
    }
    old = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)  # the worker's setting
    results: dict[str, dict[str, object]] = {}
    try:
        for name, path in captures.items():
            packets = list(read_packets(path))
            wall: dict[str, list[float]] = {m: [] for m in MODES}
            cpu: dict[str, list[float]] = {m: [] for m in MODES}
            aggs = 0
            for r in range(runs):  # interleaved: a noisy moment hits every mode alike
                for mode in MODES:
                    w, c, n = one_pass(packets, mode)
                    wall[mode].append(w)
                    cpu[mode].append(c)
                    aggs = max(aggs, n)
                    rate = len(packets) / w
                    log(f"bench: {name} run {r + 1}/{runs} {mode}: {w:.2f} s, {rate:,.0f} packets/s")
            results[name] = {
                "path": path,
                "packets": len(packets),
                "wall": wall,
                "cpu": cpu,
                "aggregates": aggs,
            }
    finally:
        gc.set_threshold(*old)
    return results


def run(previous: str | None = None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    res = measure(runs=runs, regen=regen, log=log)
    m = machine()
    rows = [
        (
            "measured",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {podshark_revision()}, "
            f"{m['nproc']} CPUs ({m['cpu']}), load {m['load']}, median of {runs} runs",
        )
    ]
    table = [
        "| capture | mode | µs per packet (wall) | µs per packet (CPU) | packets/s | vs without (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    ratios: dict[str, float] = {}
    for name, r in res.items():
        n = int(r["packets"])  # type: ignore[call-overload]
        wall: dict[str, list[float]] = r["wall"]  # type: ignore[assignment]
        cpu: dict[str, list[float]] = r["cpu"]  # type: ignore[assignment]
        mw = {k: statistics.median(v) for k, v in wall.items()}
        mc = {k: statistics.median(v) for k, v in cpu.items()}
        ratios[f"{name} worker"] = mc["worker + accounting"] / mc["worker"]
        ratios[f"{name} file"] = mc["file + accounting"] / mc["file"]
        rows.append(
            (
                f"capture {name}",
                f"{Path(str(r['path'])).name}: {n:,} packets, {r['aggregates']:,} aggregates (10 s each)",
            )
        )
        for mode in MODES:
            base = "worker" if mode.startswith("worker") else "file"
            vs = f"{mc[mode] / mc[base]:.3f}x" if mode != base else "—"
            table.append(
                f"| {name} | {mode} | {mw[mode] / n * 1e6:.2f} | {mc[mode] / n * 1e6:.2f} | "
                f"{n / mw[mode]:,.0f} | {vs} |"
            )
    old = history_lines(previous)
    prev = previous_figure(old, "worker")
    worker = ratios["http1 worker"]
    rows.append(
        (
            "what accounting costs the worker",
            f"**{(worker - 1) * 100:+.1f}% CPU per packet on HTTP/1.1, "
            f"{(ratios['dns worker'] - 1) * 100:+.1f}% on DNS**{vs_previous(worker, prev)}",
        )
    )
    rows.append(
        (
            "turned on for a file",
            f"{(ratios['http1 file'] - 1) * 100:+.1f}% (HTTP/1.1), {(ratios['dns file'] - 1) * 100:+.1f}% "
            "(DNS): the frame-by-frame path instead of `run`'s inlined loop, plus the counting",
        )
    )
    summary = (
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {podshark_revision()}: worker "
        f"{worker:.3f} (http1), {ratios['dns worker']:.3f} (dns); file {ratios['http1 file']:.3f}, "
        f"{ratios['dns file']:.3f}"
    )
    intro = (
        f"`python -m bench {NAME}`. Two cached captures pushed from memory through the engine with and "
        "without flow accounting, in the file path (`Engine.run`) and the worker's path (`Engine.packet` "
        "with a frame hook), interleaved (see the module docstring). Ratios are of CPU time."
    )
    return render_section(f"## {TITLE}", intro, rows, keep(old, summary), tables=table)
