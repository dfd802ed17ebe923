"""The DNS dissector: pairing, timeouts, retransmissions, TCP framing and losses, detection.

Messages are written by dnspython (a real DNS implementation); the dissector is driven sans-IO the
way the engine drives it: over UDP one ``feed`` per datagram, over TCP the reassembled byte stream.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dissect.base import ConnContext, Limits, Verdict
from dissect.dns import ANALYZER, DNS_TIMEOUT_NS, UDP_ANALYZER, DNSDissector, detect_datagram, detect_stream
from dissect.model import Call, Endpoint, Flag

CLIENT = Endpoint(ip="10.0.0.1", port=40000)
SERVER = Endpoint(ip="10.0.0.53", port=53)
MS = 1_000_000
S = 1_000_000_000


def make(
    transport: str = "udp",
    ports: tuple[int, int] = (40000, 53),
    handshake_seen: bool = True,
    limits: Limits | None = None,
) -> tuple[DNSDissector, list[Call]]:
    calls: list[Call] = []
    ctx = ConnContext(
        flow_id="t/f1",
        endpoints=(Endpoint(ip="10.0.0.1", port=ports[0]), Endpoint(ip="10.0.0.53", port=ports[1])),
        emit=calls.append,
        transport=transport,
        handshake_seen=handshake_seen,
        limits=limits or Limits(),
    )
    return DNSDissector(ctx, strict=True), calls


def query(
    name: str = "www.Example.com", rdtype: str = "A", txid: int = 0x1234, **kw: object
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    q.id = txid
    return q


def answer(q: dns.message.Message, *rdatas: str, rcode: int = 0, ttl: int = 60) -> dns.message.Message:
    r = dns.message.make_response(q)
    if rdatas:
        qq = q.question[0]
        r.answer.append(dns.rrset.from_text(qq.name, ttl, "IN", qq.rdtype, *rdatas))
    r.set_rcode(dns.rcode.Rcode(rcode))
    return r


def tcp(*msgs: dns.message.Message) -> bytes:
    out = b""
    for m in msgs:
        w = m.to_wire()
        out += struct.pack("!H", len(w)) + w
    return out


def test_udp_pair() -> None:
    d, calls = make()
    q = query()
    r = answer(q, "192.0.2.1", "192.0.2.2").to_wire()  # once: an rrset's order may differ per to_wire()
    d.feed(0, q.to_wire(), 1 * S)
    assert calls == []
    d.feed(1, r, 1 * S + 3 * MS)
    (c,) = calls
    assert c.protocol == "dns" and c.transport == "udp" and c.flow_id == "t/f1"
    assert c.method == "QUERY" and c.target == "www.Example.com" and c.status == 0
    assert c.src.port == 40000 and c.dst.port == 53
    assert c.request_ts == 1 * S and c.response_ts == 1 * S + 3 * MS and c.flags == []
    assert c.request is not None and c.request.body == q.to_wire() and c.request.headers == []
    assert c.request.body_size == c.request.wire_size == len(q.to_wire())
    assert c.response is not None and c.response.body == r
    info = c.info
    assert info["id"] == 0x1234 and info["qname"] == "www.Example.com" and info["qtype"] == "A"
    assert info["qclass"] == "IN" and info["rcode_name"] == "NOERROR"
    assert sorted(a["data"] for a in info["answers"]) == ["192.0.2.1", "192.0.2.2"]
    assert info["answers"][0]["name"] == "www.Example.com" and info["answers"][0]["ttl"] == 60
    assert info["flags"] == {"aa": False, "tc": False, "rd": True, "ra": False, "ad": False, "cd": False}
    assert "questions" not in info and "retransmits" not in info and "truncated" not in info


def test_response_from_the_first_talker_side_still_makes_the_client_src() -> None:
    d, calls = make()
    q = query()
    d.feed(1, q.to_wire(), 0)  # direction 1 asked
    d.feed(0, answer(q, "1.2.3.4").to_wire(), MS)
    (c,) = calls
    assert c.src.port == 53 and c.dst.port == 40000  # the asker is src, whatever its direction


def test_nxdomain_and_soa() -> None:
    d, calls = make()
    q = query("nope.example.com")
    r = answer(q, rcode=dns.rcode.NXDOMAIN)
    r.authority.append(dns.rrset.from_text("example.com.", 60, "IN", "SOA", "ns. host. 1 2 3 4 5"))
    d.feed(0, q.to_wire(), 0)
    d.feed(1, r.to_wire(), MS)
    (c,) = calls
    assert c.status == 3 and c.info["rcode_name"] == "NXDOMAIN" and c.info["answers"] == []
    assert c.info["authority"][0]["type"] == "SOA"


def test_ecs_and_extended_rcode() -> None:
    d, calls = make()
    q = query("example.com", use_edns=0, options=[dns.edns.ECSOption("1.2.3.0", 24)])
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.BADVERS)
    d.feed(0, q.to_wire(), 0)
    d.feed(1, r.to_wire(), MS)
    (c,) = calls
    assert c.info["edns"]["client_subnet"] == "1.2.3.0/24"
    assert c.status == 16 and c.info["rcode_name"] == "BADVERS" and "response_edns" in c.info


def test_truncated_response_is_flagged() -> None:
    d, calls = make()
    q = query("big.example.com", "TXT")
    r = answer(q)
    r.flags |= dns.flags.TC
    d.feed(0, q.to_wire(), 0)
    d.feed(1, r.to_wire(), MS)
    (c,) = calls
    assert c.info["truncated"] is True and c.info["flags"]["tc"] and Flag.TRUNCATED in c.flags
    assert c.response is not None and c.response.truncated is False  # the message itself is whole


def test_interleaved_ids_pair_correctly() -> None:
    d, calls = make()
    qa, qb = query("a.example", txid=1), query("b.example", "AAAA", txid=2)
    d.feed(0, qa.to_wire(), 0)
    d.feed(0, qb.to_wire(), 1)
    d.feed(1, answer(qb, "2001:db8::2").to_wire(), 2)
    d.feed(1, answer(qa, "192.0.2.1").to_wire(), 3)
    assert [(c.target, c.info["qtype"], c.info["answers"][0]["data"]) for c in calls] == [
        ("b.example", "AAAA", "2001:db8::2"),
        ("a.example", "A", "192.0.2.1"),
    ]


def test_same_id_two_questions_paired_by_question() -> None:
    d, calls = make()
    qa, qaaaa = query("h.example", "A", txid=7), query("h.example", "AAAA", txid=7)
    d.feed(0, qa.to_wire(), 0)
    d.feed(0, qaaaa.to_wire(), 1)
    d.feed(1, answer(qaaaa, "2001:db8::1").to_wire(), 2)
    d.feed(1, answer(qa, "192.0.2.1").to_wire(), 3)
    assert [(c.info["qtype"], c.flags) for c in calls] == [("AAAA", []), ("A", [])]


def test_question_mismatch_is_unpaired() -> None:
    d, calls = make()
    q = query("asked.example", txid=9)
    other = query("other.example", txid=9)
    d.feed(0, q.to_wire(), 0)
    d.feed(1, answer(other, "192.0.2.9").to_wire(), MS)
    (c,) = calls
    assert c.request is None and c.method is None and c.target is None
    assert c.info["qname"] == "other.example" and Flag.REQUEST_MISSING in c.flags
    assert "question-mismatch" in c.info["weird"]
    d.feed(1, answer(q, "192.0.2.1").to_wire(), 2 * MS)  # the real answer still pairs
    assert calls[1].target == "asked.example" and calls[1].flags == []


def test_case_randomised_question_still_pairs() -> None:
    d, calls = make()
    q = query("wWw.eXaMpLe.CoM")
    r = answer(query("www.example.com"), "192.0.2.1")
    d.feed(0, q.to_wire(), 0)
    d.feed(1, r.to_wire(), MS)
    assert calls[0].target == "wWw.eXaMpLe.CoM" and calls[0].flags == []


def test_retransmitted_query_is_one_call() -> None:
    d, calls = make()
    q = query()
    for i in range(3):
        d.feed(0, q.to_wire(), i * S)
    d.feed(1, answer(q, "192.0.2.1").to_wire(), 2 * S + MS)
    (c,) = calls
    assert c.info["retransmits"] == 2 and c.request_ts == 0 and Flag.RETRANSMISSION in c.flags


def test_duplicate_response_is_flagged() -> None:
    d, calls = make()
    q = query()
    r = answer(q, "192.0.2.1").to_wire()
    d.feed(0, q.to_wire(), 0)
    d.feed(1, r, MS)
    d.feed(1, r, 2 * MS)
    assert len(calls) == 2
    assert calls[1].request is None and Flag.RETRANSMISSION in calls[1].flags


def test_response_missing_after_timeout() -> None:
    d, calls = make()
    d.feed(0, query("lost.example", txid=1).to_wire(), 0)
    d.feed(0, query("next.example", txid=2).to_wire(), DNS_TIMEOUT_NS - 1)
    assert calls == []
    d.feed(0, query("third.example", txid=3).to_wire(), DNS_TIMEOUT_NS + 1)
    (c,) = calls
    assert c.target == "lost.example" and c.response is None and c.status is None
    assert c.flags == [Flag.RESPONSE_MISSING]
    d.close(10 * S)
    assert [x.target for x in calls] == ["lost.example", "next.example", "third.example"]
    assert all(Flag.RESPONSE_MISSING in x.flags for x in calls)


def test_late_response_after_timeout_is_request_missing() -> None:
    d, calls = make()
    q = query()
    d.feed(0, q.to_wire(), 0)
    d.feed(1, answer(q, "192.0.2.1").to_wire(), DNS_TIMEOUT_NS + S)
    assert [c.flags for c in calls] == [[Flag.RESPONSE_MISSING], [Flag.REQUEST_MISSING]]


def test_response_without_query() -> None:
    d, calls = make()
    d.feed(1, answer(query("orphan.Example"), "192.0.2.1").to_wire(), 0)
    (c,) = calls
    assert c.method is None and c.target is None and c.request is None and c.status == 0
    assert c.info["qname"] == "orphan.Example" and c.flags == [Flag.REQUEST_MISSING]
    assert c.src.port == 40000  # the side the response went to is the client


def test_max_pending_emits_the_oldest() -> None:
    d, calls = make(limits=Limits(max_pending=4))
    for i in range(6):
        d.feed(0, query(f"q{i}.example", txid=i).to_wire(), i)
    assert [c.target for c in calls] == ["q0.example", "q1.example"]
    assert all(c.flags == [Flag.RESPONSE_MISSING] for c in calls)
    assert len(d.pending) == 4


def test_mdns_variant_by_port() -> None:
    d, calls = make(ports=(5353, 5353))
    q = query("printer._ipp._tcp.local", "PTR", txid=0)
    d.feed(0, q.to_wire(), 0)
    d.close(S)
    assert calls[0].info["variant"] == "mdns"
    d2, calls2 = make(ports=(51000, 5355))
    d2.feed(0, query("host", txid=5).to_wire(), 0)
    d2.close(1)
    assert calls2[0].info["variant"] == "llmnr"


def test_multiple_questions_listed() -> None:
    q = query("a.example")
    q.question.append(dns.rrset.RRset(dns.name.from_text("b.example"), dns.rdataclass.IN, dns.rdatatype.AAAA))
    d, calls = make()
    d.feed(0, q.to_wire(), 0)
    d.close(1)
    assert calls[0].info["questions"] == [
        {"name": "a.example", "type": "A", "class": "IN"},
        {"name": "b.example", "type": "AAAA", "class": "IN"},
    ]


def test_parse_error_query_still_pairs_by_id() -> None:
    d, calls = make()
    bad = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"  # compression loop
    d.feed(0, bad, 0)
    r = struct.pack("!HHHHHH", 0x4242, 0x8181, 0, 0, 0, 0)  # FORMERR without a question
    d.feed(1, r, MS)
    (c,) = calls
    assert Flag.PARSE_ERROR in c.flags and c.status == 1 and c.target is None and c.method == "QUERY"
    assert "compression-loop" in c.info["weird"]


def test_short_datagram_is_counted_not_raised() -> None:
    d, calls = make()
    d.feed(0, b"\x00\x01\x02", 0)
    d.close(1)
    assert calls == [] and d.undecodable == 1


def test_snaplen_cut_datagram() -> None:
    d, calls = make()
    q = query()
    r = answer(q, *[f"192.0.2.{i}" for i in range(20)]).to_wire()
    d.feed(0, q.to_wire(), 0)
    d.feed(1, r[:100], MS)
    d.gap(1, len(r) - 100, MS, True)
    (c,) = calls
    assert Flag.SNAPLEN in c.flags and Flag.TRUNCATED in c.flags and Flag.PARSE_ERROR not in c.flags
    assert c.response is not None and c.response.truncated and c.status == 0


# -- TCP ---------------------------------------------------------------------------------------------


def tcp_conversation(n: int = 5) -> tuple[list[dns.message.Message], list[dns.message.Message]]:
    qs = [query(f"host{i}.Example.org", "A" if i % 2 else "AAAA", txid=100 + i) for i in range(n)]
    rs = [answer(q, f"192.0.2.{i}" if i % 2 else f"2001:db8::{i:x}") for i, q in enumerate(qs)]
    return qs, rs


def summary(calls: Sequence[Call]) -> list[tuple[object, ...]]:
    return [(c.target, c.status, c.info["id"], tuple(c.flags), c.request_ts is not None) for c in calls]


def test_tcp_several_messages_one_connection() -> None:
    qs, rs = tcp_conversation()
    d, calls = make("tcp")
    d.feed(0, tcp(*qs), 0)
    d.feed(1, tcp(*rs), MS)
    d.close(2 * MS)
    assert [c.target for c in calls] == [f"host{i}.Example.org" for i in range(5)]
    assert all(c.transport == "tcp" and c.flags == [] for c in calls)
    assert d.buffered_bytes() == 0


@pytest.mark.parametrize("step", [1, 2, 3, 7, 13, 50])
def test_tcp_split_anywhere(step: int) -> None:
    qs, rs = tcp_conversation()
    whole, calls_whole = make("tcp")
    whole.feed(0, tcp(*qs), 0)
    whole.feed(1, tcp(*rs), 1)
    whole.close(2)
    d, calls = make("tcp")
    a, b = tcp(*qs), tcp(*rs)
    for i in range(0, len(a), step):
        d.feed(0, a[i : i + step], 0)
    for i in range(0, len(b), step):
        d.feed(1, b[i : i + step], 1)
    d.close(2)
    assert summary(calls) == summary(calls_whole)


def test_tcp_message_timestamp_is_its_first_segment() -> None:
    q = tcp(query())
    d, calls = make("tcp")
    d.feed(0, q[:5], 10)
    d.feed(0, q[5:], 20)
    d.close(30)
    assert calls[0].request_ts == 10


def test_tcp_gap_inside_a_message_keeps_framing() -> None:
    qs, rs = tcp_conversation(3)
    resp = tcp(*rs)
    first_len = 2 + len(rs[0].to_wire())
    d, calls = make("tcp")
    d.feed(0, tcp(*qs), 0)
    d.feed(1, resp[:20], 1)  # 20 bytes of the first response, then 10 lost inside it
    d.gap(1, 10, 1)
    d.feed(1, resp[30:], 2)
    d.close(3)
    assert [c.target for c in calls] == [f"host{i}.Example.org" for i in range(3)]
    assert Flag.GAP in calls[0].flags and calls[0].response is not None and calls[0].response.truncated
    assert calls[1].flags == [] and calls[2].flags == []
    assert first_len > 30


def test_tcp_gap_across_a_boundary_resyncs() -> None:
    qs, rs = tcp_conversation(4)
    resp = tcp(*rs)
    cut = 2 + len(rs[0].to_wire()) + 5  # the first response and 5 bytes of the second are lost
    d, calls = make("tcp")
    d.feed(0, tcp(*qs), 0)
    d.gap(1, cut, 1)
    d.feed(1, resp[cut:], 2)
    d.close(3)
    by_target = {c.target: c for c in calls}
    assert by_target["host2.Example.org"].flags == [] and by_target["host3.Example.org"].flags == []
    assert Flag.RESPONSE_MISSING in by_target["host0.Example.org"].flags
    assert Flag.GAP in by_target["host0.Example.org"].flags


def test_tcp_mid_stream_capture_resyncs() -> None:
    qs, rs = tcp_conversation(4)
    req = tcp(*qs)
    start = 2 + len(qs[0].to_wire()) + 7  # the capture starts inside the second query
    d, calls = make("tcp", handshake_seen=False)
    d.feed(0, req[start:], 0)
    d.feed(1, tcp(*rs), 1)
    d.close(2)
    paired = [c.target for c in calls if c.request is not None and c.response is not None]
    assert paired == ["host2.Example.org", "host3.Example.org"]
    assert sum(1 for c in calls if c.request is None) == 2


def test_tcp_garbage_gives_up_bounded() -> None:
    d, calls = make("tcp")
    d.feed(0, tcp(query()), 0)
    d.gap(1, 100, 1)
    junk = bytes([0x00, 0x05]) * 1000
    for _ in range(200):
        d.feed(1, junk, 2)
        assert d.buffered_bytes() < 2 * 65537
    d.close(3)
    assert d.streams[1].gave_up
    (c,) = calls
    assert Flag.RESPONSE_MISSING in c.flags and Flag.GAP in c.flags and "resync-failed" in c.info["weird"]


def test_tcp_cut_by_close() -> None:
    q = tcp(query(use_edns=0))  # the cut falls in the OPT record
    d, calls = make("tcp")
    d.feed(0, q[:-3], 0)
    d.close(1)
    (c,) = calls
    assert Flag.TRUNCATED in c.flags and Flag.RESPONSE_MISSING in c.flags and c.target == "www.Example.com"


# -- detection ---------------------------------------------------------------------------------------


def test_detect_datagram() -> None:
    q = query().to_wire()
    assert detect_datagram(q) == Verdict.YES
    assert detect_datagram(answer(query(), "192.0.2.1").to_wire()) == Verdict.YES
    assert detect_datagram(q[:8]) == Verdict.NO
    assert detect_datagram(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == Verdict.NO
    assert detect_datagram(bytes(48)) == Verdict.NO  # NTP-sized zeros: no question
    assert UDP_ANALYZER.name == ANALYZER.name == "dns"


def test_detect_rejects_nbns() -> None:
    nb = struct.pack("!HHHHHH", 0x8001, 0x0110, 1, 0, 0, 0) + b"\x20" + b"EB" * 16 + b"\x00\x00\x20\x00\x01"
    assert detect_datagram(nb) == Verdict.NO


def test_detect_stream() -> None:
    s = tcp(query())
    assert detect_stream(s) == Verdict.YES
    assert detect_stream(s[:1]) == Verdict.MORE
    assert detect_stream(s[:10]) == Verdict.MORE
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32)
    assert detect_stream(hello) == Verdict.NO  # a TLS ClientHello
    assert detect_stream(b"GET / HTTP/1.1\r\n") == Verdict.NO
    assert detect_stream(query().to_wire()) == Verdict.NO  # no length prefix


def test_detect_stream_mid_connection_chain() -> None:
    qs, _ = tcp_conversation(3)
    s = tcp(*qs)
    assert detect_stream(s[9:]) == Verdict.YES  # two whole messages follow the cut one
