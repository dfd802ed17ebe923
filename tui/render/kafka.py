"""Kafka: the API, version and correlation id, the topics and partitions the call touched (with
their error codes and offsets) and the records it carried (key, value, headers, offset, time).

`info["request"]` and `info["response"]` are the decoded bodies (dissect/kafka/apis.py): nested
dicts and lists whose shape depends on the API and version. Rather than one renderer per API,
`partitions` and `records` walk them generically: a dict with a `name`/`topic` names the topic of
what is inside it, a dict with a `partition`/`partition_index`/`index` is a partition, and a dict
with `batches` and `records` is a records field (dissect/kafka/records.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from dissect.model import Call
from tui.render.overview import key_value_table
from tui.render.status import status_text
from tui.render.units import as_dict, as_list, safe, size, utc_ms, value

TOPIC_KEYS = ("topic", "name", "topic_id")
PARTITION_KEYS = ("partition_index", "partition", "index")
MAX_ROWS = 500  # partitions / records listed
MAX_DEPTH = 12  # the decoded bodies are shallow; this only stops a pathological walk
CELL_CHARS = 200  # key/value text shown in a table cell


@dataclass
class PartitionRow:
    side: str
    topic: str | None
    partition: int
    fields: dict[str, Any] = field(default_factory=dict)  # scalars: error_code, offsets…


@dataclass
class RecordRow:
    side: str
    topic: str | None
    partition: int | None
    offset: int | None
    timestamp: int | None
    key: dict[str, Any] | None
    value: dict[str, Any] | None
    headers: list[dict[str, Any]]


def _topic_of(d: dict[str, Any]) -> str | None:
    for k in TOPIC_KEYS:
        v = d.get(k)
        if isinstance(v, str) and any(isinstance(x, list) for x in d.values()):
            return v
    return None


def _partition_of(d: dict[str, Any]) -> int | None:
    for k in PARTITION_KEYS:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _walk(
    obj: Any,
    side: str,
    topic: str | None,
    partition: int | None,
    parts: list[PartitionRow],
    records: list[RecordRow],
    depth: int = 0,
) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(obj, list):
        for x in obj:
            _walk(x, side, topic, partition, parts, records, depth + 1)
        return
    if not isinstance(obj, dict):
        return
    if isinstance(obj.get("records"), list) and "batches" in obj:  # a records field
        for r in obj["records"]:
            if isinstance(r, dict) and len(records) < MAX_ROWS:
                records.append(
                    RecordRow(
                        side,
                        topic,
                        partition,
                        _int(r.get("offset")),
                        _int(r.get("timestamp")),
                        _bytes_field(r.get("key")),
                        _bytes_field(r.get("value")),
                        [as_dict(h) for h in as_list(r.get("headers"))],
                    )
                )
        return
    topic = _topic_of(obj) or topic
    p = _partition_of(obj)
    if p is not None and topic is not None and len(parts) < MAX_ROWS:
        partition = p
        scalars = {
            k: v
            for k, v in obj.items()
            if k not in PARTITION_KEYS and (v is None or isinstance(v, (int, str, float, bool)))
        }
        records_field = obj.get("records")
        if isinstance(records_field, dict) and isinstance(records_field.get("count"), int):
            scalars["records"] = records_field["count"]
        parts.append(PartitionRow(side, topic, p, scalars))
    for v in obj.values():
        if isinstance(v, (dict, list)):
            _walk(v, side, topic, partition, parts, records, depth + 1)


def walk(call: Call) -> tuple[list[PartitionRow], list[RecordRow]]:
    """Partitions and records of both directions, request first."""
    parts: list[PartitionRow] = []
    records: list[RecordRow] = []
    for side in ("request", "response"):
        _walk(call.info.get(side), side, None, None, parts, records)
    return parts, records


def kafka_summary(call: Call) -> Table:
    """API name, key and version, correlation id, client id, error, record count."""
    info = call.info
    t = key_value_table()
    api = call.method or "?"
    t.add_row("api", Text(f"{api} (key {info.get('api_key', '?')}, version {info.get('api_version', '?')})"))
    t.add_row("correlation id", value(info.get("correlation_id")))
    t.add_row("client id", value(info.get("client_id")))
    t.add_row("error", status_text("kafka", call.status, info))
    t.add_row("topics", value(call.target))
    if "record_count" in info:
        t.add_row("records", value(info["record_count"]))
    if info.get("no_response"):
        t.add_row("acks", Text("0: no response expected"))
    if info.get("decoded") is False:
        t.add_row("decoded", Text("no: this API's body is not decoded (name and ids only)", style="dim"))
    for err in as_list(info.get("decode_errors")):
        t.add_row("decoding", Text(safe(str(err), one_line=True), style="yellow"))
    return t


def partitions_table(rows: list[PartitionRow]) -> Table:
    t = Table(title="partitions", title_justify="left", title_style="bold", expand=True, show_edge=False)
    t.add_column("side", no_wrap=True)
    t.add_column("topic", overflow="fold", ratio=2)
    t.add_column("partition", justify="right", no_wrap=True)
    t.add_column("details", overflow="fold", ratio=4)
    for r in rows:
        details = "  ".join(f"{k}={_scalar(v)}" for k, v in r.fields.items())
        t.add_row(r.side, safe(r.topic or "", one_line=True), str(r.partition), details)
    return t


def render_bytes(v: dict[str, Any] | None) -> Text:
    """A record key or value as dissect/kafka/records.py renders it: text, or base64, with size."""
    if v is None:
        return Text("null", style="dim")
    if "text" in v:
        s = safe(str(v["text"]), one_line=True)
        out = Text(s if len(s) <= CELL_CHARS else s[:CELL_CHARS] + "…")
    elif "base64" in v:
        b = str(v["base64"])
        out = Text("base64:" + (b if len(b) <= CELL_CHARS else b[:CELL_CHARS] + "…"), style="yellow")
    else:
        out = Text(safe(json.dumps(v, default=str), one_line=True)[:CELL_CHARS])
    if v.get("truncated"):
        n = v.get("size")
        out.append(f" (cut, {size(n) if isinstance(n, int) else '?'})", style="dim")
    return out


def records_table(rows: list[RecordRow]) -> Table:
    t = Table(title="records", title_justify="left", title_style="bold", expand=True, show_edge=False)
    t.add_column("side", no_wrap=True)
    t.add_column("topic/partition", overflow="fold")
    t.add_column("offset", justify="right", no_wrap=True)
    t.add_column("timestamp", no_wrap=True)
    t.add_column("key", overflow="fold", ratio=1)
    t.add_column("value", overflow="fold", ratio=3)
    t.add_column("headers", overflow="fold", ratio=1)
    for r in rows:
        where = safe(r.topic or "?", one_line=True) + (f"/{r.partition}" if r.partition is not None else "")
        headers = Text()
        for i, h in enumerate(r.headers):
            if i:
                headers.append("\n")
            headers.append(safe(str(h.get("key", "")), one_line=True) + "=")
            headers.append_text(render_bytes(h.get("value")))
        t.add_row(
            r.side,
            where,
            value(r.offset),
            Text(utc_ms(r.timestamp)),
            render_bytes(r.key),
            render_bytes(r.value),
            headers if r.headers else Text("—", style="dim"),
        )
    return t


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _bytes_field(v: Any) -> dict[str, Any] | None:
    return v if isinstance(v, dict) else None


def _scalar(v: Any) -> str:
    return "null" if v is None else safe(str(v), one_line=True)


def kafka_view(call: Call) -> RenderableType:
    parts_rows, record_rows = walk(call)
    out: list[RenderableType] = [kafka_summary(call), Text()]
    if parts_rows:
        out += [partitions_table(parts_rows), Text()]
    if record_rows:
        out += [records_table(record_rows)]
    elif call.info.get("record_count") == 0 or not parts_rows:
        out.append(Text("no records in this call", style="dim"))
    return Group(*out)
