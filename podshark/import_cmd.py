"""`podshark import FILE --hub URL`: dissect a capture and send its calls and frames to a hub.

Calls go over the ingest WebSocket in numbered `calls` batches, and the capture's frames in
numbered `packets` messages (each frame with the `flow_id` of its connection, the one its calls
carry), so `podshark export` gives back the original frames of any calls, byte for byte. Frames
that belong to no TCP or UDP flow (ARP, ICMP, ...) belong to no call and are not sent;
`--no-packets` sends calls only.

Both kinds share one window: a message stays pending until the hub acks it (after its commit), at
most `WINDOW` are in flight. When the connection drops, the client reconnects (with backoff) and
resends every pending message in order; the hub deduplicates calls by id and frames by (flow, time,
bytes), so a message stored before the drop is stored once. The exit code is 0 only when every
call and frame was acknowledged.

Memory stays bounded whatever the capture: calls are batched by count (`--batch`) and frames by
size (`PACKETS_BYTES`), and the engine is fed one packet at a time so a long connection that
completes no call for a while still sends its frames.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dissect.engine import Engine
    from dissect.pcapio import CaptureReader

EXIT_FAIL = 1
EXIT_INPUT = 2
WINDOW = 8  # messages in flight
RECONNECTS = 20
PROGRESS_MIN_BYTES = 8 << 20
PACKETS_BYTES = 4 << 20  # frame bytes per packets message (base64 makes it a third larger)
PACKETS_MAX = 16384  # frames per packets message


def ingest_url(hub: str) -> str:
    base = hub.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    return base + "/api/v1/ingest"


def run(args: argparse.Namespace) -> int:
    from dissect.engine import file_engine
    from dissect.pcapio import CaptureError
    from dissect.tls.keylog import KeyLogError
    from hub.auth import AuthError, token_from
    from podshark.dissect_cmd import load_keylog
    from podshark.tlsconf import TlsConfigError, client_context

    try:
        token = token_from(args.token_file)
        ssl_context = client_context(args, args.hub)  # --ca/--cert/--key for an https:// hub
        keylog = load_keylog(getattr(args, "keylog", None))
    except (AuthError, TlsConfigError, KeyLogError) as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    frames = None if getattr(args, "no_packets", False) else _FrameBatch()
    try:
        # the engine decrypts TLS with --keylog and with the secrets the capture itself carries
        reader, engine, _secrets = file_engine(
            args.file, keylog=keylog, on_frame=frames.add if frames is not None else None
        )
    except CaptureError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        return asyncio.run(_import(args, Source(reader, engine, frames), token, ssl_context))
    finally:
        reader.close()


@dataclass
class Source:
    """The capture being imported: its reader, the engine dissecting it, and the frame batch being
    filled for the hub's pcap export (None with --no-packets)."""

    reader: CaptureReader
    engine: Engine
    frames: _FrameBatch | None


@dataclass
class Message:
    """One ingest message ready to send: its kind (`calls` or `packets`) and how many items."""

    kind: str
    text: str
    count: int


class _FrameBatch:
    """The `packets` message being filled: each frame as its JSON object, already encoded."""

    def __init__(self) -> None:
        import msgspec

        self._encode = msgspec.json.encode
        self.items: list[bytes] = []
        self.size = 0
        self.linktype = -1  # the message's link type: that of its first frame

    def add(self, ts: int, linktype: int, frame: bytes, orig_len: int, flow_id: str) -> None:
        """The engine's frame hook (`dissect.engine.FrameHook`)."""
        if not self.items:
            self.linktype = linktype
        own = b"" if linktype == self.linktype else b',"linktype":%d' % linktype
        self.items.append(
            b'{"flow_id":%s,"ts":%d,"orig_len":%d%s,"data":"%s"}'
            % (self._encode(flow_id), ts, orig_len, own, base64.b64encode(frame))
        )
        self.size += len(frame)

    def full(self) -> bool:
        return self.size >= PACKETS_BYTES or len(self.items) >= PACKETS_MAX

    def take(self, seq: int) -> Message:
        body = b",".join(self.items)
        text = b'{"type":"packets","seq":%d,"linktype":%d,"packets":[%s]}' % (seq, self.linktype, body)
        msg = Message("packets", text.decode(), len(self.items))
        self.items = []
        self.size = 0
        return msg


def _calls_message(seq: int, calls: list[bytes]) -> Message:
    text = b'{"type":"calls","seq":%d,"calls":[' % seq + b",".join(calls) + b"]}"
    return Message("calls", text.decode(), len(calls))


def _messages(args: argparse.Namespace, src: Source) -> Iterator[Message]:
    """The capture as numbered messages (seq 1, 2, ...), calls and frames interleaved."""
    from podshark.progress import Progress

    reader, engine, frames = src.reader, src.engine, src.frames
    show = args.progress == "always" or (
        args.progress == "auto" and reader.size >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
    )
    progress = Progress(reader.size, os.path.basename(args.file), enabled=show)
    seq = 0
    ncalls = 0
    batch: list[bytes] = []
    try:
        if frames is not None:
            # one packet at a time (not `engine.run`) so frames leave even while no call completes
            out = engine.out
            for n, (ts, linktype, frame, wire) in enumerate(reader, 1):
                engine.packet(ts, linktype, frame, wire)
                if out:
                    batch += [c.to_json_bytes() for c in out]
                    ncalls += len(out)
                    out.clear()
                    if len(batch) >= args.batch:
                        seq += 1
                        yield _calls_message(seq, batch)
                        batch = []
                if frames.full():
                    seq += 1
                    yield frames.take(seq)
                if show and not n & 255:
                    progress.update(reader.position(), n, ncalls)
            engine.finish()
            batch += [c.to_json_bytes() for c in out]
            out.clear()
            if frames.items:
                seq += 1
                yield frames.take(seq)
        else:
            for ncalls, call in enumerate(engine.run(reader), 1):
                batch.append(call.to_json_bytes())
                if show and not ncalls & 255:
                    progress.update(reader.position(), engine.packets, ncalls)
                if len(batch) >= args.batch:
                    seq += 1
                    yield _calls_message(seq, batch)
                    batch = []
        for k in range(0, len(batch), args.batch):
            seq += 1
            yield _calls_message(seq, batch[k : k + args.batch])
    finally:
        progress.close()


@dataclass
class _Tally:
    sent: int = 0
    acked: int = 0
    rejected: int = 0


async def _import(
    args: argparse.Namespace,
    src: Source,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    import aiohttp
    import msgspec

    from podshark.tlsconf import explain, forbidden

    closing = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    url = ingest_url(args.hub)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    pending: dict[int, Message] = {}  # seq -> message, in send order
    tally = {"calls": _Tally(), "packets": _Tally()}
    errors: list[str] = []
    source = _messages(args, src)
    exhausted = False
    next_seq = 1
    attempts = 0
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.ws_connect(
                    url, headers=headers, heartbeat=30.0, max_msg_size=0, ssl=ssl_context or True
                ) as ws:
                    attempts = 0
                    await ws.send_str('{"type":"hello","worker":"import","capabilities":["calls","packets"]}')
                    for m in list(pending.values()):  # resend what was never acked
                        await ws.send_str(m.text)
                    while True:
                        while not exhausted and len(pending) < WINDOW:
                            try:
                                m = next(source)
                            except StopIteration:
                                exhausted = True
                                break
                            pending[next_seq] = m
                            next_seq += 1
                            tally[m.kind].sent += m.count
                            await ws.send_str(m.text)
                        if exhausted and not pending:
                            break
                        msg = await ws.receive()
                        if msg.type in closing:
                            raise ConnectionResetError("hub closed the connection")
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        reply = msgspec.json.decode(msg.data)
                        if reply.get("type") == "ack" and reply.get("seq") in pending:
                            m = pending.pop(reply["seq"])
                            bad = int(reply.get("rejected", 0))
                            tally[m.kind].acked += m.count - bad
                            tally[m.kind].rejected += bad
                        elif reply.get("type") == "error":
                            text = str(reply.get("error"))
                            errors.append(text)
                            if reply.get("seq") in pending and text.startswith("not stored"):
                                pending.pop(reply["seq"])  # the hub's commit failed: no ack will come
                    await ws.close()
                break
            except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError) as e:
                if isinstance(e, aiohttp.WSServerHandshakeError) and e.status == 401:
                    print("podshark: error: the hub refused the token (401)", file=sys.stderr)
                    return EXIT_FAIL
                if isinstance(e, aiohttp.WSServerHandshakeError) and e.status == 403:
                    print(f"podshark: error: {forbidden()}", file=sys.stderr)
                    return EXIT_FAIL
                hint = explain(e, args.hub, has_cert=bool(getattr(args, "cert", None)))
                attempts += 1
                # a certificate problem does not go away by retrying: a verify error at once, a
                # handshake the hub drops after three tries
                if hint and (isinstance(e, aiohttp.ClientSSLError) or attempts >= 3) and not pending:
                    print(f"podshark: error: {hint}", file=sys.stderr)
                    return EXIT_FAIL
                if attempts > RECONNECTS:
                    c = tally["calls"]
                    why = hint or f"cannot reach the hub at {args.hub}: {e}"
                    print(f"podshark: error: {why}", file=sys.stderr)
                    print(f"sent {c.sent} calls, {c.acked} acknowledged", file=sys.stderr)
                    return EXIT_FAIL
                await asyncio.sleep(min(0.2 * 2 ** min(attempts, 5), 5.0))
    for err in errors[:10]:
        print(f"podshark: hub: {err}", file=sys.stderr)
    for w in src.reader.stats.warnings:
        print(f"podshark: warning: {w}", file=sys.stderr)
    c, f = tally["calls"], tally["packets"]
    line = f"{c.sent} calls sent, {c.acked} acknowledged" + (f", {c.rejected} rejected" if c.rejected else "")
    if not getattr(args, "no_packets", False):
        line += f"; {f.sent} frames sent, {f.acked} acknowledged" + (
            f", {f.rejected} rejected" if f.rejected else ""
        )
    print(line)
    return 0 if c.acked == c.sent and f.acked == f.sent else EXIT_FAIL
