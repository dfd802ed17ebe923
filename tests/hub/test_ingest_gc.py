"""The ingest path's dealings with Python's garbage collector (hub/ingest.py `_on_calls`,
`_add_and_thaw`): decoded calls are frozen while they wait for their commit, and every commit
thaws them, so nothing stays frozen (uncollectable) once the writer has caught up; a message
with no valid call freezes nothing. A real writer and a real store, in this process."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import msgspec

from hub import ingest
from hub.ingest import Conn, Writer, _Envelope
from hub.store import Store
from tests.hub.test_service import _call


def _envelope(seq: int, calls: list[bytes]) -> _Envelope:
    raw = b'{"type":"calls","seq":%d,"calls":[' % seq + b",".join(calls) + b"]}"
    return msgspec.json.decode(raw, type=_Envelope)


def test_decoded_calls_are_frozen_until_their_commit_thaws_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        gc.unfreeze()
        store = Store(tmp_path / "db")
        writer = Writer(store, interval=0.05)
        writer.start()
        conn = Conn()
        try:
            bad = [b'{"id": 1}', b"[]"]
            ingest._on_calls(_envelope(1, bad), b"", conn, writer)
            assert gc.get_freeze_count() == 0  # nothing valid: nothing frozen
            good = [_call(f"gc-test/{i}").to_json_bytes() for i in range(50)]
            ingest._on_calls(_envelope(2, good), b"", conn, writer)
            assert gc.get_freeze_count() > 0
            # the ack is sent once the store call (and the thaw after it) has returned
            acks: list[dict[str, Any]] = []
            while not acks:
                msg = await asyncio.wait_for(conn.out.get(), 10)
                assert msg is not None
                acks = [msg] if msg.get("type") == "ack" and msg.get("seq") == 2 else []
            assert acks[0]["calls"] == 50 and store.count() == 50
            assert gc.get_freeze_count() == 0
            assert gc.isenabled()
        finally:
            await writer.stop()
            store.close()
            gc.unfreeze()

    asyncio.run(scenario())
