"""Real HTTP/2 traffic for tests: nghttpd and hypercorn in one namespace, curl/nghttp/h2 in the other.

Ground truth by construction, as in `tests.realtraffic`: nghttpd serves a directory of files this
module writes (so a call is right exactly when its response body is the file its ``:path`` names),
echoes POST bodies (``--echo-upload``) and pushes ``/style.css`` and ``/app.js`` with ``/index.html``;
a small ASGI app under hypercorn answers every request with a gzip'd JSON document that names the
method, path, query, request body and one request header (`asgi_payload` computes the same document
from what the test sent), plus a trailer when the client sent ``te: trailers``.

Servers (one netns pair per lab, both servers in the server namespace):

- nghttpd ``--no-tls`` on port 80 (HTTP/2 with prior knowledge only: nghttpd does not implement the
  HTTP/1.1 ``Upgrade: h2c`` dance; it answers an HTTP/1.1 request with a GOAWAY);
- hypercorn on port 8080 (prior knowledge *and* ``Upgrade: h2c``, gzip bodies, trailers).

Port 80 and 8080 are both in tshark's default HTTP port range, so tshark follows the connection preface
and the h2c upgrade into its HTTP/2 dissector without ``-d``.

`http2_oracle` is tshark's view of a capture through pyshark (one layer per HTTP/2 frame): per
(client port, stream id) the ``:method``/``:path`` of the request (or of the PUSH_PROMISE that
promised the stream, or of the HTTP/1.1 request that an h2c upgrade turned into stream 1), the
``:status``, trailers, and whether a RST_STREAM was seen. Tests compare podshark's calls with it and
with what the test itself sent and served; never with podshark's own earlier output.

Everything is uniquely named and removed in ``finally`` blocks; only processes started here are
ended, by pid (the namespace teardown in `netns_pair` kills what is left inside our own namespaces).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.realtraffic import (
    Capture,
    NetnsPair,
    _terminate,
    netns_pair,
    netns_unavailable_reason,
    tcpdump_capture,
)
from tests.tshark_oracle import TSHARK, tshark_retry

NGHTTPD = shutil.which("nghttpd") or ("/usr/sbin/nghttpd" if os.path.exists("/usr/sbin/nghttpd") else None)
NGHTTP = shutil.which("nghttp")
H2LOAD = shutil.which("h2load")
CURL = shutil.which("curl")

NGHTTPD_PORT = 80
ASGI_PORT = 8080
CAPTURE_BPF = f"tcp port {NGHTTPD_PORT} or tcp port {ASGI_PORT}"

#: nghttpd pushes these with /index.html (``--push=/index.html=/style.css,/app.js``)
PUSHED = {"/index.html": ("/style.css", "/app.js")}
#: the header the custom-header tests send, and the one the ASGI app reflects into its answer
TEST_HEADER = "x-podshark-test"
TRAILER_NAME = "x-payload-sha256"

# h2 package for the Python clients: the interpreter running the tests has it (a dev dependency)
PYTHON = sys.executable


def h2_tools_missing_reason() -> str | None:
    """Why the HTTP/2 lab cannot run here (root, namespaces, programs, Python packages), or None."""
    reason = netns_unavailable_reason()
    if reason:
        return reason
    missing = [
        name
        for name, path in (
            ("nghttpd", NGHTTPD),
            ("nghttp", NGHTTP),
            ("h2load", H2LOAD),
            ("curl", CURL),
            ("tcpdump", "tcpdump"),
        )
        if not (path and (os.path.exists(path) or shutil.which(path)))
    ]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install nghttp2-server nghttp2-client curl)"
    for mod in ("h2", "hypercorn"):
        try:
            __import__(mod)
        except ImportError:
            return f"Python package {mod} is not installed (pip install h2 hypercorn)"
    return None


# ------------------------------------------------------------------------------------------- site


def _named(path: str, size: int, rnd: random.Random) -> bytes:
    """A text body of exactly `size` bytes that starts by naming its own path."""
    head = f"path={path}\n".encode()
    words = [b"pod", b"shark", b"stream", b"frame", b"hpack", b"window", b"settings", b"push"]
    out = bytearray(head)
    while len(out) < size:
        out += rnd.choice(words) + (b"\n" if rnd.random() < 0.1 else b" ")
    return bytes(out[:size])


def site_files() -> dict[str, bytes]:
    """Every file nghttpd serves, by URL path; deterministic, so every run serves the same bytes.

    - ``/big.bin``: 300,000 random bytes: DATA spans many frames and, at the default 65,535-byte
      initial window, needs WINDOW_UPDATEs from the client;
    - ``/items/NN.txt``: 40 files of 1-48 KB for many concurrent streams (interleaved DATA);
    - ``/index.html`` with the two files nghttpd pushes alongside it, and a few more sizes.
    """
    rnd = random.Random(20261121)
    files: dict[str, bytes] = {
        "/index.html": (
            b'<!doctype html><html><head><link rel="stylesheet" href="/style.css">'
            b'<script src="/app.js"></script></head><body><p>podshark h2 lab</p></body></html>\n'
        ),
        "/style.css": b"body { font-family: monospace; }\np { color: #333; }\n",
        "/app.js": _named("/app.js", 2_345, rnd),
        "/small.txt": b"path=/small.txt\nsmall\n",
        "/page.html": _named("/page.html", 6_000, rnd),
        "/data.json": json.dumps(
            [{"id": n, "name": rnd.choice(["pod", "node", "svc"]), "score": rnd.random()} for n in range(600)]
        ).encode(),
        "/big.bin": rnd.randbytes(300_000),
    }
    for i in range(40):
        path = f"/items/{i:02d}.txt"
        files[path] = _named(path, 1_000 + (i * 1_187) % 47_000, rnd)
    return files


def write_site(htdocs: Path, files: Mapping[str, bytes]) -> None:
    for url_path, data in files.items():
        dest = htdocs / url_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


ASGI_APP = textwrap.dedent(
    '''\
    """ASGI app for podshark's HTTP/2 tests: a gzip'd JSON answer naming the request (see h2_lab)."""
    import gzip, hashlib, json


    def payload(method, path, query, body, header):
        doc = {"method": method, "path": path, "query": query, "body": body.decode("latin-1"),
               "header": header}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif m["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        headers = dict(scope["headers"])
        header = headers.get(b"%(header)s", b"").decode("latin-1") or None
        doc = payload(scope["method"], scope["path"], scope["query_string"].decode("latin-1"), body, header)
        wire = gzip.compress(doc, mtime=0)
        trailers = headers.get(b"te") == b"trailers" and "http.response.trailers" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "trailers": trailers, "headers": [
            (b"content-type", b"application/json"), (b"content-encoding", b"gzip"),
            (b"content-length", str(len(wire)).encode())]})
        await send({"type": "http.response.body", "body": wire, "more_body": False})
        if trailers:
            digest = hashlib.sha256(doc).hexdigest().encode()
            await send({"type": "http.response.trailers", "headers": [(b"%(trailer)s", digest)],
                        "more_trailers": False})
    '''
) % {"header": TEST_HEADER, "trailer": TRAILER_NAME}


def asgi_payload(
    method: str, path: str, query: str = "", body: bytes = b"", header: str | None = None
) -> bytes:
    """The decoded JSON document the ASGI app answers with (mirrors ``payload`` in `ASGI_APP`)."""
    doc = {"method": method, "path": path, "query": query, "body": body.decode("latin-1"), "header": header}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def asgi_trailer(doc: bytes) -> tuple[str, str]:
    """The trailer the ASGI app sends after `doc` when asked with ``te: trailers``."""
    return (TRAILER_NAME, hashlib.sha256(doc).hexdigest())


def gunzip(data: bytes) -> bytes:
    return gzip.decompress(data)


# -------------------------------------------------------------------------------------------- lab


@dataclass(slots=True)
class H2Lab:
    """The namespace pair, the two servers, the files they serve and a scratch directory."""

    pair: NetnsPair
    workdir: Path
    htdocs: Path
    files: dict[str, bytes]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.pair.server_ip

    def url(self, path: str) -> str:
        """A URL on nghttpd."""
        return f"http://{self.pair.server_ip}:{NGHTTPD_PORT}{path}"

    def asgi_url(self, path: str) -> str:
        """A URL on hypercorn."""
        return f"http://{self.pair.server_ip}:{ASGI_PORT}{path}"

    @contextlib.contextmanager
    def capture(self, name: str, **kw: Any) -> Iterator[Capture]:
        """tcpdump on the server end of the veth for both servers' ports; see `tcpdump_capture`."""
        kw.setdefault("bpf", CAPTURE_BPF)
        with tcpdump_capture(self.pair, self.workdir / name, **kw) as cap:
            yield cap

    def client(self, args: Sequence[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a client command in the client namespace; fail with its stderr when it fails."""
        res = self.pair.client(args, timeout=timeout, check=False)
        if res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:3])}... failed ({res.returncode}): {res.stderr.strip()[-800:]}"
            )
        return res


def _wait_ready(lab: H2Lab, proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 15) -> None:
    """Poll `url` with curl (HTTP/2 prior knowledge) until it answers 200; fail early if `proc` died."""
    assert CURL is not None
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"server exited ({proc.returncode}): {text.strip()[-800:]}")
        res = lab.pair.client(
            [CURL, "-s", "--http2-prior-knowledge", "--max-time", "1", "-o", "/dev/null",
             "-w", "%{http_code}", url], check=False, timeout=5,
        )  # fmt: skip
        if res.stdout == "200":
            return
        last = res.stderr or res.stdout
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


def _start(lab: H2Lab, args: Sequence[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            lab.pair.exec_args(lab.pair.server_ns, args), stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )
    lab.procs.append(proc)
    return proc


@contextlib.contextmanager
def h2_lab() -> Iterator[H2Lab]:
    """Namespaces + nghttpd + hypercorn + the served files; everything removed on exit."""
    reason = h2_tools_missing_reason()
    if reason:
        pytest.skip(reason)
    assert NGHTTPD is not None
    workdir = Path(tempfile.mkdtemp(prefix="psk-h2lab-"))
    try:
        with netns_pair() as pair:
            htdocs = workdir / "htdocs"
            files = site_files()
            write_site(htdocs, files)
            lab = H2Lab(pair=pair, workdir=workdir, htdocs=htdocs, files=files)
            try:
                push = [f"--push={page}={','.join(res)}" for page, res in PUSHED.items()]
                nghttpd = _start(
                    lab,
                    [NGHTTPD, "--no-tls", "-a", pair.server_ip, "-d", str(htdocs), "--echo-upload", *push,
                     str(NGHTTPD_PORT)],
                    workdir / "nghttpd.log",
                )  # fmt: skip
                (workdir / "podshark_h2_app.py").write_text(ASGI_APP)
                hypercorn = _start(
                    lab,
                    [PYTHON, "-m", "hypercorn", "--bind", f"{pair.server_ip}:{ASGI_PORT}",
                     "--keep-alive", "120", "podshark_h2_app:app"],
                    workdir / "hypercorn.log",
                    cwd=workdir,
                )  # fmt: skip
                _wait_ready(lab, nghttpd, lab.url("/small.txt"), workdir / "nghttpd.log")
                _wait_ready(lab, hypercorn, lab.asgi_url("/ready"), workdir / "hypercorn.log")
                yield lab
            finally:
                for proc in lab.procs:
                    _terminate(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def h2lab() -> Iterator[H2Lab]:
    """The HTTP/2 lab shared by a module's tests (each test makes its own captures in it)."""
    with h2_lab() as lab:
        yield lab


# ---------------------------------------------------------------------------------------- clients


def curl_h2(
    lab: H2Lab,
    urls: Sequence[str],
    *,
    upgrade: bool = False,
    headers: Sequence[str] = (),
    data: bytes | None = None,
    name: str = "curl",
) -> None:
    """Fetch `urls` in order with curl.

    ``upgrade=True``: ``--http2``, ONE curl process for all URLs: on cleartext the first request goes
    out as HTTP/1.1 with ``Upgrade: h2c`` and the rest follow on the same connection, streams 3, 5, …

    ``upgrade=False``: ``--http2-prior-knowledge``, one curl process (so one connection, stream 1) per
    URL. Debian 12's curl 7.88.1 cannot run a second stream on a prior-knowledge connection (sequential
    reuse and ``-Z`` multiplexing both fail with "(16) Error in the HTTP2 framing layer"), so sequential
    streams on one connection come from `h2load_sequential` instead.
    """
    assert CURL is not None
    groups = [list(urls)] if upgrade else [[u] for u in urls]
    for n, group in enumerate(groups):
        cfg = lab.workdir / f"{name}-{n}.cfg"
        lines = ["http2" if upgrade else "http2-prior-knowledge"]
        lines += [f'header = "{h}"' for h in headers]
        if data is not None:
            body = lab.workdir / f"{name}.body"
            body.write_bytes(data)
            lines.append(f'data-binary = "@{body}"')
        for u in group:
            lines += [f'url = "{u}"', 'output = "/dev/null"']
        cfg.write_text("\n".join(lines) + "\n")
        lab.client([CURL, "-s", "-S", "--config", str(cfg)])


def h2load_sequential(lab: H2Lab, urls: Sequence[str]) -> str:
    """``h2load -n N -c 1 -m 1 URLS``: one connection, one request at a time, URLs in order, so the
    i-th URL is stream 2i+1 (h2load cycles through its URIs)."""
    assert H2LOAD is not None
    res = lab.client([H2LOAD, "-n", str(len(urls)), "-c", "1", "-m", "1", *urls])
    if f"{len(urls)} done" not in res.stdout or " 0 errored" not in res.stdout:  # a 404 counts as "failed"
        raise RuntimeError(f"h2load: {res.stdout[-800:]}")
    return res.stdout


def nghttp(lab: H2Lab, urls: Sequence[str], *args: str) -> str:
    """``nghttp -n ARGS URLS``: all URLs concurrently on one connection (nghttp's stream ids start at 13:
    it opens idle streams 3-11 with PRIORITY frames for its dependency tree first)."""
    assert NGHTTP is not None
    return lab.client([NGHTTP, "-n", *args, *urls]).stdout


RESET_CLIENT = textwrap.dedent(
    """\
    # HTTP/2 client (the h2 package) that cancels one stream: GET BIG, RST_STREAM(CANCEL) at its first
    # DATA frame, then GET SMALL on a new stream and read it to its end. Prints JSON facts.
    import json, socket, sys
    import h2.config, h2.connection, h2.errors, h2.events, h2.exceptions
    host, port, big, small = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    s = socket.create_connection((host, port), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    def get(path):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", host),
                             (":path", path), ("user-agent", "podshark-h2-reset-client")], end_stream=True)
        return sid
    big_id = get(big)
    s.sendall(c.data_to_send())
    small_id, big_bytes, small_body, done = None, 0, b"", False
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                try:
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
                if ev.stream_id == big_id:
                    big_bytes += len(ev.data)
                    if small_id is None:
                        c.reset_stream(big_id, h2.errors.ErrorCodes.CANCEL)
                        small_id = get(small)
                elif ev.stream_id == small_id:
                    small_body += ev.data
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == small_id:
                done = True
        s.sendall(c.data_to_send())
    s.close()
    print(json.dumps({"big_id": big_id, "small_id": small_id, "big_bytes": big_bytes,
                      "small_len": len(small_body)}))
    """
)


def reset_client(lab: H2Lab, big: str, small: str) -> dict[str, Any]:
    """Run `RESET_CLIENT` in the client namespace against nghttpd; returns its facts."""
    res = lab.client([PYTHON, "-c", RESET_CLIENT, lab.host, str(NGHTTPD_PORT), big, small])
    facts: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return facts


# ----------------------------------------------------------------------------------------- oracle


@dataclass(slots=True)
class H2Stream:
    """One HTTP/2 stream as tshark saw it."""

    client_port: int
    stream_id: int
    method: str | None = None
    path: str | None = None
    status: int | None = None
    pushed: bool = False
    upgraded: bool = False  # stream 1 of an h2c upgrade: the request was the HTTP/1.1 one
    #: "client" / "server" per RST_STREAM that arrived while the stream was still open in some direction
    reset_by: list[str] = field(default_factory=list)
    #: the same for RST_STREAMs that came after both sides had sent END_STREAM (no effect on the exchange)
    late_reset_by: list[str] = field(default_factory=list)
    client_ended: bool = False  # END_STREAM from the client (or no client side: upgrade, push)
    server_ended: bool = False
    data_frames: int = 0
    trailer_names: list[str] = field(default_factory=list)


@dataclass(slots=True)
class H2Oracle:
    """tshark's HTTP/2 streams of one capture, plus the frame order of DATA frames (stream ids)."""

    streams: dict[tuple[int, int], H2Stream] = field(default_factory=dict)
    data_order: dict[int, list[int]] = field(default_factory=dict)  # client port -> stream id per DATA
    http1: list[tuple[int, str | None, str | None, int | None]] = field(default_factory=list)
    goaway: set[int] = field(default_factory=set)  # client ports whose connection saw a GOAWAY

    def summary(self) -> dict[tuple[int, int], tuple[str | None, str | None, int | None]]:
        """(client port, stream id) -> (method, path, status): the unit the tests compare."""
        return {k: (s.method, s.path, s.status) for k, s in self.streams.items()}


def _fields(layer: Any, name: str) -> list[str]:
    """Every value of field `name` in a pyshark layer ('' when absent)."""
    f = layer.get_field(name)
    if f is None:
        return []
    return [str(getattr(x, "show", x)) for x in getattr(f, "all_fields", [f])]


def _first(layer: Any, name: str) -> str | None:
    vals = _fields(layer, name)
    return vals[0] if vals else None


def http2_oracle(path: str | os.PathLike[str], server_ports: Sequence[int] = (NGHTTPD_PORT, ASGI_PORT),
                 decode_as: Mapping[str, str] | None = None) -> H2Oracle:  # fmt: skip
    """tshark's view, frame by frame, through pyshark (one ``http2`` layer per HTTP/2 frame)."""
    return _http2_oracle_once(path, server_ports, decode_as)


@tshark_retry
def _http2_oracle_once(
    path: str | os.PathLike[str], server_ports: Sequence[int], decode_as: Mapping[str, str] | None
) -> H2Oracle:
    import pyshark

    def ended(layer: Any) -> bool:
        return (_first(layer, "flags_end_stream") or "0").lower() in ("1", "true")

    if TSHARK is None:
        pytest.skip("tshark is not on PATH")
    ports = set(server_ports)
    out = H2Oracle()
    cap = pyshark.FileCapture(
        os.fspath(path),
        display_filter="http2 || http",
        keep_packets=False,
        decode_as=dict(decode_as) if decode_as else None,
        tshark_path=TSHARK,
    )
    try:
        for pkt in cap:
            sport, dport = int(pkt.tcp.srcport), int(pkt.tcp.dstport)
            from_client = dport in ports
            cport = sport if from_client else dport
            for layer in pkt.get_multiple_layers("http"):
                method, uri, code = (
                    _first(layer, n) for n in ("request_method", "request_uri", "response_code")
                )
                if method or code:
                    out.http1.append((cport, method, uri, int(code) if code else None))
                if code == "101":  # h2c: stream 1 is half-closed (local) for the client from the start
                    out.streams.setdefault((cport, 1), H2Stream(cport, 1)).client_ended = True
            for layer in pkt.get_multiple_layers("http2"):
                ftype, sid = _first(layer, "type"), _first(layer, "streamid")
                if ftype is None or sid is None:
                    continue  # the connection preface
                t, s = int(ftype), int(sid)
                if t == 7:
                    out.goaway.add(cport)
                if s == 0:
                    continue
                if t == 5:  # PUSH_PROMISE: the headers belong to the promised stream
                    promised = int(_first(layer, "push_promise_promised_stream_id") or 0)
                    st = out.streams.setdefault((cport, promised), H2Stream(cport, promised))
                    st.pushed = st.client_ended = True
                    st.method, st.path = _first(layer, "headers_method"), _first(layer, "headers_path")
                    continue
                st = out.streams.setdefault((cport, s), H2Stream(cport, s))
                if t in (0, 1) and ended(layer):
                    if from_client:
                        st.client_ended = True
                    else:
                        st.server_ended = True
                if t == 0:
                    st.data_frames += 1
                    out.data_order.setdefault(cport, []).append(s)
                elif t == 1:
                    if from_client and st.method is None:
                        st.method, st.path = _first(layer, "headers_method"), _first(layer, "headers_path")
                    elif not from_client:
                        status = _first(layer, "headers_status")
                        if status and st.status is None:
                            st.status = int(status.split()[0])
                        elif st.status is not None:
                            st.trailer_names += _fields(layer, "header_name")
                elif t == 3:
                    late = st.client_ended and st.server_ended
                    (st.late_reset_by if late else st.reset_by).append("client" if from_client else "server")
    finally:
        cap.close()
    # h2c: stream 1 carries the response to the HTTP/1.1 request that asked for the upgrade
    for cport, method, uri, _code in out.http1:
        up = out.streams.get((cport, 1))
        if method and up is not None and up.method is None:
            up.method, up.path, up.upgraded = method, uri, True
    return out


# ------------------------------------------------------------------------------------ podshark side


def stream_id_of(call: Any) -> int | None:
    """The HTTP/2 stream id podshark reports for a call (``info.stream_id``)."""
    info = call.info or {}
    for key in ("stream_id", "stream", "streamid"):
        if key in info:
            return int(info[key])
    return None


def podshark_calls(path: str | os.PathLike[str]) -> list[Any]:
    """Every call podshark finds in the capture (the system under test), in emission order."""
    from dissect.engine import dissect_path

    return list(dissect_path(path))


def podshark_json(path: str | os.PathLike[str], timeout: float = 120) -> list[dict[str, Any]]:
    """``python -m podshark dissect FILE --json``, parsed: the command line, not just the library."""
    repo = Path(__file__).resolve().parent.parent
    res = subprocess.run(
        [PYTHON, "-m", "podshark", "dissect", os.fspath(path), "--json"],
        cwd=repo, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise AssertionError(
            f"podshark dissect --json failed ({res.returncode}): {res.stderr.strip()[-800:]}"
        )
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
