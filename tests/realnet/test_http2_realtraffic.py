"""podshark's HTTP/2 dissector on real HTTP/2 traffic made by the tests themselves.

Servers: nghttpd (cleartext, prior knowledge, files of known bytes, POST echo, server push) and
hypercorn (an ASGI app answering gzip'd JSON, ``Upgrade: h2c``, trailers) — see `tests.h2_lab`.
Clients: curl (``--http2-prior-knowledge``: a connection per URL, as Debian 12's curl 7.88.1 cannot
run a second stream on a prior-knowledge connection; ``--http2``: the HTTP/1.1 upgrade, then streams
3, 5… on the same connection), h2load ``-c 1 -m 1`` (sequential streams 1, 3, 5… on one connection),
nghttp (many concurrent streams with interleaved DATA frames, custom headers, POST bodies larger
than the flow-control window, push), and a small client on the ``h2`` package that cancels a stream
with RST_STREAM.

Each scenario is captured once per module by tcpdump on the veth. The expected values come from
what the test sent and served (file bytes, the ASGI document); tshark (through pyshark, frame by
frame) checks the captures themselves and is the per-stream differential oracle: podshark's
(client port, stream id) -> (method, target, status) must equal tshark's, a stream has the flag
``reset`` exactly when tshark saw a RST_STREAM on it while it was still open in some direction (a
RST_STREAM after both END_STREAMs, which curl sends, may be flagged or not), and ``server-push``
exactly when it was promised.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.h2_lab import (
    PUSHED,
    TEST_HEADER,
    H2Lab,
    H2Oracle,
    asgi_payload,
    asgi_trailer,
    curl_h2,
    h2lab,  # noqa: F401  (module-scoped pytest fixture)
    h2load_sequential,
    http2_oracle,
    nghttp,
    podshark_calls,
    podshark_json,
    reset_client,
    stream_id_of,
)
from tests.tshark_oracle import (
    Connection,
    requires_pyshark,
    requires_tshark,
    resend_flags,
    resent_connections,
)

pytestmark = [
    pytest.mark.tshark,
    pytest.mark.root,
    requires_tshark,
    requires_pyshark,
    pytest.mark.timeout(300),
]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("realnet-http2"))

#: flags a clean, complete stream may carry: a GOAWAY at the end of a connection is where a dissector
#: may reasonably note it on the calls of that connection, so it is not held against a clean stream
BENIGN = frozenset({"goaway"})
KEEP = os.environ.get("PODSHARK_KEEP_CAPTURES")

CURL_PATHS = ("/small.txt", "/page.html", "/data.json", "/big.bin", "/items/07.txt", "/no-such-file.txt")
MANY_PATHS = (*(f"/items/{i:02d}.txt" for i in range(40)), "/big.bin")
POST_BODY = bytes(range(256)) * 400  # 102,400 bytes: more than the 65,535-byte initial window
POST_PATHS = ("/echo/one", "/echo/two")
HEADER_VALUE = "hello-h2; n=42"
UPGRADE_TARGETS = ("/up/first?x=1", "/up/second", "/up/third?y=2&z=3")
ASGI_GETS = ("/json/a?q=1", "/json/b")
ASGI_POST_TARGET = "/json/post?id=7"
ASGI_POST_BODY = b'{"order": 7, "items": ["a", "b"]}'


@dataclass(frozen=True)
class Scenario:
    path: Path
    oracle: H2Oracle
    facts: dict[str, Any]


def _make(lab: H2Lab, name: str, action: Callable[[], dict[str, Any] | None]) -> Scenario:
    """Capture `action`'s traffic; retry when tcpdump lost packets (the machine, not podshark)."""
    for attempt in range(3):
        with lab.capture(f"{name}-{attempt}.pcap") as cap:
            facts = action() or {}
        if cap.complete:
            if KEEP:  # PODSHARK_KEEP_CAPTURES=DIR keeps a copy of each capture, to look at a failure
                Path(KEEP).mkdir(parents=True, exist_ok=True)
                shutil.copy(cap.path, Path(KEEP) / f"http2-{name}.pcap")
            return Scenario(path=cap.path, oracle=http2_oracle(cap.path), facts=facts)
    raise AssertionError(f"tcpdump lost packets 3 times making {name}:\n{cap.stderr}")


# ------------------------------------------------------------------------------------------ captures


@pytest.fixture(scope="module")
def curl_pk(h2lab: H2Lab) -> Scenario:  # noqa: F811
    """curl --http2-prior-knowledge, six URLs, a connection each (one is a 404)."""
    return _make(h2lab, "curl-pk", lambda: curl_h2(h2lab, [h2lab.url(p) for p in CURL_PATHS]))


@pytest.fixture(scope="module")
def seq(h2lab: H2Lab) -> Scenario:  # noqa: F811
    """h2load -c 1 -m 1: the six URLs one after the other on one connection: streams 1, 3, … 11."""
    return _make(
        h2lab, "h2load-seq", lambda: {"out": h2load_sequential(h2lab, [h2lab.url(p) for p in CURL_PATHS])}
    )


@pytest.fixture(scope="module")
def nghttp_many(h2lab: H2Lab) -> Scenario:  # noqa: F811
    """nghttp: 41 concurrent streams on one connection, DATA frames interleaved, big.bin > window."""
    return _make(h2lab, "nghttp-many", lambda: {"out": nghttp(h2lab, [h2lab.url(p) for p in MANY_PATHS])})


@pytest.fixture(scope="module")
def nghttp_post(h2lab: H2Lab) -> Scenario:  # noqa: F811
    """nghttp -d (100 KiB POST, echoed back) with a custom header, two streams."""
    body = h2lab.workdir / "post.bin"
    body.write_bytes(POST_BODY)
    return _make(
        h2lab,
        "nghttp-post",
        lambda: {
            "out": nghttp(
                h2lab,
                [h2lab.url(p) for p in POST_PATHS],
                "-d",
                str(body),
                "-H",
                f"{TEST_HEADER}: {HEADER_VALUE}",
            )
        },
    )


@pytest.fixture(scope="module")
def upgrade(h2lab: H2Lab) -> Scenario:  # noqa: F811
    """curl --http2 on cleartext against hypercorn: HTTP/1.1 Upgrade: h2c, then HTTP/2."""
    return _make(h2lab, "h2c-upgrade", lambda: curl_h2(h2lab, [h2lab.asgi_url(t) for t in UPGRADE_TARGETS],
                                                        upgrade=True, name="curl-up"))  # fmt: skip


@pytest.fixture(scope="module")
def push(h2lab: H2Lab) -> Scenario:  # noqa: F811
    """nghttp GET /index.html: nghttpd pushes /style.css and /app.js (PUSH_PROMISE, even streams)."""
    return _make(h2lab, "push", lambda: {"out": nghttp(h2lab, [h2lab.url("/index.html")])})


@pytest.fixture(scope="module")
def reset(h2lab: H2Lab) -> Scenario:  # noqa: F811
    """An h2 client cancels GET /big.bin with RST_STREAM at its first DATA frame, then GETs /small.txt."""
    return _make(h2lab, "reset", lambda: reset_client(h2lab, "/big.bin", "/small.txt"))


@pytest.fixture(scope="module")
def asgi(h2lab: H2Lab) -> Scenario:  # noqa: F811
    """curl --http2-prior-knowledge to hypercorn: GETs and a POST, gzip'd JSON answers with trailers."""

    def action() -> None:
        hdrs = ["te: trailers", f"{TEST_HEADER}: {HEADER_VALUE}"]
        curl_h2(h2lab, [h2lab.asgi_url(t) for t in ASGI_GETS], headers=hdrs, name="curl-asgi-get")
        curl_h2(h2lab, [h2lab.asgi_url(ASGI_POST_TARGET)], headers=[*hdrs, "content-type: application/json"],
                data=ASGI_POST_BODY, name="curl-asgi-post")  # fmt: skip

    return _make(h2lab, "asgi", action)


# ------------------------------------------------------------------------------------------ helpers


#: connections in which tshark saw a TCP resend, from every capture dissected so far: the only place
#: the `retransmission` flag is expected (a loaded machine sometimes resends real traffic)
RESENT: set[Connection] = set()


def http2_calls(path: Path) -> list[Any]:
    RESENT.update(resent_connections(path))
    return [c for c in podshark_calls(path) if c.protocol == "http2"]


def body(msg: Any) -> bytes | None:
    return None if msg is None else bytes(msg.body)


def headers_of(msg: Any) -> list[tuple[str, str]]:
    return [] if msg is None else [(str(n), str(v)) for n, v in msg.headers]


def trailers_of(msg: Any) -> list[tuple[str, str]]:
    return [] if msg is None else [(str(n), str(v)) for n, v in msg.trailers]


def describe(c: Any) -> str:
    resp = c.response
    return (
        f"{c.protocol} stream={stream_id_of(c)} {c.method} {c.target} -> {c.status} flags={list(c.flags)} "
        f"body={None if resp is None else len(resp.body)}B"
    )


def by_stream(calls: Iterable[Any]) -> dict[tuple[int, int], Any]:
    out: dict[tuple[int, int], Any] = {}
    for c in calls:
        sid = stream_id_of(c)
        assert sid is not None, f"no stream id in info for {describe(c)}: info={c.info}"
        key = (int(c.src.port), sid)
        assert key not in out, f"two calls for client port {key[0]} stream {sid}"
        out[key] = c
    return out


def tshark_differences(calls: list[Any], oracle: H2Oracle) -> list[str]:
    """podshark against tshark, stream by stream: summary columns, reset and push flags."""
    want = {k: s for k, s in oracle.streams.items() if s.method is not None or s.status is not None}
    got = by_stream(calls)
    problems = []
    for key in sorted(set(want) | set(got)):
        s, c = want.get(key), got.get(key)
        if s is None:
            problems.append(f"port {key[0]} stream {key[1]}: podshark only: {describe(c)}")
            continue
        if c is None:
            problems.append(f"port {key[0]} stream {key[1]}: tshark only: {s.method} {s.path} {s.status}")
            continue
        if (c.method, c.target, c.status) != (s.method, s.path, s.status):
            problems.append(
                f"port {key[0]} stream {key[1]}: podshark {(c.method, c.target, c.status)}, "
                f"tshark {(s.method, s.path, s.status)}"
            )
        # a RST_STREAM after both END_STREAMs changes nothing about the exchange: either way is right
        if ("reset" in c.flags) != bool(s.reset_by) and not (s.late_reset_by and not s.reset_by):
            problems.append(
                f"port {key[0]} stream {key[1]}: flags {list(c.flags)}, tshark RST_STREAM {s.reset_by}"
            )
        if ("server-push" in c.flags) != s.pushed:
            problems.append(f"port {key[0]} stream {key[1]}: flags {list(c.flags)}, tshark pushed={s.pushed}")
    return problems


def assert_like_tshark(path: Path, oracle: H2Oracle) -> list[Any]:
    calls = http2_calls(path)
    problems = tshark_differences(calls, oracle)
    assert not problems, f"{path.name}: podshark vs tshark:\n  " + "\n  ".join(problems[:20])
    return calls


def unexpected_flags(c: Any, allowed: Iterable[str] = ()) -> set[str]:
    return set(c.flags) - BENIGN - set(allowed) - resend_flags(c, RESENT)


# ---------------------------------------------------------------------- the captures are what we meant


def test_captures_carry_what_was_sent(
    h2lab: H2Lab,  # noqa: F811
    curl_pk: Scenario,
    seq: Scenario,
    nghttp_many: Scenario,
    nghttp_post: Scenario,
    upgrade: Scenario,
    push: Scenario,
    reset: Scenario,
    asgi: Scenario,
) -> None:
    """tshark, not podshark: every capture holds the streams the test made, on one connection each."""

    def reqs(sc: Scenario) -> Counter[tuple[str | None, str | None, int | None]]:
        return Counter((s.method, s.path, s.status) for s in sc.oracle.streams.values() if s.method)

    assert reqs(curl_pk) == Counter(("GET", p, 404 if "no-such" in p else 200) for p in CURL_PATHS)
    assert {s for (_, s), st in curl_pk.oracle.streams.items() if st.method} == {1}
    assert len({p for p, _ in curl_pk.oracle.streams}) == len(CURL_PATHS), "want a connection per URL"
    assert reqs(seq) == reqs(curl_pk)
    in_order = sorted((s, st.path) for (_, s), st in seq.oracle.streams.items() if st.method)
    assert in_order == [(2 * i + 1, p) for i, p in enumerate(CURL_PATHS)]
    assert len({p for p, _ in seq.oracle.streams}) == 1, "h2load used more than one connection"

    assert reqs(nghttp_many) == Counter(("GET", p, 200) for p in MANY_PATHS)
    order = next(iter(nghttp_many.oracle.data_order.values()))
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches > len(MANY_PATHS), f"DATA frames of concurrent streams are not interleaved: {order[:60]}"

    assert reqs(nghttp_post) == Counter(("POST", p, 200) for p in POST_PATHS)

    assert reqs(upgrade) == Counter(("GET", t, 200) for t in UPGRADE_TARGETS)
    assert [(m, u, st) for _, m, u, st in upgrade.oracle.http1] == [
        ("GET", UPGRADE_TARGETS[0], None), (None, None, 101)
    ]  # fmt: skip
    assert upgrade.oracle.streams[(upgrade.oracle.http1[0][0], 1)].upgraded

    pushed = {(s.method, s.path, s.status) for s in push.oracle.streams.values() if s.pushed}
    assert pushed == {("GET", p, 200) for p in PUSHED["/index.html"]}
    assert all(sid % 2 == 0 for (_, sid), s in push.oracle.streams.items() if s.pushed)

    big = [s for s in reset.oracle.streams.values() if s.path == "/big.bin"]
    # h2 answers each DATA frame that was already in flight with another RST_STREAM(STREAM_CLOSED)
    assert len(big) == 1 and set(big[0].reset_by) == {"client"}, f"no client RST_STREAM on /big.bin: {big}"
    assert reset.facts["big_bytes"] < len(h2lab.files["/big.bin"]), "the reset came after the whole body"

    assert reqs(asgi) == Counter([("GET", "/json/a?q=1", 200), ("GET", "/json/b", 200),
                                  ("POST", ASGI_POST_TARGET, 200)])  # fmt: skip
    assert all(s.trailer_names == [asgi_trailer(b"")[0]] for s in asgi.oracle.streams.values() if s.method)


# ------------------------------------------------------------------------------------------ podshark


def _check_files(lab: H2Lab, calls: list[Any]) -> list[str]:
    problems = []
    for c in calls:
        want = lab.files.get(c.target or "")
        if c.status == 200 and (want is None or body(c.response) != want):
            problems.append(f"{describe(c)}: body is not the bytes of {c.target}")
        elif c.status == 200 and c.response.body_size != len(want or b""):
            problems.append(f"{describe(c)}: body_size {c.response.body_size}")
        if unexpected_flags(c):
            problems.append(f"{describe(c)}: unexpected flags")
        authority = [v for n, v in headers_of(c.request) if n == ":authority"]
        if authority not in ([lab.host], [f"{lab.host}:80"]):
            problems.append(f"{describe(c)}: request headers {headers_of(c.request)[:6]}")
        if not (c.src.ip == lab.pair.client_ip and c.dst.ip == lab.host and c.dst.port == 80):
            problems.append(f"{describe(c)}: src {c.src.ip}:{c.src.port} dst {c.dst.ip}:{c.dst.port}")
    return problems


def test_curl_prior_knowledge(h2lab: H2Lab, curl_pk: Scenario) -> None:  # noqa: F811
    """A GET per connection (stream 1), each with its own file's bytes; the 404 as 404."""
    calls = assert_like_tshark(curl_pk.path, curl_pk.oracle)
    got = sorted((stream_id_of(c), c.method, c.target, c.status) for c in calls)
    assert got == sorted((1, "GET", p, 404 if "no-such" in p else 200) for p in CURL_PATHS)
    problems = _check_files(h2lab, calls)
    assert not problems, "\n".join(problems)


def test_sequential_streams_on_one_connection(h2lab: H2Lab, seq: Scenario) -> None:  # noqa: F811
    """h2load -c 1 -m 1: streams 1, 3, … 11 in the order sent, each with its own file's bytes."""
    calls = assert_like_tshark(seq.path, seq.oracle)
    got = sorted((stream_id_of(c) or 0, c.method, c.target, c.status) for c in calls)
    assert got == [(2 * i + 1, "GET", p, 404 if "no-such" in p else 200) for i, p in enumerate(CURL_PATHS)]
    assert len({c.src.port for c in calls}) == 1
    problems = _check_files(h2lab, calls)
    assert not problems, "\n".join(problems)


def test_nghttp_concurrent_interleaved_streams(h2lab: H2Lab, nghttp_many: Scenario) -> None:  # noqa: F811
    """41 concurrent streams with interleaved DATA: each call has exactly its own file's bytes."""
    calls = assert_like_tshark(nghttp_many.path, nghttp_many.oracle)
    assert Counter(c.target for c in calls) == Counter(MANY_PATHS)
    wrong = [
        describe(c)
        for c in calls
        if c.method != "GET"
        or c.status != 200
        or body(c.response) != h2lab.files[c.target]
        or unexpected_flags(c)
    ]
    assert not wrong, f"{len(wrong)} of {len(calls)} streams wrong, e.g.:\n  " + "\n  ".join(wrong[:10])


def test_nghttp_post_bodies_and_custom_headers(nghttp_post: Scenario) -> None:
    """POST of 100 KiB (request-side flow control) echoed back; the custom header kept as sent."""
    calls = assert_like_tshark(nghttp_post.path, nghttp_post.oracle)
    assert sorted(c.target for c in calls) == sorted(POST_PATHS)
    problems = []
    for c in calls:
        if c.method != "POST" or c.status != 200:
            problems.append(f"{describe(c)}: want POST -> 200")
        if body(c.request) != POST_BODY:
            problems.append(
                f"{describe(c)}: request body {len(body(c.request) or b'')}B, want {len(POST_BODY)}B"
            )
        if body(c.response) != POST_BODY:
            problems.append(f"{describe(c)}: echoed body differs ({len(body(c.response) or b'')}B)")
        if (TEST_HEADER, HEADER_VALUE) not in headers_of(c.request):
            problems.append(f"{describe(c)}: {TEST_HEADER} missing from {headers_of(c.request)}")
        if unexpected_flags(c):
            problems.append(f"{describe(c)}: unexpected flags")
    assert not problems, "\n".join(problems)


def test_h2c_upgrade_is_two_calls(upgrade: Scenario) -> None:
    """curl --http2: an ``http`` call with 101 + ``upgrade``, then ``http2`` stream 1 for the same request."""
    calls = podshark_calls(upgrade.path)
    http1 = [c for c in calls if c.protocol == "http"]
    h2 = [c for c in calls if c.protocol == "http2"]
    first = UPGRADE_TARGETS[0]
    assert [(c.method, c.target, c.status) for c in http1] == [("GET", first, 101)], [
        describe(c) for c in calls
    ]
    assert "upgrade" in http1[0].flags, describe(http1[0])
    assert tshark_differences(h2, upgrade.oracle) == []
    got = sorted((stream_id_of(c), c.method, c.target, c.status) for c in h2)
    assert got == [(2 * i + 1, "GET", t, 200) for i, t in enumerate(UPGRADE_TARGETS)]
    for c in h2:
        path, _, query = (c.target or "").partition("?")
        assert body(c.response) == asgi_payload("GET", path, query), describe(c)
        # curl 7.88.1 sends RST_STREAM(STREAM_CLOSED) once it has a whole body (content-length) but
        # before hypercorn's empty END_STREAM DATA frame; tshark_differences checks `reset` per stream
        assert not unexpected_flags(c, {"reset"}), describe(c)
    assert (http1[0].src.ip, http1[0].src.port) == (h2[0].src.ip, h2[0].src.port)


def test_server_push(h2lab: H2Lab, push: Scenario) -> None:  # noqa: F811
    """Pushed /style.css and /app.js: calls flagged server-push, on even streams, with the files' bytes."""
    calls = assert_like_tshark(push.path, push.oracle)
    pushed = sorted((c.target, c.method, c.status) for c in calls if "server-push" in c.flags)
    assert pushed == sorted((p, "GET", 200) for p in PUSHED["/index.html"])
    for c in calls:
        assert body(c.response) == h2lab.files[c.target], describe(c)
        if "server-push" in c.flags:
            assert (stream_id_of(c) or 1) % 2 == 0, describe(c)
        assert not unexpected_flags(c, {"server-push"}), describe(c)


def test_rst_stream_is_flagged_reset(h2lab: H2Lab, reset: Scenario) -> None:  # noqa: F811
    """The cancelled stream is ``reset`` with a prefix of the file; the next stream is whole and clean."""
    calls = assert_like_tshark(reset.path, reset.oracle)
    by_target = {c.target: c for c in calls}
    assert set(by_target) == {"/big.bin", "/small.txt"}, [describe(c) for c in calls]
    big, small = by_target["/big.bin"], by_target["/small.txt"]
    assert "reset" in big.flags and big.status == 200, describe(big)
    got = body(big.response) or b""
    assert h2lab.files["/big.bin"].startswith(got) and len(got) < len(h2lab.files["/big.bin"]), describe(big)
    assert stream_id_of(big) == reset.facts["big_id"] and stream_id_of(small) == reset.facts["small_id"]
    assert body(small.response) == h2lab.files["/small.txt"], describe(small)
    assert "reset" not in small.flags and not unexpected_flags(small), describe(small)


def test_hypercorn_gzip_json_and_trailers(asgi: Scenario) -> None:
    """Bodies decoded from gzip (content_encoding noted in info), trailers kept, POST body as sent."""
    calls = assert_like_tshark(asgi.path, asgi.oracle)
    assert sorted((c.method, c.target) for c in calls) == sorted(
        [("GET", t) for t in ASGI_GETS] + [("POST", ASGI_POST_TARGET)]
    )
    problems = []
    for c in calls:
        path, _, query = (c.target or "").partition("?")
        sent = ASGI_POST_BODY if c.method == "POST" else b""
        doc = asgi_payload(c.method, path, query, sent, HEADER_VALUE)
        if body(c.request) != sent:
            problems.append(f"{describe(c)}: request body {body(c.request)!r}")
        if body(c.response) != doc:
            problems.append(f"{describe(c)}: response body {body(c.response)!r}, want {doc!r}")
        if c.response is not None and c.response.body_size != len(doc):
            problems.append(f"{describe(c)}: body_size {c.response.body_size}, want {len(doc)}")
        if (c.info or {}).get("content_encoding") != "gzip":
            problems.append(f"{describe(c)}: info {c.info}, want content_encoding gzip")
        if ("content-encoding", "gzip") not in headers_of(c.response):
            problems.append(f"{describe(c)}: response headers {headers_of(c.response)}")
        if trailers_of(c.response) != [asgi_trailer(doc)]:
            problems.append(f"{describe(c)}: trailers {trailers_of(c.response)}, want {[asgi_trailer(doc)]}")
        if unexpected_flags(c):
            problems.append(f"{describe(c)}: unexpected flags")
    assert not problems, "\n".join(problems)


def test_cli_json_matches_library(h2lab: H2Lab, nghttp_many: Scenario, upgrade: Scenario) -> None:  # noqa: F811
    """``python -m podshark dissect FILE --json`` prints the same calls as `dissect_path`, bodies included."""
    import base64

    for sc in (nghttp_many, upgrade):
        lines = podshark_json(sc.path)
        calls = podshark_calls(sc.path)
        assert [(d["protocol"], d["method"], d["target"], d["status"], d["flags"]) for d in lines] == [
            (c.protocol, c.method, c.target, c.status, list(c.flags)) for c in calls
        ]
    for d in podshark_json(nghttp_many.path):
        if d["protocol"] == "http2":
            assert base64.b64decode(d["response"]["body"]) == h2lab.files[d["target"]], d["target"]
