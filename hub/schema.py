"""How calls are stored in DuckDB: the one place that names the columns and their types.

A row holds a summary column for every field the filter language can test (`hub/filter_sql.py`
compiles filters against these names), the bodies as BLOBs, and `record`: the call's JSON form
without bodies (`Call.to_json(bodies=False)`), which is both the summary the API lists and, with the
two body columns, everything needed to rebuild the `Call` for `GET /api/v1/calls/{id}`
(`call_from_row`).

Choices:
- Timestamps and latency are BIGINT nanoseconds, as in the record (no TIMESTAMP conversion on
  either side of a comparison).
- IP addresses are kept as text (`src_ip`) and as a 128-bit number split into two UBIGINTs
  (`src_ip_hi`, `src_ip_lo`), IPv4 mapped into IPv6 space (`::ffff:a.b.c.d`): a CIDR becomes one or
  two integer range tests that DuckDB's min/max zone maps can prune, and no run-time extension
  (`inet`) is needed. Text that is not an address leaves both numbers NULL.
- Headers are LIST(STRUCT(name, value)) with names as sent (case and repeats kept); labels
  MAP(VARCHAR, VARCHAR); flags VARCHAR[] (never NULL: an empty list); `info` the JSON text of the
  dict, read with the built-in json functions.
- A side that was never seen (`request`/`response` null) has NULL headers, body and body size, so
  every comparison on it is false, as in the predicate.

`rows(calls)` returns the columns of a batch as lists, in `COLUMN_NAMES` order, for a bulk insert
(Arrow: `pyarrow.Table.from_pydict`; or DuckDB's VALUES with parameters). Set `ingest_ts` on the
calls before calling it: it is part of `record` too.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dissect.filter import ip_to_int
from dissect.model import Call, Endpoint, Message

TABLE = "calls"

_HEADERS = "STRUCT(name VARCHAR, value VARCHAR)[]"
_ENDPOINT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("ip", "VARCHAR"),
    ("ip_hi", "UBIGINT"),
    ("ip_lo", "UBIGINT"),
    ("port", "INTEGER"),
    ("pod", "VARCHAR"),
    ("namespace", "VARCHAR"),
    ("workload", "VARCHAR"),
    ("service", "VARCHAR"),
    ("node", "VARCHAR"),
    ("container", "VARCHAR"),
    ("process", "VARCHAR"),
    ("pid", "BIGINT"),
    ("labels", "MAP(VARCHAR, VARCHAR)"),
)

COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "VARCHAR"),
    ("ingest_ts", "BIGINT"),
    ("protocol", "VARCHAR"),
    ("transport", "VARCHAR"),
    ("tls", "BOOLEAN"),
    ("sni", "VARCHAR"),
    *((f"src_{n}", t) for n, t in _ENDPOINT_COLUMNS),
    *((f"dst_{n}", t) for n, t in _ENDPOINT_COLUMNS),
    ("request_ts", "BIGINT"),
    ("response_ts", "BIGINT"),
    ("latency_ns", "BIGINT"),
    ("method", "VARCHAR"),
    ("target", "VARCHAR"),
    ("status", "BIGINT"),
    ("request_headers", _HEADERS),
    ("response_headers", _HEADERS),
    ("request_body", "BLOB"),
    ("response_body", "BLOB"),
    ("request_body_size", "BIGINT"),
    ("response_body_size", "BIGINT"),
    ("info", "VARCHAR"),
    ("flags", "VARCHAR[]"),
    ("flow_id", "VARCHAR"),
    ("record", "VARCHAR"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(n for n, _ in COLUMNS)
COLUMN_TYPES: dict[str, str] = dict(COLUMNS)

# The filter language's fields (dissect.filter names) and the columns they read.
FIELD_COLUMNS: dict[str, str] = {
    "id": "id",
    "protocol": "protocol",
    "transport": "transport",
    "method": "method",
    "target": "target",
    "sni": "sni",
    "status": "status",
    "tls": "tls",
    "latency": "latency_ns",
    "request_ts": "request_ts",
    "response_ts": "response_ts",
    "ingest_ts": "ingest_ts",
    "request.body_size": "request_body_size",
    "response.body_size": "response_body_size",
    "request.body": "request_body",
    "response.body": "response_body",
    "request.headers": "request_headers",
    "response.headers": "response_headers",
    "info": "info",
    "flags": "flags",
    **{f"{end}.{n}": f"{end}_{n}" for end in ("src", "dst") for n, _ in _ENDPOINT_COLUMNS if n[:3] != "ip_"},
}
# for an IP field: the two halves of its number
IP_COLUMNS: dict[str, tuple[str, str]] = {
    "src.ip": ("src_ip_hi", "src_ip_lo"),
    "dst.ip": ("dst_ip_hi", "dst_ip_lo"),
}

# what GET /api/v1/calls/{id} reads to rebuild the Call
RECORD_COLUMNS = ("record", "request_body", "response_body")

_U64 = (1 << 64) - 1
_ENCODER = msgspec.json.Encoder()


def create_table_sql(table: str = TABLE) -> str:
    """The CREATE TABLE statement (no constraints or indexes: the store decides those)."""
    if not table.isidentifier():
        raise ValueError(f"not a table name: {table!r}")
    cols = ",\n    ".join(f'"{n}" {t}' for n, t in COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {cols}\n)"


def insert_sql(table: str = TABLE, count: int = 1) -> str:
    """INSERT of `count` rows with `?` placeholders, columns in COLUMN_NAMES order (small batches
    and tests; the store's bulk path is Arrow)."""
    if not table.isidentifier():
        raise ValueError(f"not a table name: {table!r}")
    one = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    names = ", ".join(f'"{n}"' for n in COLUMN_NAMES)
    return f"INSERT INTO {table} ({names}) VALUES " + ", ".join([one] * count)


def insert_params(cols: dict[str, list[Any]]) -> list[Any]:
    """The parameters of `insert_sql(count=n)` for a `rows()` batch of n calls, row by row.
    MAP values are passed in DuckDB's explicit {"key": [...], "value": [...]} form: a plain dict
    would bind as a STRUCT, which fails for keys like ""."""
    maps = [i for i, n in enumerate(COLUMN_NAMES) if COLUMN_TYPES[n].startswith("MAP(")]
    out: list[Any] = []
    for r in zip(*cols.values(), strict=True):
        vals = list(r)
        for i in maps:
            d = vals[i]
            if d is not None:
                vals[i] = {"key": list(d), "value": list(d.values())}
        out.extend(vals)
    return out


def _endpoint(e: Endpoint) -> tuple[Any, ...]:
    n = None if e.ip is None else ip_to_int(e.ip)
    return (
        e.ip,
        None if n is None else n >> 64,
        None if n is None else n & _U64,
        e.port,
        e.pod,
        e.namespace,
        e.workload,
        e.service,
        e.node,
        e.container,
        e.process,
        e.pid,
        e.labels,
    )


def _headers(m: Message | None) -> list[dict[str, str]] | None:
    return None if m is None else [{"name": k, "value": v} for k, v in m.headers]


def row(c: Call) -> tuple[Any, ...]:
    """One call as a tuple in COLUMN_NAMES order."""
    req, resp = c.request, c.response
    return (
        c.id,
        c.ingest_ts,
        c.protocol,
        c.transport,
        c.tls,
        c.sni,
        *_endpoint(c.src),
        *_endpoint(c.dst),
        c.request_ts,
        c.response_ts,
        c.latency_ns,
        c.method,
        c.target,
        c.status,
        _headers(req),
        _headers(resp),
        None if req is None else req.body,
        None if resp is None else resp.body,
        None if req is None else req.body_size,
        None if resp is None else resp.body_size,
        _ENCODER.encode(c.info).decode(),
        list(c.flags),
        c.flow_id,
        c.to_json(bodies=False),
    )


def rows(calls: list[Call]) -> dict[str, list[Any]]:
    """A batch, column-oriented: {column name: values}, in COLUMN_NAMES order."""
    if not calls:
        return {n: [] for n in COLUMN_NAMES}
    return dict(zip(COLUMN_NAMES, map(list, zip(*map(row, calls))), strict=True))


def call_from_row(record: str | bytes, request_body: bytes | None, response_body: bytes | None) -> Call:
    """Rebuild the full Call from RECORD_COLUMNS."""
    c = Call.from_json(record)
    if c.request is not None and request_body is not None:
        c.request.body = bytes(request_body)
    if c.response is not None and response_body is not None:
        c.response.body = bytes(response_body)
    return c
