"""The DNS wire-format parser on real messages: dnspython (a full DNS implementation) writes the bytes,
`dissect.dns.message.parse_message` must read back exactly what was put in; hand-made bytes only for
what no correct implementation writes (compression loops, absurd counts)."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dissect.dns.message import (
    DNSMessage,
    class_name,
    opcode_name,
    parse_message,
    rcode_name,
    type_name,
)


def parsed(wire: bytes, mdns: bool = False) -> DNSMessage:
    m = parse_message(wire, mdns)
    assert m is not None
    return m


def response_with(qname: str, rdtype: str, *rdatas: str, ttl: int = 300) -> bytes:
    q = dns.message.make_query(qname, rdtype)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(dns.name.from_text(qname), ttl, "IN", rdtype, *rdatas))
    return r.to_wire()


def test_query_header_and_question_case_kept() -> None:
    q = dns.message.make_query("WwW.ExAmple.COM", "AAAA")
    m = parsed(q.to_wire())
    assert m.id == q.id and not m.qr and m.opcode == 0 and m.rcode == 0
    assert [(x.name, x.qtype, x.qclass) for x in m.questions] == [("WwW.ExAmple.COM", 28, 1)]
    assert m.flag_dict() == {"aa": False, "tc": False, "rd": True, "ra": False, "ad": False, "cd": False}
    assert m.error is None and m.weird == []
    assert m.edns is None


def test_root_name() -> None:
    m = parsed(dns.message.make_query(".", "NS").to_wire())
    assert m.questions[0].name == "."


@pytest.mark.parametrize(
    ("rdtype", "rdata", "data", "extra"),
    [
        ("A", "192.0.2.7", "192.0.2.7", {}),
        ("AAAA", "2001:db8::1", "2001:db8::1", {}),
        ("CNAME", "Target.Example.net.", "Target.Example.net", {}),
        ("NS", "ns1.example.com.", "ns1.example.com", {}),
        ("PTR", "host.example.com.", "host.example.com", {}),
        ("DNAME", "example.net.", "example.net", {}),
        ("MX", "10 mail.example.com.", "10 mail.example.com",
         {"preference": 10, "exchange": "mail.example.com"}),
        ("TXT", '"hello world" "v=spf1 -all"', '"hello world" "v=spf1 -all"',
         {"strings": ["hello world", "v=spf1 -all"]}),
        ("SRV", "0 5 5060 sip.example.com.", "0 5 5060 sip.example.com",
         {"priority": 0, "weight": 5, "port": 5060, "target": "sip.example.com"}),
        ("SOA", "ns1.example.com. hostmaster.example.com. 2024010101 7200 3600 1209600 300",
         "ns1.example.com hostmaster.example.com 2024010101 7200 3600 1209600 300",
         {"mname": "ns1.example.com", "rname": "hostmaster.example.com", "serial": 2024010101,
          "minimum": 300}),
        ("CAA", '0 issue "letsencrypt.org"', '0 issue "letsencrypt.org"',
         {"flags": 0, "tag": "issue", "value": "letsencrypt.org"}),
        ("HTTPS", '1 . alpn="h2,h3" port=8443', "1 . alpn=h2,h3 port=8443",
         {"priority": 1, "target": ".", "params": {"alpn": "h2,h3", "port": "8443"}}),
        ("SVCB", "2 svc.example.net. ipv4hint=192.0.2.1", "2 svc.example.net ipv4hint=192.0.2.1",
         {"priority": 2, "target": "svc.example.net"}),
    ],
)  # fmt: skip
def test_record_types_decoded(rdtype: str, rdata: str, data: str, extra: dict[str, object]) -> None:
    m = parsed(response_with("www.example.com", rdtype, rdata))
    assert m.qr and m.error is None and m.weird == []
    (rr,) = m.answers
    assert rr["name"] == "www.example.com" and rr["type"] == rdtype and rr["ttl"] == 300
    assert rr["data"] == data
    for k, v in extra.items():
        assert rr[k] == v


def test_unknown_type_is_hex_with_number() -> None:
    m = parsed(response_with("x.example", "TYPE65280", r"\# 4 0a0b0c0d"))
    (rr,) = m.answers
    assert rr["type"] == 65280 and rr["rdata_hex"] == "0a0b0c0d" and rr["data"] == r"\# 4 0a0b0c0d"
    assert type_name(65280) == "TYPE65280"


def test_named_but_undecoded_type_keeps_its_name() -> None:
    m = parsed(response_with("example.com", "DS", "12345 8 2 " + "ab" * 32))
    (rr,) = m.answers
    assert rr["type"] == "DS" and rr["rdata_hex"].startswith("3039")


def test_many_answers_and_compression() -> None:
    ips = [f"10.0.{i // 256}.{i % 256}" for i in range(300)]
    wire = response_with("big.example.com", "A", *ips)
    m = parsed(wire)
    assert sorted(rr["data"] for rr in m.answers) == sorted(ips)  # an rrset has no order
    assert len(wire) < 300 * 30  # names were compressed: every answer's name is a 2-byte pointer


def test_authority_and_additional_sections() -> None:
    q = dns.message.make_query("nope.example.com", "A")
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.authority.append(dns.rrset.from_text("example.com.", 60, "IN", "SOA", "ns. host. 1 2 3 4 5"))
    r.additional.append(dns.rrset.from_text("ns.example.com.", 60, "IN", "A", "192.0.2.53"))
    m = parsed(r.to_wire())
    assert m.rcode == 3 and rcode_name(m.rcode) == "NXDOMAIN"
    assert m.answers == [] and m.authority[0]["type"] == "SOA" and m.additional[0]["data"] == "192.0.2.53"


def test_edns_with_client_subnet_and_cookie() -> None:
    ecs = dns.edns.ECSOption("1.2.3.0", 24)
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(8)))
    q = dns.message.make_query(
        "example.com", "A", use_edns=0, payload=1232, want_dnssec=True, options=[ecs, cookie]
    )
    m = parsed(q.to_wire())
    assert m.edns == {
        "udp_size": 1232,
        "version": 0,
        "do": True,
        "client_subnet": "1.2.3.0/24",
        "options": [{"code": 10, "name": "COOKIE", "data": "0001020304050607"}],
    }
    assert m.additional == []  # OPT is shown as edns, not as a record


def test_ecs_ipv6_and_scope() -> None:
    q = dns.message.make_query(
        "example.com", "AAAA", use_edns=0, options=[dns.edns.ECSOption("2001:db8::", 56, 48)]
    )
    m = parsed(q.to_wire())
    assert m.edns is not None
    assert m.edns["client_subnet"] == "2001:db8::/56" and m.edns["client_subnet_scope"] == 48


def test_extended_rcode_from_opt() -> None:
    q = dns.message.make_query("example.com", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.BADVERS)  # 16: needs OPT's upper rcode bits
    m = parsed(r.to_wire())
    assert m.flags & 0xF == 0 and m.ext_rcode == 1 and m.rcode == 16 and rcode_name(16) == "BADVERS"


def test_tc_flag() -> None:
    q = dns.message.make_query("example.com", "TXT")
    r = dns.message.make_response(q)
    r.flags |= dns.flags.TC
    m = parsed(r.to_wire())
    assert m.tc and m.flag_dict()["tc"]


def test_opcodes_and_names() -> None:
    q = dns.message.make_query("example.com", "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    m = parsed(q.to_wire())
    assert opcode_name(m.opcode) == "NOTIFY"
    assert opcode_name(3) == "OPCODE3" and opcode_name(5) == "UPDATE" and opcode_name(6) == "DSO"
    assert class_name(1) == "IN" and class_name(3) == "CH" and class_name(42) == "CLASS42"


def test_escaped_labels_like_dig() -> None:
    name = dns.name.Name([b"a.b", b"sp ace", b"\x00\xff", b"ok", b""])
    q = dns.message.make_query(name, "A")
    m = parsed(q.to_wire())
    assert m.questions[0].name == "a\\.b.sp\\032ace.\\000\\255.ok"
    assert m.questions[0].name == name.to_text(omit_final_dot=True)


def test_mdns_class_bits() -> None:
    q = dns.message.make_query(
        "printer.local", "PTR", rdclass=dns.rdataclass.RdataClass.make(1 | 0x8000)
    )  # QU question
    q.id = 0
    m = parsed(q.to_wire(), mdns=True)
    assert m.questions[0].qclass == 1 and m.questions[0].unicast_response
    assert parsed(q.to_wire()).questions[0].qclass == 0x8001  # plain DNS: the class as sent


# -- malformed messages: flagged, never followed ---------------------------------------------------


def header(
    qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x0100, txid: int = 0x1234
) -> bytes:
    return struct.pack("!HHHHHH", txid, flags, qd, an, ns, ar)


def test_pointer_to_itself_is_a_loop() -> None:
    m = parsed(header() + b"\xc0\x0c" + b"\x00\x01\x00\x01")
    assert m.error == "compression-loop" and "compression-loop" in m.weird and m.questions == []


def test_pointer_loop_between_two_names() -> None:
    # answer name at 29 points to 31 (forward), which points back to 29: never followed
    wire = header(qd=1, an=1, flags=0x8180) + b"\x01a\x00" + b"\x00\x01\x00\x01"
    wire += b"\xc0\x1f" + b"\xc0\x1d" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
    m = parsed(wire)
    assert m.error == "compression-loop" and m.answers == []


def test_pointer_into_its_own_run_is_a_loop() -> None:
    # "x" then a pointer back to the start of the same name: strictly backwards of the pointer, but a loop
    m = parsed(header() + b"\x01x\xc0\x0c" + b"\x00\x01\x00\x01")
    assert m.error == "compression-loop"


def test_name_longer_than_255() -> None:
    name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    m = parsed(header() + name + b"\x00\x01\x00\x01")
    assert m.error == "name-too-long"


def test_absurd_counts_flagged_and_parsing_stops_at_the_end() -> None:
    q = dns.message.make_query("example.com", "A").to_wire()
    wire = q[:6] + b"\xff\xff" + q[8:]  # 65535 answers claimed, none present
    m = parsed(wire)
    assert "counts-exceed-length" in m.weird and m.error == "message-cut" and m.cut
    assert m.questions[0].name == "example.com"


def test_rdata_length_beyond_message() -> None:
    wire = bytearray(response_with("example.com", "A", "1.2.3.4"))
    wire[-6:-4] = b"\xff\x00"  # rdlength 65280
    m = parsed(bytes(wire))
    assert m.error == "rdata-out-of-bounds" and m.answers == []


def test_bad_rdata_keeps_the_record_as_hex() -> None:
    wire = bytearray(response_with("example.com", "A", "1.2.3.4"))
    wire[-6:-4] = b"\x00\x03"  # A with 3 bytes of rdata; the message is one byte longer than the counts say
    m = parsed(bytes(wire))
    assert "bad-rdata" in m.weird and m.answers[0]["rdata_hex"] == "010203"
    assert "trailing-bytes" in m.weird


def test_short_message() -> None:
    assert parse_message(b"\x12\x34\x01\x00") is None


def test_reserved_label_type() -> None:
    m = parsed(header() + b"\x81a\x00\x00\x01\x00\x01")
    assert m.error == "bad-label-type"
