"""The ``frontend`` service: the shop's web tier, calling the api over HTTP and inventory over gRPC.

For every request it serves, the frontend resolves its peers with a real DNS query over UDP to the
dns pod (no caching, so DNS is part of every request on the map), calls the api with
``Authorization: Bearer demo-secret`` (so redaction has something to hide) and ``Accept-Encoding:
gzip``, and calls inventory over a gRPC channel opened for that request.

Why a channel per request rather than one long-lived channel: HTTP/2 compresses headers with a
state (HPACK) built up from the first request on a connection. A capture that starts after that
(``podshark demo`` starts capturing once the workload runs) could not decode the method names of a
connection it joined late; fresh connections make every gRPC call fully readable. Real services
recycle connections too (max connection age), just less often.

Routes (what loadgen asks for):

- ``GET /``: catalog from the api, stock of the first product from inventory;
- ``GET /product/{id}``: the api's product (404 passed on, a 5xx becomes 502) plus its stock;
- ``GET /stock/{sku}``: stock from inventory, 404 when inventory says NOT_FOUND;
- ``GET /watch/{sku}``: the WatchStock stream's updates;
- ``POST /checkout``: an order to the api (201 passed on);
- ``GET /slow``: the api's slow endpoint.

A dependency that fails answers 502 (bad answer), 503 (name not resolved) or 504 (timed out), with a
JSON body naming the dependency.
"""

from __future__ import annotations

import http.client
import json
import secrets
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from podshark.demo import dnswire
from podshark.demo.api import API_TOKEN
from podshark.demo.config import DemoConfig
from podshark.demo.dns import resolve
from podshark.demo.inventory import GET_STOCK, WATCH_STOCK
from podshark.demo.pbwire import Stock, WireError, decode_stock, encode_stock_request
from podshark.demo.runtime import Lifecycle, log
from podshark.demo.topology import Topology

API_TIMEOUT = 3.0
GRPC_TIMEOUT = 3.0
MAX_RESPONSE = 1024 * 1024
MAX_BODY = 64 * 1024
USER_AGENT = "demo-frontend/1.0"


class DependencyError(Exception):
    """A peer failed; `status` is what the frontend answers for it (502/503/504)."""

    def __init__(self, status: int, dependency: str, message: str) -> None:
        super().__init__(f"{dependency}: {message}")
        self.status = status
        self.dependency = dependency


class Peers:
    """How the frontend reaches its dependencies, all of it looked up in the topology."""

    def __init__(self, topology: Topology) -> None:
        dns = topology.service("dns")
        assert dns.port is not None
        self.dns = (dns.ip, dns.port)
        self.api = topology.service("api")
        self.inventory = topology.service("inventory")

    def lookup(self, name: str) -> str:
        """The first A record of `name` from the dns pod (one real query per call)."""
        try:
            addrs = resolve(self.dns[0], self.dns[1], name)
        except (OSError, dnswire.DnsError) as e:
            raise DependencyError(503, "dns", f"cannot resolve {name}: {e}") from e
        if not addrs:
            raise DependencyError(503, "dns", f"{name} has no A record")
        return addrs[0]

    def api_call(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        """(status, decoded JSON body) of one api request, on a connection of its own."""
        ip = self.lookup(self.api.dns_name)
        headers = {
            "Host": self.api.dns_name,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
            "Authorization": f"Bearer {API_TOKEN}",
            "X-Request-Id": secrets.token_hex(8),
        }
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(ip, self.api.port, timeout=API_TIMEOUT)
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_RESPONSE + 1)
            encoding = resp.getheader("Content-Encoding", "")
        except TimeoutError as e:
            raise DependencyError(504, "api", f"{method} {path} timed out") from e
        except (OSError, http.client.HTTPException) as e:
            raise DependencyError(502, "api", f"{method} {path}: {e}") from e
        finally:
            conn.close()
        if len(raw) > MAX_RESPONSE:
            raise DependencyError(502, "api", f"{method} {path}: response larger than {MAX_RESPONSE} bytes")
        try:
            if encoding == "gzip":
                raw = _gunzip(raw)
            return resp.status, json.loads(raw) if raw else None
        except (ValueError, OSError, EOFError, zlib.error) as e:
            raise DependencyError(502, "api", f"{method} {path}: unreadable response: {e}") from e

    def channel(self) -> Any:
        """A fresh gRPC channel to inventory (see the module docstring for why one per request)."""
        import grpc

        ip = self.lookup(self.inventory.dns_name)
        # "ipv4:" keeps grpc's own resolver (and its DNS queries) out of the picture
        return grpc.insecure_channel(
            f"ipv4:{ip}:{self.inventory.port}",
            options=[("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)],
        )


def _gunzip(raw: bytes) -> bytes:
    """Decompress at most MAX_RESPONSE bytes: a gzip bomb is an error, not an out-of-memory."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(raw, MAX_RESPONSE + 1)
    if len(out) > MAX_RESPONSE or d.unconsumed_tail:
        raise ValueError(f"decoded body larger than {MAX_RESPONSE} bytes")
    return out


def _rpc_error(e: Exception, what: str) -> DependencyError:
    import grpc

    if isinstance(e, grpc.RpcError):
        code = e.code()
        status = 504 if code == grpc.StatusCode.DEADLINE_EXCEEDED else 502
        return DependencyError(status, "inventory", f"{what}: {code.name} {e.details()}")
    return DependencyError(502, "inventory", f"{what}: {e}")


def get_stock(channel: Any, sku: str) -> Stock | None:
    """The stock of `sku`, or None when inventory answers NOT_FOUND."""
    import grpc

    call = channel.unary_unary(GET_STOCK)
    try:
        return decode_stock(call(encode_stock_request(sku), timeout=GRPC_TIMEOUT))
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise _rpc_error(e, f"GetStock {sku}") from e
    except WireError as e:
        raise DependencyError(502, "inventory", f"GetStock {sku}: bad response: {e}") from e


def watch_stock(channel: Any, sku: str) -> list[Stock] | None:
    """Every update of the WatchStock stream, or None for NOT_FOUND."""
    import grpc

    call = channel.unary_stream(WATCH_STOCK)
    try:
        return [decode_stock(m) for m in call(encode_stock_request(sku), timeout=GRPC_TIMEOUT)]
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise _rpc_error(e, f"WatchStock {sku}") from e
    except WireError as e:
        raise DependencyError(502, "inventory", f"WatchStock {sku}: bad response: {e}") from e


def _stock_json(s: Stock | None) -> dict[str, object] | None:
    return None if s is None else {"sku": s.sku, "quantity": s.quantity, "warehouse": s.warehouse}


class FrontendServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], peers: Peers) -> None:
        super().__init__(addr, FrontendHandler)
        self.peers = peers


class FrontendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-frontend/1.0"
    sys_version = ""
    server: FrontendServer

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a demo left running must not fill the disk."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if body is None:
            return
        try:
            status, payload = self._route(method, path, body)
        except DependencyError as e:
            status, payload = e.status, {"error": str(e), "dependency": e.dependency}
        except Exception as e:  # a bug here must answer 500, not kill the connection silently
            log("frontend", f"{method} {path}: unexpected {type(e).__name__}: {e}")
            status, payload = 500, {"error": "internal error"}
        self._json(status, payload)

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        peers = self.server.peers
        if method == "GET" and path == "/":
            status, products = peers.api_call("GET", "/products")
            if status != 200 or not isinstance(products, list) or not products:
                raise DependencyError(502, "api", f"GET /products answered {status}")
            with peers.channel() as ch:
                stock = get_stock(ch, str(products[0].get("sku", "")))
            return 200, {"products": len(products), "featured": products[0], "stock": _stock_json(stock)}
        if method == "GET" and path.startswith("/product/"):
            status, product = peers.api_call("GET", "/products/" + path.removeprefix("/product/"))
            if status == 404:
                return 404, {"error": "no such product"}
            if status != 200 or not isinstance(product, dict):
                raise DependencyError(502, "api", f"GET {path} answered {status}")
            with peers.channel() as ch:
                stock = get_stock(ch, str(product.get("sku", "")))
            return 200, {"product": product, "stock": _stock_json(stock)}
        if method == "GET" and path.startswith("/stock/"):
            sku = path.removeprefix("/stock/")
            with peers.channel() as ch:
                stock = get_stock(ch, sku)
            if stock is None:
                return 404, {"error": f"no stock record for {sku}"}
            return 200, _stock_json(stock)
        if method == "GET" and path.startswith("/watch/"):
            sku = path.removeprefix("/watch/")
            with peers.channel() as ch:
                updates = watch_stock(ch, sku)
            if updates is None:
                return 404, {"error": f"no stock record for {sku}"}
            return 200, {"updates": [_stock_json(u) for u in updates]}
        if method == "POST" and path == "/checkout":
            try:
                cart = json.loads(body or b"{}")
            except ValueError:
                return 400, {"error": "body is not JSON"}
            if not isinstance(cart, dict):
                return 400, {"error": "body must be a JSON object"}
            order = {"product_id": cart.get("product_id"), "quantity": cart.get("quantity", 1)}
            order["token"] = "tok_" + secrets.token_hex(12)  # a payment token: what redaction hides
            status, result = peers.api_call("POST", "/orders", order)
            if status >= 500:
                raise DependencyError(502, "api", f"POST /orders answered {status}")
            return status, result
        if method == "GET" and path == "/slow":
            status, result = peers.api_call("GET", "/slow")
            if status != 200:
                raise DependencyError(502, "api", f"GET /slow answered {status}")
            return 200, result
        return 404, {"error": f"no route for {method} {path}"}

    def _read_body(self) -> bytes | None:
        raw = self.headers.get("Content-Length", "0").strip()
        if not raw.isdigit() or int(raw) > MAX_BODY:
            self.close_connection = True
            self._json(413 if raw.isdigit() else 400, {"error": "bad or oversized Content-Length"})
            return None
        return self.rfile.read(int(raw)) if int(raw) else b""

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(cfg: DemoConfig, life: Lifecycle) -> None:
    """Serve until the process is ended; `life.ready()` once the socket listens."""
    import grpc  # noqa: F401  (imported before serving: a missing grpcio fails at start, not per request)

    me = cfg.topology.service("frontend")
    assert me.port is not None
    server = FrontendServer((me.ip, me.port), Peers(cfg.topology))
    log("frontend", f"listening on {me.ip}:{me.port}")
    life.ready()
    server.serve_forever(poll_interval=0.5)
