"""gRPC on real traffic whose truth we know by construction: a grpcio server and client we script.

Two namespaces and a veth (`tests.realtraffic`), a grpcio server in one, a grpcio client in the
other (`tests.grpc_lab`: raw-bytes handlers, no protoc), tcpdump on the wire. One channel, so every
RPC is a stream of one HTTP/2 connection captured from its preface on. The scenario covers unary,
server streaming, client streaming, bidirectional streaming, an error status with a message
(trailers-only), custom request metadata and response initial/trailing metadata, and gzip
compression. Payloads are real protobuf encodings of the run-time schema ``lab.proto``; every
expected value (paths, status codes, messages, field values, metadata) comes from the scenario the
test wrote, and the client's own report is checked first, so a wrong expectation cannot come from
the traffic either. podshark (`dissect.engine.dissect_path`) must give one ``grpc`` call per RPC.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from tests.realtraffic import netns_pair, netns_unavailable_reason, tcpdump_capture, tools_missing_reason

pytest.importorskip("grpc")
pytest.importorskip("google.protobuf")

from tests.grpc_lab import PORT, Rpc, grpc_server, item, query, run_client, write_scenario

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("realnet-grpc"))

STATUS = {None: 0, "NOT_FOUND": 5, "INVALID_ARGUMENT": 3}
BIG_NAME = "compress me " * 200  # compressible enough that gzip really is smaller: grpc sends it compressed


def scenario() -> list[Rpc]:
    return [
        Rpc(
            "/lab.Items/Get",
            "unary",
            [query(7, "seven")],
            [item(7, "widget", price=19.99, weight=2.5, delta=-3, tags=[1, 300], active=True)],
            request_metadata=[("x-request-id", "req-123")],
            initial_metadata=[("x-server", "podshark-lab")],
            trailing_metadata=[("x-trace", "t-9")],
        ),
        Rpc("/lab.Items/List", "server_stream", [query(3)], [item(i, f"item-{i}") for i in range(1, 6)]),
        Rpc(
            "/lab.Items/Upload",
            "client_stream",
            [item(i, f"up-{i}") for i in range(1, 5)],
            [query(4, "stored")],
        ),
        Rpc(
            "/lab.Items/Chat",
            "bidi",
            [query(i, f"ping-{i}") for i in range(1, 4)],
            [query(i, f"pong-{i}") for i in range(1, 4)],
        ),
        Rpc("/lab.Items/Missing", "unary", [query(42)], [], code="NOT_FOUND", details="item 42 not found"),
        Rpc(
            "/lab.Items/Odd",
            "unary",
            [query(1)],
            [],
            code="INVALID_ARGUMENT",
            details="naïve 100% wrong",  # grpc percent-encodes non-ASCII and '%'
        ),
        Rpc(
            "/lab.Items/Packed",
            "unary",
            [item(9, BIG_NAME)],
            [item(9, BIG_NAME, child=item(10, "c"))],
            compress=True,
        ),
    ]


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Rpc], list[dict[str, Any]], Path]:
    reason = netns_unavailable_reason() or tools_missing_reason("tcpdump")
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("grpc")
    rpcs = scenario()
    path = write_scenario(rpcs, workdir / "scenario.json")
    pcap = workdir / "grpc.pcap"
    with netns_pair() as pair, grpc_server(pair, path):
        with tcpdump_capture(pair, pcap, bpf=f"tcp port {PORT}") as cap:
            results = run_client(pair, path)
        assert cap.complete, f"tcpdump lost packets: {cap.stderr}"
    return rpcs, results, pcap


def grpc_calls(path: Path) -> list[Any]:
    from dissect.engine import dissect_path

    return list(dissect_path(path))


def values(fields: list[dict[str, Any]] | None) -> dict[int, Any]:
    assert fields is not None
    return {f["field"]: f["value"] for f in fields}


def header(pairs: list[tuple[str, str]] | list[list[str]], name: str) -> str | None:
    return next((v for k, v in pairs if k.lower() == name), None)


def test_traffic_is_what_the_scenario_asked_for(captured: Any) -> None:
    """The client's own report: guards the expectations below, independently of podshark."""
    rpcs, results, _ = captured
    assert [r["path"] for r in results] == [r.path for r in rpcs]
    for rpc, got in zip(rpcs, results, strict=True):
        assert got["code"] == STATUS[rpc.code], got
        if rpc.code is None:
            assert [bytes.fromhex(h) for h in got["responses"]] == rpc.responses
        else:
            assert got["details"] == rpc.details


def test_one_grpc_call_per_rpc(captured: Any) -> None:
    rpcs, _, pcap = captured
    calls = grpc_calls(pcap)
    grpc = [c for c in calls if c.protocol == "grpc"]
    assert [c.target for c in grpc] == [r.path for r in rpcs], [(c.protocol, c.target) for c in calls]
    for c, rpc in zip(grpc, rpcs, strict=True):
        assert c.method == "POST"
        assert c.status == STATUS[rpc.code], (c.target, c.status, c.flags)
        assert c.info["http_status"] == 200
        assert c.info["message_counts"] == {"request": len(rpc.requests), "response": len(rpc.responses)}
        assert not {"gap", "parse-error", "hpack-desync", "truncated"} & set(c.flags), c.flags
        assert c.src.port != PORT and c.dst.port == PORT  # src is the client
        for side, sent in (("request", rpc.requests), ("response", rpc.responses)):
            got = c.info["messages"][side]
            assert [m["length"] for m in got if not m["compressed"]] == [
                len(p) for p, m in zip(sent, got) if not m["compressed"]
            ]
            assert all("error" not in m for m in got), got


def by_target(pcap: Path) -> dict[str, Any]:
    return {c.target: c for c in grpc_calls(pcap) if c.protocol == "grpc"}


def test_unary_fields_and_metadata(captured: Any) -> None:
    _, _, pcap = captured
    c = by_target(pcap)["/lab.Items/Get"]
    (rq,) = c.info["messages"]["request"]
    assert values(rq["fields"]) == {1: 7, 2: "seven"}
    (rs,) = c.info["messages"]["response"]
    v = values(rs["fields"])
    assert v[1] == 7 and v[2] == "widget" and v[8] == 1
    by_num = {f["field"]: f for f in rs["fields"]}
    assert by_num[3]["double"] == 19.99 and by_num[4]["float"] == 2.5
    assert by_num[5]["value"] == 5  # sint32 -3, zigzag
    assert header(c.request.headers, "x-request-id") == "req-123"
    assert header(c.request.headers, ":path") == "/lab.Items/Get"
    assert header(c.response.headers, "x-server") == "podshark-lab"
    assert header(c.response.trailers, "x-trace") == "t-9"
    assert header(c.response.trailers, "grpc-status") == "0"


def test_streaming_messages_in_order(captured: Any) -> None:
    _, _, pcap = captured
    calls = by_target(pcap)
    listed = calls["/lab.Items/List"].info["messages"]
    assert values(listed["request"][0]["fields"]) == {1: 3}
    assert [values(m["fields"]) for m in listed["response"]] == [{1: i, 2: f"item-{i}"} for i in range(1, 6)]
    up = calls["/lab.Items/Upload"].info["messages"]
    assert [values(m["fields"]) for m in up["request"]] == [{1: i, 2: f"up-{i}"} for i in range(1, 5)]
    assert values(up["response"][0]["fields"]) == {1: 4, 2: "stored"}
    chat = calls["/lab.Items/Chat"].info["messages"]
    assert [values(m["fields"])[2] for m in chat["request"]] == ["ping-1", "ping-2", "ping-3"]
    assert [values(m["fields"])[2] for m in chat["response"]] == ["pong-1", "pong-2", "pong-3"]


def test_error_statuses(captured: Any) -> None:
    _, _, pcap = captured
    calls = by_target(pcap)
    missing = calls["/lab.Items/Missing"]
    assert missing.status == 5 and missing.info["grpc_message"] == "item 42 not found"
    assert missing.info["messages"]["response"] == []
    odd = calls["/lab.Items/Odd"]
    assert odd.status == 3 and odd.info["grpc_message"] == "naïve 100% wrong"


def test_gzip_compression(captured: Any) -> None:
    _, _, pcap = captured
    c = by_target(pcap)["/lab.Items/Packed"]
    assert c.info["grpc_encoding"] == {"request": "gzip", "response": "gzip"}
    (rq,) = c.info["messages"]["request"]
    (rs,) = c.info["messages"]["response"]
    assert rq["compressed"] and rs["compressed"]
    assert rq["length"] < len(BIG_NAME)  # the wire length is the compressed one
    assert rq["decompressed_length"] == len(item(9, BIG_NAME))
    assert values(rq["fields"]) == {1: 9, 2: BIG_NAME}
    v = values(rs["fields"])
    assert v[2] == BIG_NAME and values(v[10]) == {1: 10, 2: "c"}


def test_body_cut_at_max_body(captured: Any) -> None:
    """A body cut at ``Limits.max_body``: the whole messages before the cut stay, the one across it
    is marked truncated, and the call says so."""
    from dissect.base import Limits
    from dissect.engine import dissect_path

    rpcs, _, pcap = captured
    sent = next(r for r in rpcs if r.path == "/lab.Items/List").responses
    framed = [5 + len(p) for p in sent]
    cut = framed[0] + framed[1] + 5 + 2  # two bytes into the third message's payload
    calls = {c.target: c for c in dissect_path(pcap, Limits(max_body=cut)) if c.protocol == "grpc"}
    c = calls["/lab.Items/List"]
    msgs = c.info["messages"]["response"]
    assert [values(m["fields"]) for m in msgs[:2]] == [{1: i, 2: f"item-{i}"} for i in (1, 2)]
    assert msgs[2]["truncated"] is True and msgs[2]["length"] == len(sent[2]) and msgs[2]["fields"] is None
    assert len(msgs) == 3
    assert "truncated" in c.flags
    assert c.status == 0  # the trailers still arrived
