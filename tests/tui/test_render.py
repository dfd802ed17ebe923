"""The detail view's pure renderers and the curl builder, without a running app.

Oracles are real where there is one: `hexdump -C` for the hex dump, `json` for pretty-printing,
bash for shell quoting, a real HTTP/1.1 server (http.server) and a real HTTP/2 server (hypercorn)
receiving what the generated curl command sends, and real calls from fixtures/pcaps (DNS, Kafka,
gRPC) through `dissect_path`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.syntax import Syntax

from dissect.model import Call, Endpoint, Flag, Message
from tests.tui.detail_support import fixture_call, renderable_text
from tui.curl import CurlError, NotHTTP, curl_command, quote_bytes, sanitize
from tui.render.body import HEX_LIMIT, hex_dump, pretty_json, render_body
from tui.render.dns import dns_view, records_table
from tui.render.flags import MEANINGS, flags_view
from tui.render.grpc import MAX_NODES, grpc_summary, grpc_tree, tree_lines
from tui.render.headers import headers_table
from tui.render.identity import identity
from tui.render.info import info_json
from tui.render.kafka import kafka_view, walk
from tui.render.overview import overview, title, tls_text
from tui.render.status import status_text
from tui.render.timing import timing
from tui.render.units import duration, safe, utc

# ---- helpers


def http_call(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    protocol: str = "http",
    **info: Any,
) -> Call:
    return Call(
        id="test/1",
        protocol=protocol,
        src=Endpoint(ip="10.0.0.1", port=40000),
        dst=Endpoint(ip="10.0.0.2", port=8080),
        method=method,
        target=target,
        status=200,
        request=Message(headers=headers or [], body=body, body_size=len(body), wire_size=len(body)),
        response=Message(),
        info=dict(info),
    )


def json_message(body: bytes, ct: str = "application/json") -> Message:
    return Message(headers=[("Content-Type", ct)], body=body, body_size=len(body), wire_size=len(body))


# ---- units, status, overview


def test_times_are_utc_with_nanoseconds_only_when_the_capture_had_them() -> None:
    assert utc(1258577884844956000) == "2009-11-18 20:58:04.844956 UTC"
    assert utc(1258577884844956123) == "2009-11-18 20:58:04.844956123 UTC"
    assert utc(None) == "—"
    assert duration(18_034_000) == "18.034 ms"
    assert duration(301_000) == "301 µs"
    assert duration(999) == "999 ns"
    assert duration(2_500_000_000) == "2.500 s"


def test_status_is_named_and_coloured_by_class() -> None:
    assert status_text("http", 200).plain == "200 (2xx)"
    assert status_text("http", 503).style == "bold red"
    assert status_text("grpc", 5).plain == "5 NOT_FOUND"
    assert status_text("grpc", 0).style == "green"
    assert status_text("dns", 3, {"rcode_name": "NXDOMAIN"}).plain == "3 NXDOMAIN"
    assert status_text("kafka", 3).plain == "3 UNKNOWN_TOPIC_OR_PARTITION"
    assert status_text("http", None).plain == "no status"


def test_overview_timing_identity_and_flags_of_a_real_http_call() -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap")
    text = renderable_text(overview(call))
    for expected in (
        "protocol  http",
        "method  GET",
        "target  /style/enhanced.css",
        "status  200 (2xx)",
        f"id  {call.id}",
        f"flow  {call.flow_id}",
    ):
        assert expected in text, (expected, text)
    assert [line.strip() for line in renderable_text(timing(call)).splitlines()] == [
        "request  2009-11-18 20:58:04.844956 UTC",
        "↓ 18.034 ms",
        "response  2009-11-18 20:58:04.862990 UTC",
        "HTTP version  1.1",
    ]
    assert title(call).plain == "HTTP GET /style/enhanced.css  →  200 (2xx)  ·  18.034 ms"
    ident = renderable_text(identity(call))
    assert "192.168.1.104:1673" in ident and "63.245.209.11:80" in ident


def test_identity_shows_every_field_of_both_ends() -> None:
    call = http_call()
    call.src = Endpoint(
        ip="fd00::1",
        port=5,
        pod="web-1",
        namespace="shop",
        workload="Deployment/web",
        node="node-a",
        container="web",
        pid=812,
        process="node",
        labels={"app": "web", "tier": "front"},
    )
    call.dst = Endpoint(ip="10.96.0.12", port=8080, service="api")
    text = renderable_text(identity(call))
    for expected in ("[fd00::1]:5", "web-1", "shop", "Deployment/web", "node-a", "node (pid 812)"):
        assert expected in text
    assert "app=web" in text and "tier=front" in text and "api" in text


def test_every_flag_has_a_meaning_and_is_shown() -> None:
    assert set(MEANINGS) == set(Flag.ALL)
    text = renderable_text(flags_view([Flag.GAP, Flag.RESPONSE_MISSING, "new-flag"]))
    assert "gap" in text and "never captured" in text
    assert "response-missing" in text and "no response was seen" in text
    assert "does not know" in text
    assert "seen whole" in renderable_text(flags_view([]))


def test_control_characters_never_reach_the_terminal() -> None:
    hostile = "evil\x1b]52;c;AAAA\x07\x9b31m\r\nX-Injected: 1"
    shown = renderable_text(headers_table([("X-Evil", hostile)]))
    assert "\x1b" not in shown and "\x9b" not in shown and "\x07" not in shown
    assert "\\x1b]52;c;AAAA\\x07\\x9b31m" in shown
    assert safe("a\tb\nc") == "a\tb\nc" and safe("a\nb", one_line=True) == "a\\nb"
    body = render_body(Message(body=b"ok\x1b[2Jstill", body_size=13), side="response")
    assert body.kind == "binary"  # not printable text: shown as hex, never raw


def test_headers_keep_order_case_and_repeats() -> None:
    headers = [("Host", "a"), ("X-B", "1"), ("x-b", "2"), ("Set-Cookie", "k=v"), ("Set-Cookie", "k2=v2")]
    lines = renderable_text(headers_table(headers)).splitlines()
    assert [line.split(":")[0] for line in lines] == ["Host", "X-B", "x-b", "Set-Cookie", "Set-Cookie"]
    assert "no headers" in renderable_text(headers_table([]))


# ---- bodies


def test_json_is_pretty_printed_and_highlighted() -> None:
    doc = {"jsonrpc": "2.0", "result": {"ok": True, "list": [1, 2, {"x": None}]}, "id": 103796}
    view = render_body(json_message(json.dumps(doc, separators=(",", ":")).encode()), side="response")
    assert view.kind == "json"
    assert isinstance(view.renderable, Syntax)
    assert view.renderable.code == json.dumps(doc, indent=2)
    highlighted = view.renderable.highlight(view.renderable.code)
    styled = {highlighted.plain[s.start : s.end] for s in highlighted.spans if s.style}
    assert '"jsonrpc"' in styled and "103796" in styled  # keys and numbers get their own colours
    # JSON without a JSON content-type is still recognised; with one but broken, shown as text
    assert render_body(json_message(b'[1, {"a": 2}]', "text/plain")).kind == "json"
    broken = render_body(json_message(b'{"a": 1,', "application/json"))
    assert broken.kind == "text" and any("not valid JSON" in n for n in broken.notes)


def test_large_json_is_cut_with_a_note() -> None:
    doc = [{"i": i, "name": "x" * 50} for i in range(5000)]
    view = render_body(json_message(json.dumps(doc).encode()), text_limit=10_000)
    assert view.kind == "json" and isinstance(view.renderable, Syntax)
    assert len(view.renderable.code) == 10_000
    assert any("showing the first" in n for n in view.notes)
    assert pretty_json(b"[" * 100_000) is None  # too deep: not JSON for us, no RecursionError


def test_body_notes_say_sizes_encoding_and_truncation() -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap")
    view = render_body(call.response, call.info, "response")
    assert view.kind == "text"
    assert view.notes[0] == "2,675 B (2.6 KiB) body, 946 B on the wire"
    assert "content-encoding gzip (shown decoded)" in view.notes
    assert "MOZILLA.ORG" in renderable_text(view.renderable)
    cut = Message(body=b"abc", body_size=10, wire_size=10, truncated=True)
    assert "truncated: only part of this body was captured" in render_body(cut).notes
    assert render_body(None, side="request").kind == "absent"
    assert render_body(cut, loaded=False).kind == "absent"
    assert render_body(Message()).kind == "empty"


def test_text_cut_inside_a_utf8_character_is_still_text() -> None:
    data = ("é" * 10).encode()[:-1]
    view = render_body(Message(body=data, body_size=20, truncated=True))
    assert view.kind == "text" and renderable_text(view.renderable).startswith("é" * 9)


def test_hex_dump_matches_hexdump_c_and_is_bounded() -> None:
    hexdump = shutil.which("hexdump")
    if hexdump is None:
        pytest.skip("hexdump (bsdmainutils) is not installed")
    data = os.urandom(1000) + b"tail"
    ours = hex_dump(data).splitlines()
    theirs = subprocess.run([hexdump, "-C"], input=data, capture_output=True, check=True).stdout.decode()
    assert ours == theirs.splitlines()[:-1]  # hexdump ends with the total offset line
    big = os.urandom(3 * HEX_LIMIT)
    lines = hex_dump(big).splitlines()
    assert len(lines) == HEX_LIMIT // 16
    assert lines[-1].startswith(f"{HEX_LIMIT - 16:08x}")
    view = render_body(Message(body=big, body_size=len(big)))
    assert view.kind == "binary"
    assert any("showing the first 4,096 B (4.0 KiB) of 12,288 B (12.0 KiB) as hex" in n for n in view.notes)


# ---- protocols, from real fixture calls


def test_dns_answers_table_from_a_real_capture() -> None:
    call = fixture_call("dns__zeek_dns-edns-ecs.pcap", 1)
    assert call.target == "ns1.weberdns.de"
    answers = call.info["answers"]
    text = renderable_text(records_table(answers, "answers"), width=2000)
    rows = [line for line in text.splitlines() if "│" in line]
    assert len(rows) == len(answers)
    first = [c.strip() for c in rows[0].split("│")]
    a = answers[0]
    assert (
        first
        == [a["name"], a["type"], str(a["ttl"]), a["data"]]
        == [
            "ns1.weberdns.de",
            "A",
            "3600",
            "80.154.108.230",
        ]
    )
    view = renderable_text(dns_view(call))
    assert "question  ns1.weberdns.de A IN" in view and "rcode  0 NOERROR" in view
    assert "answers (2)" in view and "authority (3)" in view


def test_dns_nxdomain_says_no_answers() -> None:
    call = fixture_call("dns__deepflow_nxdomain.pcap", 0)
    view = renderable_text(dns_view(call))
    assert "rcode  3 NXDOMAIN" in view and "no answers" in view
    assert "flags  aa rd" in view


def test_kafka_records_from_a_real_capture() -> None:
    call = fixture_call("kafka__deepflow_produce-v9.pcap")
    partitions, records = walk(call)
    assert [(p.side, p.topic, p.partition) for p in partitions] == [
        ("request", "zqy-test", 0),
        ("response", "zqy-test", 0),
    ]
    assert partitions[1].fields["base_offset"] == 35 and partitions[1].fields["error_code"] == 0
    assert len(records) == 1
    r = records[0]
    assert (r.topic, r.partition, r.offset, r.key) == ("zqy-test", 0, 0, None)
    assert r.value == {"size": 31, "text": "q" * 31}
    text = renderable_text(kafka_view(call))
    assert "api  Produce (key 0, version 9)" in text
    assert "correlation id  47" in text and "client id  console-producer" in text
    assert "q" * 31 in text and "2024-09-13 08:36:37.021 UTC" in text
    assert "base_offset=35" in text


def test_kafka_topics_and_partitions_of_a_fetch_and_metadata() -> None:
    fetch = fixture_call("kafka__deepflow_fetch-v12-ok.pcap")
    partitions, records = walk(fetch)
    assert [(p.side, p.topic, p.partition, p.fields.get("fetch_offset")) for p in partitions] == [
        ("request", "zqy-test", 0, 36)
    ]
    assert records == []
    assert "no records in this call" in renderable_text(kafka_view(fetch))
    meta = fixture_call("kafka__gosniffer_kafka.pcap", 0)
    partitions, _ = walk(meta)
    assert [(p.side, p.topic, p.partition, p.fields["leader_id"]) for p in partitions] == [
        ("response", "test", 0, 0)
    ]


def test_grpc_tree_from_a_real_capture() -> None:
    call = fixture_call("grpc__deepflow_grpc-unary.pcap")
    tree = grpc_tree(call)
    lines = tree_lines(tree)
    assert lines[0] == "request: 1 message"
    assert lines[1] == "  request #1 · 237 B"
    fields = call.info["messages"]["request"][0]["fields"]
    assert len([line for line in lines if line.startswith("    ")]) == len(fields)
    assert '    7: "deepflow-agent-ee"  (string)' in lines
    assert "    1: 1748919807  (varint)" in lines
    # the response message was cut by the capture: said, not decoded
    assert "  response #1 · 54,864 B (53.6 KiB) · truncated (not decoded)" in lines


def test_grpc_tree_nests_messages_and_is_bounded() -> None:
    call = fixture_call("grpc__deepflow_grpc-server-stream.pcap")
    lines = tree_lines(grpc_tree(call))
    assert "    1  message  (5 fields)" in lines
    assert '      2: "host_id"  (string)' in lines
    assert any("= 0.41047365118073653 double  (i64)" in line for line in lines)
    # a call with far more fields than the tree bound
    many = [{"field": 1, "wire": "varint", "value": i} for i in range(MAX_NODES + 50)]
    big = http_call(
        protocol="grpc", messages={"request": [{"compressed": False, "length": 1, "fields": many}]}
    )
    big_lines = tree_lines(grpc_tree(big))
    # side, message, the fields, the "more" leaf; then the empty response side and its leaf
    assert len(big_lines) == 2 + MAX_NODES + 1 + 2
    assert big_lines[-3].strip() == "… 50 more fields not shown"


# ---- curl: quoting proven by bash


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64).filter(lambda b: b"\x00" not in b))
def test_quoted_bytes_reach_the_program_exactly(data: bytes) -> None:
    out = subprocess.run(
        ["bash", "-c", f"printf %s {quote_bytes(data)}"], capture_output=True, check=True, env={"LC_ALL": "C"}
    ).stdout
    assert out == data


def test_quote_refuses_nul_and_sanitize_makes_file_names() -> None:
    with pytest.raises(ValueError):
        quote_bytes(b"a\x00b")
    assert sanitize("a07f2c5b0f0c/000000001") == "a07f2c5b0f0c-000000001"
    assert sanitize("../../etc/passwd") == "etc-passwd"


def test_not_http_calls_have_no_curl() -> None:
    with pytest.raises(NotHTTP, match="dns call, not an HTTP call"):
        curl_command(fixture_call("dns__deepflow_nxdomain.pcap"))
    with pytest.raises(NotHTTP, match="kafka"):
        curl_command(fixture_call("kafka__deepflow_produce-v9.pcap"))
    only_response = http_call()
    only_response.request, only_response.method = None, None
    with pytest.raises(CurlError, match="only the response"):
        curl_command(only_response)
    with pytest.raises(CurlError, match="CONNECT"):
        curl_command(http_call("CONNECT", "example.com:443"))


# ---- curl: run for real against a real HTTP/1.1 server


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[Seen]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._record
        raise AttributeError(name)

    def _record(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.seen.append(  # type: ignore[attr-defined]
            Seen(self.command, self.path, list(self.headers.items()), body)
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[Seen]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def run_curl(command: str, port: int, cwd: Path) -> None:
    """The copied command, as a user would paste it, sent to our server whatever its URL's host."""
    r = subprocess.run(
        ["bash", "-c", f"{command} -sS --fail -o /dev/null --connect-to ::127.0.0.1:{port}"],
        cwd=cwd,
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr.decode()


def expected_headers(call: Call) -> list[tuple[str, str]]:
    """The headers the server must see besides Host and Content-Length: all of the captured ones but
    the hop-by-hop ones (and `te: trailers`, which HTTP/2 keeps)."""
    drop = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}
    drop |= {"http2-settings", "proxy-connection", "trailer"}
    assert call.request is not None
    h2 = call.protocol in ("http2", "grpc")
    return [
        (k, v)
        for k, v in call.request.headers
        if k.lower() not in drop and (k.lower() != "te" or (h2 and v == "trailers"))
    ]


HTTP1_CASES = {
    "pipelined GET (real)": lambda: fixture_call("http1__zeek_pipelined-requests.pcap", 0),
    "JSON-RPC POST (real)": lambda: fixture_call("http1__ndpi_jsonrpc.pcap"),
    "HEAD (real)": lambda: fixture_call("http1__arkime_http-500-head.pcap"),
    "PUT with quotes and shell metacharacters": lambda: http_call(
        "PUT",
        "/a/b?q=it's&x=$(rm%20-rf)&y=`id`",
        [
            ("Host", "svc.local:8080"),
            ("X-Quote", 'it\'s "quoted" $HOME `x` \\n'),
            ("Content-Type", "text/plain"),
        ],
        b"line one\nit's $HOME\t`cmd` \\ done\n",
    ),
    "binary body with NUL goes through a file": lambda: http_call(
        "POST",
        "/upload",
        [("Host", "h"), ("Content-Type", "application/octet-stream")],
        bytes(range(256)) * 5,
    ),
    "latin-1 header, repeats, empty value, no content-type": lambda: http_call(
        "PATCH",
        "/x",
        [("Host", "h"), ("X-Name", "Jos\xe9"), ("X-Rep", "1"), ("X-Rep", "2"), ("X-Empty", "")],
        b"{}",
    ),
    "target with a fragment sign, brackets and dot segments": lambda: http_call(
        "GET", "/a/../b/./c%20d#frag?x=[1]", [("Host", "h"), ("Accept", "*/*"), ("User-Agent", "probe/1")]
    ),
    "OPTIONS *": lambda: http_call("OPTIONS", "*", [("Host", "h")]),
    "gzip request body sent decoded": lambda: http_call(
        "POST",
        "/z",
        [("Host", "h"), ("Content-Encoding", "gzip"), ("Content-Type", "text/plain")],
        b"decoded text",
        request_content_encoding="gzip",
    ),
}


@pytest.mark.parametrize("case", sorted(HTTP1_CASES))
def test_curl_sends_the_same_request(case: str, http_server: tuple[int, list[Seen]], tmp_path: Path) -> None:
    port, seen = http_server
    call = HTTP1_CASES[case]()
    assert call.request is not None
    cmd = curl_command(call, body_path=str(tmp_path / "body.bin"))
    if cmd.body_file is not None:
        Path(cmd.body_file).write_bytes(cmd.body)
    run_curl(cmd.text, port, tmp_path)
    assert len(seen) == 1
    got = seen[0]
    assert got.method == call.method
    assert got.target == call.target
    sent = [(k, v) for k, v in got.headers if k.lower() not in ("host", "content-length")]
    want = expected_headers(call)
    if call.info.get("request_content_encoding"):
        want = [(k, v) for k, v in want if k.lower() != "content-encoding"]
    assert sent == want
    host = dict((k.lower(), v) for k, v in got.headers)["host"]
    assert host == (call.request.header("host") or call.dst.address())
    assert got.body == call.request.body


# ---- curl: HTTP/2 and gRPC against a real HTTP/2 server (hypercorn, prior knowledge)

ASGI_APP = r"""
import base64, json, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    record = {
        "http_version": scope["http_version"],
        "method": scope["method"],
        "raw_path": scope["raw_path"].decode("latin-1")
        + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body": base64.b64encode(body).decode(),
    }
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps(record) + "\n")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def h2_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    (tmp_path / "recorder_app.py").write_text(ASGI_APP)
    record = tmp_path / "record.jsonl"
    port = _free_port()
    log = (tmp_path / "hypercorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "recorder_app:app", "--bind", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env={**os.environ, "RECORD": str(record)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "hypercorn.log").read_text()) from None
                time.sleep(0.1)
        yield port, record
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.mark.parametrize(
    "name", ["grpc__deepflow_grpc-unary.pcap", "http2__ndpi_5g-sbi-json.pcapng", "http2__sv_http2-range.pcap"]
)
def test_curl_http2_and_grpc_send_the_same_request(
    name: str, h2_server: tuple[int, Path], tmp_path: Path
) -> None:
    port, record = h2_server
    call = next(c for c in (fixture_call(name, i) for i in range(3)) if c.protocol in ("http2", "grpc"))
    assert call.request is not None
    cmd = curl_command(call, body_path=str(tmp_path / "req.bin"))
    assert "--http2-prior-knowledge" in cmd.text
    if call.protocol == "grpc":
        assert cmd.body_file is not None and "grpcurl" in cmd.text
    if cmd.body_file is not None:
        Path(cmd.body_file).write_bytes(cmd.body)
    run_curl(cmd.text, port, tmp_path)
    got = json.loads(record.read_text().splitlines()[-1])
    assert got["http_version"] == "2"
    assert got["method"] == call.method
    assert got["raw_path"] == call.target
    sent = [tuple(h) for h in got["headers"] if h[0] not in ("content-length", "host")]
    assert sent == [(k.lower(), v) for k, v in expected_headers(call) if not k.startswith(":")]
    host = dict(got["headers"])["host"]
    assert host == (call.request.header(":authority") or call.request.header("host"))
    assert base64.b64decode(got["body"]) == call.request.body


def test_curl_comments_name_what_was_dropped() -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 0)
    text = curl_command(call).text
    assert text.startswith("# left to curl: Keep-Alive, Connection\ncurl ")
    assert text.rstrip().endswith("http://www.mozilla.org/style/enhanced.css")
    truncated = http_call("POST", "/", [("Host", "h")], b"abc")
    assert truncated.request is not None
    truncated.request = msgspec.structs.replace(truncated.request, body_size=10, truncated=True)
    assert "incomplete: this sends 3 of 10 bytes" in curl_command(truncated).text


def test_tls_is_described_with_sni_and_plaintext_source() -> None:
    call = http_call(
        "GET", "/v1/items", [("Host", "api.example:8443"), ("Accept", "*/*"), ("User-Agent", "x")]
    )
    call.tls, call.sni = True, "api.example"
    call.info["tls_source"] = "ebpf"
    assert tls_text(call).plain == "yes · SNI api.example · plaintext from ebpf"
    assert "tls  yes · SNI api.example · plaintext from ebpf" in renderable_text(overview(call))
    text = curl_command(call).text
    assert "--http1.1" in text and text.endswith("https://api.example:8443/v1/items")
    opaque = http_call(protocol="tls")
    opaque.tls, opaque.sni = True, "db.internal"
    assert tls_text(opaque).plain == "yes · SNI db.internal · encrypted, plaintext not seen"
    opaque.info["keylog"] = "the key log has no secrets for this session"
    assert tls_text(opaque).plain == (
        "yes · SNI db.internal · encrypted, plaintext not seen · key log: the key log has no secrets for "
        "this session"
    )
    decrypted = http_call("GET", "/")
    decrypted.tls, decrypted.sni, decrypted.info["tls_source"] = True, "api.example", "keylog"
    assert tls_text(decrypted).plain == "yes · SNI api.example · plaintext from keylog"
    with pytest.raises(NotHTTP, match="tls call"):
        curl_command(opaque)


# ---- `info` comes over the wire from workers: no shape of it may break the view

_INFO_KEYS = [
    *("messages", "request", "response", "answers", "authority", "additional", "flags", "edns"),
    *("response_edns", "message_counts", "grpc_encoding", "interim", "tls_source", "weird"),
    *("questions", "record_count", "decode_errors", "http_status", "api_key", "qname", "rcode_name"),
]
_NESTED_KEYS = [
    *("fields", "field", "type", "value", "records", "batches", "name", "topic", "partition", "index"),
    *("text", "base64", "key", "headers", "length", "size", "hex", "offset", "timestamp", "error"),
    *("omitted_bytes", "compressed", "wire", "signed", "double", "float", "options", "count"),
]
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_NESTED_KEYS), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["http", "http2", "grpc", "dns", "kafka", "tls"]),
    st.dictionaries(st.sampled_from(_INFO_KEYS), _JSON, max_size=6),
    st.integers(-5, 70_000) | st.none(),
)
def test_renderers_never_fail_on_any_info(protocol: str, info: dict[str, Any], status: int | None) -> None:
    call = http_call(protocol=protocol)
    call.info, call.status = info, status
    for render in (dns_view, kafka_view, grpc_summary, info_json, timing, overview, title):
        renderable_text(render(call))
    tree_lines(grpc_tree(call))
    render_body(call.response, info, "response")
