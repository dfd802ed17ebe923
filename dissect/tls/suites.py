"""The cipher suites podshark can decrypt from a key log, with what record protection each needs.

A suite is here only when every part of its record layer is implemented and tested against real
OpenSSL: AES-GCM, AES-CCM (16- and 8-byte tags), ChaCha20-Poly1305, and AES-CBC with an HMAC-SHA1/
SHA256/SHA384 record MAC, for TLS 1.0-1.3. Everything else (RC4, 3DES, NULL, Camellia, ARIA, SEED,
export and PSK-only suites, SSL 3.0) is deliberately absent: `suite` returns None and the session
stays one opaque TLS call, which is the honest answer for traffic we cannot read.

Codes and names are the IANA "TLS Cipher Suites" registry's; the test suite checks each one against
``openssl ciphers -V -stdname`` (code, standard name, cipher, key size, MAC).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = ["HASH_LEN", "SUITES", "CipherSuite", "suite"]

#: Output length in bytes of the hashes the suites use (HMAC keys and TLS 1.3 secrets have this size).
HASH_LEN: Final[dict[str, int]] = {"sha1": 20, "sha256": 32, "sha384": 48}


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """What it takes to derive keys for, and open records of, one negotiated cipher suite."""

    code: int  # IANA value, e.g. 0x1301
    name: str  # IANA name, "TLS_AES_128_GCM_SHA256"
    tls13: bool  # a TLS 1.3 suite (HKDF key schedule, inner content type)
    kind: str  # "gcm" | "chacha" | "ccm" | "cbc"
    key_len: int  # bytes of the encryption key
    iv_len: int  # TLS 1.3 / chacha: 12; TLS 1.2 GCM/CCM: 4 (the implicit salt); CBC: block size 16
    mac: str | None  # CBC suites: "sha1" | "sha256" | "sha384" (the record HMAC); AEAD: None
    prf: str  # "sha256" | "sha384": the TLS 1.2 PRF hash / TLS 1.3 HKDF hash
    tag_len: int = 16  # AEAD authentication tag bytes: 8 for the *_CCM_8 suites, else 16 (CBC: unused)

    @property
    def mac_len(self) -> int:
        """Bytes of the record MAC (and of its key): 0 for AEAD suites."""
        return HASH_LEN[self.mac] if self.mac else 0


def _tls13(code: int, name: str, kind: str, key_len: int, prf: str, tag_len: int = 16) -> CipherSuite:
    return CipherSuite(code, name, True, kind, key_len, 12, None, prf, tag_len)


def _aead(code: int, name: str, kind: str, key_len: int, prf: str, tag_len: int = 16) -> CipherSuite:
    # RFC 5288 (GCM) and RFC 6655 (CCM): a 4-byte implicit salt, 8 explicit nonce bytes per record.
    # RFC 7905 (ChaCha20-Poly1305): a 12-byte IV XORed with the sequence number, nothing explicit.
    return CipherSuite(code, name, False, kind, key_len, 12 if kind == "chacha" else 4, None, prf, tag_len)


def _cbc(code: int, name: str, key_len: int, mac: str) -> CipherSuite:
    # TLS 1.2 PRF: SHA-384 for the *_SHA384 suites, SHA-256 for every other one (RFC 5246 §5, RFC 5289).
    return CipherSuite(code, name, False, "cbc", key_len, 16, mac, "sha384" if mac == "sha384" else "sha256")


_TABLE: tuple[CipherSuite, ...] = (
    # TLS 1.3 (RFC 8446 §B.4)
    _tls13(0x1301, "TLS_AES_128_GCM_SHA256", "gcm", 16, "sha256"),
    _tls13(0x1302, "TLS_AES_256_GCM_SHA384", "gcm", 32, "sha384"),
    _tls13(0x1303, "TLS_CHACHA20_POLY1305_SHA256", "chacha", 32, "sha256"),
    _tls13(0x1304, "TLS_AES_128_CCM_SHA256", "ccm", 16, "sha256"),
    _tls13(0x1305, "TLS_AES_128_CCM_8_SHA256", "ccm", 16, "sha256", tag_len=8),
    # TLS 1.2 AES-GCM (RFC 5288, RFC 5289)
    _aead(0x009C, "TLS_RSA_WITH_AES_128_GCM_SHA256", "gcm", 16, "sha256"),
    _aead(0x009D, "TLS_RSA_WITH_AES_256_GCM_SHA384", "gcm", 32, "sha384"),
    _aead(0x009E, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", "gcm", 16, "sha256"),
    _aead(0x009F, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", "gcm", 32, "sha384"),
    _aead(0x00A2, "TLS_DHE_DSS_WITH_AES_128_GCM_SHA256", "gcm", 16, "sha256"),
    _aead(0x00A3, "TLS_DHE_DSS_WITH_AES_256_GCM_SHA384", "gcm", 32, "sha384"),
    _aead(0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "gcm", 16, "sha256"),
    _aead(0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "gcm", 32, "sha384"),
    _aead(0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "gcm", 16, "sha256"),
    _aead(0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "gcm", 32, "sha384"),
    # TLS 1.2 ChaCha20-Poly1305 (RFC 7905)
    _aead(0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "chacha", 32, "sha256"),
    _aead(0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "chacha", 32, "sha256"),
    _aead(0xCCAA, "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "chacha", 32, "sha256"),
    # TLS 1.2 AES-CCM (RFC 6655, RFC 7251)
    _aead(0xC09C, "TLS_RSA_WITH_AES_128_CCM", "ccm", 16, "sha256"),
    _aead(0xC09D, "TLS_RSA_WITH_AES_256_CCM", "ccm", 32, "sha256"),
    _aead(0xC09E, "TLS_DHE_RSA_WITH_AES_128_CCM", "ccm", 16, "sha256"),
    _aead(0xC09F, "TLS_DHE_RSA_WITH_AES_256_CCM", "ccm", 32, "sha256"),
    _aead(0xC0A0, "TLS_RSA_WITH_AES_128_CCM_8", "ccm", 16, "sha256", tag_len=8),
    _aead(0xC0A1, "TLS_RSA_WITH_AES_256_CCM_8", "ccm", 32, "sha256", tag_len=8),
    _aead(0xC0A2, "TLS_DHE_RSA_WITH_AES_128_CCM_8", "ccm", 16, "sha256", tag_len=8),
    _aead(0xC0A3, "TLS_DHE_RSA_WITH_AES_256_CCM_8", "ccm", 32, "sha256", tag_len=8),
    _aead(0xC0AC, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM", "ccm", 16, "sha256"),
    _aead(0xC0AD, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM", "ccm", 32, "sha256"),
    _aead(0xC0AE, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8", "ccm", 16, "sha256", tag_len=8),
    _aead(0xC0AF, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8", "ccm", 32, "sha256", tag_len=8),
    # AES-CBC with HMAC-SHA1 (RFC 3268, RFC 4492): usable from TLS 1.0 on
    _cbc(0x002F, "TLS_RSA_WITH_AES_128_CBC_SHA", 16, "sha1"),
    _cbc(0x0032, "TLS_DHE_DSS_WITH_AES_128_CBC_SHA", 16, "sha1"),
    _cbc(0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA", 16, "sha1"),
    _cbc(0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA", 32, "sha1"),
    _cbc(0x0038, "TLS_DHE_DSS_WITH_AES_256_CBC_SHA", 32, "sha1"),
    _cbc(0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA", 32, "sha1"),
    _cbc(0xC009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", 16, "sha1"),
    _cbc(0xC00A, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", 32, "sha1"),
    _cbc(0xC013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 16, "sha1"),
    _cbc(0xC014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", 32, "sha1"),
    # AES-CBC with HMAC-SHA256/384 (RFC 5246, RFC 5289): TLS 1.2 only
    _cbc(0x003C, "TLS_RSA_WITH_AES_128_CBC_SHA256", 16, "sha256"),
    _cbc(0x003D, "TLS_RSA_WITH_AES_256_CBC_SHA256", 32, "sha256"),
    _cbc(0x0040, "TLS_DHE_DSS_WITH_AES_128_CBC_SHA256", 16, "sha256"),
    _cbc(0x0067, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", 16, "sha256"),
    _cbc(0x006A, "TLS_DHE_DSS_WITH_AES_256_CBC_SHA256", 32, "sha256"),
    _cbc(0x006B, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256", 32, "sha256"),
    _cbc(0xC023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", 16, "sha256"),
    _cbc(0xC024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", 32, "sha384"),
    _cbc(0xC027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", 16, "sha256"),
    _cbc(0xC028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", 32, "sha384"),
)

#: Every decryptable suite by IANA code (read-only).
SUITES: Final = MappingProxyType({s.code: s for s in _TABLE})


def suite(code: int) -> CipherSuite | None:
    """The suite, or None when podshark cannot decrypt it (then the session stays opaque)."""
    return SUITES.get(code)
