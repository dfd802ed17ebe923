"""HTTP/1 on real traffic whose truth we know by construction: nginx names the URI in every body.

Two namespaces, a veth, nginx on one side, curl on the other, tcpdump on the wire (`realtraffic`). One
curl process fetches 520 distinct targets over keep-alive, so a call is right exactly when its response
body is ``path=<its own target>``: a pairing bug that shifts responses by one cannot hide.

Then the capture is damaged the way real captures are, and podshark must stay honest:
- one response's segments removed (editcap): exactly that request is ``response-missing``, nothing
  else moves;
- snap length cut to 200 bytes (editcap -s): no call is invented, every reported call is true according
  to tshark on the *uncut* file, and calls built from cut packets say ``snaplen``.

Plus pipelining in one TCP segment (several requests in one write), which tshark mis-pairs on its own
(`tshark_oracle` corrects for it) and which HTTP/1 FIFO pairing must get right.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.realtraffic import (
    Lab,
    curl_get_many,
    expected_body,
    lab,  # noqa: F401  (module-scoped pytest fixture)
    send_pipelined,
)
from tests.tshark_oracle import (
    TSHARK,
    HttpMessage,
    Transaction,
    frame_table,
    http1_oracle,
    requires_pyshark,
    requires_tshark,
    resend_flags,
    resent_connections,
)

# Tests that make traffic are marked `root`; the `lab` fixture skips them with the reason when this is
# not root or `ip netns` does not work. The bro.org snap-length test needs neither.
pytestmark = [pytest.mark.tshark, requires_tshark, requires_pyshark, pytest.mark.timeout(180)]
realnet = pytest.mark.root
if importlib.util.find_spec("xdist") is not None:
    # one worker runs this module, so the namespaces, nginx and the 520-GET capture are made once
    pytestmark.append(pytest.mark.xdist_group("realnet-http1"))

N_GETS = 520
REMOVED_TARGET = "/item/0260"  # a response in the middle of the connection
SNAPLEN = 200
EDITCAP = "editcap"
BRO_ORG = FIXTURES / "http1__zeek_bro.org.pcap"


def targets() -> list[str]:
    return [f"/item/{i:04d}" for i in range(1, N_GETS + 1)]


def http_calls(path: Path) -> list:
    """podshark's HTTP/1 calls for `path` (the system under test)."""
    from dissect.engine import dissect_path

    return [c for c in dissect_path(path) if c.protocol == "http"]


def tshark_fields(path: Path, display_filter: str, *fields: str) -> list[list[str]]:
    """Rows of tshark ``-T fields`` output: used to check the captures themselves, not podshark."""
    assert TSHARK is not None
    args = [TSHARK, "-n", "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    return [line.split("\t") for line in res.stdout.splitlines() if line]


def body_of(call) -> bytes | None:  # type: ignore[no-untyped-def]
    return None if call.response is None else bytes(call.response.body)


@dataclass(frozen=True)
class Generated:
    """The keep-alive capture made once per module, and the targets it carries."""

    path: Path
    targets: tuple[str, ...]


@pytest.fixture(scope="module")
def keepalive_pcap(lab: Lab) -> Generated:  # noqa: F811
    """520 keep-alive GETs with distinct targets from one curl process, captured by tcpdump."""
    ts = targets()
    # a capture that lost packets in the kernel is not ground truth; that is the machine, not podshark,
    # so try again a couple of times before giving up
    for attempt in range(3):
        with lab.capture(f"keepalive-{attempt}.pcap") as cap:
            curl_get_many(lab.pair, [lab.nginx.base_url + t for t in ts], lab.workdir)
        if cap.complete:
            return Generated(path=cap.path, targets=tuple(ts))
    raise AssertionError(f"tcpdump lost packets 3 times, no ground-truth capture:\n{cap.stderr}")


@realnet
def test_capture_is_keepalive(keepalive_pcap: Generated) -> None:
    """Check the capture, not podshark: few connections, and tshark sees all 520 GETs answered."""
    syns = tshark_fields(keepalive_pcap.path, "tcp.flags.syn == 1 && tcp.flags.ack == 0", "tcp.stream")
    assert 1 <= len(syns) <= 3, f"expected keep-alive (1-3 connections), got {len(syns)} SYNs"
    oracle = http1_oracle(keepalive_pcap.path)
    want = Counter(("GET", t, 200) for t in keepalive_pcap.targets)
    assert oracle.transactions == want, "tshark does not see exactly the 520 GETs we sent"


@realnet
def test_keepalive_gets_each_paired_with_its_own_response(keepalive_pcap: Generated) -> None:
    """520 calls, GET/target/200, each body naming its own target, and no flags at all."""
    calls = http_calls(keepalive_pcap.path)
    resent = resent_connections(keepalive_pcap.path)  # the only flag real traffic may earn
    got_targets = Counter(c.target for c in calls)
    assert len(calls) == N_GETS, f"{len(calls)} calls for {N_GETS} GETs"
    assert got_targets == Counter(keepalive_pcap.targets), "targets differ from what curl sent"
    wrong = [
        (c.method, c.target, c.status, body_of(c), c.flags)
        for c in calls
        if c.method != "GET"
        or c.status != 200
        or body_of(c) != expected_body(c.target or "")
        or set(c.flags) - resend_flags(c, resent)
    ]
    assert not wrong, f"{len(wrong)} calls not paired with their own response, e.g. {wrong[:5]}"


def _response_frames(path: Path, target: str) -> tuple[HttpMessage, HttpMessage]:
    """The request for `target` and the response tshark pairs with it (with all its TCP segments)."""
    pairs = [(q, r) for q, r in http1_oracle(path).pairs if q is not None and q.target == target]
    assert len(pairs) == 1 and pairs[0][1] is not None, f"tshark does not pair {target} once: {pairs}"
    req, resp = pairs[0]
    assert resp is not None
    return req, resp


@realnet
def test_removed_response_is_the_only_response_missing(keepalive_pcap: Generated, tmp_path: Path) -> None:
    """Drop every segment of one response: only that request may lose its response."""
    oracle = http1_oracle(keepalive_pcap.path)
    _req, resp = _response_frames(keepalive_pcap.path, REMOVED_TARGET)
    drop = set(resp.frames)
    # the frames must hold nothing but this response, or removing them would damage other calls too
    others = {f for q, r in oracle.pairs for m in (q, r) if m is not None and m is not resp for f in m.frames}
    assert not drop & others, f"frames {sorted(drop & others)} also carry other HTTP messages"
    rows = tshark_fields(keepalive_pcap.path, "tcp.len > 0", "frame.number", "tcp.srcport")
    src = {int(f): int(p) for f, p in rows}
    assert all(src.get(f) == 80 for f in drop), "the frames to remove are not server data segments"

    edited = tmp_path / "minus-one-response.pcap"
    subprocess.run([EDITCAP, str(keepalive_pcap.path), str(edited), *map(str, sorted(drop))], check=True)
    # the edit did what we meant, by tshark's account: exactly one request unanswered now
    cut = http1_oracle(edited)
    assert [q.target for q, r in cut.pairs if r is None and q is not None] == [REMOVED_TARGET]

    calls = http_calls(edited)
    by_target: dict[str | None, list] = {}
    for c in calls:
        by_target.setdefault(c.target, []).append(c)
    problems: list[str] = []
    if len(calls) != N_GETS:
        problems.append(f"{len(calls)} calls for {N_GETS} requests")
    missing = by_target.get(REMOVED_TARGET, [])
    if len(missing) != 1:
        problems.append(f"{REMOVED_TARGET}: {len(missing)} calls, want 1")
    for c in missing:
        if "response-missing" not in c.flags or c.response is not None or c.status is not None:
            problems.append(
                f"{REMOVED_TARGET}: want response None + response-missing, got {c.status} {c.flags}"
            )
    for t in keepalive_pcap.targets:
        if t == REMOVED_TARGET:
            continue
        cs = by_target.get(t, [])
        if len(cs) != 1:
            problems.append(f"{t}: {len(cs)} calls")
        elif cs[0].status != 200 or body_of(cs[0]) != expected_body(t):
            problems.append(f"{t}: paired with status {cs[0].status} body {body_of(cs[0])!r}")
    strays = [
        (c.method, c.target, c.flags)
        for c in calls
        if c.target != REMOVED_TARGET and {"response-missing", "request-missing"} & set(c.flags)
    ]
    if strays:
        problems.append(f"other calls flagged missing: {strays[:5]}")
    assert not problems, f"removed frames {sorted(drop)}:\n  " + "\n  ".join(problems[:20])


def _match_truthfully(
    calls: Iterable, pairs: list[tuple[HttpMessage | None, HttpMessage | None]]
) -> tuple[list[str], list[tuple[object, tuple[HttpMessage | None, HttpMessage | None]]]]:
    """Match each reported call to a distinct transaction tshark saw in the uncut file.

    (method, target, status) must match exactly; a null status matches on method + target; a null
    method matches a response with that status (preferring ones tshark could not pair). Each
    transaction is used once, so more calls than transactions cannot all match.
    """
    pool = list(pairs)
    invented: list[str] = []
    matched: list[tuple[object, tuple[HttpMessage | None, HttpMessage | None]]] = []

    def tup(p: tuple[HttpMessage | None, HttpMessage | None]) -> Transaction:
        q, r = p
        return (q and q.method, q and q.target, r and r.status)

    for c in calls:
        cands: list[int]
        if c.method is not None and c.status is not None:
            cands = [i for i, p in enumerate(pool) if tup(p) == (c.method, c.target, c.status)]
        elif c.method is not None:
            cands = [i for i, p in enumerate(pool) if tup(p)[:2] == (c.method, c.target)]
        elif c.status is not None:
            cands = [i for i, p in enumerate(pool) if tup(p)[0] is None and tup(p)[2] == c.status]
            cands += [i for i, p in enumerate(pool) if tup(p)[0] is not None and tup(p)[2] == c.status]
        else:
            cands = []
        if not cands:
            invented.append(f"({c.method!r}, {c.target!r}, {c.status!r}) flags={c.flags}")
            continue
        matched.append((c, pool.pop(cands[0])))
    return invented, matched


def _corpus_differences(name: str) -> tuple:
    """The golden test's explained tshark differences for a corpus file (one table, one truth)."""
    from tests.golden.test_http1_corpus import SPECS

    spec = SPECS.get(name)
    return (spec.differences, spec.override_prefs) if spec else ((), {})


def _uncut_truth(original: Path) -> list[tuple[HttpMessage | None, HttpMessage | None]]:
    """tshark's pairs for the uncut file, corrected by the golden table where tshark is known wrong.

    A difference that replaces tshark's ``(m, t, None)`` by ``(m, t, status)`` (tshark dropped a
    response it could not reassemble) gives that request a response with the status podshark is
    expected to report; the response keeps no frames (tshark never showed which ones they were).
    """
    differences, prefs = _corpus_differences(original.name)
    pairs = list(http1_oracle(original, override_prefs=prefs).pairs)
    for d in differences:
        for old, new in zip(d.only_tshark, d.only_podshark):
            if old[:2] != new[:2] or old[2] is not None:
                continue
            for i, (q, r) in enumerate(pairs):
                if q is not None and r is None and (q.method, q.target) == old[:2]:
                    fake = dataclasses.replace(
                        q, is_request=False, method=None, target=None, status=new[2], frames=()
                    )
                    pairs[i] = (q, fake)
                    break
    return pairs


def _check_snaplen(original: Path, tmp_path: Path) -> tuple[list, list[str]]:
    cut = tmp_path / f"{original.stem}-snap{SNAPLEN}.pcap"
    subprocess.run([EDITCAP, "-s", str(SNAPLEN), str(original), str(cut)], check=True)
    cut_frames = {f for f, info in frame_table(cut).items() if info.cut}
    assert cut_frames, "editcap -s did not cut anything: the test would prove nothing"

    truth = _uncut_truth(original)
    calls = http_calls(cut)
    problems: list[str] = []
    if len(calls) > len(truth):
        problems.append(f"{len(calls)} calls from the cut file, tshark sees {len(truth)} uncut")
    invented, matched = _match_truthfully(calls, truth)
    problems += [f"invented: {s}" for s in invented]
    for c, (q, r) in matched:
        frames = set(q.frames if q else ()) | set(r.frames if r else ())
        if frames & cut_frames and "snaplen" not in c.flags:
            problems.append(f"({c.method}, {c.target}, {c.status}) built from cut frames, flags {c.flags}")
    return calls, problems


@realnet
def test_snaplen_generated_no_invented_calls(keepalive_pcap: Generated, tmp_path: Path) -> None:
    """Cut to 200 bytes (every response loses its tail): nothing invented, everything true, flagged."""
    _calls, problems = _check_snaplen(keepalive_pcap.path, tmp_path)
    assert not problems, "\n".join(problems[:20]) + (
        f"\n... {len(problems)} problems" if len(problems) > 20 else ""
    )


@realnet
def test_snaplen_generated_uncut_requests_all_reported(keepalive_pcap: Generated, tmp_path: Path) -> None:
    """curl's GETs fit in 200 bytes, so each request survives the cut whole and must still be reported."""
    cut = tmp_path / "keepalive-snap.pcap"
    subprocess.run([EDITCAP, "-s", str(SNAPLEN), str(keepalive_pcap.path), str(cut)], check=True)
    frames = frame_table(cut)
    req_frames = {f for q, _r in http1_oracle(keepalive_pcap.path).pairs if q is not None for f in q.frames}
    assert not any(frames[f].cut for f in req_frames), "a request frame was cut: premise broken"
    got = Counter(c.target for c in http_calls(cut) if c.method == "GET")
    assert got == Counter(keepalive_pcap.targets), (
        f"{sum(got.values())} GETs reported, {len(set(keepalive_pcap.targets) - set(got))} targets missing"
    )


def test_snaplen_corpus_bro_org_no_invented_calls(tmp_path: Path) -> None:
    """Same as the generated case on a real browser capture with large image bodies."""
    _calls, problems = _check_snaplen(BRO_ORG, tmp_path)
    assert not problems, "\n".join(problems[:20]) + (
        f"\n... {len(problems)} problems" if len(problems) > 20 else ""
    )


@realnet
def test_pipelined_in_one_segment(lab: Lab) -> None:  # noqa: F811
    """Several GETs in one write (one TCP segment): FIFO pairing must give each its own response."""
    ts = [f"/pipe/{i}" for i in range(1, 9)]
    with lab.capture("pipelined.pcap") as cap:
        assert send_pipelined(lab.pair, lab.nginx, ts) == len(ts)
    assert cap.complete, cap.stderr
    # premise: the requests really shared a segment
    rows = tshark_fields(cap.path, "http.request", "frame.number", "http.request.uri")
    assert any(len(r[1].split(",")) > 1 for r in rows), f"requests were not pipelined in one frame: {rows}"
    assert http1_oracle(cap.path).transactions == Counter(("GET", t, 200) for t in ts)
    calls = http_calls(cap.path)
    resent = resent_connections(cap.path)
    got = sorted(
        (
            c.method,
            c.target,
            c.status,
            body_of(c),
            tuple(f for f in c.flags if f not in resend_flags(c, resent)),
        )
        for c in calls
    )
    want = sorted(("GET", t, 200, expected_body(t), ()) for t in ts)
    assert got == want
