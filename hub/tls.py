"""HTTPS for the hub, and the client certificates it can require.

`server_context(cert, key, client_ca)` builds the listening socket's TLS context. With a client CA
the hub *asks* every client for a certificate (CERT_OPTIONAL) instead of demanding one: OpenSSL then
refuses, during the handshake, any certificate that does not chain to that CA or lacks
extendedKeyUsage clientAuth (its "ssl_client" purpose check), while a client that presents none
still gets in. Which endpoints need one is decided per request by `middleware(scope)`:

* `ingest` (the default with a client CA): only what workers use, the ingest WebSocket
  (`WORKER_PATHS`), so people and scripts with the token but no certificate keep the read API;
* `all`: every endpoint except /healthz and /readyz, which hold nothing and which the kubelet
  probes without a certificate.

A refusal is a 403 whose JSON error says what to present, and one line in the hub's log. The bearer
token (`hub/auth.py`) is required as well; the two checks are independent.

Refusals at the TLS layer happen inside asyncio's SSL protocol, which drops them silently (it logs
OSErrors only in debug mode). `server_context` therefore installs an `SSLObject` subclass (the
documented `SSLContext.sslobject_class` hook) whose handshake logs why it failed, at most one line
per reason per `LOG_EVERY` seconds so a worker retrying with a bad certificate cannot flood the log.
asyncio hands the protocol no peer address at that point, so those lines name the reason, not the
client; the client's own output names itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger("podshark.hub.tls")

SCOPES = ("ingest", "all")
WORKER_PATHS = frozenset({"/api/v1/ingest"})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
LOG_EVERY = 30.0  # seconds between two log lines of the same refusal reason
EXPIRY_WARNING = dt.timedelta(days=14)
FORBIDDEN = (
    "a client certificate is required here: connect with one issued by the hub's --client-ca "
    "(podshark certs; --cert/--key for clients, --hub-cert/--hub-key for workers)"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TlsSetupError(Exception):
    """A certificate, key or CA file the hub cannot serve with; the message names the option."""


class RateLimitedLog:
    """One log line per distinct message per `every` seconds, with how many were held back.
    Thread-safe (TLS handshakes run on the event loop, but nothing here assumes it); bounded to
    `max_keys` distinct messages."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY, max_keys: int = 64) -> None:
        self.logger = logger
        self.every = every
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}  # message -> (last logged, held back since)
        self._lock = threading.Lock()

    def warning(self, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(message, (-1e18, 0))
            if now - last < self.every:
                self._last[message] = (last, held + 1)
                return
            if message not in self._last and len(self._last) >= self.max_keys:
                self._last.pop(next(iter(self._last)))  # the oldest message seen
            self._last[message] = (now, 0)
        self.logger.warning("%s%s", message, f" ({held} more since the last such line)" if held else "")


def refusal_reason(e: ssl.SSLError) -> str | None:
    """One line for the hub's log about a failed TLS handshake; None for a client that just went
    away mid-handshake (port scanners, TCP health checks)."""
    if isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return None
    reason = str(getattr(e, "reason", "") or "")
    verify = str(getattr(e, "verify_message", "") or "")
    if isinstance(e, ssl.SSLCertVerificationError) or reason == "CERTIFICATE_VERIFY_FAILED":
        if "purpose" in verify:
            return (
                "TLS: refused a client certificate without extendedKeyUsage clientAuth (a server "
                "certificate?): issue the client one with podshark certs --worker NAME or --client NAME"
            )
        if "expired" in verify:
            return "TLS: refused an expired client certificate: issue the client a new one (podshark certs)"
        return (
            f"TLS: refused a client certificate not issued by --client-ca ({verify or reason}): issue the "
            "client one from that CA (podshark certs --out DIR-of-that-CA --worker NAME)"
        )
    if reason == "HTTP_REQUEST":
        return "TLS: a client spoke plain HTTP to this HTTPS port: it must use an https:// URL"
    if "ALERT" in reason:
        return (
            f"TLS: a client refused the hub's certificate ({reason.lower()}): give it the CA that signed "
            "--tls-cert (its --ca, or --hub-ca for workers)"
        )
    if reason in ("WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "NO_SHARED_CIPHER"):
        return f"TLS: a client's handshake could not be served ({reason.lower()}); it needs TLS 1.2 or newer"
    return f"TLS: a handshake failed ({reason or e})"


def _logging_sslobject(limited: RateLimitedLog) -> type[ssl.SSLObject]:
    class HandshakeLogged(ssl.SSLObject):
        """An SSLObject whose failed handshake says why in the hub's log (see the module docstring)."""

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as e:
                why = refusal_reason(e)
                if why:
                    limited.warning(why)
                raise

    return HandshakeLogged


def _x509(path: str, flag: str) -> Any:
    from cryptography import x509

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TlsSetupError(f"cannot read {flag} {path}: no such file") from None
    except OSError as e:
        raise TlsSetupError(f"cannot read {flag} {path}: {e.strerror}") from None
    if not data.strip():
        raise TlsSetupError(f"{flag} {path} is empty: put the PEM file there (podshark certs makes it)")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TlsSetupError(f"{flag} {path} is not a PEM certificate (podshark certs makes one)") from None


def _check_server_cert(path: str, now: dt.datetime | None = None) -> None:
    """Refuse what every client would refuse: an expired certificate, one not yet valid, or one
    whose extendedKeyUsage leaves out serverAuth. Warn when it expires soon."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert = _x509(path, "--tls-cert")
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        raise TlsSetupError(
            f"--tls-cert {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: issue a new one "
            "(podshark certs --out DIR --force)"
        )
    if cert.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise TlsSetupError(
            f"--tls-cert {path} is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: is "
            "this machine's clock right?"
        )
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise TlsSetupError(
            f"--tls-cert {path} is not a server certificate (no extendedKeyUsage serverAuth): use hub.crt "
            "from podshark certs"
        )
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        log.warning(
            "--tls-cert %s expires on %s: issue a new one soon (podshark certs --force)",
            path,
            f"{cert.not_valid_after_utc:%Y-%m-%d}",
        )


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """The hub's TLS context: TLS 1.2+, `cert`/`key` served, and with `client_ca` client
    certificates requested and verified against it (see the module docstring). TlsSetupError
    with one line naming the option for anything unusable."""
    _check_server_cert(cert)
    try:
        with open(key, "rb") as f:
            if not f.read(1):
                raise TlsSetupError(f"--tls-key {key} is empty: put the PEM key there")
    except FileNotFoundError:
        raise TlsSetupError(f"cannot read --tls-key {key}: no such file") from None
    except OSError as e:
        raise TlsSetupError(f"cannot read --tls-key {key}: {e.strerror}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            raise TlsSetupError(f"--tls-key {key} is not the key of --tls-cert {cert}") from None
        raise TlsSetupError(
            f"--tls-key {key} is not an unencrypted PEM private key ({getattr(e, 'reason', None) or e})"
        ) from None
    if client_ca is not None:
        _x509(client_ca, "--client-ca")  # readable, and PEM
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as e:
            raise TlsSetupError(f"--client-ca {client_ca}: cannot load it ({e})") from None
        if not ctx.cert_store_stats().get("x509_ca"):
            raise TlsSetupError(
                f"--client-ca {client_ca} holds no CA certificate (basicConstraints CA:TRUE): pass the "
                "ca.crt of podshark certs"
            )
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.sslobject_class = _logging_sslobject(RateLimitedLog(log))
    return ctx


def peer_certificate(request: web.Request) -> dict[str, Any] | None:
    """The client's certificate as the TLS layer verified it, or None (none presented, no TLS)."""
    transport = request.transport
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    return cert if isinstance(cert, dict) and cert else None


def needs_certificate(path: str, scope: str) -> bool:
    if scope == "all":
        return path not in OPEN_PATHS
    return path in WORKER_PATHS


def middleware(scope: str) -> Middleware:
    """Refuse with 403 the requests `scope` covers that came without a verified client certificate.
    Only meaningful on a hub serving TLS with a client CA (without one, no certificate is ever
    verified and every covered request would be refused)."""
    if scope not in SCOPES:
        raise ValueError(f"client certificate scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    limited = RateLimitedLog(log)

    @web.middleware
    async def client_certificate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if needs_certificate(request.path, scope) and peer_certificate(request) is None:
            limited.warning(
                f"refused {request.method} {request.path} from {request.remote}: no client certificate "
                "(403); workers need --hub-cert/--hub-key issued by --client-ca"
            )
            return web.json_response({"error": FORBIDDEN}, status=403)
        return await handler(request)

    return client_certificate
