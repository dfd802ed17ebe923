"""The ``loadgen`` service: users of the shop, calling the frontend at a steady rate until ended.

The mix is a fixed cycle (`MIX`), not random draws, so every kind of call — success, 404, a 5xx
from a bug, gRPC NOT_FOUND, a slow call, a stream, a POST with a token — shows up within one cycle
(``len(MIX) / rate`` seconds) of any moment, which is what someone opening the demo wants to see
and what the tests rely on. Each request goes on a connection of its own, from a thread of its own,
started on a fixed schedule; at most `MAX_IN_FLIGHT` are outstanding, and a tick that finds them all
busy is skipped and counted (a stuck frontend cannot make the load generator grow without bound).

Ready means the whole path works: loadgen reports ready after its first ``GET /`` that the frontend
answers 200 — which took a DNS lookup, an api call and an inventory call. Then it waits until the
demo releases the traffic (at once, unless the caller asked to start capturing first).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable

from podshark.demo import catalog
from podshark.demo.config import DemoConfig
from podshark.demo.runtime import Lifecycle, log

TIMEOUT = 5.0
MAX_IN_FLIGHT = 16
REPORT_EVERY = 60.0
READY_TIMEOUT = 30.0
USER_AGENT = "demo-loadgen/1.0"

#: (method, path, JSON body or None): one cycle of the traffic mix
MIX: tuple[tuple[str, str, dict[str, int] | None], ...] = (
    ("GET", "/", None),
    ("GET", "/product/3", None),
    ("GET", f"/product/{catalog.UNKNOWN_PRODUCT}", None),  # api 404
    ("POST", "/checkout", {"product_id": 2, "quantity": 1}),  # api 201
    ("GET", f"/stock/{catalog.UNKNOWN_SKU}", None),  # inventory NOT_FOUND
    ("GET", f"/product/{catalog.BROKEN_PRODUCT}", None),  # api 500 -> frontend 502
    ("GET", "/slow", None),  # api sleeps 300-800 ms
    ("GET", f"/watch/{catalog.sku_of(5)}", None),  # server-streaming gRPC
    ("GET", "/product/12", None),  # api 200, inventory NOT_FOUND (no stock record)
    ("GET", f"/stock/{catalog.sku_of(1)}", None),
)


class LoadGen:
    def __init__(self, ip: str, port: int, rate: float) -> None:
        self.ip, self.port, self.rate = ip, port, rate
        self.slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()

    def request(self, method: str, path: str, body: dict[str, int] | None) -> int:
        """The frontend's status for one request (OSError/HTTPException when there was none)."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.ip, self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def wait_ready(self, ready: Callable[[], None]) -> None:
        """Ask ``GET /`` until it is answered 200, then call `ready`; SystemExit after READY_TIMEOUT."""
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            try:
                status = self.request("GET", "/", None)
                if status == 200:
                    ready()
                    return
                last = f"GET / answered {status}"
            except (OSError, http.client.HTTPException) as e:
                last = f"GET / failed: {e}"
            time.sleep(0.2)
        raise SystemExit(
            f"loadgen: the frontend did not answer GET / with 200 within {READY_TIMEOUT:g}s ({last})"
        )

    def _one(self, method: str, path: str, body: dict[str, int] | None) -> None:
        try:
            outcome = str(self.request(method, path, body))
        except (OSError, http.client.HTTPException) as e:
            outcome = type(e).__name__
        finally:
            self.slots.release()
        with self.lock:
            self.outcomes[outcome] += 1

    def run(self) -> None:
        """Send the mix forever on a fixed schedule (no drift: ticks are counted from the start)."""
        interval = 1.0 / self.rate
        start = next_report = time.monotonic()
        tick = 0
        while True:
            method, path, body = MIX[tick % len(MIX)]
            if self.slots.acquire(blocking=False):
                threading.Thread(target=self._one, args=(method, path, body), daemon=True).start()
            else:
                with self.lock:
                    self.outcomes["skipped (all in flight)"] += 1
            tick += 1
            now = time.monotonic()
            if now >= next_report:
                with self.lock:
                    summary = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items()))
                if summary:
                    log("loadgen", f"outcomes so far: {summary}")
                next_report = now + REPORT_EVERY
            behind = time.monotonic() - (start + tick * interval)
            if behind > 1.0:  # stalled (suspended, starved): resume the schedule instead of bursting
                start += behind
            time.sleep(max(0.0, start + tick * interval - time.monotonic()))


def serve(cfg: DemoConfig, life: Lifecycle) -> None:
    frontend = cfg.topology.service("frontend")
    assert frontend.port is not None
    gen = LoadGen(frontend.ip, frontend.port, cfg.rate)
    gen.wait_ready(life.ready)
    life.wait_released()
    log("loadgen", f"calling {frontend.ip}:{frontend.port} at {cfg.rate:g} requests/s")
    gen.run()
