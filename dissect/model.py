"""The one record that flows end to end: a `Call` (request + response + who + what went wrong).

Worker, wire, hub and TUI all speak this record; its JSON form (`Call.to_json`) is the wire format
of the hub API and of `podshark dissect --json`. The shape is fixed by docs in ../shared/design.md;
bump `SCHEMA_VERSION` whenever a field changes meaning.

Dataclasses with ``slots`` keep per-call cost low: dissectors create one `Call` per message pair,
which on a busy node is tens of thousands per second.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

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
    TRUNCATED = "truncated"  # a body was cut at the size limit or by a gap
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


@dataclass(slots=True)
class Endpoint:
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
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "port": self.port,
            "pod": self.pod,
            "namespace": self.namespace,
            "workload": self.workload,
            "service": self.service,
            "node": self.node,
            "container": self.container,
            "pid": self.pid,
            "process": self.process,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Endpoint:
        d = d or {}
        return cls(
            ip=d.get("ip"),
            port=d.get("port"),
            pod=d.get("pod"),
            namespace=d.get("namespace"),
            workload=d.get("workload"),
            service=d.get("service"),
            node=d.get("node"),
            container=d.get("container"),
            pid=d.get("pid"),
            process=d.get("process"),
            labels=dict(d.get("labels") or {}),
        )

    def address(self) -> str:
        """`ip:port`, bracketing IPv6 the way URLs and Wireshark do."""
        if self.ip is None:
            return "?"
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(slots=True)
class Message:
    """One side of a call. `body` is decoded from Content-Encoding; `wire_size` is as sent."""

    headers: list[Header] = field(default_factory=list)
    trailers: list[Header] = field(default_factory=list)
    body: bytes = b""
    body_size: int = 0
    wire_size: int = 0
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
        d: dict[str, Any] = {
            "headers": [[k, v] for k, v in self.headers],
            "trailers": [[k, v] for k, v in self.trailers],
            "body_size": self.body_size,
            "wire_size": self.wire_size,
        }
        if bodies:
            d["body"] = base64.b64encode(self.body).decode("ascii")
        d["truncated"] = self.truncated
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Message | None:
        if d is None:
            return None
        body = d.get("body")
        return cls(
            headers=[(str(k), str(v)) for k, v in d.get("headers") or []],
            trailers=[(str(k), str(v)) for k, v in d.get("trailers") or []],
            body=base64.b64decode(body) if body else b"",
            body_size=int(d.get("body_size") or 0),
            wire_size=int(d.get("wire_size") or 0),
            truncated=bool(d.get("truncated", False)),
        )


@dataclass(slots=True)
class Call:
    """A request/response pair (or half of one), with identity and anomalies.

    `src` is always the client. `request` is None when only the response was seen, `response` is
    None when it never came; the matching flags say so.
    """

    protocol: str
    src: Endpoint
    dst: Endpoint
    id: str = ""
    v: int = SCHEMA_VERSION
    ingest_ts: int | None = None
    transport: str = "tcp"
    tls: bool = False
    sni: str | None = None
    request_ts: int | None = None
    response_ts: int | None = None
    method: str | None = None
    target: str | None = None
    status: int | None = None
    request: Message | None = None
    response: Message | None = None
    info: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    flow_id: str | None = None

    @property
    def latency_ns(self) -> int | None:
        if self.request_ts is None or self.response_ts is None:
            return None
        return self.response_ts - self.request_ts

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
        return {
            "v": self.v,
            "id": self.id,
            "ingest_ts": self.ingest_ts,
            "protocol": self.protocol,
            "transport": self.transport,
            "tls": self.tls,
            "sni": self.sni,
            "src": self.src.to_dict(),
            "dst": self.dst.to_dict(),
            "request_ts": self.request_ts,
            "response_ts": self.response_ts,
            "latency_ns": self.latency_ns,
            "method": self.method,
            "target": self.target,
            "status": self.status,
            "request": None if self.request is None else self.request.to_dict(bodies),
            "response": None if self.response is None else self.response.to_dict(bodies),
            "info": self.info,
            "flags": list(self.flags),
            "flow_id": self.flow_id,
        }

    def to_json(self, bodies: bool = True) -> str:
        """One line of JSON, the design's wire form."""
        return json.dumps(self.to_dict(bodies), separators=(", ", ": "), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Call:
        v = d.get("v", SCHEMA_VERSION)
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported Call schema version {v!r} (this podshark reads {SCHEMA_VERSION})")
        return cls(
            v=v,
            id=d.get("id", ""),
            ingest_ts=d.get("ingest_ts"),
            protocol=d["protocol"],
            transport=d.get("transport", "tcp"),
            tls=bool(d.get("tls", False)),
            sni=d.get("sni"),
            src=Endpoint.from_dict(d.get("src")),
            dst=Endpoint.from_dict(d.get("dst")),
            request_ts=d.get("request_ts"),
            response_ts=d.get("response_ts"),
            method=d.get("method"),
            target=d.get("target"),
            status=d.get("status"),
            request=Message.from_dict(d.get("request")),
            response=Message.from_dict(d.get("response")),
            info=dict(d.get("info") or {}),
            flags=list(d.get("flags") or []),
            flow_id=d.get("flow_id"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Call:
        return cls.from_dict(json.loads(text))
