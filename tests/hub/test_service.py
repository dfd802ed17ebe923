"""The hub as a user runs it: a real `python -m podshark hub` process on loopback, a real DuckDB
directory, a bearer token, and the real `podshark import` / `podshark calls` clients.

The oracle for what the hub must answer is `dissect_path` on the same captures, filtered with
`dissect.filter`'s predicate: the hub's SQL path must give exactly those calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dissect.engine import dissect_path, file_source_id
from dissect.filter import parse
from dissect.model import Call, Endpoint
from tests.conftest import FIXTURES, REPO

TOKEN = "test-token-0123456789"
FILES = [
    FIXTURES / "http1__zeek_pipelined-requests.pcap",
    FIXTURES / "http2__sv_http2-range.pcap",
    FIXTURES / "kafka__deepflow_produce-v9.pcap",
    FIXTURES / "dns__zeek_dns-edns-ecs.pcap",
]
PIPELINED = FILES[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PODSHARK_TOKEN"}
    if token is not None:
        env["PODSHARK_TOKEN"] = token
    return env


@dataclass
class Hub:
    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hub_argv(db: Path, port: int) -> list[str]:
    listen = f"127.0.0.1:{port}"
    return [
        sys.executable,
        "-m",
        "podshark",
        "hub",
        "--db",
        str(db),
        "--listen",
        listen,
        "--batch-interval",
        "0.2",
    ]


def start_hub(db: Path, log: Path, port: int | None = None) -> Hub:
    """A hub process on a free port (or on ``port``: to come back where a worker keeps reconnecting)."""
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            hub_argv(db, port),
            cwd=REPO,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    hub = Hub(proc, url, db, log)
    deadline = time.monotonic() + 60  # a restart after kill -9 replays the WAL first
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return hub
        except OSError:
            time.sleep(0.1)
    hub.stop()
    raise AssertionError(f"hub did not come up: {log.read_text()}")


def podshark(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "podshark", *args], cwd=REPO, env=_env(token), capture_output=True, timeout=180
    )


def get(hub: Hub, path: str, token: str | None = TOKEN, **query: str) -> tuple[int, Any]:
    url = hub.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def oracle(files: list[Path], text: str) -> list[Call]:
    f = parse(text)
    return [c for path in files for c in dissect_path(path) if f.matches(c)]


def comparable(c: Call) -> dict[str, Any]:
    d = c.to_dict()
    d["ingest_ts"] = None
    return d


def import_ok(hub: Hub, path: Path) -> str:
    r = podshark("import", str(path), "--hub", hub.url, "--batch", "2")
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("hub")
    h = start_hub(d / "db", d / "hub.log")
    try:
        for f in FILES:
            out = import_ok(h, f)
            n = sum(1 for _ in dissect_path(f))
            assert f"{n} calls sent, {n} acknowledged" in out
        yield h
    finally:
        h.stop()


# ---- auth


def test_healthz_is_open_and_everything_else_needs_the_token(hub: Hub) -> None:
    assert get(hub, "/healthz", token=None) == (200, {"ok": True})
    for token in (None, "wrong", TOKEN + "x", ""):
        status, body = get(hub, "/api/v1/calls", token=token)
        assert status == 401 and "error" in body
        status, _ = get(hub, "/api/v1/calls/nope", token=token)
        assert status == 401
    assert get(hub, "/api/v1/calls", limit="1")[0] == 200

    async def ws(headers: dict[str, str]) -> int:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(hub.url + "/api/v1/ingest", headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert asyncio.run(ws({})) == 401
    assert asyncio.run(ws({"Authorization": "Bearer wrong"})) == 401
    r = podshark("calls", "--hub", hub.url, token="wrong")
    assert r.returncode != 0 and b"unauthorized" in r.stderr


def test_hub_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "podshark", "hub", "--db", str(tmp_path / "db")]
    r = subprocess.run([*base, "--listen", "127.0.0.1:1"], env=_env(None), capture_output=True, timeout=60)
    assert r.returncode == 2 and b"no token" in r.stderr
    r = subprocess.run(
        [*base, "--listen", "0.0.0.0:1", "--insecure-no-token"],
        env=_env(None),
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 2 and b"loopback" in r.stderr


# ---- query


def test_calls_filter_json_matches_the_dissector_and_predicate(hub: Hub) -> None:
    text = "http and status == 200"
    r = podshark("calls", "--hub", hub.url, "--filter", text, "--json")
    assert r.returncode == 0, r.stderr.decode()
    got = [Call.from_json(line) for line in r.stdout.splitlines()]
    want = oracle(FILES, text)
    assert len(want) == 5  # the five pipelined GETs
    assert [c.id for c in got] == sorted(
        (c.id for c in want), key=lambda i: next(w.ts for w in want if w.id == i)
    )
    assert {c.id: comparable(c) for c in got} == {c.id: comparable(c) for c in want}
    assert all(c.ingest_ts for c in got)
    assert all(c.response is not None and c.response.body for c in got)


@pytest.mark.parametrize(
    "text",
    ["", "http2", "kafka or dns", "dns and status == 0", "not http", 'target startswith "/images"'],
)
def test_other_filters_match_the_oracle(hub: Hub, text: str) -> None:
    r = podshark("calls", "--hub", hub.url, "--filter", text, "--json", "--no-bodies")
    assert r.returncode == 0, r.stderr.decode()
    got = sorted(Call.from_json(line).id for line in r.stdout.splitlines())
    assert b'"body"' not in r.stdout
    assert got == sorted(c.id for c in oracle(FILES, text))


def test_table_output(hub: Hub) -> None:
    r = podshark("calls", "--hub", hub.url, "--filter", "http and status == 200")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["TIME", "PROTO", "METHOD"]
    rows = [x for x in lines[1:] if not x.startswith("#")]
    assert len(rows) == 5 and "/style/enhanced.css" in rows[0]


def test_importing_twice_stores_each_call_once(hub: Hub) -> None:
    prefix = file_source_id(PIPELINED)
    flt = f'id startswith "{prefix}/"'
    before = podshark("calls", "--hub", hub.url, "--filter", flt, "--json", "--no-bodies")
    import_ok(hub, PIPELINED)
    after = podshark("calls", "--hub", hub.url, "--filter", flt, "--json", "--no-bodies")
    ids = [Call.from_json(x).id for x in after.stdout.splitlines()]
    assert len(ids) == len(set(ids)) == 5
    assert before.stdout.count(b"\n") == 5


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_with_cursor_visits_every_call_once(hub: Hub, order: str) -> None:
    want = [c for f in FILES for c in dissect_path(f)]
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        q = {"limit": "3", "order": order}
        if cursor:
            q["cursor"] = cursor
        status, body = get(hub, "/api/v1/calls", **q)
        assert status == 200, body
        assert len(body["calls"]) <= 3
        assert all("body" not in (c["response"] or {}) for c in body["calls"])
        seen += [c["id"] for c in body["calls"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == len(want)
    ts = {c.id: (c.ts, c.id) for c in want}
    assert seen == sorted(seen, key=lambda i: ts[i], reverse=order == "desc")
    assert pages == -(-len(want) // 3) or pages == len(want) // 3 + 1


def test_limit_and_time_window(hub: Hub) -> None:
    r = podshark("calls", "--hub", hub.url, "--limit", "3", "--json", "--no-bodies")
    assert r.returncode == 0 and r.stdout.count(b"\n") == 3
    # the pipelined capture is from 2009-11-18; the other captures are later
    r = podshark(
        "calls", "--hub", hub.url, "--from", "2009-11-18T00:00:00Z", "--to", "2009-11-19T00:00:00Z", "--json"
    )
    assert r.returncode == 0, r.stderr.decode()
    assert {Call.from_json(x).id.split("/")[0] for x in r.stdout.splitlines()} == {file_source_id(PIPELINED)}
    status, body = get(hub, "/api/v1/calls", **{"from": "-5m"})
    assert status == 200 and body["calls"] == []  # no capture is from the last five minutes
    status, body = get(hub, "/api/v1/calls", **{"from": "yesterday"})
    assert status == 400 and "not a time" in body["error"]


def test_filter_syntax_error_is_a_400_with_position(hub: Hub) -> None:
    status, body = get(hub, "/api/v1/calls", filter="http and status = 200")
    assert status == 400
    assert body["position"] == 16 and '"=="' in body["error"]
    status, body = get(hub, "/api/v1/calls", filter="status ==")
    assert status == 400 and body["position"] == 9 and body["expected"] == "a value"
    r = podshark("calls", "--hub", hub.url, "--filter", "status ==")
    assert r.returncode == 2 and b"at 9" in r.stderr
    # hostile text is data, never SQL
    status, body = get(hub, "/api/v1/calls", filter='target == "x\'; DROP TABLE calls; --"')
    assert status == 200 and body["calls"] == []
    assert get(hub, "/api/v1/calls", limit="1")[1]["calls"]


def test_get_call_by_id_with_bodies(hub: Hub) -> None:
    want = next(iter(dissect_path(PIPELINED)))
    status, body = get(hub, "/api/v1/calls/" + want.id)
    assert status == 200
    got = Call.from_dict(body)
    assert comparable(got) == comparable(want)
    assert got.response is not None and got.response.body
    status, body = get(hub, "/api/v1/calls/nobody/000000001")
    assert status == 404 and "error" in body


# ---- ingest protocol


def _call(call_id: str) -> Call:
    return Call(
        id=call_id,
        protocol="dns",
        transport="udp",
        src=Endpoint(ip="10.0.0.1", port=5353),
        dst=Endpoint(ip="10.0.0.2", port=53),
        request_ts=1_500_000_000_000_000_000,
        response_ts=1_500_000_000_001_000_000,
        method="QUERY",
        target="example.test",
        status=0,
    ).finish()


async def _ingest_session(url: str, frames: list[str], until_seq: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(url + "/api/v1/ingest", headers={"Authorization": f"Bearer {TOKEN}"}) as ws,
    ):
        for f in frames:
            await ws.send_str(f)
        while True:
            msg = await asyncio.wait_for(ws.receive(), 30)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            got.append(json.loads(msg.data))
            if got[-1].get("type") == "ack" and got[-1].get("seq") == until_seq:
                return got


def test_malformed_frames_get_errors_and_the_stream_goes_on(tmp_path: Path) -> None:
    h = start_hub(tmp_path / "db", tmp_path / "hub.log")
    try:
        good1, good2 = _call("malformed-test/1").to_json(), _call("malformed-test/2").to_json()
        v9 = _call("malformed-test/9").to_json().replace('"v":1', '"v":9', 1)
        frames = [
            '{"type":"hello","worker":"t","capabilities":["calls"]}',
            "this is not json",
            '{"type":"mystery"}',
            '["a", "list"]',
            '{"type":"calls","calls":[]}',  # no seq
            '{"type":"calls","seq":1,"calls":[' + good1 + ',{"id":"x"},' + v9 + "]}",
            '{"type":"packets","seq":2,"frames":[]}',
            '{"type":"calls","seq":3,"calls":[' + good2 + "," + good1 + "]}",
        ]
        got = asyncio.run(_ingest_session(h.url, frames, until_seq=3))
        errors = [m for m in got if m["type"] == "error"]
        acks = {m["seq"]: m for m in got if m["type"] == "ack"}
        assert any("not JSON" in e["error"] for e in errors)
        assert any("mystery" in e["error"] for e in errors)
        assert any("seq" in e["error"] for e in errors)
        bad = [e for e in errors if e.get("seq") == 1]
        assert [e["index"] for e in bad] == [1, 2] and "version" in bad[1]["error"]
        assert len(errors) == 6
        assert acks[1]["rejected"] == 2 and acks[1]["calls"] == 1
        assert 2 in acks and acks[3]["rejected"] == 0
        for i in (1, 2):
            status, body = get(h, f"/api/v1/calls/malformed-test/{i}")
            assert status == 200 and body["target"] == "example.test"
        _, listed = get(h, "/api/v1/calls")
        assert [c["id"] for c in listed["calls"]] == ["malformed-test/2", "malformed-test/1"]
    finally:
        h.stop()


def test_kill_9_after_acks_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db"
    h = start_hub(db, tmp_path / "hub.log")
    try:
        for f in FILES[:2]:
            import_ok(h, f)
        acked = sorted(c.id for f in FILES[:2] for c in dissect_path(f))
    finally:
        h.stop(signal.SIGKILL)
    assert h.proc.returncode == -signal.SIGKILL
    h2 = start_hub(db, tmp_path / "hub.log")
    try:
        r = podshark("calls", "--hub", h2.url, "--json")
        assert r.returncode == 0, r.stderr.decode()
        assert sorted(Call.from_json(x).id for x in r.stdout.splitlines()) == acked
    finally:
        h2.stop()


def test_import_waits_for_a_hub_that_comes_up_late(tmp_path: Path) -> None:
    """The client reconnects with backoff instead of failing at the first refused connection."""
    port = _free_port()
    imp = subprocess.Popen(
        [sys.executable, "-m", "podshark", "import", str(PIPELINED), "--hub", f"http://127.0.0.1:{port}"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    assert imp.poll() is None
    log = tmp_path / "hub.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            hub_argv(tmp_path / "db", port),
            cwd=REPO,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    h = Hub(proc, f"http://127.0.0.1:{port}", tmp_path / "db", log)
    try:
        out_b, err = imp.communicate(timeout=120)
        assert imp.returncode == 0, err.decode()
        assert b"5 calls sent, 5 acknowledged" in out_b
        assert len(get(h, "/api/v1/calls")[1]["calls"]) == 5
    finally:
        h.stop()
