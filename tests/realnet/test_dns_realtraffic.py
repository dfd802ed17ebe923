"""DNS on real traffic: dnsmasq (local records only, nothing forwarded) in one namespace, dig in the other,
tcpdump on the veth.

dnsmasq answers only from what this test configured (``--no-resolv --no-hosts --local=/podshark.test/``
and ``--host-record``/``--cname``/``--mx-host``/``--txt-record``/``--srv-host``), so every expected
value comes from the configuration, not from podshark. Each dig run is one UDP flow (dig picks a new
source port) or one TCP connection (``+tcp``); ``big.podshark.test`` has enough TXT records that the
UDP answer does not fit and dnsmasq sets TC, after which dig asks again over TCP by itself. tshark
(through pyshark) reads the same capture: its query/response pairs must equal podshark's calls.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dissect.engine import dissect_path
from dissect.model import Call, Flag
from tests.golden.test_dns_corpus import dns_oracle, podshark_transactions, tshark_transactions
from tests.realtraffic import (
    Capture,
    NetnsPair,
    _terminate,
    netns_pair,
    netns_unavailable_reason,
    tcpdump_capture,
    tools_missing_reason,
)
from tests.tshark_oracle import requires_pyshark, requires_tshark

pytestmark = [
    pytest.mark.tshark,
    requires_tshark,
    requires_pyshark,
    pytest.mark.root,
    pytest.mark.timeout(180),
]
if importlib.util.find_spec("xdist") is not None:
    pytestmark.append(pytest.mark.xdist_group("realnet-dns"))

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
DIG = shutil.which("dig")

ZONE = "podshark.test"
WEB_V4, WEB_V6 = "192.0.2.10", "2001:db8::10"
TXT_STRINGS = ["v=spf1 -all", "hello world"]
BIG_TXT = [f"record-{i:02d}-" + "x" * 180 for i in range(24)]  # ~4.6 KB: more than any UDP answer here
SRV = (0, 5, 8080, f"web.{ZONE}")
MX = (10, f"mail.{ZONE}")


def dnsmasq_args(pair: NetnsPair) -> list[str]:
    args = [
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--local=/{ZONE}/",
        "--bind-interfaces",
        f"--listen-address={pair.server_ip}",
        "--except-interface=lo",
        "--port=53",
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
        "--edns-packet-max=1232",
        f"--host-record=web.{ZONE},{WEB_V4},{WEB_V6}",
        f"--host-record=mail.{ZONE},192.0.2.25",
        f"--cname=alias.{ZONE},alias2.{ZONE}",  # alias -> alias2 -> web: a chain
        f"--cname=alias2.{ZONE},web.{ZONE}",
        f"--mx-host={ZONE},{MX[1]},{MX[0]}",
        f"--txt-record=txt.{ZONE}," + ",".join(TXT_STRINGS),  # on the command line quotes would be data
        f"--srv-host=_http._tcp.{ZONE},{SRV[3]},{SRV[2]},{SRV[0]},{SRV[1]}",
    ]
    args += [f"--txt-record=big.{ZONE},{s}" for s in BIG_TXT]
    return args


@contextlib.contextmanager
def dnsmasq_server(pair: NetnsPair) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        pair.exec_args(pair.server_ns, dnsmasq_args(pair)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # ready when it answers
            if proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {proc.stderr.read() if proc.stderr else ''}")
            res = pair.client(
                [DIG or "dig", f"@{pair.server_ip}", f"web.{ZONE}", "A", "+short", "+tries=1", "+time=1"],
                check=False,
            )
            if WEB_V4 in res.stdout:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("dnsmasq did not answer within 10 s")
        yield proc
    finally:
        _terminate(proc)


@dataclass
class Run:
    capture: Capture
    calls: list[Call]
    path: Path


# (dig arguments after the server, what the run is called)
QUERIES: list[list[str]] = [
    [f"web.{ZONE}", "A"],
    [f"WeB.{ZONE}", "AAAA"],  # case kept as sent
    [f"alias.{ZONE}", "A"],
    [ZONE, "MX"],
    [f"txt.{ZONE}", "TXT"],
    [f"_http._tcp.{ZONE}", "SRV"],
    ["-x", WEB_V4],
    [f"nope.{ZONE}", "A"],
    [f"ecs.web.{ZONE}", "A", "+subnet=1.2.3.0/24"],
    [f"web.{ZONE}", "A", "+tcp"],
    [f"txt.{ZONE}", "TXT", "+tcp"],
    [f"big.{ZONE}", "TXT"],  # TC over UDP, then dig retries over TCP
    [
        "+tcp",
        "+keepopen",
        f"mail.{ZONE}",
        "A",
        f"mail.{ZONE}",
        "AAAA",
        f"alias2.{ZONE}",
        "A",
    ],  # one connection
]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    reason = netns_unavailable_reason() or tools_missing_reason("tcpdump", "dig", "dnsmasq")
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="psk-dns-"))
    try:
        with netns_pair() as pair, dnsmasq_server(pair):
            out = workdir / "dns.pcap"
            with tcpdump_capture(pair, out, bpf="port 53") as cap:
                for q in QUERIES:
                    res = pair.client(
                        [DIG or "dig", f"@{pair.server_ip}", "+tries=1", "+time=2", *q],
                        check=False,
                        timeout=20,
                    )
                    assert res.returncode == 0, res.stderr
            calls = [c for c in dissect_path(out) if c.protocol == "dns"]
            yield Run(cap, calls, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def find(run: Run, qname: str, qtype: str, transport: str = "udp") -> Call:
    found = [
        c
        for c in run.calls
        if c.target == qname and c.info.get("qtype") == qtype and c.transport == transport
        and c.response is not None
    ]  # fmt: skip
    assert len(found) == 1, [(c.target, c.info.get("qtype"), c.transport) for c in run.calls]
    return found[0]


def datas(c: Call, rtype: str) -> list[str]:
    return sorted(a["data"] for a in c.info["answers"] if a["type"] == rtype)


def test_capture_complete(run: Run) -> None:
    assert run.capture.complete, run.capture.stderr


def test_every_call_paired(run: Run) -> None:
    assert run.calls, "no DNS calls"
    for c in run.calls:
        assert c.request is not None and c.response is not None, c
        assert Flag.RESPONSE_MISSING not in c.flags and Flag.REQUEST_MISSING not in c.flags
        assert c.method == "QUERY" and c.src.port != 53 and c.dst.port == 53


def test_a_and_aaaa(run: Run) -> None:
    a = find(run, f"web.{ZONE}", "A")
    assert a.status == 0 and datas(a, "A") == [WEB_V4] and a.info["flags"]["aa"]
    aaaa = find(run, f"WeB.{ZONE}", "AAAA")
    assert datas(aaaa, "AAAA") == [WEB_V6] and aaaa.info["answers"][0]["name"] == f"WeB.{ZONE}"


def test_cname_chain(run: Run) -> None:
    c = find(run, f"alias.{ZONE}", "A")
    chain = [(a["name"], a["type"], a["data"]) for a in c.info["answers"]]
    assert chain == [
        (f"alias.{ZONE}", "CNAME", f"alias2.{ZONE}"),
        (f"alias2.{ZONE}", "CNAME", f"web.{ZONE}"),
        (f"web.{ZONE}", "A", WEB_V4),
    ]


def test_mx_txt_srv_ptr(run: Run) -> None:
    mx = find(run, ZONE, "MX").info["answers"]
    assert [(a["preference"], a["exchange"]) for a in mx] == [MX]
    txt = find(run, f"txt.{ZONE}", "TXT").info["answers"]
    assert [a["strings"] for a in txt] == [TXT_STRINGS]
    srv = find(run, f"_http._tcp.{ZONE}", "SRV").info["answers"]
    assert [(a["priority"], a["weight"], a["port"], a["target"]) for a in srv] == [SRV]
    ptr = find(run, "10.2.0.192.in-addr.arpa", "PTR")
    assert datas(ptr, "PTR") == [f"web.{ZONE}"]


def test_nxdomain(run: Run) -> None:
    c = find(run, f"nope.{ZONE}", "A")
    assert c.status == 3 and c.info["rcode_name"] == "NXDOMAIN" and c.info["answers"] == []


def test_client_subnet(run: Run) -> None:
    c = find(run, f"ecs.web.{ZONE}", "A")
    assert c.info["edns"]["client_subnet"] == "1.2.3.0/24"


def test_tcp_queries(run: Run) -> None:
    a = find(run, f"web.{ZONE}", "A", "tcp")
    assert datas(a, "A") == [WEB_V4] and a.flags == []
    t = find(run, f"txt.{ZONE}", "TXT", "tcp")
    assert [x["strings"] for x in t.info["answers"]] == [TXT_STRINGS]


def test_several_queries_on_one_tcp_connection(run: Run) -> None:
    calls = [find(run, f"mail.{ZONE}", "A", "tcp"), find(run, f"mail.{ZONE}", "AAAA", "tcp")]
    calls.append(find(run, f"alias2.{ZONE}", "A", "tcp"))
    assert len({c.flow_id for c in calls}) == 1
    assert datas(calls[0], "A") == ["192.0.2.25"] and calls[1].info["answers"] == [] and calls[1].status == 0
    assert [a["type"] for a in calls[2].info["answers"]] == ["CNAME", "A"]


def test_truncated_udp_then_tcp(run: Run) -> None:
    udp = find(run, f"big.{ZONE}", "TXT", "udp")
    assert Flag.TRUNCATED in udp.flags and udp.info["truncated"] is True
    assert udp.response is not None and udp.response.wire_size <= 1232
    tcp = find(run, f"big.{ZONE}", "TXT", "tcp")
    assert Flag.TRUNCATED not in tcp.flags and "truncated" not in tcp.info
    assert sorted(s for a in tcp.info["answers"] for s in a["strings"]) == sorted(BIG_TXT)
    assert tcp.response is not None and tcp.response.wire_size > 1232


def test_agrees_with_tshark(run: Run) -> None:
    theirs = tshark_transactions(dns_oracle(run.path))
    ours = podshark_transactions(run.calls)
    assert theirs == ours
