"""How calls are stored in DuckDB: the one place that names the columns and their types.

A row is the call, column by column: a column for every field the filter language can test
(`hub/filter_sql.py` compiles filters against these names), the bodies as BLOBs, and the few
fields nobody filters on (trailers, wire sizes, truncation), so the columns alone hold the whole
`Call`. There is no stored copy of the call's JSON: `record` (the JSON form without bodies,
`Call.to_json(bodies=False)`, which the API lists) is made from the columns when a page is read
(`summary_from_row`; `Store.query(columns=("record",))` does it), and `call_from_row` rebuilds
the whole `Call` from RECORD_COLUMNS. A stored JSON copy was half of every row's bytes and more
than half of the cost of storing a call (encoding it in Python, appending it, compressing it),
paid for every call stored to save a few microseconds on each call of a page read. (A DuckDB
generated column would cost as much: DuckDB evaluates generated columns on insert.)

Choices:
- `ts` is the call's start time (`Call.ts`: request_ts, else response_ts, else 0), the order key of
  every listing. Calls are stored in ingest order, which is close to start-time order, so its
  min/max zone maps let DuckDB skip row groups for a time window, a cursor or a newest page.
- Timestamps and latency are BIGINT nanoseconds, as in the record (no TIMESTAMP conversion on
  either side of a comparison).
- IP addresses are kept as text (`src_ip`) and as a 128-bit number split into two UBIGINTs
  (`src_ip_hi`, `src_ip_lo`), IPv4 mapped into IPv6 space (`::ffff:a.b.c.d`): a CIDR becomes one or
  two integer range tests that DuckDB's min/max zone maps can prune, and no run-time extension
  (`inet`) is needed. Text that is not an address leaves both numbers NULL.
- Headers and trailers are LIST(STRUCT(name, value)) with names as sent (case and repeats kept);
  labels MAP(VARCHAR, VARCHAR); flags VARCHAR[] (never NULL: an empty list); `info` the JSON text
  of the dict, read with the built-in json functions.
- A side that was never seen (`request`/`response` null) is NULL in all its columns, so every
  comparison on it is false, as in the predicate; a side that was seen has non-NULL headers.

Two ways to make rows: `arrow_table(calls)`, the store's bulk path (an Arrow table built column by
column), and `rows(calls)` (plain Python values, for DuckDB's VALUES with parameters: tests and
small batches). Both give the same values; set `ingest_ts` on the calls first.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Sequence
from typing import Any

import msgspec
import pyarrow as pa

from dissect.filter import ip_to_int
from dissect.model import Call, Endpoint, Header, Message

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
_MESSAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("headers", _HEADERS),
    ("trailers", _HEADERS),
    ("body", "BLOB"),
    ("body_size", "BIGINT"),
    ("wire_size", "BIGINT"),
    ("truncated", "BOOLEAN"),
)

COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "VARCHAR"),
    ("ts", "BIGINT"),  # Call.ts: the start time, the order key of every listing
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
    *((f"{side}_{n}", t) for side in ("request", "response") for n, t in _MESSAGE_COLUMNS),
    ("info", "VARCHAR"),
    ("flags", "VARCHAR[]"),
    ("flow_id", "VARCHAR"),
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

_ENDPOINT_FIELDS = tuple(n for n, _ in _ENDPOINT_COLUMNS if n[:3] != "ip_")
_MESSAGE_FIELDS = tuple(n for n, _ in _MESSAGE_COLUMNS if n != "body")
# What `summary_from_row` reads (a call without its bodies), then the two body columns: with them,
# what `call_from_row` reads to rebuild the whole Call (GET /api/v1/calls/{id}).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "id",
    "ingest_ts",
    "protocol",
    "transport",
    "tls",
    "sni",
    *(f"{end}_{n}" for end in ("src", "dst") for n in _ENDPOINT_FIELDS),
    "request_ts",
    "response_ts",
    "latency_ns",
    "method",
    "target",
    "status",
    *(f"{side}_{n}" for side in ("request", "response") for n in _MESSAGE_FIELDS),
    "info",
    "flags",
    "flow_id",
)
RECORD_COLUMNS: tuple[str, ...] = (*SUMMARY_COLUMNS, "request_body", "response_body")
# Not a stored column: `Store.query(columns=("record",))` answers each row's JSON without bodies,
# made by `summary_from_row` from SUMMARY_COLUMNS.
RECORD = "record"
# what `Store.query` can return: the stored columns and `record`
QUERY_COLUMNS = frozenset((*COLUMN_NAMES, RECORD))

_U64 = (1 << 64) - 1
_ENCODER = msgspec.json.Encoder()
_INFO = msgspec.json.Decoder(dict[str, Any])


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


# ---- the reference path: one call, one tuple of plain values


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


def _message(m: Message | None) -> tuple[Any, ...]:
    if m is None:
        return (None,) * len(_MESSAGE_COLUMNS)
    return (
        [{"name": k, "value": v} for k, v in m.headers],
        [{"name": k, "value": v} for k, v in m.trailers],
        m.body,
        m.body_size,
        m.wire_size,
        m.truncated,
    )


def row(c: Call) -> tuple[Any, ...]:
    """One call as a tuple in COLUMN_NAMES order."""
    return (
        c.id,
        c.ts,
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
        *_message(c.request),
        *_message(c.response),
        _ENCODER.encode(c.info).decode(),
        list(c.flags),
        c.flow_id,
    )


def rows(calls: list[Call]) -> dict[str, list[Any]]:
    """A batch, column-oriented: {column name: values}, in COLUMN_NAMES order."""
    if not calls:
        return {n: [] for n in COLUMN_NAMES}
    return dict(zip(COLUMN_NAMES, map(list, zip(*map(row, calls))), strict=True))


# ---- back from a row


def _endpoint_from(v: Sequence[Any]) -> Endpoint:
    ip, port, pod, namespace, workload, service, node, container, process, pid, labels = v
    return Endpoint(
        ip=ip,
        port=port,
        pod=pod,
        namespace=namespace,
        workload=workload,
        service=service,
        node=node,
        container=container,
        pid=pid,
        process=process,
        labels=labels if labels is not None else {},
    )


def _message_from(v: Sequence[Any], body: bytes | None) -> Message | None:
    headers, trailers, body_size, wire_size, truncated = v
    if headers is None:
        return None
    return Message(
        headers=[(h["name"], h["value"]) for h in headers],
        trailers=[(h["name"], h["value"]) for h in trailers or ()],
        body_size=body_size,
        wire_size=wire_size,
        body=b"" if body is None else bytes(body),
        truncated=truncated,
    )


_NE = len(_ENDPOINT_FIELDS)
_NM = len(_MESSAGE_FIELDS)


def _call_from(v: Sequence[Any], request_body: bytes | None, response_body: bytes | None) -> Call:
    src = 6
    dst = src + _NE
    rest = dst + _NE
    req = rest + 6
    resp = req + _NM
    tail = resp + _NM
    return Call(
        id=v[0],
        ingest_ts=v[1],
        protocol=v[2],
        transport=v[3],
        tls=v[4],
        sni=v[5],
        src=_endpoint_from(v[src:dst]),
        dst=_endpoint_from(v[dst:rest]),
        request_ts=v[rest],
        response_ts=v[rest + 1],
        latency_ns=v[rest + 2],
        method=v[rest + 3],
        target=v[rest + 4],
        status=v[rest + 5],
        request=_message_from(v[req:resp], request_body),
        response=_message_from(v[resp:tail], response_body),
        info=_INFO.decode(v[tail]) if v[tail] is not None else {},
        flags=list(v[tail + 1] or ()),
        flow_id=v[tail + 2],
    )


def call_from_row(*values: Any) -> Call:
    """Rebuild the whole Call from the values of RECORD_COLUMNS, in that order."""
    if len(values) != len(RECORD_COLUMNS):
        raise ValueError(f"call_from_row wants the {len(RECORD_COLUMNS)} values of RECORD_COLUMNS")
    return _call_from(values[:-2], values[-2], values[-1])


def summary_from_row(*values: Any) -> bytes:
    """The JSON form without bodies (`Call.to_json_bytes(bodies=False)`) from the values of
    SUMMARY_COLUMNS, in that order."""
    if len(values) != len(SUMMARY_COLUMNS):
        raise ValueError(f"summary_from_row wants the {len(SUMMARY_COLUMNS)} values of SUMMARY_COLUMNS")
    return _call_from(values, None, None).to_json_bytes(bodies=False)


# ---- the bulk path: a batch straight to Arrow columns


def _arrow_type(t: str) -> pa.DataType:
    """The Arrow type a column is built with. Bodies use the 64-bit-offset variant, so a batch
    holding more than 2 GiB of them is still one array."""
    simple: dict[str, pa.DataType] = {
        "VARCHAR": pa.string(),
        "BIGINT": pa.int64(),
        "UBIGINT": pa.uint64(),
        "INTEGER": pa.int32(),
        "BOOLEAN": pa.bool_(),
        "BLOB": pa.large_binary(),
        "VARCHAR[]": pa.list_(pa.string()),
        "MAP(VARCHAR, VARCHAR)": pa.map_(pa.string(), pa.string()),
        _HEADERS: pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())])),
    }
    return simple[t]


ARROW_SCHEMA = pa.schema([(n, _arrow_type(t)) for n, t in COLUMNS])
_HEADER_TYPE = ARROW_SCHEMA.field("request_headers").type
_LABELS_TYPE = ARROW_SCHEMA.field("src_labels").type
_FLAGS_TYPE = ARROW_SCHEMA.field("flags").type

# Addresses repeat (pods, services, nodes): parse each once. Cleared when full, so it stays bounded.
_IP_CACHE: dict[str, tuple[int, int] | tuple[None, None]] = {}
_IP_CACHE_MAX = 1 << 16
_NO_PAIRS: list[Header] = []  # read only


def ipv4_to_int(text: str) -> int | None:
    """`ip_to_int` for a plain dotted quad, ten times faster than `ipaddress`; None for anything
    else (which then goes through `ip_to_int`). It accepts only what `ipaddress` accepts: four
    ASCII decimal octets of at most 3 digits, no leading zeros, each at most 255."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    n = 0
    for p in parts:
        if not (0 < len(p) <= 3 and p.isascii() and p.isdigit()) or (p[0] == "0" and p != "0"):
            return None
        v = int(p)
        if v > 255:
            return None
        n = n << 8 | v
    return 0xFFFF_0000_0000 | n


def _ip_halves(ip: str | None) -> tuple[int, int] | tuple[None, None]:
    if ip is None:
        return None, None
    got = _IP_CACHE.get(ip)
    if got is None:
        n = ipv4_to_int(ip)
        if n is None:
            n = ip_to_int(ip)
        got = (None, None) if n is None else (n >> 64, n & _U64)
        if len(_IP_CACHE) >= _IP_CACHE_MAX:
            _IP_CACHE.clear()
        _IP_CACHE[ip] = got
    return got


def _offsets(lists: Sequence[Sequence[Any] | dict[str, str]]) -> pa.Array:
    return pa.array(itertools.accumulate(map(len, lists), initial=0), pa.int32())


def _pairs(lists: list[list[Header]], mask: pa.Array | None) -> pa.Array:
    """LIST(STRUCT(name, value)) from lists of (name, value) pairs, built flat (offsets + two
    string arrays): converting a list of dicts per row cost more than the rest of the batch."""
    flat = list(itertools.chain.from_iterable(lists))
    names = pa.array([p[0] for p in flat], pa.string())
    values = pa.array([p[1] for p in flat], pa.string())
    items = pa.StructArray.from_arrays([names, values], names=["name", "value"])
    return pa.ListArray.from_arrays(_offsets(lists), items, type=_HEADER_TYPE, mask=mask)


def _labels(dicts: list[dict[str, str]]) -> pa.Array:
    keys = pa.array(list(itertools.chain.from_iterable(dicts)), pa.string())
    values = pa.array(list(itertools.chain.from_iterable(d.values() for d in dicts)), pa.string())
    return pa.MapArray.from_arrays(_offsets(dicts), keys, values, type=_LABELS_TYPE)


def _endpoint_columns(end: str, ends: list[Endpoint], out: dict[str, pa.Array]) -> None:
    ips = [e.ip for e in ends]
    halves = [_ip_halves(ip) for ip in ips]
    out[f"{end}_ip"] = pa.array(ips, pa.string())
    out[f"{end}_ip_hi"] = pa.array([h[0] for h in halves], pa.uint64())
    out[f"{end}_ip_lo"] = pa.array([h[1] for h in halves], pa.uint64())
    out[f"{end}_port"] = pa.array([e.port for e in ends], pa.int32())
    out[f"{end}_pod"] = pa.array([e.pod for e in ends], pa.string())
    out[f"{end}_namespace"] = pa.array([e.namespace for e in ends], pa.string())
    out[f"{end}_workload"] = pa.array([e.workload for e in ends], pa.string())
    out[f"{end}_service"] = pa.array([e.service for e in ends], pa.string())
    out[f"{end}_node"] = pa.array([e.node for e in ends], pa.string())
    out[f"{end}_container"] = pa.array([e.container for e in ends], pa.string())
    out[f"{end}_process"] = pa.array([e.process for e in ends], pa.string())
    out[f"{end}_pid"] = pa.array([e.pid for e in ends], pa.int64())
    out[f"{end}_labels"] = _labels([e.labels for e in ends])


def _message_columns(side: str, msgs: list[Message | None], out: dict[str, pa.Array]) -> None:
    """The columns of one side; a side never seen is NULL in all of them."""
    absent = [m is None for m in msgs]
    mask = pa.array(absent, pa.bool_()) if any(absent) else None
    seen = [_EMPTY if m is None else m for m in msgs]
    out[f"{side}_headers"] = _pairs([m.headers for m in seen], mask)
    out[f"{side}_trailers"] = _pairs([m.trailers for m in seen], mask)
    out[f"{side}_body"] = pa.array([None if m is None else m.body for m in msgs], pa.large_binary())
    out[f"{side}_body_size"] = pa.array([m.body_size for m in seen], pa.int64(), mask=mask)
    out[f"{side}_wire_size"] = pa.array([m.wire_size for m in seen], pa.int64(), mask=mask)
    out[f"{side}_truncated"] = pa.array([m.truncated for m in seen], pa.bool_(), mask=mask)


_EMPTY = Message(headers=_NO_PAIRS, trailers=_NO_PAIRS)  # stands in for an absent side (masked out)


def arrow_table(calls: list[Call]) -> pa.Table:
    """A batch as one Arrow table laid out as COLUMNS (the store's bulk insert), built column by
    column: one list comprehension per column, nested columns from flat arrays and offsets, each
    address parsed once. Same values as `rows()` (tests hold the two together); set `ingest_ts`
    on the calls first.

    Python's cyclic garbage collector is paused meanwhile: the build makes a few short-lived
    objects per call, and every few hundred of them set off a collection that walks the calls
    waiting in the hub's queue again. Nothing made here forms a cycle; reference counting frees it
    all."""
    if not calls:
        return ARROW_SCHEMA.empty_table()
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _arrow_table(calls)
    finally:
        if collecting:
            gc.enable()


def _arrow_table(calls: list[Call]) -> pa.Table:
    encode = _ENCODER.encode
    flags = [c.flags for c in calls]
    out: dict[str, pa.Array] = {
        "id": pa.array([c.id for c in calls], pa.string()),
        "ts": pa.array(
            [r if (r := c.request_ts) is not None else (c.response_ts or 0) for c in calls], pa.int64()
        ),
        "ingest_ts": pa.array([c.ingest_ts for c in calls], pa.int64()),
        "protocol": pa.array([c.protocol for c in calls], pa.string()),
        "transport": pa.array([c.transport for c in calls], pa.string()),
        "tls": pa.array([c.tls for c in calls], pa.bool_()),
        "sni": pa.array([c.sni for c in calls], pa.string()),
        "request_ts": pa.array([c.request_ts for c in calls], pa.int64()),
        "response_ts": pa.array([c.response_ts for c in calls], pa.int64()),
        "latency_ns": pa.array([c.latency_ns for c in calls], pa.int64()),
        "method": pa.array([c.method for c in calls], pa.string()),
        "target": pa.array([c.target for c in calls], pa.string()),
        "status": pa.array([c.status for c in calls], pa.int64()),
        "info": pa.array([encode(c.info) if c.info else b"{}" for c in calls], pa.string()),
        "flags": pa.ListArray.from_arrays(
            _offsets(flags),
            pa.array(list(itertools.chain.from_iterable(flags)), pa.string()),
            type=_FLAGS_TYPE,
        ),
        "flow_id": pa.array([c.flow_id for c in calls], pa.string()),
    }
    _endpoint_columns("src", [c.src for c in calls], out)
    _endpoint_columns("dst", [c.dst for c in calls], out)
    _message_columns("request", [c.request for c in calls], out)
    _message_columns("response", [c.response for c in calls], out)
    return pa.Table.from_arrays([out[n] for n in COLUMN_NAMES], schema=ARROW_SCHEMA)
