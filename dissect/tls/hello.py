"""ClientHello and ServerHello: the plaintext part of a TLS handshake (RFC 5246 §7.4.1, RFC 8446 §4.1).

`parse_client_hello` and `parse_server_hello` take a handshake message *body* (after the 4-byte
handshake header) and return a `ClientHello` / `ServerHello`. They never raise: a message cut short
or malformed keeps what was parsed before the problem and sets ``error`` (the dissector turns it
into the ``parse-error`` flag).

GREASE values (RFC 8701: 0x0A0A, 0x1A1A, … 0xFAFA) are dropped from every list, as JA3 does, so
what is reported is what the peer really offers. Names: `version_name`, `cipher_name`,
`group_name` give the IANA name of the common values and ``0x1301``-style hex for the rest.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

__all__ = [
    "CIPHER_SUITES",
    "HRR_RANDOM",
    "VERSIONS",
    "ClientHello",
    "ServerHello",
    "cipher_name",
    "group_name",
    "is_grease",
    "parse_client_hello",
    "parse_encrypted_extensions_alpn",
    "parse_server_hello",
    "version_name",
]

# Extension types used here (IANA "TLS ExtensionType Values").
EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_EXTENDED_MASTER_SECRET = 23
EXT_SESSION_TICKET = 35
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_SUPPORTED_VERSIONS = 43
EXT_PSK_KEY_EXCHANGE_MODES = 45
EXT_KEY_SHARE = 51

#: ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3): SHA-256("HelloRetryRequest").
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

VERSIONS: dict[int, str] = {
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}

#: IANA names of the cipher suites seen in practice (the full registry has ~350; the rest print as hex).
CIPHER_SUITES: dict[int, str] = {
    0x0000: "TLS_NULL_WITH_NULL_NULL",
    # TLS 1.3
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    # ECDHE
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xC008: "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC012: "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    0xC0AC: "TLS_ECDHE_ECDSA_WITH_AES_128_CCM",
    0xC0AD: "TLS_ECDHE_ECDSA_WITH_AES_256_CCM",
    0xC0AE: "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
    0xC0AF: "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8",
    # DHE
    0x0016: "TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA",
    0x0033: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA",
    0x0039: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA",
    0x0067: "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256",
    0x006B: "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xC09E: "TLS_DHE_RSA_WITH_AES_128_CCM",
    0xC09F: "TLS_DHE_RSA_WITH_AES_256_CCM",
    # RSA key exchange
    0x0004: "TLS_RSA_WITH_RC4_128_MD5",
    0x0005: "TLS_RSA_WITH_RC4_128_SHA",
    0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256",
    0x003D: "TLS_RSA_WITH_AES_256_CBC_SHA256",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0xC09C: "TLS_RSA_WITH_AES_128_CCM",
    0xC09D: "TLS_RSA_WITH_AES_256_CCM",
    # PSK
    0x00A8: "TLS_PSK_WITH_AES_128_GCM_SHA256",
    0x00A9: "TLS_PSK_WITH_AES_256_GCM_SHA384",
    0xCCAB: "TLS_PSK_WITH_CHACHA20_POLY1305_SHA256",
    # signalling values
    0x00FF: "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
    0x5600: "TLS_FALLBACK_SCSV",
}

#: Named groups (key exchange), IANA "TLS Supported Groups".
GROUPS: dict[int, str] = {
    0x0017: "secp256r1",
    0x0018: "secp384r1",
    0x0019: "secp521r1",
    0x001D: "x25519",
    0x001E: "x448",
    0x0100: "ffdhe2048",
    0x0101: "ffdhe3072",
    0x0102: "ffdhe4096",
    0x0103: "ffdhe6144",
    0x0104: "ffdhe8192",
    0x11EC: "X25519MLKEM768",
    0x6399: "X25519Kyber768Draft00",
}


def is_grease(v: int) -> bool:
    """RFC 8701 GREASE values: 0x?A?A with both bytes equal."""
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def version_name(v: int | None) -> str | None:
    if v is None:
        return None
    name = VERSIONS.get(v)
    if name is not None:
        return name
    if v >> 8 == 0x7F:
        return f"TLS 1.3 (draft {v & 0xFF})"
    return f"0x{v:04x}"


def cipher_name(v: int | None) -> str | None:
    if v is None:
        return None
    return CIPHER_SUITES.get(v) or f"0x{v:04x}"


def group_name(v: int | None) -> str | None:
    if v is None:
        return None
    return GROUPS.get(v) or f"0x{v:04x}"


class _Short(Exception):
    """A length field points past the end of its container (internal; never escapes this module)."""


class _Reader:
    """Bounds-checked big-endian reads over a bytes object."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def u8(self) -> int:
        if self.pos + 1 > self.end:
            raise _Short("u8")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            raise _Short("u16")
        v: int = struct.unpack_from("!H", self.buf, self.pos)[0]
        self.pos += 2
        return v

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Short("bytes")
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())

    def sub16(self) -> _Reader:
        """A reader over the next u16-length-prefixed block (and skip past it here)."""
        n = self.u16()
        if self.pos + n > self.end:
            raise _Short("block")
        r = _Reader(self.buf, self.pos, self.pos + n)
        self.pos += n
        return r


def _u16_list(data: bytes) -> list[int]:
    n = len(data) // 2
    return list(struct.unpack_from(f"!{n}H", data)) if n else []


@dataclass(slots=True)
class ClientHello:
    legacy_version: int = 0
    random: bytes = b""
    session_id: bytes = b""
    cipher_suites: list[int] = field(default_factory=list)  # GREASE removed
    compression: bytes = b""
    extensions: list[int] = field(default_factory=list)  # types in order, GREASE removed
    sni: str | None = None
    alpn: list[str] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)  # GREASE removed; empty: not sent
    supported_groups: list[int] = field(default_factory=list)
    ec_point_formats: list[int] = field(default_factory=list)
    key_share_groups: list[int] = field(default_factory=list)
    signature_algorithms: list[int] = field(default_factory=list)
    session_ticket: bytes | None = None  # None: extension absent; b"": asks for a new ticket
    psk: bool = False  # pre_shared_key offered (TLS 1.3 resumption)
    psk_identities: int = 0
    early_data: bool = False
    error: str | None = None  # why parsing stopped early, if it did

    @property
    def offers_tls13(self) -> bool:
        return 0x0304 in self.supported_versions

    @property
    def resumption_offered(self) -> bool:
        """An attempt to resume: a PSK (1.3), a non-empty session ticket, or a session id.

        With TLS 1.3 offered, a non-empty legacy session id is the "middlebox compatibility" random
        id every OpenSSL client sends (RFC 8446 §D.4), not a resumption attempt, so it counts only
        when 1.3 is not offered.
        """
        if self.psk or self.session_ticket:
            return True
        return bool(self.session_id) and not self.offers_tls13

    @property
    def versions(self) -> list[int]:
        """What the client offers: supported_versions, or the legacy version when that is absent."""
        return self.supported_versions or ([self.legacy_version] if self.legacy_version else [])

    def ja3(self) -> str:
        """The JA3 fingerprint string (Salesforce): version,ciphers,extensions,groups,point formats."""
        return ",".join(
            (
                str(self.legacy_version),
                "-".join(map(str, self.cipher_suites)),
                "-".join(map(str, self.extensions)),
                "-".join(map(str, self.supported_groups)),
                "-".join(map(str, self.ec_point_formats)),
            )
        )

    def ja3_hash(self) -> str:
        return hashlib.md5(self.ja3().encode(), usedforsecurity=False).hexdigest()


@dataclass(slots=True)
class ServerHello:
    legacy_version: int = 0
    random: bytes = b""
    session_id: bytes = b""
    cipher_suite: int | None = None
    compression: int | None = None
    extensions: list[int] = field(default_factory=list)
    alpn: str | None = None
    selected_version: int | None = None  # supported_versions in a ServerHello: the real version
    key_share_group: int | None = None
    psk: bool = False  # pre_shared_key accepted (TLS 1.3 resumption)
    session_ticket: bool = False  # the server will send a NewSessionTicket (TLS <= 1.2)
    extended_master_secret: bool = False
    error: str | None = None

    @property
    def version(self) -> int | None:
        """The negotiated version: supported_versions when present (TLS 1.3), else legacy_version."""
        if self.selected_version is not None:
            return self.selected_version
        return self.legacy_version or None

    @property
    def is_hello_retry(self) -> bool:
        return self.random == HRR_RANDOM

    def ja3s(self) -> str:
        return ",".join(
            (
                str(self.legacy_version),
                "" if self.cipher_suite is None else str(self.cipher_suite),
                "-".join(map(str, self.extensions)),
            )
        )


def _decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _client_ext(ch: ClientHello, etype: int, r: _Reader) -> None:
    if etype == EXT_SERVER_NAME:
        if r.left() == 0:
            return
        names = r.sub16()
        while names.left():
            kind = names.u8()
            name = names.vec16()
            if kind == 0 and ch.sni is None:
                ch.sni = _decode_name(name)
    elif etype == EXT_ALPN:
        protos = r.sub16()
        while protos.left():
            ch.alpn.append(_decode_name(protos.vec8()))
    elif etype == EXT_SUPPORTED_VERSIONS:
        ch.supported_versions = [v for v in _u16_list(r.vec8()) if not is_grease(v)]
    elif etype == EXT_SUPPORTED_GROUPS:
        ch.supported_groups = [v for v in _u16_list(r.vec16()) if not is_grease(v)]
    elif etype == EXT_EC_POINT_FORMATS:
        ch.ec_point_formats = list(r.vec8())
    elif etype == EXT_SIGNATURE_ALGORITHMS:
        ch.signature_algorithms = [v for v in _u16_list(r.vec16()) if not is_grease(v)]
    elif etype == EXT_KEY_SHARE:
        shares = r.sub16()
        while shares.left():
            group = shares.u16()
            shares.vec16()
            if not is_grease(group):
                ch.key_share_groups.append(group)
    elif etype == EXT_SESSION_TICKET:
        ch.session_ticket = r.take(r.left())
    elif etype == EXT_PRE_SHARED_KEY:
        ch.psk = True
        ids = r.sub16()
        while ids.left():
            ids.vec16()
            ids.take(4)  # obfuscated_ticket_age
            ch.psk_identities += 1
    elif etype == EXT_EARLY_DATA:
        ch.early_data = True


def parse_client_hello(body: bytes) -> ClientHello:
    """A ClientHello from its handshake body. Never raises; see ``ClientHello.error``."""
    ch = ClientHello()
    r = _Reader(body)
    try:
        ch.legacy_version = r.u16()
        ch.random = r.take(32)
        ch.session_id = r.vec8()
        if len(ch.session_id) > 32:
            ch.error = "session id longer than 32 bytes"
        suites = r.vec16()
        ch.cipher_suites = [v for v in _u16_list(suites) if not is_grease(v)]
        ch.compression = r.vec8()
        if r.left() == 0:
            return ch  # no extensions at all (SSL 3.0 style): valid
        exts = r.sub16()
        while exts.left():
            etype = exts.u16()
            edata = exts.sub16()
            if is_grease(etype):
                continue
            ch.extensions.append(etype)
            try:
                _client_ext(ch, etype, edata)
            except _Short:
                ch.error = f"extension {etype} malformed"
        if r.left():
            ch.error = ch.error or "bytes after the extensions"
    except _Short as e:
        ch.error = f"cut short ({e})"
    return ch


def _server_ext(sh: ServerHello, etype: int, r: _Reader) -> None:
    if etype == EXT_ALPN:
        protos = r.sub16()
        if protos.left():
            sh.alpn = _decode_name(protos.vec8())
    elif etype == EXT_SUPPORTED_VERSIONS:
        sh.selected_version = r.u16()
    elif etype == EXT_KEY_SHARE:
        sh.key_share_group = r.u16()  # ServerHello: group + key; HelloRetryRequest: group only
    elif etype == EXT_PRE_SHARED_KEY:
        sh.psk = True
    elif etype == EXT_SESSION_TICKET:
        sh.session_ticket = True
    elif etype == EXT_EXTENDED_MASTER_SECRET:
        sh.extended_master_secret = True


def parse_server_hello(body: bytes) -> ServerHello:
    """A ServerHello (or HelloRetryRequest) from its handshake body. Never raises."""
    sh = ServerHello()
    r = _Reader(body)
    try:
        sh.legacy_version = r.u16()
        sh.random = r.take(32)
        sh.session_id = r.vec8()
        sh.cipher_suite = r.u16()
        sh.compression = r.u8()
        if r.left() == 0:
            return sh
        exts = r.sub16()
        while exts.left():
            etype = exts.u16()
            edata = exts.sub16()
            sh.extensions.append(etype)
            try:
                _server_ext(sh, etype, edata)
            except _Short:
                sh.error = f"extension {etype} malformed"
        if r.left():
            sh.error = sh.error or "bytes after the extensions"
    except _Short as e:
        sh.error = f"cut short ({e})"
    return sh


def parse_encrypted_extensions_alpn(body: bytes) -> str | None:
    """The ALPN protocol a TLS 1.3 server chose, from its (decrypted) EncryptedExtensions body.

    None when the server chose none or the message is malformed. Never raises.
    """
    r = _Reader(body)
    try:
        exts = r.sub16()
        while exts.left():
            etype = exts.u16()
            edata = exts.sub16()
            if etype == EXT_ALPN:
                protos = edata.sub16()
                return _decode_name(protos.vec8()) if protos.left() else None
    except _Short:
        return None
    return None
