"""The worker's side of the hub's ingest protocol, as bytes: what the uplink sends and reads.

The protocol is the hub's (`hub/ingest.py` documents it); this module only encodes and decodes it,
with no I/O, so the uplink (`capture/uplink.py`) stays about connections, spooling and timing.

Worker -> hub (all JSON objects, sent as binary WebSocket frames: the hub reads text and binary alike):

- `hello` {worker, capabilities}
- `calls` {seq, calls: [Call JSON]}: built by splicing the calls' own JSON bytes, never re-encoded
- `flows` {seq, flows: [FlowAggregate JSON]}: flow accounting's aggregates (`dissect.flowstats`),
  numbered in the same sequence as `calls` and acked the same way; sent only to a hub that takes
  them (an `error` about a flows batch saying "unknown message type" or "not accepted", or a hub
  `hello` whose capabilities do not list "flows", stops them for that connection)
- `stats` {drops: {kind: count}, ...}: the worker's report on itself
- `export-data` {id, seq, packets: [{flow_id, ts, orig_len, linktype, data (base64)}], done, error?}

Hub -> worker: `ack` {seq, calls | flows, rejected}, `error` {error, seq?, index?}, `export-request`
{id, from, to, flow_ids}, `export-next` {id}, `export-cancel` {id}, and optionally `hello`
{capabilities} (what the hub takes). `decode_hub` turns any of them into a
`HubMessage`, or raises `WireError` with a one-line reason: a hub (or something pretending to be one)
that sends garbage costs a log line, never the connection or the worker.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

import msgspec

MAX_FLOW_IDS = 1_000_000  # flow ids in one export request (a connection each: far above any real one)
MAX_ID = 128  # characters of an export request id
MAX_CAPABILITIES = 64  # in a hub's hello
# How a hub says it does not take a message type at all, in an `error` about such a message: today's
# hub answers "unknown message type 'flows'"; a hub that keeps no aggregates "... flows are not accepted".
REFUSALS = ("unknown message type", "not accepted")


class WireError(ValueError):
    """A message from the hub that cannot be understood (the text says why)."""


class HubMessage(msgspec.Struct, kw_only=True):
    """Any message the hub sends a worker; the fields a type does not use keep their defaults."""

    type: str
    seq: int | None = None  # ack, error: the batch it is about
    calls: int | None = None  # ack: calls stored from the batch
    flows: int | None = None  # ack: flow aggregates stored from the batch
    rejected: Annotated[int, msgspec.Meta(ge=0)] = 0  # ack: calls of the batch the hub refused
    error: str | None = None  # error: what went wrong
    index: int | None = None  # error: which call of the batch
    id: Annotated[str, msgspec.Meta(max_length=MAX_ID)] | int | None = None  # export-*: the request
    from_ns: int | None = msgspec.field(default=None, name="from")  # export-request: window start
    to_ns: int | None = msgspec.field(default=None, name="to")  # export-request: window end (exclusive)
    flow_ids: Annotated[list[str], msgspec.Meta(max_length=MAX_FLOW_IDS)] = []  # export-request
    # hello: the message types the hub takes (None: it did not say)
    capabilities: Annotated[list[str], msgspec.Meta(max_length=MAX_CAPABILITIES)] | None = None


_HUB = msgspec.json.Decoder(HubMessage)
_RAW = msgspec.json.Decoder(msgspec.Raw)
_encode = msgspec.json.encode


def decode_hub(data: str | bytes) -> HubMessage:
    """One message from the hub, validated; `WireError` when it is not one."""
    try:
        return _HUB.decode(data)
    except msgspec.ValidationError as e:
        raise WireError(f"not a hub message: {e}") from None
    except msgspec.DecodeError as e:
        raise WireError(f"not JSON: {e}") from None
    except RecursionError:
        raise WireError("JSON nested too deeply") from None


def is_json(data: bytes) -> bool:
    """True when `data` is exactly one JSON value (about a microsecond per kilobyte: the value is
    skipped over, not built). A call that is not JSON would make its whole batch unreadable to the
    hub, which could then neither ack it nor say which call was bad."""
    try:
        _RAW.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def hello(worker: str, capabilities: list[str]) -> bytes:
    return _encode({"type": "hello", "worker": worker, "capabilities": capabilities})


def calls_message(seq: int, payload: bytes) -> bytes:
    """A `calls` batch around `payload`: the calls' JSON joined by commas (as the spool keeps it)."""
    return b'{"type":"calls","seq":%d,"calls":[%b]}' % (seq, payload)


def flows_message(seq: int, payload: bytes) -> bytes:
    """A `flows` batch around `payload`: the aggregates' JSON joined by commas (as the spool keeps it)."""
    return b'{"type":"flows","seq":%d,"flows":[%b]}' % (seq, payload)


def batch_message(kind: str, seq: int, payload: bytes) -> bytes:
    """The message of a spooled batch of ``kind`` ("calls" or "flows")."""
    return flows_message(seq, payload) if kind == "flows" else calls_message(seq, payload)


def stats_message(body: dict[str, Any]) -> bytes:
    """A `stats` message; raises TypeError when `body` holds something JSON cannot say."""
    return _encode({**body, "type": "stats"})


def frame(ts: int, linktype: int, orig_len: int, data: bytes, flow_id: str) -> bytes:
    """One packet of an `export-data` message, as its JSON object."""
    return b'{"flow_id":%b,"ts":%d,"orig_len":%d,"linktype":%d,"data":"%b"}' % (
        _encode(flow_id),
        ts,
        orig_len,
        linktype,
        base64.b64encode(data),
    )


def export_data(
    req_id: str | int, seq: int, frames: list[bytes], done: bool, error: str | None = None
) -> bytes:
    """An `export-data` chunk of already-encoded `frame`s; `done` on the last one (or with `error`)."""
    head = b'{"type":"export-data","id":%b,"seq":%d,"done":%b' % (
        _encode(req_id),
        seq,
        b"true" if done else b"false",
    )
    if error is not None:
        head += b',"error":%b' % _encode(error)
    return head + b',"packets":[%b]}' % b",".join(frames)


def ingest_url(hub: str) -> str:
    """The ingest WebSocket URL of a hub given as http(s)://, ws(s):// or host:port."""
    base = hub.strip().rstrip("/")
    if "://" not in base:
        base = "http://" + base
    scheme, rest = base.split("://", 1)
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    if scheme not in ("ws", "wss"):
        raise ValueError(f"hub URL {hub!r}: use http://HOST:PORT or https://HOST:PORT")
    url = f"{scheme}://{rest}"
    return url if url.endswith("/api/v1/ingest") else url + "/api/v1/ingest"
