"""The detail screen driven with Pilot against a REAL hub process (tests/tui/conftest.py's `hub`,
loaded with corpus captures, and `json_hub` for JSON bodies): what each tab shows for an HTTP, a
gRPC, a DNS and a Kafka call, tab keys, copy as curl (the app's clipboard), saving a body (the file
equals the body `GET /api/v1/calls/{id}` returns) and fetch errors shown instead of crashing.

Call ids come from `dissect_path` on the same captures the hub imported (they are deterministic).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from textual.widgets import Input, Static, TabbedContent, Tree

from dissect.model import Call, Endpoint, Message
from tests.hub.test_live import ingest
from tests.hub.test_service import get
from tests.tui.conftest import TuiHub, wait_for
from tests.tui.detail_support import (
    SIZE,
    DetailApp,
    detail_app,
    fixture_call,
    json_hub,
    pane_text,
    sync,
    until_drawn,
    until_settled,
)
from tui.curl import curl_command, sanitize
from tui.render.prerendered import Prerendered
from tui.screens.detail import DetailScreen
from tui.screens.save_body import SaveBodyDialog

__all__ = ["json_hub"]  # the module-scoped fixture, imported for pytest


def hub_body(hub: TuiHub, call_id: str, side: str) -> bytes:
    """The body as the hub's API returns it (base64 in the call's JSON)."""
    status, doc = get(hub.process, f"/api/v1/calls/{call_id}")
    assert status == 200, doc
    return base64.b64decode(doc[side]["body"])


@sync
async def test_http_call_shows_overview_headers_and_body(hub: TuiHub) -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 0)
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        screen = app.detail
        assert screen.error is None and screen.call is not None
        overview = pane_text(screen, "overview")
        for expected in (
            "target  /style/enhanced.css",
            "status  200 (2xx)",
            "↓ 18.034 ms",
            "request  2009-11-18 20:58:04.844956 UTC",
            f"id  {call.id}",
            "192.168.1.104:1673",
            "63.245.209.11:80",
            "none: the call was seen whole",
        ):
            assert expected in overview, expected
        request = pane_text(screen, "request").splitlines()
        names = [line.split(":")[0] for line in request if ":" in line and not line.startswith(" ")]
        assert call.request is not None
        assert names[: len(call.request.headers)] == [k for k, _ in call.request.headers]
        response = pane_text(screen, "response")
        assert "Content-Encoding: gzip" in response
        assert "2,675 B (2.6 KiB) body, 946 B on the wire · content-encoding gzip (shown decoded)" in response
        assert "MOZILLA.ORG" in response and "Enhanced Screen Styles" in response
        assert "http_version" not in pane_text(screen, "protocol")  # already in Timing
        title = screen.query_one("#detail-title", Static).content
        assert str(title).startswith("HTTP GET /style/enhanced.css")


@sync
async def test_summary_is_shown_until_the_whole_call_arrives(hub: TuiHub) -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 1)
    calls, _ = await _summaries(hub, f'id == "{call.id}"')
    assert len(calls) == 1 and calls[0].response is not None and calls[0].response.body == b""
    app = detail_app(hub, call.id, summary=calls[0])
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        assert "var _uacct" in pane_text(app.detail, "response")  # the body came with the full call


async def _summaries(hub: TuiHub, filter_text: str) -> tuple[list[Call], str | None]:
    from tui.client import HubClient

    client = HubClient(hub.url, hub.token)
    try:
        return await client.calls(filter_text)
    finally:
        await client.close()


@sync
async def test_json_body_is_pretty_printed(json_hub: TuiHub) -> None:
    call = fixture_call("http1__ndpi_jsonrpc.pcap")
    app = detail_app(json_hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        request = pane_text(app.detail, "request")
        assert '{\n  "jsonrpc": "2.0",\n  "method": "zabbix.status",\n  "params": {},' in request
        response = pane_text(app.detail, "response")
        assert '  "result": {\n    "result": true,\n    "message": ""\n  },' in response
        body = app.detail.query_one("#body-response", Prerendered)
        assert body.has_class("body-json")


@sync
async def test_grpc_call_shows_status_and_protobuf_tree(hub: TuiHub) -> None:
    call = fixture_call("grpc__deepflow_grpc-server-stream.pcap")
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        screen = app.detail
        tabs = screen.query_one(TabbedContent)
        assert str(tabs.get_tab("protocol").label) == "4 gRPC"
        await pilot.press("4")
        assert tabs.active == "protocol"
        text = pane_text(screen, "protocol")
        assert "service  timeseriesquery.TimeSeriesQueryService" in text
        assert "grpc-status  0 OK" in text
        assert "messages  1 request, 5 response" in text
        assert '      2: "vpc"  (string)' in text
        assert "  response #5" in text
        tree = screen.query_one("#grpc-tree", Tree)
        assert tree.root.children[1].is_expanded
        response = pane_text(screen, "response")
        assert "grpc-status:  0" in response and "Trailers (2)" in response


@sync
async def test_dns_call_shows_the_answers(hub: TuiHub) -> None:
    call = fixture_call("dns__zeek_dns-edns-ecs.pcap", 1)
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        text = pane_text(app.detail, "protocol")
        assert "question  ns1.weberdns.de A IN" in text
        assert "answers (2)" in text
        row = next(line for line in text.splitlines() if "80.154.108.230" in line)
        assert [c.strip() for c in row.split("│")] == ["ns1.weberdns.de", "A", "3600", "80.154.108.230"]
        for section in ("authority", "additional"):
            assert f"{section} ({len(call.info[section])})" in text


@sync
async def test_kafka_call_shows_partitions_and_records(hub: TuiHub) -> None:
    call = fixture_call("kafka__deepflow_produce-v9.pcap")
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        text = pane_text(app.detail, "protocol")
        assert "api  Produce (key 0, version 9)" in text
        assert "correlation id  47" in text
        row = next(line for line in text.splitlines() if "q" * 31 in line)
        cells = [c.strip() for c in row.split("│")]
        assert cells[:5] == ["request", "zqy-test/0", "0", "2024-09-13 08:36:37.021 UTC", "null"]
        assert "base_offset=35" in text


@sync
async def test_tab_keys_switch_tabs_and_escape_goes_back(hub: TuiHub) -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 0)
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        tabs = app.detail.query_one(TabbedContent)
        assert tabs.active == "overview"
        for key, active in (("2", "request"), ("tab", "response"), ("tab", "protocol"), ("tab", "overview")):
            await pilot.press(key)
            assert tabs.active == active, key
        await pilot.press("shift+tab")
        assert tabs.active == "protocol"
        await pilot.press("3")
        assert tabs.active == "response"
        assert app.focused is app.detail.query_one("#scroll-response")
        await pilot.press("G")
        await pilot.pause()
        assert app.detail.query_one("#scroll-response").scroll_y > 0
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, DetailScreen)


@sync
async def test_copy_as_curl_puts_the_command_on_the_clipboard(hub: TuiHub) -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 0)
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        await pilot.press("c")
        await pilot.pause()
        expected = curl_command(call).text
        assert app.clipboard == expected
        assert expected in app.notifications()


@sync
async def test_copy_as_curl_of_grpc_writes_the_body_file(
    hub: TuiHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    call = fixture_call("grpc__deepflow_grpc-unary.pcap")
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        await pilot.press("c")
        body_file = tmp_path / f"{sanitize(call.id)}-request.bin"
        await wait_for(pilot, body_file.exists)
        await app.workers.wait_for_complete()
        assert body_file.read_bytes() == hub_body(hub, call.id, "request")
        assert f"--data-binary @{body_file}" in app.clipboard
        assert "grpcurl -plaintext" in app.clipboard


@sync
async def test_copy_as_curl_of_a_dns_call_says_it_is_not_http(hub: TuiHub) -> None:
    call = fixture_call("dns__deepflow_nxdomain.pcap", 0)
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        await pilot.press("c")
        await pilot.pause()
        assert app.clipboard == ""
        assert any("not an HTTP call" in n for n in app.notifications())


@sync
async def test_save_a_body_refusing_to_overwrite_without_confirmation(hub: TuiHub, tmp_path: Path) -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 0)
    app = detail_app(hub, call.id)
    target = tmp_path / "saved.css"
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        await pilot.press("3", "S")
        await wait_for(pilot, lambda: isinstance(app.screen, SaveBodyDialog))
        field = app.screen.query_one("#save-path", Input)
        assert field.value == f"./{sanitize(call.id)}-response.txt"
        field.value = str(target)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen))
        await app.workers.wait_for_complete()
        expected = hub_body(hub, call.id, "response")
        assert len(expected) == 2675
        assert target.read_bytes() == expected
        assert any(f"saved 2,675 bytes to {target}" in n for n in app.notifications())

        # the same path again: refused once, written after a second Enter
        target.write_bytes(b"precious")
        await pilot.press("S")
        await wait_for(pilot, lambda: isinstance(app.screen, SaveBodyDialog))
        dialog = app.screen
        dialog.query_one("#save-path", Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SaveBodyDialog)
        assert "exists: press Enter again" in str(dialog.query_one("#save-status", Static).content)
        assert target.read_bytes() == b"precious"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen))
        assert target.read_bytes() == expected


@sync
async def test_save_dialog_switches_side_and_refuses_an_empty_body(hub: TuiHub, tmp_path: Path) -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 0)  # a GET: the request has no body
    app = detail_app(hub, call.id)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SaveBodyDialog))
        dialog = app.screen
        await pilot.click("#side-request")
        await pilot.pause()
        field = dialog.query_one("#save-path", Input)
        assert field.value == f"./{sanitize(call.id)}-request.bin"
        field.value = str(tmp_path / "nothing.bin")
        field.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert "has no body to save" in str(dialog.query_one("#save-status", Static).content)
        assert not (tmp_path / "nothing.bin").exists()
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DetailScreen)


@sync
async def test_unknown_call_is_a_message_not_a_crash(hub: TuiHub) -> None:
    app = detail_app(hub, "nope/000000001")
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        screen = app.detail
        assert screen.error is not None and "could not load call nope/000000001" in screen.error
        shown = str(screen.query_one("#detail-error", Static).content)
        assert "ctrl+r to try again" in shown
        assert screen.query_one("#detail-error").display
        await pilot.press("c")
        await pilot.pause()
        assert any("could not load call" in n for n in app.notifications())


@sync
async def test_unreachable_hub_keeps_the_summary_and_says_why(hub: TuiHub) -> None:
    call = fixture_call("dns__deepflow_nxdomain.pcap", 0)
    summary = fixture_call("dns__deepflow_nxdomain.pcap", 0)
    app = DetailApp("http://127.0.0.1:9", hub.token, call.id, summary=summary)
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        screen = app.detail
        assert screen.error is not None and "cannot reach the hub" in screen.error
        assert "rcode  3 NXDOMAIN" in pane_text(screen, "protocol")  # the summary is still shown


@sync
async def test_a_megabyte_json_body_is_shown_cut_and_saved_whole(fresh_hub: TuiHub, tmp_path: Path) -> None:
    """A call ingested by the hub's real ingest socket: 1 MiB of JSON, a binary request and a
    header with terminal escapes. The view shows the first 64 KiB (said so), draws the body in a
    thread, keeps the escapes harmless, and `S` saves the whole body."""
    doc = [{"i": i, "name": f"item-{i}", "tags": ["a", "b"], "ok": i % 2 == 0} for i in range(16_000)]
    body = json.dumps(doc).encode()
    assert len(body) > 1 << 20
    request = bytes(range(256)) * 4
    call = Call(
        id="big/000000001",
        protocol="http",
        src=Endpoint(ip="10.0.0.1", port=40000, pod="web-1", namespace="shop", workload="Deployment/web"),
        dst=Endpoint(ip="10.0.0.2", port=8080, service="api"),
        request_ts=1_700_000_000_000_000_000,
        response_ts=1_700_000_000_250_000_000,
        method="POST",
        target="/v1/export",
        status=200,
        request=Message(
            headers=[
                ("Host", "api"),
                ("X-Evil", "a\x1b]52;c;AAAA\x07b"),
                ("Content-Type", "application/x-bin"),
            ],
            body=request,
            body_size=len(request),
            wire_size=len(request),
        ),
        response=Message(
            headers=[("Content-Type", "application/json")],
            body=body,
            body_size=len(body),
            wire_size=len(body),
        ),
    ).finish()
    assert await ingest(fresh_hub.process, [call]) == 1
    app = detail_app(fresh_hub, call.id)
    target = tmp_path / "big.json"
    async with app.run_test(size=SIZE) as pilot:
        await until_settled(pilot)
        screen = app.detail
        request_text = pane_text(screen, "request")
        assert "a\\x1b]52;c;AAAA\\x07b" in request_text and "\x1b" not in request_text
        assert "binary: shown as hex" in request_text
        await pilot.press("3")
        await until_drawn(pilot)
        response = pane_text(screen, "response")
        assert f"{len(body):,} B" in response
        assert "showing the first 65,536 B (64.0 KiB) of the pretty-printed JSON" in response
        drawn = screen.query_one("#body-response", Prerendered)
        assert drawn.rendered and drawn.virtual_size.height > 1000
        await pilot.press("S")
        await wait_for(pilot, lambda: isinstance(app.screen, SaveBodyDialog))
        field = app.screen.query_one("#save-path", Input)
        assert field.value == "./big-000000001-response.json"
        field.value = str(target)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen))
        assert target.read_bytes() == body == hub_body(fresh_hub, call.id, "response")
