"""The pcapng writer (`dissect/pcapng_write.py`) and the engine's frame hook that feeds export.

The writer is checked by independent readers: tshark and capinfos (Wireshark's own code) and our
`dissect.pcapio` reader; the frame hook by the captures themselves (every frame of a capture whose
traffic is all calls must come out, with the flow id its calls carry).
"""

from __future__ import annotations

import struct
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect.engine import Engine, file_source_id
from dissect.pcapio import CaptureReader
from dissect.pcapng_write import PcapngWriter, enhanced_packet, interface_description
from tests.conftest import FIXTURES

PIPELINED = FIXTURES / "http1__zeek_pipelined-requests.pcap"


def _write(path: Path, frames: list[tuple[int, int, bytes, int | None]]) -> None:
    w = PcapngWriter()
    with path.open("wb") as f:
        f.write(w.header())
        for ts, linktype, data, orig_len in frames:
            f.write(w.packet(ts, linktype, data, orig_len))


def _tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    argv = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for f in fields:
        argv += ["-e", f]
    r = subprocess.run(argv, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return [line.split("|") for line in r.stdout.decode().splitlines()]


@pytest.mark.tshark
def test_tshark_and_capinfos_read_a_rewritten_capture(tmp_path: Path) -> None:
    original = list(CaptureReader(PIPELINED))
    out = tmp_path / "copy.pcapng"
    _write(out, [(ts, lt, data, wire) for ts, lt, data, wire in original])
    r = subprocess.run(["capinfos", "-c", "-M", str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert f"Number of packets:   {len(original)}" in r.stdout.decode()
    # the same HTTP requests as in the original, by Wireshark's reading
    want = _tshark_fields(PIPELINED, "http.request.uri")
    got = _tshark_fields(out, "http.request.uri")
    assert [x for x in got if x != [""]] == [x for x in want if x != [""]]
    assert len([x for x in got if x != [""]]) == 5
    # and our own reader gives the frames back byte for byte
    assert list(CaptureReader(out)) == original


@pytest.mark.tshark
def test_nanosecond_timestamps_orig_len_and_several_link_types(tmp_path: Path) -> None:
    eth = next(iter(CaptureReader(PIPELINED)))[2]
    ts1 = 1_763_700_000_123_456_789
    ts2 = 1_763_700_000_987_654_321
    frames: list[tuple[int, int, bytes, int | None]] = [
        (ts1, 1, eth, len(eth)),
        (ts2, 101, eth[14:54], 1400),  # raw IP, cut by a snap length: 40 of 1400 bytes captured
        (ts2 + 1, 1, eth, len(eth) - 10),  # an orig_len below caplen is raised to caplen
    ]
    out = tmp_path / "t.pcapng"
    _write(out, frames)
    rows = _tshark_fields(out, "frame.time_epoch", "frame.len", "frame.cap_len", "frame.interface_id")
    assert rows == [
        ["1763700000.123456789", str(len(eth)), str(len(eth)), "0"],
        ["1763700000.987654321", "1400", "40", "1"],
        ["1763700000.987654322", str(len(eth)), str(len(eth)), "0"],
    ]
    back = list(CaptureReader(out))
    assert [(p[0], p[1], p[3]) for p in back] == [
        (ts1, 1, len(eth)),
        (ts2, 101, 1400),
        (ts2 + 1, 1, len(eth)),
    ]
    r = subprocess.run(["capinfos", "-M", str(out)], capture_output=True, timeout=60)
    text = r.stdout.decode()
    assert "nanoseconds" in text and "Number of interfaces in file: 2" in text


@pytest.mark.tshark
def test_an_empty_export_is_a_valid_file(tmp_path: Path) -> None:
    out = tmp_path / "empty.pcapng"
    out.write_bytes(PcapngWriter().header())
    r = subprocess.run(["tshark", "-r", str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"", r.stderr.decode()
    r = subprocess.run(["capinfos", "-c", "-M", str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0 and "Number of packets:   0" in r.stdout.decode()


@given(
    ts=st.integers(0, 2**64 - 1),
    data=st.binary(max_size=70),
    orig=st.one_of(st.none(), st.integers(0, 2**33)),
)
def test_enhanced_packet_block_layout(ts: int, data: bytes, orig: int | None) -> None:
    """Block lengths are multiples of 4 and repeated at the end; the timestamp splits into two
    32-bit halves; orig_len is at least caplen and fits 32 bits."""
    b = enhanced_packet(3, ts, data, orig)
    btype, total, iface, hi, lo, caplen, wire = struct.unpack_from("<7I", b)
    assert (btype, iface, caplen) == (6, 3, len(data))
    assert total == len(b) and total % 4 == 0 and struct.unpack_from("<I", b, total - 4)[0] == total
    assert (hi << 32 | lo) == ts & (2**64 - 1)
    assert b[28 : 28 + caplen] == data
    want = len(data) if orig is None or orig < len(data) else min(orig, 2**32 - 1)
    assert wire == want


def test_interface_description_refuses_a_link_type_pcapng_cannot_hold() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        interface_description(70000)
    w = PcapngWriter()
    first = w.packet(1, 1, b"x")
    again = w.packet(2, 1, b"y")
    other = w.packet(3, 113, b"z")
    assert first[:4] == b"\x01\0\0\0" and again[:4] == b"\x06\0\0\0" and other[:4] == b"\x01\0\0\0"
    assert w.interfaces == {1: 0, 113: 1} and w.packets == 3


# ---- the engine's frame hook


def _hooked(path: Path) -> tuple[list[tuple[int, int, bytes, int, str]], set[str], Engine]:
    frames: list[tuple[int, int, bytes, int, str]] = []
    engine = Engine(file_source_id(path), on_frame=lambda *f: frames.append(f))
    flows = {c.flow_id for c in engine.run(CaptureReader(path)) if c.flow_id}
    return frames, flows, engine


@pytest.mark.parametrize(
    "name",
    [
        "http1__zeek_pipelined-requests.pcap",
        "http2__sv_http2-range.pcap",
        "dns__ndpi_dns_fragmented.pcap",  # IPv4 and IPv6 fragments: held, then given to their flow
        "kafka__gosniffer_kafka.pcap",
    ],
)
def test_every_frame_of_an_all_calls_capture_reaches_the_hook_once(name: str) -> None:
    path = FIXTURES / name
    frames, flows, _ = _hooked(path)
    original = list(CaptureReader(path))
    assert sorted((f[0], f[2]) for f in frames) == sorted((p[0], p[2]) for p in original)
    assert {f[4] for f in frames} == flows
    # the calls are the same with and without the hook (the hook takes the plain path)
    plain = [c.to_dict() for c in Engine(file_source_id(path)).run(CaptureReader(path))]
    hooked = [
        c.to_dict() for c in Engine(file_source_id(path), on_frame=lambda *f: None).run(CaptureReader(path))
    ]
    assert plain == hooked


def test_fragments_go_with_their_reassembled_datagram() -> None:
    frames, _, _ = _hooked(FIXTURES / "dns__ndpi_dns_fragmented.pcap")
    by_flow: dict[str, list[bytes]] = defaultdict(list)
    for _, _, data, _, flow in frames:
        by_flow[flow].append(data)

    def is_fragment(f: bytes) -> bool:
        if f[12:14] == b"\x08\x00":
            return bool((f[20] << 8 | f[21]) & 0x3FFF)
        return f[12:14] == b"\x86\xdd" and f[20] == 44

    with_fragments = [fl for fl, fs in by_flow.items() if any(is_fragment(f) for f in fs)]
    assert len(with_fragments) >= 4  # both IPv4 and IPv6 answers arrived in pieces
    for fl in with_fragments:
        assert not is_fragment(by_flow[fl][0])  # the query came first, then every piece of the answer


def test_a_fragment_whose_datagram_never_completes_has_no_flow() -> None:
    path = FIXTURES / "dns__zeek_ipv6-fragmented-dns.pcap"
    frames, _, engine = _hooked(path)
    assert len(list(CaptureReader(path))) == 8 and len(frames) == 7  # frame 4: a lone last fragment
    assert len(engine.held_frags) == 1


def test_engine_packet_calls_the_hook_with_orig_len() -> None:
    seen: list[tuple[int, int, bytes, int, str]] = []
    engine = Engine("node-a", on_frame=lambda *f: seen.append(f))
    for ts, lt, data, wire in CaptureReader(PIPELINED):
        engine.packet(ts, lt, data, wire + 7)
    engine.finish()
    assert len(seen) == 49 and all(f[3] == len(f[2]) + 7 for f in seen)
    assert {f[4] for f in seen} == {c.flow_id for c in engine.out}
