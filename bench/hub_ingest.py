"""Hub ingest throughput: `Store.add` alone, and end to end through the ingest WebSocket.

- **store alone**: `Store.add` on a fresh store directory (real DuckDB files), fed the realistic calls
  of `bench.hub_calls` in batches of `BATCH` calls (what the hub's writer gathers in about a second at
  the target rate: it commits once a second or at `Writer.max_calls`, 20,000), each batch stamped one
  second after the previous one, as the writer does. rows/s = calls / wall-clock seconds of all the
  `add` calls; the CPU time of the process (every thread, DuckDB's included) is shown beside it.
- **end to end**: a real `podshark hub` process on loopback with a token and its default writer
  settings; `CLIENTS` concurrent WebSocket clients in this process (asyncio + aiohttp, like a few node
  workers) each send `hello` and then `calls` messages of `FRAME_CALLS` calls with sequence numbers,
  keeping at most `WINDOW` unacknowledged messages in flight. The messages are encoded before the clock
  starts, so the clients cost little CPU while timed (they still share the machine's 2 cores with the
  hub). calls/s = calls acknowledged / seconds from the first send to the last ack; an ack means the
  calls are committed (they survive `kill -9`). The hub's CPU time over that interval comes from
  /proc. After the run the hub is stopped and the store reopened to count the stored calls: every
  call sent must be there, once.

Targets (from the issue): at least 50,000 rows/s into the store alone and 20,000 calls/s end to end.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.http1_dissect import machine, podshark_revision
from bench.hub_calls import TOKEN, HubProcess, realistic_calls
from bench.report import history_lines, keep, previous_figure, render_section, vs_previous
from dissect.model import Call
from hub.store import SECOND, Store

NAME = "hub_ingest"
TITLE = "Hub ingest throughput (Store.add alone, and end to end through the ingest WebSocket)"

STORE_CALLS = 200_000
BATCH = 20_000
E2E_CLIENTS = 4
FRAME_CALLS = 1_000
FRAMES_PER_CLIENT = 80
WINDOW = 16
STORE_TARGET = 50_000
E2E_TARGET = 20_000
BASE_TS = 1_795_000_000 * SECOND  # 2026-11-18T09:46:40Z: any fixed time will do

Log = Callable[[str], None]


@dataclass
class StoreResult:
    calls: int
    batch: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    bytes_on_disk: int = 0

    @property
    def rate(self) -> float:
        return self.calls / statistics.median(self.wall)

    @property
    def best_rate(self) -> float:
        return self.calls / min(self.wall)

    @property
    def cpu_rate(self) -> float:
        return self.calls / statistics.median(self.cpu)


def measure_store(runs: int, log: Log) -> StoreResult:
    """`Store.add` in writer-sized batches on a fresh store, `runs` times over the same calls."""
    log(f"bench {NAME}: making {STORE_CALLS:,} calls")
    calls = realistic_calls(STORE_CALLS, BASE_TS, 5_000_000, seed=7)
    res = StoreResult(STORE_CALLS, BATCH)
    for r in range(runs):
        with tempfile.TemporaryDirectory(prefix="podshark-bench-store-") as d:
            store = Store(Path(d))
            try:
                w0, c0 = time.perf_counter(), time.process_time()
                for k in range(0, len(calls), BATCH):
                    store.add(calls[k : k + BATCH], BASE_TS + (k // BATCH + 1) * SECOND)
                res.wall.append(time.perf_counter() - w0)
                res.cpu.append(time.process_time() - c0)
                stored = store.count()
                if stored != len(calls):
                    raise RuntimeError(f"store alone: {stored} calls stored of {len(calls)}")
                store.close()  # checkpoint: the size the data keeps
                res.bytes_on_disk = sum(p.stat().st_size for p in Path(d).iterdir())
            finally:
                store.close()
        log(f"bench {NAME}: store alone run {r + 1}/{runs}: {STORE_CALLS / res.wall[-1]:,.0f} rows/s")
    return res


@dataclass
class E2EResult:
    calls: int
    clients: int
    frame_calls: int
    window: int
    seconds: float = 0.0
    hub_cpu: float = 0.0
    acked: int = 0
    rejected: int = 0
    stored: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds else 0.0


def _frames(client: int) -> list[str]:
    """The `calls` messages of one client, encoded (seq 1, 2, ...)."""
    n = FRAME_CALLS * FRAMES_PER_CLIENT
    calls: list[Call] = realistic_calls(n, BASE_TS, 4_000_000, seed=100 + client, prefix=f"e2e{client}")
    out = []
    for seq, k in enumerate(range(0, n, FRAME_CALLS), 1):
        body = b",".join(c.to_json_bytes() for c in calls[k : k + FRAME_CALLS])
        out.append((b'{"type":"calls","seq":%d,"calls":[' % seq + body + b"]}").decode())
    return out


async def _client(url: str, client: int, frames: list[str], res: E2EResult, marks: list[float]) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}"}
    sem = asyncio.Semaphore(WINDOW)
    pending = set(range(1, len(frames) + 1))
    done = asyncio.Event()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url + "/api/v1/ingest", headers=headers, max_msg_size=0) as ws,
    ):

        async def read() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                m = json.loads(msg.data)
                if m.get("type") == "ack" and m.get("seq") in pending:
                    pending.discard(m["seq"])
                    res.acked += m.get("calls", 0)
                    res.rejected += m.get("rejected", 0)
                    marks.append(time.perf_counter())
                    sem.release()
                    if not pending:
                        done.set()
                        return
                elif m.get("type") == "error":
                    res.errors.append(str(m.get("error"))[:200])
            done.set()

        reader = asyncio.get_running_loop().create_task(read())
        await ws.send_str(json.dumps({"type": "hello", "worker": f"bench-{client}", "capabilities": []}))
        for frame in frames:
            await sem.acquire()
            if not marks:
                marks.append(time.perf_counter())  # the first send
            await ws.send_str(frame)
        await done.wait()
        reader.cancel()
        if pending:
            raise RuntimeError(f"client {client}: {len(pending)} messages never acknowledged")


async def _drive(url: str, frames: list[list[str]], res: E2EResult) -> tuple[float, float]:
    marks: list[float] = []
    await asyncio.gather(*(_client(url, k, f, res, marks) for k, f in enumerate(frames)))
    return marks[0], max(marks)


def measure_e2e(log: Log) -> E2EResult:
    """One end-to-end run against a fresh hub process."""
    total = E2E_CLIENTS * FRAMES_PER_CLIENT * FRAME_CALLS
    log(f"bench {NAME}: encoding {total:,} calls for {E2E_CLIENTS} clients")
    frames = [_frames(k) for k in range(E2E_CLIENTS)]
    res = E2EResult(total, E2E_CLIENTS, FRAME_CALLS, WINDOW)
    with tempfile.TemporaryDirectory(prefix="podshark-bench-e2e-") as d:
        db = Path(d) / "db"
        with HubProcess(db, Path(d) / "hub.log") as hub:
            cpu0 = hub.cpu_seconds()
            first, last = asyncio.run(_drive(hub.url, frames, res))
            res.hub_cpu = hub.cpu_seconds() - cpu0
            res.seconds = last - first
            hub.stop()
        with Store(db) as store:
            res.stored = store.count()
    log(f"bench {NAME}: end to end: {res.rate:,.0f} calls/s, {res.stored:,} stored")
    if res.stored != total or res.acked != total:
        raise RuntimeError(
            f"end to end: {res.acked:,} acked, {res.stored:,} stored of {total:,}: {res.errors[:3]}"
        )
    return res


# ---------------------------------------------------------------------------------------- rendering


def _verdict(value: float, target: float) -> str:
    return f"target ≥ {target:,.0f}: {'met' if value >= target else 'NOT met'}"


def _vs(value: float, old: list[str], label: str) -> str:
    return vs_previous(value, previous_figure(old, label), first=" (first measurement)")


def render(store: StoreResult, e2e: E2EResult, when: str, revision: str, previous: str | None) -> str:
    m = machine()
    old = history_lines(previous)
    per_call_us = e2e.hub_cpu / e2e.acked * 1e6 if e2e.acked else 0.0
    rows = [
        ("date", when),
        (
            "machine",
            f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']} (load average {m['load']} at start)",
        ),
        ("podshark revision", revision),
        (
            "store alone (`Store.add`)",
            f"**{store.rate:,.0f} rows/s** (median of {len(store.wall)} runs of {store.calls:,} calls in "
            f"batches of {store.batch:,}; best {store.best_rate:,.0f}; by CPU time {store.cpu_rate:,.0f}) — "
            f"{_verdict(store.rate, STORE_TARGET)}",
        ),
        (
            "store alone on disk",
            f"{store.bytes_on_disk / store.calls:.0f} B/call after the closing checkpoint",
        ),
        (
            "end to end (ingest WebSocket)",
            f"**{e2e.rate:,.0f} calls/s** ({e2e.acked:,} calls acknowledged in {e2e.seconds:.2f} s; "
            f"{e2e.clients} clients, messages of {e2e.frame_calls:,} calls, {e2e.window} in flight each) — "
            f"{_verdict(e2e.rate, E2E_TARGET)}",
        ),
        (
            "hub CPU, end to end",
            f"{e2e.hub_cpu:.2f} s over {e2e.seconds:.2f} s "
            f"({e2e.hub_cpu / e2e.seconds * 100:.0f}% of one core; {per_call_us:.1f} µs per call)",
        ),
        (
            "stored after the run",
            f"{e2e.stored:,} of {e2e.calls:,} (reopened and counted); {e2e.rejected} rejected",
        ),
    ]
    line = (
        f"- {when} ({revision}): store {store.rate:,.0f} rows/s{_vs(store.rate, old, 'store')}; "
        f"end to end {e2e.rate:,.0f} calls/s{_vs(e2e.rate, old, 'end to end')}"
    )
    history = keep(old, line)
    return render_section(
        f"## {NAME}: {TITLE}",
        (
            f"Store alone: `Store.add` of realistic calls (`bench/hub_calls.py`: headers, small JSON bodies, "
            f"identity filled) in batches of {store.batch:,}, a fresh store directory per run. End to end: "
            f"a real `podshark hub` process on loopback with a token; {e2e.clients} WebSocket clients send "
            f"`calls` messages with sequence numbers and count acknowledged calls from the first send to the "
            f"last ack (an ack follows the commit). Made by `python -m bench {NAME}`; see `bench/README.md`."
        ),
        rows,
        history,
    )


def run(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """``python -m bench hub_ingest``."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    revision = podshark_revision()
    store = measure_store(runs, log)
    e2e = measure_e2e(log)
    print(
        f"{NAME}: store alone {store.rate:,.0f} rows/s (best {store.best_rate:,.0f}, "
        f"CPU {store.cpu_rate:,.0f}); end to end {e2e.rate:,.0f} calls/s, "
        f"hub CPU {e2e.hub_cpu:.1f} s over {e2e.seconds:.1f} s",
        flush=True,
    )
    return render(store, e2e, when, revision, previous_section)


if __name__ == "__main__":
    print(run(None, runs=1))
