"""One GET against a running hub's JSON API, for the commands that print what a hub holds
(`podshark calls`, `podshark map`): the token, TLS, and every failure as one line with an exit code
(2 when the hub refused the request's parameters, 1 otherwise)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request

EXIT_FAIL = 1
EXIT_USAGE = 2


class HubError(Exception):
    """The hub could not answer: `str()` is the line to print, `code` the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def hub_get(
    hub: str,
    path: str,
    params: dict[str, str],
    token: str | None,
    context: ssl.SSLContext | None = None,
    *,
    has_cert: bool = False,
    timeout: float = 120,
) -> bytes:
    """The body of `GET {hub}{path}?{params}`. HubError with the hub's own reason for a refusal (its
    JSON `error`), the TLS fix for a certificate problem (`podshark.tlsconf.explain`), and "upgrade
    the hub" for an endpoint the hub does not have."""
    from podshark.tlsconf import explain, forbidden

    url = hub.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read()
        try:
            err = json.loads(detail)
        except ValueError:
            err = {"error": detail.decode(errors="replace")[:200]}
        if not isinstance(err, dict):
            err = {}
        if e.code == 404:
            msg = f"{hub} has no {path}: the hub is older than this podshark (upgrade the hub)"
        else:
            msg = forbidden() if e.code == 403 else str(err.get("error", e.reason))
        raise HubError(msg, EXIT_USAGE if e.code == 400 else EXIT_FAIL) from None
    except (urllib.error.URLError, OSError) as e:
        hint = explain(e, hub, has_cert=has_cert)
        raise HubError(hint or f"cannot reach the hub at {hub}: {getattr(e, 'reason', e)}") from None
