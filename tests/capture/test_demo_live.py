"""`podshark demo --no-ui` as a user runs it: the workload, the worker and an embedded hub, end to end.

The calls it stored must show the demo's topology and nothing else — the edges between processes
(client process, server process, protocol) equal `podshark.demo.topology.EDGES` exactly (the DNS
server process is dnsmasq when Debian's is installed, else the demo's own `dns`) — with the errors
and the slow calls the workload makes, every conversation seen from its start, and the demo's bearer
token masked before it left the worker.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from hub import schema
from hub.store import Store
from podshark.demo import requirements_missing
from podshark.demo.topology import EDGES
from tests.hub.test_service import REPO

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("capture-worker"))

SERVER_NAMES = {"dnsmasq": "dns"}  # process name -> service name


def run_demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`podshark demo --no-ui` for 12 s at 10 calls/s, its store in ``tmp_path/db``."""
    return subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "podshark"),
            "demo",
            "--no-ui",
            "--duration",
            "12",
            "--rate",
            "10",
            "--db",
            str(tmp_path / "db"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def test_demo_captures_exactly_its_topology(tmp_path: Path) -> None:
    reason = requirements_missing()
    if reason:
        pytest.skip(reason)
    r = run_demo(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 dropped by the kernel, 0 calls dropped by the uplink" in r.stderr, r.stderr[-2000:]
    store = Store(tmp_path / "db")
    try:
        rows, _ = store.query("", [], limit=100_000, columns=schema.RECORD_COLUMNS)
        calls = [schema.call_from_row(*row) for row in rows]
    finally:
        store.close()
    assert len(calls) > 50
    edges = {(c.src.process, SERVER_NAMES.get(c.dst.process or "", c.dst.process), c.protocol) for c in calls}
    assert edges == {(e.client, e.server, e.protocol) for e in EDGES}
    http_status = {c.status for c in calls if c.protocol == "http"}
    assert {200, 404, 500} <= http_status
    assert {0, 5} <= {c.status for c in calls if c.protocol == "grpc"}  # OK and NOT_FOUND
    assert any(c.latency_ns and c.latency_ns >= 300_000_000 for c in calls if c.protocol == "http")
    assert not any("mid-stream" in c.flags for c in calls), "every conversation seen from its start"
    to_api = [c for c in calls if c.dst.process == "api"]
    assert to_api and all("redacted" in c.flags for c in to_api)
    for c in to_api:
        assert c.request is not None
        values = [v for k, v in c.request.headers if k.lower() == "authorization"]
        assert values and all("demo-secret" not in v for v in values)
