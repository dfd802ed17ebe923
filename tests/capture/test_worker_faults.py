"""The worker while its hub fails: real pods, real curl traffic, a real hub process killed and restarted.

- The hub is SIGKILLed while requests flow and comes back on the same port a few seconds later: every
  request made meanwhile is stored exactly once (the uplink spooled and resent what was unacknowledged;
  the hub deduplicates by call id), and nothing was dropped.
- The hub is down the whole time and the uplink's spool is small: when the hub comes up, the calls
  stored plus the calls the worker reports as dropped from its spool equal the requests made, exactly
  (nothing is silently lost), and the hub's stats show that drop count.
"""

from __future__ import annotations

import importlib.util
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.capture.podnet import PodNet, podnet
from tests.capture.test_uplink_faults import start_hub_on
from tests.capture.test_worker import (
    HTTP_PORT,
    WorkerProc,
    _calls,
    _skip_reason,
    _wait_calls,
    _wait_worker,
    _worker_state,
    start_http_server,
)
from tests.hub.test_service import _free_port

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("capture-worker"))


@pytest.fixture
def node() -> Iterator[PodNet]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with podnet("client", "server") as net:
        start_http_server(net)
        yield net


def _requests(net: PodNet, nonce: str, n: int, pause: float) -> list[str]:
    client, server = net.pods["client"], net.pods["server"]
    targets = []
    for i in range(n):
        target = f"/fault/{i}-{nonce}"
        r = net.run(client, ["curl", "-sS", "--max-time", "10", f"http://{server.ip}:{HTTP_PORT}{target}"])
        assert r.returncode == 0, r.stderr
        targets.append(target)
        time.sleep(pause)
    return targets


def test_hub_killed_and_restarted_while_traffic_flows_loses_no_call(node: PodNet, tmp_path: Path) -> None:
    port = _free_port()
    db = tmp_path / "db"
    hub = start_hub_on(db, tmp_path / "hub.log", port)
    worker = WorkerProc(hub, node.glob, tmp_path / "state", tmp_path / "worker.log")
    try:
        _wait_worker(hub, worker, interfaces=3)
        nonce = secrets.token_hex(4)
        made: list[str] = []
        traffic = threading.Thread(target=lambda: made.extend(_requests(node, nonce, 60, 0.1)))
        traffic.start()
        time.sleep(1.5)
        hub.stop(signal.SIGKILL)  # no goodbye: acks in flight are lost, the worker must resend
        time.sleep(3.0)
        hub = start_hub_on(db, tmp_path / "hub.log", port)
        traffic.join(120)
        assert len(made) == 60
        calls = _wait_calls(hub, f'target contains "{nonce}"', len(made), timeout=90)
        assert sorted(c["target"] for c in calls) == sorted(made), "every request exactly once"
        time.sleep(2.5)
        state = _worker_state(hub)
        assert state is not None and state["drops"].get("spool", 0) == 0
        assert state["drops"].get("kernel", 0) == 0
        assert worker.stop() == 0
    finally:
        worker.stop()
        hub.stop()


def test_spool_overflow_drop_counter_equals_the_calls_missing(node: PodNet, tmp_path: Path) -> None:
    port = _free_port()  # the hub comes up only after the traffic
    url = f"http://127.0.0.1:{port}"

    class _Down:
        def __init__(self) -> None:
            self.url = url

    worker = WorkerProc(
        _Down(),  # type: ignore[arg-type]
        node.glob,
        tmp_path / "state",
        tmp_path / "worker.log",
        "--uplink-spool-size",
        "24KiB",  # a few calls' worth: most of what follows cannot be kept
    )
    hub = None
    try:
        deadline = time.monotonic() + 30
        while (
            "capturing on" not in worker.log.read_text() or worker.log.read_text().count("capturing on") < 3
        ):
            assert time.monotonic() < deadline, worker.log.read_text()
            time.sleep(0.2)
        nonce = secrets.token_hex(4)
        made = _requests(node, nonce, 80, 0.0)
        time.sleep(2.0)  # the last calls reach the uplink (and its spool, or its drop counter)
        hub = start_hub_on(tmp_path / "db", tmp_path / "hub.log", port)
        _wait_worker(hub, worker, interfaces=3)
        deadline = time.monotonic() + 60
        while True:
            stored = _calls(hub, f'target contains "{nonce}"')
            state = _worker_state(hub)
            dropped = state["drops"].get("spool", 0) if state else 0
            if len(stored) + dropped == len(made) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert dropped > 0, "the spool was meant to overflow"
        assert len(stored) + dropped == len(made), (len(stored), dropped, len(made))
        assert len({c["target"] for c in stored}) == len(stored), "stored once each"
        assert worker.stop() == 0
    finally:
        worker.stop()
        if hub is not None:
            hub.stop()
