"""gRPC test material: a protobuf schema built at run time, and a real grpcio server and client.

No ``protoc`` is needed. `lab_messages` builds the schema ``lab.proto`` (package ``lab``) from a
``FileDescriptorProto`` with the ``protobuf`` package, so tests encode real messages whose field
numbers and values they know from the schema:

    message Query { int64 id = 1; string text = 2; }
    message Item  { int64 id = 1; string name = 2; double price = 3; float weight = 4;
                    sint32 delta = 5; fixed64 serial = 6; bytes blob = 7; bool active = 8;
                    repeated int32 tags = 9 (packed); Item child = 10; int32 neg = 11;
                    sfixed32 sf = 12; }

The server and client (`SERVER_SCRIPT`, `CLIENT_SCRIPT`) are plain grpcio programs with raw-bytes
(de)serializers: the test writes a scenario (JSON: method path, kind, request and response payloads
in hex, status to abort with, metadata, compression) and both sides act it out on ONE channel, so
every RPC is a stream of one HTTP/2 connection. They run as subprocesses inside the namespaces of a
`tests.realtraffic.NetnsPair` (``ip netns exec``), with this interpreter; the client prints what it
got back as JSON so a test can check that the traffic really was what the scenario asked for.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tests.realtraffic import NetnsPair, _terminate

PORT = 50051


@cache
def lab_messages() -> tuple[Any, Any]:
    """The (Query, Item) message classes of the run-time schema ``lab.proto``."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="podshark_lab.proto", package="lab", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    query = fdp.message_type.add(name="Query")
    query.field.add(name="id", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    query.field.add(name="text", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item = fdp.message_type.add(name="Item")
    for name, number, typ in (
        ("id", 1, F.TYPE_INT64),
        ("name", 2, F.TYPE_STRING),
        ("price", 3, F.TYPE_DOUBLE),
        ("weight", 4, F.TYPE_FLOAT),
        ("delta", 5, F.TYPE_SINT32),
        ("serial", 6, F.TYPE_FIXED64),
        ("blob", 7, F.TYPE_BYTES),
        ("active", 8, F.TYPE_BOOL),
        ("neg", 11, F.TYPE_INT32),
        ("sf", 12, F.TYPE_SFIXED32),
    ):
        item.field.add(name=name, number=number, type=typ, label=F.LABEL_OPTIONAL)
    item.field.add(name="tags", number=9, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    item.field.add(
        name="child", number=10, type=F.TYPE_MESSAGE, type_name=".lab.Item", label=F.LABEL_OPTIONAL
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("lab.Query")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("lab.Item")),
    )


def query(id: int, text: str = "") -> bytes:
    Query, _ = lab_messages()
    return bytes(Query(id=id, text=text).SerializeToString())


def item(id: int, name: str, **kw: Any) -> bytes:
    _, Item = lab_messages()
    child = kw.pop("child", None)
    msg = Item(id=id, name=name, **kw)
    if child is not None:
        msg.child.CopyFrom(Item.FromString(child))
    return bytes(msg.SerializeToString())


@dataclass
class Rpc:
    """One RPC of a scenario, as the test means it (the expected values come from here)."""

    path: str
    kind: str  # unary | server_stream | client_stream | bidi
    requests: list[bytes]
    responses: list[bytes]
    code: str | None = None  # grpc.StatusCode name to abort with (unary only), None = OK
    details: str | None = None
    request_metadata: list[tuple[str, str]] = field(default_factory=list)
    initial_metadata: list[tuple[str, str]] = field(default_factory=list)
    trailing_metadata: list[tuple[str, str]] = field(default_factory=list)
    compress: bool = False  # gzip both directions (client per-call, server context.set_compression)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["requests"] = [b.hex() for b in self.requests]
        d["responses"] = [b.hex() for b in self.responses]
        return d


def write_scenario(rpcs: list[Rpc], path: Path) -> Path:
    path.write_text(json.dumps([r.to_json() for r in rpcs]))
    return path


SERVER_SCRIPT = textwrap.dedent(
    """\
    import json, sys, time
    from concurrent import futures
    import grpc

    ip, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rpcs = json.load(open(path))

    def make(rpc):
        resps = [bytes.fromhex(h) for h in rpc["responses"]]

        def setup(context):
            if rpc["compress"]:
                context.set_compression(grpc.Compression.Gzip)
            if rpc["initial_metadata"]:
                context.send_initial_metadata(tuple(tuple(p) for p in rpc["initial_metadata"]))
            if rpc["trailing_metadata"]:
                context.set_trailing_metadata(tuple(tuple(p) for p in rpc["trailing_metadata"]))

        kind = rpc["kind"]
        if kind == "unary":
            def h(req, context):
                setup(context)
                if rpc["code"]:
                    context.abort(getattr(grpc.StatusCode, rpc["code"]), rpc["details"])
                return resps[0]
            return grpc.unary_unary_rpc_method_handler(h)
        if kind == "server_stream":
            def h(req, context):
                setup(context)
                for r in resps:
                    yield r
            return grpc.unary_stream_rpc_method_handler(h)
        if kind == "client_stream":
            def h(it, context):
                setup(context)
                for _ in it:
                    pass
                return resps[0]
            return grpc.stream_unary_rpc_method_handler(h)
        def h(it, context):
            setup(context)
            for i, _ in enumerate(it):
                yield resps[i]
        return grpc.stream_stream_rpc_method_handler(h)

    by_service = {}
    for rpc in rpcs:
        service, method = rpc["path"].strip("/").split("/")
        by_service.setdefault(service, {})[method] = make(rpc)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for service, handlers in by_service.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_insecure_port(f"{ip}:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    """
)

CLIENT_SCRIPT = textwrap.dedent(
    """\
    import json, sys
    import grpc

    ip, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rpcs = json.load(open(path))
    ch = grpc.insecure_channel(f"{ip}:{port}", options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(ch).result(timeout=10)
    results = []
    for rpc in rpcs:
        reqs = [bytes.fromhex(h) for h in rpc["requests"]]
        md = tuple(tuple(p) for p in rpc["request_metadata"]) or None
        comp = grpc.Compression.Gzip if rpc["compress"] else None
        kw = dict(metadata=md, compression=comp, timeout=10)
        got, details = [], None
        try:
            kind = rpc["kind"]
            if kind == "unary":
                resp, call = ch.unary_unary(rpc["path"]).with_call(reqs[0], **kw)
                got, code = [resp], call.code()
            elif kind == "server_stream":
                it = ch.unary_stream(rpc["path"])(reqs[0], **kw)
                got = list(it)
                code = it.code()
            elif kind == "client_stream":
                resp, call = ch.stream_unary(rpc["path"]).with_call(iter(reqs), **kw)
                got, code = [resp], call.code()
            else:
                it = ch.stream_stream(rpc["path"])(iter(reqs), **kw)
                got = list(it)
                code = it.code()
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        results.append({"path": rpc["path"], "code": code.value[0], "details": details,
                        "responses": [r.hex() for r in got]})
    ch.close()
    print(json.dumps(results))
    """
)


@contextlib.contextmanager
def grpc_server(pair: NetnsPair, scenario: Path, port: int = PORT) -> Iterator[subprocess.Popen[str]]:
    """The scenario's server in the server namespace, until the ``with`` ends (ended by its pid)."""
    proc = subprocess.Popen(
        pair.exec_args(pair.server_ns, [sys.executable, "-c", SERVER_SCRIPT, pair.server_ip, str(port),
                                        str(scenario)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if line.strip() == "ready":
                break
        if line.strip() != "ready":
            err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
            raise RuntimeError(f"gRPC server did not start: {err.strip()}")
        yield proc
    finally:
        _terminate(proc)


def run_client(
    pair: NetnsPair, scenario: Path, port: int = PORT, timeout: float = 60
) -> list[dict[str, Any]]:
    """Act out the scenario from the client namespace; returns what the client received, per RPC."""
    res = pair.client(
        [sys.executable, "-c", CLIENT_SCRIPT, pair.server_ip, str(port), str(scenario)], timeout=timeout
    )
    return list(json.loads(res.stdout))
