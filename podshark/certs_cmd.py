"""`podshark certs --out DIR`: a private CA, the hub's server certificate and client certificates.

    podshark certs --out certs --hub-name hub.example.internal --hub-name 10.0.0.5
    podshark certs --out certs --worker node-7            # later: one more worker, same CA
    podshark certs --out certs --client alice             # a person, when the hub wants certs everywhere

What it makes, and why so:

* ECDSA P-256 keys with SHA-256 signatures: small, fast to make and to verify on a busy hub, and
  accepted by every TLS stack a worker or a client might use (OpenSSL, Go, browsers, curl).
* `ca.crt`/`ca.key`: a CA (basicConstraints CA:TRUE, pathlen 0, keyCertSign+cRLSign) that only
  signs leaves. When DIR already holds one, it is reused, so certificates issued later (a new
  worker, a renewed hub certificate) chain to the CA every component already trusts.
* `hub.crt`/`hub.key`: the hub's server certificate (extendedKeyUsage serverAuth) for the names in
  `--hub-name` plus localhost, 127.0.0.1 and ::1, so a `kubectl port-forward` URL verifies too.
* `NAME.crt`/`NAME.key` for each `--worker NAME` (default one, `podshark-worker`) and `--client
  NAME`: client certificates (extendedKeyUsage clientAuth), what the hub's `--client-ca` demands.

Keys are written mode 0600, certificates 0644, each through a temporary file renamed into place, so
a crash never leaves half a key. A file that exists is kept unless `--force` (the CA is always kept:
replacing it would orphan every certificate it signed; use another directory for a new CA).

The library half (`new_authority`, `issue`, the PEM helpers) is also what `podshark tap` uses to
make the certificates of its Secret in memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

EXIT_FAIL = 1
EXIT_USAGE = 2
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest server certificate lifetime browsers and OS trust stores ever allowed
DEFAULT_WORKER = "podshark-worker"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # for a port-forwarded hub
BACKDATE = dt.timedelta(minutes=5)  # a node whose clock is a little behind still accepts a new cert
RESERVED = frozenset({"ca", "hub"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class CertsError(Exception):
    """A certificate request or an existing file podshark cannot use; the message says what to do."""


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its private key (ours are ECDSA; an existing RSA CA is used as it is)."""

    cert: x509.Certificate
    key: EllipticCurvePrivateKey | RSAPrivateKey


@dataclass(frozen=True)
class Leaf:
    """An issued certificate and its private key."""

    cert: x509.Certificate
    key: EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def new_authority(
    common_name: str = "podshark CA", days: int = CA_DAYS, now: dt.datetime | None = None
) -> Authority:
    """A fresh self-signed CA that may sign leaves only (pathlen 0)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    if days < 1:
        raise CertsError("the CA's validity must be at least 1 day")
    now = now or _now()
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podshark"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(
    ca: Authority,
    purpose: str,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    days: int = LEAF_DAYS,
    now: dt.datetime | None = None,
) -> Leaf:
    """A leaf signed by `ca`: `purpose` "server" (serverAuth, SANs = `hosts`: DNS names and IP
    addresses) or "client" (clientAuth). Never valid past the CA's own end."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if purpose not in ("server", "client"):
        raise ValueError(f"purpose must be 'server' or 'client', not {purpose!r}")
    if days < 1:
        raise CertsError("a certificate's validity must be at least 1 day")
    now = now or _now()
    end = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    if end <= now:
        raise CertsError("the CA has expired: make a new one in another directory (podshark certs --out NEW)")
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podshark"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, ca.cert.not_valid_before_utc))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,  # ECDHE with ECDSA: the key only signs the handshake
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if purpose == "server" else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
    return Leaf(builder.sign(ca.key, hashes.SHA256()), key)


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):  # de-duplicated, order kept
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def check_host(text: str) -> str:
    """A --hub-name: an IP address or a DNS name (a leading `*.` wildcard allowed)."""
    h = text.strip().rstrip(".")
    try:
        return str(ipaddress.ip_address(h.strip("[]")))
    except ValueError:
        pass
    labels = h.split(".")
    if labels and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if not h or len(h) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an IP address nor a DNS name (letters, digits, '-' and dots)"
        )
    return h


def check_name(text: str) -> str:
    """A --worker/--client NAME: the certificate's common name and its files' stem."""
    if not _NAME.fullmatch(text) or text.lower() in RESERVED:
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot name a certificate: use letters, digits, '.', '_' and '-' (at most 64, "
            "not starting with a dot or dash), and not 'ca' or 'hub'"
        )
    return text


# ---- PEM


def cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def key_pem(key: EllipticCurvePrivateKey | RSAPrivateKey) -> bytes:
    """PKCS#8, unencrypted: the hub and workers start unattended, so the file's mode protects it."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    """An existing CA; CertsError when the files are not a CA certificate and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as e:
        raise CertsError(f"cannot read the CA in {cert_path.parent}: {e.strerror} ({e.filename})") from None
    except (ValueError, TypeError) as e:
        raise CertsError(
            f"{cert_path} / {key_path} are not a PEM certificate and unencrypted key ({e}); move them away "
            "or use another --out directory"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertsError(f"{key_path}: a CA key must be ECDSA or RSA, not {type(key).__name__}")
    if cert.public_key() != key.public_key():
        raise CertsError(f"{key_path} is not the key of {cert_path}: put the matching pair back")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CertsError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE)")
    if cert.not_valid_after_utc <= _now():
        raise CertsError(
            f"the CA in {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: make a new one in "
            "another directory and re-issue every certificate"
        )
    return Authority(cert, key)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode` through a temporary file renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---- the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the files")
    p.add_argument(
        "--hub-name",
        action="append",
        default=[],
        type=check_host,
        metavar="NAME",
        help="a DNS name or IP address workers and clients use to reach the hub (repeatable); "
        "localhost, 127.0.0.1 and ::1 are always added, for port-forwards",
    )
    p.add_argument(
        "--worker",
        action="append",
        default=[],
        type=check_name,
        metavar="NAME",
        help=f"a worker client certificate NAME.crt/.key (repeatable; default one, {DEFAULT_WORKER})",
    )
    p.add_argument(
        "--client",
        action="append",
        default=[],
        type=check_name,
        metavar="NAME",
        help="a client certificate for a person or script (repeatable), for a hub started with "
        "--client-cert-required-for all",
    )
    p.add_argument(
        "--days",
        type=int,
        default=LEAF_DAYS,
        metavar="N",
        help=f"validity of the hub and client certificates (default {LEAF_DAYS})",
    )
    p.add_argument(
        "--ca-days", type=int, default=CA_DAYS, metavar="N", help=f"validity of a new CA (default {CA_DAYS})"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace existing hub/worker/client files (never the CA: it is reused while it is valid)",
    )


def _describe(cert: x509.Certificate) -> str:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    until = f"valid until {cert.not_valid_after_utc:%Y-%m-%d}"
    return f"{', '.join(names)}; {until}" if names else until


def _existing_sans(path: Path) -> list[str] | None:
    """The SANs of the certificate in `path`, in order; None when it cannot be read."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return [str(n.value) for n in san]


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.days < 1 or args.ca_days < 1:
        print("podshark: error: --days and --ca-days must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    workers = list(dict.fromkeys(args.worker or [DEFAULT_WORKER]))
    clients = list(dict.fromkeys(args.client))
    clash = set(workers) & set(clients)
    if clash:
        both = ", ".join(sorted(clash))
        print(f"podshark: error: {both} is both a --worker and a --client", file=sys.stderr)
        return EXIT_USAGE
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        print(f"podshark: error: cannot create {out}: {e.strerror}", file=sys.stderr)
        return EXIT_FAIL
    try:
        return _run(args, out, workers, clients)
    except CertsError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as e:
        print(f"podshark: error: cannot write in {out}: {e.strerror} ({e.filename})", file=sys.stderr)
        return EXIT_FAIL


def _run(args: argparse.Namespace, out: Path, workers: list[str], clients: list[str]) -> int:
    ca_crt, ca_key = out / "ca.crt", out / "ca.key"
    lines: list[str] = []
    if ca_crt.exists() and ca_key.exists():
        ca = load_authority(ca_crt, ca_key)
        lines.append(f"  reused  ca.crt, ca.key: the CA ({_describe(ca.cert)})")
        if ca_key.stat().st_mode & 0o077:
            lines.append(f"  warning: {ca_key} is readable by others: chmod 600 {ca_key}")
    elif ca_crt.exists() or ca_key.exists():
        have, missing = (ca_crt, ca_key) if ca_crt.exists() else (ca_key, ca_crt)
        raise CertsError(f"{have} exists but {missing} does not: put it back, or use another --out directory")
    else:
        ca = new_authority(days=args.ca_days)
        write_file(ca_key, key_pem(ca.key), 0o600)
        write_file(ca_crt, cert_pem(ca.cert), 0o644)
        lines.append(f"  created ca.crt, ca.key: the CA ({_describe(ca.cert)})")

    hosts = list(dict.fromkeys([*args.hub_name, *LOOPBACK_NAMES]))
    wanted: list[tuple[str, str, str, list[str]]] = [("hub", "server", "hub", hosts)]
    wanted += [(name, "client", "worker", []) for name in workers]
    wanted += [(name, "client", "client", []) for name in clients]
    for stem, purpose, role, sans in wanted:
        crt, key = out / f"{stem}.crt", out / f"{stem}.key"
        label = f"{stem}.crt, {stem}.key:"
        if (crt.exists() or key.exists()) and not args.force:
            if not (crt.exists() and key.exists()):
                have = crt if crt.exists() else key
                raise CertsError(
                    f"{have} exists without its pair: remove it, or pass --force to re-issue both"
                )
            lines.append(f"  kept    {label} the {role} (exists; --force issues a new one)")
            if role == "hub" and args.hub_name:
                have_sans = set(_existing_sans(crt) or ())
                if not set(hosts) <= have_sans:
                    absent = ", ".join(h for h in hosts if h not in have_sans)
                    lines.append(
                        f"  warning: the kept hub.crt does not name {absent}: --force issues one that does"
                    )
            continue
        leaf = issue(ca, purpose, "podshark-hub" if role == "hub" else stem, hosts=sans, days=args.days)
        write_file(key, key_pem(leaf.key), 0o600)
        write_file(crt, cert_pem(leaf.cert), 0o644)
        lines.append(f"  created {label} the {role} ({_describe(leaf.cert)})")

    print(f"podshark certs: in {out}")
    print("\n".join(lines))
    named = [h for h in _existing_sans(out / "hub.crt") or () if h not in LOOPBACK_NAMES]
    hub_name = named[0] if named else "localhost"  # a name the hub.crt on disk really has
    print(_next_steps(out.resolve(), hub_name, workers, clients))
    return 0


def _next_steps(d: Path, hub_name: str, workers: list[str], clients: list[str]) -> str:
    host = f"[{hub_name}]" if ":" in hub_name else hub_name
    url = f"https://{host}:8898"
    w = workers[0]
    lines = [
        "next:",
        f"  podshark hub --db DB --listen 0.0.0.0:8898 --tls-cert {d}/hub.crt --tls-key {d}/hub.key "
        f"--client-ca {d}/ca.crt",
        f"  podshark worker --hub {url} --hub-ca {d}/ca.crt --hub-cert {d}/{w}.crt --hub-key {d}/{w}.key",
        f"  podshark ui --hub {url} --ca {d}/ca.crt      (calls, export, import, doctor: the same --ca)",
    ]
    if clients:
        c = clients[0]
        lines.append(
            f"  with --client-cert-required-for all, clients add: --cert {d}/{c}.crt --key {d}/{c}.key"
        )
    lines.append(
        "  in Kubernetes without `podshark tap` (manifests/): kubectl -n podshark create secret generic "
        f"podshark-tls --from-file={d}/ca.crt --from-file={d}/hub.crt --from-file={d}/hub.key "
        f"--from-file=worker.crt={d}/{w}.crt --from-file=worker.key={d}/{w}.key"
    )
    return "\n".join(lines)
