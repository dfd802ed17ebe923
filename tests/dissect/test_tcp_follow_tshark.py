"""Differential test of TCP reassembly: our byte streams against tshark's "Follow TCP Stream".

For every TCP connection in every fixture capture, the bytes our engine delivers in each direction
must equal tshark's `-z follow,tcp,raw`, and every gap we declare must sit where tshark writes
"[N bytes missing in capture file]", with the same N (both sides turn a gap into N '?' bytes).
tshark is called directly here rather than through pyshark because pyshark has no interface to `-z follow`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dissect.base import ConnContext, Verdict
from dissect.engine import Engine
from dissect.pcapio import CaptureReader
from tests.conftest import FIXTURES

pytestmark = pytest.mark.tshark


class _Stream:
    def __init__(self, ctx: ConnContext, store: dict[str, tuple[ConnContext, list[bytearray]]]) -> None:
        self.bufs = [bytearray(), bytearray()]
        self.tail_gap = [0, 0]  # bytes lost after the last byte seen (known only from the peer's ACKs)
        store[ctx.flow_id] = (ctx, self.bufs)

    def feed(self, direction: int, data: bytes, ts: int) -> None:
        self.bufs[direction] += data
        self.tail_gap[direction] = 0

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        self.bufs[direction] += b"?" * n
        self.tail_gap[direction] += n

    def note(self, direction: int, flag: str) -> None:
        pass

    def close(self, ts: int) -> None:
        pass


_MISSING = re.compile(rb"\[(\d+) bytes missing in capture file\]\x00?")


class _TakeAll:
    """An analyzer that claims every connection and records its bytes."""

    name = "record"

    def __init__(self) -> None:
        self.store: dict[str, tuple[ConnContext, list[bytearray]]] = {}
        self.streams: list[_Stream] = []

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        return Verdict.YES

    def new(self, ctx: ConnContext) -> _Stream:
        stream = _Stream(ctx, self.store)
        self.streams.append(stream)
        return stream


def ours(path: Path) -> dict[tuple[str, str], list[bytes]]:
    rec = _TakeAll()
    with CaptureReader(path) as r:
        list(Engine("t", analyzers=[rec]).run(r))
    out: dict[tuple[str, str], list[bytes]] = {}
    for stream, (ctx, bufs) in zip(rec.streams, rec.store.values()):
        a, b = (e.address() for e in ctx.endpoints)
        if not bufs[0] and not bufs[1]:
            continue
        key = (a, b) if (a, b) not in out else (a, b + "#2")
        # tshark marks a hole only where a later segment shows it; a hole at the very end, known
        # from the peer's ACKs alone, is ours to report but not in its output: compare without it
        out[key] = [bytes(bufs[d][: len(bufs[d]) - stream.tail_gap[d]]) for d in (0, 1)]
    return out


def theirs(path: Path) -> dict[tuple[str, str], list[bytes]]:
    ids = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.stream"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    streams = sorted({int(i) for i in ids})
    if not streams:
        return {}
    cmd = ["tshark", "-r", str(path), "-q"]
    for s in streams:
        cmd += ["-z", f"follow,tcp,raw,{s}"]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    out: dict[tuple[str, str], list[bytes]] = {}
    for block in text.split("=" * 67 + "\nFollow: tcp,raw\n")[1:]:
        lines = block.splitlines()
        node0 = lines[1].split(": ", 1)[1]
        node1 = lines[2].split(": ", 1)[1]
        bufs = [bytearray(), bytearray()]
        for line in lines[3:]:
            if line.startswith("="):
                break
            if line.startswith("\t"):
                bufs[1] += bytes.fromhex(line.strip())
            elif line:
                bufs[0] += bytes.fromhex(line)
        key = (_norm(node0), _norm(node1))
        if key in out:
            key = (key[0], key[1] + "#2")
        out[key] = [_gaps(bytes(bufs[0])), _gaps(bytes(bufs[1]))]
    return out


def _gaps(data: bytes) -> bytes:
    return _MISSING.sub(lambda m: b"?" * int(m.group(1)), data)


def _norm(addr: str) -> str:
    """tshark writes IPv6 peers as `addr:port`; we bracket them."""
    host, _, port = addr.rpartition(":")
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else addr


CAPTURES = sorted(p for p in FIXTURES.glob("*.pcap*") if not p.name.endswith(".tsv"))


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_reassembled_streams_match_tshark_follow(path: Path) -> None:
    mine = ours(path)
    ref = theirs(path)
    if not ref:  # a capture without TCP payload (fragmented DNS over UDP): we must find none either
        assert not mine
        return
    for key, (t0, t1) in ref.items():
        # our direction 0 is the SYN sender or the first talker, like tshark's node 0
        if key in mine:
            m0, m1 = mine[key]
        elif (key[1], key[0]) in mine:
            m1, m0 = mine[(key[1], key[0])]
        else:
            raise AssertionError(f"{path.name}: tshark has connection {key}, we have {sorted(mine)}")
        assert _same(m0, t0), f"{path.name} {key} client->server differs at byte {_first_diff(m0, t0)}"
        assert _same(m1, t1), f"{path.name} {key} server->client differs at byte {_first_diff(m1, t1)}"


def _same(mine: bytes, theirs: bytes) -> bool:
    """Equal, or ours goes on past a hole where tshark stops.

    tshark's Follow holds segments that come after a hole until an ACK proves the hole lost; when no
    ACK ever does (grpc-server-stream: the client sent nothing after them), it never shows them. We
    declare such holes lost when the connection ends and deliver what followed, as a gap plus data:
    so past tshark's end, ours must continue with a gap.
    """
    return mine == theirs or (mine.startswith(theirs) and mine[len(theirs) : len(theirs) + 1] == b"?")


def _first_diff(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"{i} (lengths {len(a)} vs {len(b)})"
    return f"{min(len(a), len(b))} (lengths {len(a)} vs {len(b)})"
