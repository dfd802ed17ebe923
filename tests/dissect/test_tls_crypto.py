"""TLS record cryptography (`dissect.tls.crypto`) against RFC 8448's published trace, real OpenSSL
sessions (Python's ssl over memory BIOs; openssl s_client/s_server through a recording relay, with
KeyUpdate), OpenSSL's own cipher table, tampered records, and Hypothesis-made garbage.

Expected values come from the RFC, from what the tests wrote into the TLS sessions, or from OpenSSL;
never from the module under test.
"""

from __future__ import annotations

import hmac
import re
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from dissect.tls.crypto import (
    SUITES,
    CipherSuite,
    DirectionKeys,
    Opened,
    RecordCipher,
    suite,
    tls12_keys,
    tls13_keys,
    tls13_next_secret,
)
from dissect.tls.hello import CIPHER_SUITES
from tests.dissect.tls_crypto_wire import (
    CLIENT,
    EXT_ENCRYPT_THEN_MAC,
    SERVER,
    Session,
    handshake_types,
    hello_random,
    memory_session,
    openssl_session,
    records,
    server_hello_extensions,
    tls_contexts,
    write_cert,
)

TLS10, TLS11, TLS12, TLS13 = 0x0301, 0x0302, 0x0303, 0x0304
APPLICATION_DATA, HANDSHAKE = 23, 22


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --- RFC 8448 §3, "Simple 1-RTT Handshake" (TLS_AES_128_GCM_SHA256) ------------------------------

RFC_C_HS_SECRET = h(
    "b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21"
)
RFC_S_HS_SECRET = h(
    "b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38"
)
RFC_C_AP_SECRET = h(
    "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5"
)
RFC_S_AP_SECRET = h(
    "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43"
)
RFC_S_HS_KEY, RFC_S_HS_IV = (
    h("3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc"),
    h("5d 31 3e b2 67 12 76 ee 13 00 0b 30"),
)
RFC_C_HS_KEY, RFC_C_HS_IV = (
    h("db fa a6 93 d1 76 2c 5b 66 6a f5 d9 50 25 8d 01"),
    h("5b d3 c7 1b 83 6e 0b 76 bb 73 26 5f"),
)
RFC_S_AP_KEY, RFC_S_AP_IV = (
    h("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"),
    h("cf 78 2b 88 dd 83 54 9a ad f1 e9 84"),
)
RFC_C_AP_KEY, RFC_C_AP_IV = (
    h("17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51"),
    h("5b 78 92 3d ee 08 57 90 33 e5 23 d9"),
)

RFC_EE = h("""
    08 00 00 24 00 22 00 0a 00 14 00 12 00 1d 00 17 00 18 00 19 01 00 01 01 01 02 01 03 01 04 00 1c 00 02
    40 01 00 00 00 00""")
RFC_CERT = h("""
    0b 00 01 b9 00 00 01 b5 00 01 b0 30 82 01 ac 30 82 01 15 a0 03 02 01 02 02 01 02 30 0d 06 09 2a 86 48
    86 f7 0d 01 01 0b 05 00 30 0e 31 0c 30 0a 06 03 55 04 03 13 03 72 73 61 30 1e 17 0d 31 36 30 37 33 30
    30 31 32 33 35 39 5a 17 0d 32 36 30 37 33 30 30 31 32 33 35 39 5a 30 0e 31 0c 30 0a 06 03 55 04 03 13
    03 72 73 61 30 81 9f 30 0d 06 09 2a 86 48 86 f7 0d 01 01 01 05 00 03 81 8d 00 30 81 89 02 81 81 00 b4
    bb 49 8f 82 79 30 3d 98 08 36 39 9b 36 c6 98 8c 0c 68 de 55 e1 bd b8 26 d3 90 1a 24 61 ea fd 2d e4 9a
    91 d0 15 ab bc 9a 95 13 7a ce 6c 1a f1 9e aa 6a f9 8c 7c ed 43 12 09 98 e1 87 a8 0e e0 cc b0 52 4b 1b
    01 8c 3e 0b 63 26 4d 44 9a 6d 38 e2 2a 5f da 43 08 46 74 80 30 53 0e f0 46 1c 8c a9 d9 ef bf ae 8e a6
    d1 d0 3e 2b d1 93 ef f0 ab 9a 80 02 c4 74 28 a6 d3 5a 8d 88 d7 9f 7f 1e 3f 02 03 01 00 01 a3 1a 30 18
    30 09 06 03 55 1d 13 04 02 30 00 30 0b 06 03 55 1d 0f 04 04 03 02 05 a0 30 0d 06 09 2a 86 48 86 f7 0d
    01 01 0b 05 00 03 81 81 00 85 aa d2 a0 e5 b9 27 6b 90 8c 65 f7 3a 72 67 17 06 18 a5 4c 5f 8a 7b 33 7d
    2d f7 a5 94 36 54 17 f2 ea e8 f8 a5 8c 8f 81 72 f9 31 9c f3 6b 7f d6 c5 5b 80 f2 1a 03 01 51 56 72 60
    96 fd 33 5e 5e 67 f2 db f1 02 70 2e 60 8c ca e6 be c1 fc 63 a4 2a 99 be 5c 3e b7 10 7c 3c 54 e9 b9 eb
    2b d5 20 3b 1c 3b 84 e0 a8 b2 f7 59 40 9b a3 ea c9 d9 1d 40 2d cc 0c c8 f8 96 12 29 ac 91 87 b4 2b 4d
    e1 00 00""")
RFC_CV = h("""
    0f 00 00 84 08 04 00 80 5a 74 7c 5d 88 fa 9b d2 e5 5a b0 85 a6 10 15 b7 21 1f 82 4c d4 84 14 5a b3 ff
    52 f1 fd a8 47 7b 0b 7a bc 90 db 78 e2 d3 3a 5c 14 1a 07 86 53 fa 6b ef 78 0c 5e a2 48 ee aa a7 85 c4
    f3 94 ca b6 d3 0b be 8d 48 59 ee 51 1f 60 29 57 b1 54 11 ac 02 76 71 45 9e 46 44 5c 9e a5 8c 18 1e 81
    8e 95 b8 c3 fb 0b f3 27 84 09 d3 be 15 2a 3d a5 04 3e 06 3d da 65 cd f5 ae a2 0d 53 df ac d4 2f 74 f3""")
RFC_S_FINISHED = h("""
    14 00 00 20 9b 9b 14 1d 90 63 37 fb d2 cb dc e7 1d f4 de da 4a b4 2c 30 95 72 cb 7f ff ee 54 54 b7 8f
    07 18""")
RFC_C_FINISHED = h("""
    14 00 00 20 a8 ec 43 6d 67 76 34 ae 52 5a c1 fc eb e1 1a 03 9e c1 76 94 fa c6 e9 85 27 b6 42 f2 ed d5
    ce 61""")
RFC_S_HS_RECORD = h("""
    17 03 03 02 a2 d1 ff 33 4a 56 f5 bf f6 59 4a 07 cc 87 b5 80 23 3f 50 0f 45 e4 89 e7 f3 3a f3 5e df 78
    69 fc f4 0a a4 0a a2 b8 ea 73 f8 48 a7 ca 07 61 2e f9 f9 45 cb 96 0b 40 68 90 51 23 ea 78 b1 11 b4 29
    ba 91 91 cd 05 d2 a3 89 28 0f 52 61 34 aa dc 7f c7 8c 4b 72 9d f8 28 b5 ec f7 b1 3b d9 ae fb 0e 57 f2
    71 58 5b 8e a9 bb 35 5c 7c 79 02 07 16 cf b9 b1 18 3e f3 ab 20 e3 7d 57 a6 b9 d7 47 76 09 ae e6 e1 22
    a4 cf 51 42 73 25 25 0c 7d 0e 50 92 89 44 4c 9b 3a 64 8f 1d 71 03 5d 2e d6 5b 0e 3c dd 0c ba e8 bf 2d
    0b 22 78 12 cb b3 60 98 72 55 cc 74 41 10 c4 53 ba a4 fc d6 10 92 8d 80 98 10 e4 b7 ed 1a 8f d9 91 f0
    6a a6 24 82 04 79 7e 36 a6 a7 3b 70 a2 55 9c 09 ea d6 86 94 5b a2 46 ab 66 e5 ed d8 04 4b 4c 6d e3 fc
    f2 a8 94 41 ac 66 27 2f d8 fb 33 0e f8 19 05 79 b3 68 45 96 c9 60 bd 59 6e ea 52 0a 56 a8 d6 50 f5 63
    aa d2 74 09 96 0d ca 63 d3 e6 88 61 1e a5 e2 2f 44 15 cf 95 38 d5 1a 20 0c 27 03 42 72 96 8a 26 4e d6
    54 0c 84 83 8d 89 f7 2c 24 46 1a ad 6d 26 f5 9e ca ba 9a cb bb 31 7b 66 d9 02 f4 f2 92 a3 6a c1 b6 39
    c6 37 ce 34 31 17 b6 59 62 22 45 31 7b 49 ee da 0c 62 58 f1 00 d7 d9 61 ff b1 38 64 7e 92 ea 33 0f ae
    ea 6d fa 31 c7 a8 4d c3 bd 7e 1b 7a 6c 71 78 af 36 87 90 18 e3 f2 52 10 7f 24 3d 24 3d c7 33 9d 56 84
    c8 b0 37 8b f3 02 44 da 8c 87 c8 43 f5 e5 6e b4 c5 e8 28 0a 2b 48 05 2c f9 3b 16 49 9a 66 db 7c ca 71
    e4 59 94 26 f7 d4 61 e6 6f 99 88 2b d8 9f c5 08 00 be cc a6 2d 6c 74 11 6d bd 29 72 fd a1 fa 80 f8 5d
    f8 81 ed be 5a 37 66 89 36 b3 35 58 3b 59 91 86 dc 5c 69 18 a3 96 fa 48 a1 81 d6 b6 fa 4f 9d 62 d5 13
    af bb 99 2f 2b 99 2f 67 f8 af e6 7f 76 91 3f a3 88 cb 56 30 c8 ca 01 e0 c6 5d 11 c6 6a 1e 2a c4 c8 59
    77 b7 c7 a6 99 9b bf 10 dc 35 ae 69 f5 51 56 14 63 6c 0b 9b 68 c1 9e d2 e3 1c 0b 3b 66 76 30 38 eb ba
    42 f3 b3 8e dc 03 99 f3 a9 f2 3f aa 63 97 8c 31 7f c9 fa 66 a7 3f 60 f0 50 4d e9 3b 5b 84 5e 27 55 92
    c1 23 35 ee 34 0b bc 4f dd d5 02 78 40 16 e4 b3 be 7e f0 4d da 49 f4 b4 40 a3 0c b5 d2 af 93 98 28 fd
    4a e3 79 4e 44 f9 4d f5 a6 31 ed e4 2c 17 19 bf da bf 02 53 fe 51 75 be 89 8e 75 0e dc 53 37 0d 2b""")
RFC_C_FINISHED_RECORD = h("""
    17 03 03 00 35 75 ec 4d c2 38 cc e6 0b 29 80 44 a7 1e 21 9c 56 cc 77 b0 51 7f e9 b9 3c 7a 4b fc 44 d8
    7f 38 f8 03 38 ac 98 fc 46 de b3 84 bd 1c ae ac ab 68 67 d7 26 c4 05 46""")
RFC_C_AP_RECORD = h("""
    17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b 98
    19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21
    69 49 15 e4""")
RFC_S_AP_RECORD = h("""
    17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc 32 25 d0 5f 82 aa 1b 36 e3 0e
    fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1
    67 c2 95 5d""")
RFC_APP_DATA = bytes(range(0x32))  # both sides send 00 01 .. 31
AES128GCM = SUITES[0x1301]


def test_rfc8448_traffic_keys() -> None:
    for secret, key, iv in (
        (RFC_S_HS_SECRET, RFC_S_HS_KEY, RFC_S_HS_IV),
        (RFC_C_HS_SECRET, RFC_C_HS_KEY, RFC_C_HS_IV),
        (RFC_S_AP_SECRET, RFC_S_AP_KEY, RFC_S_AP_IV),
        (RFC_C_AP_SECRET, RFC_C_AP_KEY, RFC_C_AP_IV),
    ):
        assert tls13_keys(AES128GCM, secret) == DirectionKeys(key, iv, b"")


def _open_record(cipher: RecordCipher, record: bytes, seq: int) -> Opened | None:
    return cipher.open(record[:5], record[5:], seq)


def test_rfc8448_server_handshake_flight() -> None:
    cipher = RecordCipher(AES128GCM, tls13_keys(AES128GCM, RFC_S_HS_SECRET), version=TLS13)
    opened = _open_record(cipher, RFC_S_HS_RECORD, 0)
    assert opened == Opened(HANDSHAKE, RFC_EE + RFC_CERT + RFC_CV + RFC_S_FINISHED)


def test_rfc8448_client_finished() -> None:
    cipher = RecordCipher(AES128GCM, tls13_keys(AES128GCM, RFC_C_HS_SECRET), version=TLS13)
    assert _open_record(cipher, RFC_C_FINISHED_RECORD, 0) == Opened(HANDSHAKE, RFC_C_FINISHED)


def test_rfc8448_application_data() -> None:
    client = RecordCipher(AES128GCM, tls13_keys(AES128GCM, RFC_C_AP_SECRET), version=TLS13)
    server = RecordCipher(AES128GCM, tls13_keys(AES128GCM, RFC_S_AP_SECRET), version=TLS13)
    assert _open_record(client, RFC_C_AP_RECORD, 0) == Opened(APPLICATION_DATA, RFC_APP_DATA)
    # the server's first application-traffic record is its NewSessionTicket: this one is seq 1
    assert _open_record(server, RFC_S_AP_RECORD, 1) == Opened(APPLICATION_DATA, RFC_APP_DATA)
    assert _open_record(server, RFC_S_AP_RECORD, 0) is None
    assert _open_record(client, RFC_C_AP_RECORD, 1) is None
    assert _open_record(server, RFC_C_AP_RECORD, 0) is None  # the other direction's key
    assert _open_record(client, RFC_C_AP_RECORD, (1 << 64) - 1) is None
    assert _open_record(client, RFC_C_AP_RECORD, 1 << 64) is None  # out of range: None, not an error
    assert _open_record(client, RFC_C_AP_RECORD, -1) is None


def _seal13(key: bytes, iv: bytes, seq: int, inner: bytes) -> tuple[bytes, bytes]:
    """A TLS 1.3 record sealed with AES-GCM directly (RFC 8446 §5.2-5.3), for padding edge cases."""
    header = bytes([APPLICATION_DATA, 3, 3]) + (len(inner) + 16).to_bytes(2, "big")
    nonce = (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")
    return header, AESGCM(key).encrypt(nonce, inner, header)


@given(
    content=st.binary(max_size=300),
    content_type=st.integers(1, 255),
    padding=st.integers(0, 300),
    seq=st.integers(0, (1 << 64) - 1),
)
def test_tls13_inner_plaintext_padding(content: bytes, content_type: int, padding: int, seq: int) -> None:
    header, body = _seal13(RFC_C_AP_KEY, RFC_C_AP_IV, seq, content + bytes([content_type]) + bytes(padding))
    cipher = RecordCipher(AES128GCM, DirectionKeys(RFC_C_AP_KEY, RFC_C_AP_IV, b""), version=TLS13)
    assert cipher.open(header, body, seq) == Opened(content_type, content)


@pytest.mark.parametrize("zeros", [0, 1, 17])
def test_tls13_all_zero_inner_plaintext_is_rejected(zeros: int) -> None:
    header, body = _seal13(RFC_C_AP_KEY, RFC_C_AP_IV, 5, bytes(zeros))
    cipher = RecordCipher(AES128GCM, DirectionKeys(RFC_C_AP_KEY, RFC_C_AP_IV, b""), version=TLS13)
    assert cipher.open(header, body, 5) is None


# --- the suite table against OpenSSL ------------------------------------------------------------

_OPENSSL_LINE = re.compile(
    r"0x([0-9A-F]{2}),0x([0-9A-F]{2}) - (\S+)\s+- (\S+)\s+\S+\s+Kx=\S+\s+Au=\S+\s+Enc=(\S+)\s+Mac=(\S+)"
)
_TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:" \
    "TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"  # fmt: skip


@pytest.fixture(scope="module")
def openssl_table() -> dict[int, tuple[str, str, str, str]]:
    """code -> (standard name, OpenSSL name, Enc=, Mac=) as ``openssl ciphers -V -stdname`` prints them."""
    out = subprocess.run(
        ["openssl", "ciphers", "-V", "-stdname", "-ciphersuites", _TLS13_SUITES,
         "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    table = {}
    for line in out.splitlines():
        m = _OPENSSL_LINE.search(line)
        assert m, f"unexpected openssl ciphers line: {line!r}"
        table[int(m[1] + m[2], 16)] = (m[3], m[4], m[5], m[6])
    assert len(table) > 100
    return table


def test_suite_table_matches_openssl(openssl_table: dict[int, tuple[str, str, str, str]]) -> None:
    kinds = {"AESGCM": ("gcm", 16), "CHACHA20/POLY1305": ("chacha", 16), "AESCCM": ("ccm", 16),
             "AESCCM8": ("ccm", 8), "AES": ("cbc", 16)}  # fmt: skip
    for code, s in SUITES.items():
        assert code in openssl_table, f"0x{code:04x} {s.name} is unknown to OpenSSL"
        std, _, enc, mac = openssl_table[code]
        assert s.code == code and s.name == std
        m = re.fullmatch(r"(.+)\((\d+)\)", enc)
        assert m, enc
        kind, tag_len = kinds[m[1]]
        assert (s.kind, s.key_len * 8) == (kind, int(m[2])), s.name
        if s.kind != "cbc":
            assert s.tag_len == tag_len and mac == "AEAD" and s.mac is None, s.name
        else:
            assert s.mac == mac.lower(), s.name
        assert s.tls13 == (code >> 8 == 0x13), s.name
        assert s.iv_len == (12 if s.tls13 or s.kind == "chacha" else 16 if s.kind == "cbc" else 4), s.name
        # RFC 5246 §5 / RFC 8446 §B.4: the suites named *_SHA384 use SHA-384, every other one SHA-256
        assert s.prf == ("sha384" if s.name.endswith("SHA384") else "sha256"), s.name
        assert suite(code) is s
        if code in CIPHER_SUITES:
            assert CIPHER_SUITES[code] == s.name  # the hello parser's name table agrees
    assert suite(0x0005) is None and suite(0x000A) is None and suite(0x0000) is None  # RC4, 3DES, NULL
    assert suite(0xFFFF) is None and suite(-1) is None


def test_the_required_suites_are_there() -> None:
    required = [0x1301, 0x1302, 0x1303, 0x1304, 0x1305, 0xC02F, 0xC02B, 0x009E, 0x009C, 0xC030, 0xC02C,
                0x009F, 0x009D, 0xCCA8, 0xCCA9, 0xCCAA, 0xC013, 0xC009, 0x0033, 0x002F, 0xC014, 0xC00A,
                0x0039, 0x0035, 0xC027, 0xC023, 0x0067, 0x003C, 0xC028, 0xC024, 0x006B, 0x003D]  # fmt: skip
    assert all(suite(c) is not None for c in required)


# --- real OpenSSL sessions ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    d = tmp_path_factory.mktemp("crypto-certs")
    return {"rsa": write_cert(d, "rsa"), "ec": write_cert(d, "ec")}


def _code_of(openssl_table: dict[int, tuple[str, str, str, str]], openssl_name: str) -> int:
    return next(code for code, row in openssl_table.items() if openssl_name in (row[0], row[1]))


def _check_plaintext_length(cipher: RecordCipher, header: bytes, body: bytes, opened: Opened) -> bool:
    """`RecordCipher.plaintext_length` agrees with the record that opened, also with everything but
    the last two blocks and the MAC (at most 48 bytes) wiped out as a gap would. False when it said
    None (allowed only for single-block TLS 1.0 CBC records, whose IV is in the record before)."""
    n = cipher.plaintext_length(header, body)
    keep = min(len(body), 2 * 16 + 48)
    damaged = bytes(len(body) - keep) + body[len(body) - keep :]
    assert cipher.plaintext_length(header, damaged) == n
    if n is None:
        return False
    assert n == len(opened.plaintext)
    return True


def _open_direction_tls12(cipher: RecordCipher, stream: bytes) -> list[Opened]:
    """Open every record after the direction's ChangeCipherSpec, numbering them from 0."""
    out: list[Opened] = []
    encrypted = False
    lengths_known = 0
    for header, body in records(stream):
        if header[0] == 20:
            encrypted = True
        elif encrypted:
            opened = cipher.open(header, body, len(out))
            assert opened is not None, f"record {len(out)} did not open"
            out.append(opened)
            lengths_known += _check_plaintext_length(cipher, header, body, opened)
    assert lengths_known >= len(out) // 2
    return out


def _app_data(opened: list[Opened]) -> bytes:
    return b"".join(o.plaintext for o in opened if o.content_type == APPLICATION_DATA)


def _tls12_ciphers(session: Session, s: CipherSuite, version: int, etm: bool) -> list[RecordCipher]:
    client_random, master = session.keylog["CLIENT_RANDOM"]
    assert client_random == hello_random(session.streams[CLIENT])
    keys = tls12_keys(s, master, client_random, hello_random(session.streams[SERVER]), version)
    return [RecordCipher(s, k, version=version, encrypt_then_mac=etm) for k in keys]


# several records each way, one larger than 16 KiB (split by OpenSSL), an empty-ish one
WRITES = [
    (CLIENT, b"GET /one HTTP/1.1\r\nHost: crypto.podshark.test\r\n\r\n"),
    (SERVER, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    (CLIENT, bytes(range(256)) * 160),  # 40960 bytes: 16384 + 16384 + 8192
    (SERVER, b"x"),
    (CLIENT, b"POST /two HTTP/1.1\r\n\r\n"),
    (SERVER, b"\x00" * 20000),
]
VERSIONS = {TLS10: ssl.TLSVersion.TLSv1, TLS11: ssl.TLSVersion.TLSv1_1, TLS12: ssl.TLSVersion.TLSv1_2}

TLS12_CASES = [
    ("ECDHE-RSA-AES128-GCM-SHA256", "rsa", TLS12),
    ("ECDHE-RSA-AES256-GCM-SHA384", "rsa", TLS12),
    ("ECDHE-RSA-CHACHA20-POLY1305", "rsa", TLS12),
    ("ECDHE-RSA-AES128-SHA", "rsa", TLS12),
    ("ECDHE-RSA-AES256-SHA384", "rsa", TLS12),
    ("AES256-SHA256", "rsa", TLS12),
    ("ECDHE-ECDSA-AES128-CCM", "ec", TLS12),
    ("ECDHE-ECDSA-AES256-CCM8", "ec", TLS12),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", "ec", TLS12),
    ("ECDHE-RSA-AES256-SHA", "rsa", TLS11),
    ("ECDHE-RSA-AES128-SHA", "rsa", TLS10),
]


@pytest.mark.parametrize("no_etm", [False, True], ids=["etm-offered", "no-etm"])
@pytest.mark.parametrize(
    ("cipher", "cert", "version"), TLS12_CASES, ids=[c[0] + f"-{c[2]:04x}" for c in TLS12_CASES]
)
def test_openssl_tls12_session(
    cipher: str,
    cert: str,
    version: int,
    no_etm: bool,
    certs: dict[str, tuple[str, str]],
    openssl_table: dict[int, tuple[str, str, str, str]],
    tmp_path: Path,
) -> None:
    session = memory_session(
        *tls_contexts(certs[cert], cipher, VERSIONS[version], no_etm=no_etm), WRITES, tmp_path
    )
    assert session.cipher == cipher
    s = suite(_code_of(openssl_table, cipher))
    assert s is not None
    # RFC 7366: the server echoes encrypt_then_mac only for a CBC suite, and only when it was offered
    etm = EXT_ENCRYPT_THEN_MAC in server_hello_extensions(session.streams[SERVER])
    assert etm == (s.kind == "cbc" and not no_etm)
    for side, cipher_ in enumerate(_tls12_ciphers(session, s, version, etm)):
        opened = _open_direction_tls12(cipher_, session.streams[side])
        finished = opened[0]
        assert finished.content_type == HANDSHAKE and finished.plaintext[:4] == b"\x14\x00\x00\x0c"
        assert _app_data(opened) == session.received[1 - side] == b"".join(d for w, d in WRITES if w == side)
        assert max(len(o.plaintext) for o in opened) == 16384  # the 40960 and 20000 byte writes were split


def _open_direction_tls13(
    s: CipherSuite, stream: bytes, hs_secret: bytes, app_secret: bytes
) -> tuple[list[Opened], int]:
    """Open a TLS 1.3 direction: handshake keys up to its Finished, then application keys, moving to
    the next generation at each KeyUpdate. Returns the records and the number of key updates."""
    cipher = RecordCipher(s, tls13_keys(s, hs_secret), version=TLS13)
    seq, in_handshake, updates, secret = 0, True, 0, app_secret
    pending = bytearray()
    out: list[Opened] = []
    for header, body in records(stream):
        if header[0] != APPLICATION_DATA:
            continue  # the hello, and the compatibility ChangeCipherSpec
        opened = cipher.open(header, body, seq)
        assert opened is not None, f"record {len(out)} (seq {seq}) did not open"
        assert _check_plaintext_length(cipher, header, body, opened)  # OpenSSL adds no TLS 1.3 padding
        out.append(opened)
        seq += 1
        if opened.content_type != HANDSHAKE:
            continue
        pending += opened.plaintext
        for kind in handshake_types(pending):
            if kind == 20 and in_handshake:  # Finished
                in_handshake = False
            elif kind == 24:  # KeyUpdate
                secret = tls13_next_secret(s, secret)
                updates += 1
            else:
                continue
            cipher, seq = RecordCipher(s, tls13_keys(s, secret), version=TLS13), 0
    assert not in_handshake
    return out, updates


def _check_tls13(session: Session, s: CipherSuite, expect_updates: int) -> None:
    labels = [("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"),
              ("SERVER_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0")]  # fmt: skip
    for side, (hs, app) in enumerate(labels):
        assert session.keylog[hs][0] == hello_random(session.streams[CLIENT])
        opened, updates = _open_direction_tls13(
            s, session.streams[side], session.keylog[hs][1], session.keylog[app][1]
        )
        assert _app_data(opened) == session.received[1 - side]
        assert updates == expect_updates


def test_openssl_tls13_default_suite(
    certs: dict[str, tuple[str, str]], openssl_table: dict[int, tuple[str, str, str, str]], tmp_path: Path
) -> None:
    session = memory_session(*tls_contexts(certs["ec"], "", ssl.TLSVersion.TLSv1_3), WRITES, tmp_path)
    assert session.version == "TLSv1.3"
    s = suite(_code_of(openssl_table, session.cipher or ""))
    assert s is not None and s.tls13
    assert session.received[SERVER] == b"".join(d for w, d in WRITES if w == CLIENT)
    _check_tls13(session, s, expect_updates=0)


@pytest.mark.parametrize(
    "ciphersuite",
    ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
     "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"],
)  # fmt: skip
def test_openssl_tls13_key_update(
    ciphersuite: str,
    certs: dict[str, tuple[str, str]],
    openssl_table: dict[int, tuple[str, str, str, str]],
    tmp_path: Path,
) -> None:
    """s_client sends KeyUpdate(update_requested) and s_server answers with its own: both directions
    change keys once, and what each side typed before and after is what decrypts."""
    steps = [
        ("client", b"before the update\n"),
        ("server", b"server before\n"),
        ("client", b"K\n"),
        ("client", b"after the update\n"),
        ("server", b"server after\n"),
    ]
    session = openssl_session(ciphersuite, certs["rsa"], steps, tmp_path)
    s = suite(_code_of(openssl_table, ciphersuite))
    assert s is not None
    _check_tls13(session, s, expect_updates=1)


# --- TLS 1.0 CBC IV chaining across a lost record -----------------------------------------------


@pytest.mark.parametrize("no_etm", [False, True], ids=["etm", "no-etm"])
def test_tls10_cbc_recovers_one_record_after_a_loss(
    no_etm: bool,
    certs: dict[str, tuple[str, str]],
    openssl_table: dict[int, tuple[str, str, str, str]],
    tmp_path: Path,
) -> None:
    messages = [f"message {i} ".encode() * (i + 1) for i in range(8)]
    ctxs = tls_contexts(certs["rsa"], "ECDHE-RSA-AES256-SHA", ssl.TLSVersion.TLSv1, no_etm=no_etm)
    session = memory_session(*ctxs, [(CLIENT, m) for m in messages], tmp_path)
    s = suite(_code_of(openssl_table, "ECDHE-RSA-AES256-SHA"))
    assert s is not None
    etm = EXT_ENCRYPT_THEN_MAC in server_hello_extensions(session.streams[SERVER])
    assert etm == (not no_etm)
    stream = session.streams[CLIENT]
    all_records = records(stream)
    ccs = next(i for i, (hd, _) in enumerate(all_records) if hd[0] == 20)
    encrypted = all_records[ccs + 1 :]  # Finished, then (empty fragment, message) pairs
    assert len(encrypted) >= 10
    lost = 4
    cipher = _tls12_ciphers(session, s, TLS10, etm)[CLIENT]
    results = [cipher.open(hd, body, seq) for seq, (hd, body) in enumerate(encrypted) if seq != lost]
    assert all(r is not None for r in results[:lost])  # Finished and the records before the loss
    assert results[lost] is None  # the record after the lost one: its IV was the lost record's last block
    recovered = results[lost + 1 :]
    assert recovered and all(r is not None for r in recovered)
    tail = b"".join(r.plaintext for r in recovered if r is not None)
    # what opens after the loss is exactly the last few messages the client wrote, whole
    assert any(tail == b"".join(messages[i:]) for i in range(1, len(messages) - 2))


# --- tampering ------------------------------------------------------------------------------------

TAMPER_CASES = [("ECDHE-RSA-AES128-GCM-SHA256", False), ("ECDHE-RSA-CHACHA20-POLY1305", False),
                ("ECDHE-ECDSA-AES128-CCM8", False), ("ECDHE-RSA-AES256-SHA384", False),
                ("ECDHE-RSA-AES256-SHA384", True)]  # fmt: skip


@pytest.mark.parametrize(("cipher", "no_etm"), TAMPER_CASES)
def test_tampered_records_do_not_open(
    cipher: str,
    no_etm: bool,
    certs: dict[str, tuple[str, str]],
    openssl_table: dict[int, tuple[str, str, str, str]],
    tmp_path: Path,
) -> None:
    cert = "ec" if "ECDSA" in cipher else "rsa"
    session = memory_session(
        *tls_contexts(certs[cert], cipher, ssl.TLSVersion.TLSv1_2, no_etm=no_etm), WRITES, tmp_path
    )
    s = suite(_code_of(openssl_table, cipher))
    assert s is not None
    etm = EXT_ENCRYPT_THEN_MAC in server_hello_extensions(session.streams[SERVER])
    client_random, master = session.keylog["CLIENT_RANDOM"]
    keys = tls12_keys(s, master, client_random, hello_random(session.streams[SERVER]))[CLIENT]
    header, body = records(session.streams[CLIENT])[4]  # the first application data record, seq 1
    assert header[0] == APPLICATION_DATA

    def opens(k: DirectionKeys = keys, hd: bytes = header, b: bytes = body, seq: int = 1) -> bool:
        return RecordCipher(s, k, version=TLS12, encrypt_then_mac=etm).open(hd, b, seq) is not None

    assert opens()  # untouched, it does
    for i in (0, 7, 8, 16, len(body) // 2, len(body) - 17, len(body) - 1):
        assert not opens(b=body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]), f"bit flip at {i}"
    for cut in (1, 8, 16, s.tag_len, len(body) - 1, len(body)):
        assert not opens(b=body[:-cut]), f"truncated by {cut}"
    assert not opens(b=body + b"\x00")
    assert not opens(seq=0) and not opens(seq=2) and not opens(seq=1 + (1 << 32))
    assert not opens(hd=bytes([HANDSHAKE]) + header[1:])  # the type is authenticated
    assert not opens(hd=header[:2] + b"\x01" + header[3:])  # and so is the version
    assert not opens(k=DirectionKeys(bytes([keys.key[0] ^ 1]) + keys.key[1:], keys.iv, keys.mac_key))
    if s.kind == "cbc":
        assert not opens(k=DirectionKeys(keys.key, keys.iv, bytes([keys.mac_key[0] ^ 1]) + keys.mac_key[1:]))
    else:
        assert not opens(k=DirectionKeys(keys.key, bytes([keys.iv[0] ^ 1]) + keys.iv[1:], b""))
    assert not opens(hd=header[:4])  # a short header


def test_bad_key_material_is_a_clear_error() -> None:
    gcm, cbc = SUITES[0xC02F], SUITES[0xC013]
    with pytest.raises(ValueError, match=r"TLS 1.3 suite"):
        tls12_keys(AES128GCM, bytes(48), bytes(32), bytes(32))
    with pytest.raises(ValueError, match="48 bytes"):
        tls12_keys(gcm, bytes(47), bytes(32), bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        tls12_keys(gcm, bytes(48), bytes(31), bytes(32))
    with pytest.raises(ValueError, match=r"SSL 3.0"):
        tls12_keys(cbc, bytes(48), bytes(32), bytes(32), version=0x0300)
    with pytest.raises(ValueError, match=r"not a TLS 1.3 suite"):
        tls13_keys(gcm, bytes(32))
    with pytest.raises(ValueError, match="48 bytes"):
        tls13_next_secret(SUITES[0x1302], bytes(32))
    with pytest.raises(ValueError, match="needs a 16-byte key"):
        RecordCipher(gcm, DirectionKeys(bytes(32), bytes(4), b""), version=TLS12)
    with pytest.raises(ValueError, match=r"SSL 3.0"):
        RecordCipher(cbc, DirectionKeys(bytes(16), bytes(16), bytes(20)), version=0x0300)


# --- Hypothesis: any bytes, never an exception ----------------------------------------------------


def _keys_for(s: CipherSuite) -> DirectionKeys:
    return DirectionKeys(
        bytes(range(1, s.key_len + 1)), bytes(range(2, s.iv_len + 2)), bytes(range(3, s.mac_len + 3))
    )


_records = st.lists(
    st.tuples(
        st.one_of(st.binary(min_size=5, max_size=5), st.binary(max_size=8)),
        st.one_of(st.binary(max_size=120), st.binary(min_size=16, max_size=600)),
        st.integers(-2, (1 << 64) + 1),
    ),
    min_size=1,
    max_size=6,
)


@given(
    s=st.sampled_from(sorted(SUITES.values(), key=lambda x: x.code)),
    version=st.sampled_from([TLS10, TLS11, TLS12, TLS13]),
    etm=st.booleans(),
    recs=_records,
)
def test_open_never_raises(
    s: CipherSuite, version: int, etm: bool, recs: list[tuple[bytes, bytes, int]]
) -> None:
    cipher = RecordCipher(s, _keys_for(s), version=version, encrypt_then_mac=etm)
    for header, body, seq in recs:
        result = cipher.open(header, body, seq)
        assert result is None or isinstance(result, Opened)
        n = cipher.plaintext_length(header, body)
        assert n is None or 0 <= n < len(body)


CBC_SUITES = sorted((s for s in SUITES.values() if s.kind == "cbc"), key=lambda x: x.code)


@given(
    s=st.sampled_from(CBC_SUITES),
    version=st.sampled_from([TLS10, TLS11, TLS12]),
    blocks=st.binary(min_size=0, max_size=160),
    seq=st.integers(0, 3),
)
def test_cbc_etm_past_the_mac_never_raises(s: CipherSuite, version: int, blocks: bytes, seq: int) -> None:
    """Encrypt-then-MAC checks the MAC first, so random bodies never reach the padding check; give
    them a correct MAC (computed here from RFC 7366 §3) to fuzz the decryption and padding paths."""
    keys = _keys_for(s)
    header = bytes([APPLICATION_DATA, 3, version & 0xFF])
    mac = hmac.digest(
        keys.mac_key, seq.to_bytes(8, "big") + header + len(blocks).to_bytes(2, "big") + blocks, s.mac or ""
    )
    body = blocks + mac
    cipher = RecordCipher(s, keys, version=version, encrypt_then_mac=True)
    for n in range(seq + 1):  # TLS 1.0: a chain that starts at 0, so record ``seq`` has a trusted IV
        result = cipher.open(header + len(body).to_bytes(2, "big"), body, n)
        assert result is None or result.content_type == APPLICATION_DATA


def _seal_cbc(
    s: CipherSuite, keys: DirectionKeys, seq: int, content: bytes, padding: bytes, etm: bool
) -> bytes:
    """A TLS 1.2 CBC record body built here from RFC 5246 §6.2.3.2 / RFC 7366 §3 with `cryptography`
    directly; ``padding`` is the padding bytes *and* the length byte, so it can be wrong on purpose."""
    header = bytes([APPLICATION_DATA, 3, 3])
    iv = bytes(range(16))
    assert s.mac is not None

    def mac(data: bytes) -> bytes:
        return hmac.digest(
            keys.mac_key, seq.to_bytes(8, "big") + header + len(data).to_bytes(2, "big") + data, s.mac or ""
        )

    plaintext = content + padding if etm else content + mac(content) + padding
    enc = Cipher(algorithms.AES(keys.key), modes.CBC(iv)).encryptor()
    sealed = iv + enc.update(plaintext) + enc.finalize()
    return sealed + mac(sealed) if etm else sealed


@pytest.mark.parametrize("etm", [False, True], ids=["mac-then-encrypt", "encrypt-then-mac"])
def test_cbc_padding_must_be_all_padding_length(etm: bool) -> None:
    s = SUITES[0xC027]  # ECDHE-RSA-AES128-SHA256: 32-byte MAC
    keys = _keys_for(s)
    content = b"GET / HTTP/1.1\r\n\r\n"  # 18 bytes
    inner = len(content) + (0 if etm else s.mac_len)
    pad = (-(inner + 1)) % 16 + 16  # one extra block of padding, as senders may add
    good = bytes([pad]) * (pad + 1)
    bad = bytes([pad ^ 1]) + bytes([pad]) * pad  # the first padding byte disagrees
    cipher = RecordCipher(s, keys, version=TLS12, encrypt_then_mac=etm)
    for seq, padding, expect in ((0, good, Opened(APPLICATION_DATA, content)), (1, bad, None)):
        body = _seal_cbc(s, keys, seq, content, padding, etm)
        assert (
            cipher.open(bytes([APPLICATION_DATA, 3, 3]) + len(body).to_bytes(2, "big"), body, seq) == expect
        )
