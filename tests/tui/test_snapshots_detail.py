"""Snapshots (pytest-textual-snapshot) of the detail view of an HTTP, a gRPC, a DNS and a Kafka
call, fetched from a real hub process.

Deterministic by construction: a fixed terminal size, times shown in UTC from the captures' own
timestamps (nothing from the wall clock: `ingest_ts` is not shown), ids from the imported captures,
and the hub's URL never on screen. Update with `--snapshot-update`, then read the SVGs' text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot

from tests.tui.conftest import TuiHub
from tests.tui.detail_support import SIZE, detail_app, fixture_call, json_hub, until_drawn, until_settled

__all__ = ["json_hub"]  # the module-scoped fixture, imported for pytest


def show(*keys: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    """snap_compare's `run_before`: wait for the call, then press `keys` (switch tabs)."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await until_settled(pilot)
        if keys:
            await pilot.press(*keys)
        await until_drawn(pilot)

    return run_before


def test_http_overview(hub: TuiHub, snap_compare: Any) -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 0)
    assert snap_compare(detail_app(hub, call.id), terminal_size=SIZE, run_before=show())


def test_http_response_headers_and_text_body(hub: TuiHub, snap_compare: Any) -> None:
    call = fixture_call("http1__zeek_pipelined-requests.pcap", 0)
    assert snap_compare(detail_app(hub, call.id), terminal_size=SIZE, run_before=show("3"))


def test_http_json_request_body(json_hub: TuiHub, snap_compare: Any) -> None:
    call = fixture_call("http1__ndpi_jsonrpc.pcap")
    assert snap_compare(detail_app(json_hub, call.id), terminal_size=SIZE, run_before=show("2", "G"))


def test_grpc_protobuf_tree(hub: TuiHub, snap_compare: Any) -> None:
    call = fixture_call("grpc__deepflow_grpc-server-stream.pcap")
    assert snap_compare(detail_app(hub, call.id), terminal_size=SIZE, run_before=show("4"))


def test_dns_answers(hub: TuiHub, snap_compare: Any) -> None:
    call = fixture_call("dns__zeek_dns-edns-ecs.pcap", 1)
    assert snap_compare(detail_app(hub, call.id), terminal_size=SIZE, run_before=show("4"))


def test_kafka_records(hub: TuiHub, snap_compare: Any) -> None:
    call = fixture_call("kafka__deepflow_produce-v9.pcap")
    assert snap_compare(detail_app(hub, call.id), terminal_size=SIZE, run_before=show("4"))
