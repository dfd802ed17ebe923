"""Bearer-token auth for the hub: every endpoint but /healthz and /readyz needs a bearer token.

The token comes from `PODSHARK_TOKEN` or a token file (`--token-file`), for the hub and for every
client command alike (`token_from`). Without a token the hub refuses to start, unless it listens on
loopback and was told `--insecure-no-token` (`check_startup`). Comparison is constant-time
(`hmac.compare_digest` over the UTF-8 bytes), and a refusal is a 401 with a JSON error body.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

TOKEN_ENV = "PODSHARK_TOKEN"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthError(Exception):
    """A token setup the hub or a client refuses (message for the user)."""


def token_from(
    token_file: str | os.PathLike[str] | None, environ: dict[str, str] | None = None
) -> str | None:
    """The token: the file's content (stripped) if a file is given, else PODSHARK_TOKEN, else None."""
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            text = Path(token_file).read_text().strip()
        except OSError as e:
            raise AuthError(f"cannot read token file {token_file}: {e.strerror}") from None
        if not text:
            raise AuthError(f"token file {token_file} is empty")
        return text
    text = env.get(TOKEN_ENV, "").strip()
    return text or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_startup(token: str | None, host: str, insecure_no_token: bool) -> None:
    """Raise AuthError when the hub must not start with this token setup."""
    if token is not None:
        return
    if not insecure_no_token:
        raise AuthError(
            f"no token: set {TOKEN_ENV} or pass --token-file (or --insecure-no-token on loopback)"
        )
    if not is_loopback(host):
        raise AuthError(f"--insecure-no-token is only allowed on a loopback address, not {host}")


def authorized(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def middleware(token: str | None) -> Middleware:
    """An aiohttp middleware; `token=None` (loopback with --insecure-no-token) lets everything in."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            token is not None
            and request.path not in OPEN_PATHS
            and not authorized(request.headers.get("Authorization"), token)
        ):
            return web.json_response(
                {"error": "unauthorized: send 'Authorization: Bearer <token>'"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="podshark"'},
            )
        return await handler(request)

    return auth
