"""Decrypting one TLS connection's records with secrets from a key log: the key schedule as a table.

`Decrypter` gets each protected record of a direction whole (`dissect.tls.records` collects them
once the dissector found the session's secrets) and hands what is inside to a `PlainSink`: the
application data (fed to the HTTP dissectors), alerts, and the handshake messages that travel
encrypted (TLS 1.3 EncryptedExtensions — where the ALPN choice is —, Finished, KeyUpdate).

Which keys protect the next record of a direction is a small state machine per direction:

=========  =====================  ======================================  =================
version    state                  on                                      next state
=========  =====================  ======================================  =================
1.2        application            (keys from CLIENT_RANDOM's master)      —
1.3        handshake              own Finished decrypted                  application (gen 0)
1.3        application (gen n)    own KeyUpdate decrypted                 application (n + 1)
=========  =====================  ======================================  =================

TLS 1.2 records start at sequence number 0 after the direction's ChangeCipherSpec; TLS 1.3 restarts
at 0 with each new key. The AEAD tag (or the CBC MAC) tells a right guess from a wrong one, which is
how losses are survived: when records were lost (a gap in the capture), the sequence number is
searched in a window ahead (`SEARCH`), and a lost Finished or KeyUpdate is found by trying the next
generation's keys. A direction whose records keep failing (`GIVE_UP` in a row before any succeeded,
or after the search) is given up: the key log does not belong to this session, or the capture lost
too much. Everything that cannot be decrypted reaches the sink as a gap of about the plaintext size,
so the HTTP dissector flags the call instead of misparsing it.
"""

from __future__ import annotations

from typing import Protocol

from dissect.tls.crypto import (
    CipherSuite,
    Opened,
    RecordCipher,
    suite,
    tls12_keys,
    tls13_keys,
    tls13_next_secret,
)
from dissect.tls.hello import cipher_name

__all__ = ["Decrypter", "PlainSink", "prepare"]

ALERT, HANDSHAKE, APPLICATION_DATA = 21, 22, 23
FINISHED, KEY_UPDATE = 20, 24
TLS13 = 0x0304
SEARCH = 64  # sequence numbers tried ahead after a loss
GIVE_UP = 8  # consecutive failures after which a direction is given up
MAX_HS_KEPT = 4096  # decrypted handshake message bodies kept (EncryptedExtensions, KeyUpdate, Finished)
MAX_HS_MESSAGE = 1 << 24  # a handshake length field larger than this is garbage
KEPT_TYPES = (8, FINISHED, KEY_UPDATE)  # encrypted_extensions, finished, key_update

HANDSHAKE_SECRETS = ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET")
TRAFFIC_SECRETS = ("CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0")


class PlainSink(Protocol):
    """Where a decrypted connection's contents go (the TLS dissector). ``d`` is the direction."""

    def plain_data(self, d: int, data: bytes, ts: int) -> None:
        """Application data, in order."""

    def plain_gap(self, d: int, n: int, ts: int) -> None:
        """About ``n`` bytes of application data could not be decrypted (lost, or failed)."""

    def plain_alert(self, d: int, level: int, description: int) -> None:
        """An alert, now readable."""

    def plain_handshake(self, d: int, msg_type: int, body: bytes | None) -> None:
        """A handshake message that travelled encrypted (``body`` kept for `KEPT_TYPES` only)."""


class _Direction:
    """One direction's keys and position."""

    __slots__ = (
        "cipher",
        "failures",
        "gen",
        "given_up",
        "hs_body",
        "hs_hdr",
        "hs_len",
        "hs_skip",
        "hs_type",
        "lost_bytes",
        "next_secret",
        "opened",
        "secret",
        "seq",
        "seq_known",
        "skipped",
    )

    def __init__(self, cipher: RecordCipher | None, secret: bytes | None, next_secret: bytes | None) -> None:
        self.cipher = cipher  # None: no keys for this state (only the next state's can help)
        self.secret = secret  # TLS 1.3: the current traffic secret (for KeyUpdate)
        self.next_secret = next_secret  # TLS 1.3 handshake state: the application secret (gen 0)
        self.gen = -1 if next_secret is not None or cipher is None else 0  # -1: handshake keys
        self.seq = 0
        self.seq_known = True
        self.failures = 0  # consecutive records that did not decrypt
        self.opened = 0  # records decrypted
        self.given_up = False
        self.lost_bytes = -1  # after lost boundaries: record bytes lost so far (-1: none pending)
        self.skipped = 0  # sequence numbers the last search skipped (records lost)
        # decrypted handshake message reassembly (messages may span records)
        self.hs_hdr = bytearray()
        self.hs_type = -1
        self.hs_len = 0
        self.hs_skip = 0  # bytes of a message not kept still to come
        self.hs_body = bytearray()


def prepare(
    secrets: dict[str, bytes],
    cipher_suite: int | None,
    version: int | None,
    client_random: bytes,
    server_random: bytes,
    encrypt_then_mac: bool,
) -> tuple[CipherSuite, list[tuple[RecordCipher | None, bytes | None, bytes | None]]] | str:
    """The suite and, per role (client, server), (first cipher, its secret, next secret) — or why
    this session cannot be decrypted (one line, for ``info``)."""
    try:
        return _prepare(secrets, cipher_suite, version, client_random, server_random, encrypt_then_mac)
    except ValueError as e:  # key material that does not fit the suite (a key log for another session)
        return f"the key log's secrets do not fit this session ({e})"


def _prepare(
    secrets: dict[str, bytes],
    cipher_suite: int | None,
    version: int | None,
    client_random: bytes,
    server_random: bytes,
    encrypt_then_mac: bool,
) -> tuple[CipherSuite, list[tuple[RecordCipher | None, bytes | None, bytes | None]]] | str:
    if version is None or cipher_suite is None:
        return "the ServerHello was not seen"
    s = suite(cipher_suite)
    if s is None:
        return f"cipher suite {cipher_name(cipher_suite)} is not supported for decryption"
    if version == TLS13:
        if not s.tls13:
            return f"cipher suite {s.name} is not a TLS 1.3 suite"
        roles: list[tuple[RecordCipher | None, bytes | None, bytes | None]] = []
        for hs_label, app_label in zip(HANDSHAKE_SECRETS, TRAFFIC_SECRETS, strict=True):
            hs, app = secrets.get(hs_label), secrets.get(app_label)
            if hs is None and app is None:
                return f"the key log has no {hs_label} or {app_label} for this session"
            if hs is not None:
                roles.append((RecordCipher(s, tls13_keys(s, hs), version=version), hs, app))
            else:  # only the application secret: handshake records will not open, the rest will
                roles.append((None, None, app))
        return s, roles
    if s.tls13:
        return f"cipher suite {s.name} is a TLS 1.3 suite in a TLS 1.2 session"
    master = secrets.get("CLIENT_RANDOM")
    if master is None:
        return "the key log has no CLIENT_RANDOM line for this session"
    ck, sk = tls12_keys(s, master, client_random, server_random, version)
    return s, [
        (RecordCipher(s, ck, version=version, encrypt_then_mac=encrypt_then_mac), None, None),
        (RecordCipher(s, sk, version=version, encrypt_then_mac=encrypt_then_mac), None, None),
    ]


class Decrypter:
    """Both directions of one session (see the module docstring). Never raises on record bytes."""

    __slots__ = ("dirs", "failed_records", "opened_records", "sink", "suite", "tls13")

    def __init__(
        self,
        s: CipherSuite,
        roles: list[tuple[RecordCipher | None, bytes | None, bytes | None]],
        client_dir: int,
        sink: PlainSink,
    ) -> None:
        self.suite = s
        self.tls13 = s.tls13
        self.sink = sink
        by_role = [_Direction(*roles[0]), _Direction(*roles[1])]
        self.dirs = (by_role[0], by_role[1]) if client_dir == 0 else (by_role[1], by_role[0])
        self.opened_records = 0
        self.failed_records = 0

    # ------------------------------------------------------------------ input from the record layer
    def record(self, d: int, header: bytes, body: bytes, ts: int) -> None:
        st = self.dirs[d]
        ctype = header[0]
        if self.tls13 and ctype != APPLICATION_DATA:
            # after the ServerHello only application_data records are protected; a 2-byte alert
            # record is a plaintext alert (sent before the keys were in place)
            if ctype == ALERT and len(body) == 2:
                self.sink.plain_alert(d, body[0], body[1])
            return
        if st.given_up:
            self._lost_plaintext(d, len(body), ts)
            return
        opened = self._open(st, header, body)
        if opened is None:
            self.failed_records += 1
            st.failures += 1
            if st.seq_known:
                st.seq += 1  # the sender used a sequence number on it all the same
            if st.failures >= GIVE_UP and (st.opened == 0 or st.failures >= 4 * GIVE_UP):
                st.given_up = True
            self._lost_plaintext(d, len(body), ts)
            return
        self.opened_records += 1
        st.opened += 1
        st.failures = 0
        if st.lost_bytes >= 0 and st.skipped >= 0:
            # k records were lost: their bytes less k headers and k times the protection overhead
            k = st.skipped
            n = max(st.lost_bytes - k * (5 + self._overhead()), 0)
            st.lost_bytes = -1
            if n:
                self.sink.plain_gap(d, n, ts)
        ctype, plain = opened.content_type, opened.plaintext
        if ctype == APPLICATION_DATA:
            if plain:
                self.sink.plain_data(d, plain, ts)
        elif ctype == HANDSHAKE:
            self._handshake(d, st, plain)
        elif ctype == ALERT and len(plain) >= 2:
            self.sink.plain_alert(d, plain[0], plain[1])

    def record_lost(self, d: int, header: bytes, body: bytes, ts: int) -> None:
        """A record a gap hit (``body`` with zeros for the lost bytes): one sequence number used,
        its plaintext lost — reported with its exact length where the suite allows (`_plain_len`)."""
        st = self.dirs[d]
        n = self._plain_len(st, header, body)
        if st.seq_known:
            st.seq += 1
        self._hs_lost(st)
        if n:
            self.sink.plain_gap(d, n, ts)

    def stream_lost(self, d: int, seen: int) -> None:
        """Boundaries lost ``seen`` bytes into a record: an unknown number of records will be
        missing, found by the sequence number search on the next record that opens."""
        st = self.dirs[d]
        st.seq_known = False
        st.lost_bytes = max(seen, 0)
        self._hs_lost(st)

    def resynced(self, d: int, lost: int) -> None:
        """The record layer found a boundary again, ``lost`` bytes after the loss point."""
        st = self.dirs[d]
        if st.lost_bytes >= 0:
            st.lost_bytes += max(lost, 0)

    # ------------------------------------------------------------------ state
    @property
    def given_up(self) -> bool:
        return any(st.given_up for st in self.dirs)

    @property
    def failed(self) -> bool:
        """Nothing ever decrypted although records came: the secrets do not fit."""
        return self.opened_records == 0 and self.failed_records > 0

    def _open(self, st: _Direction, header: bytes, body: bytes) -> Opened | None:
        """Try the expected (keys, sequence number); after a loss, the ones that could follow it."""
        cipher = st.cipher
        if cipher is not None and st.seq_known:
            opened = cipher.open(header, body, st.seq)
            if opened is not None:
                st.seq += 1
                st.skipped = 0
                return opened
        # search: this key ahead (records lost), then the next key from 0 (a Finished or KeyUpdate lost)
        if cipher is not None:
            start = st.seq + 1 if st.seq_known else st.seq
            for seq in range(start, start + SEARCH):
                opened = cipher.open(header, body, seq)
                if opened is not None:
                    st.skipped = seq - st.seq
                    st.seq, st.seq_known = seq + 1, True
                    return opened
        nxt = self._next_key(st)
        if nxt is not None:
            new_cipher, new_secret = nxt
            for seq in range(SEARCH):
                opened = new_cipher.open(header, body, seq)
                if opened is not None:
                    # records lost under the old key are not counted; the estimate errs high (safe)
                    st.skipped = seq
                    self._advance(st, new_cipher, new_secret)
                    st.seq, st.seq_known = seq + 1, True
                    return opened
        return None

    def _next_key(self, st: _Direction) -> tuple[RecordCipher, bytes] | None:
        """TLS 1.3: the keys of the direction's next state (application keys, or the next generation)."""
        if not self.tls13:
            return None
        s = self.suite
        secret = st.next_secret if st.gen < 0 else (tls13_next_secret(s, st.secret) if st.secret else None)
        if secret is None:
            return None
        return RecordCipher(s, tls13_keys(s, secret), version=TLS13), secret

    def _advance(self, st: _Direction, cipher: RecordCipher, secret: bytes) -> None:
        st.cipher, st.secret, st.next_secret = cipher, secret, None
        st.gen += 1
        st.seq, st.seq_known = 0, True

    def _lost_plaintext(self, d: int, record_len: int, ts: int) -> None:
        n = max(record_len - self._overhead(), 0)
        if n:
            self.sink.plain_gap(d, n, ts)

    def _plain_len(self, st: _Direction, header: bytes, body: bytes) -> int:
        """The plaintext length of a record that cannot be authenticated (a gap hit it).

        AEAD: the body less the explicit nonce and tag (TLS 1.3: and the content type byte; padding,
        which no common implementation adds, would make this too high). CBC: the padding length is
        in the last block, readable without the MAC when the gap spared the last two blocks.
        """
        if st.cipher is not None:
            n = st.cipher.plaintext_length(header, body)
            if n is not None:
                return n
        return max(len(body) - self._overhead(), 0)

    def _overhead(self) -> int:
        """Bytes of a record that are not plaintext (an estimate for CBC, whose padding varies)."""
        s = self.suite
        if s.tls13:
            return s.tag_len + 1  # tag + inner content type
        if s.kind == "cbc":
            return 16 + s.mac_len + 1  # explicit IV, MAC, the least padding
        if s.kind == "chacha":
            return s.tag_len
        return 8 + s.tag_len  # explicit nonce + tag

    # ------------------------------------------------------------------ decrypted handshake messages
    def _handshake(self, d: int, st: _Direction, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if st.hs_skip:
                take = min(st.hs_skip, n - pos)
                st.hs_skip -= take
                pos += take
                if st.hs_skip == 0:
                    self._message(d, st, st.hs_type, None)
                continue
            if st.hs_type < 0:
                need = 4 - len(st.hs_hdr)
                st.hs_hdr += data[pos : pos + need]
                pos += min(need, n - pos)
                if len(st.hs_hdr) < 4:
                    return
                h = st.hs_hdr
                st.hs_type, st.hs_len = h[0], int.from_bytes(h[1:4], "big")
                st.hs_hdr = bytearray()
                st.hs_body = bytearray()
                if st.hs_len > MAX_HS_MESSAGE:
                    self._hs_lost(st)
                    return
                if st.hs_type not in KEPT_TYPES or st.hs_len > MAX_HS_KEPT:
                    st.hs_skip = st.hs_len
                    if st.hs_skip == 0:
                        self._message(d, st, st.hs_type, None)
                    continue
            take = min(st.hs_len - len(st.hs_body), n - pos)
            st.hs_body += data[pos : pos + take]
            pos += take
            if len(st.hs_body) == st.hs_len:
                self._message(d, st, st.hs_type, bytes(st.hs_body))

    def _message(self, d: int, st: _Direction, msg_type: int, body: bytes | None) -> None:
        st.hs_type = -1
        st.hs_body = bytearray()
        self.sink.plain_handshake(d, msg_type, body)
        if not self.tls13:
            return
        if (msg_type == FINISHED and st.gen < 0) or (msg_type == KEY_UPDATE and st.gen >= 0):
            nxt = self._next_key(st)
            if nxt is not None:
                self._advance(st, *nxt)

    @staticmethod
    def _hs_lost(st: _Direction) -> None:
        st.hs_hdr = bytearray()
        st.hs_type = -1
        st.hs_skip = 0
        st.hs_body = bytearray()
