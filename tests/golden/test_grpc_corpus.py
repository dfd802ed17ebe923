"""Differential test: podshark's gRPC calls on the corpus captures against tshark (through pyshark).

The corpus captures (``fixtures/pcaps/grpc__*.pcap``, copied from ``../shared/corpus`` with their
provenance) are plain-text HTTP/2 on non-standard ports, so tshark is told to decode them as HTTP/2
(``-d tcp.port==N,http2``, the port from the corpus manifest's note). For every HTTP/2 stream tshark
shows, the oracle records:

- the ``:path`` of the request HEADERS and the ``grpc-status`` of the response HEADERS (tshark 4.0
  has no ``grpc.status_code`` field, so the header name/value pairs are read);
- per direction, every gRPC message: its ``grpc.message_length`` and the field numbers tshark's own
  schema-less protobuf dissector sees at the top level of the message.

podshark must give one ``grpc`` call per stream with the same target and status, and the same
messages (wire length, top-level field numbers of `dissect.protobuf`'s tree). Where the two disagree
on purpose the difference is written in `SPECS` with its frame numbers and reason; every listed
difference must really be in tshark's output, so the table cannot hide a regression.

All three captures start mid-connection (no preface, no SETTINGS exchange seen from the start), so
HPACK dynamic-table entries made before the capture are unknown to both tools; tshark nevertheless
shows every header of these files (checked: their header blocks use literals and the static table),
so there is no header it had to give up on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES
from tests.tshark_oracle import TSHARK, requires_pyshark, requires_tshark, tshark_retry

pytestmark = [pytest.mark.tshark, requires_tshark, requires_pyshark, pytest.mark.timeout(120)]

#: one comparison unit: ("call", path, grpc-status) or ("message", path, side, wire length, field numbers)
Unit = tuple[Any, ...]


@dataclass(frozen=True)
class Difference:
    reason: str
    only_tshark: tuple[Unit, ...] = ()
    only_podshark: tuple[Unit, ...] = ()


@dataclass(frozen=True)
class FileSpec:
    port: int  # the server port tshark decodes as HTTP/2 (from MANIFEST.tsv's note)
    differences: tuple[Difference, ...] = field(default_factory=tuple)


SPECS: dict[str, FileSpec] = {
    "grpc__deepflow_h2c_ascii.pcap": FileSpec(port=7070),
    # Frame 2 (server) carries the response HEADERS and then a DATA frame header announcing 16384
    # bytes, of which the capture holds only the first ~1330: the file ends there. tshark shows no
    # DATA frame it cannot complete (so no gRPC message); podshark lists the message its 5-byte
    # prefix announces, marked truncated (`test_unary_response_cut_by_capture_end`). Truncated
    # messages are not comparison units, so this is not a difference in the table.
    "grpc__deepflow_grpc-unary.pcap": FileSpec(port=30035),
    "grpc__deepflow_grpc-server-stream.pcap": FileSpec(port=9001),
}


def grpc_fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(
            f"{path} is missing: the corpus capture is copied into fixtures/pcaps with the HTTP/2 work"
        )
    return path


@dataclass
class H2Stream:
    """What tshark saw of one HTTP/2 stream of one TCP connection."""

    path: str | None = None
    grpc_status: int | None = None
    frames: list[int] = field(default_factory=list)
    messages: dict[str, list[tuple[int, tuple[int, ...]]]] = field(
        default_factory=lambda: {"request": [], "response": []}
    )


def _all(layer: Any, name: str) -> list[str]:
    c = layer.get_field(name)
    if c is None:
        return []
    return [str(f.show) for f in (getattr(c, "all_fields", None) or [c])]


@cache
@tshark_retry
def tshark_streams(path: str, port: int) -> dict[tuple[int, int], H2Stream]:
    """(tcp.stream, HTTP/2 stream id) -> H2Stream, as tshark decodes the file as HTTP/2 on ``port``."""
    import pyshark

    streams: dict[tuple[int, int], H2Stream] = {}
    cap = pyshark.FileCapture(
        path, keep_packets=False, decode_as={f"tcp.port=={port}": "http2"}, tshark_path=TSHARK
    )
    try:
        for pkt in cap:
            if not hasattr(pkt, "tcp"):
                continue
            tcp_stream = int(pkt.tcp.stream)
            side = "request" if int(pkt.tcp.dstport) == port else "response"
            current: H2Stream | None = None
            last_grpc: tuple[H2Stream, int] | None = None
            for layer in pkt.layers:
                name = layer.layer_name
                if name == "http2":
                    sid = int(_all(layer, "streamid")[0]) if _all(layer, "streamid") else 0
                    current = None
                    if sid == 0:
                        continue
                    current = streams.setdefault((tcp_stream, sid), H2Stream())
                    current.frames.append(int(pkt.number))
                    names, values = _all(layer, "header_name"), _all(layer, "header_value")
                    for k, v in zip(names, values):
                        if k == ":path" and side == "request":
                            current.path = v
                        elif k == "grpc-status" and side == "response" and v.isdigit():
                            current.grpc_status = int(v)
                elif name == "grpc" and current is not None:
                    for text in _all(layer, "message_length"):
                        current.messages[side].append((int(text), ()))
                    last_grpc = (current, len(current.messages[side]) - 1)
                elif name == "protobuf" and last_grpc is not None:
                    stream, i = last_grpc
                    numbers = tuple(int(n) for n in _all(layer, "field_number"))
                    stream.messages[side][i] = (stream.messages[side][i][0], numbers)
                    last_grpc = None
    finally:
        cap.close()
    return streams


def tshark_units(path: Path) -> Counter[Unit]:
    units: Counter[Unit] = Counter()
    for s in tshark_streams(str(path), SPECS[path.name].port).values():
        if s.path is None and s.grpc_status is None and not any(s.messages.values()):
            continue  # a stream tshark saw only WINDOW_UPDATE/RST frames of: nothing to compare
        units["call", s.path, s.grpc_status] += 1
        for side, msgs in s.messages.items():
            for length, numbers in msgs:
                units["message", s.path, side, length, numbers] += 1
    return units


@cache
def podshark_calls(path: str) -> tuple[Any, ...]:
    from dissect.engine import dissect_path

    return tuple(dissect_path(path))


def top_level_numbers(fields: list[dict[str, Any]] | None) -> tuple[int, ...]:
    return tuple(f["field"] for f in fields or () if "field" in f)


def podshark_units(path: Path) -> Counter[Unit]:
    units: Counter[Unit] = Counter()
    for c in podshark_calls(str(path)):
        if c.protocol != "grpc":
            continue
        units["call", c.target, c.status] += 1
        for side in ("request", "response"):
            for m in c.info.get("messages", {}).get(side, []):
                if m.get("truncated"):
                    continue  # tshark shows no message it could not reassemble
                units["message", c.target, side, m["length"], top_level_numbers(m["fields"])] += 1
    return units


def expected_units(path: Path) -> Counter[Unit]:
    want = tshark_units(path)
    for d in SPECS[path.name].differences:
        for u in d.only_tshark:
            assert want[u] > 0, f"{path.name}: expected-difference entry {u} is not in tshark's output"
            want[u] -= 1
        for u in d.only_podshark:
            want[u] += 1
    return +want


@pytest.mark.parametrize("name", sorted(SPECS))
def test_grpc_calls_match_tshark(name: str) -> None:
    path = grpc_fixture(name)
    want = expected_units(path)
    got = podshark_units(path)
    calls = [(c.protocol, c.target, c.status, c.flags) for c in podshark_calls(str(path))]
    assert got == want, (
        f"{name}\nonly tshark: {sorted((want - got).elements())}\n"
        f"only podshark: {sorted((got - want).elements())}\npodshark calls: {calls}"
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_tshark_sees_grpc(name: str) -> None:
    """Guards the oracle itself: with the decode-as, tshark finds a gRPC path in every file."""
    path = grpc_fixture(name)
    streams = tshark_streams(str(path), SPECS[name].port)
    assert any(s.path for s in streams.values()), streams


def test_every_grpc_fixture_has_a_spec() -> None:
    found = {p.name for p in FIXTURES.glob("grpc__*.pcap*")}
    assert found <= set(SPECS), f"new gRPC fixtures without a SPECS entry: {sorted(found - set(SPECS))}"


def test_unary_response_cut_by_capture_end() -> None:
    """grpc-unary: the response message tshark does not show is real, and podshark marks it cut.

    The truth is read from the captured bytes of frame 2 as tshark gives them (``tcp.payload``): a
    HEADERS frame, then a DATA frame whose payload starts with the gRPC prefix (flag, length)."""
    import struct
    import subprocess

    name = "grpc__deepflow_grpc-unary.pcap"
    path = grpc_fixture(name)
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(path), "-Y", "frame.number==2", "-T", "fields", "-e", "tcp.payload"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    payload = bytes.fromhex(out.replace(":", ""))
    hlen = int.from_bytes(payload[:3], "big")
    assert payload[3] == 1  # HEADERS first
    data = payload[9 + hlen :]
    dlen, dtype = int.from_bytes(data[:3], "big"), data[3]
    assert dtype == 0 and dlen > len(data) - 9  # a DATA frame the capture does not hold whole
    flag, length = struct.unpack("!BI", data[9:14])
    (call,) = [c for c in podshark_calls(str(path)) if c.protocol == "grpc"]
    (msg,) = call.info["messages"]["response"]
    assert msg == {"compressed": bool(flag), "length": length, "fields": None, "truncated": True}
    assert "truncated" in call.flags and call.status is None  # no trailers in the capture
