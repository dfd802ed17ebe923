"""Hub aggregates: query time of a 30-day window, the file's size, and the cost per call at ingest.

- **The files** (`hub/aggregates.py`'s layout, made once and cached in
  ``bench/out/hub-aggregates-<version>-<variant>/``; ``--regen`` makes them again, and so does a
  change of the layout), two of the same month: *by minute* (the roll-up off, every row a minute)
  and *rolled up* (the hub's default: the minutes of hours older than two days folded into hour
  rows, done by opening the file with `Aggregates`, as a hub does at start). Each file is then
  copied into a fresh one (the bulk write and the roll-up leave free blocks a running hub would
  reuse), so its size is the data's. `PAIRS` workload pairs
  (client workload -> server workload, HTTP, gRPC and Kafka) with traffic every minute for `DAYS`
  days: `PAIRS` x `DAYS` x 1440 minute rows, as a hub that kept a busy cluster's aggregates for a
  month holds them. The edges are numbered through the real API (`Aggregates.prepare_flows` /
  `add_flows`, then `close`, which folds them into `minutes`); the month of rows is then written in
  bulk by DuckDB (`INSERT ... SELECT ... FROM range()`), each row made from hashes of (pair,
  minute): 20-400 calls a minute with the pair's own rate, 1-3 % errors (5xx, or gRPC/Kafka
  `error`), a latency histogram over six buckets around the pair's own median (0.2-40 ms), bytes
  and packets both ways, connections opened, closed and active, resets, retransmissions, handshake
  RTT and durations.
- **Measured**, through `Aggregates` on each file (what `GET /api/v1/map` runs), each after one
  untimed warm-up, `3 * runs` times, median and best: `edges()` over the whole 30 days, over the last
  24 hours and over the last 15 minutes (the map's default); `pods()` over 30 days. Sanity: the calls
  `edges()` sums over 30 days equal DuckDB's own `sum(calls)` of the file's rows.
- **Per call at ingest**: `Aggregates.add_calls` (the writer's listener: node look-ups, a dict update,
  the histogram bucket) on `CALLS` realistic calls (`bench.hub_calls`) started over 10 s (20,000
  calls a second, the hub's ingest target), in batches of 20,000 (the writer's), µs per call,
  median of `runs`; then the flush of the minute rows they fill. For scale: the
  hub spends ~45 µs of CPU per call end to end (`hub_ingest`).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from bench.http1_dissect import machine, podshark_revision
from bench.hub_calls import REPO, realistic_calls
from bench.report import history_lines, keep, previous_figure, render_section, vs_previous
from dissect.model import Endpoint
from hub.aggregates import (
    COLUMNS,
    DEFAULT_ROLLUP_AFTER_NS,
    FILE_NAME,
    HIST,
    LATENCY_BOUNDS_NS,
    LAYOUT,
    MINUTE_NS,
    Aggregates,
    FlowRecord,
)

NAME = "hub_aggregates"
TITLE = "Hub aggregates: 30-day query time, file size, cost per call"

VERSION = f"v3-l{LAYOUT}-h{len(HIST)}"  # part of the cached directory name: bump when the rows change
OUT_DIR = REPO / "bench" / "out"
PAIRS = 200
DAYS = 30
MINUTES = DAYS * 1440
SECOND = 1_000_000_000
DAY = 86_400 * SECOND
END_NS = 1_795_000_000 * SECOND - (1_795_000_000 * SECOND) % MINUTE_NS  # 2026-11-18: any minute will do
FIRST_MINUTE = END_NS // MINUTE_NS - MINUTES
CALLS = 200_000
BATCH = 20_000
SPAN_NS = 10 * SECOND  # the calls' start times: 20,000 calls a second, the hub's ingest target
SPREAD = (5, 20, 40, 20, 10, 5)  # % of a minute's calls in the buckets around the pair's median

Log = Callable[[str], None]


def _clock() -> int:
    return END_NS


#: (label, roll-up age): the roll-up off (longer than the data), and the hub's default
VARIANTS = (("by minute", (DAYS + 1) * DAY), ("rolled up", DEFAULT_ROLLUP_AFTER_NS))


@dataclass
class FileInfo:
    path: Path
    rows: int  # minute and hour rows
    calls: int
    bytes_on_disk: int
    seconds_to_make: float
    rollup_after_ns: int


def _pairs() -> list[tuple[Endpoint, Endpoint, str]]:
    """PAIRS (client, server, protocol): 40 namespaces' worth of workloads calling each other."""
    out = []
    for p in range(PAIRS):
        ns_c, ns_s = f"ns{p % 40}", f"ns{(p * 7 + 3) % 40}"
        client = Endpoint(ip=f"10.{p % 200}.1.{p % 250}", namespace=ns_c, workload=f"Deployment/client-{p}")
        server = Endpoint(
            ip=f"10.{p % 200}.2.{p % 250}", port=8080, namespace=ns_s, workload=f"Deployment/svc-{p % 90}"
        )
        out.append((client, server, ("http", "http", "grpc", "kafka")[p % 4]))
    return out


def _value_sql(p: str, m: str, salt: int, mod: int) -> str:
    """A pseudo-random integer in [0, mod) from (pair, minute)."""
    return f"CAST(hash({p} * 100003 + {m} * 7 + {salt}) % {mod} AS BIGINT)"


def _row_sql() -> str:
    """The SELECT list of one minute row from `p` (pair = series id) and `m` (minute)."""
    calls = f"(20 + (p * 37) % 361 + {_value_sql('p', 'm', 1, 40)})"  # each pair its own rate
    errors = f"(({calls}) * (1 + {_value_sql('p', 'm', 2, 3)}) // 100)"
    http = "(p % 4 < 2)"
    center = "(17 + (p * 11) % 24)"  # the bucket of the pair's median: 0.2 ms .. 40 ms
    cols: dict[str, str] = dict.fromkeys(COLUMNS, "0")
    cols["calls"] = calls
    cols["c_2xx"] = f"CASE WHEN {http} THEN {calls} - {errors} ELSE 0 END"
    cols["c_5xx"] = f"CASE WHEN {http} THEN {errors} ELSE 0 END"
    cols["c_ok"] = f"CASE WHEN {http} THEN 0 ELSE {calls} - {errors} END"
    cols["c_error"] = f"CASE WHEN {http} THEN 0 ELSE {errors} END"
    cols["latency_count"] = calls
    cols["latency_sum_ns"] = f"CAST({calls} * 4096 * pow(2, ({center} - 0.5) / 3.0) AS BIGINT)"
    # the buckets center-2 .. center+3 get SPREAD percent of the calls; the middle one the rest
    shares = [f"({calls}) * {pct} // 100" for pct in SPREAD]
    shares[2] = f"({calls}) - ({calls}) * {100 - SPREAD[2]} // 100"
    for h in range(len(HIST)):
        cases = " ".join(f"WHEN {center} + {k - 2} = {h} THEN {share}" for k, share in enumerate(shares))
        cols[f"h{h}"] = f"CASE {cases} ELSE 0 END"
    cols["bytes_cs"] = f"{calls} * 420 + {_value_sql('p', 'm', 3, 5000)}"
    cols["bytes_sc"] = f"{calls} * 2600 + {_value_sql('p', 'm', 4, 50000)}"
    cols["packets_cs"] = f"{calls} * 2 + {_value_sql('p', 'm', 5, 10)}"
    cols["packets_sc"] = f"{calls} * 3 + {_value_sql('p', 'm', 6, 10)}"
    cols["opened"] = f"{calls} // 25 + {_value_sql('p', 'm', 7, 3)}"
    cols["closed"] = f"{calls} // 25 + {_value_sql('p', 'm', 8, 3)}"
    cols["active_max"] = f"5 + p % 20 + {_value_sql('p', 'm', 9, 4)}"
    cols["resets"] = f"CASE WHEN {_value_sql('p', 'm', 10, 17)} = 0 THEN 1 ELSE 0 END"
    cols["retrans_cs"] = _value_sql("p", "m", 11, 3)
    cols["retrans_sc"] = _value_sql("p", "m", 12, 5)
    cols["rtt_count"] = f"{calls} // 25"
    cols["rtt_sum_ns"] = f"({calls} // 25) * (80000 + (p % 50) * 1000)"
    cols["rtt_max_ns"] = f"200000 + {_value_sql('p', 'm', 13, 100000)}"
    cols["duration_count"] = f"{calls} // 25"
    cols["duration_sum_ns"] = f"({calls} // 25) * 30000000000"
    cols["duration_max_ns"] = "60000000000"
    return ", ".join(f"CAST({cols[c]} AS {'INTEGER' if c in HIST else 'BIGINT'}) AS {c}" for c in COLUMNS)


def _open(path: Path, rollup_after_ns: int) -> Aggregates:
    return Aggregates(path, retain_ns=(DAYS + 1) * DAY, rollup_after_ns=rollup_after_ns, clock=_clock)


def make_file(dest: Path, rollup_after_ns: int, log: Log) -> FileInfo:
    t0 = time.perf_counter()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    path = dest / FILE_NAME
    flows = [
        FlowRecord(
            start_ts=FIRST_MINUTE * MINUTE_NS,
            end_ts=FIRST_MINUTE * MINUTE_NS + 10 * SECOND,
            transport="tcp",
            src=client,
            dst=server,
            protocol=protocol,
            bytes=[1, 1],
            packets=[1, 1],
        )
        for client, server, protocol in _pairs()
    ]
    with _open(path, (DAYS + 1) * DAY) as agg:  # numbers the 200 edges
        assert all(agg.flow_problem(f, END_NS) is None for f in flows)
        agg.add_flows(agg.prepare_flows(flows))
    con = duckdb.connect(str(path))
    try:
        ids = [r[0] for r in con.execute("SELECT id FROM series ORDER BY id").fetchall()]
        if ids != list(range(PAIRS)):
            raise RuntimeError(f"expected edges 0..{PAIRS - 1}, the file numbered {ids[:5]}...")
        log(f"bench {NAME}: writing {PAIRS * MINUTES:,} minute rows ({DAYS} days x {PAIRS} pairs)")
        con.execute(
            "INSERT INTO minutes SELECT CAST(m AS INTEGER) AS minute, CAST(p AS INTEGER) AS series, "
            f"{_row_sql()} FROM (SELECT {FIRST_MINUTE} + i // {PAIRS} AS m, i % {PAIRS} AS p "
            f"FROM range({PAIRS * MINUTES}) t(i) WHERE i >= {PAIRS})"  # minute 0 came through the API
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    _open(path, rollup_after_ns).close()  # what a hub does at start: retention and the roll-up
    _compact(path)
    con = duckdb.connect(str(path), read_only=True)
    try:
        ((rows, calls),) = con.execute(
            "SELECT count(*), sum(calls) FROM (SELECT calls FROM minutes UNION ALL SELECT calls FROM hours)"
        ).fetchall()
    finally:
        con.close()
    info = FileInfo(
        path, int(rows), int(calls), path.stat().st_size, time.perf_counter() - t0, rollup_after_ns
    )
    (dest / "info.json").write_text(
        json.dumps({"rows": info.rows, "calls": info.calls, "seconds": info.seconds_to_make})
    )
    return info


def _compact(path: Path) -> None:
    """Copy the database into a new file: the bulk write and the roll-up leave free blocks that a
    running hub reuses for the next rows (DuckDB never truncates); the copy's size is the data's."""
    tmp = path.with_name(path.name + ".compact")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
        con.execute(f"ATTACH '{tmp}' AS dst")
        con.execute("COPY FROM DATABASE src TO dst")
        con.execute("DETACH src")
        con.execute("DETACH dst")
    finally:
        con.close()
    tmp.replace(path)


def cached_file(variant: str, rollup_after_ns: int, regen: bool, log: Log) -> FileInfo:
    dest = OUT_DIR / f"hub-aggregates-{VERSION}-{variant.replace(' ', '-')}"
    meta = dest / "info.json"
    if not regen and meta.exists() and (dest / FILE_NAME).exists():
        d = json.loads(meta.read_text())
        path = dest / FILE_NAME
        return FileInfo(path, d["rows"], d["calls"], path.stat().st_size, d["seconds"], rollup_after_ns)
    log(f"bench {NAME}: making the {variant} aggregates file in {dest} (cached for later runs)")
    return make_file(dest, rollup_after_ns, log)


@dataclass
class Timing:
    samples: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    @property
    def best_ms(self) -> float:
        return min(self.samples) * 1e3


@dataclass
class Variant:
    label: str
    file: FileInfo
    timings: dict[str, Timing]
    edges_30d: int
    calls_30d: int


@dataclass
class Result:
    variants: list[Variant]
    add_call_us: list[float]
    flush_ms: float
    flushed_rows: int


WINDOWS = (
    ("edges, 30 days", 30 * DAY, "edges"),
    ("edges, last 24 h", DAY, "edges"),
    ("edges, last 15 min", 15 * 60 * SECOND, "edges"),
    ("pods, 30 days", 30 * DAY, "pods"),
)


def measure_queries(label: str, info: FileInfo, samples: int, log: Log) -> Variant:
    timings: dict[str, Timing] = {}
    with _open(info.path, info.rollup_after_ns) as agg:
        rows = agg.edges(END_NS - 30 * DAY, END_NS)
        edges, calls = len(rows), sum(r.calls for r in rows)
        if calls != info.calls or edges != PAIRS:
            raise RuntimeError(
                f"edges() over 30 days: {edges} edges, {calls:,} calls; the file: {info.calls:,}"
            )
        for window, span, what in WINDOWS:
            fn = agg.edges if what == "edges" else agg.pods
            fn(END_NS - span, END_NS)  # warm-up
            t = Timing()
            for _ in range(samples):
                t0 = time.perf_counter()
                fn(END_NS - span, END_NS)
                t.samples.append(time.perf_counter() - t0)
            timings[window] = t
            log(f"bench {NAME}: {label}: {window}: {t.median_ms:,.1f} ms median")
    return Variant(label, info, timings, edges, calls)


def measure_add_calls(runs: int, log: Log) -> tuple[list[float], float, int]:
    """µs per call of `add_calls` (median over runs), and the flush of what it filled."""
    calls = realistic_calls(CALLS, END_NS - 60 * SECOND, SPAN_NS // CALLS, seed=11)
    per_call: list[float] = []
    flush_s, rows = 0.0, 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="podshark-bench-agg-") as d:
            agg = Aggregates(Path(d) / FILE_NAME, clock=_clock)
            try:
                t0 = time.perf_counter()
                for k in range(0, len(calls), BATCH):
                    agg.add_calls(calls[k : k + BATCH])
                per_call.append((time.perf_counter() - t0) / len(calls) * 1e6)
                t0 = time.perf_counter()
                rows = agg.flush(END_NS + MINUTE_NS)
                flush_s = time.perf_counter() - t0
            finally:
                agg.close()
    log(
        f"bench {NAME}: add_calls {statistics.median(per_call):.2f} µs/call; "
        f"flush {rows} rows {flush_s * 1e3:.0f} ms"
    )
    return per_call, flush_s * 1e3, rows


def render(res: Result, when: str, revision: str, previous: str | None) -> str:
    m = machine()
    old = history_lines(previous)
    rolled = res.variants[-1]
    q30 = rolled.timings["edges, 30 days"].median_ms
    mb = rolled.file.bytes_on_disk / 2**20
    per_call = statistics.median(res.add_call_us)
    rows = [
        ("date", when),
        (
            "machine",
            f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']} (load average {m['load']} at start)",
        ),
        ("podshark revision", revision),
        (
            "traffic",
            f"{PAIRS} workload pairs x {DAYS} days, a row per pair and minute: {rolled.calls_30d:,} calls",
        ),
        (
            "per call at ingest (`add_calls`)",
            f"**{per_call:.2f} µs** (median of {len(res.add_call_us)} runs of {CALLS:,} realistic calls in "
            f"batches of {BATCH:,}); the flush of their {res.flushed_rows} minute rows: "
            f"{res.flush_ms:.0f} ms",
        ),
    ]
    head = "| | " + " | ".join(v.label for v in res.variants) + " |"
    table = [head, "|---|" + "---|" * len(res.variants)]
    table.append(
        "| rows | " + " | ".join(f"{v.file.rows:,}" for v in res.variants) + " |",
    )
    table.append(
        "| size on disk | "
        + " | ".join(
            f"**{v.file.bytes_on_disk / 2**20:,.1f} MiB** ({v.file.bytes_on_disk / v.file.rows:.0f} B/row)"
            for v in res.variants
        )
        + " |"
    )
    for window, _, _ in WINDOWS:
        cells = []
        for v in res.variants:
            t = v.timings[window]
            cells.append(f"{t.median_ms:,.1f} ms (best {t.best_ms:,.1f})")
        table.append(f"| {window} | " + " | ".join(cells) + " |")
    table.append(
        "| sanity: edges() over 30 days | "
        + " | ".join(f"{v.edges_30d} edges, {v.calls_30d:,} calls = the table's sum" for v in res.variants)
        + " |"
    )
    line = (
        f"- {when} ({revision}): "
        f"edges 30d {q30:,.1f} ms{vs_previous(q30, previous_figure(old, 'edges 30d'))}; "
        f"file {mb:,.1f} MiB{vs_previous(mb, previous_figure(old, 'file'))}; "
        f"add_calls {per_call:.2f} µs/call{vs_previous(per_call, previous_figure(old, 'add_calls'))} "
        f"(rolled up; by minute: {res.variants[0].timings['edges, 30 days'].median_ms:,.0f} ms, "
        f"{res.variants[0].file.bytes_on_disk / 2**20:,.0f} MiB)"
    )
    return render_section(
        f"## {NAME}: {TITLE}",
        (
            f"`hub/aggregates.py` on a month of traffic: {PAIRS} workload pairs with calls and flows every "
            f"minute for {DAYS} days, in the real file layout (edges numbered through the API, the rows "
            "written in bulk by DuckDB), by minute and rolled up as the hub keeps it (hours for what is "
            "older than two days). Query times through `Aggregates.edges()`/`pods()` (what the service "
            f"map runs), median of {len(rolled.timings['edges, 30 days'].samples)} after a warm-up, DuckDB "
            f"with its default threads; the latency histogram has {len(HIST)} buckets "
            f"({LATENCY_BOUNDS_NS[0] / 1e3:.1f} µs .. {LATENCY_BOUNDS_NS[-1] / 1e9:.1f} s). "
            f"Made by `python -m bench {NAME}`; see `bench/README.md`."
        ),
        rows,
        keep(old, line),
        tables=table,
    )


def run(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """``python -m bench hub_aggregates``."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    revision = podshark_revision()
    variants = [
        measure_queries(label, cached_file(label, rollup, regen, log), 3 * runs, log)
        for label, rollup in VARIANTS
    ]
    per_call, flush_ms, flushed = measure_add_calls(runs, log)
    res = Result(variants, per_call, flush_ms, flushed)
    for v in variants:
        print(
            f"{NAME} ({v.label}): edges 30d {v.timings['edges, 30 days'].median_ms:,.1f} ms, "
            f"file {v.file.bytes_on_disk / 2**20:,.1f} MiB, {v.file.rows:,} rows",
            flush=True,
        )
    print(f"{NAME}: add_calls {statistics.median(per_call):.2f} µs/call", flush=True)
    return render(res, when, revision, previous_section)


if __name__ == "__main__":
    print(run(None, runs=1))
