"""Key-log decryption of real TLS traffic: every cipher family, TLS 1.2 and 1.3, HTTP/1.1 and HTTP/2.

For each variant (`tests.tlskeys.lab.variants`: three TLS 1.3 suites, five TLS 1.2 suites, the two
CBC ones also without encrypt-then-mac, each with ALPN http/1.1 and h2) the lab captures two curl
connections (three GETs on one keep-alive connection, a POST on the other) together with curl's
``SSLKEYLOGFILE``. Then:

- tshark, given the key log, must see the variant the test asked for (version, suite, ALPN,
  extension 22 or not) and exactly the exchanges the test made: the harness is checked first;
- ``podshark dissect --keylog`` must give the same transactions per connection as tshark, the
  bodies the test served and posted (gzip undone), marked ``tls``/SNI/``tls_source: keylog``, and
  no opaque call for a decrypted connection;
- without keys, each session is one opaque ``tls`` call agreeing with tshark on version, suite,
  SNI, ALPN and application-data bytes;
- with keys for one connection only, that one is decrypted and the other opaque;
- a key log with garbage mixed in (comments, blank lines, bad hex, unknown labels, CRLF) decrypts
  the same; a missing key log file is exit status 2 with one line.

`test_keylog_fixtures` runs without root on the committed captures in fixtures/pcaps/tls/.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import FIXTURES, REPO
from tests.tlskeys.lab import FIXTURES as TLS_FIXTURES
from tests.tlskeys.lab import (
    Fixture,
    KeyLab,
    Variant,
    key_lab,
    keylog_for,
    keylog_lines,
    plan,
    variants,
)
from tests.tlskeys.oracle import (
    check_decrypted,
    check_opaque,
    check_variant,
    podshark_dissect,
    tls_oracle,
    tshark_missing_reason,
)

F = TypeVar("F", bound=Callable[..., Any])

pytestmark = [
    pytest.mark.tshark,
    pytest.mark.xdist_group("tlskeys"),
    pytest.mark.skipif(tshark_missing_reason() is not None, reason=tshark_missing_reason() or ""),
]


def live(fn: F) -> F:
    """Marks for the tests that make traffic: root (namespaces, tcpdump), slow, a generous timeout."""
    for mark in (pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)):
        fn = mark(fn)
    return fn


TLS_DIR = FIXTURES / "tls"
ALL = variants()
#: the opaque check on half the variants: every TLS 1.2 suite with http/1.1 (ALPN chosen in the clear
#: ServerHello) and every TLS 1.3 suite with h2 (chosen inside the encrypted EncryptedExtensions)
OPAQUE = [v for v in ALL if (v.suite.version == "TLS 1.2") == (v.alpn == "http/1.1")]
PARTIAL = [v for v in ALL if v.name in ("tls12-aes128gcm-h2", "tls13-aes128gcm-http1")]
MESSY = [v for v in ALL if v.name in ("tls13-aes256gcm-h2", "tls12-chacha-http1", "tls12-aes256cbc384-http1")]


@pytest.fixture(scope="module")
def lab() -> Iterator[KeyLab]:
    with key_lab() as the_lab:
        yield the_lab


def _complete(lab: KeyLab, variant: Variant) -> tuple[Path, Path]:
    cap = lab.capture(variant)
    assert cap.complete, f"{variant.name}: tcpdump lost packets, the comparison would be void: {cap.tcpdump}"
    return cap.pcap, cap.keylog


@pytest.mark.parametrize("variant", ALL, ids=lambda v: v.name)
@live
def test_keylog_decrypts_like_tshark(lab: KeyLab, variant: Variant) -> None:
    pcap, keys = _complete(lab, variant)
    oracle = tls_oracle(pcap, keys)
    truth = plan()
    check_variant(oracle, variant, truth)
    calls = podshark_dissect(pcap, keys)
    for t in truth:
        check_decrypted(calls, oracle.one(t.sni), t, variant.name)
    assert len(calls) == sum(len(t.exchanges) for t in truth), [c["target"] for c in calls]


@pytest.mark.parametrize("variant", OPAQUE, ids=lambda v: v.name)
@live
def test_without_keys_each_session_is_one_opaque_call(lab: KeyLab, variant: Variant) -> None:
    pcap, _keys = _complete(lab, variant)
    oracle = tls_oracle(pcap, None)
    check_variant(oracle, variant, plan())
    calls = podshark_dissect(pcap)
    assert len(calls) == len(oracle.conns)
    for conn in oracle.conns.values():
        check_opaque(calls, conn, f"{variant.name} without keys")


@pytest.mark.parametrize("variant", PARTIAL, ids=lambda v: v.name)
@live
def test_keys_for_one_connection_only(lab: KeyLab, variant: Variant, tmp_path: Path) -> None:
    """A key log that lacks one connection's lines: that connection is one opaque call, as tshark
    (which cannot decrypt it either) describes it; the other is decrypted in full."""
    pcap, keys = _complete(lab, variant)
    a, b = plan()
    full = tls_oracle(pcap, keys)
    part = keylog_for(keys, [full.one(a.sni).client_random or ""], tmp_path / "a-only.keys")
    assert len(keylog_lines(part)) < len(keylog_lines(keys))
    oracle = tls_oracle(pcap, part)
    assert not oracle.one(b.sni).decrypted, "tshark decrypted B without its keys: the key log was not cut"
    calls = podshark_dissect(pcap, part)
    check_decrypted(calls, oracle.one(a.sni), a, f"{variant.name} (A's keys only)")
    check_opaque(calls, tls_oracle(pcap, None).one(b.sni), f"{variant.name} (no keys for B)")


def messy(keys: Path, out: Path) -> Path:
    """The key log with everything a hand-edited or concatenated file has: a comment block, blank
    lines, CRLF endings, labels we do not know or do not support, a random of the wrong length,
    bad hex, a line with too few fields — around every real line (kept as it was)."""
    junk = [
        "# SSL/TLS secrets log file, copied from a laptop",
        "",
        "   ",
        "CLIENT_RANDOM 00112233 0011",
        "CLIENT_RANDOM " + "zz" * 32 + " " + "00" * 48,
        "UNKNOWN_LABEL " + "ab" * 32 + " " + "cd" * 32,
        "CLIENT_TRAFFIC_SECRET_0 " + "ab" * 32,
        "RSA 0011223344556677 " + "00" * 48,
        "\tCLIENT_HANDSHAKE_TRAFFIC_SECRET " + "12" * 31 + "g1 " + "34" * 32,
    ]
    lines: list[str] = []
    for i, line in enumerate(keylog_lines(keys)):
        lines.append(junk[i % len(junk)])
        lines.append(line)
    lines += junk
    out.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return out


@pytest.mark.parametrize("variant", MESSY, ids=lambda v: v.name)
@live
def test_keylog_with_garbage_lines_still_decrypts(lab: KeyLab, variant: Variant, tmp_path: Path) -> None:
    pcap, keys = _complete(lab, variant)
    oracle = tls_oracle(pcap, keys)  # tshark reads the clean key log
    calls = podshark_dissect(pcap, messy(keys, tmp_path / "messy.keys"))
    for t in plan():
        check_decrypted(calls, oracle.one(t.sni), t, f"{variant.name} (messy key log)")


# ------------------------------------------------------------------------------- without root


@pytest.mark.parametrize("fx", TLS_FIXTURES, ids=lambda f: f.file)
def test_keylog_fixtures(fx: Fixture) -> None:
    """The committed captures decrypt like tshark says, to the bodies the lab serves (by construction:
    the lab's site and POST body are seeded, so they are the bytes the capture was made with)."""
    pcap = TLS_DIR / fx.file
    keys = None if fx.keys is None else TLS_DIR / fx.keys
    oracle = tls_oracle(pcap, keys)  # a DSB capture: tshark reads the secrets from the file itself
    truth = plan(small=True)
    check_variant(oracle, fx.find_variant(), truth)
    calls = podshark_dissect(pcap, keys)
    for t in truth:
        check_decrypted(calls, oracle.one(t.sni), t, fx.file)
    assert len(calls) == sum(len(t.exchanges) for t in truth)


@pytest.mark.parametrize("fx", [f for f in TLS_FIXTURES if f.keys is not None], ids=lambda f: f.file)
def test_keylog_fixtures_without_keys_are_opaque(fx: Fixture) -> None:
    pcap = TLS_DIR / fx.file
    oracle = tls_oracle(pcap, None)
    calls = podshark_dissect(pcap)
    assert len(calls) == len(oracle.conns) == 2
    for conn in oracle.conns.values():
        check_opaque(calls, conn, f"{fx.file} without keys")


def test_missing_keylog_file_exits_2_with_one_line(tmp_path: Path) -> None:
    fx = TLS_FIXTURES[0]
    missing = tmp_path / "nonexistent.keys"
    res = subprocess.run(
        [sys.executable, "-m", "podshark", "dissect", str(TLS_DIR / fx.file), "--keylog", str(missing)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], res.stderr
    assert res.stdout == ""
