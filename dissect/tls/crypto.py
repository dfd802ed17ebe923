"""TLS record decryption from key-log secrets: key derivation and record opening, sans-IO.

The TLS dissector finds the session's randoms, suite and version in the handshake and the secrets
in an NSS key log; this module turns those into per-direction keys and opens records with them:

- `tls12_keys`: TLS 1.0-1.2 key block from the master secret (``CLIENT_RANDOM`` lines);
- `tls13_keys` / `tls13_next_secret`: TLS 1.3 traffic keys from a ``*_TRAFFIC_SECRET_*`` line and
  the KeyUpdate ratchet;
- `RecordCipher`: one direction's record protection. `RecordCipher.open` authenticates and
  decrypts one record, or says None: a wrong key, a damaged or truncated record and bytes that are
  not a record of this suite all look the same to an observer, and none of them may raise.
  `RecordCipher.plaintext_length` says how much plaintext a record held when a capture gap keeps
  it from opening, so the loss can be accounted in plaintext bytes.

Nothing here does I/O or keeps more than one record's worth of bytes. The primitives are the
`cryptography` package's (OpenSSL underneath); HMAC and HKDF-Expand use the standard library's
`hmac`, which is the same OpenSSL, for small inputs without object overhead.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from dissect.tls.suites import HASH_LEN, SUITES, CipherSuite, suite

__all__ = [
    "SUITES",
    "CipherSuite",
    "DirectionKeys",
    "Opened",
    "RecordCipher",
    "suite",
    "tls12_keys",
    "tls13_keys",
    "tls13_next_secret",
]

TLS10, TLS11, TLS12, TLS13 = 0x0301, 0x0302, 0x0303, 0x0304
_BLOCK: Final = 16  # the AES block size
_SEQ_LIMIT: Final = 1 << 64
_MASTER_SECRET_LEN: Final = 48
_RANDOM_LEN: Final = 32


@dataclass(frozen=True, slots=True)
class DirectionKeys:
    """One direction's write keys, as the sender holds them."""

    key: bytes
    iv: bytes  # per the suite's iv_len (CBC: unused for TLS>=1.1, the TLS 1.0 initial IV)
    mac_key: bytes  # CBC only, b"" otherwise


@dataclass(frozen=True, slots=True)
class Opened:
    """A record that authenticated: its real content type and its plaintext."""

    content_type: int  # the real content type (TLS 1.3: the inner type after stripping zero padding)
    plaintext: bytes


# --- key derivation ------------------------------------------------------------------------------


def _p_hash(hash_name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """P_hash of RFC 5246 §5: HMAC(secret, A(i) + seed) for A(i) = HMAC(secret, A(i-1)), A(0) = seed."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    return bytes(out[:length])


def _prf(version: int, prf_hash: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS PRF. TLS 1.2: P_<suite hash>. TLS 1.0/1.1 (RFC 2246 §5): P_MD5 over the first half of
    the secret XOR P_SHA1 over the second half (the halves share a byte when the length is odd)."""
    if version >= TLS12:
        return _p_hash(prf_hash, secret, label + seed, length)
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], label + seed, length)
    sha1 = _p_hash("sha1", secret[len(secret) - half :], label + seed, length)
    return bytes(x ^ y for x, y in zip(md5, sha1, strict=True))


def tls12_keys(
    s: CipherSuite, master_secret: bytes, client_random: bytes, server_random: bytes, version: int = TLS12
) -> tuple[DirectionKeys, DirectionKeys]:
    """(client write, server write) from the key block: PRF(master, "key expansion", server_random +
    client_random). TLS 1.2 PRF = P_<prf hash>; TLS 1.0/1.1 (version 0x0301/0x0302) = MD5/SHA-1 PRF.

    The key block is laid out as RFC 5246 §6.3 says: both MAC keys, both encryption keys, both IVs
    (CBC suites get IVs too: TLS 1.0 uses them, later versions ignore them, and as they come last
    deriving them changes nothing else). Raises ValueError for a TLS 1.3 suite, for SSL 3.0 (its
    key derivation and MAC differ and are not implemented), or for secrets and randoms of the wrong
    size — the key log line or the handshake parse is then wrong, not the traffic.
    """
    if s.tls13:
        raise ValueError(f"{s.name} is a TLS 1.3 suite: derive its keys with tls13_keys")
    if version < TLS10 or version > TLS12:
        raise ValueError(
            f"cannot derive TLS 1.0-1.2 keys for version 0x{version:04x} (SSL 3.0 is unsupported)"
        )
    if len(master_secret) != _MASTER_SECRET_LEN:
        raise ValueError(f"a master secret is 48 bytes, got {len(master_secret)}: check the key log line")
    if len(client_random) != _RANDOM_LEN or len(server_random) != _RANDOM_LEN:
        raise ValueError(
            f"hello randoms are 32 bytes, got {len(client_random)} and {len(server_random)}: "
            "take them from the ClientHello and ServerHello bodies"
        )
    m, k, i = s.mac_len, s.key_len, s.iv_len
    block = _prf(
        version, s.prf, master_secret, b"key expansion", server_random + client_random, 2 * (m + k + i)
    )
    cmac, smac = block[:m], block[m : 2 * m]
    ckey, skey = block[2 * m : 2 * m + k], block[2 * m + k : 2 * (m + k)]
    civ, siv = block[2 * (m + k) : 2 * (m + k) + i], block[2 * (m + k) + i :]
    return DirectionKeys(ckey, civ, cmac), DirectionKeys(skey, siv, smac)


def _hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label(secret, label, "", length) of RFC 8446 §7.1 (HKDF-Expand of RFC 5869 §2.3)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"  # empty context
    out = bytearray()
    t = b""
    counter = 1
    while len(out) < length:
        t = hmac.digest(secret, t + info + bytes([counter]), hash_name)
        out += t
        counter += 1
    return bytes(out[:length])


def _check_tls13(s: CipherSuite, secret: bytes) -> None:
    if not s.tls13:
        raise ValueError(f"{s.name} is not a TLS 1.3 suite: derive its keys with tls12_keys")
    if len(secret) != HASH_LEN[s.prf]:
        raise ValueError(
            f"{s.name} traffic secrets are {HASH_LEN[s.prf]} bytes, got {len(secret)}: "
            "the key log line belongs to another session or suite"
        )


def tls13_keys(s: CipherSuite, traffic_secret: bytes) -> DirectionKeys:
    """key = HKDF-Expand-Label(secret, "key", "", key_len), iv = HKDF-Expand-Label(secret, "iv", "", 12).

    Raises ValueError for a TLS 1.2 suite or a secret that is not the suite's hash length."""
    _check_tls13(s, traffic_secret)
    return DirectionKeys(
        _hkdf_expand_label(s.prf, traffic_secret, b"key", s.key_len),
        _hkdf_expand_label(s.prf, traffic_secret, b"iv", s.iv_len),
        b"",
    )


def tls13_next_secret(s: CipherSuite, secret: bytes) -> bytes:
    """KeyUpdate: HKDF-Expand-Label(secret, "traffic upd", "", hash_len) (RFC 8446 §7.2).

    The records after a KeyUpdate message use keys from this secret, with the sequence number
    starting again at 0. Raises ValueError like `tls13_keys`."""
    _check_tls13(s, secret)
    return _hkdf_expand_label(s.prf, secret, b"traffic upd", HASH_LEN[s.prf])


# --- record protection ---------------------------------------------------------------------------


class RecordCipher:
    """One direction's record protection (stateful only where the protocol is: TLS 1.0 CBC IV chaining).

    ``version`` is the negotiated version (0x0301-0x0304; TLS 1.3 suites ignore it). It decides the
    CBC IV: TLS 1.1 and later send an explicit IV as each record's first block; TLS 1.0 chains it,
    each record's IV being the last ciphertext block of the record before (the first record's is
    ``keys.iv``). So a TLS 1.0 CBC direction depends on seeing every record: when a record is lost
    (the caller skips its sequence number) or its body is not whole blocks, the next record's IV is
    unknown and `open` returns None for that record — its first block would be garbage, and with
    encrypt-then-MAC nothing else would catch that — but its last block re-seeds the chain, so
    from the record after it decryption resumes. If the caller does not know a record was lost
    and passes a stale sequence number, every later MAC fails: the sequence number is the
    caller's to keep right in every version.

    ``encrypt_then_mac`` is whether the ServerHello carried the encrypt_then_mac extension (22,
    RFC 7366); it only matters for CBC suites, and OpenSSL negotiates it by default.

    Raises ValueError at construction when the keys do not fit the suite, or for SSL 3.0.
    """

    __slots__ = (
        "_aead",
        "_chain_iv",
        "_chain_seq",
        "_etm",
        "_iv",
        "_key",
        "_mac_hash",
        "_mac_key",
        "_suite",
        "_tls10_cbc",
    )

    def __init__(
        self, s: CipherSuite, keys: DirectionKeys, *, version: int, encrypt_then_mac: bool = False
    ) -> None:
        if len(keys.key) != s.key_len or len(keys.iv) != s.iv_len or len(keys.mac_key) != s.mac_len:
            raise ValueError(
                f"{s.name} needs a {s.key_len}-byte key, {s.iv_len}-byte IV and {s.mac_len}-byte MAC key; "
                f"got {len(keys.key)}, {len(keys.iv)} and {len(keys.mac_key)}"
            )
        if not s.tls13 and version < TLS10:
            raise ValueError(f"version 0x{version:04x} (SSL 3.0 or older) records cannot be decrypted")
        self._suite = s
        self._etm = encrypt_then_mac and s.kind == "cbc"
        self._iv = keys.iv
        self._mac_key = keys.mac_key
        self._mac_hash = s.mac or ""
        self._aead: AESGCM | AESCCM | ChaCha20Poly1305 | None = None
        if s.kind == "gcm":
            self._aead = AESGCM(keys.key)
        elif s.kind == "ccm":
            self._aead = AESCCM(keys.key, tag_length=s.tag_len)
        elif s.kind == "chacha":
            self._aead = ChaCha20Poly1305(keys.key)
        self._key = keys.key
        self._tls10_cbc = s.kind == "cbc" and version == TLS10
        self._chain_iv: bytes | None = keys.iv  # TLS 1.0 CBC: the IV of record ``_chain_seq``
        self._chain_seq = 0

    def open(self, header: bytes, body: bytes, seq: int) -> Opened | None:
        """Decrypt and authenticate one record. ``header`` is the 5-byte record header as on the wire,
        ``body`` its payload, ``seq`` the 64-bit record sequence number of this direction.
        None when authentication fails or the body cannot be this suite's record (too short, bad
        padding, TLS 1.3 all-zero inner plaintext…). Never raises on any bytes (Hypothesis-test that)."""
        if len(header) != 5 or not 0 <= seq < _SEQ_LIMIT:
            return None
        s = self._suite
        if s.tls13:
            return self._open_tls13(header, body, seq)
        if s.kind == "cbc":
            return self._open_cbc(header, body, seq)
        return self._open_tls12_aead(header, body, seq)

    def plaintext_length(self, header: bytes, body: bytes) -> int | None:
        """How many plaintext bytes the record carries, without authenticating it; None when the body
        cannot be one of this suite's records. For accounting what a capture gap destroyed.

        AEAD: the body less the explicit nonce, the tag and (TLS 1.3) the content type byte — TLS 1.3
        padding, which the common stacks do not add, would make it too high. CBC: the padding length
        sits in the last block, decrypted here with the block before it (or the explicit IV) as its
        IV, so only the last two blocks (and, encrypt-then-MAC, the MAC's length) must be intact; a
        TLS 1.0 record of a single block has its IV in the previous record, and gives None. Never
        raises, and leaves the TLS 1.0 IV chain alone: only `open` moves it."""
        s = self._suite
        if s.tls13:
            n = len(body) - s.tag_len - 1
        elif s.kind == "chacha":
            n = len(body) - s.tag_len
        elif s.kind != "cbc":
            n = len(body) - 8 - s.tag_len
        else:
            mac_len = s.mac_len
            sealed = body[: max(len(body) - mac_len, 0)] if self._etm else body
            ct_len = len(sealed) if self._tls10_cbc else len(sealed) - _BLOCK
            if len(sealed) < 2 * _BLOCK or len(sealed) % _BLOCK or ct_len < _BLOCK:
                return None
            dec = Cipher(algorithms.AES(self._key), modes.CBC(sealed[-2 * _BLOCK : -_BLOCK])).decryptor()
            pad = (dec.update(sealed[-_BLOCK:]) + dec.finalize())[-1]
            n = ct_len - pad - 1 - (0 if self._etm else mac_len)
        return n if n >= 0 else None

    def _xor_nonce(self, seq: int) -> bytes:
        """RFC 8446 §5.3 / RFC 7905: the 12-byte IV XOR the sequence number, left-padded."""
        return (int.from_bytes(self._iv, "big") ^ seq).to_bytes(12, "big")

    def _decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes | None:
        assert self._aead is not None
        try:
            return self._aead.decrypt(nonce, data, aad)
        except InvalidTag:
            return None

    def _open_tls13(self, header: bytes, body: bytes, seq: int) -> Opened | None:
        # TLSInnerPlaintext = content || type || zeros; the AAD is the record header (RFC 8446 §5.2).
        if len(body) < self._suite.tag_len + 1:
            return None
        inner = self._decrypt(self._xor_nonce(seq), body, header)
        if inner is None:
            return None
        inner = inner.rstrip(b"\x00")
        if not inner:
            return None  # all padding, no content type: the peer must treat it as unexpected_message
        return Opened(inner[-1], inner[:-1])

    def _open_tls12_aead(self, header: bytes, body: bytes, seq: int) -> Opened | None:
        s = self._suite
        if s.kind == "chacha":
            explicit, nonce = 0, self._xor_nonce(seq)
        else:  # GCM / CCM: salt || the 8 explicit nonce bytes that open the body
            explicit = 8
            if len(body) < explicit:
                return None
            nonce = self._iv + body[:explicit]
        n = len(body) - explicit - s.tag_len
        if n < 0:
            return None
        aad = seq.to_bytes(8, "big") + header[:3] + n.to_bytes(2, "big")
        plaintext = self._decrypt(nonce, body[explicit:], aad)
        if plaintext is None:
            return None
        return Opened(header[0], plaintext)

    def _open_cbc(self, header: bytes, body: bytes, seq: int) -> Opened | None:
        mac_len = self._suite.mac_len
        # What was encrypted (and, with an explicit IV, the IV before it); encrypt-then-MAC puts the
        # MAC after it, MAC-then-encrypt inside it.
        sealed = body[: max(len(body) - mac_len, 0)] if self._etm else body
        if self._tls10_cbc:
            iv = self._chain_iv if seq == self._chain_seq else None
            ct = sealed
            # Whatever becomes of this record, the next one's IV is its last ciphertext block.
            whole = len(ct) >= _BLOCK and len(ct) % _BLOCK == 0
            self._chain_iv = ct[-_BLOCK:] if whole else None
            self._chain_seq = seq + 1
            if iv is None:
                return None
        else:
            iv, ct = sealed[:_BLOCK], sealed[_BLOCK:]
        if len(iv) != _BLOCK or not ct or len(ct) % _BLOCK:
            return None
        if self._etm:
            if len(body) < len(sealed) + mac_len:
                return None
            # RFC 7366 §3: MAC(seq + type + version + length(IV + ciphertext) + IV + ciphertext).
            mac = hmac.digest(
                self._mac_key, self._mac_prefix(header, seq, len(sealed)) + sealed, self._mac_hash
            )
            if not hmac.compare_digest(mac, body[len(sealed) :]):
                return None
        elif len(ct) < mac_len + 1:
            return None  # no room for the MAC and the padding length byte
        dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
        pt = dec.update(ct) + dec.finalize()
        pad = pt[-1]
        inner_mac = 0 if self._etm else mac_len
        end = len(pt) - pad - 1  # where the padding starts
        if end < inner_mac or pt[end:] != bytes([pad]) * (pad + 1):
            return None
        content_end = end - inner_mac
        content = pt[:content_end]
        if not self._etm:
            # RFC 5246 §6.2.3.1: MAC(seq + type + version + length + content), inside the encryption.
            mac = hmac.digest(
                self._mac_key, self._mac_prefix(header, seq, content_end) + content, self._mac_hash
            )
            if not hmac.compare_digest(mac, pt[content_end:end]):
                return None
        return Opened(header[0], content)

    @staticmethod
    def _mac_prefix(header: bytes, seq: int, length: int) -> bytes:
        """seq_num(8) + type(1) + version(2) + length(2): what the record MAC covers before the data."""
        return seq.to_bytes(8, "big") + header[:3] + length.to_bytes(2, "big")
