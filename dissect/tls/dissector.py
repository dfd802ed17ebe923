"""TLS connection dissector: both directions' record layers, the hellos, one `Call` per connection.

Without keys nothing inside the encryption is visible, so a TLS connection is one call (design:
``protocol "tls"``, ``method "TLS"``, ``target`` = SNI, ``status`` null, flag ``encrypted``) emitted
when the connection ends (FIN/RST, idle or table eviction, end of capture). Its ``request_ts`` is the
ClientHello, its ``response_ts`` the first ServerHello (a HelloRetryRequest counts), so ``latency``
is the handshake round trip as the capture saw it. A connection captured mid-stream has neither:
its ``request_ts`` is when it was first seen, and it carries ``mid-stream``.

``info`` (all keys always present, None/empty when unknown):

- ``tls_version``: the negotiated version (ServerHello, supported_versions for 1.3), e.g. "TLS 1.3";
- ``cipher``: the chosen suite's IANA name ("TLS_AES_128_GCM_SHA256"), hex for unnamed ones;
- ``alpn_offered``, ``alpn``: the client's list and the server's choice. In TLS 1.3 the choice is
  inside the encrypted EncryptedExtensions: then ``alpn`` is None and ``alpn_encrypted`` True;
- ``versions_offered``, ``cipher_suites_offered`` (a count), ``groups_offered``, ``key_share``
  (the group the server chose), ``ja3`` / ``ja3s`` (fingerprint hashes);
- ``session_resumption_offered``: a PSK, a non-empty session ticket, or (without TLS 1.3 offered) a
  session id; ``resumed``: TLS 1.3 — the server accepted a PSK; TLS <= 1.2 — the server echoed the
  client's session id, or went straight to ChangeCipherSpec without a Certificate;
- ``bytes``: ``{"client": n, "server": m}`` — application_data record *payload* bytes (headers
  excluded) per side. In TLS 1.3 the encrypted end of the handshake (EncryptedExtensions,
  Certificate, Finished, tickets) travels in application_data records and is included;
- ``tls_bytes``: every record byte (headers included) per side; ``records``: records per content
  type per side; ``handshake``: plaintext handshake message types per side, in order;
- ``alerts``: ``{"from": side, "level": …, "description": …}`` for plaintext alerts,
  ``{"from": side, "encrypted": true}`` for protected ones.

`TLSSession` is the parsed state, kept apart from the wire handling so the later eBPF tracer and
key-log decryption can hand it the plaintext of the same connection (`TLSSession.plaintext`).

**With a key log** (`dissect.tls.keylog`): once the ServerHello shows the version and suite, the
session's secrets are looked up by the ClientHello random. When they are there, the record layer
keeps protected records whole and `dissect.tls.decrypt` opens them; the application data goes to
the dissector ALPN names (``h2``: HTTP/2, ``http/1.1``: HTTP/1; none: detected by content, so a
TLS-wrapped Kafka or DNS works too), whose calls carry ``tls: true``, the SNI and
``info.tls_source: "keylog"`` and replace the opaque call. A session whose keys are missing or do
not fit stays one opaque call, and ``info.keylog`` says why ("the key log has no secrets for this
session", "cipher suite … is not supported for decryption", "the secrets do not decrypt …"). A
session that was decrypted but carried no request (a handshake, then close) is still reported as
its ``tls`` call, without the ``encrypted`` flag and with ``info.tls_source: "keylog"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dissect.base import Analyzer, ConnContext, Dissector, Handoff
from dissect.model import Call, Flag
from dissect.tls.hello import (
    ClientHello,
    ServerHello,
    cipher_name,
    group_name,
    parse_client_hello,
    parse_encrypted_extensions_alpn,
    parse_server_hello,
    version_name,
)
from dissect.tls.records import APPLICATION_DATA, CONTENT_TYPES, HANDSHAKE_TYPES, RecordStream

if TYPE_CHECKING:
    from dissect.tls.decrypt import Decrypter
    from dissect.tls.keylog import KeyLog

__all__ = ["ALERT_DESCRIPTIONS", "TLSDissector", "TLSSession"]

CLIENT_HELLO, SERVER_HELLO, CERTIFICATE, NEW_SESSION_TICKET, SERVER_HELLO_DONE = 1, 2, 11, 4, 14
ENCRYPTED_EXTENSIONS = 8
EXT_ENCRYPT_THEN_MAC = 22
#: ALPN protocol -> the analyzer that dissects its plaintext (others: detected by content)
ALPN_ANALYZERS = {"h2": "http2", "http/1.1": "http", "http/1.0": "http", "http/0.9": "http"}
TLS13 = 0x0304
MAX_ALERTS = 16
MAX_HANDSHAKE_LOG = 32
MAX_WEIRD = 16

ALERT_DESCRIPTIONS: dict[int, str] = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    60: "export_restriction",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    111: "certificate_unobtainable",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}
_ALERT_LEVELS = {1: "warning", 2: "fatal"}


class TLSSession:
    """What is known about one TLS connection: hellos, negotiated parameters, counters.

    Directions are the reassembler's (0/1); ``client_dir`` says which one is the client once a hello
    showed it. ``plaintext`` is where decrypted application data will arrive (eBPF TLS tracer,
    key-log decryption — later issues): set ``inner`` to the dissector of the protocol ALPN names and
    it is fed there; until then the bytes are only counted.
    """

    __slots__ = (
        "alerts",
        "alerts_dropped",
        "certificate_seen",
        "client_dir",
        "client_hello",
        "client_hello_ts",
        "client_hellos",
        "decrypted_alpn",
        "handshake_log",
        "hello_retry",
        "inner",
        "parse_errors",
        "plaintext_bytes",
        "plaintext_lost",
        "resumed",
        "server_hello",
        "server_hello_ts",
        "server_hellos",
        "ticket_issued",
        "weird",
    )

    def __init__(self) -> None:
        self.client_dir: int | None = None
        self.client_hello: ClientHello | None = None
        self.client_hello_ts: int | None = None
        self.client_hellos = 0
        self.server_hello: ServerHello | None = None  # the real one (not a HelloRetryRequest) if seen
        self.server_hello_ts: int | None = None  # the first one (a HelloRetryRequest counts)
        self.server_hellos = 0
        self.hello_retry = False
        self.certificate_seen = False  # a plaintext Certificate from the server (TLS <= 1.2)
        self.ticket_issued = False  # a plaintext NewSessionTicket (TLS <= 1.2)
        self.resumed = False
        self.alerts: list[tuple[int, int, int, bool]] = []  # (direction, level, description, plaintext)
        self.alerts_dropped = 0
        self.handshake_log: tuple[list[str], list[str]] = ([], [])
        self.parse_errors = 0
        self.weird: list[str] = []
        self.inner: Dissector | None = None
        self.plaintext_bytes = [0, 0]
        self.plaintext_lost = [0, 0]  # plaintext bytes that could not be decrypted (about)
        self.decrypted_alpn: str | None = None  # TLS 1.3: from the decrypted EncryptedExtensions

    @property
    def version(self) -> int | None:
        sh = self.server_hello
        return None if sh is None else sh.version

    @property
    def alpn(self) -> str | None:
        sh = self.server_hello
        if sh is not None and sh.alpn is not None:
            return sh.alpn
        return self.decrypted_alpn

    @property
    def sni(self) -> str | None:
        ch = self.client_hello
        return None if ch is None else ch.sni

    def add_weird(self, what: str) -> None:
        if what not in self.weird and len(self.weird) < MAX_WEIRD:
            self.weird.append(what)

    def plaintext(self, direction: int, data: bytes, ts: int) -> None:
        """Decrypted application data of this connection (for the TLS tracer / key-log issues)."""
        self.plaintext_bytes[direction & 1] += len(data)
        if self.inner is not None:
            self.inner.feed(direction & 1, data, ts)

    def info(self, streams: tuple[RecordStream, RecordStream], client: int) -> dict[str, Any]:
        """The call's ``info`` (see the module docstring); ``client`` is the client's direction."""
        ch, sh = self.client_hello, self.server_hello
        side = {client: "client", 1 - client: "server"}
        version = self.version
        info: dict[str, Any] = {
            "tls_version": version_name(version),
            "cipher": cipher_name(None if sh is None else sh.cipher_suite),
            "alpn_offered": [] if ch is None else list(ch.alpn),
            "alpn": self.alpn,
            "alpn_encrypted": version == TLS13 and ch is not None and bool(ch.alpn),
            "versions_offered": [] if ch is None else [version_name(v) for v in ch.versions],
            "cipher_suites_offered": None if ch is None else len(ch.cipher_suites),
            "groups_offered": [] if ch is None else [group_name(g) for g in ch.supported_groups],
            "key_share": None if sh is None else group_name(sh.key_share_group),
            "session_resumption_offered": ch is not None and ch.resumption_offered,
            "resumed": self.resumed,
            "hello_retry": self.hello_retry,
            "ja3": None if ch is None else ch.ja3_hash(),
            "ja3s": None if sh is None else sh.ja3s(),
            "bytes": {side[d]: streams[d].bytes.get(APPLICATION_DATA, 0) for d in (client, 1 - client)},
            "tls_bytes": {side[d]: streams[d].total_bytes for d in (client, 1 - client)},
            "records": {
                side[d]: {CONTENT_TYPES.get(t, str(t)): n for t, n in sorted(streams[d].records.items())}
                for d in (client, 1 - client)
            },
            "handshake": {side[d]: list(self.handshake_log[d]) for d in (client, 1 - client)},
            "alerts": [_alert_dict(side[d], lvl, desc, plain) for d, lvl, desc, plain in self.alerts],
        }
        if self.alerts_dropped:
            info["alerts_dropped"] = self.alerts_dropped
        skipped = {side[d]: streams[d].unparsed() for d in (client, 1 - client) if streams[d].unparsed()}
        if skipped:
            info["unparsed_bytes"] = skipped
        if any(self.plaintext_bytes):
            info["plaintext_bytes"] = {side[d]: self.plaintext_bytes[d] for d in (client, 1 - client)}
        if any(self.plaintext_lost):
            info["plaintext_lost"] = {side[d]: self.plaintext_lost[d] for d in (client, 1 - client)}
        if self.weird:
            info["weird"] = list(self.weird)
        return info


def _alert_dict(side: str, level: int, desc: int, plain: bool) -> dict[str, Any]:
    if not plain:
        return {"from": side, "encrypted": True}
    return {
        "from": side,
        "level": _ALERT_LEVELS.get(level, str(level)),
        "description": ALERT_DESCRIPTIONS.get(desc, str(desc)),
    }


class TLSDissector:
    """One TCP connection's TLS dissector (see `dissect.base.Dissector`); emits one call at close."""

    def __init__(
        self,
        ctx: ConnContext,
        handoff: Handoff | None = None,
        strict: bool = False,
        keylog: KeyLog | None = None,
        inner_analyzers: Sequence[Analyzer] = (),
    ) -> None:
        self.ctx = ctx
        self.strict = strict  # re-raise internal errors (tests); otherwise they become flags
        self.session = TLSSession()
        self.keylog = keylog  # secrets by client random; None: no decryption
        self.inner_analyzers = inner_analyzers  # what decrypted application data may be
        self.decrypter: Decrypter | None = None
        self.keys_note: str | None = None  # why this session was not decrypted (with a key log)
        self.inner_calls = 0  # calls the decrypted plaintext gave
        # A connection captured mid-stream may start inside a record: find a boundary first.
        lost = not ctx.handshake_seen
        self.streams = (RecordStream(0, self, lost=lost), RecordStream(1, self, lost=lost))
        self.flags: list[str] = []
        self.first_ts: int | None = None
        self.closed = False
        self.internal_errors = 0
        if handoff is not None and handoff.client_dir is not None:
            self.session.client_dir = handoff.client_dir

    # ------------------------------------------------------------------ Dissector contract
    def feed(self, direction: int, data: bytes, ts: int) -> None:
        if self.closed or not data:
            return
        if self.first_ts is None:
            self.first_ts = ts
        try:
            self.streams[direction & 1].feed(data, ts)
        except Exception:
            self._internal_error(direction & 1)

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        if self.closed:
            return
        self._flag(Flag.SNAPLEN if snaplen else Flag.GAP)
        try:
            self.streams[direction & 1].gap(n)
        except Exception:
            self._internal_error(direction & 1)

    def note(self, direction: int, flag: str) -> None:
        if not self.closed:
            self._flag(flag)
            inner = self.session.inner
            if inner is not None:
                inner.note(direction, flag)

    def close(self, ts: int) -> None:
        if self.closed:
            return
        self.closed = True
        inner = self.session.inner
        if inner is not None:
            try:
                inner.close(ts)
            except Exception:
                if self.strict:
                    raise
                self.internal_errors += 1
        if self.inner_calls:
            return  # the decrypted calls stand for the connection
        try:
            call = self._call()
        except Exception:
            if self.strict:
                raise
            self.internal_errors += 1
            return
        if call is not None:
            self.ctx.emit(call)

    def buffered_bytes(self) -> int:
        n = self.streams[0].buffered_bytes() + self.streams[1].buffered_bytes()
        inner = self.session.inner
        measure = getattr(inner, "buffered_bytes", None)
        return n + (measure() if callable(measure) else 0)

    # ------------------------------------------------------------------ RecordHandler
    def wants(self, stream: RecordStream, msg_type: int) -> bool:
        return msg_type in (CLIENT_HELLO, SERVER_HELLO)

    def on_handshake(
        self, stream: RecordStream, msg_type: int, body: bytes | None, length: int, ts: int
    ) -> None:
        s = self.session
        d = stream.direction
        log = s.handshake_log[d]
        if len(log) < MAX_HANDSHAKE_LOG:
            log.append(HANDSHAKE_TYPES.get(msg_type, str(msg_type)))
        if msg_type == CLIENT_HELLO:
            self._client_hello(stream, body, length, ts)
        elif msg_type == SERVER_HELLO:
            self._server_hello(stream, body, length, ts)
        elif msg_type == CERTIFICATE and d != s.client_dir:
            s.certificate_seen = True
        elif msg_type == NEW_SESSION_TICKET:
            s.ticket_issued = True

    def _client_hello(self, stream: RecordStream, body: bytes | None, length: int, ts: int) -> None:
        s = self.session
        d = stream.direction
        s.client_hellos += 1
        if s.client_hello is not None and not (s.hello_retry and s.client_hellos == 2):
            s.add_weird("unexpected-client-hello")  # renegotiation (encrypted, normally) or junk
            return
        if s.client_dir is None:
            s.client_dir = d
        elif s.client_dir != d:
            s.add_weird("client-hello-from-server")
            return
        if body is None:
            self._parse_error("client-hello-lost" if length <= (64 << 10) else "client-hello-too-large")
            if s.client_hello_ts is None:
                s.client_hello_ts = ts
            return
        ch = parse_client_hello(body)
        if ch.error is not None:
            self._parse_error(f"client-hello: {ch.error}")
        if s.client_hello is None:
            s.client_hello = ch
            s.client_hello_ts = ts
        else:  # the second ClientHello after a HelloRetryRequest: same SNI and ALPN, new key shares
            s.client_hello.key_share_groups = ch.key_share_groups

    def _server_hello(self, stream: RecordStream, body: bytes | None, length: int, ts: int) -> None:
        s = self.session
        d = stream.direction
        s.server_hellos += 1
        if s.client_dir is None:
            s.client_dir = 1 - d
        elif s.client_dir == d:
            s.add_weird("server-hello-from-client")
            return
        if s.server_hello_ts is None:
            s.server_hello_ts = ts
        if s.server_hello is not None:
            s.add_weird("unexpected-server-hello")
            return
        if body is None:
            self._parse_error("server-hello-lost" if length <= (64 << 10) else "server-hello-too-large")
            return
        sh = parse_server_hello(body)
        if sh.error is not None:
            self._parse_error(f"server-hello: {sh.error}")
        if sh.is_hello_retry:
            s.hello_retry = True
            return
        s.server_hello = sh
        ch = s.client_hello
        if self.keylog is not None and len(self.keylog):
            self._find_keys(sh)
        if sh.version == TLS13:
            s.resumed = sh.psk
            self._protect(stream)  # everything after a 1.3 ServerHello is encrypted
            if self.decrypter is not None:
                self.streams[1 - stream.direction].start_collecting()  # the client's, from now on
        else:
            s.resumed = bool(ch is not None and ch.session_id and ch.session_id == sh.session_id)

    def on_ccs(self, stream: RecordStream, ts: int) -> None:
        s = self.session
        version = s.version
        if version == TLS13:
            return  # a middlebox-compatibility CCS (RFC 8446 §D.4): protection does not start here
        ch = s.client_hello
        if version is None and (s.hello_retry or (ch is not None and ch.offers_tls13)):
            return  # version not known yet and 1.3 possible: a compatibility CCS (after a HelloRetryRequest)
        self._protect(stream)
        if (
            stream.direction != s.client_dir
            and s.server_hello is not None
            and not s.certificate_seen
            and s.version is not None
            and s.version < TLS13
        ):
            s.resumed = True  # abbreviated handshake: ServerHello, then straight to CCS

    def on_alert(self, stream: RecordStream, body: bytes, length: int, ts: int) -> None:
        s = self.session
        if len(s.alerts) >= MAX_ALERTS:
            s.alerts_dropped += 1
            return
        if not stream.encrypted and length == 2 and len(body) == 2:
            s.alerts.append((stream.direction, body[0], body[1], True))
        else:
            s.alerts.append((stream.direction, 0, 0, False))

    def on_error(self, stream: RecordStream, reason: str) -> None:
        self._parse_error("not-a-record")

    def on_record(self, stream: RecordStream, header: bytes, body: bytes, ts: int) -> None:
        if self.decrypter is not None:
            self.decrypter.record(stream.direction, header, body, ts)

    def on_record_lost(self, stream: RecordStream, header: bytes, body: bytes, ts: int) -> None:
        if self.decrypter is not None:
            self.decrypter.record_lost(stream.direction, header, body, ts)

    def on_stream_lost(self, stream: RecordStream, seen: int) -> None:
        if self.decrypter is not None:
            self.decrypter.stream_lost(stream.direction, seen)

    def on_resynced(self, stream: RecordStream, lost: int) -> None:
        if self.decrypter is not None:
            self.decrypter.resynced(stream.direction, lost)

    # ------------------------------------------------------------------ decryption (PlainSink)
    def _find_keys(self, sh: ServerHello) -> None:
        """Look the session up in the key log and, with its secrets, start decrypting."""
        from dissect.tls.decrypt import Decrypter, prepare

        s = self.session
        ch = s.client_hello
        assert self.keylog is not None
        if ch is None or len(ch.random) != 32:
            self.keys_note = "the ClientHello was not seen, so the session cannot be looked up"
            return
        secrets = self.keylog.lookup(ch.random)
        if secrets is None:
            self.keys_note = "the key log has no secrets for this session"
            return
        ready = prepare(
            secrets, sh.cipher_suite, sh.version, ch.random, sh.random, EXT_ENCRYPT_THEN_MAC in sh.extensions
        )
        if isinstance(ready, str):
            self.keys_note = ready
            return
        suite, roles = ready
        client = s.client_dir if s.client_dir is not None else 0
        self.decrypter = Decrypter(suite, roles, client, self)
        for st in self.streams:
            if st.encrypted:
                st.start_collecting()

    def plain_data(self, d: int, data: bytes, ts: int) -> None:
        s = self.session
        if s.inner is None:
            self._open_inner(ts)
        try:
            s.plaintext(d, data, ts)
        except Exception:
            self._inner_failed()

    def plain_gap(self, d: int, n: int, ts: int) -> None:
        s = self.session
        s.plaintext_lost[d & 1] += n
        if s.inner is not None:
            try:
                s.inner.gap(d, n, ts)
            except Exception:
                self._inner_failed()

    def plain_alert(self, d: int, level: int, description: int) -> None:
        s = self.session
        if len(s.alerts) >= MAX_ALERTS:
            s.alerts_dropped += 1
            return
        s.alerts.append((d, level, description, True))

    def plain_handshake(self, d: int, msg_type: int, body: bytes | None) -> None:
        s = self.session
        log = s.handshake_log[d]
        if len(log) < MAX_HANDSHAKE_LOG:
            log.append(HANDSHAKE_TYPES.get(msg_type, str(msg_type)))
        if msg_type == ENCRYPTED_EXTENSIONS and body is not None and d != s.client_dir:
            s.decrypted_alpn = parse_encrypted_extensions_alpn(body)
        elif msg_type == CLIENT_HELLO:
            s.add_weird("renegotiation-not-decrypted")  # a new handshake inside: new keys we do not follow

    def _open_inner(self, ts: int) -> None:
        """The dissector for the plaintext: the one ALPN names, else detection by content."""
        from dissect.detect import Detecting

        s = self.session
        base = self.ctx
        # the ClientHello was seen (keys are found through it), so the plaintext starts at its beginning
        ctx = dataclasses.replace(base, emit=self._emit_inner, switch=None, handshake_seen=True)
        wanted = ALPN_ANALYZERS.get(s.alpn or "")
        analyzers = [a for a in self.inner_analyzers if wanted is None or a.name == wanted]
        if not analyzers:
            analyzers = list(self.inner_analyzers)
        a, b = base.endpoints
        port_hint = min(a.port or 0, b.port or 0) or None

        def decided(dissector: Dissector) -> None:
            s.inner = dissector

        def switch(h: Handoff) -> None:
            """h2c or CONNECT inside TLS: as the engine does for a cleartext connection."""
            new: Dissector
            if h.protocol:
                analyzer = next((x for x in self.inner_analyzers if x.name == h.protocol), None)
                if analyzer is None:
                    return
                new = analyzer.new(ctx, h)
            else:
                new = Detecting(ctx, self.inner_analyzers, port_hint, decided)
            s.inner = new
            first = h.client_dir if h.client_dir is not None else 0
            for d in (first, 1 - first):
                if h.pending[d]:
                    new.feed(d, h.pending[d], h.ts)

        ctx.switch = switch
        s.inner = Detecting(ctx, analyzers, port_hint, decided)

    def _emit_inner(self, call: Call) -> None:
        s = self.session
        call.tls = True
        call.sni = s.sni
        call.info["tls_source"] = "keylog"
        self.inner_calls += 1
        self.ctx.emit(call)

    def _inner_failed(self) -> None:
        """The plaintext dissector broke (a bug): drop it, keep the connection's accounting."""
        if self.strict:
            raise
        self.internal_errors += 1
        self.session.add_weird("internal-error")
        self._flag(Flag.PARSE_ERROR)
        from dissect.detect import IGNORED

        self.session.inner = IGNORED

    # ------------------------------------------------------------------ helpers
    def _protect(self, stream: RecordStream) -> None:
        stream.protect()
        if self.decrypter is not None:
            stream.start_collecting()

    def _flag(self, flag: str) -> None:
        if flag not in self.flags:
            self.flags.append(flag)

    def _parse_error(self, what: str) -> None:
        self.session.parse_errors += 1
        self.session.add_weird(what)
        self._flag(Flag.PARSE_ERROR)

    def _internal_error(self, direction: int) -> None:
        """A bug must not take the pipeline down: note it and resynchronise that direction."""
        if self.strict:
            raise
        self.internal_errors += 1
        self.session.add_weird("internal-error")
        self._flag(Flag.PARSE_ERROR)
        try:
            self.streams[direction].gap(1)  # drops to LOST: the record boundary is searched again
        except Exception:  # pragma: no cover
            pass

    def _client_side(self) -> int:
        s = self.session
        if s.client_dir is not None:
            return s.client_dir
        if self.ctx.handshake_seen:
            return 0  # the SYN sender
        # mid-stream without a hello: the side on the lower port is taken for the server
        a, b = self.ctx.endpoints
        if a.port is not None and b.port is not None and a.port < b.port:
            return 1
        return 0

    def _call(self) -> Call | None:
        s = self.session
        streams = self.streams
        saw_tls = any(st.records for st in streams) or s.client_hellos or s.server_hellos
        if not saw_tls:
            return None  # not one complete record header: nothing to report
        cd = self._client_side()
        eps = self.ctx.endpoints
        dec = self.decrypter
        decrypted = dec is not None and dec.opened_records > 0
        flags = [] if decrypted else [Flag.ENCRYPTED]
        mid = not self.ctx.handshake_seen and s.client_hellos == 0
        if mid:
            flags.append(Flag.MID_STREAM)
        elif s.client_hellos == 0:
            flags.append(Flag.REQUEST_MISSING)
        if s.client_hellos and s.server_hellos == 0:
            flags.append(Flag.RESPONSE_MISSING)
        for f in self.flags:
            if f not in flags:
                flags.append(f)
        request_ts = s.client_hello_ts
        if request_ts is None and s.server_hello_ts is None:
            request_ts = self.first_ts
        sni = s.sni
        info = s.info(streams, cd)
        if decrypted:
            info["tls_source"] = "keylog"
        elif dec is not None and dec.failed:
            info["keylog"] = "the key log's secrets do not decrypt this session"
        elif self.keys_note is not None:
            info["keylog"] = self.keys_note
        return Call(
            protocol="tls",
            transport=self.ctx.transport,
            tls=True,
            sni=sni,
            src=eps[cd],
            dst=eps[1 - cd],
            request_ts=request_ts,
            response_ts=s.server_hello_ts,
            method="TLS",
            target=sni,
            status=None,
            info=info,
            flags=flags,
            flow_id=self.ctx.flow_id,
        )
