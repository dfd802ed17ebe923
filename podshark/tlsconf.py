"""TLS to the hub, for every command that talks to one: the options, the `ssl.SSLContext` built from
them, and one sentence naming the fix for each way TLS to the hub fails.

Clients (`calls`, `export`, `import`, `ui`, `doctor`) take `--ca FILE` (the CA that signed the hub's
certificate; without it an https:// hub is checked against the system's CAs) and `--cert FILE --key
FILE` (a client certificate, for a hub that wants one). The worker takes the same three as
`--hub-ca`, `--hub-cert`, `--hub-key`: its own `--tls` already means "trace TLS plaintext".

Why the explanations live here: a TLS failure surfaces as whatever exception the HTTP library
wraps it in (aiohttp's `ClientConnectorCertificateError`, urllib's `URLError`, a bare "Server
disconnected" when the hub drops a handshake whose client certificate it refused), and the text
OpenSSL puts in it names the symptom, not the option to change. `explain()` reads that text (the
worker's uplink only logs text) and answers with the option.

The hub's side (serving HTTPS, requiring client certificates) is `hub/tls.py`.
"""

from __future__ import annotations

import argparse
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509


class TlsConfigError(Exception):
    """A TLS option that cannot be used (a file that is missing or not PEM, a key that does not match
    its certificate); the message names the option and what to do."""


@dataclass(frozen=True)
class Flags:
    """How a command spells the three options, so messages name the ones the user can type."""

    ca: str = "--ca"
    cert: str = "--cert"
    key: str = "--key"


CLIENT_FLAGS = Flags()
WORKER_FLAGS = Flags("--hub-ca", "--hub-cert", "--hub-key")


def add_client_options(p: argparse.ArgumentParser, flags: Flags = CLIENT_FLAGS) -> None:
    """--ca, --cert, --key (or the worker's --hub-ca, --hub-cert, --hub-key)."""
    g = p.add_argument_group(
        "TLS to the hub",
        "for an https:// hub URL: the CA that signed the hub's certificate, and a client certificate "
        "when the hub requires one (podshark certs makes all three)",
    )
    g.add_argument(
        flags.ca,
        default=None,
        metavar="FILE",
        help="PEM CA certificate(s) to verify the hub with (default: the system's CAs)",
    )
    g.add_argument(flags.cert, default=None, metavar="FILE", help="PEM client certificate")
    g.add_argument(flags.key, default=None, metavar="FILE", help=f"PEM private key of {flags.cert}")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def client_context(args: argparse.Namespace, url: str, flags: Flags = CLIENT_FLAGS) -> ssl.SSLContext | None:
    """The context for `url` from the parsed options: None for an http:// URL (TlsConfigError if TLS
    options were given anyway), else a verifying context (hostname included) with the CA and the
    client certificate the options name."""
    ca = getattr(args, _dest(flags.ca), None)
    cert = getattr(args, _dest(flags.cert), None)
    key = getattr(args, _dest(flags.key), None)
    return build_client_context(url, ca, cert, key, flags)


def build_client_context(
    url: str,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    flags: Flags = CLIENT_FLAGS,
) -> ssl.SSLContext | None:
    """See `client_context`; the same from values."""
    https = url.strip().lower().startswith(("https://", "wss://"))
    given = [f for f, v in ((flags.ca, ca), (flags.cert, cert), (flags.key, key)) if v]
    if not https:
        if given:
            raise TlsConfigError(f"{', '.join(given)} need an https:// hub URL, not {url!r}")
        return None
    if key and not cert:
        raise TlsConfigError(f"{flags.key} needs {flags.cert} (the certificate of that key)")
    if ca:
        check_file(ca, flags.ca)
    try:
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TlsConfigError(
            f"{flags.ca} {ca} holds no usable PEM CA certificate ({_reason(e)}): "
            "pass ca.crt from podshark certs"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        load_pair(ctx, cert, key, flags)
    return ctx


def check_file(path: str, flag: str) -> None:
    """TlsConfigError unless `path` is a readable, non-empty file (said with the option's name)."""
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except FileNotFoundError:
        raise TlsConfigError(f"cannot read {flag} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{flag} {path} is a directory: name the PEM file") from None
    except OSError as e:
        raise TlsConfigError(f"cannot read {flag} {path}: {e.strerror}") from None
    if empty:
        raise TlsConfigError(f"{flag} {path} is empty: put the PEM file there (podshark certs makes them)")


def load_pair(ctx: ssl.SSLContext, cert: str, key: str | None, flags: Flags) -> None:
    """`ctx.load_cert_chain` with errors that name the option (TlsConfigError)."""
    check_file(cert, flags.cert)
    if key:
        check_file(key, flags.key)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            raise TlsConfigError(f"{flags.key} {key} is not the key of {flags.cert} {cert}") from None
        if not key:
            raise TlsConfigError(
                f"{flags.cert} {cert} holds no private key: pass {flags.key} with its key"
            ) from None
        raise TlsConfigError(
            f"{flags.cert} {cert} / {flags.key} {key} are not a PEM certificate and unencrypted key "
            f"({_reason(e)})"
        ) from None
    except OSError as e:
        raise TlsConfigError(f"cannot load {flags.cert} {cert}: {e.strerror or e}") from None


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    return str(reason) if reason else (str(e) or type(e).__name__)


# ---- explaining failures

_VERIFY = "CERTIFICATE_VERIFY_FAILED"
_HOST = re.compile(r"(Hostname|IP address) mismatch[^'\")\]]*")
_NOT_TLS = ("WRONG_VERSION_NUMBER", "record layer failure", "packet length too long")
_CLIENT_REFUSED = (
    "alert certificate required",
    "alert unknown ca",
    "alert bad certificate",
    "alert unsupported certificate",
    "alert certificate unknown",
    "alert handshake failure",
)
_DROPPED = (
    "Server disconnected",
    "RemoteDisconnected",
    "Remote end closed connection",
    "Connection reset",
    "ConnectionResetError",
    "UNEXPECTED_EOF",
    "EOF occurred in violation of protocol",
    "Broken pipe",
)


def _text(exc: BaseException | str) -> str:
    """Everything an exception (and what it wraps) says, as one string to search."""
    if isinstance(exc, str):
        return exc
    parts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(parts) < 16:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        parts += [type(e).__name__, str(e), repr(e)]
        for attr in ("reason", "certificate_error", "os_error", "__cause__", "__context__"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
            elif isinstance(inner, str):
                parts.append(inner)
    return " ".join(parts)


def _verify_detail(text: str) -> str:
    m = re.search(r"certificate verify failed: ([^(')\]]+)", text)
    return m.group(1).strip() if m else "certificate verify failed"


def explain(
    exc: BaseException | str,
    url: str,
    flags: Flags = CLIENT_FLAGS,
    *,
    has_cert: bool = False,
) -> str | None:
    """One sentence naming the fix when `exc` (an exception, or the text of one) is a TLS problem
    between this client and the hub at `url`; None when it is not (the caller's own message stands).
    `has_cert`: whether this client presented a certificate."""
    text = _text(exc)
    https = url.strip().lower().startswith(("https://", "wss://"))
    if _VERIFY in text or "SSLCertVerificationError" in text:
        detail = _verify_detail(text)
        host = _HOST.search(text)
        if host:
            return (
                f"the hub's certificate does not name the host in {url} ({host.group(0).strip()}): use a "
                "name it has, or re-issue it with podshark certs --hub-name HOST --force"
            )
        if "expired" in detail:
            return (
                "the hub's certificate has expired: issue a new one (podshark certs --force) and restart "
                "the hub"
            )
        return (
            f"the hub's certificate is not trusted ({detail}): pass {flags.ca} with the CA that signed it "
            "(ca.crt from podshark certs)"
        )
    lowered = text.lower()
    if https and any(m.lower() in lowered for m in _NOT_TLS):
        return "the hub does not speak TLS on this port: use an http:// URL, or start the hub with --tls-cert"
    if any(m in lowered for m in _CLIENT_REFUSED):
        return _refused(flags, has_cert)
    if any(m.lower() in lowered for m in _DROPPED):
        if https and has_cert:
            return (
                f"the hub closed the connection during TLS: if this repeats, it does not accept {flags.cert} "
                "(not issued by its --client-ca, or without extendedKeyUsage clientAuth); its log says which"
            )
        if not https:
            return (
                "the hub closed the connection: if it serves HTTPS (started with --tls-cert), use an "
                f"https:// URL and {flags.ca}"
            )
    return None


def _refused(flags: Flags, has_cert: bool) -> str:
    if not has_cert:
        return (
            f"the hub requires a client certificate: pass {flags.cert} and {flags.key} issued by its "
            "--client-ca (podshark certs --client NAME)"
        )
    return (
        f"the hub refused {flags.cert}: use one issued by its --client-ca with extendedKeyUsage "
        "clientAuth (podshark certs --worker NAME or --client NAME)"
    )


def forbidden(flags: Flags = CLIENT_FLAGS) -> str:
    """What a 403 from a hub means: it wants a client certificate where this client sent none (or
    none it accepted)."""
    return (
        f"the hub requires a client certificate here (403): pass {flags.cert} and {flags.key} issued by "
        "its --client-ca (podshark certs)"
    )


def uplink_explainer(url: str, has_cert: bool) -> Callable[[BaseException | str], str | None]:
    """The worker uplink's `explain` hook (`capture.uplink.Uplink`): the fix for a failed hub
    connection in the worker's option names. A 403 on ingest means the hub wants a client
    certificate (the TLS layer itself refuses a bad one)."""

    def explain_failure(failure: BaseException | str) -> str | None:
        if getattr(failure, "status", None) == 403:
            return (
                f"it requires a client certificate for ingest: pass {WORKER_FLAGS.cert} and "
                f"{WORKER_FLAGS.key} issued by its --client-ca (podshark certs)"
            )
        return explain(failure, url, WORKER_FLAGS, has_cert=has_cert)

    return explain_failure


def client_cert_warnings(cert: str, ca: str | None, flags: Flags = CLIENT_FLAGS) -> list[str]:
    """What makes a hub that requires client certificates refuse `cert`, found before connecting:
    no extendedKeyUsage clientAuth, expired, or (when `ca` is given, and podshark certs used one CA
    for both sides) not issued by `ca`. Warnings, not errors: the hub's --client-ca may be another CA."""
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        with open(cert, "rb") as f:
            leaf = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return []  # load_pair has already said what is wrong with the file
    out = []
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        out.append(
            f"{flags.cert} {cert} has no extendedKeyUsage clientAuth (a server certificate?): a hub with "
            "--client-ca refuses it; use one from podshark certs --worker NAME or --client NAME"
        )
    if leaf.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        out.append(f"{flags.cert} {cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}: issue a new one")
    if ca:
        try:
            with open(ca, "rb") as f:
                authorities = x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError):
            return out
        if not any(_issued_by(leaf, a) for a in authorities):
            out.append(
                f"{flags.cert} {cert} is not issued by {flags.ca} {ca}: a hub whose --client-ca is that CA "
                "refuses it"
            )
    return out


def _issued_by(leaf: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(authority)
    except Exception:  # ValueError, TypeError, InvalidSignature: not this one
        return False
    return True
