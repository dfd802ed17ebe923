"""Hypothesis over *real* HTTP/1 conversations: the reassembled streams of the fixture captures.

The generated-stream properties live in test_http1_fuzz.py; these take what real clients and
servers sent (pipelining, 100-continue, upgrades, odd methods, gzip, multipart, drops) and
- split every delivery at arbitrary points: the calls must not change;
- mutate bytes, cut, insert and add gaps: the dissector must never raise (strict mode turns an
  internal error into an exception) and its buffers must stay within the bound from `Limits`.
"""

from __future__ import annotations

import functools
import random

from hypothesis import given
from hypothesis import strategies as st

from dissect.base import Budget, ConnContext, Limits, Verdict
from dissect.engine import Engine
from dissect.http1 import ANALYZER, HTTP1Dissector
from dissect.model import Call, Endpoint
from dissect.pcapio import CaptureReader
from tests.conftest import FIXTURES

Event = tuple[str, int, object, int]  # ("feed" | "gap" | "note" | "close", direction, payload, ts)

CAPTURES = [
    "http1__zeek_pipelined-requests.pcap",
    "http1__zeek_100-continue.pcap",
    "http1__zeek_docker-http-upgrade.pcap",
    "http1__arkime_http-post-upload.pcap",
    "http1__arkime_http-content-gzip.pcap",
    "http1__zeek_methods.pcap",
    "http1__zeek_zero-length-bodies-with-drops.pcap",
    "http1__ndpi_http_starting_with_reply.pcapng",
    "http1__arkime_http-wrapped-header.pcap",
]


class _Record:
    def __init__(self, ctx: ConnContext, out: list[tuple[bool, list[Event]]]) -> None:
        self.events: list[Event] = []
        out.append((ctx.handshake_seen, self.events))

    def feed(self, direction: int, data: bytes, ts: int) -> None:
        self.events.append(("feed", direction, data, ts))

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        self.events.append(("gap", direction, (n, snaplen), ts))

    def note(self, direction: int, flag: str) -> None:
        self.events.append(("note", direction, flag, 0))

    def close(self, ts: int) -> None:
        self.events.append(("close", 0, None, ts))


class _Recorder:
    """Claims the connections HTTP/1 would claim, and records what the reassembler delivers."""

    name = "record"

    def __init__(self) -> None:
        self.conns: list[tuple[bool, list[Event]]] = []

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        return ANALYZER.detect(data, direction, port_hint)

    def new(self, ctx: ConnContext) -> _Record:
        return _Record(ctx, self.conns)


@functools.cache
def conversations() -> list[tuple[bool, list[Event]]]:
    rec = _Recorder()
    for name in CAPTURES:
        with CaptureReader(FIXTURES / name) as r:
            list(Engine("t", analyzers=[rec]).run(r))
    assert len(rec.conns) > 50
    return rec.conns


def replay(handshake: bool, events: list[Event], limits: Limits | None = None) -> tuple[list[Call], int]:
    """Feed events to a fresh strict dissector; returns its calls and the most it ever buffered."""
    calls: list[Call] = []
    lim = limits or Limits()
    ctx = ConnContext(
        flow_id="f",
        endpoints=(Endpoint(ip="10.0.0.1", port=1), Endpoint(ip="10.0.0.2", port=80)),
        emit=calls.append,
        handshake_seen=handshake,
        limits=lim,
        budget=Budget(1 << 30),
    )
    d = HTTP1Dissector(ctx, strict=True)
    peak = 0
    for kind, direction, payload, ts in events:
        if kind == "feed":
            d.feed(direction, payload, ts)  # type: ignore[arg-type]
        elif kind == "gap":
            n, snaplen = payload  # type: ignore[misc]
            d.gap(direction, n, ts, snaplen)
        elif kind == "note":
            d.note(direction, payload)  # type: ignore[arg-type]
        else:
            d.close(ts)
        peak = max(peak, d.buffered_bytes())
    return calls, peak


def summary(calls: list[Call]) -> list[tuple[object, ...]]:
    return [
        (
            c.method,
            c.target,
            c.status,
            c.request_ts,
            c.response_ts,
            None if c.request is None else (c.request.headers, c.request.body, c.request.wire_size),
            None if c.response is None else (c.response.headers, c.response.body, c.response.wire_size),
            tuple(c.flags),
            tuple(sorted((k, str(v)) for k, v in c.info.items())),
        )
        for c in calls
    ]


@given(st.integers(0, 2**32), st.integers(1, 64))
def test_splitting_real_streams_anywhere_gives_the_same_calls(seed: int, max_piece: int) -> None:
    rnd = random.Random(seed)
    for handshake, events in conversations():
        split: list[Event] = []
        for kind, direction, payload, ts in events:
            if kind != "feed":
                split.append((kind, direction, payload, ts))
                continue
            data = payload
            assert isinstance(data, bytes)
            i = 0
            while i < len(data):
                n = rnd.randint(1, max_piece) if rnd.random() < 0.7 else len(data)
                split.append(("feed", direction, data[i : i + n], ts))
                i += n
        assert summary(replay(handshake, split)[0]) == summary(replay(handshake, events)[0])


@given(st.integers(0, 2**32), st.integers(1, 12))
def test_mutated_real_streams_never_raise_and_stay_bounded(seed: int, mutations: int) -> None:
    rnd = random.Random(seed)
    limits = Limits(max_body=4096, max_header_block=8192, max_pending=32, detect_window=4096)
    bound = 2 * (limits.max_header_block + 8192) + limits.max_pending * 2 * limits.max_body + 2 * 4096
    conns = conversations()
    for handshake, events in rnd.sample(conns, k=min(12, len(conns))):
        mutated: list[Event] = []
        for kind, direction, payload, ts in events:
            if kind == "feed" and rnd.random() < 0.3:
                data = bytearray(payload)  # type: ignore[arg-type]
                for _ in range(mutations):
                    op = rnd.random()
                    pos = rnd.randrange(len(data) + 1)
                    if op < 0.4 and data:
                        data[min(pos, len(data) - 1)] = rnd.randrange(256)
                    elif op < 0.6:
                        data[pos:pos] = rnd.choice(
                            [b"\r\n", b"\r\n\r\n", b"HTTP/1.1 200 OK\r\n", b":", b"0\r\n"]
                        )
                    elif op < 0.8:
                        del data[pos : pos + rnd.randint(1, 40)]
                    else:
                        mutated.append(("gap", direction, (rnd.randint(1, 5000), rnd.random() < 0.5), ts))
                mutated.append(("feed", direction, bytes(data), ts))
            else:
                mutated.append((kind, direction, payload, ts))
        _calls, peak = replay(handshake, mutated, limits)
        assert peak <= bound
