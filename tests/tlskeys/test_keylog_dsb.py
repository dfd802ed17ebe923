"""Secrets embedded in a pcapng (Decryption Secrets Block) decrypt without ``--keylog``.

The pcapng files are made by the real tool, ``editcap --inject-secrets tls,KEYS in.pcap out.pcapng``,
from the lab's captures. tshark reading the same pcapng (with no key log of its own) is the oracle,
and tshark reading the original pcap without keys shows that the secrets really come from the file.
A DSB holding the keys of one connection only decrypts that one; the other stays one opaque call.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tlskeys.lab import KeyLab, Variant, inject_secrets, key_lab, keylog_for, plan, variants
from tests.tlskeys.oracle import (
    check_decrypted,
    check_opaque,
    check_variant,
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

DSB = [v for v in variants() if v.name in ("tls13-aes256gcm-h2", "tls12-chacha-http1")]


@pytest.fixture(scope="module")
def lab() -> Iterator[KeyLab]:
    with key_lab() as the_lab:
        yield the_lab


def _capture(lab: KeyLab, variant: Variant) -> tuple[Path, Path]:
    cap = lab.capture(variant)
    assert cap.complete, f"{variant.name}: tcpdump lost packets: {cap.tcpdump}"
    return cap.pcap, cap.keylog


def _has_dsb(path: Path) -> bool:
    """A pcapng block of type 0x0000000A (Decryption Secrets) with secrets type ``TLSK``, either
    byte order: enough to tell that editcap wrote one (tshark decrypting the file is the real proof)."""
    data = path.read_bytes()
    return (
        data[:4] == b"\x0a\x0d\x0d\x0a"
        and (b"\x0a\x00\x00\x00" in data or b"\x00\x00\x00\x0a" in data)
        and (b"KSLT" in data or b"TLSK" in data)
    )


@pytest.mark.parametrize("variant", DSB, ids=lambda v: v.name)
def test_dsb_secrets_decrypt_without_keylog(lab: KeyLab, variant: Variant, tmp_path: Path) -> None:
    pcap, keys = _capture(lab, variant)
    out = inject_secrets(pcap, keys, tmp_path / f"{variant.name}-dsb.pcapng")
    assert _has_dsb(out)
    assert not any(c.decrypted for c in tls_oracle(pcap, None).conns.values()), "the pcap alone decrypted"
    oracle = tls_oracle(out, None)  # tshark finds the secrets in the file
    truth = plan()
    check_variant(oracle, variant, truth)
    calls = podshark_dissect(out)
    for t in truth:
        check_decrypted(calls, oracle.one(t.sni), t, f"{variant.name} (DSB)")
    assert len(calls) == sum(len(t.exchanges) for t in truth)


@pytest.mark.parametrize("variant", DSB, ids=lambda v: v.name)
def test_dsb_with_keys_for_one_connection(lab: KeyLab, variant: Variant, tmp_path: Path) -> None:
    pcap, keys = _capture(lab, variant)
    a, b = plan()
    full = tls_oracle(pcap, keys)
    a_keys = keylog_for(keys, [full.one(a.sni).client_random or ""], tmp_path / "a.keys")
    out = inject_secrets(pcap, a_keys, tmp_path / f"{variant.name}-a-only.pcapng")
    oracle = tls_oracle(out, None)
    assert oracle.one(a.sni).decrypted and not oracle.one(b.sni).decrypted
    calls = podshark_dissect(out)
    check_decrypted(calls, oracle.one(a.sni), a, f"{variant.name} (DSB with A's keys)")
    check_opaque(calls, tls_oracle(pcap, None).one(b.sni), f"{variant.name} (DSB without B's keys)")
    assert len(calls) == len(a.exchanges) + 1


def test_dsb_and_keylog_together(lab: KeyLab, tmp_path: Path) -> None:
    """A DSB with A's keys and ``--keylog`` with B's: both sources count, as in tshark."""
    variant = DSB[0]
    pcap, keys = _capture(lab, variant)
    a, b = plan()
    full = tls_oracle(pcap, keys)
    a_keys = keylog_for(keys, [full.one(a.sni).client_random or ""], tmp_path / "a.keys")
    b_keys = keylog_for(keys, [full.one(b.sni).client_random or ""], tmp_path / "b.keys")
    out = inject_secrets(pcap, a_keys, tmp_path / "a-in-dsb.pcapng")
    oracle = tls_oracle(out, b_keys)
    calls = podshark_dissect(out, b_keys)
    for t in (a, b):
        check_decrypted(calls, oracle.one(t.sni), t, f"{variant.name} (DSB + --keylog)")
