"""Where a captured packet's time goes: the worker's per-packet path, stage by stage, in one process.

`worker_capture` gives the live figure (packets/s without drops); this benchmark says why it is what
it is. The HTTP/1.1 capture of `bench.traffic` is read into memory once, then pushed through the
capture thread's path with one more stage switched on per row, each row timed in the same run:

1. the engine alone (`dissect.engine.Engine.packet`: decode, TCP reassembly, HTTP/1 parsing, calls);
2. + dedupe (`capture.dedupe.Deduper`, before the engine as in `capture.pipeline`);
3. + packet spool (`capture.spool.PacketSpool.add` as the engine's frame hook, in a temporary dir);
4. + raw-frame redaction (`capture.redact.Redactor.frame` before the spool, the worker's default);
5. + the calls' path (`Redactor.call` and `Call.to_json_bytes`, what `Worker._on_calls` does before
   handing a call to the uplink).

Not included: reading the AF_PACKET ring, process identity, the uplink's thread and the hub — those
are in `worker_capture`'s live figure. Each row is the median wall time of ``runs`` passes (fresh
objects per pass); microseconds per packet = time / packets, packets/s = packets / time.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.http1_dissect import machine, podshark_revision
from bench.report import history_lines, keep, render_section
from bench.traffic import http1_capture
from capture.dedupe import Deduper
from capture.ids import CallIds
from capture.redact import DEFAULT_HEADERS, DEFAULT_JSON_KEYS, Redactor
from capture.spool import PacketSpool
from dissect.engine import Engine
from dissect.pcapio import read_packets

NAME = "worker_stages"
TITLE = "Worker per-packet cost by stage (offline, one process)"

Log = Callable[[str], None]
Packet = tuple[int, int, bytes, int]

STAGES = (
    ("engine", "engine alone"),
    ("dedupe", "+ dedupe"),
    ("spool", "+ packet spool"),
    ("frame", "+ raw-frame redaction"),
    ("calls", "+ call redaction and JSON"),
)


def one_pass(packets: list[Packet], stage: str, spool_dir: Path) -> tuple[float, int]:
    """Seconds to push ``packets`` through the path up to ``stage``; and the calls it made."""
    upto = [s for s, _ in STAGES].index(stage)
    red = Redactor(DEFAULT_HEADERS, DEFAULT_JSON_KEYS)
    spool = PacketSpool(spool_dir, max_bytes=256 << 20) if upto >= 2 else None
    hook: Callable[[int, int, bytes, int, str], None] | None = None
    if spool is not None and upto >= 3:
        add, mask = spool.add, red.frame

        def hook(ts: int, linktype: int, frame: bytes, orig_len: int, flow: str) -> None:
            add(ts, linktype, mask(linktype, frame), orig_len, flow)

    elif spool is not None:
        hook = spool.add
    engine = Engine("bench/run", call_id=CallIds("bench"), on_frame=hook)
    duplicate = Deduper().duplicate if upto >= 1 else None
    calls_path = upto >= 4
    out = engine.out
    made = 0
    gc.collect()
    gc.freeze()  # as the worker does at start
    t0 = time.perf_counter()
    for i, (ts, linktype, frame, orig_len) in enumerate(packets):
        if duplicate is None or not duplicate(linktype, frame, ts):
            engine.packet(ts, linktype, frame, orig_len)
        if not i & 4095:  # the pipeline hands calls over once per step
            if calls_path:
                for call in out:
                    red.call(call)
                    call.to_json_bytes()
            made += len(out)
            out.clear()
    engine.finish()
    made += len(out)
    if spool is not None:
        spool.close()
    elapsed = time.perf_counter() - t0
    gc.unfreeze()
    return elapsed, made


def measure(runs: int = 3, regen: bool = False, log: Log = print) -> dict[str, object]:
    cap = http1_capture(regen=regen, log=log)
    packets = list(read_packets(cap.pcap))
    old = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)  # the worker's setting
    times: dict[str, list[float]] = {s: [] for s, _ in STAGES}
    calls: dict[str, int] = {}
    try:
        for r in range(runs):  # interleaved, so a noisy moment hits every stage alike
            for stage, _ in STAGES:
                with tempfile.TemporaryDirectory(prefix="podshark-bench-") as tmp:
                    t, n = one_pass(packets, stage, Path(tmp))
                times[stage].append(t)
                calls[stage] = n
                log(f"bench: run {r + 1}/{runs} {stage}: {t:.2f} s, {len(packets) / t:,.0f} packets/s")
    finally:
        gc.set_threshold(*old)
    return {"capture": cap, "packets": len(packets), "times": times, "calls": calls}


def run(previous: str | None = None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    res = measure(runs=runs, regen=regen, log=log)
    n = int(res["packets"])  # type: ignore[call-overload]
    times: dict[str, list[float]] = res["times"]  # type: ignore[assignment]
    med = {s: statistics.median(t) for s, t in times.items()}
    m = machine()
    rows = [
        (
            "measured",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {podshark_revision()}, "
            f"{m['nproc']} CPUs ({m['cpu']}), load {m['load']}",
        ),
        ("capture", f"{Path(res['capture'].path).name}: {n:,} packets, {res['calls']['calls']:,} calls"),  # type: ignore[attr-defined,index]
        (
            "whole path",
            f"**{med['calls'] / n * 1e6:.1f} µs per packet, {n / med['calls']:,.0f} packets/s** on one core "
            f"({med['calls'] / med['engine']:.2f}x the engine alone)",
        ),
    ]
    table = [
        "| stages | µs per packet | packets/s | this stage adds |",
        "|---|---|---|---|",
    ]
    prev = 0.0
    for stage, label in STAGES:
        us = med[stage] / n * 1e6
        table.append(f"| {label} | {us:.1f} | {n / med[stage]:,.0f} | {us - prev:+.1f} µs |")
        prev = us
    summary = (
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {podshark_revision()}: engine "
        f"{med['engine'] / n * 1e6:.1f} µs/packet, whole path {med['calls'] / n * 1e6:.1f} µs/packet "
        f"({n / med['calls']:,.0f} packets/s)"
    )
    intro = (
        f"`python -m bench {NAME}`. The HTTP/1.1 capture pushed from memory through the capture thread's "
        "per-packet path, one more stage per row, median of the runs, all in one run (see the module "
        "docstring). Ring reading, process identity, the uplink and the hub are not in these figures; "
        "`worker_capture` has the live ones."
    )
    return render_section(f"## {TITLE}", intro, rows, keep(history_lines(previous), summary), tables=table)
