"""The ``inventory`` service: gRPC ``demo.Inventory`` with grpcio, no generated code.

grpcio's generic handlers take raw bytes when no (de)serializer is given, and `pbwire` encodes and
decodes the two messages by hand, so no ``protoc`` step is needed and the bytes on the wire are real
protobuf. Methods:

- ``/demo.Inventory/GetStock`` (unary): the stock of a SKU; NOT_FOUND for one it does not carry;
- ``/demo.Inventory/WatchStock`` (server streaming): `WATCH_UPDATES` updates of a SKU's stock,
  `WATCH_INTERVAL` apart; NOT_FOUND as above.

A request that is not a valid ``StockRequest`` is INVALID_ARGUMENT. grpcio is imported here, lazily
(this module is only imported inside the inventory and frontend processes), so ``podshark.demo``
imports without it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any, NoReturn

from podshark.demo import catalog
from podshark.demo.config import DemoConfig
from podshark.demo.pbwire import Stock, WireError, decode_stock_request, encode_stock
from podshark.demo.runtime import Lifecycle, log

SERVICE = "demo.Inventory"
GET_STOCK = f"/{SERVICE}/GetStock"
WATCH_STOCK = f"/{SERVICE}/WatchStock"
WATCH_UPDATES = 3
WATCH_INTERVAL = 0.05
MAX_MESSAGE = 64 * 1024


def _abort(context: Any, code: str, details: str) -> NoReturn:
    """End the RPC with a status (grpcio's ``abort`` raises; the raise below only tells type checkers)."""
    import grpc

    context.abort(getattr(grpc.StatusCode, code), details)
    raise RuntimeError("grpc context.abort returned")


def _lookup(request: bytes, context: Any) -> Stock:
    """The stock the request asks for; aborts the RPC with INVALID_ARGUMENT or NOT_FOUND."""
    try:
        sku = decode_stock_request(request)
    except WireError as e:
        _abort(context, "INVALID_ARGUMENT", f"bad StockRequest: {e}")
    quantity = catalog.STOCK.get(sku)
    if quantity is None:
        _abort(context, "NOT_FOUND", f"no stock record for {sku}")
    return Stock(sku=sku, quantity=quantity, warehouse=catalog.WAREHOUSE)


def get_stock(request: bytes, context: Any) -> bytes:
    return encode_stock(_lookup(request, context))


def watch_stock(request: bytes, context: Any) -> Iterator[bytes]:
    stock = _lookup(request, context)
    for i in range(WATCH_UPDATES):
        if i:
            time.sleep(WATCH_INTERVAL)
        if not context.is_active():
            return
        yield encode_stock(Stock(stock.sku, max(stock.quantity - i, 0), stock.warehouse))


def serve(cfg: DemoConfig, life: Lifecycle) -> None:
    """Serve until the process is ended; `life.ready()` once the port is bound."""
    import grpc

    me = cfg.topology.service("inventory")
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "GetStock": grpc.unary_unary_rpc_method_handler(get_stock),
            "WatchStock": grpc.unary_stream_rpc_method_handler(watch_stock),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="rpc"),
        handlers=[handler],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ],
        maximum_concurrent_rpcs=64,
    )
    address = f"{me.ip}:{me.port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"inventory: cannot listen on {address} (address in use or not configured)")
    server.start()
    log("inventory", f"listening on {address}")
    life.ready()
    threading.Event().wait()  # grpc serves from its own threads; this one only keeps the process up
