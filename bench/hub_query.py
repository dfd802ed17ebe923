"""Hub query latency on stores of 1M and 10M calls.

The stores are made once and cached in ``bench/out/hub-store-<N>-<version>/`` (a few minutes for
10M; ``--regen`` makes them again, and a change of the table layout does too). They are real store
directories, one DuckDB file per hour of ingest time as `hub.store.Store` lays them out, holding
calls spread evenly over `SPAN_NS` (24 h): 4,096 realistic calls from `bench.hub_calls` serve as
templates, and DuckDB writes the rows in bulk (`INSERT ... SELECT ... FROM range()`), each row a
template with its own id, start time and ingest time: the hub's ingest time is its commit time,
0.2-2 s after the call, whole seconds apart, as the writer commits once a second. So the filters
and the newest page see what a day of traffic looks like, at 12 (1M) or 116 (10M) calls a second.

Measured, each after one untimed warm-up, `10 * runs` times, median and 95th percentile:

- through `Store.query` (what the API runs): the newest page (limit 100, no filter); a filtered page
  (`FILTER`: status + path + namespace); a page deep in history (a cursor 90 % of the way back); a
  filter that matches nothing (every partition searched); a call by id (`Store.get`, the detail
  view); and `Store.count` of the filter.
- through the HTTP API of a real `podshark hub` process on the same store: the newest page and the
  filtered page (`GET /api/v1/calls?limit=100[&filter=...]`), wall clock of the whole request.

Targets (from the issue): at most 200 ms median for the filtered page over 10M calls, at most 50 ms
for the newest page.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import statistics
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from bench.http1_dissect import machine, podshark_revision
from bench.hub_calls import REPO, HubProcess, realistic_calls
from bench.report import history_lines, keep, previous_figure, render_section, vs_previous
from dissect.filter import parse
from dissect.model import Call
from hub import filter_sql, schema
from hub.store import HOUR, SECOND, Store, _partition_ddl, encode_cursor

NAME = "hub_query"
TITLE = "Hub query latency on 1M and 10M stored calls"

#: part of the cached directory names: bump when the generated calls change
STORE_VERSION = "v1"
OUT_DIR = REPO / "bench" / "out"
SIZES = (1_000_000, 10_000_000)
SPAN_NS = 24 * HOUR
FIRST_TS = 1_795_000_000 * SECOND - (1_795_000_000 * SECOND) % HOUR  # 2026-11-18T09:00:00Z
TEMPLATES = 4096  # a power of two: row i uses template (i * ODD) % TEMPLATES, each once per block
ODD = 2_654_435_761
PAGE = 100
FILTER = 'status >= 500 and target ~ "^/api/v1/items" and dst.namespace == "shop"'
NOTHING = 'status >= 500 and target ~ "^/api/v1/items" and dst.namespace == "nowhere"'
NEWEST_TARGET_MS = 50.0
FILTER_TARGET_MS = 200.0

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------- the stores


def _fingerprint() -> str:
    """Changes when the table layout or the generator changes: a cached store is then remade."""
    ddl = "\n".join(_partition_ddl("p"))
    return hashlib.sha256(f"{STORE_VERSION}\n{ddl}".encode()).hexdigest()[:16]


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else str(n)


@dataclass
class StoreInfo:
    path: str
    calls: int
    partitions: int
    bytes: int
    made_seconds: float
    fingerprint: str
    first_ts: int
    last_ts: int
    filter_matches: int  # what FILTER should find, from the templates

    @property
    def dir(self) -> Path:
        return Path(self.path)


def _templates() -> tuple[list[Call], list[bool]]:
    calls = realistic_calls(TEMPLATES, FIRST_TS, 1_000_000, seed=2026, prefix="tpl")
    for c in calls:
        c.ingest_ts = 0
    f = parse(FILTER)
    return calls, [f.matches(c) for c in calls]


def _expected_matches(n: int, matches: list[bool]) -> int:
    """Rows 0..n-1 use each template once per block of TEMPLATES rows (ODD is odd)."""
    per_block = sum(matches)
    tail = sum(matches[(i * ODD) % TEMPLATES] for i in range(n - n % TEMPLATES, n))
    return (n // TEMPLATES) * per_block + tail


def _row_sql(step: int) -> str:
    """SELECT of one partition's rows from `range` (r) joined to the templates (t): every stored
    column, the template's except for the id, the times and the ingest time."""
    start = f"({FIRST_TS} + g.i * {step} + (g.i * 40503) % {step})"
    over = {
        "id": "'bench-node-' || chr(97 + (r.i % 4)::INTEGER) || '/' || lpad(r.i::VARCHAR, 12, '0')",
        "ts": "r.ts",
        "ingest_ts": "r.ingest_ts",
        "request_ts": "CASE WHEN t.request_ts IS NULL THEN NULL ELSE r.ts END",
        "response_ts": "CASE WHEN t.response_ts IS NULL THEN NULL ELSE r.ts + coalesce(t.latency_ns, 0) END",
    }
    cols = ", ".join(over.get(c, f't."{c}"') for c in schema.COLUMN_NAMES)
    rows = (
        f"SELECT i, {start} AS ts, "
        f"(({start} + 200000000 + (g.i * 7919) % 1800000000) // {SECOND} + 1) * {SECOND} AS ingest_ts "
        "FROM (SELECT range AS i FROM range(?, ?)) AS g"
    )
    return (
        f"SELECT {cols} FROM ({rows}) AS r JOIN tpl AS t ON t.k = (r.i * {ODD}) % {TEMPLATES} "
        "WHERE r.ingest_ts >= ? AND r.ingest_ts < ? ORDER BY r.ingest_ts, r.ts"
    )


def make_store(n: int, dest: Path, log: Log) -> StoreInfo:
    """Write a store of `n` calls over SPAN_NS into `dest` (replaced)."""
    import pyarrow as pa

    t0 = time.perf_counter()
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    templates, matches = _templates()
    table = schema.arrow_table(templates).append_column("k", pa.array(range(TEMPLATES), pa.int64()))
    step = SPAN_NS // n
    last_start = FIRST_TS + (n - 1) * step + step
    namer = Store(partial)  # only for its file names
    namer.close()
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.register("tpl", table)
    sql = _row_sql(step)
    slack = 4 * SECOND // step + 2  # rows whose ingest time crosses into the next hour
    hour = FIRST_TS
    made = 0
    while hour <= last_start + 3 * SECOND:
        path = namer.partition_path(hour)
        con.execute(f"ATTACH '{path}' AS g")
        for ddl in _partition_ddl("g"):
            con.execute(ddl)
        lo = max(0, (hour - FIRST_TS) // step - slack)
        hi = min(n, (hour + HOUR - FIRST_TS) // step + 1)
        con.execute(f"INSERT INTO g.{schema.TABLE} {sql}", [lo, hi, hour, hour + HOUR])
        ((count,),) = con.execute(f"SELECT count(*) FROM g.{schema.TABLE}").fetchall()
        con.execute("CHECKPOINT g")
        con.execute("DETACH g")
        made += count
        log(f"bench {NAME}: {_label(n)}: partition {path.name}: {count:,} calls ({made:,} of {n:,})")
        hour += HOUR
    con.close()
    if made != n:
        raise RuntimeError(f"generated {made} calls, wanted {n}")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    info = StoreInfo(
        path=str(dest),
        calls=n,
        partitions=len(list(dest.glob("calls-*.duckdb"))),
        bytes=sum(p.stat().st_size for p in dest.iterdir()),
        made_seconds=time.perf_counter() - t0,
        fingerprint=_fingerprint(),
        first_ts=FIRST_TS,
        last_ts=FIRST_TS + (n - 1) * step + (((n - 1) * 40503) % step),
        filter_matches=_expected_matches(n, matches),
    )
    (dest.parent / f"{dest.name}.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def cached_store(n: int, regen: bool, log: Log) -> StoreInfo:
    dest = OUT_DIR / f"hub-store-{_label(n)}-{STORE_VERSION}"
    meta = dest.parent / f"{dest.name}.json"
    if not regen and dest.is_dir() and meta.exists():
        try:
            info: StoreInfo | None = StoreInfo(**json.loads(meta.read_text()))
        except (TypeError, ValueError):
            info = None
        if info is not None and info.fingerprint == _fingerprint() and info.calls == n:
            info.path = str(dest)
            log(f"bench {NAME}: reusing {dest} ({n:,} calls; --regen to make it again)")
            return info
        log(f"bench {NAME}: {dest} was made for another table layout: making it again")
    log(f"bench {NAME}: making {dest} ({n:,} calls over {SPAN_NS // HOUR} h)")
    return make_store(n, dest, log)


def check_store(store: Store, info: StoreInfo, samples: int = 200) -> str:
    """The stored calls read back whole and the SQL filter agrees with the predicate on them; the
    filter's count is what the templates say. Raises on any disagreement."""
    where, params = filter_sql.compile(parse(FILTER))
    got = store.count(where, params)
    if got != info.filter_matches:
        raise RuntimeError(f"{FILTER!r} counts {got:,} calls, the templates say {info.filter_matches:,}")
    rnd = random.Random(1)
    f = parse(FILTER)
    step = SPAN_NS // info.calls
    for _ in range(samples):
        i = rnd.randrange(info.calls)
        call_id = f"bench-node-{'abcd'[i % 4]}/{i:012d}"
        c = store.get(call_id)
        if c is None:
            raise RuntimeError(f"call {call_id} not found")
        if c.ts != FIRST_TS + i * step + (i * 40503) % step:
            raise RuntimeError(f"call {call_id} starts at {c.ts}, not where it was put")
        if f.matches(c) != bool(store.count(f"id = ? AND {where}", [call_id, *params])):
            raise RuntimeError(f"SQL and predicate disagree on {call_id}")
    return f"{got:,} calls match the filter, as the templates say; {samples} random calls read back whole"


# ---------------------------------------------------------------------------------------- timing


@dataclass
class Latency:
    ms: list[float] = field(default_factory=list)
    rows: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.ms, n=20)[-1] if len(self.ms) >= 2 else self.ms[0]


def _time(fn: Callable[[], int], samples: int) -> Latency:
    out = Latency(rows=fn())  # warm-up (and the spans of the partitions, on first use)
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.ms.append((time.perf_counter() - t0) * 1000)
    return out


CASES = (
    ("newest", "newest page (limit 100, no filter)"),
    ("filtered", f"filtered page: `{FILTER}`"),
    ("deep", "page 90% back in history (cursor)"),
    ("nothing", "a filter matching nothing (every partition searched)"),
    ("get", "one call by id (`Store.get`)"),
    ("count", "count of the filter (`Store.count`)"),
    ("http_newest", "HTTP `GET /api/v1/calls?limit=100`"),
    ("http_filtered", "HTTP `GET /api/v1/calls?limit=100&filter=...` (the filter above)"),
)


@dataclass
class SizeResult:
    info: StoreInfo
    check: str
    cases: dict[str, Latency] = field(default_factory=dict)


def measure_size(n: int, samples: int, regen: bool, log: Log) -> SizeResult:
    info = cached_store(n, regen, log)
    where, params = filter_sql.compile(parse(FILTER))
    none_where, none_params = filter_sql.compile(parse(NOTHING))
    deep = encode_cursor(info.first_ts + (info.last_ts - info.first_ts) // 10, "~")
    mid = n // 2
    mid_id = f"bench-node-{'abcd'[mid % 4]}/{mid:012d}"
    with Store(info.dir) as store:
        res = SizeResult(info, check_store(store, info))
        log(f"bench {NAME}: {_label(n)}: {res.check}")
        fns: dict[str, Callable[[], int]] = {
            "newest": lambda: len(store.query(limit=PAGE)[0]),
            "filtered": lambda: len(store.query(where, params, limit=PAGE)[0]),
            "deep": lambda: len(store.query(limit=PAGE, cursor=deep)[0]),
            "nothing": lambda: len(store.query(none_where, none_params, limit=PAGE)[0]),
            "get": lambda: int(store.get(mid_id) is not None),
            "count": lambda: store.count(where, params),
        }
        for key, fn in fns.items():
            res.cases[key] = _time(fn, samples)
            log(f"bench {NAME}: {_label(n)}: {key}: median {res.cases[key].median:.1f} ms")
    with HubProcess(info.dir, OUT_DIR / f"hub-query-{_label(n)}.log") as hub:
        query = urllib.parse.urlencode({"limit": PAGE, "filter": FILTER})

        def http(path: str) -> int:
            return len(json.loads(hub.get(path))["calls"])

        res.cases["http_newest"] = _time(lambda: http(f"/api/v1/calls?limit={PAGE}"), samples)
        res.cases["http_filtered"] = _time(lambda: http(f"/api/v1/calls?{query}"), samples)
    return res


# ---------------------------------------------------------------------------------------- rendering


def _ms(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _rows(key: str, n: int) -> str:
    return f"= {n:,}" if key == "count" else f"{n:,} row" + ("" if n == 1 else "s")


def _verdict(res: SizeResult, key: str, target: float) -> str:
    got = res.cases[key].median
    return f"{_ms(got)} ms (target ≤ {target:.0f} ms: {'met' if got <= target else 'NOT met'})"


def render(results: list[SizeResult], when: str, revision: str, samples: int, previous: str | None) -> str:
    m = machine()
    old = history_lines(previous)
    header = "| query | " + " | ".join(f"{_label(r.info.calls)}: median / p95 (ms)" for r in results) + " |"
    table = [header, "|---|" + "---|" * len(results)]
    for key, label in CASES:
        cells = [
            f"{_ms(r.cases[key].median)} / {_ms(r.cases[key].p95)} ({_rows(key, r.cases[key].rows)})"
            if key in r.cases
            else "-"
            for r in results
        ]
        table.append(f"| {label.replace('|', '/')} | " + " | ".join(cells) + " |")
    big = results[-1]
    rows = [
        ("date", when),
        (
            "machine",
            f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, DuckDB {duckdb.__version__} "
            f"(load average {m['load']} at start)",
        ),
        ("podshark revision", revision),
        *(
            (
                f"store {_label(r.info.calls)}",
                f"`bench/out/{r.info.dir.name}`: {r.info.calls:,} calls over {SPAN_NS // HOUR} h in "
                f"{r.info.partitions} hourly partitions, {r.info.bytes / 1e9:.2f} GB on disk "
                f"({r.info.bytes / r.info.calls:.0f} B/call); made in {r.info.made_seconds:.0f} s; {r.check}",
            )
            for r in results
        ),
        (f"newest page, {_label(big.info.calls)}", _verdict(big, "newest", NEWEST_TARGET_MS)),
        (f"filtered page, {_label(big.info.calls)}", _verdict(big, "filtered", FILTER_TARGET_MS)),
    ]
    newest, filtered = big.cases["newest"].median, big.cases["filtered"].median
    http_newest = big.cases["http_newest"].median
    line = (
        f"- {when} ({revision}, {_label(big.info.calls)}): newest {_ms(newest)} ms"
        f"{vs_previous(newest, previous_figure(old, 'newest'))}; filtered {_ms(filtered)} ms"
        f"{vs_previous(filtered, previous_figure(old, 'filtered'))}; http newest {_ms(http_newest)} ms"
        f"{vs_previous(http_newest, previous_figure(old, 'http newest'))}; "
        f"count {_ms(big.cases['count'].median)} ms"
    )
    history = keep(old, line)
    return render_section(
        f"## {NAME}: {TITLE}",
        (
            "Stores of realistic calls spread over a day in hourly partitions, made once in `bench/out/` "
            "(see `bench/README.md`). Each query runs once untimed, then "
            f"{samples} times; wall clock, median and 95th percentile. `Store.query` is what the API runs; "
            f"the HTTP rows are whole requests to a real `podshark hub` process on loopback. Made by "
            f"`python -m bench {NAME}`."
        ),
        rows,
        history,
        table,
    )


def run(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """``python -m bench hub_query``."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    revision = podshark_revision()
    samples = 10 * runs
    results = [measure_size(n, samples, regen, log) for n in SIZES]
    for r in results:
        print(
            f"{NAME} {_label(r.info.calls)}: "
            + ", ".join(f"{k} {_ms(v.median)}/{_ms(v.p95)} ms" for k, v in r.cases.items()),
            flush=True,
        )
    return render(results, when, revision, samples, previous_section)


if __name__ == "__main__":  # python -m bench.hub_query: just (re)make the stores
    for size in SIZES:
        print(json.dumps(asdict(cached_store(size, regen=True, log=print)), indent=2))
