"""TLS between workers and the hub, and on the hub's API, with real processes.

A real `podshark hub` serves HTTPS with certificates made by the real `podshark certs` and
`--client-ca`. Known by construction: the requests the test makes (each target carries a nonce),
and which certificate each client holds: one from the hub's CA with clientAuth (accepted), none
(refused on ingest with 403, the read API stays open), one from another CA and a server-only one
(refused in the TLS handshake). Independent oracles: `openssl s_client` for the hub's chain and
its CertificateRequest, curl for what a client with each certificate gets, and the hub's own
stats/log for who connected.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dissect.engine import dissect_path
from tests.capture.podnet import PodNet, podnet
from tests.capture.test_worker import HTTP_PORT, PODSHARK, WorkerProc, start_http_server
from tests.hub.test_service import PIPELINED, TOKEN, Hub, _env, _free_port
from tests.realtraffic import netns_unavailable_reason, tools_missing_reason

REPO = Path(__file__).resolve().parents[2]
GROUP = pytest.mark.xdist_group("capture-mtls")
N_REQUESTS = 6


@dataclass
class Pki:
    dir: Path  # ca.crt, hub.*, podshark-worker.*, alice.* (a person's client certificate)
    other: Path  # another CA's ca.crt and podshark-worker.*

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def pair(self, name: str, other: bool = False) -> list[str]:
        d = self.other if other else self.dir
        return [str(d / f"{name}.crt"), str(d / f"{name}.key")]


def _certs(out: Path, *args: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "podshark", "certs", "--out", str(out), *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    _certs(base / "main", "--client", "alice")
    _certs(base / "other")
    return Pki(base / "main", base / "other")


def _context(ca: Path, cert: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


@dataclass
class TlsHub(Hub):
    ca: Path = Path()

    def log_since(self, offset: int) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size


def start_tls_hub(pki: Pki, workdir: Path, *extra: str) -> TlsHub:
    port = _free_port()
    log = workdir / "hub.log"
    argv = [
        sys.executable, "-m", "podshark", "hub", "--db", str(workdir / "db"),
        "--listen", f"127.0.0.1:{port}", "--batch-interval", "0.2",
        "--tls-cert", str(pki.dir / "hub.crt"), "--tls-key", str(pki.dir / "hub.key"),
        "--client-ca", str(pki.ca), *extra,
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    hub = TlsHub(proc, f"https://127.0.0.1:{port}", workdir / "db", log, pki.ca)
    ctx = _context(pki.ca)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(hub.url + "/healthz", timeout=2, context=ctx) as r:
                if r.status == 200:
                    return hub
        except OSError:
            time.sleep(0.1)
    hub.stop()
    raise AssertionError(f"hub did not come up: {log.read_text()}")


@pytest.fixture(scope="module")
def hub(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsHub]:
    h = start_tls_hub(pki, tmp_path_factory.mktemp("tlshub"))
    try:
        yield h
    finally:
        h.stop()


def https_get(hub: TlsHub, path: str, cert: list[str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(hub.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=30, context=_context(hub.ca, cert)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def podshark(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PODSHARK, *args], cwd=REPO, env=_env(token), capture_output=True, text=True, timeout=180, check=False
    )


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed client command: exactly one line, no traceback."""
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def curl(hub: TlsHub, path: str, *args: str) -> tuple[int, str]:
    """curl's exit code and the HTTP status it got ("000" when none)."""
    r = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--cacert", str(hub.ca),
         "-H", f"Authorization: Bearer {TOKEN}", *args, hub.url + path],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return r.returncode, r.stdout.strip()


def wait_for(what: str, check: Any, timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def worker_state(hub: TlsHub, name: str) -> dict[str, Any] | None:
    status, body = https_get(hub, "/api/v1/stats")
    assert status == 200, body
    return next((w for w in body["workers"] if w["name"] == name), None)


# ---- the independent view of the hub's TLS


def test_openssl_verifies_the_hubs_chain_and_is_asked_for_a_client_certificate(hub: TlsHub, pki: Pki) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    port = hub.url.rsplit(":", 1)[1]
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-verify_return_error", "-msg"]
    r = subprocess.run([*base, "-CAfile", str(pki.ca), "-verify_hostname", "localhost"],
                       input="", capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    out = r.stdout
    assert "Verify return code: 0 (ok)" in out, out[-3000:]
    assert ", CertificateRequest" in out  # the hub asks every client for a certificate
    ca_subject = subprocess.run(["openssl", "x509", "-in", str(pki.ca), "-noout", "-subject"],
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert ca_subject.replace("subject=", "issuer=") in out  # the chain ends at our CA
    r = subprocess.run([*base, "-CAfile", str(pki.other / "ca.crt")],
                       input="", capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert "Verify return code: 0 (ok)" not in r.stdout  # another CA does not vouch for this hub


def test_curl_with_each_kind_of_client_certificate(hub: TlsHub, pki: Pki) -> None:
    reason = tools_missing_reason("curl")
    if reason:
        pytest.skip(reason)
    alice = ["--cert", pki.pair("alice")[0], "--key", pki.pair("alice")[1]]
    other = ["--cert", pki.pair("podshark-worker", other=True)[0],
             "--key", pki.pair("podshark-worker", other=True)[1]]  # fmt: skip
    server = ["--cert", pki.pair("hub")[0], "--key", pki.pair("hub")[1]]
    assert curl(hub, "/api/v1/calls?limit=1") == (0, "200")  # the read API without a certificate
    assert curl(hub, "/api/v1/ingest") == (0, "403")  # ingest without one: refused by the hub
    assert curl(hub, "/api/v1/ingest", *alice)[1] != "403"  # with one: past the check (not a WebSocket)
    for refused in (other, server):  # refused in the TLS handshake: no HTTP answer at all
        code, status = curl(hub, "/api/v1/calls?limit=1", *refused)
        assert code != 0 and status == "000", (code, status)


# ---- a worker over mutual TLS


@pytest.fixture
def node() -> Iterator[PodNet]:
    reason = netns_unavailable_reason() or tools_missing_reason("curl")
    if reason:
        pytest.skip(reason)
    with podnet("client", "server") as net:
        start_http_server(net)
        yield net


@pytest.mark.root
@pytest.mark.slow
@GROUP
def test_a_worker_over_mutual_tls_delivers_calls_that_podshark_calls_returns(
    hub: TlsHub, pki: Pki, node: PodNet, tmp_path: Path
) -> None:
    cert, key = pki.pair("podshark-worker")
    worker = WorkerProc(hub, node.glob, tmp_path / "state", tmp_path / "worker.log",
                        "--hub-ca", str(pki.ca), "--hub-cert", cert, "--hub-key", key, "--no-k8s",
                        node="mtls-node")  # fmt: skip
    try:
        wait_for(
            "the worker connected with its three interfaces",
            lambda: (
                worker.proc.poll() is None
                and (w := worker_state(hub, "mtls-node"))
                and w.get("connected")
                and w.get("reported", {}).get("interface_count", 0) >= 3
            ),
        )
        client, server = node.pods["client"], node.pods["server"]
        nonce = secrets.token_hex(4)
        targets = []
        for i in range(N_REQUESTS):
            target = f"/mtls/{i}-{nonce}"
            r = node.run(
                client, ["curl", "-sS", "--max-time", "10", f"http://{server.ip}:{HTTP_PORT}{target}"]
            )
            assert r.returncode == 0 and r.stdout == b"path=" + target.encode(), r
            targets.append(target)

        def listed() -> list[dict[str, Any]] | None:
            r = podshark("calls", "--hub", hub.url, "--ca", str(pki.ca), "--json",
                         "--filter", f'http and target contains "{nonce}"')  # fmt: skip
            assert r.returncode == 0, r.stderr
            calls = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
            return calls if len(calls) >= N_REQUESTS else None

        calls = wait_for("the calls at the hub", listed)
        assert sorted(c["target"] for c in calls) == sorted(targets)  # each request once
        for c in calls:
            assert c["status"] == 200 and c["id"].startswith("mtls-node/"), c
            assert (c["src"]["ip"], c["dst"]["ip"]) == (client.ip, server.ip)
        assert worker.stop() == 0, worker.log.read_text()[-3000:]
        assert "Traceback" not in worker.log.read_text()
    finally:
        worker.stop()


@pytest.mark.root
@pytest.mark.slow
@GROUP
@pytest.mark.parametrize(
    ("variant", "worker_says", "hub_says"),
    [
        ("no-cert", ["requires a client certificate for ingest: pass --hub-cert and --hub-key"],
         "no client certificate (403)"),
        ("other-ca", ["is not issued by --hub-ca", "it does not accept --hub-cert"],
         "refused a client certificate not issued by --client-ca"),
        ("server-cert", ["has no extendedKeyUsage clientAuth", "it does not accept --hub-cert"],
         "refused a client certificate without extendedKeyUsage clientAuth"),
    ],
)  # fmt: skip
def test_workers_without_a_valid_client_certificate_are_refused_and_say_why(
    hub: TlsHub, pki: Pki, tmp_path: Path, variant: str, worker_says: list[str], hub_says: str
) -> None:
    reason = netns_unavailable_reason()  # the worker needs to capture (root), on lo here
    if reason:
        pytest.skip(reason)
    cert = {
        "no-cert": [],
        "other-ca": pki.pair("podshark-worker", other=True),
        "server-cert": pki.pair("hub"),
    }
    extra = ["--hub-ca", str(pki.ca), "--no-k8s", "--no-ebpf"]
    if cert[variant]:
        extra += ["--hub-cert", cert[variant][0], "--hub-key", cert[variant][1]]
    name = f"refused-{variant}-{secrets.token_hex(2)}"
    offset = hub.log_size()
    worker = WorkerProc(hub, "lo", tmp_path / "state", tmp_path / "worker.log", *extra, node=name)
    try:
        wait_for(
            f"the worker to say {worker_says}",
            lambda: all(s in worker.log.read_text() for s in worker_says) or worker.proc.poll() is not None,
            timeout=60,
        )
        log = worker.log.read_text()
        assert worker.proc.poll() is None, log[-3000:]  # it keeps running (and retrying)
        assert all(s in log for s in worker_says), log[-3000:]
        assert "Traceback" not in log
        wait_for("the hub's log line", lambda: hub_says in hub.log_since(offset), timeout=30)
        assert worker_state(hub, name) is None  # never got in
        assert worker.stop() == 0
    finally:
        worker.stop()


# ---- clients


def test_clients_with_the_wrong_ca_or_plain_http_get_one_line_naming_the_fix(hub: TlsHub, pki: Pki) -> None:
    other_ca = str(pki.other / "ca.crt")
    line = one_line_error(podshark("calls", "--hub", hub.url, "--ca", other_ca))
    assert "the hub's certificate is not trusted" in line and "pass --ca" in line, line
    line = one_line_error(podshark("calls", "--hub", hub.url))  # the system's CAs do not know ours
    assert "pass --ca" in line, line
    out = pki.dir.parent / f"x-{secrets.token_hex(3)}.pcapng"
    line = one_line_error(podshark("export", "--hub", hub.url, "--ca", other_ca, "-o", str(out)))
    assert "pass --ca" in line and not out.exists(), line
    r = podshark("doctor", "--hub-only", "--hub", hub.url, "--ca", other_ca)
    assert r.returncode == 1 and "pass --ca" in r.stdout and "Traceback" not in r.stderr, r.stdout
    r = podshark("export", "--hub", hub.url, "--ca", str(pki.ca), "-o", str(out))  # the right CA: works
    assert r.returncode == 0 and out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a", r.stderr  # a pcapng
    r = podshark("doctor", "--hub-only", "--hub", hub.url, "--ca", str(pki.ca))
    assert "hub stats" not in r.stdout and "workers (from" in r.stdout, r.stdout

    offset = hub.log_size()
    plain = hub.url.replace("https://", "http://")
    line = one_line_error(podshark("calls", "--hub", plain))
    assert "use an https:// URL" in line, line
    wait_for("the hub's log line", lambda: "spoke plain HTTP to this HTTPS port" in hub.log_since(offset))

    localhost = hub.url.replace("127.0.0.1", "localhost")  # a name the certificate has: accepted
    assert podshark("calls", "--hub", localhost, "--ca", str(pki.ca), "--limit", "1").returncode == 0
    line = one_line_error(podshark("calls", "--hub", plain, "--ca", str(pki.ca)))
    assert "need an https:// hub URL" in line, line


def test_import_needs_a_client_certificate_on_ingest(hub: TlsHub, pki: Pki) -> None:
    n = sum(1 for _ in dissect_path(PIPELINED))
    line = one_line_error(podshark("import", str(PIPELINED), "--hub", hub.url, "--ca", str(pki.ca)))
    assert "requires a client certificate" in line and "--cert" in line, line
    cert, key = pki.pair("alice")
    r = podshark(
        "import", str(PIPELINED), "--hub", hub.url, "--ca", str(pki.ca), "--cert", cert, "--key", key
    )
    assert r.returncode == 0, r.stderr
    assert f"{n} calls sent, {n} acknowledged" in r.stdout


def test_the_ui_client_speaks_tls_and_explains_an_untrusted_hub(hub: TlsHub, pki: Pki) -> None:
    from podshark.tlsconf import build_client_context, explain
    from tui.client import HubClient, Unreachable

    async def go() -> None:
        good = HubClient(hub.url, TOKEN, ssl=build_client_context(hub.url, str(pki.ca)))
        try:
            await good.calls(limit=1)  # no exception: TLS verified, token accepted
            assert await good.healthz()
        finally:
            await good.close()
        bad = HubClient(hub.url, TOKEN, explain=lambda e: explain(e, hub.url))
        try:
            with pytest.raises(Unreachable, match="pass --ca"):
                await bad.calls(limit=1)
        finally:
            await bad.close()

    asyncio.run(go())


@pytest.mark.slow
def test_client_certificates_required_everywhere_but_the_probes(pki: Pki, tmp_path: Path) -> None:
    hub = start_tls_hub(pki, tmp_path, "--client-cert-required-for", "all")
    try:
        status, body = https_get(hub, "/api/v1/calls?limit=1")
        assert status == 403 and "client certificate" in body["error"], body
        assert https_get(hub, "/healthz") == (200, {"ok": True})
        assert https_get(hub, "/api/v1/calls?limit=1", cert=pki.pair("alice"))[0] == 200
        line = one_line_error(podshark("calls", "--hub", hub.url, "--ca", str(pki.ca)))
        assert "requires a client certificate" in line and "--cert" in line, line
        cert, key = pki.pair("alice")
        r = podshark("calls", "--hub", hub.url, "--ca", str(pki.ca), "--cert", cert, "--key", key)
        assert r.returncode == 0, r.stderr
        assert "refused GET /api/v1/calls from 127.0.0.1: no client certificate (403)" in hub.log.read_text()
    finally:
        hub.stop()


# ---- bad files


def _hub_fails(pki: Pki, tmp_path: Path, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "podshark", "hub", "--db", str(tmp_path / "db"),
         "--listen", "127.0.0.1:0", *args],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("podshark: error: "), r.stderr
    return lines[0]


def test_the_hub_exits_2_with_one_line_for_unusable_tls_files(pki: Pki, tmp_path: Path) -> None:
    from podshark.certs_cmd import cert_pem, issue, key_pem, new_authority

    d = pki.dir
    hub_crt, hub_key = str(d / "hub.crt"), str(d / "hub.key")
    assert "is not the key of --tls-cert" in _hub_fails(pki, tmp_path, "--tls-cert", hub_crt,
                                                       "--tls-key", str(d / "alice.key"))  # fmt: skip
    assert "no such file" in _hub_fails(
        pki, tmp_path, "--tls-cert", str(d / "nope.crt"), "--tls-key", hub_key
    )
    assert "not a server certificate" in _hub_fails(pki, tmp_path, "--tls-cert", str(d / "alice.crt"),
                                                    "--tls-key", str(d / "alice.key"))  # fmt: skip
    empty = tmp_path / "empty.crt"
    empty.write_bytes(b"")
    assert "is empty" in _hub_fails(pki, tmp_path, "--tls-cert", str(empty), "--tls-key", hub_key)
    assert "holds no CA certificate" in _hub_fails(pki, tmp_path, "--tls-cert", hub_crt, "--tls-key", hub_key,
                                                   "--client-ca", hub_crt)  # fmt: skip
    assert "--client-ca needs --tls-cert" in _hub_fails(pki, tmp_path, "--client-ca", str(pki.ca))
    assert "go together" in _hub_fails(pki, tmp_path, "--tls-cert", hub_crt)
    import datetime as dt

    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    old = issue(new_authority(now=past), "server", "old", hosts=["localhost"], days=3, now=past)
    (tmp_path / "old.crt").write_bytes(cert_pem(old.cert))
    (tmp_path / "old.key").write_bytes(key_pem(old.key))
    line = _hub_fails(
        pki, tmp_path, "--tls-cert", str(tmp_path / "old.crt"), "--tls-key", str(tmp_path / "old.key")
    )
    assert "expired on" in line and "podshark certs" in line, line


def test_the_worker_exits_2_with_one_line_for_unusable_tls_options(pki: Pki, tmp_path: Path) -> None:
    base = ["worker", "--state-dir", str(tmp_path / "s"), "--interface", "lo"]
    line = one_line_error(podshark(*base, "--hub", "http://127.0.0.1:1", "--hub-ca", str(pki.ca)))
    assert "--hub-ca need an https:// hub URL" in line, line
    line = one_line_error(
        podshark(*base, "--hub", "https://127.0.0.1:1", "--hub-cert", str(pki.dir / "alice.crt"))
    )
    assert "holds no private key: pass --hub-key" in line, line
    line = one_line_error(
        podshark(*base, "--hub", "https://127.0.0.1:1", "--hub-ca", str(tmp_path / "none.crt"))
    )
    assert "cannot read --hub-ca" in line, line


# ---- the pure parts, against hostile input


def test_explaining_arbitrary_error_text_never_raises_and_names_an_option() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from podshark.tlsconf import WORKER_FLAGS, explain

    markers = st.sampled_from(
        ["CERTIFICATE_VERIFY_FAILED", "Hostname mismatch", "Server disconnected", "alert unknown ca",
         "WRONG_VERSION_NUMBER", "expired", "", "%s", "\x00"]
    )  # fmt: skip
    fixes = ("--hub-ca", "--hub-cert", "podshark certs", "https://", "http://")

    @given(
        st.lists(st.one_of(st.text(max_size=40), markers), max_size=6),
        st.sampled_from(["https://h", "http://h"]),
        st.booleans(),
    )
    def check(parts: list[str], url: str, has_cert: bool) -> None:
        out = explain(" ".join(parts), url, WORKER_FLAGS, has_cert=has_cert)
        if out is not None:  # one line, naming what to change
            assert "\n" not in out and len(out) < 400 and any(f in out for f in fixes), out

    check()


def test_the_uplink_explainer_names_the_worker_options() -> None:
    """What the worker's uplink appends to its connection failures (`Uplink(explain=...)`)."""
    import aiohttp

    from podshark.tlsconf import uplink_explainer

    explain_failure = uplink_explainer("https://hub:8898", has_cert=True)
    refused = aiohttp.WSServerHandshakeError(None, (), status=403, message="Forbidden")  # type: ignore[arg-type]
    assert explain_failure(refused) == (
        "it requires a client certificate for ingest: pass --hub-cert and --hub-key issued by its "
        "--client-ca (podshark certs)"
    )
    untrusted = explain_failure(
        "Cannot connect to host hub:8898 ssl:True [SSLCertVerificationError: (1, '[SSL: "
        "CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate "
        "(_ssl.c:1006)')]"
    )
    assert untrusted is not None and "pass --hub-ca with the CA that signed it" in untrusted
    assert explain_failure("Connection refused") is None  # not a TLS problem: the uplink's own line stands


def test_the_hubs_refusal_log_is_bounded_and_counts_what_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from hub.tls import RateLimitedLog

    logger = logging.getLogger("podshark.test.ratelimit")
    limited = RateLimitedLog(logger, every=3600.0, max_keys=4)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(100):
            limited.warning("same reason")
        for i in range(50):
            limited.warning(f"reason {i}")
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("same reason") == 1 and len(lines) == 51
    assert len(limited._last) <= 4
    limited.every = 0.0
    with caplog.at_level(logging.WARNING, logger=logger.name):
        limited.warning("reason 49")
        limited.warning("reason 49")
    assert caplog.records[-1].getMessage() == "reason 49"  # nothing was held back since the last line
