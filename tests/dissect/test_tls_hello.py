"""ClientHello / ServerHello parsing on real OpenSSL hellos, GREASE, truncation, and the name tables
against tshark's own value strings."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from dissect.tls.hello import (
    CIPHER_SUITES,
    HRR_RANDOM,
    cipher_name,
    group_name,
    is_grease,
    parse_client_hello,
    parse_server_hello,
    version_name,
)
from tests.dissect.test_tls_handshakes import TLS12, client_context, converse, server_context


def hello_bodies(**kw: object) -> tuple[bytes, bytes]:
    conv = converse(client_context(alpn=["h2", "http/1.1"]), server_context(alpn=["h2"]), **kw)  # type: ignore[arg-type]
    ch, sh = conv.segments[0][1], conv.segments[1][1]
    # one record each: skip the record header and the handshake header
    ch_len = int.from_bytes(ch[6:9], "big")
    sh_len = int.from_bytes(sh[6:9], "big")
    return ch[9 : 9 + ch_len], sh[9 : 9 + sh_len]


def test_real_client_hello() -> None:
    body, _ = hello_bodies()
    ch = parse_client_hello(body)
    assert ch.error is None
    assert ch.legacy_version == 0x0303 and len(ch.random) == 32 and len(ch.session_id) == 32
    assert ch.sni == "api.podshark.test"
    assert ch.alpn == ["h2", "http/1.1"]
    assert ch.supported_versions == [0x0304, 0x0303]
    assert 0x1302 in ch.cipher_suites and 0x00FF in ch.cipher_suites
    assert ch.key_share_groups == [0x001D]
    assert ch.signature_algorithms
    assert ch.session_ticket == b"" and not ch.psk and not ch.resumption_offered  # compat session id
    assert ch.ja3().startswith("771,")


def test_real_server_hello() -> None:
    _, body = hello_bodies()
    sh = parse_server_hello(body)
    assert sh.error is None and not sh.is_hello_retry
    assert sh.version == 0x0304 and sh.legacy_version == 0x0303
    assert sh.cipher_suite == 0x1302 and sh.key_share_group == 0x001D
    assert sh.alpn is None  # TLS 1.3: in EncryptedExtensions


def test_tls12_server_hello_alpn() -> None:
    conv = converse(client_context(alpn=["h2", "http/1.1"], maximum=TLS12), server_context(alpn=["h2"]))
    sh = conv.segments[1][1]
    body = sh[9 : 9 + int.from_bytes(sh[6:9], "big")]
    parsed = parse_server_hello(body)
    assert parsed.alpn == "h2" and parsed.version == 0x0303 and parsed.selected_version is None


def _ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def _client_hello(suites: list[int], exts: bytes) -> bytes:
    return (
        b"\x03\x03"
        + b"\x11" * 32
        + b"\x00"
        + struct.pack("!H", 2 * len(suites))
        + b"".join(struct.pack("!H", s) for s in suites)
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )


def test_grease_is_ignored() -> None:
    versions = _ext(43, bytes([6]) + struct.pack("!HHH", 0x3A3A, 0x0304, 0x0303))
    groups = _ext(10, struct.pack("!HHHH", 6, 0xCACA, 0x001D, 0x0017))
    body = _client_hello([0x0A0A, 0x1301, 0xC02F], _ext(0x1A1A, b"") + versions + groups)
    ch = parse_client_hello(body)
    assert ch.error is None
    assert ch.cipher_suites == [0x1301, 0xC02F]
    assert ch.supported_versions == [0x0304, 0x0303]
    assert ch.supported_groups == [0x001D, 0x0017]
    assert ch.extensions == [43, 10]
    assert all(is_grease(v) for v in range(0x0A0A, 0x10000, 0x1010))
    assert not is_grease(0x0A0B) and not is_grease(0x1301)


def test_no_extensions_and_sessions() -> None:
    ch = parse_client_hello(_client_hello([0x002F], b"")[:-2])  # SSL 3.0 style: no extension block
    assert ch.error is None and ch.extensions == [] and ch.versions == [0x0303]
    with_id = b"\x03\x03" + b"\x11" * 32 + b"\x20" + b"\x22" * 32 + b"\x00\x02\x00\x2f\x01\x00"
    ch = parse_client_hello(with_id)
    assert ch.resumption_offered  # a 1.2 session id, no 1.3 offered


def test_every_truncation_is_an_error_not_an_exception() -> None:
    body, sh_body = hello_bodies()
    clean = [n for n in range(len(body)) if parse_client_hello(body[:n]).error is None]
    assert len(clean) == 1  # only the cut right before the extension block is a valid (old) hello
    for n in range(len(sh_body)):
        parse_server_hello(sh_body[:n])
    assert parse_client_hello(body[:50]).error is not None


def test_hello_retry_random() -> None:
    sh = parse_server_hello(b"\x03\x03" + HRR_RANDOM + b"\x00\x13\x01\x00")
    assert sh.is_hello_retry and sh.cipher_suite == 0x1301


def test_names() -> None:
    assert version_name(0x0304) == "TLS 1.3" and version_name(0x7F1C) == "TLS 1.3 (draft 28)"
    assert version_name(0x1234) == "0x1234" and version_name(None) is None
    assert cipher_name(0x1301) == "TLS_AES_128_GCM_SHA256" and cipher_name(0x9999) == "0x9999"
    assert group_name(0x001D) == "x25519" and group_name(0x4242) == "0x4242"
    assert len(CIPHER_SUITES) >= 40


@pytest.mark.tshark
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_cipher_names_match_tshark() -> None:
    """Every suite name in our table is tshark's name for that code (tshark is the oracle)."""
    out = subprocess.run(["tshark", "-G", "values"], capture_output=True, text=True, check=True).stdout
    theirs: dict[int, str] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0] == "V" and parts[1] == "tls.handshake.ciphersuite":
            theirs[int(parts[2])] = parts[3]
    assert theirs, "tshark printed no cipher suite names"
    wrong = {f"0x{k:04x}": (v, theirs.get(k)) for k, v in CIPHER_SUITES.items() if theirs.get(k) != v}
    assert not wrong
