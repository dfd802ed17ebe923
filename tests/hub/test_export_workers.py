"""pcap export gathered from the workers' packet spools, over their own ingest connections.

A real hub process and real DuckDB; the workers are real `capture.uplink.Uplink`s whose `export`
callable serves the frames of a fixture capture (read with `dissect.pcapio`, with live-style flow
ids assigned here), and whose calls (the same capture's, dissected) carry those flow ids. Another
capture is imported into the store the usual way. The oracles: the original captures' frames
(byte for byte, time, link type, wire length), `dissect.filter`'s predicate for which connections a
filter selects, and tshark/capinfos reading the exported file.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from capture.uplink import Uplink
from dissect.engine import Engine, file_source_id
from dissect.filter import parse
from dissect.model import Call
from dissect.pcapio import CaptureReader, Packet
from tests.capture.test_uplink import Running, make_call, wait_until, worker_entry
from tests.conftest import FIXTURES
from tests.hub.test_export import by_time, expected, fetch, frames_of, import_all, tshark_lines
from tests.hub.test_service import TOKEN, Hub, start_hub

PIPELINED = FIXTURES / "http1__zeek_pipelined-requests.pcap"  # imported into the store
H2 = FIXTURES / "http2__sv_http2-range.pcap"  # served from the worker's spool
NODE = "node-w"
CHUNK = 3000  # small export chunks, so flow control (export-next) is exercised many times


@dataclass
class SpoolFake:
    """What a worker's packet spool would hold: frames with their flow ids, served like
    `capture.spool.read_spool` (time-ordered, filtered by window and flows); records each request."""

    frames: list[tuple[Packet, str]]
    requests: list[tuple[int | None, int | None, list[str]]] = field(default_factory=list)

    def __call__(
        self, from_ns: int | None, to_ns: int | None, flow_ids: list[str]
    ) -> Iterator[tuple[int, int, int, bytes, str]]:
        self.requests.append((from_ns, to_ns, list(flow_ids)))
        wanted = set(flow_ids)
        for (ts, linktype, data, wire), flow in sorted(self.frames, key=lambda x: x[0][0]):
            if flow in wanted and (from_ns is None or ts >= from_ns) and (to_ns is None or ts < to_ns):
                yield ts, linktype, wire, data, flow


def live_capture(path: Path, node: str) -> tuple[list[Call], list[tuple[Packet, str]]]:
    """A capture's calls and frames as a worker on `node` would have them: ids `<node>/<n>`, flow
    ids `<node>/run1/f<n>`."""
    seen: list[tuple[Packet, str]] = []

    def live(flow: str) -> str:
        return f"{node}/run1/{flow.split('/', 1)[1]}"

    def hook(ts: int, lt: int, f: bytes, w: int, flow: str) -> None:
        seen.append(((ts, lt, f, w), live(flow)))

    engine = Engine(file_source_id(path), on_frame=hook)
    calls = [
        msgspec.structs.replace(c, id=f"{node}/{i:026d}", flow_id=live(c.flow_id or "?/?"))
        for i, c in enumerate(engine.run(CaptureReader(path)))
    ]
    return calls, seen


def worker_frames(calls: list[Call], frames: list[tuple[Packet, str]], text: str) -> list[Packet]:
    flt = parse(text)
    flows = {c.flow_id for c in calls if flt.matches(c)}
    return [p for p, fl in frames if fl in flows]


@dataclass
class Lab:
    hub: Hub
    calls: list[Call]
    spool: SpoolFake
    uplink: Uplink


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    d = tmp_path_factory.mktemp("export-workers")
    hub = start_hub(d / "db", d / "hub.log")
    running: Running | None = None
    try:
        import_all(hub, PIPELINED)
        calls, frames = live_capture(H2, NODE)
        spool = SpoolFake(frames)
        up = Uplink(
            hub.url,
            TOKEN,
            NODE,
            spool_dir=d / "uplink",
            batch_interval=0.05,
            export=spool,
            export_chunk_bytes=CHUNK,
        )
        running = Running(up)
        for c in calls:
            up.submit(c.to_json_bytes())
        wait_until("the worker's calls stored", lambda: up.counters()["acked"] == len(calls))
        yield Lab(hub, calls, spool, up)
    finally:
        if running is not None:
            running.close()
        hub.stop()


@pytest.mark.tshark
def test_export_merges_the_store_and_a_workers_spool_in_time_order(lab: Lab, tmp_path: Path) -> None:
    lab.spool.requests.clear()
    status, headers, body = fetch(lab.hub, filter="http")
    assert status == 200, body[:300]
    store_part, _ = expected([PIPELINED], "http")
    spool_part = worker_frames(lab.calls, lab.spool.frames, "http")
    assert store_part and spool_part
    want = by_time(store_part + spool_part)
    out = tmp_path / "merged.pcapng"
    assert frames_of(body, out) == want  # every frame, byte for byte, in time order
    assert headers["X-Podshark-Workers"] == NODE and "X-Podshark-Missing-Workers" not in headers
    assert "X-Podshark-Frames" not in headers  # not known before the worker streams
    # the worker was asked once, for exactly its own selected connections, whole (no window)
    selected = sorted({c.flow_id for c in lab.calls if c.flow_id and parse("http").matches(c)})
    assert [(f, t, sorted(fl)) for f, t, fl in lab.spool.requests] == [(None, None, selected)]
    assert len(body) > 10 * CHUNK  # many chunks, each released by an export-next

    r = subprocess.run(["capinfos", "-c", "-M", str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0 and f"Number of packets:   {len(want)}" in r.stdout.decode()
    for display_filter in ("http.request", "http2.type == 1", "tcp.flags.syn == 1"):
        original = len(tshark_lines(PIPELINED, display_filter)) + len(tshark_lines(H2, display_filter))
        assert len(tshark_lines(out, display_filter)) == original, display_filter
    w = worker_entry(lab.hub, NODE)
    assert w is not None and w["export_requests"] >= 1 and w["export_failures"] == 0


def test_a_worker_only_selection_with_a_window(lab: Lab, tmp_path: Path) -> None:
    lab.spool.requests.clear()
    h2 = sorted((c for c in lab.calls if c.protocol == "http2"), key=lambda c: c.ts)
    start, end = h2[1].ts, h2[1].ts + 1
    status, headers, body = fetch(
        lab.hub, filter="http2", **{"from": str(start), "to": str(end), "frames": "window"}
    )
    assert status == 200, body[:300]
    assert headers["X-Podshark-Calls"] == "1"
    [(f_from, f_to, flows)] = lab.spool.requests
    assert f_from == start and f_to is not None and f_to >= end and flows == [h2[1].flow_id]
    want = [p for p, fl in lab.spool.frames if fl == h2[1].flow_id and start <= p[0] < f_to]
    got = frames_of(body, tmp_path / "w.pcapng")
    assert got == by_time(want) and got
    everything = [p for p, fl in lab.spool.frames if fl == h2[1].flow_id]
    assert len(got) < len(everything)  # the window trimmed the connection


@pytest.mark.slow
def test_export_skips_workers_that_are_gone_silent_or_stall_and_says_so(lab: Lab, tmp_path: Path) -> None:
    """node-gone holds selected connections but is not connected; node-mute never answers;
    node-stall answers two chunks and then stops. The export still completes (in the hub's
    10 s + 10 s timeouts), with everything it could get, and names what is missing."""
    release = threading.Event()
    frame = bytes(range(256)) * 2  # 512-byte frames: a 2048-byte chunk holds four

    def stall(
        from_ns: int | None, to_ns: int | None, flows: list[str]
    ) -> Iterator[tuple[int, int, int, bytes, str]]:
        for i in range(10):
            yield 1_600_000_000_000_000_000 + i, 1, len(frame), frame, flows[0]
        release.wait(120)

    def mute(
        from_ns: int | None, to_ns: int | None, flows: list[str]
    ) -> Iterator[tuple[int, int, int, bytes, str]]:
        release.wait(120)
        yield from ()

    workers: list[Running] = []
    try:
        for node, fn in (("node-stall", stall), ("node-mute", mute)):
            up = Uplink(
                lab.hub.url,
                TOKEN,
                node,
                spool_dir=tmp_path / node,
                batch_interval=0.05,
                export=fn,
                export_chunk_bytes=2048,
            )
            workers.append(Running(up))
            up.submit(make_call(node, 1, flow_id=f"{node}/run1/f1").to_json_bytes())
        # node-gone's call reaches the hub through node-w's connection; node-gone never connects
        lab.uplink.submit(make_call("node-gone", 1, flow_id="node-gone/run1/f1").to_json_bytes())
        for w in workers:
            counters = w.uplink.counters
            wait_until(f"{w.uplink.worker}'s call stored", lambda c=counters: c()["acked"] == 1)  # type: ignore[misc]
        wait_until("node-gone's call stored", lambda: lab.uplink.counters()["acked"] == len(lab.calls) + 1)

        status, headers, body = fetch(lab.hub, filter='target == "/items/00000001"')
        assert status == 200
        assert headers["X-Podshark-Missing-Workers"] == "node-gone, node-mute"
        assert headers["X-Podshark-Workers"] == "node-stall"
        out = tmp_path / "partial.pcapng"
        got = frames_of(body, out)
        # the two whole chunks node-stall sent before it stalled, and nothing else
        assert got == [(1_600_000_000_000_000_000 + i, 1, frame, len(frame)) for i in range(8)]
        ran = subprocess.run(["capinfos", str(out)], capture_output=True, timeout=60)
        info = ran.stdout.decode()
        assert ran.returncode == 0 and "Number of packets:   8" in info
        assert "node-gone's frames are missing: not connected" in info
        assert "node-mute's frames are missing: sent no data for 10 s" in info
        assert "worker node-stall stopped answering" in info
        log = lab.hub.log.read_text()
        assert "node-mute holds selected connections" in log and "node-stall sent no data" in log
        mute_entry = worker_entry(lab.hub, "node-mute")
        assert mute_entry is not None and mute_entry["export_failures"] == 1
    finally:
        release.set()
        for r in workers:
            r.close()


def test_a_worker_that_disconnects_mid_export_ends_its_part_at_once(lab: Lab, tmp_path: Path) -> None:
    """No waiting for a timeout: the hub sees the connection close and ends that worker's stream."""
    node = "node-bye"
    yielded, release = threading.Event(), threading.Event()
    frame = b"\x01" * 1000

    def serve(
        from_ns: int | None, to_ns: int | None, flows: list[str]
    ) -> Iterator[tuple[int, int, int, bytes, str]]:
        for i in range(3):  # one 3000-byte chunk
            yield 1_650_000_000_000_000_000 + i, 1, len(frame), frame, flows[0]
        yielded.set()
        release.wait(120)
        yield 1_650_000_000_000_000_099, 1, len(frame), frame, flows[0]

    up = Uplink(
        lab.hub.url,
        TOKEN,
        node,
        spool_dir=tmp_path / "spool",
        batch_interval=0.05,
        export=serve,
        export_chunk_bytes=CHUNK,
    )
    worker = Running(up)
    closed = False
    try:
        up.submit(make_call(node, 5, flow_id=f"{node}/run1/f9").to_json_bytes())
        wait_until("the call stored", lambda: up.counters()["acked"] == 1)
        result: list[tuple[int, dict[str, str], bytes]] = []
        fetcher = threading.Thread(
            target=lambda: result.append(fetch(lab.hub, filter=f'id startswith "{node}/"'))
        )
        fetcher.start()
        assert yielded.wait(60)
        worker.close()
        closed = True
        fetcher.join(60)
        assert not fetcher.is_alive()
        status, headers, body = result[0]
        assert status == 200 and headers["X-Podshark-Workers"] == node
        out = tmp_path / "bye.pcapng"
        assert frames_of(body, out) == [
            (1_650_000_000_000_000_000 + i, 1, frame, len(frame)) for i in range(3)
        ]
        info = subprocess.run(["capinfos", str(out)], capture_output=True, timeout=60).stdout.decode()
        # ended by the disconnect itself, not by the idle timeout ("sent no data for 10 s")
        assert f"worker {node} stopped answering (disconnected after 3 frames)" in info
    finally:
        release.set()
        if not closed:
            worker.close()
