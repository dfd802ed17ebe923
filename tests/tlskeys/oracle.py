"""tshark, given the same key log, as the oracle for podshark's TLS decryption.

Why tshark: Wireshark's TLS decryption is an independent implementation of the same key schedule
(TLS 1.2 PRF, TLS 1.3 HKDF, key updates, CBC with and without encrypt-then-mac). When tshark and
podshark, reading the same packets with the same key log, find the same HTTP transactions on the
same connections, and the bodies equal what the test served, the decryption is right; a baseline
written from podshark's own output would only prove that podshark agrees with itself.

One ``tshark -T json`` run per (capture, key log) reads, per TCP connection (keyed by the client's
port, which is what podshark's calls carry as ``src.port``):

- the handshake in the clear: SNI, client random, offered ALPN, the ServerHello's version (the
  supported_versions extension for TLS 1.3), cipher suite (named by tshark's own value table, ``tshark
  -G values``) and extension types (22 = encrypt_then_mac), the ALPN chosen (ServerHello for TLS 1.2,
  EncryptedExtensions for TLS 1.3 — visible only with keys);
- the KeyUpdate messages (TLS 1.3, with keys) and whether each asked the peer to update;
- application-data bytes per side: the payload length of every record whose *outer* type is 23, the
  count podshark reports for an opaque session (with or without keys, the outer type is the same);
- HTTP/1 transactions (method, request-target, status; responses paired by tshark's
  ``http.request_in``) and HTTP/2 streams (``:method``, ``:path``, ``:status`` per stream id).

JSON rather than pyshark: pyshark's per-field API loses which HTTP/2 frame a header belongs to when a
packet carries several frames, and the JSON tree keeps that structure for free.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.tlskeys.lab import NOETM_PORT, PORT, Conn, Variant

TSHARK = shutil.which("tshark")

Transaction = tuple[str | None, str | None, int | None]

VERSIONS = {0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
APPLICATION_DATA = 23
HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_SERVER_HELLO = 2
HANDSHAKE_ENCRYPTED_EXTENSIONS = 8
HANDSHAKE_KEY_UPDATE = 24
EXT_ENCRYPT_THEN_MAC = 22


@dataclass(slots=True)
class TlsConn:
    """One TCP connection's TLS session and the HTTP inside it, as tshark saw them."""

    stream: int  # tcp.stream
    client: tuple[str, int] | None = None  # (ip, port) of the ClientHello's sender
    server: tuple[str, int] | None = None
    sni: str | None = None
    client_random: str | None = None  # hex, as in the key log
    alpn_offered: list[str] = field(default_factory=list)
    alpn: str | None = None  # chosen: ServerHello (TLS 1.2) or EncryptedExtensions (TLS 1.3, keys)
    version: str | None = None  # "TLS 1.2" | "TLS 1.3"
    cipher: str | None = None  # IANA name, from tshark's value table
    server_extensions: list[int] = field(default_factory=list)
    #: (sender "client"/"server", update_requested) per KeyUpdate tshark decrypted
    key_updates: list[tuple[str, bool]] = field(default_factory=list)
    #: payload bytes of records whose outer content type is application_data, per side
    app_bytes: dict[str, int] = field(default_factory=lambda: {"client": 0, "server": 0})
    http1: list[Transaction] = field(default_factory=list)
    #: stream id -> [method, path, status]
    http2: dict[int, list[Any]] = field(default_factory=dict)

    @property
    def client_port(self) -> int | None:
        return None if self.client is None else self.client[1]

    @property
    def transactions(self) -> Counter[Transaction]:
        """The multiset of (method, target, status) of this connection: HTTP/1 pairs and HTTP/2 streams."""
        out: Counter[Transaction] = Counter(self.http1)
        for sid, (method, path, status) in self.http2.items():
            if sid:
                out[(method, path, status)] += 1
        return out

    @property
    def decrypted(self) -> bool:
        """tshark saw HTTP inside: the key log opened this session."""
        return bool(self.http1 or self.http2)

    @property
    def etm(self) -> bool:
        """The ServerHello accepted encrypt_then_mac (extension 22)."""
        return EXT_ENCRYPT_THEN_MAC in self.server_extensions


@dataclass(slots=True)
class TlsOracle:
    """tshark's view of one capture with one key log (or none)."""

    path: str
    keylog: str | None
    conns: dict[int, TlsConn] = field(default_factory=dict)  # by tcp.stream

    def by_port(self) -> dict[int, TlsConn]:
        """Connections by the client's port (podshark's ``src.port``)."""
        return {c.client_port: c for c in self.conns.values() if c.client_port is not None}

    def by_sni(self, sni: str) -> list[TlsConn]:
        return [c for c in self.conns.values() if c.sni == sni]

    def one(self, sni: str) -> TlsConn:
        """The single connection with this SNI (every connection the lab makes has its own)."""
        found = self.by_sni(sni)
        assert len(found) == 1, f"{self.path}: {len(found)} connections with SNI {sni}, expected 1"
        return found[0]


def tshark_missing_reason() -> str | None:
    return None if TSHARK else "tshark is not installed (apt-get install tshark): it is the oracle"


@lru_cache(maxsize=1)
def cipher_names() -> dict[int, str]:
    """Cipher suite number -> name, from tshark's own value table (``tshark -G values``)."""
    assert TSHARK is not None
    res = subprocess.run([TSHARK, "-G", "values"], capture_output=True, text=True, timeout=120, check=True)
    names: dict[int, str] = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0] == "V" and parts[1] == "tls.handshake.ciphersuite":
            names[int(parts[2], 0)] = parts[3]
    return names


# ---------------------------------------------------------------------------------- JSON walking


def _as_list(v: Any) -> list[Any]:
    """tshark's JSON (``--no-duplicate-keys``) gives one object or a list of them for a repeated key."""
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _walk(obj: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) in a nested tshark JSON tree (request lines and extensions are subtrees
    named by their text, so the fields must be searched for, not addressed)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, list) and not any(isinstance(x, (dict, list)) for x in v):
                for x in v:
                    yield k, x
            else:
                yield k, v
            yield from _walk(v)
    elif isinstance(obj, list):
        for x in obj:
            yield from _walk(x)


def _values(obj: Any, key: str) -> list[Any]:
    return [v for k, v in _walk(obj) if k == key and not isinstance(v, (dict, list))]


def _first(obj: Any, key: str) -> Any:
    vals = _values(obj, key)
    return vals[0] if vals else None


def _int(v: Any) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(str(v), 0)
    except ValueError:
        return None


def _hex(v: str | None) -> str | None:
    return None if v is None else v.replace(":", "").lower()


# ---------------------------------------------------------------------------------------- running


def tshark_json(
    path: Path, keylog: Path | None, ports: Sequence[int] = (PORT, NOETM_PORT), two_pass: bool = False
) -> list[dict[str, Any]]:
    """The packets of `path` that carry TLS, as tshark's JSON, decrypted with `keylog` when given.

    ``keylog=None`` sets an empty key log file (a pcapng's Decryption Secrets Block still applies).
    The lab's ports are decoded as TLS explicitly (tshark only assumes TLS on well-known ports).
    """
    if TSHARK is None:
        pytest.skip("tshark is not installed")
    args = [TSHARK, "-n", "-r", str(path), "-o", f"tls.keylog_file:{keylog or ''}"]
    for p in ports:
        args += ["-d", f"tcp.port=={p},tls"]
    if two_pass:
        args.append("-2")
    args += ["-Y", "tls", "-T", "json", "--no-duplicate-keys", "-J", "frame ip ipv6 tcp tls http http2"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"tshark failed ({res.returncode}) on {path}: {res.stderr.strip()[-600:]}")
    packets: list[dict[str, Any]] = json.loads(res.stdout or "[]")
    return packets


def _endpoint(layers: Mapping[str, Any], src: bool) -> tuple[str, int]:
    ip = layers.get("ip") or layers.get("ipv6") or {}
    if isinstance(ip, list):
        ip = ip[-1]
    tcp = layers["tcp"]
    addr = ip.get("ip.src" if src else "ip.dst") or ip.get("ipv6.src" if src else "ipv6.dst") or ""
    return str(addr), int(tcp["tcp.srcport" if src else "tcp.dstport"])


def read_oracle(
    path: Path, keylog: Path | None = None, ports: Sequence[int] = (PORT, NOETM_PORT)
) -> TlsOracle:
    """tshark's TLS sessions and HTTP transactions in `path` (see the module docstring)."""
    names = cipher_names()
    oracle = TlsOracle(str(path), None if keylog is None else str(keylog))
    # HTTP/1 requests by (stream, frame), waiting for tshark's ``http.request_in`` to point at them
    pending: dict[int, list[tuple[int, str | None, str | None]]] = {}
    for pkt in tshark_json(path, keylog, ports):
        layers = pkt["_source"]["layers"]
        if "tcp" not in layers:
            continue
        frame = int(_first(layers.get("frame", {}), "frame.number") or 0)
        stream = int(layers["tcp"]["tcp.stream"])
        conn = oracle.conns.setdefault(stream, TlsConn(stream))
        src, dst = _endpoint(layers, True), _endpoint(layers, False)
        for tls in _as_list(layers.get("tls")):
            for record in _as_list(tls.get("tls.record")) if isinstance(tls, dict) else []:
                _record(conn, record, src, dst, names)
        side = "client" if conn.client is None or src == conn.client else "server"
        for http in _as_list(layers.get("http")):
            _http1(conn, http, frame, side, pending.setdefault(stream, []))
        for h2 in _as_list(layers.get("http2")):
            _http2(conn, h2, side)
    for stream, waiting in pending.items():
        for _frame, method, target in waiting:  # requests no response answered
            oracle.conns[stream].http1.append((method, target, None))
    return oracle


def _record(
    conn: TlsConn,
    record: Mapping[str, Any],
    src: tuple[str, int],
    dst: tuple[str, int],
    names: dict[int, str],
) -> None:
    outer = _int(record.get("tls.record.opaque_type")) or _int(record.get("tls.record.content_type"))
    for hs in _as_list(record.get("tls.handshake")):
        if not isinstance(hs, dict):
            continue
        kind = _int(hs.get("tls.handshake.type"))
        if kind == HANDSHAKE_CLIENT_HELLO:
            conn.client, conn.server = src, dst
            conn.sni = _first(hs, "tls.handshake.extensions_server_name")
            conn.client_random = _hex(_first(hs, "tls.handshake.random"))
            conn.alpn_offered = [str(v) for v in _values(hs, "tls.handshake.extensions_alpn_str")]
        elif kind == HANDSHAKE_SERVER_HELLO:
            suite = _int(hs.get("tls.handshake.ciphersuite"))
            conn.cipher = None if suite is None else names.get(suite, f"0x{suite:04x}")
            chosen = _int(_first(hs, "tls.handshake.extensions.supported_version"))
            legacy = _int(hs.get("tls.handshake.version"))
            version = chosen or legacy
            conn.version = None if version is None else VERSIONS.get(version, f"0x{version:04x}")
            conn.server_extensions = [int(v) for v in _values(hs, "tls.handshake.extension.type")]
            alpn = _values(hs, "tls.handshake.extensions_alpn_str")
            if alpn:
                conn.alpn = str(alpn[0])
        elif kind == HANDSHAKE_ENCRYPTED_EXTENSIONS:
            alpn = _values(hs, "tls.handshake.extensions_alpn_str")
            if alpn:
                conn.alpn = str(alpn[0])
        elif kind == HANDSHAKE_KEY_UPDATE:
            requested = _int(_first(record, "tls.handshake.key_update.request_update")) == 1
            conn.key_updates.append(("client" if src == conn.client else "server", requested))
    if outer == APPLICATION_DATA:
        side = "client" if src == conn.client else "server"
        conn.app_bytes[side] += _int(record.get("tls.record.length")) or 0


def _http1(
    conn: TlsConn,
    http: Mapping[str, Any],
    frame: int,
    side: str,
    pending: list[tuple[int, str | None, str | None]],
) -> None:
    method = _first(http, "http.request.method")
    code = _int(_first(http, "http.response.code"))
    if method is not None and side == "client":
        target = _first(http, "http.request.uri")
        pending.append((frame, str(method), None if target is None else str(target)))
    elif code is not None and side == "server":
        request_in = _int(_first(http, "http.request_in"))
        idx = next((i for i, p in enumerate(pending) if p[0] == request_in), 0 if pending else None)
        if idx is None:
            conn.http1.append((None, None, code))
            return
        _, m, t = pending.pop(idx)
        conn.http1.append((m, t, code))


def _http2(conn: TlsConn, h2: Any, side: str) -> None:
    frames = [x for k, v in _walk(h2) if k == "http2.stream" for x in _as_list(v) if isinstance(x, dict)]
    for fr in frames:
        sid = _int(fr.get("http2.streamid"))
        kind = _int(fr.get("http2.type"))
        if sid is None or kind != 1:  # HEADERS only (the lab's servers never push)
            continue
        entry = conn.http2.setdefault(sid, [None, None, None])
        for hdr in _as_list(fr.get("http2.header")):
            name, value = hdr.get("http2.header.name"), hdr.get("http2.header.value")
            if side == "client" and name == ":method":
                entry[0] = value
            elif side == "client" and name == ":path":
                entry[1] = value
            elif side == "server" and name == ":status":
                status = _int(value)
                if status is not None and (entry[2] is None or not 100 <= status < 200):
                    entry[2] = status


@lru_cache(maxsize=64)
def _cached(path: str, stamp: tuple[int, int], keylog: str | None, kstamp: tuple[int, int]) -> TlsOracle:
    del stamp, kstamp  # only part of the key: a rewritten file is read again
    return read_oracle(Path(path), None if keylog is None else Path(keylog))


def tls_oracle(path: Path, keylog: Path | None = None) -> TlsOracle:
    """`read_oracle`, cached per (file, key log) and their modification times."""
    st = path.stat()
    kst = keylog.stat() if keylog is not None else None
    return _cached(
        str(path.resolve()),
        (st.st_mtime_ns, st.st_size),
        None if keylog is None else str(keylog.resolve()),
        (0, 0) if kst is None else (kst.st_mtime_ns, kst.st_size),
    )


# ---------------------------------------------------------------------- podshark, and the comparison


def podshark_dissect(path: Path, keylog: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    """``podshark dissect FILE [--keylog KEYS] --json`` as a user runs it; the Call JSON objects."""
    args = [sys.executable, "-m", "podshark", "dissect", str(path), "--json", *extra]
    if keylog is not None:
        args += ["--keylog", str(keylog)]
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"podshark dissect exited {res.returncode}: {res.stderr.strip()[-1200:]}"
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def calls_of(calls: Sequence[Mapping[str, Any]], conn: TlsConn) -> list[Mapping[str, Any]]:
    """podshark's calls on `conn` (``src`` is always the client)."""
    assert conn.client is not None
    return [c for c in calls if (c["src"]["ip"], c["src"]["port"]) == conn.client]


def summary(call: Mapping[str, Any]) -> Transaction:
    return (call.get("method"), call.get("target"), call.get("status"))


def body(msg: Mapping[str, Any] | None) -> bytes:
    """A Message's decoded body from its JSON form (base64)."""
    if msg is None:
        return b""
    return base64.b64decode(msg.get("body") or "")


def expected_protocol(conn: TlsConn) -> str:
    """What podshark must call the decrypted traffic: HTTP/2 when h2 was negotiated, else HTTP/1.x."""
    return "http2" if conn.alpn == "h2" else "http"


def check_decrypted(calls: Sequence[Mapping[str, Any]], conn: TlsConn, truth: Conn, where: str) -> None:
    """podshark's calls on `conn` are the decrypted exchanges: the same transactions as tshark's, the
    bodies the test served and posted, marked as key-log plaintext, and no opaque call besides.

    `truth` is what the test made on this connection; it is checked against tshark too, so a harness
    that made the wrong traffic fails here as clearly as a wrong decryption."""
    assert conn.decrypted, f"{where}: tshark could not decrypt {conn.sni} with this key log"
    want = Counter(ex.summary for ex in truth.exchanges)
    assert conn.transactions == want, f"{where}: tshark saw {conn.transactions}, the test made {want}"
    mine = calls_of(calls, conn)
    opaque = [c for c in mine if c.get("protocol") == "tls"]
    assert not opaque, f"{where}: {conn.sni} decrypted, yet an opaque call: {opaque[0].get('flags')}"
    assert Counter(summary(c) for c in mine) == conn.transactions, (
        f"{where}: {conn.sni}: podshark {Counter(summary(c) for c in mine)} != tshark {conn.transactions}"
    )
    by_key = {(ex.method, ex.target): ex for ex in truth.exchanges}
    for c in mine:
        label = f"{where}: {conn.sni} {c.get('method')} {c.get('target')}"
        assert c["protocol"] == expected_protocol(conn), f"{label}: protocol {c['protocol']}"
        assert c["tls"] is True, label
        assert c["sni"] == conn.sni, f"{label}: sni {c['sni']}"
        assert (c.get("info") or {}).get("tls_source") == "keylog", f"{label}: info {c.get('info')}"
        assert "encrypted" not in c["flags"], f"{label}: flags {c['flags']}"
        ex = by_key[(c["method"], c["target"])]
        assert body(c["request"]) == ex.request_body, f"{label}: request body differs"
        assert c["response"] is not None, f"{label}: no response"
        if ex.gzip:  # nginx was told to gzip it: the wire form must have been compressed
            encodings = [v.lower() for n, v in c["response"]["headers"] if n.lower() == "content-encoding"]
            assert encodings == ["gzip"], f"{label}: content-encoding {encodings}"
            sizes = (c["response"]["wire_size"], c["response"]["body_size"])
            assert sizes[0] < sizes[1], f"{label}: wire {sizes[0]} bytes, decoded {sizes[1]}"
        got = body(c["response"])
        assert got == ex.response_body, (
            f"{label}: response body {len(got)} bytes, served {len(ex.response_body)}"
        )


def check_variant(oracle: TlsOracle, variant: Variant, truth: Sequence[Conn]) -> None:
    """The harness made what it was asked to (tshark's reading of the handshakes): each planned
    connection once, with the variant's version, cipher suite, ALPN and encrypt-then-mac choice."""
    assert len(oracle.conns) == len(truth), f"{oracle.path}: {len(oracle.conns)} TLS connections"
    for t in truth:
        conn = oracle.one(t.sni)
        got = (conn.version, conn.cipher, conn.etm)
        want = (variant.suite.version, variant.suite.iana, variant.expect_etm)
        assert got == want, f"{variant.name}: {t.sni}: tshark sees {got}, asked for {want}"
        if conn.decrypted or variant.suite.version == "TLS 1.2":  # TLS 1.3 hides ALPN without keys
            assert conn.alpn == variant.alpn, f"{variant.name}: {t.sni}: ALPN {conn.alpn}"


def check_opaque(calls: Sequence[Mapping[str, Any]], conn: TlsConn, where: str) -> None:
    """podshark's calls on `conn` are exactly one opaque TLS call that agrees with tshark (read without
    keys) on version, cipher suite, SNI, chosen ALPN and application-data bytes per side."""
    mine = calls_of(calls, conn)
    assert len(mine) == 1, f"{where}: {conn.sni}: {len(mine)} calls, expected one opaque TLS call"
    c = mine[0]
    info = c.get("info") or {}
    assert (c["protocol"], c["method"], c["target"], c["status"]) == ("tls", "TLS", conn.sni, None), c
    assert c["tls"] is True and c["sni"] == conn.sni, c
    assert "encrypted" in c["flags"], f"{where}: flags {c['flags']}"
    assert "tls_source" not in info, f"{where}: an opaque call claims plaintext: {info}"
    assert info.get("tls_version") == conn.version, f"{where}: version {info.get('tls_version')}"
    assert info.get("cipher") == conn.cipher, f"{where}: cipher {info.get('cipher')} != {conn.cipher}"
    assert info.get("alpn") == conn.alpn, f"{where}: alpn {info.get('alpn')} != {conn.alpn}"
    assert info.get("bytes") == conn.app_bytes, f"{where}: bytes {info.get('bytes')} != {conn.app_bytes}"


def env_without_token() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PODSHARK_TOKEN"}
