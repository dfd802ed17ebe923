"""TLS 1.3 key updates: decryption follows both sides to new traffic keys.

``openssl s_client`` (OpenSSL 3.0) against nginx, one connection: a GET, then ``K`` (a KeyUpdate
with update_requested, so nginx updates its own keys too), a second GET, ``K`` again, a third GET;
each line only after the previous answer came back (`tests.tlskeys.lab.KeyLab.keyupdate`). Every
GET names its target and nginx answers ``n=<target>``, so the three calls and their bodies are
known by construction; tshark with the same key log must show the KeyUpdate messages and the three
transactions.

OpenSSL also logs each updated secret (``CLIENT_TRAFFIC_SECRET_N``, a label outside the NSS
format). With the key log as written, and with a log cut to the standard labels (so the next
secrets must be derived, ``HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)``), podshark
must give all three calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tlskeys.lab import SNI_KEYUPDATE, KeyLab, TlsCapture, key_lab, keylog_lines
from tests.tlskeys.oracle import (
    check_decrypted,
    check_opaque,
    podshark_dissect,
    tls_oracle,
    tshark_missing_reason,
)

pytestmark = [
    pytest.mark.tshark,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("tlskeys"),
    pytest.mark.skipif(tshark_missing_reason() is not None, reason=tshark_missing_reason() or ""),
]

UPDATES = 2
#: the NSS key log labels of TLS 1.3 (what a key log writer other than OpenSSL gives)
NSS_TLS13 = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
}


@pytest.fixture(scope="module")
def lab() -> Iterator[KeyLab]:
    with key_lab() as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def capture(lab: KeyLab) -> TlsCapture:
    cap = lab.keyupdate(updates=UPDATES)
    assert cap.complete, f"tcpdump lost packets: {cap.tcpdump}"
    return cap


def standard_only(keys: Path, out: Path) -> Path:
    """The key log with only the NSS labels: no logged ``..._N`` secrets to lean on."""
    lines = [ln for ln in keylog_lines(keys) if ln.split()[0] in NSS_TLS13]
    out.write_text("".join(f"{ln}\n" for ln in lines))
    return out


def test_tshark_sees_the_key_updates_and_all_answers(capture: TlsCapture) -> None:
    """The harness did what it says: KeyUpdates from both sides between the GETs, all decrypted."""
    oracle = tls_oracle(capture.pcap, capture.keylog)
    conn = oracle.one(SNI_KEYUPDATE)
    assert conn.version == "TLS 1.3"
    assert conn.key_updates == [("client", True), ("server", False)] * UPDATES, conn.key_updates
    assert conn.transactions == {ex.summary: 1 for ex in capture.conns[0].exchanges}
    logged = [ln.split()[0] for ln in keylog_lines(capture.keylog)]
    assert logged.count("CLIENT_TRAFFIC_SECRET_0") == 1


def test_decrypts_across_key_updates(capture: TlsCapture) -> None:
    oracle = tls_oracle(capture.pcap, capture.keylog)
    calls = podshark_dissect(capture.pcap, capture.keylog)
    check_decrypted(calls, oracle.one(SNI_KEYUPDATE), capture.conns[0], "key update")
    assert len(calls) == UPDATES + 1


def test_derives_the_updated_keys_from_the_first_secrets(capture: TlsCapture, tmp_path: Path) -> None:
    keys = standard_only(capture.keylog, tmp_path / "nss.keys")
    assert {ln.split()[0] for ln in keylog_lines(keys)} == NSS_TLS13
    oracle = tls_oracle(capture.pcap, keys)
    conn = oracle.one(SNI_KEYUPDATE)
    assert conn.transactions == {ex.summary: 1 for ex in capture.conns[0].exchanges}, "tshark could not"
    calls = podshark_dissect(capture.pcap, keys)
    check_decrypted(calls, conn, capture.conns[0], "key update, NSS labels only")
    assert len(calls) == UPDATES + 1


def test_without_keys_one_opaque_call(capture: TlsCapture) -> None:
    calls = podshark_dissect(capture.pcap)
    check_opaque(calls, tls_oracle(capture.pcap, None).one(SNI_KEYUPDATE), "key update without keys")
    assert len(calls) == 1
