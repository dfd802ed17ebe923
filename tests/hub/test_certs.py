"""`podshark certs`: what it writes, judged by OpenSSL rather than by our own code.

`openssl verify` decides whether each leaf chains to the CA and is fit for its purpose
(`-purpose sslserver` / `sslclient` check extendedKeyUsage and keyUsage the way TLS stacks do);
`openssl x509 -text` shows the SANs, key usages, basic constraints and curve; the validity window
is compared with what the test asked for (`--days`). Re-runs, `--force` and bad input are checked
against the bytes on disk.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podshark", "certs", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=False)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def text(path: Path) -> str:
    return openssl("x509", "-in", str(path), "-noout", "-text").stdout


def end_date(path: Path) -> dt.datetime:
    out = openssl("x509", "-in", str(path), "-noout", "-enddate").stdout.strip()
    return dt.datetime.strptime(out.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)


def verify(ca: Path, leaf: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    return openssl("verify", "-CAfile", str(ca), "-purpose", purpose, str(leaf), check=False)


def test_a_ca_a_hub_certificate_and_client_certificates_that_openssl_accepts(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    r = certs("--out", str(out), "--hub-name", "hub.example.test", "--hub-name", "10.1.2.3",
              "--worker", "node-a", "--worker", "node-b", "--client", "alice", "--days", "30")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ca = out / "ca.crt"
    for leaf in ("hub", "node-a", "node-b", "alice"):
        assert (out / f"{leaf}.crt").exists() and (out / f"{leaf}.key").exists(), leaf
    assert not (out / "podshark-worker.crt").exists()  # --worker names replace the default one

    # chains and purposes, as TLS stacks judge them
    assert verify(ca, out / "hub.crt", "sslserver").returncode == 0
    assert verify(ca, out / "hub.crt", "sslclient").returncode != 0  # a server certificate only
    for client in ("node-a", "node-b", "alice"):
        assert verify(ca, out / f"{client}.crt", "sslclient").returncode == 0, client
        assert verify(ca, out / f"{client}.crt", "sslserver").returncode != 0, client

    ca_text = text(ca)
    assert re.search(r"Basic Constraints: critical\s+CA:TRUE, pathlen:0", ca_text), ca_text
    assert re.search(r"Key Usage: critical\s+Certificate Sign, CRL Sign", ca_text), ca_text
    assert "ASN1 OID: prime256v1" in ca_text and "ecdsa-with-SHA256" in ca_text

    hub = text(out / "hub.crt")
    san = re.search(r"Subject Alternative Name:\s*\n\s*(.+)", hub)
    assert san is not None, hub
    assert set(san.group(1).strip().split(", ")) == {
        "DNS:hub.example.test", "IP Address:10.1.2.3", "DNS:localhost", "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    }  # fmt: skip
    assert re.search(r"Extended Key Usage:\s*\n\s*TLS Web Server Authentication\s*\n", hub), hub
    assert re.search(r"Key Usage: critical\s+Digital Signature\s*\n", hub), hub
    assert re.search(r"Basic Constraints: critical\s+CA:FALSE", hub), hub
    worker = text(out / "node-a.crt")
    assert re.search(r"Extended Key Usage:\s*\n\s*TLS Web Client Authentication\s*\n", worker), worker
    assert "CN = node-a" in worker and "Subject Alternative Name" not in worker

    # validity: --days for leaves, 3650 days for the CA, from about now
    now = dt.datetime.now(dt.UTC)
    for leaf in ("hub", "node-a", "alice"):
        assert abs(end_date(out / f"{leaf}.crt") - (now + dt.timedelta(days=30))) < dt.timedelta(hours=1)
    assert abs(end_date(ca) - (now + dt.timedelta(days=3650))) < dt.timedelta(hours=1)
    assert openssl("x509", "-in", str(out / "hub.crt"), "-noout", "-checkend", "0").returncode == 0

    # each key belongs to its certificate
    for leaf in ("ca", "hub", "node-b", "alice"):
        from_cert = openssl("x509", "-in", str(out / f"{leaf}.crt"), "-noout", "-pubkey").stdout
        from_key = openssl("pkey", "-in", str(out / f"{leaf}.key"), "-pubout").stdout
        assert from_cert == from_key, leaf

    # permissions: keys for their owner only
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for f in out.iterdir():
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == (0o600 if f.suffix == ".key" else 0o644), (f.name, oct(mode))

    # what it printed: every file, and commands that name them
    for name in ("ca.crt", "hub.key", "node-b.crt", "alice.key"):
        assert name in r.stdout, r.stdout
    assert f"--tls-cert {out.resolve()}/hub.crt" in r.stdout
    assert f"--client-ca {out.resolve()}/ca.crt" in r.stdout
    assert "podshark worker --hub https://hub.example.test:8898" in r.stdout
    assert f"--cert {out.resolve()}/alice.crt" in r.stdout


def test_a_rerun_reuses_the_ca_and_keeps_files_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert certs("--out", str(out)).returncode == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert set(before) == {"ca.crt", "ca.key", "hub.crt", "hub.key", "podshark-worker.crt",
                           "podshark-worker.key"}  # fmt: skip

    r = certs("--out", str(out), "--worker", "node-c")
    assert r.returncode == 0, r.stderr
    assert "reused" in r.stdout and "kept" in r.stdout
    for name, data in before.items():  # nothing existing was touched
        assert (out / name).read_bytes() == data, name
    assert verify(out / "ca.crt", out / "node-c.crt", "sslclient").returncode == 0  # the same CA

    r = certs("--out", str(out), "--force", "--hub-name", "new.example.test")
    assert r.returncode == 0, r.stderr
    assert (out / "ca.crt").read_bytes() == before["ca.crt"]  # never the CA
    assert (out / "ca.key").read_bytes() == before["ca.key"]
    assert (out / "hub.crt").read_bytes() != before["hub.crt"]
    assert (out / "podshark-worker.key").read_bytes() != before["podshark-worker.key"]
    assert "DNS:new.example.test" in text(out / "hub.crt")
    assert verify(out / "ca.crt", out / "hub.crt", "sslserver").returncode == 0
    assert stat.S_IMODE((out / "hub.key").stat().st_mode) == 0o600  # replaced files keep the modes

    # a kept hub certificate that lacks a newly asked name is said, not silently kept
    r = certs("--out", str(out), "--hub-name", "other.example.test")
    assert r.returncode == 0 and "does not name other.example.test" in r.stdout, r.stdout


def test_broken_or_half_existing_files_are_refused_with_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert certs("--out", str(out)).returncode == 0
    (out / "hub.key").unlink()
    r = certs("--out", str(out))
    assert r.returncode == 1 and "hub.crt exists without its pair" in r.stderr and "--force" in r.stderr
    assert certs("--out", str(out), "--force").returncode == 0
    assert (out / "hub.key").exists()

    other = tmp_path / "other"
    assert certs("--out", str(other)).returncode == 0
    shutil.copy(other / "ca.key", out / "ca.key")  # a CA key that is not this CA's
    r = certs("--out", str(out), "--worker", "x")
    assert r.returncode == 1 and "is not the key of" in r.stderr, r.stderr
    assert not (out / "x.crt").exists()

    (out / "ca.key").unlink()
    r = certs("--out", str(out))
    assert r.returncode == 1 and "ca.crt exists but" in r.stderr and str(out / "ca.key") in r.stderr

    (out / "ca.crt").write_text("not a certificate\n")
    (out / "ca.key").write_text("not a key\n")
    r = certs("--out", str(out))
    assert r.returncode == 1 and "not a PEM certificate" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--worker", "ca"], "cannot name a certificate"),
        (["--client", "../etc/x"], "cannot name a certificate"),
        (["--hub-name", "bad name"], "neither an IP address nor a DNS name"),
        (["--days", "0"], "at least 1"),
        (["--worker", "n", "--client", "n"], "both a --worker and a --client"),
    ],
)
def test_bad_options_exit_2_saying_why(tmp_path: Path, args: list[str], message: str) -> None:
    r = certs("--out", str(tmp_path / "pki"), *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "pki").exists()  # refused before anything was written


def test_help_explains_the_files_and_options() -> None:
    r = certs("--help")
    assert r.returncode == 0
    for word in ("--hub-name", "--worker", "--client", "--days", "--force", "0600", "reused"):
        assert word in r.stdout, word


def test_keys_are_never_readable_by_others_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        r = certs("--out", str(tmp_path / "pki"))
    finally:
        os.umask(old)
    assert r.returncode == 0
    for key in (tmp_path / "pki").glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
