"""Shared helpers for the Kafka tests: a collecting context and the kafka-python encoders.

kafka-python (a pure-Python Kafka client, test dependency) encodes requests and responses from
Apache Kafka's own JSON message definitions: it is an independent implementation that produces the
wire bytes podshark must decode.
"""

from __future__ import annotations

from typing import Any

from dissect.base import ConnContext, Limits
from dissect.kafka import KafkaDissector
from dissect.model import Call, Endpoint

CLIENT = Endpoint(ip="10.0.0.1", port=40000)
SERVER = Endpoint(ip="10.0.0.2", port=9092)


def make(handshake: bool = True, limits: Limits | None = None) -> tuple[KafkaDissector, list[Call]]:
    calls: list[Call] = []
    ctx = ConnContext(
        flow_id="f1",
        endpoints=(CLIENT, SERVER),
        emit=calls.append,
        handshake_seen=handshake,
        limits=limits or Limits(),
    )
    return KafkaDissector(ctx, strict=True), calls


def req(msg: Any, corr: int, client_id: str | None = "podshark-test") -> bytes:
    """A framed request (size + header + body) encoded by kafka-python."""
    msg.with_header(correlation_id=corr, client_id=client_id)
    return bytes(msg.encode(header=True, framed=True))


def resp(msg: Any, corr: int) -> bytes:
    msg.with_header(correlation_id=corr)
    return bytes(msg.encode(header=True, framed=True))


def run(stream: list[tuple[int, bytes]], handshake: bool = True, limits: Limits | None = None) -> list[Call]:
    d, calls = make(handshake, limits)
    for i, (direction, data) in enumerate(stream):
        d.feed(direction, data, 1000 + i)
    d.close(10_000)
    return calls
