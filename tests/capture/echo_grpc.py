"""`python -m tests.capture.echo_grpc server HOST PORT` / `... client HOST PORT N`: a grpcio pair.

The server's unary method ``/psk.Echo/Say`` answers the request bytes reversed (raw-bytes
serializers: no schema needed). The client makes N calls on one channel, each with its own payload
``call-<i>``, and prints one JSON line per call (payload sent, reply) so the test knows exactly which
calls were made. The client keeps its channel open for a second after the last call, like a real
service's long-lived channel.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent import futures


def server(host: str, port: int) -> None:
    import grpc

    def say(request: bytes, context: object) -> bytes:
        return request[::-1]

    handler = grpc.method_handlers_generic_handler(
        "psk.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(say, lambda b: b, lambda b: b)},
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    srv.add_generic_rpc_handlers((handler,))
    srv.add_insecure_port(f"{host}:{port}")
    srv.start()
    srv.wait_for_termination()


def client(host: str, port: int, n: int) -> None:
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        say = channel.unary_unary(
            "/psk.Echo/Say", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        for i in range(n):
            payload = f"call-{i}".encode()
            reply = say(payload, timeout=10)
            print(json.dumps({"sent": payload.decode(), "reply": reply.decode()}), flush=True)
        time.sleep(1.0)


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "server":
        server(host, port)
    else:
        client(host, port, int(sys.argv[4]))
