"""`podshark import FILE --hub URL`: dissect a capture and send its calls to a hub.

Calls go over the ingest WebSocket in numbered `calls` batches. A batch stays pending until the hub
acks it (after its commit); at most `WINDOW` batches are in flight. When the connection drops, the
client reconnects (with backoff) and resends every pending batch in order; the hub deduplicates by
call id, so a batch stored before the drop is stored once. The exit code is 0 only when every batch
was acknowledged.

Not yet: the capture's frames as `packets` messages (export is a later step).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dissect.pcapio import CaptureReader

EXIT_FAIL = 1
EXIT_INPUT = 2
WINDOW = 8  # batches in flight
RECONNECTS = 20
PROGRESS_MIN_BYTES = 8 << 20


def ingest_url(hub: str) -> str:
    base = hub.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    return base + "/api/v1/ingest"


def run(args: argparse.Namespace) -> int:
    from dissect.pcapio import CaptureError, CaptureReader
    from hub.auth import AuthError, token_from

    try:
        token = token_from(args.token_file)
    except AuthError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        reader = CaptureReader(args.file)
    except CaptureError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        return asyncio.run(_import(args, reader, token))
    finally:
        reader.close()


def _batches(args: argparse.Namespace, reader: CaptureReader) -> Iterator[tuple[list[bytes], int]]:
    """(encoded calls, packets so far) per batch."""
    from dissect.engine import Engine, file_source_id
    from podshark.progress import Progress

    engine = Engine(file_source_id(args.file))
    show = args.progress == "always" or (
        args.progress == "auto" and reader.size >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
    )
    progress = Progress(reader.size, os.path.basename(args.file), enabled=show)
    batch: list[bytes] = []
    try:
        for n, call in enumerate(engine.run(reader), 1):
            batch.append(call.to_json_bytes())
            if show and not n & 255:
                progress.update(reader.position(), engine.packets, n)
            if len(batch) >= args.batch:
                yield batch, engine.packets
                batch = []
        if batch:
            yield batch, engine.packets
    finally:
        progress.close()


def _frame(seq: int, calls: list[bytes]) -> str:
    return (b'{"type":"calls","seq":%d,"calls":[' % seq + b",".join(calls) + b"]}").decode()


async def _import(args: argparse.Namespace, reader: CaptureReader, token: str | None) -> int:
    import aiohttp
    import msgspec

    closing = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    url = ingest_url(args.hub)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    pending: dict[int, tuple[str, int]] = {}  # seq -> (frame, number of calls), in send order
    sent = acked = rejected = 0
    errors: list[str] = []
    source = _batches(args, reader)
    exhausted = False
    next_seq = 1
    attempts = 0
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.ws_connect(url, headers=headers, heartbeat=30.0, max_msg_size=0) as ws:
                    attempts = 0
                    await ws.send_str('{"type":"hello","worker":"import","capabilities":["calls"]}')
                    for frame, _ in list(pending.values()):  # resend what was never acked
                        await ws.send_str(frame)
                    while True:
                        while not exhausted and len(pending) < WINDOW:
                            try:
                                calls, _packets = next(source)
                            except StopIteration:
                                exhausted = True
                                break
                            frame = _frame(next_seq, calls)
                            pending[next_seq] = (frame, len(calls))
                            next_seq += 1
                            sent += len(calls)
                            await ws.send_str(frame)
                        if exhausted and not pending:
                            break
                        msg = await ws.receive()
                        if msg.type in closing:
                            raise ConnectionResetError("hub closed the connection")
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        reply = msgspec.json.decode(msg.data)
                        if reply.get("type") == "ack" and reply.get("seq") in pending:
                            _, n = pending.pop(reply["seq"])
                            acked += n - int(reply.get("rejected", 0))
                            rejected += int(reply.get("rejected", 0))
                        elif reply.get("type") == "error":
                            errors.append(str(reply.get("error")))
                    await ws.close()
                break
            except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError) as e:
                if isinstance(e, aiohttp.WSServerHandshakeError) and e.status == 401:
                    print("podshark: error: the hub refused the token (401)", file=sys.stderr)
                    return EXIT_FAIL
                attempts += 1
                if attempts > RECONNECTS:
                    print(f"podshark: error: cannot reach the hub at {args.hub}: {e}", file=sys.stderr)
                    print(f"sent {sent} calls, {acked} acknowledged", file=sys.stderr)
                    return EXIT_FAIL
                await asyncio.sleep(min(0.2 * 2 ** min(attempts, 5), 5.0))
    for err in errors[:10]:
        print(f"podshark: hub: {err}", file=sys.stderr)
    for w in reader.stats.warnings:
        print(f"podshark: warning: {w}", file=sys.stderr)
    print(f"{sent} calls sent, {acked} acknowledged" + (f", {rejected} rejected" if rejected else ""))
    return 0 if acked == sent else EXIT_FAIL
