"""The one record that flows end to end: a `Call` (request + response + who + what went wrong).

Worker, wire, hub and TUI all speak this record; its JSON form (`Call.to_json`) is the wire format
of the hub API and of `podshark dissect --json`. The shape is fixed by docs in ../shared/design.md;
bump `SCHEMA_VERSION` whenever a field changes meaning.

The records are `msgspec.Struct`s: cheaper to create than dataclasses (dissectors make one `Call`
per message pair, tens of thousands a second on a busy node), encoded to JSON several times faster
than `json.dumps` of a dict (bytes become base64, tuples arrays, in declaration order — which is
the design's order), and decoded with type validation, which the hub's ingest relies on.
"""

from __future__ import annotations

from typing import Any

import msgspec

SCHEMA_VERSION = 1

Header = tuple[str, str]


class Flag:
    """What happened to a call, recorded as data (Zeek's "weird") rather than raised.

    Every flag name used anywhere in podshark is listed here so the filter language, the TUI and
    the docs agree on the vocabulary.
    """

    GAP = "gap"  # bytes of the conversation were lost (capture drop or packet never seen)
    SNAPLEN = "snaplen"  # packets cut by the capture's snap length: a gap of known size
    OUT_OF_ORDER = "out-of-order"  # segments arrived out of order and were reordered
    RETRANSMISSION = "retransmission"  # segments were sent twice; the copy was dropped
    MID_STREAM = "mid-stream"  # the capture started inside this connection
    RESPONSE_MISSING = "response-missing"
    REQUEST_MISSING = "request-missing"
    TRUNCATED = "truncated"  # a body was cut: size limit, gap, or the connection/capture ended in it
    PARSE_ERROR = "parse-error"
    HPACK_DESYNC = "hpack-desync"
    SERVER_PUSH = "server-push"
    RESET = "reset"
    GOAWAY = "goaway"
    UPGRADE = "upgrade"
    ENCRYPTED = "encrypted"
    REDACTED = "redacted"

    ALL: tuple[str, ...] = (
        GAP,
        SNAPLEN,
        OUT_OF_ORDER,
        RETRANSMISSION,
        MID_STREAM,
        RESPONSE_MISSING,
        REQUEST_MISSING,
        TRUNCATED,
        PARSE_ERROR,
        HPACK_DESYNC,
        SERVER_PUSH,
        RESET,
        GOAWAY,
        UPGRADE,
        ENCRYPTED,
        REDACTED,
    )


class Endpoint(msgspec.Struct, kw_only=True):
    """One end of a conversation: network address plus whatever identity is known for it."""

    ip: str | None = None
    port: int | None = None
    pod: str | None = None
    namespace: str | None = None
    workload: str | None = None  # "Kind/name", e.g. "Deployment/web"
    service: str | None = None
    node: str | None = None
    container: str | None = None
    pid: int | None = None
    process: str | None = None
    labels: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Endpoint:
        return msgspec.convert(d or {}, cls)

    def address(self) -> str:
        """`ip:port`, bracketing IPv6 the way URLs and Wireshark do."""
        if self.ip is None:
            return "?"
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return host if self.port is None else f"{host}:{self.port}"


class Message(msgspec.Struct, kw_only=True):
    """One side of a call. `body` is decoded from Content-Encoding; `wire_size` is as sent."""

    headers: list[Header] = []
    trailers: list[Header] = []
    body_size: int = 0
    wire_size: int = 0
    body: bytes = b""
    truncated: bool = False

    def header(self, name: str) -> str | None:
        """First value of a header, by case-insensitive name."""
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of a (possibly repeated) header, by case-insensitive name."""
        low = name.lower()
        return [v for k, v in self.headers if k.lower() == low]

    def to_dict(self, bodies: bool = True) -> dict[str, Any]:
        d = _plain(self)
        if not bodies:
            del d["body"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Message | None:
        return None if d is None else msgspec.convert(d, cls)


HTTP_PROTOCOLS = frozenset({"http", "http2"})
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "ok", "error", "other", "none")


def status_class(protocol: str, status: int | None) -> str:
    """The class a status belongs to, for colours, stats and metrics, in one vocabulary.

    HTTP statuses class by their hundreds (`2xx` ... `5xx`; outside 100-599 `other`). For gRPC, DNS
    and Kafka the status is a code where 0 is success: `ok` or `error`. No status (no response, a
    gRPC call without grpc-status, opaque TLS) is `none`. `ERRORS` in dissect/filter.py is the
    filter that selects the error classes (`5xx` and `error`); hub/stats.py has the same as SQL.
    """
    if status is None:
        return "none"
    if protocol in HTTP_PROTOCOLS:
        return f"{status // 100}xx" if 100 <= status <= 599 else "other"
    return "ok" if status == 0 else "error"


class Call(msgspec.Struct, kw_only=True):
    """A request/response pair (or half of one), with identity and anomalies.

    `src` is always the client. `request` is None when only the response was seen, `response` is
    None when it never came; the matching flags say so. Fields are declared in the order of the
    design's JSON form. `latency_ns` is derived from the two timestamps: the engine sets it on every
    call it emits, and `finish()` does the same for calls made anywhere else.
    """

    v: int = SCHEMA_VERSION
    id: str = ""
    ingest_ts: int | None = None
    protocol: str
    transport: str = "tcp"
    tls: bool = False
    sni: str | None = None
    src: Endpoint
    dst: Endpoint
    request_ts: int | None = None
    response_ts: int | None = None
    latency_ns: int | None = None
    method: str | None = None
    target: str | None = None
    status: int | None = None
    request: Message | None = None
    response: Message | None = None
    info: dict[str, Any] = {}
    flags: list[str] = []
    flow_id: str | None = None

    def finish(self) -> Call:
        """Derive `latency_ns` from the timestamps; returns the call for chaining."""
        if self.request_ts is None or self.response_ts is None:
            self.latency_ns = None
        else:
            self.latency_ns = self.response_ts - self.request_ts
        return self

    @property
    def ts(self) -> int:
        """When the call started, as seen on the wire (request time, else response time)."""
        if self.request_ts is not None:
            return self.request_ts
        return self.response_ts or 0

    def flag(self, *names: str) -> None:
        """Add flags once each, keeping first-seen order (stable output for baselines)."""
        for n in names:
            if n not in self.flags:
                self.flags.append(n)

    def to_dict(self, bodies: bool = True) -> dict[str, Any]:
        """Plain builtins (bytes as base64, pairs as lists), exactly as the JSON form has them."""
        d = _plain(self)
        if not bodies:
            for side in ("request", "response"):
                if d[side] is not None:
                    del d[side]["body"]
        return d

    def to_json(self, bodies: bool = True) -> str:
        """One line of JSON, the design's wire form."""
        return self.to_json_bytes(bodies).decode()

    def to_json_bytes(self, bodies: bool = True) -> bytes:
        return _ENCODER.encode(self if bodies else self._without_bodies())

    def encode_into(self, buf: bytearray, bodies: bool = True) -> None:
        """Append the JSON form and a newline to ``buf``: JSON lines without a copy per call."""
        _ENCODER.encode_into(self if bodies else self._without_bodies(), buf, len(buf))
        buf += b"\n"

    def _without_bodies(self) -> msgspec.Struct:
        # the summaries are not Messages: that is the point (no body field at all)
        return msgspec.structs.replace(
            self,
            request=_summary(self.request),
            response=_summary(self.response),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Call:
        _check_version(d.get("v", SCHEMA_VERSION))
        try:
            return msgspec.convert(d, cls)
        except msgspec.ValidationError as e:
            raise ValueError(f"not a valid Call record: {e}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Call:
        try:
            call = _DECODER.decode(text)
        except msgspec.ValidationError as e:
            raise ValueError(f"not a valid Call record: {e}") from None
        except msgspec.DecodeError as e:
            raise ValueError(f"not JSON: {e}") from None
        _check_version(call.v)
        return call


class _MessageSummary(msgspec.Struct, kw_only=True):
    """A `Message` without its body: what list views and `--no-bodies` send."""

    headers: list[Header]
    trailers: list[Header]
    body_size: int
    wire_size: int
    truncated: bool


def _summary(m: Message | None) -> _MessageSummary | None:
    if m is None:
        return None
    return _MessageSummary(
        headers=m.headers,
        trailers=m.trailers,
        body_size=m.body_size,
        wire_size=m.wire_size,
        truncated=m.truncated,
    )


def _plain(obj: msgspec.Struct) -> dict[str, Any]:
    return msgspec.json.decode(_ENCODER.encode(obj))


def _check_version(v: object) -> None:
    if v != SCHEMA_VERSION:
        raise ValueError(f"unsupported Call schema version {v!r} (this podshark reads {SCHEMA_VERSION})")


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Call)
