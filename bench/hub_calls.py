"""What the hub benchmarks feed the hub: realistic calls, and a real `podshark hub` process.

`realistic_calls(n, first_ts, step_ns)` makes calls like a busy cluster's: mostly HTTP/1.1 JSON APIs,
some HTTP/2, gRPC, DNS and Kafka, a few percent server errors, request/response headers as real
clients and servers send them, small JSON bodies, both ends identified (pod, namespace, workload,
service, node, labels) and drawn from one fixed cluster of a few hundred pods (so addresses and
names repeat, as they do), a few flagged or half-seen calls. The mix is seeded, so every run stores
the same calls.

`HubProcess` runs `python -m podshark hub` on loopback with a bearer token, as
`tests/hub/test_service.py` does, and reads its CPU time from /proc.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dissect.model import Call, Endpoint, Flag, Message

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"

NAMESPACES = ("shop", "shop", "shop", "pay", "default", "monitoring", "kube-system")
SERVICES = (
    ("api", "shop", 8080),
    ("cart", "shop", 8080),
    ("catalog", "shop", 9000),
    ("checkout", "pay", 8443),
    ("ledger", "pay", 5432),
    ("users", "default", 8080),
    ("prometheus", "monitoring", 9090),
)
NODES = ("node-a", "node-b", "node-c", "node-d")
HTTP_TARGETS = (
    "/api/v1/items/{n}",
    "/api/v1/items/{n}?fields=price,stock",
    "/api/v1/items?page={p}&size=50",
    "/api/v1/orders",
    "/api/v1/orders/{n}",
    "/api/v1/cart/{n}",
    "/api/v2/users/{n}/profile",
    "/healthz",
    "/metrics",
    "/api/v1/search?q=shoes&page={p}",
)
GRPC_METHODS = ("/shop.Catalog/GetItem", "/shop.Catalog/ListItems", "/pay.Ledger/Post", "/pay.Ledger/Balance")
DNS_NAMES = (
    "api.shop.svc.cluster.local",
    "ledger.pay.svc.cluster.local",
    "example.com",
    "metadata.google.internal",
)
KAFKA_APIS = (("Produce", "orders"), ("Fetch", "orders,payments"), ("Metadata", ""))
USER_AGENTS = ("okhttp/4.12.0", "python-requests/2.31.0", "Go-http-client/1.1", "curl/8.5.0", "axios/1.6.7")


@dataclass(frozen=True)
class _Pod:
    ip: str
    name: str
    namespace: str
    workload: str
    node: str
    labels: tuple[tuple[str, str], ...]


def _pods(rnd: random.Random, app: str, ns: str, count: int) -> list[_Pod]:
    """The replicas of one Deployment: a cluster has a few hundred pods, so addresses repeat."""
    rs = f"{rnd.randrange(16**5):05x}"
    labels = (
        ("app", app),
        ("app.kubernetes.io/part-of", ns),
        *((("version", "v2"),) if rnd.random() < 0.5 else ()),
    )
    return [
        _Pod(
            ip=f"10.{rnd.randrange(1, 4)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
            name=f"{app}-{rs}-{rnd.randrange(16**5):05x}",
            namespace=ns,
            workload=f"Deployment/{app}",
            node=rnd.choice(NODES),
            labels=labels,
        )
        for _ in range(count)
    ]


def _cluster(rnd: random.Random) -> tuple[list[_Pod], dict[str, list[_Pod]]]:
    """Client pods (about 400) and each service's server pods."""
    clients = [
        pod
        for ns in NAMESPACES[1:]
        for app in ("web", "worker", "gateway", "cron")
        for pod in _pods(rnd, app, ns, rnd.randrange(10, 30))
    ]
    servers = {service: _pods(rnd, service, ns, rnd.randrange(2, 9)) for service, ns, _ in SERVICES}
    return clients, servers


def _endpoint(rnd: random.Random, pod: _Pod, port: int, service: str | None) -> Endpoint:
    return Endpoint(
        ip=pod.ip,
        port=port,
        pod=pod.name,
        namespace=pod.namespace,
        workload=pod.workload,
        service=service,
        node=pod.node,
        container=pod.workload.split("/")[1],
        pid=rnd.randrange(100, 40000) if rnd.random() < 0.3 else None,
        process=rnd.choice(("node", "python3", "java")) if rnd.random() < 0.3 else None,
        labels=dict(pod.labels),
    )


def _json_body(rnd: random.Random, n: int) -> bytes:
    items = ",".join(
        f'{{"id":{rnd.randrange(10**6)},"price":{rnd.randrange(100, 99999) / 100}}}' for _ in range(n)
    )
    return f'{{"items":[{items}],"next":null}}'.encode()


def realistic_call(
    rnd: random.Random, cluster: tuple[list[_Pod], dict[str, list[_Pod]]], call_id: str, ts: int
) -> Call:
    """One call starting at `ts` (ns) between two pods of `cluster`; `rnd` decides everything else."""
    service, ns, port = rnd.choice(SERVICES)
    src = _endpoint(rnd, rnd.choice(cluster[0]), rnd.randrange(32768, 61000), None)
    dst = _endpoint(rnd, rnd.choice(cluster[1][service]), port, service)
    latency = int(rnd.lognormvariate(15.5, 1.0))  # median ~5 ms, a long tail
    kind = rnd.random()
    info: dict[str, object] = {}
    flags: list[str] = []
    status: int | None
    if kind < 0.70:
        protocol = "http" if kind < 0.60 else "http2"
        target = rnd.choice(HTTP_TARGETS).format(n=rnd.randrange(5000), p=rnd.randrange(1, 40))
        method = "GET" if rnd.random() < 0.7 else rnd.choice(("POST", "PUT", "DELETE"))
        r = rnd.random()
        status = (
            200 if r < 0.85 else 201 if r < 0.9 else 404 if r < 0.95 else rnd.choice((500, 502, 503, 504))
        )
        req_body = _json_body(rnd, rnd.randrange(1, 3)) if method in ("POST", "PUT") else b""
        resp_body = _json_body(rnd, rnd.randrange(0, 6)) if status < 300 else b'{"error":"upstream failed"}'
        req_headers = [
            ("Host", f"{service}.{ns}.svc"),
            ("User-Agent", rnd.choice(USER_AGENTS)),
            ("Accept", "application/json"),
            ("X-Request-Id", f"{rnd.getrandbits(64):016x}"),
            ("traceparent", f"00-{rnd.getrandbits(128):032x}-{rnd.getrandbits(64):016x}-01"),
        ]
        if req_body:
            req_headers += [("Content-Type", "application/json"), ("Content-Length", str(len(req_body)))]
        resp_headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(resp_body))),
            ("Date", "Sat, 21 Nov 2026 10:00:00 GMT"),
            ("Server", rnd.choice(("gunicorn", "envoy", "nginx/1.25.3"))),
        ]
        if protocol == "http":
            info = {"http_version": "1.1"}
    elif kind < 0.85:
        protocol, method = "grpc", "POST"
        target = rnd.choice(GRPC_METHODS)
        status = 0 if rnd.random() < 0.96 else rnd.choice((2, 5, 14))
        req_body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(8, 60)))
        resp_body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(8, 200)))
        req_headers = [
            (":authority", f"{service}.{ns}.svc:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "5S"),
        ]
        resp_headers = [(":status", "200"), ("content-type", "application/grpc")]
        info = {"http_status": 200, "messages": [{"dir": "request", "fields": {"1": rnd.randrange(5000)}}]}
    elif kind < 0.95:
        protocol, method, status = "dns", "QUERY", 0 if rnd.random() < 0.9 else 3
        target = rnd.choice(DNS_NAMES)
        req_body = resp_body = b""
        req_headers, resp_headers = [], []
        info = {"qtype": "A", "answers": [f"10.96.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"]}
        latency //= 10
    else:
        protocol = "kafka"
        method, target = rnd.choice(KAFKA_APIS)
        status = 0
        req_body = resp_body = b""
        req_headers, resp_headers = [], []
        info = {"api_key": 0, "api_version": 9, "correlation_id": rnd.randrange(1 << 20)}
    request: Message | None = Message(
        headers=req_headers, body=req_body, body_size=len(req_body), wire_size=len(req_body) + 180
    )
    response: Message | None = Message(
        headers=resp_headers, body=resp_body, body_size=len(resp_body), wire_size=len(resp_body) + 120
    )
    request_ts: int | None = ts
    response_ts: int | None = ts + latency
    odd = rnd.random()
    if odd < 0.01:  # the response never came
        response, response_ts, status = None, None, None
        flags.append(Flag.RESPONSE_MISSING)
    elif odd < 0.015:  # only the response was seen
        request, request_ts = None, None
        flags += [Flag.REQUEST_MISSING, Flag.MID_STREAM]
    elif odd < 0.03:
        flags.append(Flag.RETRANSMISSION)
    return Call(
        id=call_id,
        protocol=protocol,
        transport="udp" if protocol == "dns" else "tcp",
        tls=port == 8443,
        sni=f"{service}.{ns}.svc" if port == 8443 else None,
        src=src,
        dst=dst,
        request_ts=request_ts,
        response_ts=response_ts,
        method=None if request is None else method,
        target=None if request is None else target,
        status=status,
        request=request,
        response=response,
        info=info,
        flags=flags,
        flow_id=f"{src.node}/{rnd.getrandbits(48):012x}",
    ).finish()


def realistic_calls(n: int, first_ts: int, step_ns: int, seed: int = 1, prefix: str = "bench") -> list[Call]:
    """`n` calls about `step_ns` apart from `first_ts`, with ids `<prefix>-<node>/<number>`."""
    rnd = random.Random(seed)
    cluster = _cluster(random.Random(0))  # the same cluster for every seed
    return [
        realistic_call(
            rnd, cluster, f"{prefix}-{NODES[i % 4]}/{i:012d}", first_ts + i * step_ns + rnd.randrange(step_ns)
        )
        for i in range(n)
    ]


# ------------------------------------------------------------------------------------ a hub process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class HubProcess:
    """`python -m podshark hub --db DIR` on a free loopback port, with `TOKEN`."""

    db: Path
    log: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def __enter__(self) -> HubProcess:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PODSHARK_TOKEN": TOKEN}
        argv = [
            sys.executable,
            "-m",
            "podshark",
            "hub",
            "--db",
            str(self.db),
            "--listen",
            f"127.0.0.1:{port}",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, *self.extra], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited {self.proc.returncode}: {self.log.read_text()[-800:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"hub did not answer /healthz within 120 s: {self.log.read_text()[-800:]}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the hub process so far (all its threads)."""
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            body: bytes = r.read()
            return body

    def stop(self) -> None:
        """SIGTERM (the hub commits what is queued and closes the store), then wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
