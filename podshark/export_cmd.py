"""`podshark export --hub URL [--from T --to T] [--filter EXPR] -o OUT.pcapng`: a hub's frames of
the matching calls' connections, as a pcapng file for Wireshark or tshark.

Streams `GET /api/v1/export` to `OUT.pcapng.partial` and renames it only once the stream ended
cleanly, so a dropped connection never leaves a file that looks complete. While it streams, the
blocks are walked (`BlockCounter`: 8 bytes of header per block, nothing parsed beyond) to count the
frames actually written and to notice a stream cut inside a block; the count is what the last line
reports, and the progress bar on stderr measures it against the hub's `X-Podshark-*` headers.
An https:// hub is verified with `--ca` (`--cert`/`--key` for a client certificate:
`podshark/tlsconf.py`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO

EXIT_FAIL = 1
EXIT_USAGE = 2
CHUNK = 256 << 10
_BLOCK_HEAD = struct.Struct("<II")
_EPB = 6


class ExportError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


class BlockCounter:
    """Walks a little-endian pcapng stream fed in arbitrary pieces; counts packet blocks."""

    def __init__(self) -> None:
        self._head = b""  # the start of a block header split across pieces
        self._skip = 0  # bytes left of the current block
        self.packets = 0
        self.blocks = 0

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            want = 8 - len(self._head)
            self._head += data[pos : pos + want]
            pos += want
            if len(self._head) < 8:
                return
            btype, blen = _BLOCK_HEAD.unpack(self._head)
            self._head = b""
            if blen < 12 or blen % 4:
                raise ExportError(f"the hub sent a broken pcapng block (type {btype}, length {blen})")
            self.blocks += 1
            if btype == _EPB:
                self.packets += 1
            self._skip = blen - 8

    def complete(self) -> bool:
        """True when the stream ends on a block boundary."""
        return not self._head and not self._skip


def _url(args: argparse.Namespace) -> str:
    params = {"filter": args.filter, "frames": args.frames}
    if args.from_:
        params["from"] = args.from_
    if args.to:
        params["to"] = args.to
    return args.hub.rstrip("/") + "/api/v1/export?" + urllib.parse.urlencode(params)


def _open(
    args: argparse.Namespace, token: str | None, context: ssl.SSLContext | None = None
) -> http.client.HTTPResponse:
    from podshark.tlsconf import explain, forbidden

    req = urllib.request.Request(_url(args))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        resp: http.client.HTTPResponse = urllib.request.urlopen(req, timeout=300, context=context)
        return resp
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())
        except ValueError:
            err = {}
        msg = str(err.get("error") or e.reason)
        if e.code == 401:
            raise ExportError(
                "the hub refused the token (401): set PODSHARK_TOKEN or --token-file to the hub's token"
            ) from None
        if e.code == 403:
            raise ExportError(forbidden()) from None
        if e.code == 400:
            if isinstance(err.get("position"), int) and args.filter:
                msg += f"\n  {args.filter}\n  {' ' * err['position']}^"
            raise ExportError(msg, EXIT_USAGE) from None
        raise ExportError(f"the hub answered {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        hint = explain(e, args.hub, has_cert=bool(args.cert))
        raise ExportError(hint or f"cannot reach the hub at {args.hub}: {getattr(e, 'reason', e)}") from None


def _copy(resp: http.client.HTTPResponse, out: BinaryIO, counter: BlockCounter, show: bool) -> int:
    """Copy the stream to `out`, counting blocks; returns the bytes written."""
    from dissect.pcapng_write import estimated_size
    from podshark.progress import Progress

    calls = int(resp.headers.get("X-Podshark-Calls", "0") or 0)
    total = None  # frames gathered from workers' spools are not counted before they stream
    if resp.headers.get("X-Podshark-Frames") is not None and resp.headers.get("X-Podshark-Bytes") is not None:
        total = estimated_size(int(resp.headers["X-Podshark-Frames"]), int(resp.headers["X-Podshark-Bytes"]))
    missing = resp.headers.get("X-Podshark-Missing-Workers")
    if missing:
        print(
            f"podshark: warning: these workers did not answer; their frames are not in the file: {missing}",
            file=sys.stderr,
        )
    progress = Progress(total, "export", enabled=show)
    done = 0
    try:
        while True:
            try:
                piece = resp.read(CHUNK)
            except (http.client.IncompleteRead, OSError) as e:
                raise ExportError(
                    f"the hub ended the export early, after {counter.packets} frames: {e}"
                ) from None
            if not piece:
                break
            counter.feed(piece)
            out.write(piece)
            done += len(piece)
            progress.update(done, counter.packets, calls)
    finally:
        progress.close()
    if not counter.complete() or counter.blocks == 0:
        raise ExportError(f"the hub ended the export inside a block, after {counter.packets} frames")
    return done


def run(args: argparse.Namespace) -> int:
    from hub.auth import AuthError, token_from
    from podshark.tlsconf import TlsConfigError, client_context

    try:
        token = token_from(args.token_file)
        context = client_context(args, args.hub)
    except (AuthError, TlsConfigError) as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    to_stdout = args.output == "-"
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    counter = BlockCounter()
    partial = args.output + ".partial"
    try:
        with _open(args, token, context) as resp:
            calls = resp.headers.get("X-Podshark-Calls", "?")
            conns = resp.headers.get("X-Podshark-Connections", "?")
            if to_stdout:
                _copy(resp, sys.stdout.buffer, counter, show)
                sys.stdout.buffer.flush()
            else:
                try:
                    with open(partial, "wb") as f:
                        _copy(resp, f, counter, show)
                    os.replace(partial, args.output)
                except OSError as e:
                    raise ExportError(f"cannot write {args.output}: {e.strerror or e}") from None
                finally:
                    if os.path.exists(partial):
                        os.unlink(partial)
    except ExportError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return e.code
    where = "stdout" if to_stdout else args.output
    print(
        f"wrote {where}: {counter.packets} frames of {conns} connections ({calls} calls)",
        file=sys.stderr if to_stdout else sys.stdout,
    )
    return 0
