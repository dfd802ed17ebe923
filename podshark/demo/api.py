"""The ``api`` service: a small HTTP/1.1 JSON API (stdlib ``http.server``), the shop's product catalog.

Endpoints, each there to put a particular kind of call on the screen:

- ``GET /products``: the catalog; gzip-encoded when the client accepts it (a compressed body the
  detail view shows decoded);
- ``GET /products/{id}``: one product; 404 for an unknown id, 500 always for `BROKEN_PRODUCT` (a bug
  in production) and for a random `error_rate` share of lookups (an intermittent failure);
- ``POST /orders``: needs ``Authorization: Bearer demo-secret`` (401 otherwise) and a JSON body with a
  ``token`` field (400 otherwise); answered 201 — a header and a JSON key for redaction to hide;
- ``GET /slow``: sleeps 300–800 ms, the call a latency filter finds.

Request bodies are bounded (`MAX_BODY`, 413 beyond it) and malformed input is a 4xx, never a crash.
Per-request logging is off: the log is for faults, and a demo left running must not fill the disk.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from podshark.demo import catalog
from podshark.demo.config import DemoConfig
from podshark.demo.runtime import Lifecycle, log

API_TOKEN = "demo-secret"
MAX_BODY = 64 * 1024
GZIP_MIN = 256  # smaller bodies are not worth compressing (and the single-product ones stay plain)
SLOW_RANGE = (0.3, 0.8)


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], error_rate: float) -> None:
        super().__init__(addr, ApiHandler)
        self.error_rate = error_rate
        self.rng = random.Random()
        self.order_ids = itertools.count(1001)
        self.lock = threading.Lock()

    def unlucky(self) -> bool:
        with self.lock:
            return self.rng.random() < self.error_rate

    def next_order(self) -> int:
        with self.lock:
            return next(self.order_ids)


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-api/1.0"
    sys_version = ""
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log (see the module docstring)."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/products":
            self._json(200, [_product_json(p) for p in catalog.PRODUCTS.values()])
        elif path.startswith("/products/"):
            self._product(path.removeprefix("/products/"))
        elif path == "/slow":
            delay = random.uniform(*SLOW_RANGE)
            time.sleep(delay)
            self._json(200, {"slept_ms": round(delay * 1000)})
        elif path == "/healthz":
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": f"no route for GET {path}"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/orders":
            self._drain()
            self._json(404, {"error": f"no route for POST {path}"})
            return
        body = self._read_body()
        if body is None:
            return
        if self.headers.get("Authorization") != f"Bearer {API_TOKEN}":
            self._json(401, {"error": "missing or wrong bearer token"})
            return
        try:
            order = json.loads(body)
        except ValueError:
            self._json(400, {"error": "body is not JSON"})
            return
        if not isinstance(order, dict) or not isinstance(order.get("token"), str):
            self._json(400, {"error": "body needs a string field 'token'"})
            return
        product_id = order.get("product_id")
        product = catalog.PRODUCTS.get(product_id) if isinstance(product_id, int) else None
        if product is None:
            self._json(400, {"error": "unknown product_id"})
            return
        order_id = self.server.next_order()
        self._json(
            201,
            {"order_id": order_id, "product_id": product.id, "status": "accepted"},
            extra=[("Location", f"/orders/{order_id}")],
        )

    def _product(self, raw_id: str) -> None:
        if not raw_id.isdigit() or len(raw_id) > 9:
            self._json(404, {"error": f"no product {raw_id!r}"})
            return
        pid = int(raw_id)
        if pid == catalog.BROKEN_PRODUCT or (pid in catalog.PRODUCTS and self.server.unlucky()):
            self._json(500, {"error": "internal error", "detail": "price lookup failed"})
            return
        product = catalog.PRODUCTS.get(pid)
        if product is None:
            self._json(404, {"error": f"no product {pid}"})
            return
        self._json(200, _product_json(product))

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413/400 for a missing, huge or bad length."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            self._json(411, {"error": "Content-Length required"})
            return None
        if not raw.strip().isdigit():
            self.close_connection = True
            self._json(400, {"error": "bad Content-Length"})
            return None
        n = int(raw)
        if n > MAX_BODY:
            self.close_connection = True  # do not read it: the connection is given up instead
            self._json(413, {"error": f"body larger than {MAX_BODY} bytes"})
            return None
        return self.rfile.read(n)

    def _drain(self) -> None:
        raw = self.headers.get("Content-Length", "0").strip()
        n = int(raw) if raw.isdigit() else 0
        if n > MAX_BODY:
            self.close_connection = True
        elif n:
            self.rfile.read(n)

    def _json(self, status: int, body: object, extra: list[tuple[str, str]] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        gz = len(data) >= GZIP_MIN and "gzip" in self.headers.get("Accept-Encoding", "")
        if gz:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if gz:
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Vary", "Accept-Encoding")
        for name, value in extra or []:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _product_json(p: catalog.Product) -> dict[str, object]:
    return {"id": p.id, "sku": p.sku, "name": p.name, "price": {"amount": p.price_cents, "currency": "EUR"}}


def serve(cfg: DemoConfig, life: Lifecycle) -> None:
    """Serve until the process is ended; `life.ready()` once the socket listens."""
    me = cfg.topology.service("api")
    assert me.port is not None
    server = ApiServer((me.ip, me.port), cfg.error_rate)
    log("api", f"listening on {me.ip}:{me.port}")
    life.ready()
    server.serve_forever(poll_interval=0.5)
