"""Every link type we decode, made from one real capture and checked by tshark as well as by us.

The IP packets of a real HTTP capture are re-encapsulated in each link-layer framing and written
with dpkt. Two things must hold for each file: our engine reassembles exactly the same TCP
streams as from the original, and tshark finds the same HTTP requests in it. The second check is
what makes the first meaningful: it proves the framing we built is valid to an independent
reader, so a passing test cannot come from our writer and our decoder sharing a misreading.

IPv6 extension headers (hop-by-hop, destination options, both) are inserted the same way.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import dpkt
import pytest

from tests.conftest import FIXTURES
from tests.dissect.test_tcp_follow_tshark import ours as streams

pytestmark = pytest.mark.tshark

HTTP_V4 = FIXTURES / "http1__zeek_pipelined-requests.pcap"
HTTP_V6 = FIXTURES / "http1__arkime_v6-http.pcap"


def ip_packets(path: Path) -> list[tuple[float, bytes, bytes]]:
    """(ts, Ethernet source+destination MACs, IP datagram) of every IP frame, read with dpkt."""
    out = []
    with path.open("rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            et = struct.unpack_from("!H", buf, 12)[0]
            assert et in (0x0800, 0x86DD), "fixture frames are untagged Ethernet IP"
            ip = buf[14:]
            if et == 0x0800:
                ip = ip[: struct.unpack_from("!H", ip, 2)[0]]  # drop Ethernet padding
            else:
                ip = ip[: 40 + struct.unpack_from("!H", ip, 4)[0]]
            out.append((ts, buf[:12], ip))
    return out


def _ethertype(ip: bytes) -> bytes:
    return b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd"


# Each framing: (linktype, frame builder from (MACs, IP datagram))
Framer = Callable[[bytes, bytes], bytes]


def _sll(macs: bytes, ip: bytes) -> bytes:
    # packet type 0 (to us), ARPHRD_ETHER, 6-byte address (the source MAC) padded to 8, protocol
    return struct.pack("!HHH", 0, 1, 6) + macs[6:12] + b"\0\0" + _ethertype(ip) + ip


def _sll2(macs: bytes, ip: bytes) -> bytes:
    # protocol, reserved, interface index, ARPHRD_ETHER, packet type, address length, address
    return _ethertype(ip) + b"\0\0" + struct.pack("!IHBB", 2, 1, 0, 6) + macs[6:12] + b"\0\0" + ip


def _null(macs: bytes, ip: bytes) -> bytes:
    family = 2 if ip[0] >> 4 == 4 else 30  # AF_INET; AF_INET6 as on macOS
    return struct.pack("<I", family) + ip  # host (here little-endian) byte order


def _loop(macs: bytes, ip: bytes) -> bytes:
    family = 2 if ip[0] >> 4 == 4 else 30
    return struct.pack(">I", family) + ip  # network byte order


def _dot1q(macs: bytes, ip: bytes) -> bytes:
    return macs + b"\x81\x00" + struct.pack("!H", 0x2064) + _ethertype(ip) + ip  # PCP 1, VLAN 100


def _qinq(macs: bytes, ip: bytes) -> bytes:
    outer = b"\x88\xa8" + struct.pack("!H", 300)
    inner = b"\x81\x00" + struct.pack("!H", 100)
    return macs + outer + inner + _ethertype(ip) + ip


def _raw(macs: bytes, ip: bytes) -> bytes:
    return ip


def _ethernet(macs: bytes, ip: bytes) -> bytes:
    return macs + _ethertype(ip) + ip


FRAMINGS_V4: dict[str, tuple[int, Framer]] = {
    "linux-sll": (113, _sll),
    "linux-sll2": (276, _sll2),
    "raw-101": (101, _raw),
    "ipv4-228": (228, _raw),
    "bsd-null-0": (0, _null),
    "loop-108": (108, _loop),
    "ethernet-802.1q": (1, _dot1q),
    "ethernet-qinq": (1, _qinq),
}
FRAMINGS_V6: dict[str, tuple[int, Framer]] = {
    "linux-sll": (113, _sll),
    "linux-sll2": (276, _sll2),
    "raw-101": (101, _raw),
    "ipv6-229": (229, _raw),
    "bsd-null-0": (0, _null),
    "loop-108": (108, _loop),
    "ethernet-qinq": (1, _qinq),
}


def write(path: Path, linktype: int, frames: list[tuple[float, bytes]]) -> Path:
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=linktype, snaplen=262144)
        for ts, frame in frames:
            w.writepkt(frame, ts=ts)
    return path


def http_requests(path: Path) -> list[str]:
    """The URIs of tshark's HTTP requests (tshark reassembles TCP, and IP fragments, by default)."""
    res = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "http.request", "-T", "fields", "-e", "http.request.uri"],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.split()


def assert_equivalent(new: Path, original: Path) -> None:
    """Same reassembled streams for us, same HTTP requests for tshark, as the original capture."""
    ref = streams(original)
    assert ref, "the original has TCP payload"
    assert streams(new) == ref
    uris = http_requests(original)
    assert uris, "tshark sees HTTP requests in the original"
    assert http_requests(new) == uris, (
        "tshark reads the re-encapsulated file differently: the framing is invalid"
    )


@pytest.mark.parametrize("name", list(FRAMINGS_V4))
def test_ipv4_http_in_every_link_type(name: str, tmp_path: Path) -> None:
    linktype, frame = FRAMINGS_V4[name]
    pkts = ip_packets(HTTP_V4)
    new = write(tmp_path / f"{name}.pcap", linktype, [(ts, frame(macs, ip)) for ts, macs, ip in pkts])
    assert_equivalent(new, HTTP_V4)


@pytest.mark.parametrize("name", list(FRAMINGS_V6))
def test_ipv6_http_in_every_link_type(name: str, tmp_path: Path) -> None:
    linktype, frame = FRAMINGS_V6[name]
    pkts = ip_packets(HTTP_V6)
    new = write(tmp_path / f"{name}.pcap", linktype, [(ts, frame(macs, ip)) for ts, macs, ip in pkts])
    assert_equivalent(new, HTTP_V6)


# -- IPv6 extension headers ------------------------------------------------------------------------

_PADN4 = b"\x01\x04\0\0\0\0"  # PadN option filling an 8-byte header after next-header and length
_PAD1_PADN2 = b"\x00\x01\x02\0\0" + b"\x00"  # Pad1, PadN(2), Pad1: option parsing must not matter


def insert_ext(ip: bytes, headers: list[tuple[int, bytes]]) -> bytes:
    """Insert extension headers (type, 6 option bytes -> 8-byte header) into an IPv6 TCP packet.

    Only TCP packets are changed: the capture's ICMPv6 (MLD) packets already carry a hop-by-hop
    header, which must stay first.
    """
    if ip[0] >> 4 != 6 or ip[6] != 6:
        return ip
    nh = ip[6]
    chain = b""
    types = [t for t, _ in headers]
    for i, (_t, opts) in enumerate(headers):
        nxt = types[i + 1] if i + 1 < len(types) else nh
        assert len(opts) == 6
        chain += bytes([nxt, 0]) + opts
    plen = struct.unpack_from("!H", ip, 4)[0] + len(chain)
    return ip[:4] + struct.pack("!HB", plen, types[0]) + ip[7:40] + chain + ip[40:]


EXTENSIONS = {
    "hop-by-hop": [(0, _PADN4)],
    "destination-options": [(60, _PAD1_PADN2)],
    "hop-by-hop+destination-options": [(0, _PADN4), (60, _PADN4)],
}


@pytest.mark.parametrize("name", list(EXTENSIONS))
def test_ipv6_extension_headers_are_skipped(name: str, tmp_path: Path) -> None:
    """The upper-layer checksum covers neither the extension headers nor their length: no fix-up needed."""
    pkts = ip_packets(HTTP_V6)
    frames = [(ts, _ethernet(macs, insert_ext(ip, EXTENSIONS[name]))) for ts, macs, ip in pkts]
    new = write(tmp_path / f"{name}.pcap", 1, frames)
    assert_equivalent(new, HTTP_V6)


def test_ipv6_extension_headers_in_raw_ip(tmp_path: Path) -> None:
    pkts = ip_packets(HTTP_V6)
    ext = EXTENSIONS["hop-by-hop+destination-options"]
    new = write(tmp_path / "raw.pcap", 229, [(ts, insert_ext(ip, ext)) for ts, _macs, ip in pkts])
    assert_equivalent(new, HTTP_V6)
