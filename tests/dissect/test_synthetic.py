"""Synthetic TCP frames for decrypted TLS plaintext (`dissect/synthetic.py`).

Oracles, never our own earlier output:

- tshark (Wireshark's own TCP, HTTP and HTTP/2 code) reads pcapng files of synthetic conversations:
  checksums validated, expert infos listed, the HTTP messages, URIs, content lengths and bodies it
  finds, the TCP payload of every frame. Expected values come from what each test sent.
- Hypothesis drives arbitrary sequences of chunks, gaps and timestamps through a connection, and the
  frames are checked against invariants with code written here: an RFC 1071 checksum, a header
  parser, a model of the two sequence spaces.
- `podshark`'s own engine reading the written file is a sanity check (it must give the calls the
  test sent), not the oracle.
"""

from __future__ import annotations

import ipaddress
import random
import struct
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect.engine import dissect_path
from dissect.ipfrag import Fragments
from dissect.packet import LINKTYPE_ETHERNET, decode
from dissect.pcapng_write import PcapngWriter
from dissect.synthetic import GAP_STEP, MAX_SEGMENT, WINDOW, Frame, SyntheticTcp, is_synthetic

T0 = 1_763_700_000_000_000_000
# expert info severities as tshark prints them (epan/proto.h PI_CHAT, PI_NOTE, PI_WARN, PI_ERROR)
CHAT, NOTE, WARN, ERROR = 0x00200000, 0x00400000, 0x00600000, 0x00800000
LOST = "Previous segment(s) not captured (common at capture start)"
ACK_LOST = "ACKed segment that wasn't captured (common at capture start)"
PLAIN_ON_TLS_PORT = (
    "Unencrypted HTTP protocol detected over encrypted port, could indicate a dangerous misconfiguration."
)
ADDRS = {4: ("10.1.0.7", "10.96.0.12"), 6: ("fd00:1::7", "fd00:96::12")}


# ---- helpers: writing, tshark, an independent checksum


def write_pcapng(path: Path, frames: list[Frame]) -> Path:
    w = PcapngWriter()
    with path.open("wb") as f:
        f.write(w.header())
        for ts, linktype, data in frames:
            f.write(w.packet(ts, linktype, data))
    return path


def tshark(path: Path, *args: str) -> str:
    argv = ["tshark", "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"]
    r = subprocess.run([*argv, *args], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def fields(path: Path, names: list[str], *args: str) -> list[list[str]]:
    argv = ["-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=|", *args]
    for n in names:
        argv += ["-e", n]
    return [line.split("\t") for line in tshark(path, *argv).splitlines()]


def experts(path: Path, *args: str) -> dict[int, list[tuple[int, str]]]:
    """Frame number -> [(severity, message)] of every expert info tshark attaches."""
    out: dict[int, list[tuple[int, str]]] = {}
    for frame, sev, msg in fields(path, ["frame.number", "_ws.expert.severity", "_ws.expert.message"], *args):
        if sev:
            out[int(frame)] = list(zip(map(int, sev.split("|")), msg.split("|"), strict=True))
    return out


def warnings(path: Path, *args: str) -> Counter[str]:
    """Expert infos of severity warning or error, by message."""
    return Counter(m for infos in experts(path, *args).values() for sev, m in infos if sev >= WARN)


def inet_sum(data: bytes) -> int:
    """RFC 1071: the ones' complement sum of 16-bit words, carries folded back in."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def http1_exchange(conn: SyntheticTcp, t: int) -> tuple[list[Frame], list[tuple[str, bytes, bytes]]]:
    """A keep-alive HTTP/1.1 conversation: a POST with a body, a 200 KB response sent in uneven
    chunks (one of them longer than a segment), then a GET with a small response. Returns the frames
    and (uri, request body, response body) per exchange."""
    rnd = random.Random(7)
    req_body = rnd.randbytes(3000)
    big = rnd.randbytes(200_000)
    frames = conn.open(t)
    frames += conn.data(
        0,
        b"POST /v1/orders?id=7 HTTP/1.1\r\nHost: api\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(req_body), req_body),
        t + 1_000,
    )
    frames += conn.data(
        1,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(big),
        t + 2_000,
    )
    pos, step = 0, 0
    for size in (16384, 100_000, 1, 4095, 16384):  # then the rest in one chunk
        frames += conn.data(1, big[pos : pos + size], t + 3_000 + step)
        pos += size
        step += 1
    frames += conn.data(1, big[pos:], t + 3_000 + step)
    frames += conn.data(0, b"GET /v1/second HTTP/1.1\r\nHost: api\r\n\r\n", t + 10_000)
    frames += conn.data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", t + 20_000)
    frames += conn.close(t + 30_000)
    return frames, [("/v1/orders?id=7", req_body, big), ("/v1/second", b"", b"hello")]


def h2_exchange(conn: SyntheticTcp, t: int) -> tuple[list[Frame], bytes, bytes]:
    """HTTP/2 with prior knowledge (what ALPN h2 gives inside TLS): one POST, a 40 KB response."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    req_body = b"ping" * 10
    client.send_headers(
        1, [(":method", "POST"), (":path", "/h2/echo?x=1"), (":scheme", "https"), (":authority", "api")]
    )
    client.send_data(1, req_body, end_stream=True)
    up = client.data_to_send()
    server.initiate_connection()
    server.receive_data(up)
    server.send_headers(1, [(":status", "201"), ("content-type", "application/octet-stream")])
    body = random.Random(3).randbytes(40_000)
    rest = body
    while rest:
        n = min(len(rest), server.max_outbound_frame_size, server.local_flow_control_window(1))
        server.send_data(1, rest[:n])
        rest = rest[n:]
    server.end_stream(1)
    frames = conn.open(t) + conn.data(0, up, t + 10) + conn.data(1, server.data_to_send(), t + 20)
    return frames + conn.close(t + 30), req_body, body


# ---- tshark: HTTP/1 over IPv4 and IPv6


@pytest.mark.tshark
@pytest.mark.parametrize("family", [4, 6])
def test_http1_conversation_reads_back_in_tshark(tmp_path: Path, family: int) -> None:
    client, server = ADDRS[family]
    frames, exchanges = http1_exchange(SyntheticTcp(client, 51234, server, 8080, T0), T0)
    pcap = write_pcapng(tmp_path / "h1.pcapng", frames)

    # every checksum validates (1 = good); Wireshark has nothing to warn about
    names = ["tcp.checksum.status"] + (["ip.checksum.status"] if family == 4 else [])
    rows = fields(pcap, names)
    assert len(rows) == len(frames) and all(c == "1" for row in rows for c in row)
    assert warnings(pcap) == Counter()
    # the requests with their URIs and content lengths, the responses with theirs
    msgs = fields(pcap, ["http.request.uri", "http.response.code", "http.content_length"], "-Y", "http")
    assert msgs == [
        ["/v1/orders?id=7", "", "3000"],
        ["", "200", "200000"],
        ["/v1/second", "", ""],
        ["", "200", "5"],
    ]
    # the reassembled bodies are byte for byte what was sent
    objects = tmp_path / "objects"
    tshark(pcap, "-q", "--export-objects", f"http,{objects}")
    got = sorted(p.read_bytes() for p in objects.iterdir())
    assert got == sorted(b for _, req, resp in exchanges for b in (req, resp) if b)
    # the addresses and ports are the connection's
    ends = fields(pcap, ["ip.src" if family == 4 else "ipv6.src", "tcp.srcport"], "-Y", "http.request")
    assert {tuple(e) for e in ends} == {(client, "51234")}


@pytest.mark.tshark
def test_http1_on_443_is_decoded_by_default_and_with_decode_as(tmp_path: Path) -> None:
    """What the module docstring tells the user about port 443, measured."""
    frames, _ = http1_exchange(SyntheticTcp(ADDRS[4][0], 51234, ADDRS[4][1], 443, T0), T0)
    pcap = write_pcapng(tmp_path / "h1_443.pcapng", frames)
    want = [["/v1/orders?id=7", ""], ["", "200"], ["/v1/second", ""], ["", "200"]]
    for extra in ([], ["-d", "tcp.port==443,http"], ["-o", "tcp.try_heuristic_first:TRUE"]):
        assert fields(pcap, ["http.request.uri", "http.response.code"], "-Y", "http", *extra) == want, extra
        # one warning per message, and it is true: plaintext HTTP on a TLS port
        assert warnings(pcap, *extra) == Counter({PLAIN_ON_TLS_PORT: 4}), extra


@pytest.mark.tshark
def test_http2_prior_knowledge_on_443_needs_decode_as(tmp_path: Path) -> None:
    frames, req_body, body = h2_exchange(SyntheticTcp("10.1.0.7", 40000, "10.96.0.12", 443, T0), T0)
    pcap = write_pcapng(tmp_path / "h2_443.pcapng", frames)
    # by default the TLS dissector owns 443 and HTTP/2 is not recognised, heuristics or not
    for extra in ([], ["-o", "tcp.try_heuristic_first:TRUE"]):
        protos = fields(pcap, ["frame.protocols"], *extra)
        assert not any("http2" in p[0] for p in protos), extra
    for decode_as in ("tcp.port==443,http2", "tcp.port==443,http"):
        names = ["http2.headers.method", "http2.headers.path", "http2.headers.status"]
        rows = fields(
            pcap,
            [*names, "http2.data.data", "http2.body.reassembled.data"],
            "-Y",
            "http2.type == 1 || http2.type == 0",
            "-d",
            decode_as,
        )
        assert [r[:3] for r in rows] == [["POST", "/h2/echo?x=1", ""], ["", "", "201"]], decode_as
        assert bytes.fromhex(rows[0][3].replace("|", "")) == req_body
        assert bytes.fromhex(rows[1][4]) == body  # 40 KB in three DATA frames, reassembled
        assert warnings(pcap, "-d", decode_as) == Counter(), decode_as


# ---- tshark: gaps


@pytest.mark.tshark
def test_a_gap_is_a_segment_wireshark_did_not_capture(tmp_path: Path) -> None:
    conn = SyntheticTcp("10.1.0.7", 51000, "10.96.0.12", 8080, T0)
    frames = conn.open(T0) + conn.data(0, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n", T0 + 1)
    frames += conn.data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000, T0 + 2)
    assert conn.gap(1, 98_000, T0 + 3) == []  # the tracer cut the write: nothing to send
    after_gap = len(frames) + 1  # tshark numbers frames from 1
    frames += conn.data(1, b"b" * 1000, T0 + 4)
    frames += conn.close(T0 + 5)
    pcap = write_pcapng(tmp_path / "gap.pcapng", frames)
    found = experts(pcap)
    assert (WARN, LOST) in found[after_gap]
    assert warnings(pcap) == Counter({LOST: 1, ACK_LOST: 1})
    seqs = fields(pcap, ["tcp.seq"], "-Y", f"frame.number == {after_gap}")
    assert seqs == [[str(len("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n") + 1000 + 98_000 + 1)]]
    # podshark's own reading flags it too
    (call,) = dissect_path(pcap)
    assert call.target == "/big" and "gap" in call.flags


@pytest.mark.tshark
def test_a_gap_over_2_gib_never_looks_like_a_retransmission(tmp_path: Path) -> None:
    """Sequence numbers compare modulo 2**32: a jump of 2**31 or more between two frames would read
    as going backwards. An empty segment and its ACK per GiB keep every jump smaller."""
    conn = SyntheticTcp("10.1.0.7", 51001, "10.96.0.12", 8080, T0)
    frames = conn.open(T0) + conn.data(0, b"GET /huge HTTP/1.1\r\nHost: a\r\n\r\n", T0 + 1)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3500000010\r\n\r\n"
    frames += conn.data(1, head + b"0123456789", T0 + 2)
    filler = conn.gap(1, 3_500_000_000 - 5, T0 + 3)
    assert len(filler) == 2 * 3  # 3 whole GiB in the gap: an empty segment and an ACK for each
    frames += filler + conn.data(1, b"abcde", T0 + 4) + conn.close(T0 + 5)
    pcap = write_pcapng(tmp_path / "huge.pcapng", frames)
    w = warnings(pcap)
    assert set(w) == {LOST, ACK_LOST}, w  # no retransmission, spurious or out-of-order verdicts
    last = fields(pcap, ["tcp.seq", "tcp.len"], "-Y", "tcp.len == 5")
    assert last == [[str(1 + len(head) + 10 + 3_500_000_000 - 5), "5"]]


# ---- tshark: random conversations, every payload byte where it belongs


def _runs(items: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """(position, bytes) pieces merged where one ends exactly where the next starts."""
    out: list[tuple[int, bytes]] = []
    for at, data in sorted(items):
        if out and out[-1][0] + len(out[-1][1]) == at:
            out[-1] = (out[-1][0], out[-1][1] + data)
        else:
            out.append((at, data))
    return out


@pytest.mark.tshark
def test_random_conversations_tshark_sees_every_payload_byte(tmp_path: Path) -> None:
    """Twelve interleaved conversations of random chunks (some with gaps, some without handshake or
    close, several segment sizes) in one file. tshark's TCP payload of every frame, placed at its
    sequence number, is exactly what each direction sent, holes exactly where the gaps were;
    every checksum validates; only the conversations with gaps draw warnings, and only gap ones."""
    rnd = random.Random(20251121)
    frames: list[Frame] = []
    sent: dict[tuple[int, int], list[bytes | int]] = defaultdict(list)  # (client port, dir) -> chunks
    gappy: set[int] = set()
    for i in range(12):
        family = 4 if i % 2 else 6
        port = 40000 + i
        mss = rnd.choice([536, 1460, 9000, MAX_SEGMENT])
        conn = SyntheticTcp(ADDRS[family][0], port, ADDRS[family][1], 8443 + i, T0 + i, mss=mss)
        t = T0 + i * 20_000
        if i % 4 != 3:
            frames += conn.open(t)
        for _ in range(rnd.randint(1, 12)):
            d = rnd.randint(0, 1)
            t += rnd.randint(0, 5000)
            if i % 3 == 0 and rnd.random() < 0.2:
                n = rnd.randint(1, 150_000)
                frames += conn.gap(d, n, t)
                sent[port, d].append(n)
                gappy.add(port)
            else:
                data = rnd.randbytes(rnd.choice([1, 17, 1000, 20_000, 70_000, 200_000]))
                frames += conn.data(d, data, t)
                sent[port, d].append(data)
        if i % 5 != 4:
            frames += conn.close(t + 1, initiator=rnd.randint(0, 1))
    frames.sort(key=lambda f: f[0])  # interleaved by time, as a spool export is; stable per connection
    pcap = write_pcapng(tmp_path / "random.pcapng", frames)
    names = ["tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.payload", "tcp.checksum.status"]
    names += ["ip.checksum.status", "_ws.expert.severity", "_ws.expert.message"]
    rows = fields(pcap, names, "-o", "tcp.relative_sequence_numbers:FALSE")
    assert len(rows) == len(frames)
    got: dict[tuple[int, int], list[tuple[int, bytes]]] = defaultdict(list)
    warned: dict[int, set[str]] = defaultdict(set)
    for sport, dport, seq, payload, tcp_ck, ip_ck, sev, msg in rows:
        assert tcp_ck == "1" and ip_ck in ("1", "")  # IPv6 has no header checksum
        port, d = (int(sport), 0) if int(sport) >= 40000 else (int(dport), 1)  # servers: 8443 + i
        if payload:
            got[port, d].append((int(seq), bytes.fromhex(payload)))
        if sev:
            severities = map(int, sev.split("|"))
            warned[port] |= {m for s, m in zip(severities, msg.split("|"), strict=True) if s >= WARN}
    for key, chunks in sent.items():
        want: list[tuple[int, bytes]] = []
        at = None  # position relative to the first byte of data; gaps before it are invisible
        for c in chunks:
            if isinstance(c, int):
                at = None if at is None else at + c
            else:
                at = 0 if at is None else at
                want.append((at, c))
                at += len(c)
        pieces = got.pop(key, [])
        if pieces:
            first = pieces[0][0]
            pieces = [((seq - first) % 2**32, data) for seq, data in pieces]
        assert _runs(pieces) == _runs(want), key
    assert not got
    for port, messages in warned.items():
        assert messages <= ({LOST, ACK_LOST} if port in gappy else set()), (port, messages)
    assert any(warned[p] for p in gappy)  # the gaps were seen


# ---- podshark's own engine (sanity)


@pytest.mark.parametrize("family", [4, 6])
def test_podshark_engine_reads_the_calls_that_were_sent(tmp_path: Path, family: int) -> None:
    client, server = ADDRS[family]
    frames, exchanges = http1_exchange(SyntheticTcp(client, 51234, server, 443, T0), T0)
    calls = list(dissect_path(write_pcapng(tmp_path / "h1.pcapng", frames)))
    assert [(c.method, c.target, c.status) for c in calls] == [
        ("POST", "/v1/orders?id=7", 200),
        ("GET", "/v1/second", 200),
    ]
    for call, (_, req, resp) in zip(calls, exchanges, strict=True):
        assert call.request is not None and call.response is not None
        assert call.request.body == req and call.response.body == resp
        assert (call.src.ip, call.src.port, call.dst.ip, call.dst.port) == (client, 51234, server, 443)
        assert call.flags == []


def test_podshark_engine_reads_http2_prior_knowledge(tmp_path: Path) -> None:
    frames, req_body, body = h2_exchange(SyntheticTcp("10.1.0.7", 40000, "10.96.0.12", 443, T0), T0)
    (call,) = dissect_path(write_pcapng(tmp_path / "h2.pcapng", frames))
    assert (call.protocol, call.method, call.target, call.status) == ("http2", "POST", "/h2/echo?x=1", 201)
    assert call.request is not None and call.response is not None
    assert call.request.body == req_body and call.response.body == body


# ---- the API's edges


def test_marker_addresses_and_determinism() -> None:
    a = SyntheticTcp("::ffff:10.0.0.1", 1000, "10.0.0.2", 443, T0)  # a dual-stack socket's view
    b = SyntheticTcp("10.0.0.1", 1000, "10.0.0.2", 443, T0)
    fa, fb = a.open(T0) + a.data(0, b"x", T0), b.open(T0) + b.data(0, b"x", T0)
    assert fa == fb  # the same input, the same bytes; the mapped address became IPv4
    assert fa[0][2][12:14] == b"\x08\x00" and fa[0][2][26:30] == bytes([10, 0, 0, 1])
    assert all(is_synthetic(lt, f) for _, lt, f in fa)
    assert fa[0][2][0:3] == fa[0][2][6:9] == bytes.fromhex("027073")
    assert fa[0][2][0:6] != fa[0][2][6:12]  # two hosts, two MACs
    assert not is_synthetic(LINKTYPE_ETHERNET, b"\x00" * 60) and not is_synthetic(101, fa[0][2])
    # the 4-tuple reused later starts elsewhere in sequence space
    again = SyntheticTcp("10.0.0.1", 1000, "10.0.0.2", 443, T0)
    later = SyntheticTcp("10.0.0.1", 1000, "10.0.0.2", 443, T0 + 1)
    assert later.next_seq(0) != again.next_seq(0) and later.next_seq(1) != again.next_seq(1)


def test_calls_out_of_order_are_harmless_and_counted() -> None:
    conn = SyntheticTcp("10.0.0.1", 1000, "10.0.0.2", 443, T0)
    assert conn.data(0, b"", T0) == []
    assert len(conn.data(0, b"mid-stream", T0)) == 1  # no handshake: the frames start mid-stream
    assert conn.open(T0) == []  # too late for a handshake
    assert len(conn.close(T0)) == 3
    assert conn.close(T0) == [] and conn.data(1, b"late", T0) == [] and conn.gap(0, 10, T0) == []
    assert conn.late_bytes == 14 and conn.frames == 4


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("10.0.0.1", 1, "fd00::1", 2, 0), {}, "different IP families"),
        (("nonsense", 1, "10.0.0.1", 2, 0), {}, "client address 'nonsense'"),
        (("10.0.0.1", 70000, "10.0.0.2", 2, 0), {}, "client port 70000"),
        (("10.0.0.1", 1, "10.0.0.2", -1, 0), {}, "server port -1"),
        (("10.0.0.1", 1, "10.0.0.2", 2, 0), {"mss": 65496}, "mss 65496"),
        (("10.0.0.1", 1, "10.0.0.2", 2, 0), {"mss": 0}, "mss 0"),
    ],
)
def test_bad_arguments_are_clear_errors(args: Any, kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticTcp(*args, **kwargs)


def test_bad_directions_and_gaps_are_clear_errors() -> None:
    conn = SyntheticTcp("10.0.0.1", 1, "10.0.0.2", 2, 0)
    with pytest.raises(ValueError, match="direction 2"):
        conn.data(2, b"x", 0)
    with pytest.raises(ValueError, match="gap of -1 bytes"):
        conn.gap(0, -1, 0)
    with pytest.raises(ValueError, match="gap of"):
        conn.gap(0, 1 << 41, 0)


# ---- Hypothesis: invariants of any sequence of calls

_M32 = 2**32
_HALF = 2**31
SYN_, FIN_, PSH_, ACK_, RST_ = 0x02, 0x01, 0x08, 0x10, 0x04
_chunk = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda n, b: bytes([b]) * n,
        st.sampled_from([1459, 1460, 65494, 65495, 65496, 140_000]),
        st.integers(0, 255),
    ),
)
_op = st.one_of(
    st.tuples(st.just("data"), st.integers(0, 1), _chunk, st.integers(-50, 10_000)),
    st.tuples(
        st.just("gap"),
        st.integers(0, 1),
        st.one_of(st.integers(0, 70_000), st.sampled_from([GAP_STEP - 1, GAP_STEP, 2 * GAP_STEP + 3])),
        st.integers(-50, 10_000),
    ),
)


def _parse(frame: bytes, family: int) -> dict[str, Any]:
    """Ethernet/IP/TCP fields read with struct here (not with the code under test); checks the
    fixed fields and both checksums with `inet_sum`."""
    if family == 4:
        ver_ihl, _tos, total, ipid, frag, ttl, proto = struct.unpack_from("!BBHHHBB", frame, 14)
        assert (ver_ihl, frag, ttl, proto, total) == (0x45, 0x4000, 64, 6, len(frame) - 14)
        assert inet_sum(frame[14:34]) == 0xFFFF, "IPv4 header checksum"
        src, dst, l4 = frame[26:30], frame[30:34], 34
    else:
        vtf, plen, nh, hlim = struct.unpack_from("!IHBB", frame, 14)
        assert (vtf >> 28, nh, hlim, plen) == (6, 6, 64, len(frame) - 54)
        ipid = None
        src, dst, l4 = frame[22:38], frame[38:54], 54
    assert frame[12:14] == (b"\x08\x00" if family == 4 else b"\x86\xdd")
    tcp = frame[l4:]
    pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
    assert inet_sum(pseudo + tcp) == 0xFFFF, "TCP checksum"
    sport, dport, seq, ack, off, flags, win, _ck, urg = struct.unpack_from("!HHIIBBHHH", tcp)
    assert (win, urg) == (WINDOW, 0)
    hlen = (off >> 4) * 4
    return {
        "src": src,
        "dst": dst,
        "ports": (sport, dport),
        "seq": seq,
        "ack": ack,
        "flags": flags,
        "payload": tcp[hlen:],
        "options": tcp[20:hlen],
        "ipid": ipid,
    }


class _Side:
    """The test's model of one direction's sequence space, in unwrapped numbers (0 = its start)."""

    def __init__(self) -> None:
        self.base: int | None = None  # the raw sequence number of position 0, once seen
        self.end = 0  # the end of the last frame seen (data, plus one for SYN/FIN)
        self.skipped = 0  # gap bytes since then, not yet shown by a frame
        self.acked: int | None = None  # how far the other side acknowledged this direction
        self.last_ack: int | None = None  # the last ACK number this direction sent (other's space)
        self.ipid: int | None = None
        self.data: list[bytes] = []

    def unwrap(self, raw: int, learn: int) -> int:
        """A raw number in this space as a position at or after ``end``; the first one seen is
        position ``learn`` (what the model says it must be)."""
        if self.base is None:
            self.base = (raw - learn) % _M32
        delta = (raw - self.base - self.end) % _M32
        assert delta < _HALF, "numbers only move forward, by less than 2**31 between frames"
        return self.end + delta


@given(
    family=st.sampled_from([4, 6]),
    mss=st.sampled_from([1, 536, 1460, 9000, MAX_SEGMENT]),
    handshake=st.booleans(),
    ops=st.lists(_op, max_size=12),
    close=st.one_of(st.none(), st.integers(0, 1)),
)
def test_invariants_of_any_sequence_of_calls(
    family: int, mss: int, handshake: bool, ops: list[tuple[Any, ...]], close: int | None
) -> None:
    """Every frame decodes and its checksums verify; sequence numbers are exactly what was sent and
    skipped; every ACK acknowledges all the other side sent and none repeats; a segment never fills
    the window and exceeds it only right after a gap; segments respect the MSS; PSH ends each chunk;
    SYN, FIN and the MSS option only where they belong; timestamps never go backwards."""
    if mss == 1:  # one-byte segments only for small chunks: keep the frame count sane
        ops = [op for op in ops if op[0] == "gap" or len(op[2]) <= 300]
    client, server = ADDRS[family]
    conn = SyntheticTcp(client, 40001, server, 443, T0, mss=mss)
    addr = [ipaddress.ip_address(client).packed, ipaddress.ip_address(server).packed]
    calls: list[tuple[str, int, Any, int]] = [("open", 0, None, T0)] if handshake else []
    t = T0
    for kind, d, arg, dt in ops:
        t += dt
        calls.append((kind, d, arg, t))
    if close is not None:
        calls.append(("close", close, None, t + 1))

    frags = Fragments()
    side = (_Side(), _Side())
    last_ts = T0  # the constructor's time, then the last frame's
    sent_data: list[list[bytes]] = [[], []]
    for kind, d, arg, ts in calls:
        want_ts = max(last_ts, ts)  # a call's time, unless that would go back
        if kind == "open":
            out = conn.open(ts)
        elif kind == "data":
            out = conn.data(d, arg, ts)
            sent_data[d].append(arg)
        elif kind == "gap":
            out = conn.gap(d, arg, ts)
        else:
            out = conn.close(ts, d)
        pending = arg if kind == "gap" else 0  # gap bytes this call may reveal in its own frames
        op_data: list[tuple[int, bytes]] = []
        for i, (fts, linktype, frame) in enumerate(out):
            assert linktype == LINKTYPE_ETHERNET and is_synthetic(linktype, frame)
            assert fts == want_ts
            last_ts = fts
            seg = decode(linktype, frame, frags, fts)
            assert seg is not None and seg[0] == 6
            p = _parse(frame, family)
            fd = addr.index(p["src"])
            me, other = side[fd], side[1 - fd]
            assert (seg[1], seg[2], p["dst"]) == (addr[fd], addr[1 - fd], addr[1 - fd])
            assert p["ports"] == ((40001, 443) if fd == 0 else (443, 40001))
            flags, payload = p["flags"], p["payload"]
            n = len(payload)
            assert n <= mss and not flags & RST_
            if family == 4:
                assert me.ipid is None or p["ipid"] == (me.ipid + 1) % 65536
                me.ipid = p["ipid"]
            assert bool(flags & SYN_) == (kind == "open" and i < 2)
            assert bool(flags & FIN_) == (kind == "close" and i < 2)
            assert p["options"] == (b"\x02\x04" + mss.to_bytes(2, "big") if flags & SYN_ else b"")
            assert bool(flags & ACK_) == (not (kind == "open" and i == 0))
            # the sequence number: right after the last frame plus what was skipped since
            stepping = kind == "gap" and fd == d  # an empty segment per GAP_STEP skipped
            seq = me.unwrap(p["seq"], me.end + (GAP_STEP if stepping else me.skipped))
            jump = seq - me.end
            if stepping:
                assert jump == GAP_STEP and not n and jump <= me.skipped + pending
                pending -= jump - me.skipped
            else:
                assert jump == me.skipped
            me.skipped = 0
            if n:
                op_data.append((seq, payload))
                me.data.append(payload)
                inflight = seq + n - (me.acked if me.acked is not None else 0)
                assert inflight != WINDOW, "a segment never fills the window exactly"
                assert inflight < WINDOW or jump > 0, "the window is exceeded only right after a gap"
            me.end = seq + n + (1 if flags & (SYN_ | FIN_) else 0)
            if flags & ACK_:
                ack = other.unwrap(p["ack"], other.skipped)
                assert ack == other.end + other.skipped, "an ACK acknowledges all the other side sent"
                if not n and not flags & (SYN_ | FIN_) and me.last_ack is not None:
                    assert ack > me.last_ack or jump > 0, "no duplicate ACKs"
                me.last_ack = ack
                other.acked = ack
        if kind == "gap":
            side[d].skipped += pending
        if kind == "data" and arg:
            assert b"".join(pl for _, pl in op_data) == arg
            pushed = [bool(p_flags) for p_flags in _psh_flags(out, addr[d], family)]
            assert pushed == [False] * (len(pushed) - 1) + [True]
    for d in (0, 1):
        assert b"".join(side[d].data) == b"".join(sent_data[d])


def _psh_flags(out: list[Frame], src: bytes, family: int) -> list[int]:
    """PSH of each data segment from ``src`` among ``out``."""
    res = []
    for _, _, frame in out:
        p = _parse(frame, family)
        if p["src"] == src and p["payload"]:
            res.append(p["flags"] & PSH_)
    return res
