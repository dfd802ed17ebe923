"""The uplink when things go wrong: the hub killed mid-stream, the hub away long enough for the
spool to overflow, an event loop that cannot keep up, and a worker restarted on a leftover spool.

The oracles are the calls the tests made (their ids say their order), the hub's own API and
/metrics, and the spool directory as the filesystem shows it. "Nothing silently lost" is checked as
arithmetic: every submitted call is stored once or counted as dropped, exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture import wire
from capture.uplink import BatchSpool, SpoolCorrupt, Uplink
from tests.capture.test_uplink import Running, make_call, stored_ids, wait_until, worker_entry
from tests.conftest import REPO
from tests.hub.test_service import TOKEN, Hub, _free_port, get, start_hub

pytestmark = pytest.mark.slow


def start_hub_on(db: Path, log: Path, port: int) -> Hub:
    """A hub process on a given port (to come back where the worker keeps reconnecting)."""
    return start_hub(db, log, port)


def spool_files_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.name.endswith(".batch"))


def metric(hub: Hub, name: str, **labels: str) -> float | None:
    req = urllib.request.Request(hub.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name:
            got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
            if got == labels:
                return float(m.group(3))
    return None


# ---- the hub killed while calls flow


def test_hub_killed_and_restarted_while_calls_flow_loses_nothing(tmp_path: Path) -> None:
    node = "fault-kill"
    n = 6000
    port = _free_port()
    db = tmp_path / "db"
    hub = start_hub_on(db, tmp_path / "hub.log", port)
    up = Uplink(
        hub.url,
        TOKEN,
        node,
        spool_dir=tmp_path / "spool",
        batch_max=50,
        batch_interval=0.05,
        window=4,
    )
    calls = [make_call(node, i).to_json_bytes() for i in range(n)]
    fed = threading.Event()

    def feed() -> None:  # about 2000 calls a second, like a busy node
        for i, c in enumerate(calls):
            up.submit(c)
            if i % 10 == 9:
                time.sleep(0.005)
        fed.set()

    r = Running(up)
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        wait_until("the hub to store some calls", lambda: up.counters()["acked"] >= 1000)
        hub.stop(signal.SIGKILL)
        at_kill = up.counters()
        assert not fed.is_set() and at_kill["acked"] < n  # calls were still flowing
        hub = start_hub_on(db, tmp_path / "hub.log", port)
        feeder.join(120)
        assert not feeder.is_alive()
        r.close(flush_timeout=90)
        c = up.counters()
        assert c["dropped"] == 0 and c["invalid"] == 0 and c["rejected"] == 0
        assert c["acked"] == n and c["spool_calls"] == 0
        assert c["reconnects"] >= 1
        ids = stored_ids(hub, node)
        assert len(ids) == n and ids == sorted(json.loads(x)["id"] for x in calls)  # each exactly once
    finally:
        hub.stop()


# ---- the spool overflows while the hub is away


def test_spool_overflow_drops_the_oldest_and_the_hub_shows_exactly_how_many(tmp_path: Path) -> None:
    node = "fault-overflow"
    n = 400
    max_bytes = 60_000
    port = _free_port()  # nothing listens there yet
    spool = tmp_path / "spool"
    up = Uplink(
        f"http://127.0.0.1:{port}",
        TOKEN,
        node,
        spool_dir=spool,
        spool_max_bytes=max_bytes,
        batch_max=10,
        batch_interval=0.02,
    )
    calls = [make_call(node, i, body_size=700).to_json_bytes() for i in range(n)]
    r = Running(up)
    hub: Hub | None = None
    try:
        peak = 0
        for i, call in enumerate(calls):
            up.submit(call)
            if i % 20 == 0:
                time.sleep(0.01)
                peak = max(peak, spool_files_bytes(spool))
        wait_until("everything spooled or dropped", lambda: up.counters()["buffered"] == 0)
        c = up.counters()
        assert c["connects"] == 0
        assert c["dropped"] > 0 and c["spool_calls"] + c["dropped"] == n
        assert max(peak, spool_files_bytes(spool)) <= max_bytes  # the bound, as the disk sees it

        hub = start_hub_on(tmp_path / "db", tmp_path / "hub.log", port)
        wait_until("the spool to drain", lambda: up.counters()["spool_calls"] == 0)
        dropped = up.counters()["dropped"]
        wait_until(
            "the hub to show the drops",
            lambda: ((worker_entry(hub, node) or {}).get("drops") or {}).get("spool") == dropped,
        )
        r.close()
        ids = stored_ids(hub, node)
        assert len(ids) + dropped == n  # nothing lost without being counted
        all_ids = sorted(json.loads(x)["id"] for x in calls)
        assert ids == all_ids[n - len(ids) :]  # the oldest were dropped, the newest kept
        assert metric(hub, "podshark_worker_drops_total", worker=node, kind="spool") == n - len(ids)
    finally:
        if hub is not None:
            hub.stop()


def test_submit_never_waits_for_a_stalled_loop_and_its_memory_is_bounded(tmp_path: Path) -> None:
    node = "fault-stall"
    n = 20_000
    buffer_max = 64 << 10
    spool_max = 100_000
    up = Uplink(
        f"http://127.0.0.1:{_free_port()}",  # no hub
        TOKEN,
        node,
        spool_dir=tmp_path / "spool",
        spool_max_bytes=spool_max,
        buffer_max_bytes=buffer_max,
        batch_max=20,
        batch_interval=0.02,
    )
    calls = [make_call(node, i, body_size=300).to_json_bytes() for i in range(n)]
    size = len(calls[0])
    assert {len(c) for c in calls} == {size}
    r = Running(up)
    stalled, release = threading.Event(), threading.Event()

    def stall() -> None:  # the event loop busy elsewhere: nothing drains the buffer
        stalled.set()
        release.wait(120)

    try:
        r.loop.call_soon_threadsafe(stall)
        assert stalled.wait(30)

        def feed() -> None:
            for call in calls:
                up.submit(call)

        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join(60)  # a hang detector, not a speed test: submit must not wait for the loop
        assert not feeder.is_alive(), "submit() blocked while the event loop was stalled"
        c = up.counters()
        fits = buffer_max // size
        assert c["submitted"] == n
        assert c["buffered"] == fits and c["buffered_bytes"] == fits * size <= buffer_max
        assert c["dropped"] == n - fits
    finally:
        release.set()
    wait_until("the buffer to reach the spool", lambda: up.counters()["buffered"] == 0)
    r.close(flush_timeout=0.5)
    c = up.counters()
    assert c["acked"] == 0 and c["invalid"] == 0
    assert c["spool_calls"] + c["dropped"] == n
    assert 0 < spool_files_bytes(tmp_path / "spool") <= spool_max  # kept for the next run


# ---- a worker process restarted on its spool


def worker_main() -> None:
    """`python -c 'from tests.capture.test_uplink_faults import worker_main; worker_main()' HUB SPOOL
    NODE FIRST COUNT MODE`: submit calls FIRST..FIRST+COUNT-1; MODE `hold` prints `spooled` once
    they are all on disk and waits to be killed, `flush` closes (waiting for acks) and prints the
    counters as JSON."""
    import asyncio

    hub_url, spool, node, first, count, mode = sys.argv[1:7]
    up = Uplink(hub_url, TOKEN, node, spool_dir=Path(spool), batch_max=25, batch_interval=0.02)

    async def main() -> None:
        task = asyncio.create_task(up.run())
        for i in range(int(first), int(first) + int(count)):
            up.submit(make_call(node, i).to_json_bytes())
        if mode == "hold":
            while up.counters()["buffered"]:
                await asyncio.sleep(0.02)
            print("spooled", flush=True)
            await asyncio.sleep(3600)
        await up.close(flush_timeout=90)
        await task
        print(json.dumps(up.counters()), flush=True)

    asyncio.run(main())


def _worker(hub_url: str, spool: Path, node: str, first: int, count: int, mode: str) -> subprocess.Popen[str]:
    code = "from tests.capture.test_uplink_faults import worker_main; worker_main()"
    argv = [sys.executable, "-c", code, hub_url, str(spool), node, str(first), str(count), mode]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_restarted_worker_resends_its_leftover_spool_and_ignores_torn_files(tmp_path: Path) -> None:
    node = "fault-restart"
    spool = tmp_path / "spool"
    port = _free_port()
    first = _worker(f"http://127.0.0.1:{port}", spool, node, 0, 300, "hold")  # the hub is not up yet
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "spooled", first.stderr.read() if first.stderr else ""
    finally:
        first.kill()  # like a node reboot: no close(), no flush
        first.wait(30)
    batches = sorted(p for p in spool.iterdir() if p.name.endswith(".batch"))
    assert batches
    # a crash mid-write of the next batch, a write never renamed, and a file that is not ours
    last = int(batches[-1].name.split(".")[0])
    whole = batches[-1].read_bytes()
    (spool / f"{last + 1:016d}.batch").write_bytes(whole[: len(whole) // 2])
    (spool / f"{last + 2:016d}.tmp").write_bytes(whole)
    (spool / "README").write_text("not a batch")

    hub = start_hub_on(tmp_path / "db", tmp_path / "hub.log", port)
    try:
        second = _worker(hub.url, spool, node, 300, 50, "flush")
        out, err = second.communicate(timeout=180)
        assert second.returncode == 0, err
        c = json.loads(out.splitlines()[-1])
        assert c["spool_corrupt"] == 2 and c["dropped"] == 0
        assert c["acked"] == 350 and c["spool_calls"] == 0
        assert stored_ids(hub, node) == [make_call(node, i).id for i in range(350)]
        status, stats = get(hub, "/api/v1/stats")
        assert status == 200
        assert (
            stats["ingest"]["frame_errors"] == 0 and stats["ingest"]["calls_rejected"] == 0
        )  # no garbage sent
        assert sorted(p.name for p in spool.iterdir()) == ["README"]
    finally:
        hub.stop()


# ---- bytes from disk and from the hub (Hypothesis)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    payloads=st.lists(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5), max_size=8),
    damage=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 200)), max_size=4),
    junk=st.lists(
        st.tuples(st.sampled_from(["7.batch", "00x.batch", "9.tmp", "a.b"]), st.binary()), max_size=3
    ),
)
def test_spool_files_torn_or_foreign_are_tolerated(
    tmp_path_factory: pytest.TempPathFactory,
    payloads: list[list[bytes]],
    damage: list[tuple[int, int]],
    junk: list[tuple[str, bytes]],
) -> None:
    d = tmp_path_factory.mktemp("spool")
    s = BatchSpool(d, 1 << 20)
    written: dict[int, bytes] = {}
    for calls in payloads:
        payload = b",".join(calls)
        b = s.admit(len(calls), 16 + len(payload))
        s.write(b.id, len(calls), payload)
        written[b.id] = payload
    torn: set[int] = set()
    ids = sorted(written)
    for which, cut in damage:
        if ids:
            bid = ids[which % len(ids)]
            p = s.path(bid)
            data = p.read_bytes()
            if cut < len(data):
                p.write_bytes(data[:cut])
                torn.add(bid)
    for name, data in junk:
        (d / ("1000" + name)).write_bytes(data)
    again = BatchSpool(d, 1 << 20)  # never raises
    kept = set(written) - torn
    assert kept <= set(again.batches) and not torn & set(again.batches)
    for bid in kept:
        assert again.read(bid) == written[bid]
    for bid in set(again.batches) - kept:  # a junk file that happens to look whole: read() refuses it
        try:
            again.read(bid)
        except SpoolCorrupt:
            pass
    assert again.next_id > max(again.batches, default=0)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["type", "seq", "id", "from", "to", "flow_ids", "rejected", "error", "index", "calls"]


@given(st.dictionaries(st.sampled_from(FIELDS), JSON) | JSON, st.booleans())
def test_hub_messages_decode_or_are_refused_with_a_reason(msg: Any, as_text: bool) -> None:
    data = json.dumps(msg)
    try:
        m = wire.decode_hub(data if as_text else data.encode())
    except wire.WireError as e:
        assert str(e)
        return
    assert isinstance(m, wire.HubMessage) and isinstance(msg, dict) and m.type == msg["type"]
    assert m.rejected >= 0 and all(isinstance(f, str) for f in m.flow_ids)


def test_encoded_messages_are_the_json_the_hub_reads() -> None:
    frame = wire.frame(5, 1, 60, b"\x00\xff", 'n/r/f1"\\')
    chunk = msgspec.json.decode(wire.export_data("abc", 3, [frame, frame], False, error='x"y'))
    assert chunk == {
        "type": "export-data",
        "id": "abc",
        "seq": 3,
        "done": False,
        "error": 'x"y',
        "packets": [{"flow_id": 'n/r/f1"\\', "ts": 5, "orig_len": 60, "linktype": 1, "data": "AP8="}] * 2,
    }
    calls = msgspec.json.decode(wire.calls_message(7, b'{"a":1},{"b":2}'))
    assert calls == {"type": "calls", "seq": 7, "calls": [{"a": 1}, {"b": 2}]}
    assert wire.ingest_url("https://hub.example:8443/") == "wss://hub.example:8443/api/v1/ingest"
    assert wire.ingest_url("127.0.0.1:8080") == "ws://127.0.0.1:8080/api/v1/ingest"
    with pytest.raises(ValueError):
        wire.ingest_url("ftp://hub")
    assert os.path.basename(wire.ingest_url("ws://h/api/v1/ingest")) == "ingest"
