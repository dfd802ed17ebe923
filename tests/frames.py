"""Build real Ethernet/IPv4/TCP frames for engine tests (checksummed by dpkt, readable by tshark)."""

from __future__ import annotations

import socket

import dpkt

SYN, ACK, FIN, RST, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH


def tcp_frame(
    src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int, payload: bytes = b""
) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, data=tcp)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    return bytes(eth)


class Conversation:
    """One TCP connection whose frames are generated in order, tracking sequence numbers."""

    def __init__(
        self, client: str, cport: int, server: str, sport: int, isn_c: int = 1000, isn_s: int = 9000
    ):
        self.c = (client, cport)
        self.s = (server, sport)
        self.seq = [isn_c, isn_s]

    def _frame(self, d: int, flags: int, payload: bytes = b"") -> bytes:
        a, b = (self.c, self.s) if d == 0 else (self.s, self.c)
        f = tcp_frame(a[0], a[1], b[0], b[1], self.seq[d], self.seq[1 - d], flags, payload)
        self.seq[d] = (self.seq[d] + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        return f

    def handshake(self) -> list[bytes]:
        return [self._frame(0, SYN), self._frame(1, SYN | ACK), self._frame(0, ACK)]

    def send(self, d: int, payload: bytes) -> bytes:
        return self._frame(d, ACK | PSH, payload)

    def fin(self, d: int) -> bytes:
        return self._frame(d, FIN | ACK)


def write_pcap(path: str, frames: list[tuple[int, bytes]]) -> None:
    """Write (ts_ns, frame) pairs as a nanosecond pcap that tshark reads."""
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, nano=True)
        for ts, fr in frames:
            w.writepkt(fr, ts=ts / 1e9)
