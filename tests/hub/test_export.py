"""pcap export through the hub, for imported captures: `podshark import` sends the frames,
`GET /api/v1/export` and `podshark export` give them back as pcapng.

A real `python -m podshark hub` process, real DuckDB files, the real import client. The oracles
are independent of the export path: `dissect.pcapio` reading the original capture (the frames must
come back byte for byte, with their timestamps and wire lengths), tshark reading both files (the
same HTTP requests, HTTP/2 HEADERS and DNS queries), and `dissect.filter`'s predicate choosing the
calls whose connections a filtered export must hold.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissect.engine import Engine, file_source_id
from dissect.filter import parse
from dissect.pcapio import CaptureReader, Packet
from dissect.pcapng_write import PcapngWriter
from hub.store import Store
from tests.conftest import FIXTURES
from tests.hub.test_service import TOKEN, Hub, _call, get, podshark, start_hub

PIPELINED = FIXTURES / "http1__zeek_pipelined-requests.pcap"
H2 = FIXTURES / "http2__sv_http2-range.pcap"  # h2c upgrades and plain HTTP/1 on five connections
DNS = FIXTURES / "dns__ndpi_dns_fragmented.pcap"  # UDP DNS answers in IPv4 and IPv6 fragments
FILES = [PIPELINED, H2, DNS]


# ---- helpers


def fetch(hub: Hub, token: str | None = TOKEN, **query: str) -> tuple[int, dict[str, str], bytes]:
    url = hub.url + "/api/v1/export" + ("?" + urllib.parse.urlencode(query) if query else "")
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def frames_of(data: bytes, tmp: Path) -> list[Packet]:
    tmp.write_bytes(data)
    return list(CaptureReader(tmp))


def by_time(frames: list[Packet]) -> list[Packet]:
    return sorted(frames, key=lambda p: p[0])  # stable: ties keep capture order


def expected(files: list[Path], text: str = "") -> tuple[list[Packet], int]:
    """The frames a filtered export must hold, from the original captures: the frames of every
    connection that carries a call the filter's predicate accepts; and how many calls matched."""
    flt = parse(text)
    frames: list[Packet] = []
    ncalls = 0
    for path in files:
        seen: list[tuple[Packet, str]] = []

        def hook(ts: int, lt: int, f: bytes, w: int, fl: str, add: Any = seen.append) -> None:
            add(((ts, lt, f, w), fl))

        engine = Engine(file_source_id(path), on_frame=hook)
        calls = [c for c in engine.run(CaptureReader(path)) if flt.matches(c)]
        ncalls += len(calls)
        flows = {c.flow_id for c in calls}
        frames += [p for p, fl in seen if fl in flows]
    return by_time(frames), ncalls


def tshark_lines(path: Path, display_filter: str, *fields: str) -> list[str]:
    argv = ["tshark", "-r", str(path), "-Y", display_filter]
    if fields:
        argv += ["-T", "fields", *[a for f in fields for a in ("-e", f)]]
    r = subprocess.run(argv, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().splitlines()


def import_all(hub: Hub, path: Path) -> str:
    r = podshark("import", str(path), "--hub", hub.url, "--batch", "2")
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("export")
    h = start_hub(d / "db", d / "hub.log")
    try:
        for f in FILES:
            out = import_all(h, f)
            n = sum(1 for _ in CaptureReader(f))  # every frame of these captures is in a call's flow
            assert f"{n} frames sent, {n} acknowledged" in out, out
        yield h
    finally:
        h.stop()


# ---- everything


@pytest.mark.tshark
def test_export_everything_gives_the_original_frames_byte_for_byte(hub: Hub, tmp_path: Path) -> None:
    status, headers, body = fetch(hub)
    assert status == 200
    assert headers["Content-Type"] == "application/x-pcapng"
    assert (
        headers["Content-Disposition"].startswith("attachment; filename=")
        and ".pcapng" in headers["Content-Disposition"]
    )
    original = by_time([p for f in FILES for p in CaptureReader(f)])
    got = frames_of(body, tmp_path / "all.pcapng")
    assert got == original  # time, link type, bytes and wire length of every frame, in time order
    assert headers["X-Podshark-Frames"] == str(len(original))
    assert int(headers["X-Podshark-Calls"]) == expected(FILES)[1]

    out = tmp_path / "all.pcapng"
    for display_filter in (
        "http.request",
        "http2.type == 1",
        "dns.flags.response == 0",
        "dns",
        "ipv6.fragment",
    ):
        want = sum(len(tshark_lines(f, display_filter)) for f in FILES)
        assert len(tshark_lines(out, display_filter)) == want, display_filter
    assert len(tshark_lines(out, "http.request")) == 10


@pytest.mark.parametrize(
    "text",
    [
        'target ~ "^/images"',  # two calls of the pipelined connection: the whole connection
        "http2",  # three of the five connections of the h2c capture
        'dns and target == "fg2.weberlab.de"',  # five UDP flows, some answered in fragments
        "dns and status != 0",
    ],
)
def test_a_filter_exports_only_the_connections_of_its_calls(hub: Hub, tmp_path: Path, text: str) -> None:
    status, headers, body = fetch(hub, filter=text)
    assert status == 200, body[:300]
    want, ncalls = expected(FILES, text)
    assert want and ncalls
    assert frames_of(body, tmp_path / "f.pcapng") == want
    assert headers["X-Podshark-Calls"] == str(ncalls)
    assert headers["X-Podshark-Frames"] == str(len(want))


@pytest.mark.tshark
def test_tshark_sees_only_the_selected_calls(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "h2.pcapng"
    out.write_bytes(fetch(hub, filter="http2")[2])
    assert len(tshark_lines(out, "http.request")) == 3  # the three upgrade requests, not the plain GETs
    assert len(tshark_lines(out, "http2.type == 1")) == len(tshark_lines(H2, "http2.type == 1"))
    out = tmp_path / "fg2.pcapng"
    out.write_bytes(fetch(hub, filter='dns and target == "fg2.weberlab.de"')[2])
    names = tshark_lines(out, "dns.flags.response == 0", "dns.qry.name")
    in_original = tshark_lines(DNS, "dns.flags.response == 0", "dns.qry.name")
    assert names == [n for n in in_original if n == "fg2.weberlab.de"] and len(names) == 4
    assert len(tshark_lines(out, "dns.flags.response == 1")) == 4  # every answer reassembled
    assert tshark_lines(out, "ip.flags.mf == 1 or ipv6.fragment")  # from their fragments


@pytest.mark.tshark
def test_an_empty_selection_is_a_valid_pcapng(hub: Hub, tmp_path: Path) -> None:
    status, headers, body = fetch(hub, filter="status == 999")
    assert status == 200 and headers["X-Podshark-Frames"] == "0" and headers["X-Podshark-Calls"] == "0"
    out = tmp_path / "empty.pcapng"
    out.write_bytes(body)
    assert frames_of(body, out) == []
    r = subprocess.run(["capinfos", "-c", "-M", str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0 and "Number of packets:   0" in r.stdout.decode()


def test_window_selects_calls_and_frames_window_trims_the_frames(hub: Hub, tmp_path: Path) -> None:
    calls = sorted(
        (c for c in Engine(file_source_id(PIPELINED)).run(CaptureReader(PIPELINED))), key=lambda c: c.ts
    )
    start = calls[2].ts  # the third of the five pipelined requests
    end = calls[3].ts + 1  # ... up to the fourth
    conn = list(CaptureReader(PIPELINED))
    status, headers, body = fetch(hub, **{"from": str(start), "to": str(end)})
    assert status == 200 and headers["X-Podshark-Calls"] == "2"
    assert frames_of(body, tmp_path / "c.pcapng") == conn  # the whole connection (the default)

    status, headers, body = fetch(hub, **{"from": str(start), "to": str(end), "frames": "window"})
    assert status == 200 and headers["X-Podshark-Calls"] == "2"
    last_end = max(c.response_ts or c.ts for c in calls[2:4])
    trimmed = [p for p in conn if start <= p[0] <= max(end - 1, last_end)]
    got = frames_of(body, tmp_path / "w.pcapng")
    assert got == trimmed and 0 < len(got) < len(conn)


def test_importing_twice_stores_each_frame_once(hub: Hub) -> None:
    before = fetch(hub)
    out = import_all(hub, PIPELINED)
    assert "49 frames sent, 49 acknowledged" in out  # acknowledged, and stored nothing new
    after = fetch(hub)
    assert after[0] == 200 and after[2] == before[2]
    assert after[1]["X-Podshark-Frames"] == before[1]["X-Podshark-Frames"]


def test_a_capture_of_several_link_types_comes_back_with_each_frame_its_own(
    hostile_hub: Hub, tmp_path: Path
) -> None:
    """One connection seen as Ethernet and as raw IP frames (a pcapng with two interfaces): the
    import's messages carry a per-packet linktype where it differs, the export two interfaces."""
    mixed = tmp_path / "mixed.pcapng"
    w = PcapngWriter()
    frames: list[Packet] = []
    for i, (ts, lt, data, wire) in enumerate(CaptureReader(PIPELINED)):
        if i % 3 == 1:  # LINKTYPE_RAW: the same IP packet without its Ethernet header
            lt, data, wire = 101, data[14:], wire - 14
        frames.append((ts, lt, data, wire))
    mixed.write_bytes(w.header() + b"".join(w.packet(ts, lt, d, wl) for ts, lt, d, wl in frames))
    out = import_all(hostile_hub, mixed)
    assert "5 calls sent, 5 acknowledged; 49 frames sent, 49 acknowledged" in out
    prefix = file_source_id(mixed)
    status, _, body = fetch(hostile_hub, filter=f'id startswith "{prefix}/"')
    assert status == 200 and frames_of(body, tmp_path / "back.pcapng") == frames
    assert {p[1] for p in frames} == {1, 101}


# ---- errors


def test_filter_errors_are_400_with_position_and_bad_parameters_400(hub: Hub) -> None:
    status, _, body = fetch(hub, filter="http and status = 200")
    err = json.loads(body)
    assert status == 400 and err["position"] == 16 and '"=="' in err["error"]
    status, _, body = fetch(hub, filter="status ==")
    err = json.loads(body)
    assert status == 400 and err["position"] == 9 and err["expected"] == "a value"
    status, _, body = fetch(hub, **{"from": "yesterday"})
    assert status == 400 and "not a time" in json.loads(body)["error"]
    status, _, body = fetch(hub, frames="all")
    assert status == 400 and "frames must be" in json.loads(body)["error"]
    # hostile text is data, never SQL
    status, headers, _ = fetch(hub, filter='target == "x\'; DROP TABLE packets; --"')
    assert status == 200 and headers["X-Podshark-Frames"] == "0"
    assert fetch(hub, filter="http2")[1]["X-Podshark-Frames"] != "0"


def test_export_needs_the_token(hub: Hub) -> None:
    for token in (None, "wrong", ""):
        status, _, body = fetch(hub, token=token)
        assert status == 401 and "error" in json.loads(body)


# ---- the command


@pytest.mark.tshark
def test_podshark_export_writes_a_file_tshark_opens(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "dns.pcapng"
    r = podshark("export", "--hub", hub.url, "--filter", "dns", "-o", str(out), "--progress", "always")
    assert r.returncode == 0, r.stderr.decode()
    want, _ = expected(FILES, "dns")
    assert r.stdout.decode().strip() == f"wrote {out}: {len(want)} frames of 21 connections (22 calls)"
    assert b"export [" in r.stderr  # the progress bar was drawn
    assert list(CaptureReader(out)) == want
    assert len(tshark_lines(out, "dns.flags.response == 0")) == 22
    assert not (tmp_path / "dns.pcapng.partial").exists()

    r = podshark(
        "export",
        "--hub",
        hub.url,
        "--from",
        "2009-11-18T00:00:00Z",
        "--to",
        "2009-11-19T00:00:00Z",
        "-o",
        "-",
        "--progress",
        "never",
    )
    assert r.returncode == 0 and b"wrote stdout: 49 frames of 1 connections (5 calls)" in r.stderr
    assert frames_of(r.stdout, tmp_path / "stdout.pcapng") == list(CaptureReader(PIPELINED))


def test_podshark_export_errors_say_what_to_do(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "x.pcapng"
    r = podshark("export", "--hub", hub.url, "--filter", "status ==", "-o", str(out))
    err = r.stderr.decode()
    assert r.returncode == 2 and "at 9" in err and "  status ==\n           ^" in err
    r = podshark("export", "--hub", hub.url, "-o", str(out), token="wrong")
    assert r.returncode == 1 and "401" in r.stderr.decode() and "PODSHARK_TOKEN" in r.stderr.decode()
    r = podshark("export", "--hub", "http://127.0.0.1:1", "-o", str(out))
    assert r.returncode == 1 and "cannot reach the hub at http://127.0.0.1:1" in r.stderr.decode()
    r = podshark("export", "--hub", hub.url, "-o", str(tmp_path / "no" / "such" / "dir.pcapng"))
    assert r.returncode == 1 and "cannot write" in r.stderr.decode()
    assert not out.exists()


# ---- the store on its own (real DuckDB files)


def test_store_pages_frames_in_time_order_across_partitions(tmp_path: Path) -> None:
    hour = 3600 * 10**9
    store = Store(tmp_path / "db", retain_ns=2 * hour)
    try:
        rows = [
            (f"s/f{i % 3}", 1000 + (i * 7919) % 500, 0, 1, 100, bytes([i % 251]) * (1 + i % 40))
            for i in range(600)
        ]
        now = 100 * hour
        assert store.add_packets(rows[:400], now) == 400
        assert store.add_packets(rows, now + hour) == 200  # a later partition; the first 400 known
        assert store.add_packets(rows, now + hour) == 0
        assert len(store.partitions()) == 2
        want = [(r[1], r[3], r[4], r[5]) for r in rows]
        got = list(store.packets(["s/f0", "s/f1", "s/f2"], page=7, fetch=3))
        assert sorted(got, key=lambda r: r[0]) == got
        assert sorted(got) == sorted(want)
        sub = list(store.packets(["s/f1"], from_ns=1100, to_ns=1300, page=5))
        assert sorted(sub) == sorted(
            (r[1], r[3], r[4], r[5]) for r in rows if r[0] == "s/f1" and 1100 <= r[1] < 1300
        )
        assert store.count_packets(["s/f1"], 1100, 1300) == (len(sub), sum(len(r[3]) for r in sub))
        assert list(store.packets([])) == [] and list(store.packets(["nobody"])) == []
        # identical frames in one message (rep 0 and 1) are both kept, once
        twins = [("t/f1", 5, 0, 1, 3, b"abc"), ("t/f1", 5, 1, 1, 3, b"abc"), ("t/f1", 5, 1, 1, 3, b"abc")]
        assert store.add_packets(twins, now) == 2
        assert list(store.packets(["t/f1"])) == [(5, 1, 3, b"abc")] * 2
        # retention drops frames with their partition
        store.enforce(now + 3 * hour + 1)
        assert len(store.partitions()) == 1
        assert len(list(store.packets(["s/f0", "s/f1", "s/f2"]))) == 200
    finally:
        store.close()


# ---- hostile packets messages


@pytest.fixture(scope="module")
def hostile_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("hostile-packets")
    h = start_hub(d / "db", d / "hub.log")
    try:
        yield h
    finally:
        h.stop()


async def _session(url: str, frames: list[str], until_seq: int) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
        s.ws_connect(url + "/api/v1/ingest", max_msg_size=0) as ws,
    ):
        for f in frames:
            await ws.send_str(f)
        while True:
            msg = await asyncio.wait_for(ws.receive(), 30)
            assert msg.type == aiohttp.WSMsgType.TEXT, f"the hub ended the stream: {msg}"
            replies.append(json.loads(msg.data))
            if replies[-1].get("type") == "ack" and replies[-1].get("seq") == until_seq:
                return replies


ETH = next(iter(CaptureReader(PIPELINED)))[2]
GOOD: dict[str, Any] = {
    "flow_id": "good/f1",
    "ts": 1_500_000_000_000_000_000,
    "orig_len": len(ETH),
    "data": base64.b64encode(ETH).decode(),
}


def _packets(seq: object, packets: list[Any], linktype: object = 1) -> str:
    return json.dumps({"type": "packets", "seq": seq, "linktype": linktype, "packets": packets})


def test_bad_packets_are_errors_with_their_index_and_the_good_ones_are_stored(hostile_hub: Hub) -> None:
    call = _call("good/1")
    call.flow_id = "good/f1"
    bad_b64 = dict(GOOD, data="not base64!")
    short = dict(GOOD, orig_len=10)
    no_lt = {k: v for k, v in GOOD.items()}
    huge = dict(GOOD, data=base64.b64encode(b"x" * 300_000).decode())
    negative = dict(GOOD, ts=-1)
    frames = [
        '{"type":"calls","seq":1,"calls":[' + call.to_json() + "]}",
        _packets(2, [GOOD, bad_b64, dict(GOOD, ts=GOOD["ts"] + 1), short, huge, negative]),
        _packets(3, [no_lt], linktype=None),
        '{"type":"packets","packets":[]}',  # no seq
        _packets(4, [bad_b64] * 50),  # 20 errors and a count, not 50
        _packets(5, [GOOD], linktype=70000),
        _packets(6, [GOOD]),  # a resend: stored once
    ]
    replies = asyncio.run(_session(hostile_hub.url, frames, until_seq=6))
    errors = [r for r in replies if r["type"] == "error"]
    acks = {r["seq"]: r for r in replies if r["type"] == "ack"}
    assert {r["type"] for r in replies} == {"ack", "error"}
    e2 = [e for e in errors if e.get("seq") == 2]
    assert [e["index"] for e in e2] == [1, 3, 4, 5]
    assert "base64" in e2[0]["error"] and "orig_len" in e2[1]["error"] and "length" in e2[2]["error"]
    assert acks[2]["packets"] == 2 and acks[2]["rejected"] == 4
    assert acks[3]["packets"] == 0 and "linktype" in next(e for e in errors if e.get("seq") == 3)["error"]
    assert any(e["error"] == "a packets message needs a seq" for e in errors)
    assert len([e for e in errors if e.get("seq") == 4]) == 21 and acks[4]["rejected"] == 50
    assert "30 more" in [e for e in errors if e.get("seq") == 4][-1]["error"]
    assert acks[5]["rejected"] == 1 and acks[6]["packets"] == 1
    status, headers, body = fetch(hostile_hub, filter='id == "good/1"')
    assert status == 200 and headers["X-Podshark-Frames"] == "2"
    got = frames_of(body, hostile_hub.db.parent / "good.pcapng")
    assert got == [(GOOD["ts"], 1, ETH, len(ETH)), (GOOD["ts"] + 1, 1, ETH, len(ETH))]


WILD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
FIELD_VALUES = {
    "flow_id": st.one_of(WILD, st.just(""), st.just("f" * 300)),
    "ts": st.one_of(WILD, st.sampled_from([-1, 2**63 - 1, 2**63, 2**64, 0])),
    "orig_len": st.one_of(WILD, st.sampled_from([-1, 0, 2**32 - 1, 2**32, 2**70])),
    "linktype": st.one_of(WILD, st.sampled_from([-1, 0, 1, 65535, 65536])),
    "data": st.one_of(
        WILD,
        st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()),
        st.sampled_from(["!!", "abc", "====", "YQ", "YQ=", "\u00e9t\u00e9"]),
    ),
}
SEQ = st.one_of(WILD.filter(lambda v: not isinstance(v, int) or v < 10**6 or v > 10**8))


@st.composite
def hostile_packet(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 5)) == 0:
        return draw(WILD)
    pkt: dict[str, Any] = dict(GOOD)
    for name in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=3, unique=True)):
        if draw(st.booleans()):
            pkt.pop(name, None)
        else:
            pkt[name] = draw(FIELD_VALUES[name])
    return pkt


@st.composite
def hostile_message(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 2))
    if kind == 0:  # the message's own fields with arbitrary values
        fields = draw(st.dictionaries(st.sampled_from(["linktype", "packets"]), WILD, max_size=2))
        if draw(st.booleans()):
            fields["seq"] = draw(SEQ)
        return json.dumps({"type": "packets", **fields})
    packets: Any = draw(st.lists(hostile_packet(), max_size=6))
    return _packets(draw(SEQ), packets, draw(FIELD_VALUES["linktype"]))


_counter = iter(range(10**9))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(st.lists(hostile_message(), min_size=1, max_size=5))
def test_hostile_packets_messages_get_errors_and_the_stream_goes_on(
    hostile_hub: Hub, msgs: list[str]
) -> None:
    seq = 10**7 + next(_counter)
    good = dict(GOOD, flow_id=f"hostile-good/f{seq}")
    replies = asyncio.run(_session(hostile_hub.url, [*msgs, _packets(seq, [good])], until_seq=seq))
    assert {r["type"] for r in replies} <= {"ack", "error"}
    for r in replies:
        if r["type"] == "error":
            assert isinstance(r["error"], str) and r["error"]
    ack = replies[-1]
    assert ack["packets"] == 1 and ack["rejected"] == 0


def test_the_hub_is_healthy_after_hostile_packets(hostile_hub: Hub) -> None:
    assert get(hostile_hub, "/healthz", token=None) == (200, {"ok": True})
    status, body = get(hostile_hub, "/api/v1/stats")
    assert status == 200 and body["ingest"]["commit_errors"] == 0
