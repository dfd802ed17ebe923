"""The hub's DuckDB store: calls in one DuckDB file per time partition, so retention frees disk.

    store = Store(Path("/var/lib/podshark"), retain_ns=7 * DAY, max_bytes=20 << 30)
    new = store.add(calls, now_ns=time.time_ns())            # the one writer, ~once a second
    rows, cursor = store.query(*filter_sql.compile(f), limit=100)  # any thread
    call = store.get(call_id)                                # with bodies
    store.enforce(now_ns)                                    # retention, from the writer

Layout. `root/calls-YYYYmmddTHHMMSSZ.duckdb` holds the calls whose `ingest_ts` falls in
[start, start + partition_ns) — the name is the partition's start, UTC — in table `calls` laid out by
`hub/schema.py` (the single source of the row layout). Deleting rows never shrinks a DuckDB file,
so retention DETACHes whole partitions and deletes their files (and WALs). Every partition is
ATTACHed to one in-process DuckDB instance (an in-memory catalog); queries read the UNION ALL of
the partitions. Each reader gets its own connection to that instance (`cursor()`), so reads run
beside the writer and see what was committed when their statement started (DuckDB's MVCC).

Writes. `add()` builds one Arrow table from `schema.rows()` and runs one
`INSERT ... SELECT ... FROM batch WHERE NOT EXISTS (same id in any partition)`: a bulk insert and
the dedup in a single statement and a single transaction, so a call id seen twice is stored once
(re-importing a capture stores nothing new). The anti-join needs no index and no second file
(DuckDB cannot write two attached databases in one transaction, so a separate id index could
drift from the calls after a crash). A stored copy of a call has the same timestamps as the call,
so the anti-join reads only the stored rows in the batch's time range and zone maps skip the rest
(3 ms instead of 80 ms for 5k ids against 3M stored): the dedup is "same id, same start time",
which is what a resent or re-imported call is. Duplicates inside one batch keep the first.
`python -m hub.store [N]` prints add() throughput.

Durability. Each `add()` is one committed transaction; DuckDB writes the commit to the partition's
WAL before returning, so a `kill -9` after `add()` returned loses nothing, and reopening the
directory replays any WAL (tests/hub/test_store.py kills a real writer process).

Concurrency. One writer (add, enforce, close) at a time, any number of readers. A small
readers-writer gate keeps ATTACH and DETACH (new partition, retention) apart from running queries;
inserts take it shared, beside the readers.

Extension point: `_partition_ddl` lists the tables each partition gets. The raw frames for export
(`packets`) will be a second table there, dropped with its partition.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import itertools
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import msgspec
import pyarrow as pa

from dissect.model import Call
from hub import schema

T = TypeVar("T")
SECOND = 1_000_000_000
HOUR = 3600 * SECOND


def _partition_ddl(alias: str) -> list[str]:
    """The tables of one partition, in the database attached as `alias` (add `packets` here)."""
    calls = schema.create_table_sql(schema.TABLE)
    head = f"CREATE TABLE IF NOT EXISTS {schema.TABLE} ("
    assert calls.startswith(head)
    return [f"CREATE TABLE IF NOT EXISTS {alias}.{schema.TABLE} (" + calls[len(head) :]]


_NAME_RE = re.compile(r"^calls-(\d{8}T\d{6})Z\.duckdb$")
_NAME_FMT = "%Y%m%dT%H%M%S"
# the order key of a call: when it started on the wire (Call.ts), so response-only calls sort too
TS_SQL = "coalesce(request_ts, response_ts, 0)"
_CURSOR = msgspec.json.Encoder()
_CURSOR_DECODE = msgspec.json.Decoder(tuple[int, str])


class StoreError(Exception):
    """A request the store refuses (bad cursor, unknown column, ...): the API's 400."""


@dataclass(frozen=True)
class Partition:
    start_ns: int
    path: Path
    alias: str  # our own identifier, never user text


def _arrow_type(t: str) -> pa.DataType:
    simple: dict[str, pa.DataType] = {
        "VARCHAR": pa.string(),
        "BIGINT": pa.int64(),
        "UBIGINT": pa.uint64(),
        "INTEGER": pa.int32(),
        "BOOLEAN": pa.bool_(),
        "BLOB": pa.binary(),
    }
    if t in simple:
        return simple[t]
    if t == "VARCHAR[]":
        return pa.list_(pa.string())
    if t == "MAP(VARCHAR, VARCHAR)":
        return pa.map_(pa.string(), pa.string())
    if t == "STRUCT(name VARCHAR, value VARCHAR)[]":
        return pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))
    raise ValueError(f"no Arrow type for DuckDB type {t}")


ARROW_SCHEMA = pa.schema([(n, _arrow_type(t)) for n, t in schema.COLUMNS])


def _quote_literal(text: str) -> str:
    """A SQL string literal for a path (ATTACH takes no parameters); the path is ours, not user text."""
    return "'" + text.replace("'", "''") + "'"


class _Gate:
    """Readers-writer gate: many shared holders, or one exclusive holder."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def encode_cursor(ts: int, call_id: str) -> str:
    return base64.urlsafe_b64encode(_CURSOR.encode((ts, call_id))).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return _CURSOR_DECODE.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as e:
        raise StoreError(f"not a cursor: {cursor[:64]!r}") from e


class Store:
    def __init__(
        self,
        root: Path,
        retain_ns: int | None = None,
        max_bytes: int | None = None,
        partition_ns: int = HOUR,
    ) -> None:
        if partition_ns < SECOND or partition_ns % SECOND:
            raise ValueError("partition_ns must be a whole number of seconds")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.retain_ns = retain_ns
        self.max_bytes = max_bytes
        self.partition_ns = partition_ns
        self._db = duckdb.connect(":memory:")
        # nothing may be fetched or loaded at run time (air-gapped clusters)
        self._db.execute("SET autoinstall_known_extensions = false")
        self._db.execute("SET autoload_known_extensions = false")
        # fewer, larger checkpoints: at the 16 MB default, checkpoints cost a third of insert time
        self._db.execute("SET checkpoint_threshold = '256MB'")
        self._writer = self._db.cursor()
        self._gate = _Gate()
        self._write_lock = threading.Lock()  # one writer at a time, whoever calls
        self._parts: dict[int, Partition] = {}
        self._aliases = itertools.count()
        self._batches = itertools.count()
        self._closed = False
        for p in sorted(self.root.iterdir()):
            m = _NAME_RE.match(p.name)
            if m:
                start = dt.datetime.strptime(m.group(1), _NAME_FMT).replace(tzinfo=dt.UTC)
                self._attach(int(start.timestamp()) * SECOND)

    # ---- partitions

    def partition_path(self, start_ns: int) -> Path:
        start = dt.datetime.fromtimestamp(start_ns // SECOND, tz=dt.UTC)
        return self.root / f"calls-{start.strftime(_NAME_FMT)}Z.duckdb"

    def partitions(self) -> list[Partition]:
        """Attached partitions, oldest first."""
        return [self._parts[k] for k in sorted(self._parts)]

    def _attach(self, start_ns: int) -> Partition:
        part = Partition(start_ns, self.partition_path(start_ns), f"p{next(self._aliases)}")
        self._writer.execute(f"ATTACH {_quote_literal(str(part.path))} AS {part.alias}")
        for ddl in _partition_ddl(part.alias):
            self._writer.execute(ddl)
        self._parts[start_ns] = part
        return part

    def _detach(self, part: Partition) -> None:
        self._writer.execute(f"DETACH {part.alias}")
        del self._parts[part.start_ns]
        for p in (part.path, Path(str(part.path) + ".wal")):
            p.unlink(missing_ok=True)

    def _union(self, parts: Sequence[Partition], columns: str = "*") -> str:
        return " UNION ALL ".join(f"SELECT {columns} FROM {p.alias}.calls" for p in parts)

    # ---- writing

    def add(self, calls: list[Call], now_ns: int) -> int:
        """Store a batch (one transaction, committed before returning); returns how many were new."""
        with self._write_lock:
            self._check_open()
            unique: dict[str, Call] = {}
            for c in calls:
                c.ingest_ts = now_ns
                unique.setdefault(c.id, c)
            if not unique:
                return 0
            start = now_ns - now_ns % self.partition_ns
            if start not in self._parts:
                with self._gate.exclusive():
                    self._attach(start)
            batch = list(unique.values())
            table = pa.Table.from_pydict(schema.rows(batch), schema=ARROW_SCHEMA)
            name = f"batch_{next(self._batches)}"
            with self._gate.shared():
                target = self._parts[start]
                existing, args = self._same_time(batch)
                self._writer.register(name, table)
                try:
                    inserted = self._writer.execute(
                        f"INSERT INTO {target.alias}.calls SELECT * FROM {name} AS b "
                        f"WHERE NOT EXISTS (SELECT 1 FROM ({existing}) AS s WHERE s.id = b.id)",
                        args,
                    ).fetchone()
                finally:
                    self._writer.unregister(name)
            return int(inserted[0]) if inserted else 0

    def _same_time(self, batch: list[Call]) -> tuple[str, list[object]]:
        """The ids already stored that could be those of `batch`: a stored copy of a call has the
        same timestamps, so only rows in the batch's request_ts range (or, for calls without a
        request, its response_ts range) are read, and DuckDB's zone maps skip the rest of every
        partition. Without this the anti-join reads every stored id on every add."""
        req = [c.request_ts for c in batch if c.request_ts is not None]
        resp = [c.response_ts for c in batch if c.request_ts is None and c.response_ts is not None]
        neither = any(c.request_ts is None and c.response_ts is None for c in batch)
        selects: list[str] = []
        args: list[object] = []
        for p in self.partitions():
            if req:
                selects.append(f"SELECT id FROM {p.alias}.calls WHERE request_ts BETWEEN ? AND ?")
                args += [min(req), max(req)]
            if resp:
                selects.append(
                    f"SELECT id FROM {p.alias}.calls WHERE request_ts IS NULL AND response_ts BETWEEN ? AND ?"
                )
                args += [min(resp), max(resp)]
            if neither:
                selects.append(
                    f"SELECT id FROM {p.alias}.calls WHERE request_ts IS NULL AND response_ts IS NULL"
                )
        return " UNION ALL ".join(selects), args

    # ---- retention

    def size_bytes(self) -> int:
        """Bytes on disk of every partition, WALs included."""
        total = 0
        for part in self.partitions():
            for p in (part.path, Path(str(part.path) + ".wal")):
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    pass
        return total

    def enforce(self, now_ns: int) -> list[Path]:
        """Drop partitions older than retain_ns, then the oldest while over max_bytes (never the
        newest one, which is being written). Returns the files removed."""
        dropped: list[Path] = []
        with self._write_lock:
            self._check_open()
            with self._gate.exclusive():
                if self.retain_ns is not None:
                    for part in self.partitions():
                        if part.start_ns + self.partition_ns <= now_ns - self.retain_ns:
                            self._detach(part)
                            dropped.append(part.path)
                if self.max_bytes is not None:
                    # a checkpoint folds the WAL into the file, so sizes are what they will stay
                    self._writer.execute("CHECKPOINT")
                    for part in self.partitions()[:-1]:
                        if self.size_bytes() <= self.max_bytes:
                            break
                        self._detach(part)
                        dropped.append(part.path)
        return dropped

    # ---- reading

    def query(
        self,
        where_sql: str = "",
        params: Sequence[object] = (),
        *,
        from_ns: int | None = None,
        to_ns: int | None = None,
        limit: int | None = None,
        order: str = "desc",
        cursor: str | None = None,
        columns: Sequence[str] = ("record",),
    ) -> tuple[list[tuple[Any, ...]], str | None]:
        """Calls matching a compiled filter (`hub.filter_sql.compile`), in a window [from_ns, to_ns)
        of their start time (request_ts, else response_ts), ordered by (start, id), newest first
        (`order="desc"`) or oldest first. Returns rows of `columns` and the cursor of the next page
        (None when this page is the last); the cursor is a position, so calls arriving meanwhile
        neither repeat nor shift the pages."""
        if order not in ("asc", "desc"):
            raise StoreError(f"order must be asc or desc, not {order!r}")
        bad = [c for c in columns if c not in schema.COLUMN_TYPES]
        if bad or not columns:
            raise StoreError(f"unknown columns: {bad}")
        if limit is not None and limit < 1:
            raise StoreError("limit must be at least 1")
        conds: list[str] = [f"({where_sql})"] if where_sql.strip() else []
        args: list[object] = list(params)
        if from_ns is not None:
            conds.append(f"{TS_SQL} >= ?")
            args.append(from_ns)
        if to_ns is not None:
            conds.append(f"{TS_SQL} < ?")
            args.append(to_ns)
        if cursor is not None:
            ts, last = decode_cursor(cursor)
            op = "<" if order == "desc" else ">"
            conds.append(f"({TS_SQL} {op} ? OR ({TS_SQL} = ? AND id {op} ?))")
            args += [ts, ts, last]
        direction = "DESC" if order == "desc" else "ASC"
        cols = ", ".join(f'"{c}"' for c in columns)
        where = " AND ".join(conds) or "true"
        tail = ""
        if limit is not None:
            tail = " LIMIT ?"
            args.append(limit + 1)
        with self._gate.shared():
            self._check_open()
            parts = self.partitions()
            if not parts:
                return [], None
            # Two steps in one snapshot: the page's positions (start time, id, partition, rowid)
            # first, reading only the columns the filter and the order need; then the requested
            # columns of just those rows by rowid (reading `record` for every candidate row made a
            # newest page 5x slower).
            union = " UNION ALL ".join(
                f"SELECT *, rowid AS _rid, {k} AS _part FROM {p.alias}.calls" for k, p in enumerate(parts)
            )
            sql = (
                f"SELECT {TS_SQL} AS _ts, id AS _id, _part, _rid FROM ({union}) AS calls "
                f"WHERE {where} ORDER BY _ts {direction}, _id {direction}{tail}"
            )
            con = self._db.cursor()
            try:
                con.execute("BEGIN TRANSACTION")
                found = con.execute(sql, args).fetchall()
                nxt = None
                if limit is not None and len(found) > limit:
                    found = found[:limit]
                    nxt = encode_cursor(found[-1][0], found[-1][1])
                by_part: dict[int, list[int]] = {}
                for _, _, k, rid in found:
                    by_part.setdefault(k, []).append(rid)
                fetched: dict[tuple[int, int], tuple[Any, ...]] = {}
                for k, rids in by_part.items():
                    got = con.execute(
                        f"SELECT rowid, {cols} FROM {parts[k].alias}.calls WHERE rowid = ANY(?::BIGINT[])",
                        [rids],
                    ).fetchall()
                    for r in got:
                        fetched[(k, r[0])] = r[1:]
                con.execute("COMMIT")
            finally:
                con.close()
        return [fetched[(k, rid)] for _, _, k, rid in found], nxt

    def get(self, call_id: str) -> Call | None:
        """The whole call, bodies included."""
        rows, _ = self.query("id = ?", [call_id], limit=1, columns=schema.RECORD_COLUMNS)
        return schema.call_from_row(*rows[0]) if rows else None

    def count(self, where_sql: str = "", params: Sequence[object] = ()) -> int:
        with self._gate.shared():
            self._check_open()
            parts = self.partitions()
            if not parts:
                return 0
            where = f" WHERE {where_sql}" if where_sql.strip() else ""
            con = self._db.cursor()
            try:
                got = con.execute(
                    f"SELECT count(*) FROM ({self._union(parts)}) AS calls{where}", list(params)
                )
                row = got.fetchone()
            finally:
                con.close()
        return int(row[0]) if row else 0

    # ---- aggregates (hub/stats.py)

    def read(self, fn: Callable[[duckdb.DuckDBPyConnection, str], T]) -> T | None:
        """Run `fn(connection, calls)` in one snapshot, where `calls` is SQL naming every stored call
        (a parenthesised UNION ALL of the partitions, to use as `FROM {calls} AS c`). For internal
        aggregate queries that the column-whitelisted `query()` cannot express; `fn` must pass
        every user value as a `?` parameter. None when nothing is stored yet."""
        with self._gate.shared():
            self._check_open()
            parts = self.partitions()
            if not parts:
                return None
            con = self._db.cursor()
            try:
                con.execute("BEGIN TRANSACTION")
                out = fn(con, f"({self._union(parts)})")
                con.execute("COMMIT")
                return out
            finally:
                con.close()

    # ---- lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def close(self) -> None:
        """Checkpoint and detach everything (not needed for durability: the WAL already has it)."""
        with self._write_lock, self._gate.exclusive():
            if self._closed:
                return
            self._closed = True
            try:
                self._writer.execute("CHECKPOINT")
            finally:
                self._writer.close()
                self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bench(n: int = 100_000, batch: int = 5_000) -> None:
    """rows/s of add() for `n` realistic calls in batches of `batch` (printed for the lead)."""
    import tempfile
    import time

    from dissect.model import Endpoint, Message

    def make(i: int) -> Call:
        t = 1_763_700_000_000_000_000 + i * 1_000_000
        return Call(
            id=f"bench/{i:09d}",
            protocol="http",
            src=Endpoint(
                ip=f"10.0.{i % 250}.{i % 200 + 1}",
                port=40000 + i % 20000,
                pod=f"client-{i % 50}",
                namespace="shop",
                workload="Deployment/client",
                labels={"app": "client"},
            ),
            dst=Endpoint(
                ip="10.96.0.10",
                port=8080,
                pod=f"api-{i % 7}",
                namespace="shop",
                workload="Deployment/api",
                service="api",
                labels={"app": "api", "tier": "be"},
            ),
            request_ts=t,
            response_ts=t + 3_000_000,
            method="GET" if i % 3 else "POST",
            target=f"/api/v1/items/{i % 1000}?q=x",
            status=200 if i % 20 else 503,
            request=Message(
                headers=[("Host", "api"), ("User-Agent", "curl/8"), ("Accept", "*/*")],
                body=b'{"a": 1}' if i % 3 == 0 else b"",
                body_size=8 if i % 3 == 0 else 0,
            ),
            response=Message(
                headers=[("Content-Type", "application/json"), ("Content-Length", "120")],
                body=b'{"items": [1, 2, 3], "next": null, "pad": "' + b"x" * 80 + b'"}',
                body_size=120,
            ),
            info={"http_version": "1.1"},
        ).finish()

    calls = [make(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as d, Store(Path(d)) as store:
        now = 1_763_700_000_000_000_000
        t0 = time.perf_counter()
        for k in range(0, n, batch):
            store.add(calls[k : k + batch], now)
        el = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = store.add(calls[:batch], now)
        el2 = time.perf_counter() - t1
        print(f"add(): {n} calls in batches of {batch}: {el:.2f} s, {n / el:,.0f} rows/s")
        print(f"re-adding {batch} known calls over {n} stored: {el2 * 1000:.0f} ms, {again} new")
        size = store.size_bytes()
        print(f"on disk: {size / 1e6:.1f} MB ({size / n:.0f} B/call)")
        t2 = time.perf_counter()
        store.query(limit=100)
        print(f"newest page of 100: {(time.perf_counter() - t2) * 1000:.1f} ms")


if __name__ == "__main__":
    import sys

    _bench(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
    os._exit(0)
